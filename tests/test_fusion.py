"""Fusion of whole datasets: known answers per fusion type, data type and option, and ground truth."""

import numpy as np
import pytest
import zarr

from cpu_fallback.fusion import BLEND_LUT
from rhapso_gpu.errors import UserError
from rhapso_gpu.fusion.grid import blocks, make_grid
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset, plan_fusion
from rhapso_gpu.io.image_writers import image_loader_element, write_view_levels
from rhapso_gpu.io.params import validate_params
from rhapso_gpu.io.spimdata import BoundingBox, SpimData, Timepoints, ViewId, ViewSetup, ViewTransform, VoxelSize
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.scheduler import open_cluster


def make_dataset(folder, tiles, voxel_size_xyz=(1.0, 1.0, 1.0), pyramid=False, channels=None):
    """A zarr dataset from in-memory tiles.

    ``tiles``: list of ``(image_zyx, translation_world_xyz)``; registration = translation @ calibration.
    With ``pyramid``, each tile also gets a 2x2x2 block-mean level.
    """
    spim = SpimData(timepoints=Timepoints("range", [0], ["0"]))
    views = [ViewId(0, i) for i in range(len(tiles))]
    spim.image_loader = image_loader_element("zarr", views)
    calib = np.diag(np.append(np.asarray(voxel_size_xyz) / min(voxel_size_xyz), 1.0))
    for view, (image, shift) in zip(views, tiles):
        image = np.asarray(image)
        levels, factors = [image], [(1, 1, 1)]
        if pyramid:
            nz, ny, nx = (n // 2 for n in image.shape)
            half = image[: 2 * nz, : 2 * ny, : 2 * nx].reshape(nz, 2, ny, 2, nx, 2).mean(axis=(1, 3, 5))
            levels.append(half.astype(image.dtype))
            factors.append((2, 2, 2))
        write_view_levels("zarr", str(folder), view, levels, factors, voxel_size_xyz, chunks_zyx=(16, 16, 16))
        channel = 0 if channels is None else channels[view.setup]
        spim.setups[view.setup] = ViewSetup(
            id=view.setup,
            name=f"tile{view.setup}",
            size_xyz=tuple(int(n) for n in image.shape[::-1]),
            voxel_size=VoxelSize("µm", tuple(float(v) for v in voxel_size_xyz)),
            attributes={"illumination": 0, "channel": channel, "tile": view.setup, "angle": 0},
        )
        t = np.eye(4)
        t[:3, 3] = shift
        spim.registrations[view] = [
            ViewTransform.from_matrix("shift", t),
            ViewTransform.from_matrix("calibration", calib),
        ]
    xml = str(folder / "dataset.xml")
    save_spimdata(spim, xml)
    return load_spimdata(xml)


@pytest.fixture(scope="module")
def cluster():
    with open_cluster("synchronous") as c:
        yield c


@pytest.fixture(scope="module")
def two_tiles(tmp_path_factory):
    """Tile 0 (value 100) covers world x 0..39, tile 1 (value 300) x 30..69; y 0..29, z 0..19."""
    folder = tmp_path_factory.mktemp("two_tiles")
    a = np.full((20, 30, 40), 100, np.uint16)
    b = np.full((20, 30, 40), 300, np.uint16)
    return make_dataset(folder, [(a, (0, 0, 0)), (b, (30, 0, 0))])


def fuse(spim, out, cluster, **params):
    params.setdefault("chunk_size", (16, 16, 16))
    result = fuse_dataset(spim, str(out), FuseParams(**params), cluster, "numpy", overwrite=True)
    return result, np.asarray(zarr.open_array(str(out / "0"), mode="r"))


def fn(t):
    """BigStitcher's cosine ramp from its 31-entry table."""
    return np.interp(np.asarray(t, float) * 30, np.arange(31), BLEND_LUT.astype(float))


# along x, in the interior of y and z: tile 0 alone 0..29, overlap 30..39, tile 1 alone 40..69
KNOWN = {
    "avg": [100] * 30 + [200] * 10 + [300] * 30,
    "max": [100] * 30 + [300] * 10 + [300] * 30,
    "lowest-view-wins": [100] * 30 + [100] * 10 + [300] * 30,
    "highest-view-wins": [100] * 30 + [300] * 10 + [300] * 30,
    "closest-pixel-wins": [100] * 35 + [300] * 35,  # the view farther from its own edge wins
}


@pytest.mark.parametrize("fusion", sorted(KNOWN))
def test_fusion_types_on_two_constant_tiles(two_tiles, cluster, tmp_path, fusion):
    result, out = fuse(two_tiles, tmp_path / "f.zarr", cluster, fusion=fusion)
    assert out.shape == (1, 1, 20, 30, 70) and result.shape_tczyx == (1, 1, 20, 30, 70)
    np.testing.assert_array_equal(out[0, 0, 1:-1, 1:-1, 1:-1], np.broadcast_to(KNOWN[fusion][1:-1], (18, 28, 68)))


def test_avg_blend_is_the_cosine_weighted_mean(two_tiles, cluster, tmp_path):
    _, out = fuse(two_tiles, tmp_path / "f.zarr", cluster, fusion="avg-blend")
    x = np.arange(70.0)

    def weight(d):  # 40 px range, border 0; the y and z factors are the same for both tiles and cancel
        return np.where(d < 0, 0, np.where(d >= 40, 1, fn(np.clip(d / 40, 0, 1))))

    w0 = weight(np.minimum(x, 39 - x))
    w1 = weight(np.minimum(x - 30, 69 - x))
    want = (100 * w0 + 300 * w1) / np.maximum(w0 + w1, 1e-30)
    np.testing.assert_allclose(out[0, 0, 10, 15, 1:-1], want[1:-1], rtol=1e-4)
    assert not out[0, 0, :, 0].any() and not out[0, 0, 0].any()  # the outermost pixels weigh fn(0) = 0
    assert np.all(np.diff(out[0, 0, 10, 15, 1:-1]) >= -1e-3)  # a monotone ramp from 100 to 300: no step


@pytest.mark.parametrize(
    "data_type, lo, hi, want",
    [
        ("float32", None, None, (100.0, 200.0, 300.0)),
        ("uint16", None, None, (100, 200, 300)),
        ("uint16", 100, 300, (0, 32768, 65535)),  # (v - 100) * 65535 / 200, rounded half up
        ("uint8", 0, 400, (64, 128, 191)),  # 63.75, 127.5, 191.25
        ("uint8", None, None, (100, 200, 255)),  # clamped
    ],
)
def test_data_types_and_intensity_range(two_tiles, cluster, tmp_path, data_type, lo, hi, want):
    _, out = fuse(
        two_tiles, tmp_path / "f.zarr", cluster, fusion="avg", data_type=data_type, min_intensity=lo, max_intensity=hi
    )
    assert out.dtype == np.dtype(data_type)
    np.testing.assert_array_equal(out[0, 0, 10, 15, [10, 35, 60]], want)


def test_preserve_anisotropy_keeps_the_z_planes(tmp_path, cluster):
    z = np.arange(8, dtype=np.float32)[:, None, None]
    tile = np.broadcast_to(10 * z, (8, 12, 14)).astype(np.float32)
    spim = make_dataset(tmp_path, [(tile, (0, 0, 0))], voxel_size_xyz=(0.5, 0.5, 1.5))
    result, out = fuse(spim, tmp_path / "aniso.zarr", cluster, fusion="avg", preserve_anisotropy=True)
    assert out.shape == (1, 1, 8, 12, 14) and result.voxel_size_xyz == (0.5, 0.5, 1.5)
    np.testing.assert_allclose(out[0, 0, :, 5, 5], 10 * np.arange(8), atol=1e-4)
    # without it, z is sampled every world pixel (3 per input plane) and interpolated linearly
    result, out = fuse(spim, tmp_path / "iso.zarr", cluster, fusion="avg")
    assert out.shape == (1, 1, 22, 12, 14) and result.voxel_size_xyz == (0.5, 0.5, 0.5)
    np.testing.assert_allclose(out[0, 0, :, 5, 5], 10 * np.arange(22) / 3, atol=1e-4)
    # an explicit factor overrides the mean over views
    _, out = fuse(spim, tmp_path / "f2.zarr", cluster, fusion="avg", preserve_anisotropy=True, anisotropy_factor=1.5)
    np.testing.assert_allclose(out[0, 0, :, 5, 5], 10 * np.arange(15) / 2, atol=1e-4)


def test_downsampled_output_reads_the_matching_pyramid_level(tmp_path, cluster):
    x = np.arange(64, dtype=np.float32)
    tile = np.broadcast_to(x, (16, 20, 64)).astype(np.float32)
    spim = make_dataset(tmp_path, [(tile, (0, 0, 0))], pyramid=True)
    result, out = fuse(spim, tmp_path / "ds2.zarr", cluster, fusion="avg", downsampling=2)
    assert out.shape == (1, 1, 8, 10, 32) and result.voxel_size_xyz == (2.0, 2.0, 2.0)
    plan = plan_fusion(spim, FuseParams(downsampling=2))
    assert plan.sources[ViewId(0, 0)].level == 1  # level 1 (2x2x2) is exactly as fine as the output
    # level 1 holds pair means centred on full-res 2j + 0.5: interpolated at world 2i it is exactly 2i
    np.testing.assert_allclose(out[0, 0, 4, 5, 1:-1], 2 * np.arange(1, 31), atol=1e-4)
    assert plan_fusion(spim, FuseParams()).sources[ViewId(0, 0)].level == 0


def test_named_bounding_box_and_view_selection(two_tiles, cluster, tmp_path):
    two_tiles.bounding_boxes.append(BoundingBox("middle", (25, 5, 5), (44, 14, 9)))
    try:
        _, out = fuse(two_tiles, tmp_path / "bb.zarr", cluster, fusion="avg", bounding_box="middle")
    finally:
        two_tiles.bounding_boxes.clear()
    assert out.shape == (1, 1, 5, 10, 20)
    np.testing.assert_array_equal(out[0, 0, 2, 5], [100] * 5 + [200] * 10 + [300] * 5)
    _, out = fuse(two_tiles, tmp_path / "one.zarr", cluster, fusion="avg", tiles=[1])
    assert out.shape == (1, 1, 20, 30, 40) and np.all(out[0, 0, 1:-1, 1:-1, 1:-1] == 300)
    with pytest.raises(UserError, match="no <BoundingBox> named 'nope'"):
        fuse(two_tiles, tmp_path / "x.zarr", cluster, bounding_box="nope")
    with pytest.raises(UserError, match="no view matches the selection"):
        fuse(two_tiles, tmp_path / "x.zarr", cluster, channels=[5])


def test_one_output_channel_per_channel(tmp_path, cluster):
    a = np.full((6, 8, 10), 5, np.uint16)
    b = np.full((6, 8, 10), 9, np.uint16)
    spim = make_dataset(tmp_path, [(a, (0, 0, 0)), (b, (0, 0, 0))], channels=[0, 1])
    _, out = fuse(spim, tmp_path / "c.zarr", cluster, fusion="avg", data_type="uint16")
    assert out.shape == (1, 2, 6, 8, 10)
    assert np.all(out[0, 0, 1:-1, 1:-1, 1:-1] == 5) and np.all(out[0, 1, 1:-1, 1:-1, 1:-1] == 9)


def test_rerun_with_other_parameters_is_refused(two_tiles, cluster, tmp_path):
    out = tmp_path / "f.zarr"
    fuse_dataset(two_tiles, str(out), FuseParams(chunk_size=(16, 16, 16)), cluster, "numpy")
    again = fuse_dataset(two_tiles, str(out), FuseParams(chunk_size=(16, 16, 16)), cluster, "numpy")
    assert again.n_skipped == again.n_blocks == 3 * 1 * 2  # complete: nothing to do (blocks 32x32x16)
    with pytest.raises(UserError, match="exists and was fused from other inputs or parameters"):
        fuse_dataset(two_tiles, str(out), FuseParams(chunk_size=(16, 16, 16), fusion="max"), cluster, "numpy")
    (tmp_path / "other").mkdir()
    with pytest.raises(UserError, match="exists and was not written by rhapso-gpu fuse"):
        fuse_dataset(two_tiles, str(tmp_path / "other"), FuseParams(), cluster, "numpy")


def test_blocks_are_whole_chunks_and_cover_the_volume():
    grid = make_grid((0, 0, 0), (99, 40, 9))
    assert grid.shape_zyx == (10, 41, 100)
    bs = blocks(grid.shape_zyx, (8, 32, 64))
    assert len(bs) == 2 * 2 * 2
    covered = np.zeros(grid.shape_zyx, int)
    for b in bs:
        covered[b.slices_zyx] += 1
        assert all(s % c == 0 for s, c in zip(b.start_zyx, (8, 32, 64)))
    assert np.all(covered == 1)


def test_tasks_read_only_overlapping_views(two_tiles):
    from rhapso_gpu.fusion.sources import block_read

    plan = plan_fusion(two_tiles, FuseParams(chunk_size=(16, 16, 16)))
    left, right = plan.sources[ViewId(0, 0)], plan.sources[ViewId(0, 1)]
    assert block_read(right, (0, 0, 0), (16, 16, 16)) is None  # tile 1 starts at x = 30
    read = block_read(left, (0, 0, 0), (16, 16, 16))
    np.testing.assert_array_equal(read.crop_lo_xyz, (0, 0, 0))
    np.testing.assert_array_equal(read.crop_hi_xyz, (16, 16, 16))  # the block plus one pixel for interpolation


@pytest.mark.parametrize("shard_chunks", [None, (2, 2, 1)])
def test_ngff_05_output_holds_the_same_volume(two_tiles, cluster, tmp_path, shard_chunks):
    from ome_zarr_models import v05

    _, out04 = fuse(two_tiles, tmp_path / "a.zarr", cluster)
    result, out05 = fuse(two_tiles, tmp_path / "b.zarr", cluster, ngff_version="0.5", shard_chunks=shard_chunks)
    np.testing.assert_array_equal(out04, out05)
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    v05.Image.from_zarr(group)
    if shard_chunks is not None:
        assert group["0"].shards == (1, 1, 16, 32, 32)  # 2 x 2 x 1 chunks of 16^3 (x, y, z)
        assert result.plan.block_zyx == (16, 64, 64)  # block_scale 2 x 2 x 1 shards
        with pytest.raises(UserError, match="shard_chunks must be positive and needs ngff_version 0.5"):
            validate_params(FuseParams, {"shard_chunks": [2, 2, 1]})


def test_bdv_xml_of_the_fused_volume_opens_as_a_dataset(two_tiles, cluster, tmp_path):
    from rhapso_gpu.fusion.bdv_xml import write_fused_xml
    from rhapso_gpu.geometry import apply_affine, view_affine
    from rhapso_gpu.io.images import open_view_levels

    two_tiles.bounding_boxes.append(BoundingBox("middle", (25, 5, 5), (44, 14, 9)))
    try:
        result, out = fuse(
            two_tiles,
            tmp_path / "f.zarr",
            cluster,
            fusion="avg",
            data_type="uint16",
            bounding_box="middle",
            preserve_anisotropy=True,
            anisotropy_factor=2.0,
        )
    finally:
        two_tiles.bounding_boxes.clear()
    xml = write_fused_xml(result.plan, str(tmp_path / "f.zarr"), str(tmp_path / "fused.xml"))
    spim = load_spimdata(xml)
    assert spim.view_ids() == [ViewId(0, 0)] and spim.setups[0].size_xyz == (20, 10, 3)
    assert spim.setups[0].voxel_size.size_xyz == (1.0, 1.0, 2.0)
    assert 'path="."' in (tmp_path / "fused.xml").read_text()
    levels = open_view_levels(spim, ViewId(0, 0))
    np.testing.assert_array_equal(levels[0].data_zyx.compute(), out[0, 0])
    # fused pixels land where the input views put them: the box starts at world (25, 5, 5), z steps by 2
    np.testing.assert_allclose(
        apply_affine(view_affine(spim, ViewId(0, 0)), [[0, 0, 0], [19, 9, 2]]), [[25, 5, 5], [44, 14, 9]]
    )


def test_block_tasks_read_their_crops_themselves(two_tiles, cluster, tmp_path, monkeypatch):
    """Task graphs hold the views' readers but never compute a view image as a task input."""
    graphs = []
    compute = cluster.compute

    def spy(*tasks, **kwargs):
        graphs.extend(dict(t.__dask_graph__()) for t in tasks)
        return compute(*tasks, **kwargs)

    monkeypatch.setattr(cluster, "compute", spy)
    result, out = fuse(two_tiles, tmp_path / "f.zarr", cluster, fusion="max")
    np.testing.assert_array_equal(out[0, 0, 1:-1, 1:-1, 1:-1], np.broadcast_to(KNOWN["max"][1:-1], (18, 28, 68)))
    assert graphs and all(len(g) == 2 for g in graphs)  # the task and its list of reads, nothing else
    # float32 output: the largest task holds its crops twice (as read, and packed) and its float32 block
    assert result.max_task_bytes >= 4 * 16**3
