"""Interest-point matching on synthetic point clouds with a known transform (issue 4 acceptance)."""

import types

import numpy as np
import pytest
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from rhapso_gpu.matching.descriptors import (
    find_candidates,
    neighbour_offsets,
    rotation_descriptors,
    translation_descriptors,
)
from rhapso_gpu.matching.icp import IcpParams, icp
from rhapso_gpu.matching.knn import knn, knn_bruteforce
from rhapso_gpu.matching.pairwise import (
    LEAVE_ONE_OUT_MAX,
    DescriptorParams,
    consistent,
    cross_validate,
    match_offsets,
    match_points,
)
from rhapso_gpu.matching.ransac import RansacParams, draw_samples, ransac, residuals, trim
from rhapso_gpu.models import TransformModel, transform_points


def point_clouds(seed, kind, n_true=500, outliers=0.3, jitter=0.3, max_rotation_deg=3.0, box=(200, 200, 60)):
    """Two clouds sharing ``n_true`` points under a known transform, each with 30% unshared points.

    Returns A (N_A, 3), B (N_B, 3), the true 3x4 affine A -> B and the set of true pairs (row in A, row in B).
    """
    rng = np.random.default_rng(seed)
    box = np.asarray(box, float)
    true = rng.uniform(0, 1, (n_true, 3)) * box
    rot = Rotation.from_rotvec(rng.normal(0, 1, 3) * np.deg2rad(max_rotation_deg) / np.sqrt(3)).as_matrix()
    linear = {"translation": np.eye(3), "rigid": rot, "affine": rot @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3)))}
    affine = np.c_[linear[kind], rng.uniform(-15, 15, 3)]
    n_out = round(outliers * n_true / (1 - outliers))  # unshared points: 30% of each cloud
    a = np.concatenate([true + rng.normal(0, jitter, true.shape), rng.uniform(0, 1, (n_out, 3)) * box])
    b = np.concatenate(
        [transform_points(affine, true) + rng.normal(0, jitter, true.shape),
         transform_points(affine, rng.uniform(0, 1, (n_out, 3)) * box)]
    )
    perm_a, perm_b = rng.permutation(len(a)), rng.permutation(len(b))
    row_a, row_b = np.argsort(perm_a), np.argsort(perm_b)  # new row of original point i
    truth = set(zip(row_a[:n_true].tolist(), row_b[:n_true].tolist()))
    return a[perm_a], b[perm_b], affine, truth


def transform_rms(estimated, truth, points):
    """RMS distance between two affines' images of ``points``."""
    return float(np.sqrt(((transform_points(estimated, points) - transform_points(truth, points)) ** 2).sum(1).mean()))


# ---------------------------------------------------------------- acceptance


MODELS = {
    "translation": TransformModel("translation", "none"),
    "rigid": TransformModel("rigid", "none"),
    "affine": TransformModel("affine", "none"),
    "regularised-affine": TransformModel("affine", "rigid", 0.1),
}
TRUTH_KIND = {"translation": "translation", "rigid": "rigid", "affine": "affine", "regularised-affine": "rigid"}


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("method", ["fast-rotation", "fast-translation", "precise-translation"])
def test_acceptance_transform_and_correspondences(method, model_name):
    a, b, truth_affine, truth = point_clouds(7, TRUTH_KIND[model_name])
    result = match_points(a, b, MODELS[model_name], DescriptorParams(method), RansacParams(), seed=1)
    assert result.ok, result.reason
    found = set(zip(result.index_a.tolist(), result.index_b.tolist()))
    assert len(found & truth) >= 0.95 * len(truth)
    assert len(found - truth) <= 0.01 * len(truth)
    assert transform_rms(result.model, truth_affine, a[result.index_a]) < 0.1
    assert consistent(result.index_a, result.index_b).all()


def test_rotation_invariant_descriptor_handles_large_rotations():
    rng = np.random.default_rng(3)
    a, _, _, _ = point_clouds(3, "rigid")
    rot = Rotation.from_euler("xyz", [40, -25, 60], degrees=True).as_matrix()
    affine = np.c_[rot, [30.0, -20.0, 5.0]]
    b = transform_points(affine, a) + rng.normal(0, 0.3, a.shape)
    result = match_points(a, b, TransformModel("rigid", "none"), DescriptorParams("fast-rotation"), seed=0)
    assert result.ok and result.index_a.size >= 0.95 * len(a)
    assert transform_rms(result.model, affine, a[result.index_a]) < 0.1
    translation_only = match_points(a, b, TransformModel("rigid", "none"), DescriptorParams("fast-translation"))
    assert not translation_only.ok  # no invariance to rotation: reported, not forced


def test_ransac_inliers_are_true_among_candidates_without_guided_matching():
    """RANSAC alone (BigStitcher's flow): every inlier is true, and >= 95% of the true candidates are kept.

    "True" includes an unshared pair that happens to lie as close as a true one under the true transform
    (within max_epsilon 5): no RANSAC can tell it apart (seed 11 has one, 1.09 px apart)."""
    a, b, affine, truth = point_clouds(11, "rigid")
    close = np.linalg.norm(transform_points(affine, a)[:, None] - b[None], axis=-1) < 5.0
    truth = truth | set(zip(*np.nonzero(close)))
    ia, ib = find_candidates(a, b, "fast-rotation", redundancy=1, significance=3.0)
    true_candidates = {p for p in zip(ia.tolist(), ib.tolist()) if p in truth}
    result = match_points(a, b, TransformModel("rigid", "none"), DescriptorParams("fast-rotation"), guided=False)
    found = set(zip(result.index_a.tolist(), result.index_b.tolist()))
    assert found <= truth
    assert len(found) >= 0.95 * len(true_candidates)
    assert result.candidates == ia.size


def test_unmatchable_pair_reports_reason():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 100, (300, 3)), rng.uniform(0, 100, (300, 3))
    result = match_points(a, b, TransformModel("affine"), DescriptorParams("fast-rotation"))
    assert not result.ok and result.model is None and result.index_a.size == 0
    assert "inlier" in result.reason or "candidates" in result.reason
    few = match_points(a[:5], b[:5], TransformModel("rigid"))
    assert not few.ok and "candidates" in few.reason


# ---------------------------------------------------------------- RANSAC


def test_ransac_on_candidates_with_30_percent_wrong_pairs():
    rng = np.random.default_rng(5)
    src = rng.uniform(0, 200, (2000, 3))
    truth = np.c_[Rotation.from_rotvec([0.02, -0.01, 0.03]).as_matrix(), [4.0, -3.0, 2.0]]
    dst = transform_points(truth, src) + rng.normal(0, 0.3, src.shape)
    wrong = rng.random(2000) < 0.3
    dst[wrong] = rng.uniform(0, 200, (wrong.sum(), 3))
    result = ransac(src, dst, TransformModel("rigid", "none"), RansacParams(iterations=2000), seed=3)
    inl = np.zeros(2000, bool)
    inl[result.inliers] = True
    assert (inl & wrong).sum() <= 2  # a wrong pair may land within epsilon by chance
    assert (inl & ~wrong).sum() >= 0.95 * (~wrong).sum()
    assert transform_rms(result.model, truth, src[~wrong]) < 0.05


def test_ransac_is_deterministic_and_seed_dependent_only():
    a, b, _, _ = point_clouds(2, "affine")
    ia, ib = find_candidates(a, b, "fast-translation")
    model = TransformModel("affine", "rigid", 0.1)
    runs = [ransac(a[ia], b[ib], model, RansacParams(iterations=3000), seed=[4, 0, 1]) for _ in range(2)]
    np.testing.assert_array_equal(runs[0].inliers, runs[1].inliers)
    np.testing.assert_array_equal(runs[0].model, runs[1].model)


def test_draw_samples_distinct_and_uniform():
    rng = np.random.default_rng(0)
    s = draw_samples(rng, 200_000, 6, 4)
    assert s.min() == 0 and s.max() == 5
    assert (np.sort(s, axis=1)[:, 1:] != np.sort(s, axis=1)[:, :-1]).all()
    counts = np.bincount(s.ravel(), minlength=6) / s.size
    np.testing.assert_allclose(counts, 1 / 6, atol=0.005)
    first_two = np.bincount(s[:, 0] * 6 + s[:, 1], minlength=36).reshape(6, 6) / len(s)
    off = ~np.eye(6, dtype=bool)
    np.testing.assert_allclose(first_two[off], 1 / 30, atol=0.003)


def test_batched_scoring_matches_per_hypothesis_loop():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (300, 3))
    dst = src + rng.normal(0, 3, src.shape)
    samples = draw_samples(rng, 50, 300, 3)
    model = TransformModel("rigid", "none")
    hyp = model.fit(src[samples], dst[samples])
    batched = residuals(hyp, src, dst) < 5.0
    for h in range(50):
        single = model.fit(src[samples[h]], dst[samples[h]])
        loop = [np.linalg.norm(single[:, :3] @ p + single[:, 3] - q) < 5.0 for p, q in zip(src, dst)]
        np.testing.assert_array_equal(batched[h], loop)


# ---------------------------------------------------------------- kNN and descriptors


def test_bruteforce_knn_matches_kdtree():
    rng = np.random.default_rng(0)
    data, queries = rng.normal(size=(3000, 6)), rng.normal(size=(700, 6))
    d_bf, i_bf = knn_bruteforce(data, queries, 5, np)
    d_kd, i_kd = cKDTree(data).query(queries, k=5)
    np.testing.assert_array_equal(i_bf, i_kd)
    np.testing.assert_allclose(d_bf, d_kd**2, rtol=1e-12)
    _, i_knn = knn(data, queries, 5, np)
    np.testing.assert_array_equal(i_knn, i_kd)


def test_candidates_identical_with_bruteforce_search(monkeypatch):
    """The GPU path (brute-force kNN) gives the same candidates as the KD-tree path."""
    from rhapso_gpu.matching import descriptors

    a, b, _, _ = point_clouds(4, "rigid", n_true=200)
    for method in ("fast-rotation", "fast-translation"):
        expected = find_candidates(a, b, method)
        monkeypatch.setattr(descriptors, "knn", knn_bruteforce)
        got = find_candidates(a, b, method)
        monkeypatch.undo()
        np.testing.assert_array_equal(expected[0], got[0])
        np.testing.assert_array_equal(expected[1], got[1])


def test_descriptor_invariances():
    rng = np.random.default_rng(2)
    pts = rng.uniform(0, 50, (100, 3))
    moved = pts @ Rotation.from_euler("z", 70, degrees=True).as_matrix().T + [10, 20, 30]
    np.testing.assert_allclose(rotation_descriptors(pts, 1), rotation_descriptors(moved, 1), atol=1e-9)
    np.testing.assert_allclose(translation_descriptors(pts + 5.0, 3, 1), translation_descriptors(pts, 3, 1), atol=1e-9)
    off = neighbour_offsets(pts, 4)
    assert off.shape == (100, 4, 3)
    assert (np.diff(np.linalg.norm(off, axis=-1), axis=1) >= 0).all()
    dup = np.concatenate([pts, pts[:1]])  # subsets holding a duplicate point are invalid, not a crash
    desc = translation_descriptors(dup, 3, 1)[0]  # subsets (0,1,2) (0,1,3) (0,2,3) hold it, (1,2,3) does not
    assert np.isnan(desc[:3]).all() and np.isfinite(desc[3]).all()


# ---------------------------------------------------------------- ICP and offset consensus


def test_icp_from_current_registration_converges():
    """ICP (no invariance): a misregistration of ~2 px and 1 degree is removed from the identity start."""
    a, b, truth_affine, truth = point_clouds(8, "rigid", max_rotation_deg=1.0)
    shift = np.c_[np.eye(3), -truth_affine[:, 3] + [1.5, -1.0, 0.5]]  # leave ~2 px of translation to find
    b = transform_points(shift, b)
    expected = shift @ np.r_[truth_affine, [[0, 0, 0, 1]]]
    ia, ib, affine = icp(a, b, TransformModel("rigid", "none"), params=IcpParams(max_distance=5.0))
    assert affine is not None
    found = set(zip(ia.tolist(), ib.tolist()))
    assert len(found & truth) >= 0.95 * len(truth) and len(found - truth) <= 0.01 * len(truth)
    assert transform_rms(affine, expected, a[ia]) < 0.1


def test_icp_with_ransac_per_iteration():
    a, b, truth_affine, truth = point_clouds(9, "translation")
    b = b - truth_affine[:, 3] + [1.0, 1.0, -1.0]
    ia, ib, affine = icp(a, b, TransformModel("translation", "none"), params=IcpParams(5.0, 50, use_ransac=True))
    assert affine is not None and len(set(zip(ia.tolist(), ib.tolist())) & truth) >= 0.95 * len(truth)


def test_offset_consensus_on_sparse_thin_slab():
    """Few points in a thin slab (descriptor neighbourhoods differ between the views): still matched."""
    rng = np.random.default_rng(12)
    true = rng.uniform(0, 1, (12, 3)) * [120, 120, 10]
    affine = np.c_[Rotation.from_rotvec([0, 0, 0.008]).as_matrix(), [6.0, -7.0, 3.0]]
    a = np.concatenate([true, rng.uniform(0, 1, (8, 3)) * [120, 120, 10]]) + rng.normal(0, 0.3, (20, 3))
    b = np.concatenate([transform_points(affine, true), rng.uniform(0, 1, (9, 3)) * [120, 120, 10]])
    b += rng.normal(0, 0.3, b.shape)
    params = RansacParams(min_inliers=6)
    result = match_offsets(a, b, TransformModel("rigid", "none"), 20.0, params)
    assert result.ok, result.reason
    assert set(zip(result.index_a.tolist(), result.index_b.tolist())) <= {(i, i) for i in range(12)}
    assert result.index_a.size >= 11
    assert not match_offsets(a, b, TransformModel("rigid", "none"), 3.0, params).ok  # error beyond the radius


def test_empty_and_tiny_clouds_fail_with_a_reason():
    none = np.zeros((0, 3))
    some = np.random.default_rng(0).uniform(0, 50, (30, 3))
    model = TransformModel("rigid", "none")
    for a, b in ((none, some), (some, none)):
        assert icp(a, b, model)[2] is None
        assert not match_offsets(a, b, model).ok
        for method in ("fast-rotation", "fast-translation", "precise-translation"):
            result = match_points(a, b, model, DescriptorParams(method))
            assert not result.ok and result.reason


class _DeviceLikeModule(types.ModuleType):
    """NumPy under another module object: takes every ``xp is not numpy`` branch (the GPU code path)."""

    def __getattr__(self, name):
        return getattr(np, name)


@pytest.mark.parametrize("method", ["fast-rotation", "fast-translation", "precise-translation", "offset-consensus"])
def test_non_numpy_code_path_gives_identical_results(method):
    """The array-module-generic path (brute-force kNN, host transfers) matches the NumPy/KD-tree path exactly."""
    a, b, _, _ = point_clouds(6, "rigid", n_true=250)
    model = TransformModel("affine", "rigid", 0.1)
    expected = match_points(a, b, model, DescriptorParams(method), seed=2)
    got = match_points(a, b, model, DescriptorParams(method), seed=2, xp=_DeviceLikeModule("xp"))
    assert expected.ok and got.ok
    np.testing.assert_array_equal(expected.index_a, got.index_a)
    np.testing.assert_array_equal(expected.index_b, got.index_b)
    np.testing.assert_allclose(expected.model, got.model, atol=1e-9)


def test_cross_validation_drops_a_wrong_match_that_trimming_keeps():
    """7 matches in a thin slab, one 5.6 px off: the fit to all bends to it, the fit to the others does not."""
    rng = np.random.default_rng(4)
    a = np.c_[rng.uniform(0, 120, (7, 2)), rng.uniform(0, 12, 7)]
    b = a + [2.0, -3.0, 1.0] + rng.normal(0, 0.1, a.shape)
    b[3] += [4.0, -3.0, 2.5]
    rigid = TransformModel("rigid", "none")
    assert trim(rigid, a, b, np.arange(7), 4.0)[0].tolist() == list(range(7))
    assert cross_validate(rigid, a, b, 5.0).tolist() == [0, 1, 2, 4, 5, 6]
    assert cross_validate(rigid, a, b, 8.0).tolist() == list(range(7))  # within epsilon: kept


@pytest.mark.parametrize("n", [LEAVE_ONE_OUT_MAX, 20 * LEAVE_ONE_OUT_MAX])
def test_cross_validation_keeps_every_true_match(n):
    rng = np.random.default_rng(n)
    a = rng.uniform(0, 500, (n, 3))
    b = transform_points(np.c_[Rotation.from_euler("z", 2, degrees=True).as_matrix(), [3, -2, 1]], a)
    b += rng.normal(0, 0.3, a.shape)
    b[: n // 50] += rng.choice([-1, 1], (n // 50, 3)) * 6.0  # 2% wrong by 10.4 px
    keep = cross_validate(TransformModel("affine", "rigid", 0.1), a, b, 5.0)
    assert keep.tolist() == list(range(n // 50, n))


def test_precise_translation_needs_a_second_candidate_within_the_search_radius():
    """RGLDM's ratio test needs a runner-up: an A point with a single B point in range is no candidate."""
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 200, (40, 3))
    b = a + rng.normal(0, 0.2, a.shape)  # B = A: every A point's true partner is its best descriptor match
    wide = find_candidates(a, b, "precise-translation", search_radius=1000.0)
    assert wide[0].size >= 30  # with every B point in range, the ratio test passes the true partners
    # within 2 world units only the partner itself is in range (points are >> 2 apart): no runner-up
    assert np.min(np.linalg.norm(a[:, None] - a[None], axis=-1) + 1e9 * np.eye(40)) > 4.0
    ia, _ = find_candidates(a, b, "precise-translation", search_radius=2.0)
    assert ia.size == 0
