"""Per-view lazy image access for every loader format, and the image writers."""

import json
import pickle
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from rhapso_gpu.errors import UserError
from rhapso_gpu.io.image_writers import image_loader_element, write_view_levels
from rhapso_gpu.io.images import PyramidLevel, open_view_levels
from rhapso_gpu.io.spimdata import SpimData, Timepoints, ViewId, ViewSetup, ViewTransform, VoxelSize
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata

VOXEL_XYZ = (0.5, 0.5, 2.0)
FACTORS_XYZ = [(1, 1, 1), (2, 2, 1), (4, 4, 2)]
WRITTEN = [("zarr", "0.4"), ("zarr", "0.5"), ("n5", "0.4"), ("tiff", "0.4")]


def pyramid(shape_zyx, dtype=np.uint16, seed=0):
    """Three levels (factors FACTORS_XYZ) of random data; level L is a strided view of level 0."""
    rng = np.random.default_rng(seed)
    full = rng.integers(0, 1000, size=shape_zyx).astype(dtype)
    return [np.ascontiguousarray(full[::fz, ::fy, ::fx]) for fx, fy, fz in FACTORS_XYZ]


def save_dataset(folder: Path, loader: ET.Element, sizes_xyz: dict[int, tuple], timepoints=(0,)) -> SpimData:
    """Write a dataset.xml with ``loader`` and one setup per entry of ``sizes_xyz``; return it re-loaded."""
    setups = {
        sid: ViewSetup(
            sid, str(sid), size, VoxelSize("µm", VOXEL_XYZ), {"illumination": 0, "channel": 0, "tile": sid, "angle": 0}
        )
        for sid, size in sizes_xyz.items()
    }
    registrations = {
        ViewId(t, s): [ViewTransform.from_matrix("calibration", np.diag([1.0, 1.0, 4.0, 1.0]))]
        for t in timepoints
        for s in setups
    }
    spim = SpimData(
        image_loader=loader,
        setups=setups,
        timepoints=Timepoints("range", list(timepoints)),
        registrations=registrations,
        layout=["BasePath", "SequenceDescription", "ViewRegistrations"],
    )
    save_spimdata(spim, str(folder / "dataset.xml"))
    return load_spimdata(str(folder / "dataset.xml"))


def size_xyz(array_zyx) -> tuple:
    return tuple(reversed(array_zyx.shape))


def assert_levels(levels, expected_zyx, factors_xyz):
    assert [lv.index for lv in levels] == list(range(len(expected_zyx)))
    for level, expected, factors in zip(levels, expected_zyx, factors_xyz):
        assert level.factors_xyz == tuple(float(f) for f in factors)
        assert level.data_zyx.dtype == expected.dtype
        np.testing.assert_array_equal(level.data_zyx.compute(), expected)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(level.data_zyx)).compute(), expected)


# ---------------------------------------------------------------------------
# written by image_writers, read back per format and level


@pytest.mark.parametrize("fmt,ngff", WRITTEN, ids=[f"{f}-{v}" for f, v in WRITTEN])
def test_written_views_read_back(tmp_path, fmt, ngff):
    views = {ViewId(0, 0): pyramid((9, 21, 34), seed=1), ViewId(0, 1): pyramid((8, 16, 20), np.float32, seed=2)}
    for _ in range(2):  # a second run overwrites the same files
        for view, levels in views.items():
            write_view_levels(
                fmt, str(tmp_path), view, levels, FACTORS_XYZ, VOXEL_XYZ, chunks_zyx=(4, 8, 16), ngff_version=ngff
            )
    loader = image_loader_element(fmt, list(views), ngff)
    spim = save_dataset(tmp_path, loader, {v.setup: size_xyz(lv[0]) for v, lv in views.items()})
    for view, written in views.items():
        levels = open_view_levels(spim, view)
        if fmt == "tiff":
            assert_levels(levels, written[:1], FACTORS_XYZ[:1])
            assert levels[0].data_zyx.chunksize == (1,) + written[0].shape[1:]  # one chunk per z plane
        else:
            assert_levels(levels, written, FACTORS_XYZ)
            assert levels[0].data_zyx.chunksize == (4, 8, 16)
            np.testing.assert_allclose(levels[2].mipmap_xyz[:3], [[4, 0, 0, 1.5], [0, 4, 0, 1.5], [0, 0, 2, 0.5]])


def test_mipmap_maps_level_voxels_to_full_resolution_centres():
    level = PyramidLevel(1, None, (2.0, 4.0, 1.0))
    np.testing.assert_allclose(level.mipmap_xyz, [[2, 0, 0, 0.5], [0, 4, 0, 1.5], [0, 0, 1, 0], [0, 0, 0, 1]])
    # level voxel 0 covers full-res voxels 0..f-1: its centre is (f-1)/2
    np.testing.assert_allclose(level.mipmap_xyz @ [0, 0, 0, 1], [0.5, 1.5, 0.0, 1.0])
    np.testing.assert_allclose(PyramidLevel(0, None, (1.0, 1.0, 1.0)).mipmap_xyz, np.eye(4))


def test_zarr_writer_metadata(tmp_path):
    levels = pyramid((9, 21, 34))
    write_view_levels("zarr", str(tmp_path), ViewId(2, 5), levels, FACTORS_XYZ, VOXEL_XYZ, ngff_version="0.4")
    group = tmp_path / "dataset.ome.zarr" / "s5-t2.zarr"
    multiscale = json.loads((group / ".zattrs").read_text())["multiscales"][0]
    assert multiscale["version"] == "0.4"
    assert [(a["name"], a.get("unit")) for a in multiscale["axes"]] == [
        ("t", "millisecond"),
        ("c", None),
        ("z", "micrometer"),
        ("y", "micrometer"),
        ("x", "micrometer"),
    ]
    level2 = multiscale["datasets"][2]
    assert level2["path"] == "2"
    assert level2["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 4.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 0.0, 1.0, 0.75, 0.75]},
    ]
    zarray = json.loads((group / "2" / ".zarray").read_text())
    assert zarray["shape"] == [1, 1, *levels[2].shape] and zarray["dimension_separator"] == "/"

    write_view_levels("zarr", str(tmp_path / "v3"), ViewId(0, 0), levels, FACTORS_XYZ, VOXEL_XYZ, ngff_version="0.5")
    meta = json.loads((tmp_path / "v3" / "dataset.ome.zarr" / "s0-t0.zarr" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["attributes"]["ome"]["version"] == "0.5"
    assert "version" not in meta["attributes"]["ome"]["multiscales"][0]

    loader = image_loader_element("zarr", [ViewId(2, 5), ViewId(0, 1)])
    assert (loader.get("format"), loader.get("version"), loader.findtext("zarr")) == (
        "bdv.multimg.zarr",
        "3.0",
        "dataset.ome.zarr",
    )
    assert [g.attrib for g in loader.iter("zgroup")] == [
        {"setup": "1", "tp": "0", "path": "s1-t0.zarr", "indicies": "[]"},
        {"setup": "5", "tp": "2", "path": "s5-t2.zarr", "indicies": "[]"},
    ]


def test_n5_writer_layout(tmp_path):
    levels = pyramid((9, 21, 34))
    write_view_levels("n5", str(tmp_path), ViewId(1, 3), levels, FACTORS_XYZ, VOXEL_XYZ, chunks_zyx=(4, 8, 64))
    root = tmp_path / "dataset.n5"
    assert json.loads((root / "attributes.json").read_text()) == {"n5": "4.0.0"}
    assert json.loads((root / "setup3" / "attributes.json").read_text()) == {
        "dataType": "uint16",
        "downsamplingFactors": [[1, 1, 1], [2, 2, 1], [4, 4, 2]],
    }
    s1 = json.loads((root / "setup3" / "timepoint1" / "s1" / "attributes.json").read_text())
    assert s1["downsamplingFactors"] == [2, 2, 1]
    assert s1["dimensions"] == [17, 11, 9] and s1["blockSize"] == [17, 8, 4]  # x clipped to the level's width
    assert s1["compression"]["type"] == "gzip"
    loader = image_loader_element("n5", [ViewId(1, 3)])
    assert ET.tostring(loader, encoding="unicode") == (
        '<ImageLoader format="bdv.n5" version="1.1"><n5 type="relative">dataset.n5</n5></ImageLoader>'
    )


def test_n5_factors_fall_back_to_each_level(tmp_path):
    levels = pyramid((9, 21, 34))
    write_view_levels("n5", str(tmp_path), ViewId(0, 0), levels, FACTORS_XYZ, VOXEL_XYZ)
    setup_attrs = tmp_path / "dataset.n5" / "setup0" / "attributes.json"
    setup_attrs.write_text(json.dumps({"dataType": "uint16"}))
    spim = save_dataset(tmp_path, image_loader_element("n5", [ViewId(0, 0)]), {0: size_xyz(levels[0])})
    assert_levels(open_view_levels(spim, ViewId(0, 0)), levels, FACTORS_XYZ)


# ---------------------------------------------------------------------------
# hand-written OME-Zarr tiles and loader elements


def write_ngff_tile(location: Path, levels, scales, axes, zarr_format=2, chunks=None, shards=None):
    """An OME-NGFF multiscale group (0.4 on zarr v2, 0.5 on zarr v3) with the given arrays and scales."""
    group = zarr.open_group(zarr.storage.LocalStore(str(location)), mode="w", zarr_format=zarr_format)
    multiscale = {
        "axes": [{"name": a, "type": {"t": "time", "c": "channel"}.get(a, "space")} for a in axes],
        "datasets": [
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": list(s)}]}
            for i, s in enumerate(scales)
        ],
    }
    if zarr_format == 2:
        group.attrs["multiscales"] = [{"version": "0.4", **multiscale}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [multiscale]}
    for i, data in enumerate(levels):
        group.create_array(str(i), data=data, chunks=chunks or data.shape, shards=shards)


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_aind_zgroup_form_with_4d_arrays(tmp_path, version):
    levels = pyramid((6, 20, 24))
    write_ngff_tile(
        tmp_path / "SPIM.ome.zarr" / "tile_x_0000.zarr",
        [lv[np.newaxis] for lv in levels],
        [[1.0, 2.0 * fz, 0.5 * fy, 0.5 * fx] for fx, fy, fz in FACTORS_XYZ],
        "czyx",
        chunks=(1, 2, 8, 8),
    )
    loader = ET.fromstring(
        f'<ImageLoader format="bdv.multimg.zarr" version="{version}"><zarr type="relative">SPIM.ome.zarr</zarr>'
        '<zgroups><zgroup setup="0" timepoint="0"><path>tile_x_0000.zarr</path></zgroup></zgroups></ImageLoader>'
    )
    spim = save_dataset(tmp_path, loader, {0: size_xyz(levels[0])})
    levels_read = open_view_levels(spim, ViewId(0, 0))
    assert_levels(levels_read, levels, FACTORS_XYZ)
    assert levels_read[0].data_zyx.chunksize == (2, 8, 8)


def test_v3_zgroup_selects_channel_and_timepoint_from_5d(tmp_path):
    rng = np.random.default_rng(3)
    tczyx = rng.integers(0, 100, size=(3, 2, 4, 10, 12)).astype(np.uint8)
    write_ngff_tile(tmp_path / "c.zarr" / "multi.zarr", [tczyx], [[1, 1, 2, 0.5, 0.5]], "tczyx", chunks=(1, 1, 2, 5, 6))
    loader = ET.fromstring(
        '<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="relative">c.zarr</zarr><zgroups>'
        '<zgroup setup="0" tp="0" path="multi.zarr" indicies="1 2"/>'  # c = 1, t = 2
        '<zgroup setup="1" tp="0" path="multi.zarr" indicies="[]"/>'
        "</zgroups></ImageLoader>"
    )
    spim = save_dataset(tmp_path, loader, {0: (12, 10, 4), 1: (12, 10, 4)})
    assert_levels(open_view_levels(spim, ViewId(0, 0)), [tczyx[2, 1]], [(1, 1, 1)])
    with pytest.raises(UserError, match=r"tp0/setup1: .*c\.zarr/multi\.zarr/0: .*indicies"):
        open_view_levels(spim, ViewId(0, 1))


def test_3d_zarr_tile_with_anisotropic_factors(tmp_path):
    full = np.arange(8 * 12 * 16, dtype=np.uint16).reshape(8, 12, 16)
    levels = [full, full[::2, ::3, ::1].copy()]
    write_ngff_tile(tmp_path / "c.zarr" / "t.zarr", levels, [[2.0, 0.4, 0.4], [4.0, 1.2, 0.4]], "zyx", chunks=(4, 4, 4))
    loader = ET.fromstring(
        '<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="relative">c.zarr</zarr><zgroups>'
        '<zgroup setup="0" tp="0" path="t.zarr" indicies="[]"/></zgroups></ImageLoader>'
    )
    spim = save_dataset(tmp_path, loader, {0: (16, 12, 8)})
    assert_levels(open_view_levels(spim, ViewId(0, 0)), levels, [(1, 1, 1), (1, 3, 2)])


def test_ngff_05_zarr_v3_sharded_tile(tmp_path):
    levels = pyramid((8, 16, 32))
    scales = [[2.0 * fz, 0.5 * fy, 0.5 * fx] for fx, fy, fz in FACTORS_XYZ]
    write_ngff_tile(
        tmp_path / "c.zarr" / "t.zarr", levels, scales, "zyx", zarr_format=3, chunks=(2, 4, 4), shards=(4, 8, 8)
    )
    loader = ET.fromstring(
        '<ImageLoader format="bdv.multimg.zarr" version="3.0"><zarr type="relative">c.zarr</zarr><zgroups>'
        '<zgroup setup="0" tp="0" path="t.zarr" indicies="[]"/></zgroups></ImageLoader>'
    )
    spim = save_dataset(tmp_path, loader, {0: size_xyz(levels[0])})
    levels_read = open_view_levels(spim, ViewId(0, 0))
    assert_levels(levels_read, levels, FACTORS_XYZ)
    assert levels_read[0].data_zyx.chunksize == (4, 8, 8)  # one dask chunk per shard


# ---------------------------------------------------------------------------
# TIFF files with several series, channels and time points


def filemap_loader(*mappings) -> ET.Element:
    loader = ET.fromstring(
        '<ImageLoader format="spimreconstruction.filemap2"><ZGrouped>false</ZGrouped><files/></ImageLoader>'
    )
    for setup, tp, series, channel, path in mappings:
        attrs = {"view_setup": str(setup), "timepoint": str(tp), "series": str(series), "channel": str(channel)}
        ET.SubElement(
            ET.SubElement(loader.find("files"), "FileMapping", attrs), "file", {"type": "relative"}
        ).text = path
    return loader


def test_tiff_series_and_channels(tmp_path):
    rng = np.random.default_rng(4)
    first = rng.integers(0, 100, (5, 6, 7)).astype(np.uint16)
    czyx = rng.integers(0, 100, (2, 4, 6, 7)).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "multi.tif") as tif:
        tif.write(first, photometric="minisblack", metadata={"axes": "ZYX"})
        tif.write(czyx, photometric="minisblack", metadata={"axes": "CZYX"}, compression="zlib")  # read page by page
    zcyx = rng.integers(0, 100, (4, 3, 6, 7)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "hyper.tif", zcyx, imagej=True, metadata={"axes": "ZCYX"})
    loader = filemap_loader(
        (0, 0, 0, 0, "multi.tif"), (1, 0, 1, 1, "multi.tif"), (2, 0, 0, 2, "hyper.tif"), (3, 0, 1, 0, "multi.tif")
    )
    spim = save_dataset(tmp_path, loader, {0: (7, 6, 5), 1: (7, 6, 4), 2: (7, 6, 4), 3: (7, 6, 4)})
    assert_levels(open_view_levels(spim, ViewId(0, 0)), [first], [(1, 1, 1)])
    assert_levels(open_view_levels(spim, ViewId(0, 1)), [czyx[1]], [(1, 1, 1)])
    assert_levels(open_view_levels(spim, ViewId(0, 2)), [zcyx[:, 2]], [(1, 1, 1)])
    assert_levels(open_view_levels(spim, ViewId(0, 3)), [czyx[0]], [(1, 1, 1)])


def test_tiff_time_points_in_one_file(tmp_path):
    tzyx = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    tifffile.imwrite(tmp_path / "t.tif", tzyx, imagej=True, metadata={"axes": "TZYX"})
    spim = save_dataset(tmp_path, filemap_loader((0, 0, 0, 0, "t.tif"), (0, 1, 0, 0, "t.tif")), {0: (5, 4, 3)}, (0, 1))
    assert_levels(open_view_levels(spim, ViewId(1, 0)), [tzyx[1]], [(1, 1, 1)])
    assert_levels(open_view_levels(spim, ViewId(0, 0)), [tzyx[0]], [(1, 1, 1)])


# ---------------------------------------------------------------------------
# errors name the view and the file


@pytest.fixture()
def written(tmp_path):
    """One view (tp0/setup0) written in every format under its own folder."""
    levels = pyramid((6, 10, 12))
    out = {}
    for fmt, ngff in WRITTEN:
        folder = tmp_path / f"{fmt}-{ngff}"
        write_view_levels(
            fmt, str(folder), ViewId(0, 0), levels, FACTORS_XYZ, VOXEL_XYZ, chunks_zyx=(2, 4, 4), ngff_version=ngff
        )
        out[(fmt, ngff)] = (folder, image_loader_element(fmt, [ViewId(0, 0)], ngff), levels)
    return out


@pytest.mark.parametrize(
    "fmt,ngff,remove,message",
    [
        ("zarr", "0.4", "dataset.ome.zarr/s0-t0.zarr", r"dataset\.ome\.zarr/s0-t0\.zarr: OME-Zarr group not found"),
        ("zarr", "0.5", "dataset.ome.zarr/s0-t0.zarr/1", r"s0-t0\.zarr/1: cannot open the zarr array"),
        ("n5", "0.4", "dataset.n5/setup0/timepoint0/s0", r"dataset\.n5/setup0/timepoint0/s0: N5 dataset not found"),
        ("tiff", "0.4", "tiles/tp0_setup0.tif", r"tiles/tp0_setup0\.tif: TIFF file not found"),
    ],
)
def test_missing_images(written, fmt, ngff, remove, message):
    import shutil

    folder, loader, levels = written[(fmt, ngff)]
    target = folder / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
    with pytest.raises(UserError, match=r"^tp0/setup0: .*" + message):
        open_view_levels(spim, ViewId(0, 0))


@pytest.mark.parametrize("key", WRITTEN, ids=[f"{f}-{v}" for f, v in WRITTEN])
def test_size_mismatch(written, key):
    folder, loader, _levels = written[key]
    spim = save_dataset(folder, loader, {0: (12, 10, 7)})
    with pytest.raises(
        UserError,
        match=r"^tp0/setup0: \S*"
        + re.escape(str(folder))
        + r"\S*: image is 12 x 10 x 6 \(x y z\) but the ViewSetup <size> is 12 10 7",
    ):
        open_view_levels(spim, ViewId(0, 0))


def test_unknown_loader_and_missing_view(written):
    folder, loader, _levels = written[("zarr", "0.4")]
    spim = save_dataset(
        folder,
        ET.fromstring('<ImageLoader format="bdv.hdf5"><hdf5 type="relative">x.h5</hdf5></ImageLoader>'),
        {0: (12, 10, 6)},
    )
    expected = (
        f"{folder / 'dataset.xml'}: image loader format 'bdv.hdf5' is not supported "
        "(supported: bdv.multimg.zarr, bdv.n5, spimreconstruction.filemap2, "
        "split.imgloader, split.multiresolutionimgloader, split.viewerimgloader)"
    )
    with pytest.raises(UserError) as err:
        open_view_levels(spim, ViewId(0, 0))
    assert str(err.value) == expected
    spim = save_dataset(folder, loader, {0: (12, 10, 6), 1: (12, 10, 6)})
    with pytest.raises(
        UserError, match=r"dataset\.xml: the bdv\.multimg\.zarr ImageLoader has no <zgroup> for tp0/setup1"
    ):
        open_view_levels(spim, ViewId(0, 1))


@pytest.mark.parametrize("key", WRITTEN, ids=[f"{f}-{v}" for f, v in WRITTEN])
def test_unreadable_chunk_names_the_file(written, key):
    folder, loader, levels = written[key]
    spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
    data = open_view_levels(spim, ViewId(0, 0))[0].data_zyx  # opened before the damage
    fmt = key[0]
    if fmt == "zarr":
        named = folder / "dataset.ome.zarr" / "s0-t0.zarr" / "0"  # the array
        chunk = next(p for p in named.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr.json")))
        chunk.write_bytes(b"garbage")
    elif fmt == "n5":
        named = chunk = folder / "dataset.n5" / "setup0" / "timepoint0" / "s0" / "0" / "0" / "0"
        chunk.write_bytes(chunk.read_bytes()[:18])
    else:
        named = chunk = folder / "tiles" / "tp0_setup0.tif"
        chunk.write_bytes(chunk.read_bytes()[:300])
    with pytest.raises(UserError) as err:
        data.compute()
    assert str(err.value).startswith(f"{named}: ")


def test_lazy_levels_compute_on_distributed_workers(written):
    """The dask graphs pickle to worker processes; a bad chunk there still names the file."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None)
    with cluster, Client(cluster):
        for folder, loader, levels in written.values():
            spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
            opened = open_view_levels(spim, ViewId(0, 0))
            np.testing.assert_array_equal(opened[-1].data_zyx.compute(), levels[len(opened) - 1])
        folder, loader, levels = written[("tiff", "0.4")]
        tiff = open_view_levels(save_dataset(folder, loader, {0: size_xyz(levels[0])}), ViewId(0, 0))[0]
        (folder / "tiles" / "tp0_setup0.tif").write_bytes(b"II*\x00")
        with pytest.raises(UserError, match=r"tiles/tp0_setup0\.tif: cannot read the chunk"):
            tiff.data_zyx.compute()


@pytest.mark.parametrize("dtype", [np.int16, np.uint32, np.float64])
def test_tiff_writer_other_dtypes(tmp_path, dtype):
    """Types an ImageJ hyperstack cannot hold are written as plain z, y, x TIFF stacks."""
    data = (np.arange(5 * 6 * 7).reshape(5, 6, 7) - 50).astype(dtype)
    write_view_levels("tiff", str(tmp_path), ViewId(0, 0), [data], [(1, 1, 1)], VOXEL_XYZ)
    spim = save_dataset(tmp_path, image_loader_element("tiff", [ViewId(0, 0)]), {0: size_xyz(data)})
    assert_levels(open_view_levels(spim, ViewId(0, 0)), [data], [(1, 1, 1)])


@pytest.mark.parametrize(
    "fmt,ngff,damaged,message",
    [
        (
            "zarr",
            "0.4",
            "dataset.ome.zarr/s0-t0.zarr/.zattrs",
            r"s0-t0\.zarr/\.zattrs: no readable OME-NGFF multiscales",
        ),
        ("zarr", "0.5", "dataset.ome.zarr/s0-t0.zarr/zarr.json", r"s0-t0\.zarr/zarr\.json: no readable OME-NGFF"),
        ("n5", "0.4", "dataset.n5/setup0/attributes.json", r"dataset\.n5/setup0/attributes\.json: not valid JSON"),
        ("tiff", "0.4", "tiles/tp0_setup0.tif", r"tiles/tp0_setup0\.tif: not a readable TIFF file"),
    ],
)
def test_unreadable_metadata(written, fmt, ngff, damaged, message):
    folder, loader, levels = written[(fmt, ngff)]
    (folder / damaged).write_bytes(b"{ not metadata")
    spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
    with pytest.raises(UserError, match=r"^tp0/setup0: \S*" + message):
        open_view_levels(spim, ViewId(0, 0))


@pytest.mark.parametrize("key", WRITTEN, ids=[f"{f}-{v}" for f, v in WRITTEN])
def test_read_region_reads_the_box_straight_from_the_reader(written, key, monkeypatch):
    folder, loader, levels = written[key]
    spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
    level = open_view_levels(spim, ViewId(0, 0))[0]
    box = (slice(1, 5), slice(3, 10), slice(2, 11))  # across chunk borders
    monkeypatch.setattr("dask.compute", lambda *a, **k: pytest.fail("read_region_zyx built a dask graph"))
    got = level.read_region_zyx(box)
    assert got.dtype == levels[0].dtype
    np.testing.assert_array_equal(got, levels[0][box])
    np.testing.assert_array_equal(level.read_region_zyx((slice(None), slice(0, 99), slice(4, 5))), levels[0][:, :, 4:5])


def test_read_region_of_a_derived_array_computes_it(written):
    folder, loader, levels = written[("zarr", "0.4")]
    spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
    level = open_view_levels(spim, ViewId(0, 0))[0]
    derived = PyramidLevel(0, level.data_zyx[::-1] + 1, (1.0, 1.0, 1.0))  # no reader behind it: falls back to dask
    np.testing.assert_array_equal(derived.read_region_zyx((slice(0, 2),) * 3), levels[0][::-1][:2, :2, :2] + 1)
    with pytest.raises(ValueError, match="step-1"):
        level.read_region_zyx((slice(0, 4, 2), slice(None), slice(None)))


def test_read_region_errors_name_the_file(written):
    folder, loader, levels = written[("zarr", "0.4")]
    spim = save_dataset(folder, loader, {0: size_xyz(levels[0])})
    level = open_view_levels(spim, ViewId(0, 0))[0]
    named = folder / "dataset.ome.zarr" / "s0-t0.zarr" / "0"
    for chunk in (p for p in named.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr.json"))):
        chunk.write_bytes(b"garbage")
    with pytest.raises(UserError) as err:
        level.read_region_zyx((slice(0, 2),) * 3)
    assert str(err.value).startswith(f"{named}: ")
