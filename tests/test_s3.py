"""Datasets on S3 (a local moto server): XML and images read through fsspec match the local copies."""

import pickle
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import s3fs
import zarr

from rhapso_gpu.errors import UserError
from rhapso_gpu.io.image_writers import image_loader_element, write_view_levels
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata import SpimData, Timepoints, ViewId, ViewSetup, ViewTransform, VoxelSize
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata

VOXEL_XYZ = (0.5, 0.5, 2.0)
FACTORS_XYZ = [(1, 1, 1), (2, 2, 1)]
VIEWS = [ViewId(0, 0), ViewId(0, 1)]


def pyramid(seed):
    full = np.random.default_rng(seed).integers(0, 4000, size=(6, 10, 12)).astype(np.uint16)
    return [full, np.ascontiguousarray(full[:, ::2, ::2])]


def dataset(fmt, ngff="0.4") -> tuple[SpimData, dict]:
    """A two-view SpimData (not yet saved) and the pyramids to write for it."""
    levels = {view: pyramid(view.setup) for view in VIEWS}
    setups = {
        v.setup: ViewSetup(v.setup, str(v.setup), (12, 10, 6), VoxelSize("µm", VOXEL_XYZ), {"tile": v.setup})
        for v in VIEWS
    }
    spim = SpimData(
        image_loader=image_loader_element(fmt, VIEWS, ngff),
        setups=setups,
        timepoints=Timepoints("range", [0]),
        registrations={v: [ViewTransform.from_matrix("calibration", np.diag([1.0, 1.0, 4.0, 1.0]))] for v in VIEWS},
        layout=["BasePath", "SequenceDescription", "ViewRegistrations"],
    )
    return spim, levels


def assert_same_pyramid(remote_levels, expected, factors):
    assert len(remote_levels) == len(expected)
    for level, data, f in zip(remote_levels, expected, factors):
        assert level.factors_xyz == tuple(float(v) for v in f)
        np.testing.assert_array_equal(level.data_zyx.compute(), data)
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(level.data_zyx)).compute(), data)


@pytest.mark.parametrize("fmt", ["zarr", "n5", "tiff"])
def test_uploaded_dataset_matches_local(tmp_path, s3_server, fmt):
    spim, levels = dataset(fmt)
    for view, pyr in levels.items():
        write_view_levels(fmt, str(tmp_path), view, pyr, FACTORS_XYZ, VOXEL_XYZ, chunks_zyx=(4, 8, 8))
    save_spimdata(spim, str(tmp_path / "dataset.xml"))
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    fs.put(str(tmp_path), f"{s3_server.bucket}/uploaded-{fmt}", recursive=True)
    assert fs.exists(f"{s3_server.bucket}/uploaded-{fmt}/dataset.xml")

    local = load_spimdata(str(tmp_path / "dataset.xml"))
    remote = load_spimdata(s3_server.url(f"uploaded-{fmt}/dataset.xml"), storage_options=s3_server.storage_options)
    for view in VIEWS:
        local_levels = open_view_levels(local, view)
        remote_levels = open_view_levels(remote, view, storage_options=s3_server.storage_options)
        expected = [lv.data_zyx.compute() for lv in local_levels]
        assert_same_pyramid(remote_levels, expected, [lv.factors_xyz for lv in local_levels])
        np.testing.assert_array_equal(expected[0], levels[view][0])


@pytest.mark.parametrize("fmt,ngff", [("zarr", "0.5"), ("n5", "0.4"), ("tiff", "0.4")])
def test_writers_write_to_s3(s3_server, fmt, ngff):
    base = s3_server.url(f"direct-{fmt}")
    spim, levels = dataset(fmt, ngff)
    for _ in range(2):  # re-running overwrites in place
        for view, pyr in levels.items():
            write_view_levels(
                fmt,
                base,
                view,
                pyr,
                FACTORS_XYZ,
                VOXEL_XYZ,
                chunks_zyx=(4, 8, 8),
                ngff_version=ngff,
                storage_options=s3_server.storage_options,
            )
    save_spimdata(spim, f"{base}/dataset.xml", storage_options=s3_server.storage_options)
    remote = load_spimdata(f"{base}/dataset.xml", storage_options=s3_server.storage_options)
    for view, pyr in levels.items():
        remote_levels = open_view_levels(remote, view, storage_options=s3_server.storage_options)
        n = 1 if fmt == "tiff" else len(pyr)
        assert_same_pyramid(remote_levels, pyr[:n], FACTORS_XYZ[:n])


def test_aind_s3bucket_loader(tmp_path, s3_server):
    """AIND v1.0: <s3bucket> plus a key prefix in <zarr>; the XML itself is local."""
    full = pyramid(7)
    group = zarr.open_group(
        zarr.storage.FsspecStore.from_url(
            s3_server.url("aind/SPIM.ome.zarr/tile_000.zarr"),
            storage_options=s3_server.storage_options,
            read_only=False,
        ),
        mode="w",
        zarr_format=2,
    )
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n} for n in "tczyx"],
            "datasets": [
                {
                    "path": str(i),
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 2.0, 0.5 * f[1], 0.5 * f[0]]}],
                }
                for i, f in enumerate(FACTORS_XYZ)
            ],
        }
    ]
    for i, data in enumerate(full):
        group.create_array(str(i), data=data[np.newaxis, np.newaxis], chunks=(1, 1, 3, 5, 6))
    spim, _ = dataset("zarr")
    spim.image_loader = ET.fromstring(
        '<ImageLoader format="bdv.multimg.zarr" version="1.0">'
        f'<s3bucket>{s3_server.bucket}</s3bucket><zarr type="absolute">aind/SPIM.ome.zarr</zarr>'
        '<zgroups><zgroup setup="0" timepoint="0"><path>tile_000.zarr</path></zgroup></zgroups></ImageLoader>'
    )
    save_spimdata(spim, str(tmp_path / "dataset.xml"))
    spim = load_spimdata(str(tmp_path / "dataset.xml"))
    assert_same_pyramid(
        open_view_levels(spim, ViewId(0, 0), storage_options=s3_server.storage_options), full, FACTORS_XYZ
    )
    with pytest.raises(
        UserError, match=r"dataset\.xml: the bdv\.multimg\.zarr ImageLoader has no <zgroup> for tp0/setup1$"
    ):
        open_view_levels(spim, ViewId(0, 1), storage_options=s3_server.storage_options)


def test_missing_remote_image_names_the_url(s3_server):
    base = s3_server.url("missing-n5")
    spim, _ = dataset("n5")
    save_spimdata(spim, f"{base}/dataset.xml", storage_options=s3_server.storage_options)
    remote = load_spimdata(f"{base}/dataset.xml", storage_options=s3_server.storage_options)
    with pytest.raises(
        UserError,
        match=r"^tp0/setup0: s3://rhapso-test/missing-n5/dataset\.n5/setup0/timepoint0/s0: N5 dataset not found",
    ):
        open_view_levels(remote, ViewId(0, 0), storage_options=s3_server.storage_options)


def test_saving_an_xml_on_s3_keeps_rolling_backups(s3_server):
    spim, _ = dataset("zarr")
    url = s3_server.url("saved/dataset.xml")
    versions = []
    for i in range(7):
        spim.setups[0].name = f"version {i}"
        save_spimdata(spim, url, storage_options=s3_server.storage_options)
        versions.append(load_spimdata(url, storage_options=s3_server.storage_options).setups[0].name)
    fs = s3fs.S3FileSystem(**s3_server.storage_options)
    for k in range(1, 6):
        with fs.open(f"{s3_server.bucket}/saved/dataset.xml~{k}", "rb") as f:
            assert f"<name>version {6 - k}</name>".encode() in f.read()
    assert versions == [f"version {i}" for i in range(7)]
    assert not fs.exists(f"{s3_server.bucket}/saved/dataset.xml~6")
    assert not fs.exists(f"{s3_server.bucket}/saved/dataset.xml.new")
