"""Unrelated point clouds are never matched, however permissive the search (issue 4: no silent links)."""

import numpy as np
import pytest

from rhapso_gpu.io.params import validate_params
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.matching.grouping import PointSet
from rhapso_gpu.matching.pairwise import DescriptorParams, match_offsets, match_points
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.matching.ransac import RansacParams
from rhapso_gpu.matching.significance import MAX_CHANCE_P, chance_log10_p
from rhapso_gpu.matching.views import match_pair
from rhapso_gpu.models import TransformModel

RIGID = TransformModel("rigid", "none")
PERMISSIVE = RansacParams(iterations=1000, min_inliers=5)
"""As params/align.yml matches thin overlaps: no inlier-ratio bound in offset-consensus, 5 matches suffice."""


def _clouds(rng, n, clustered=False):
    """Two unrelated clouds of ``n`` points in a 100^3 box, uniform or in clumps of about 10 (nuclei-like)."""
    if not clustered:
        return rng.uniform(0, 100, (n, 3)), rng.uniform(0, 100, (n, 3))
    out = []
    for _ in range(2):
        centres = rng.uniform(0, 100, (n // 10 + 1, 3))
        out.append(centres[rng.integers(0, len(centres), n)] + rng.normal(0, 3, (n, 3)))
    return tuple(out)


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("n", [100, 300, 1000])
def test_offset_consensus_refuses_unrelated_clouds(n, clustered):
    rng = np.random.default_rng(n + clustered)
    for seed in range(3):
        a, b = _clouds(rng, n, clustered)
        result = match_offsets(a, b, RIGID, None, PERMISSIVE, seed)
        assert not result.ok and result.index_a.size == 0, (n, clustered, seed, result.index_a.size)
        assert "chance" in result.reason or "fewer than" in result.reason, result.reason


def test_descriptors_with_guided_matching_refuse_unrelated_clouds():
    rng = np.random.default_rng(7)
    for seed in range(3):
        a, b = _clouds(rng, 400)
        result = match_points(a, b, RIGID, DescriptorParams("fast-translation"), PERMISSIVE, seed)
        assert not result.ok, result.index_a.size


@pytest.mark.parametrize(("n", "shared"), [(20, 0.5), (300, 0.5), (3000, 0.5)])
def test_genuine_pairs_still_match_from_sparse_to_dense(n, shared):
    """Controls: a few shared points in a sparse cloud, and a cloud so dense that chance matches abound
    within epsilon (3000 points in 100^3: spacing ~7 px); both pass on the residuals' concentration."""
    rng = np.random.default_rng(n)
    a = rng.uniform(0, 100, (n, 3))
    b = (a + [3.0, -4.0, 2.0] + rng.normal(0, 0.3, a.shape))[rng.random(n) < shared]
    result = match_offsets(a, b, RIGID, None, PERMISSIVE, 0)
    assert result.ok, result.reason
    np.testing.assert_allclose(result.model[:, 3], [3.0, -4.0, 2.0], atol=0.3)


def test_chance_probability_known_answers():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 100, (1000, 3))  # density 1e-3: 0.52 points of B within 5 of any place
    a = rng.uniform(0, 100, (1000, 3))
    # 10 matches with residuals spread over the 5-ball: fewer than the ~520 chance expects
    assert chance_log10_p(a, b, rng.uniform(0, 5, 10), 5.0) > -1.0
    # 10 matches all within 0.3 of their partners: chance expects ~0.12 of them within 0.625
    log10_p = chance_log10_p(a[:10], b, np.full(10, 0.3), 5.0)
    assert log10_p < np.log10(MAX_CHANCE_P)
    assert chance_log10_p(a, b, np.zeros(0), 5.0) == 0.0


def _point_set(setup, world_xyz):
    n = len(world_xyz)
    return PointSet((ViewId(0, setup),), "beads", np.zeros(n, np.int64), np.arange(n, dtype=np.uint64), world_xyz)


def test_icp_method_refuses_unrelated_clouds_and_matches_a_genuine_pair():
    rng = np.random.default_rng(5)
    params = validate_params(MatchParams, {"method": "icp", "model": "rigid", "min_inliers": 5})
    a, b = _clouds(rng, 400)
    rows = np.arange(400)
    refused = match_pair(_point_set(0, a), _point_set(1, b), rows, rows, params).match
    assert not refused.ok and "chance" in refused.reason, refused.reason
    shifted = a + [1.0, -0.5, 0.7] + rng.normal(0, 0.2, a.shape)
    genuine = match_pair(_point_set(0, a), _point_set(1, shifted), rows, rows, params).match
    assert genuine.ok and genuine.index_a.size > 350 and genuine.inlier_ratio <= 1.0


def test_inlier_ratio_is_ransacs_share_of_the_candidates():
    """Guided matching adds matches beyond RANSAC's inliers; the reported ratio stays RANSAC's (<= 1)."""
    rng = np.random.default_rng(2)
    a = rng.uniform(0, 200, (400, 3))
    b = a + [2.0, 1.0, -1.0] + rng.normal(0, 0.2, a.shape)
    result = match_points(a, b, RIGID, DescriptorParams("fast-translation"), RansacParams(), 0)
    assert result.ok and 0 < result.ransac_inliers <= result.candidates
    assert result.inlier_ratio == result.ransac_inliers / result.candidates <= 1.0
    assert result.index_a.size >= result.ransac_inliers  # guided matching only adds
