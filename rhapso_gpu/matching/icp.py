"""Iterative closest points: nearest-neighbour assignment under a model, refit, repeat.

Used for BigStitcher's ``icp`` method (starting from the identity, i.e. the
current registrations) and for guided matching after RANSAC (starting from
the RANSAC model, to collect every point pair the model explains, not only
the descriptor candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from rhapso_gpu.matching.knn import knn
from rhapso_gpu.matching.ransac import RansacParams, ransac, trim
from rhapso_gpu.models import TransformModel, transform_points


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def mutual_nearest(points_a_xyz, points_b_xyz, affine, max_distance: float, xp: ModuleType = np):
    """Pairs ``(ia, ib)`` that are each other's nearest neighbour after mapping A with ``affine``.

    Parameters
    ----------
    points_a_xyz, points_b_xyz : array (N, 3)
        World coordinates.
    affine : array (3, 4)
        Model mapping A onto B.
    max_distance : float
        Largest accepted distance, world units.

    Returns
    -------
    ia, ib : ndarray of int64
        Host index arrays, sorted by ``ia``.
    """
    moved = transform_points(xp.asarray(affine), xp.asarray(points_a_xyz, dtype=xp.float64), xp)
    pb = xp.asarray(points_b_xyz, dtype=xp.float64)
    if moved.shape[0] == 0 or pb.shape[0] == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    d_ab, nn_ab = knn(pb, moved, 1, xp)
    _, nn_ba = knn(moved, pb, 1, xp)
    nn_ab, nn_ba, d_ab = _host(nn_ab[:, 0]), _host(nn_ba[:, 0]), _host(d_ab[:, 0])
    ia = np.arange(nn_ab.size)
    ok = (nn_ba[nn_ab] == ia) & (d_ab <= max_distance**2)
    return ia[ok], nn_ab[ok]


@dataclass(frozen=True)
class IcpParams:
    """ICP parameters (BigStitcher-Spark defaults).

    Attributes
    ----------
    max_distance : float
        Assignment distance, world units.
    max_iterations : int
        Most assignment/fit rounds.
    use_ransac : bool
        Fit each round with RANSAC (``ransac`` parameters) instead of plain least squares.
    """

    max_distance: float = 5.0
    max_iterations: int = 200
    use_ransac: bool = False


ICP_RANSAC = RansacParams(iterations=200, max_epsilon=2.5)
"""BigStitcher's RANSAC for ICP: 200 iterations, epsilon 2.5."""


def icp(
    points_a_xyz,
    points_b_xyz,
    model: TransformModel,
    initial=None,
    params: IcpParams = IcpParams(),
    ransac_params: RansacParams = ICP_RANSAC,
    seed=0,
    xp: ModuleType = np,
):
    """Iterate mutual-nearest-neighbour assignment and refitting until the matches stop changing.

    Parameters
    ----------
    points_a_xyz, points_b_xyz : array (N, 3)
        World coordinates of both clouds.
    model : TransformModel
    initial : array (3, 4), optional
        Starting model (identity when omitted).
    params : IcpParams
    ransac_params : RansacParams
        Used when ``params.use_ransac``; also sets the minimum number of matches.
    seed : int or list of int
        Seed of the per-round RANSAC.

    Returns
    -------
    ia, ib : ndarray of int64
        Matched rows of A and B.
    affine : ndarray (3, 4) or None
        Final model; None when fewer than the required matches were assigned.
    """
    need = max(model.min_matches, ransac_params.min_inliers)
    affine = np.eye(3, 4) if initial is None else np.asarray(initial, dtype=np.float64)
    pa = xp.asarray(points_a_xyz, dtype=xp.float64)
    pb = xp.asarray(points_b_xyz, dtype=xp.float64)
    previous = None
    ia = ib = np.zeros(0, np.int64)
    for _ in range(params.max_iterations):
        ia, ib = mutual_nearest(pa, pb, affine, params.max_distance, xp)
        if ia.size < need:
            return ia, ib, None
        src, dst = pa[xp.asarray(ia)], pb[xp.asarray(ib)]
        if params.use_ransac:
            result = ransac(src, dst, model, ransac_params, seed, xp)
            if result.model is None:
                return ia, ib, None
            ia, ib, affine = ia[result.inliers], ib[result.inliers], result.model
        else:
            keep, affine = trim(model, src, dst, np.arange(ia.size), ransac_params.max_trust, xp)
            ia, ib = ia[keep], ib[keep]
            if ia.size < need:
                return ia, ib, None
        state = (ia.tobytes(), ib.tobytes())
        if state == previous:
            break
        previous = state
    return ia, ib, affine
