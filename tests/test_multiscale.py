"""Pyramids of OME-Zarr volumes: block means of the level below, NGFF metadata that validates."""

import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05

from rhapso_gpu.cli import main
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import ome_zarr
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.multiscale.pyramid import build_pyramid, propose_factors
from rhapso_gpu.scheduler import open_cluster

VOXEL_XYZ = (0.5, 0.5, 2.0)


def container(tmp_path, data_tczyx, ngff_version="0.4", chunks_zyx=(8, 16, 16), shard_chunks_zyx=None):
    location = str(tmp_path / f"v{ngff_version}.ome.zarr")
    info = ome_zarr.MultiscaleInfo(ngff_version, VOXEL_XYZ, "micrometer", (10.0, -4.0, 3.0), [(1, 1, 1)], "fused")
    array = ome_zarr.create_container(
        location, data_tczyx.shape, data_tczyx.dtype, chunks_zyx, info, {"x": 1}, shard_chunks_zyx=shard_chunks_zyx
    )
    array[...] = data_tczyx
    return location


def block_mean(a, f_zyx, integer):
    nz, ny, nx = (n // f for n, f in zip(a.shape, f_zyx))
    fz, fy, fx = f_zyx
    mean = a[: nz * fz, : ny * fy, : nx * fx].reshape(nz, fz, ny, fy, nx, fx).mean(axis=(1, 3, 5))
    return np.floor(mean + 0.5) if integer else mean


@pytest.fixture(scope="module")
def cluster():
    with open_cluster("threads", n_workers=2) as c:
        yield c


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_levels_are_block_means_of_the_level_below(tmp_path, cluster, dtype):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (1, 2, 21, 37, 45)).astype(dtype)
    location = container(tmp_path, data)
    result = build_pyramid(location, [(2, 2, 1), (2, 2, 2), (3, 1, 1)], cluster, "numpy")
    assert result.factors_xyz == [(1, 1, 1), (2, 2, 1), (4, 4, 2), (12, 4, 2)]
    assert result.shapes_zyx == [(21, 37, 45), (21, 18, 22), (10, 9, 11), (10, 9, 3)]  # floors: remainders dropped
    below = data
    for level, rel_zyx in enumerate([(1, 2, 2), (2, 2, 2), (1, 1, 3)], start=1):
        got = zarr.open_array(f"{location}/{level}", mode="r")[...]
        want = np.stack(
            [
                [block_mean(below[t, c].astype(np.float64), rel_zyx, dtype == "uint16") for c in range(2)]
                for t in range(1)
            ]
        )
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, want, rtol=1e-6 if dtype == "float32" else 0)
        below = got


@pytest.mark.parametrize(
    "ngff_version, model, shards", [("0.4", v04.Image, None), ("0.5", v05.Image, None), ("0.5", v05.Image, (2, 2, 2))]
)
def test_metadata_validates_with_half_voxel_translations(tmp_path, cluster, ngff_version, model, shards):
    data = np.arange(16 * 32 * 32, dtype=np.uint16).reshape(1, 1, 16, 32, 32)
    location = container(tmp_path, data, ngff_version, chunks_zyx=(4, 8, 8), shard_chunks_zyx=shards)
    build_pyramid(location, [(2, 2, 1), (2, 2, 2)], cluster, "numpy")
    for level, rel_zyx in ((1, (1, 2, 2)), (2, (2, 2, 2))):
        below = zarr.open_array(f"{location}/{level - 1}", mode="r")[0, 0]
        got = zarr.open_array(f"{location}/{level}", mode="r")
        np.testing.assert_array_equal(got[0, 0], block_mean(below.astype(np.float64), rel_zyx, True))
        if shards is not None:  # levels keep the layout: 2 x 2 x 2 chunks per shard where they fit
            assert got.chunks == (1, 1, 4, 8, 8) and got.shards == (
                (1, 1, 8, 16, 16) if level == 1 else (1, 1, 8, 8, 8)
            )
    group = zarr.open_group(location, mode="r")
    assert group.metadata.zarr_format == (2 if ngff_version == "0.4" else 3)
    image = model.from_zarr(group)  # raises on invalid OME-NGFF metadata
    multiscale = image.ome_attributes.multiscales[0] if ngff_version == "0.5" else image.attributes.multiscales[0]
    for dataset, f_xyz in zip(multiscale.datasets, [(1, 1, 1), (2, 2, 1), (4, 4, 2)]):
        scale, translation = dataset.coordinateTransformations
        f_zyx = np.asarray(f_xyz[::-1], float)
        voxel_zyx = np.asarray(VOXEL_XYZ[::-1])
        np.testing.assert_allclose(scale.scale, [1, 1, *(voxel_zyx * f_zyx)])
        np.testing.assert_allclose(translation.translation, [0, 0, *(0.5 * (f_zyx - 1) * voxel_zyx)])
    info = ome_zarr.read_multiscale_info(location)
    assert info.factors_xyz == [(1, 1, 1), (2, 2, 1), (4, 4, 2)] and info.origin_xyz == (10.0, -4.0, 3.0)
    written = group.attrs["rhapso-gpu"]  # the container's attributes are kept; the pyramid adds its record
    assert written["x"] == 1 and written["multiscale"]["relative_factors_xyz"] == [[2, 2, 1], [2, 2, 2]]


def test_rebuilding_replaces_the_old_levels(tmp_path, cluster):
    location = container(tmp_path, np.ones((1, 1, 8, 16, 16), np.float32))
    build_pyramid(location, [(2, 2, 2), (2, 2, 2)], cluster, "numpy")
    build_pyramid(location, [(2, 2, 1)], cluster, "numpy")
    assert sorted(zarr.open_group(location, mode="r").array_keys()) == ["0", "1"]
    assert ome_zarr.read_multiscale_info(location).factors_xyz == [(1, 1, 1), (2, 2, 1)]


def test_bad_factors_are_user_errors(tmp_path, cluster):
    location = container(tmp_path, np.ones((1, 1, 4, 16, 16), np.float32))
    ome_zarr.update_attributes(location, {"complete": False})
    with pytest.raises(UserError, match="the fusion into it did not finish"):
        build_pyramid(location, [(2, 2, 1)], cluster, "numpy")
    ome_zarr.update_attributes(location, {"complete": True})
    with pytest.raises(UserError, match="leave an empty level"):
        build_pyramid(location, [(1, 1, 8)], cluster, "numpy")
    with pytest.raises(UserError, match="must be three positive integers"):
        build_pyramid(location, [(0, 2, 2)], cluster, "numpy")


def test_proposed_factors():
    assert propose_factors((600, 600, 600), (1, 1, 1)) == [(2, 2, 2), (2, 2, 2)]  # 150 <= 256
    # anisotropic z (3x): halve x and y first; z joins once it is less than 2x coarser, until it would drop below 16
    assert propose_factors((100, 2000, 2000), (1, 1, 3), max_levels=5) == [(2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 1)]
    # z (20) cannot be halved above 16 voxels; then x and y are 2x coarser than z and stop too
    assert propose_factors((20, 40, 40), (1, 1, 1), max_levels=4) == [(2, 2, 1)]
    assert propose_factors((100, 100, 100), (1, 1, 1)) == []


def test_fuse_with_multiscale_on_the_command_line(tmp_path, capsys):
    common = ["--cluster", "synchronous", "--backend", "numpy"]
    assert main(["synth", str(tmp_path), "--tiles", "2x1x1", "--tile-size", "64x48x24", *common, "-q"]) == 0
    out = tmp_path / "fused.ome.zarr"
    argv = [
        "fuse",
        str(tmp_path / "dataset.xml"),
        str(out),
        "--set",
        "chunk_size=[32, 32, 16]",
        "--data-type",
        "uint16",
        "--multiscale",
        "--levels",
        "3",
        "--bdv-xml",
        str(tmp_path / "fused.xml"),
        *common,
    ]
    assert main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "wrote 2 pyramid level(s)" in printed
    group = zarr.open_group(str(out), mode="r")
    v04.Image.from_zarr(group)
    assert group.attrs["rhapso-gpu"]["parameters"]["chunk_size"] == [32, 32, 16]
    level0, level1 = group["0"][0, 0], group["1"][0, 0]
    np.testing.assert_array_equal(level1, block_mean(level0.astype(np.float64), (2, 2, 2), True))
    # the BigStitcher XML of the fused volume sees the pyramid, with BigDataViewer's mipmap factors
    levels = open_view_levels(load_spimdata(str(tmp_path / "fused.xml")), ViewId(0, 0))
    assert [lv.factors_xyz for lv in levels] == [(1, 1, 1), (2, 2, 2), (4, 2, 2)]  # y and z stop above 16 voxels
    assert ome_zarr.read_multiscale_info(str(out)).factors_xyz == [(1, 1, 1), (2, 2, 2), (4, 2, 2)]
    np.testing.assert_array_equal(levels[1].data_zyx.compute(), level1)
    assert main(["multiscale", str(out), "--factors", "2x2x2", *common]) == 0
    assert sorted(zarr.open_group(str(out), mode="r").array_keys()) == ["0", "1"]
    assert ome_zarr.read_multiscale_info(str(out)).factors_xyz == [(1, 1, 1), (2, 2, 2)]
    written = zarr.open_group(str(out), mode="r").attrs["rhapso-gpu"]
    assert written["multiscale"]["relative_factors_xyz"] == [[2, 2, 2]] and written["multiscale"]["version"]
    # the fuse stage still recognises its own (complete) container after the pyramid's record was added
    assert main(argv) == 0
