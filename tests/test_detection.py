"""DoG detection: constants, downsampling and its mapping, exact block partition, selection, CLI."""

import itertools
import json

import numpy as np
import pytest
import scipy.ndimage as ndi
from scipy.spatial import cKDTree

from cpu_fallback.kernels import downsample_mean
from rhapso_gpu.backend import get_backend
from rhapso_gpu.cli import main
from rhapso_gpu.detection import detect_interest_points
from rhapso_gpu.detection.background import median_background, sample_offsets
from rhapso_gpu.detection.blocks import detect_block, plan_blocks
from rhapso_gpu.detection.dog import K_MIN1_INV, difference_of_gaussian, dog_sigmas, full_kernel, half_kernel
from rhapso_gpu.detection.downsampling import DownsamplePlan, downsample_region, level_range, plan_downsampling
from rhapso_gpu.detection.params import DetectParams
from rhapso_gpu.detection.selection import auto_threshold, brightest, brightest_per_box, combine_close
from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine
from rhapso_gpu.io.interestpoints import read_interest_points
from rhapso_gpu.io.params import validate_params
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.scheduler import open_cluster

NUMPY = "numpy"

# --- the DoG contract --------------------------------------------------------------------------


def test_sigmas_and_constants_are_bigstitchers():
    s1, s2 = dog_sigmas(1.8)
    assert round(s1, 4) == 1.7292 and round(s2, 4) == 2.0814
    assert round(K_MIN1_INV, 4) == 5.2852


@pytest.mark.parametrize("sigma, size", [(0.3, 2), (0.5, 3), (1.7292, 6), (2.0814, 7), (4.0, 13)])
def test_gauss3_half_kernel(sigma, size):
    h = half_kernel(sigma)
    assert len(h) == size  # max(2, int(3 sigma + 0.5) + 1)
    assert np.isclose(full_kernel(sigma).sum(), 1.0) and np.all(np.diff(h) < 0)
    # the tail is a parabola slope * (L - x)^2 that reaches 0 just past the end
    x = np.arange(size)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g[0] + 2 * g[1:].sum()
    assert abs(h[1] / h[0] - g[1] / g[0]) < 1e-12  # the body is the Gaussian


def test_dog_of_a_blob_is_a_negative_minimum_at_the_blob():
    image = np.zeros((21, 21, 21), np.float32)
    image[10, 10, 10] = 1.0
    image = ndi.gaussian_filter(image, 1.5).astype(np.float32)
    dog = difference_of_gaussian(get_backend(NUMPY), image, 1.8)
    assert dog.dtype == np.float32 and np.unravel_index(np.argmin(dog), dog.shape) == (10, 10, 10)
    assert dog.min() < 0


# --- downsampling ------------------------------------------------------------------------------


def test_level_choice_and_remaining_steps():
    levels = [((1, 1, 1), (64, 256, 256)), ((2, 2, 1), (64, 128, 128)), ((4, 4, 2), (32, 64, 64))]
    plan = plan_downsampling(levels, 8, 2)
    assert (plan.level, plan.steps_xyz, plan.shape_zyx) == (2, (1, 1, 0), (32, 32, 32))
    plan = plan_downsampling(levels, 4, 1)  # level 2 has z factor 2 > 1: level 1, then one xy step
    assert (plan.level, plan.steps_xyz, plan.factors_xyz) == (1, (1, 1, 0), (4, 4, 1))
    assert plan_downsampling(levels, 1, 1).level == 0
    with pytest.raises(UserError, match="dsxy=3: downsampling must be a power of two"):
        plan_downsampling(levels, 3, 1)
    with pytest.raises(UserError, match="at least 3 per axis"):
        plan_downsampling(levels, 128, 32)


def test_two_x_step_is_the_quasi_gauss_kernel():
    vol = np.broadcast_to(np.arange(7, dtype=np.float32) ** 2, (3, 3, 7)).copy()  # x: 0 1 4 9 16 25 36
    plan = DownsamplePlan(0, (1, 1, 1), (1, 0, 0), (3, 3, 7), (3, 3, 3))
    out = downsample_region(np, vol, (0, 0, 0), plan, (0, 0, 0), (3, 3, 3))
    # i = 0: (v0 + 0.5 v1) / 1.5; i > 0: 0.25 v[2i-1] + 0.5 v[2i] + 0.25 v[2i+1]
    np.testing.assert_allclose(out[0, 0], [0.5 / 1.5, 0.25 * 1 + 0.5 * 4 + 0.25 * 9, 0.25 * 9 + 0.5 * 16 + 0.25 * 25])
    np.testing.assert_allclose(plan.to_full_res_xyz[:3], [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])


def test_mapping_composes_mipmap_and_steps():
    plan = DownsamplePlan(2, (4, 4, 2), (1, 1, 2), (8, 16, 16), (2, 8, 8))
    m = plan.to_full_res_xyz
    # level voxel q -> 4 q + 1.5 (x, y), 2 q + 0.5 (z); downsampled p -> level 2 p (x, y), 4 p (z)
    np.testing.assert_allclose(apply_affine(m, np.array([[1.0, 2.0, 3.0]])), [[8 + 1.5, 16 + 1.5, 24 + 0.5]])
    assert plan.factors_xyz == (8, 8, 8)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_region_downsampling_equals_whole_image(steps):
    rng = np.random.default_rng(steps)
    n = 53
    vol = rng.random((n, 11, 9)).astype(np.float32)
    shape = (n >> steps, 11, 9)
    plan = DownsamplePlan(0, (1, 1, 1), (0, 0, steps), (n, 11, 9), shape)
    whole = downsample_region(np, vol, (0, 0, 0), plan, (0, 0, 0), shape)
    for a in range(shape[0]):
        for b in range(a + 1, shape[0] + 1):
            la, lb = level_range(a, b, steps, n)
            part = downsample_region(np, vol[la:lb], (la, 0, 0), plan, (a, 0, 0), (b, 11, 9))
            np.testing.assert_array_equal(part, whole[a:b])


def _blob_volume(shape_zyx, centres_zyx, sigma_zyx, seed=0):
    """Gaussian blobs (peak 1000 over 100) at sub-pixel centres, rendered analytically, Poisson noise."""
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape_zyx), indexing="ij")
    vol = np.full(shape_zyx, 100.0)
    for c in centres_zyx:
        vol += 1000.0 * np.exp(-sum((g - x) ** 2 / (2 * s**2) for g, x, s in zip(grids, c, sigma_zyx)))
    return np.random.default_rng(seed).poisson(vol).astype(np.uint16)


def _pyramid(volume, factors_xyz):
    levels = [volume]
    for prev, f in itertools.pairwise(factors_xyz):
        rel = tuple(int(a // b) for a, b in zip(f[::-1], prev[::-1]))
        levels.append(downsample_mean(levels[-1], rel))
    return levels


def _detect_volume(levels, factors_xyz, dsxy, dsz, sigma, threshold, block_size=(512, 512, 512), median=0,
                   find_min=False):
    plan = plan_downsampling([(f, lv.shape) for f, lv in zip(factors_xyz, levels)], dsxy, dsz)
    tasks = plan_blocks(plan, block_size, sigma, threshold, True, find_min, 100.0, 1100.0, median)
    results = [detect_block(levels[plan.level][t.level_slices], t, NUMPY) for t in tasks]
    merged = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    order = np.lexsort(merged["start_zyx"].T[::-1])
    merged = {k: v[order] for k, v in merged.items()}
    return plan, merged, apply_affine(plan.to_full_res_xyz, merged["position_zyx"][:, ::-1])


PYRAMIDS = {
    "flat": [(1, 1, 1)],
    "xy-first": [(1, 1, 1), (2, 2, 1), (4, 4, 2)],
    "isotropic": [(1, 1, 1), (2, 2, 2), (4, 4, 4)],
    "deep": [(1, 1, 1), (2, 2, 1), (4, 4, 1), (8, 8, 2)],
}
REQUESTS = [(1, 1), (2, 1), (2, 2), (4, 2), (4, 1), (1, 2), (4, 4), (8, 2)]


@pytest.fixture(scope="module")
def known_blobs():
    rng = np.random.default_rng(42)
    grid = np.stack(np.meshgrid([16, 40, 64], [20, 50, 80, 110], [20, 50, 80, 110], indexing="ij"))
    centres = grid.reshape(3, -1).T + rng.uniform(-2, 2, (grid[0].size, 3))
    volume = _blob_volume((80, 128, 128), centres, (4.0, 4.0, 4.0))
    return volume, centres[:, ::-1]  # centres as xyz


@pytest.mark.parametrize("pyramid", list(PYRAMIDS))
@pytest.mark.parametrize("dsxy, dsz", REQUESTS)
def test_points_map_back_to_full_resolution(known_blobs, pyramid, dsxy, dsz):
    """Every pyramid depth and dsxy != dsz: detections land on the known centres, without bias."""
    volume, truth_xyz = known_blobs
    factors = PYRAMIDS[pyramid]
    levels = _pyramid(volume, factors)
    sigma = float(np.clip(4.0 / np.sqrt(dsxy * dsz), 1.0, 3.0))  # the blob's size in downsampled pixels
    plan, _, loc = _detect_volume(levels, factors, dsxy, dsz, sigma, 0.02)
    assert plan.factors_xyz == (dsxy, dsxy, dsz)
    d, i = cKDTree(loc).query(truth_xyz)
    found = d < max(1.0, 0.5 * max(dsxy, dsz))
    # BigStitcher's localisation drops a few undersampled blobs centred between voxels on every axis (the Newton
    # steps oscillate and never converge); nothing else may be lost, and nothing may be added
    assert found.mean() >= 0.95 and len(loc) <= len(truth_xyz), (found.sum(), len(loc))
    # a mapping error (a missing (f - 1) / 2 shift or a forgotten 2x step) is a bias of >= 0.5 px on every blob
    bias = (loc[i[found]] - truth_xyz[found]).mean(axis=0)
    assert np.all(np.abs(bias) < 0.1 + 0.05 * max(dsxy, dsz)), bias


# --- blocks: exact partition -------------------------------------------------------------------


@pytest.mark.parametrize("median", [0, 3])
@pytest.mark.parametrize("dsxy, dsz", [(1, 1), (2, 1), (4, 2)])
def test_blocks_partition_peaks_exactly(known_blobs, dsxy, dsz, median):
    volume, _ = known_blobs
    vol = volume[:40, :70, :90]  # cut through blobs: peaks near every border
    rng = np.random.default_rng(5)
    vol = (vol.astype(np.float64) + rng.normal(0, 30, vol.shape)).clip(0).astype(np.uint16)  # many weak extrema
    factors = PYRAMIDS["xy-first"]
    levels = _pyramid(vol, factors)
    _, whole, _ = _detect_volume(levels, factors, dsxy, dsz, 1.2, 0.002, median=median, find_min=True)
    assert len(whole["kind"]) >= 8 and set(whole["kind"].tolist()) == {-1, 1}
    for block_size in [(13, 17, 7), (32, 9, 40)] + ([(5, 4, 6)] if median == 0 else []):
        _, parts, _ = _detect_volume(levels, factors, dsxy, dsz, 1.2, 0.002, block_size, median, find_min=True)
        for key in whole:  # same peaks, same order, identical bits, no duplicates
            np.testing.assert_array_equal(parts[key], whole[key], err_msg=key)
        assert len(np.unique(parts["start_zyx"], axis=0)) == len(parts["start_zyx"])


# --- background -------------------------------------------------------------------------------


def test_median_background_is_exact_separable_for_small_radius():
    rng = np.random.default_rng(1)
    v = rng.random((3, 20, 21)).astype(np.float32)
    got = median_background(get_backend(NUMPY), v, 2)
    want = ndi.median_filter(ndi.median_filter(v, size=(1, 1, 5), mode="reflect"), size=(1, 5, 1), mode="reflect")
    np.testing.assert_array_equal(got, want)
    assert sample_offsets(10).tolist() == [-10, -7, -3, 0, 3, 7, 10]


def test_median_background_removes_a_smooth_background_and_keeps_beads():
    _, y, x = np.meshgrid(np.arange(4), np.arange(64), np.arange(64), indexing="ij")
    background = (100 + 0.5 * x + 0.3 * y).astype(np.float32)
    bead = np.zeros_like(background)
    bead[2, 30, 30] = 500.0
    image = background + ndi.gaussian_filter(bead, (0, 1.2, 1.2)).astype(np.float32)
    est = median_background(get_backend(NUMPY), image, 10)
    amplitude = image[2, 30, 30] - background[2, 30, 30]
    inner = (slice(None), slice(12, 52), slice(12, 52))
    error = np.abs(est - background)[inner]
    assert error.max() < 0.05 * amplitude  # the bead barely leaks into the background
    assert error[:, :, :5].max() < 1e-3  # away from the bead, a linear ramp is its own median
    assert image[2, 30, 30] - est[2, 30, 30] > 0.9 * amplitude


# --- selection --------------------------------------------------------------------------------


def test_auto_threshold_keeps_the_target_count():
    strength = np.array([0.5, 0.1, 0.3, 0.2, 0.05])
    t = auto_threshold(strength, 3, 0.01)
    assert t == 0.1 and (strength > t).sum() == 3  # the 4th strongest: the 3 strongest lie above it
    assert (strength > auto_threshold(strength, 2, 0.01)).sum() == 2
    assert auto_threshold(strength, 10, 0.01) == 0.01
    assert auto_threshold(strength, 1, 0.4) == 0.4  # never below the floor


def test_combine_close_keeps_the_strongest_of_a_cluster():
    pts = np.array([[0, 0, 0], [0.3, 0, 0], [10, 0, 0], [0.6, 0, 0], [10.4, 0, 0]], float)
    kept = combine_close(pts, np.array([1.0, 5.0, 1.0, 1.0, 1.0]), 0.5)
    assert kept.tolist() == [1, 2]  # 0 and 3 are within 0.5 of 1; 4 within 0.5 of 2 (tie: the earlier wins)
    assert combine_close(pts, np.ones(5), 0.0).tolist() == [0, 1, 2, 3, 4]


def test_brightest_and_per_box():
    inten = np.array([5.0, 1.0, 9.0, 7.0, 3.0, 8.0])
    assert brightest(inten, 3).tolist() == [2, 3, 5]
    box = np.array([0, 0, 0, 1, 1, 1])
    # box 0 is the largest: 2 points; box 1 half as large: round(2 * 0.5) = 1 point
    assert brightest_per_box(inten, box, np.array([100, 50]), 2).tolist() == [0, 2, 5]


# --- parameters -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, message",
    [
        ({"dsxy": 3}, "parameter 'dsxy': Value error, must be a power of two"),
        ({"sigma": 0.4}, "parameter 'sigma'"),
        ({"threshold": -1}, "parameter 'threshold'"),
        ({"treshold": 0.1}, "unknown parameter 'treshold'; did you mean 'threshold'?"),
        ({"find": "all"}, "parameter 'find'"),
    ],
)
def test_parameters_are_validated_in_one_line(values, message):
    with pytest.raises(UserError, match=message) as err:
        validate_params(DetectParams, values, "detect.yml")
    assert "\n" not in str(err.value)


def test_defaults():
    p = DetectParams()
    assert (p.dsxy, p.dsz, p.sigma, p.threshold, p.find_max, p.find_min) == (2, 1, 1.8, 0.03, True, False)
    assert DetectParams(threshold="auto").threshold == "auto"


# --- the command line -------------------------------------------------------------------------

SMALL = ["--tiles", "2x1x1", "--tile-size", "64x64x24", "--cluster", "synchronous", "--backend", "numpy"]


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("detect")
    assert main(["synth", str(out), *SMALL, "--content", "beads", "--seed", "2", "-q"]) == 0
    return out


def test_cli_detects_writes_and_replaces(small_dataset, tmp_path, capsys):
    xml = small_dataset / "dataset.xml"
    params = tmp_path / "detect.yml"
    params.write_text("dsxy: 1\nsigma: 1.8\nblock_size: [24, 24, 16]\n")
    common = ["--cluster", "threads", "--workers", "2", "--backend", "numpy"]
    assert main(["detect", str(xml), "--params", str(params), "--set", "threshold=0.05", *common]) == 0
    out = capsys.readouterr().out
    assert "tp0/setup0" in out and "from the data" in out and "points in 2 views" in out
    spim = load_spimdata(str(xml))
    refs = {(r.view, r.label): r for r in spim.interest_points}
    ref = refs[(ViewId(0, 0), "beads")]
    assert ref.path == "tpId_0_viewSetupId_0/beads"
    assert "s=1.8 t=0.05" in ref.params and "downsampleXY=1 downsampleZ=1" in ref.params
    n5 = small_dataset / "interestpoints.n5"
    first = read_interest_points(str(n5), ViewId(0, 0), "beads")
    assert len(first.loc_xyz) > 3 and np.all(first.loc_xyz >= 0) and np.all(first.loc_xyz <= [63, 63, 23])
    attrs = json.loads((n5 / "tpId_0_viewSetupId_0" / "beads" / "attributes.json").read_text())
    assert attrs["rhapso-gpu detection"]["threshold_used"] == 0.05
    # re-running the label replaces it (the 3 brightest of the same points), another label is added
    args = ["--params", str(params), "--set", "threshold=0.05", "--set", "max_spots=3", *common]
    assert main(["detect", str(xml), *args]) == 0
    assert main(["detect", str(xml), "--label", "other", *common]) == 0
    capsys.readouterr()
    second = read_interest_points(str(n5), ViewId(0, 0), "beads")
    brightest3 = np.sort(np.argsort(-first.intensities)[:3])
    np.testing.assert_array_equal(second.loc_xyz, first.loc_xyz[brightest3])
    np.testing.assert_array_equal(second.ids, [0, 1, 2])
    assert len(read_interest_points(str(n5), ViewId(0, 0), "other").loc_xyz) > 0
    labels = sorted((r.view.setup, r.label) for r in load_spimdata(str(xml)).interest_points)
    assert labels == [(0, "beads"), (0, "other"), (1, "beads"), (1, "other")]


def test_cli_bad_parameter_is_one_line(small_dataset, capsys):
    code = main(["detect", str(small_dataset / "dataset.xml"), "--set", "sigmaa=2", "--cluster", "synchronous"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown parameter 'sigmaa'; did you mean 'sigma'?" in err and err.count("\n") == 1


def test_overlap_only_keeps_points_in_the_overlap(small_dataset):
    spim = load_spimdata(str(small_dataset / "dataset.xml"))
    with open_cluster("synchronous") as cluster:
        everything = detect_interest_points(spim, DetectParams(dsxy=1, threshold=0.05), cluster, NUMPY)
        overlap = detect_interest_points(
            spim, DetectParams(dsxy=1, threshold=0.05, overlap_only=True), cluster, NUMPY
        )
        auto = detect_interest_points(spim, DetectParams(dsxy=1, threshold="auto", auto_points=5), cluster, NUMPY)
        per_overlap = detect_interest_points(
            spim, DetectParams(dsxy=1, threshold="auto", auto_points=3, auto_per="overlap", overlap_only=True),
            cluster, NUMPY,
        )
        with pytest.raises(UserError, match="auto_per: overlap needs overlap_only: true"):
            detect_interest_points(spim, DetectParams(threshold="auto", auto_per="overlap"), cluster, NUMPY)
    for view in spim.view_ids():
        all_xyz, ov_xyz = everything.views[view].loc_xyz, overlap.views[view].loc_xyz
        assert 0 < len(ov_xyz) < len(all_xyz)
        # the overlap of two tiles side by side in x is a slab near one x border (15% of 64 px + stage error)
        edge = 63 - ov_xyz[:, 0] if view.setup == 0 else ov_xyz[:, 0]
        assert edge.max() < 20
        assert {tuple(p) for p in ov_xyz} <= {tuple(p) for p in all_xyz}
        assert len(auto.views[view].loc_xyz) == 5
        assert len(per_overlap.views[view].loc_xyz) == 3  # two tiles: one overlap each
        # the auto threshold keeps the 5 peaks with the largest |DoG| of the low-threshold run
        assert np.all(np.abs(auto.views[view].value) > auto.views[view].threshold)


def test_a_view_without_overlaps_gets_an_empty_list(tmp_path, capsys):
    assert main(["synth", str(tmp_path), "--tiles", "1x1x1", "--tile-size", "40x40x12", "--content", "beads",
                 "--cluster", "synchronous", "-q"]) == 0
    assert main(["detect", str(tmp_path / "dataset.xml"), "--set", "overlap_only=true", "--cluster", "synchronous"]) == 0
    assert "overlaps no other view" in capsys.readouterr().err
    points = read_interest_points(str(tmp_path / "interestpoints.n5"), ViewId(0, 0), "beads")
    assert points.loc_xyz.shape == (0, 3)
