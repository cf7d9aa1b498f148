"""Matching one pair of point clouds: descriptor candidates, RANSAC, clean-up (BigStitcher's flow)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import ModuleType

import numpy as np
from scipy.spatial import cKDTree

from rhapso_gpu.matching.descriptors import find_candidates
from rhapso_gpu.matching.icp import IcpParams, icp
from rhapso_gpu.matching.ransac import RansacParams, RansacResult, ransac, residuals
from rhapso_gpu.matching.significance import chance_reason
from rhapso_gpu.models import TransformModel, transform_points

OFFSET_CONSENSUS = "offset-consensus"
"""Method without descriptors: every point pair closer than ``search_radius`` proposes an offset."""

DEFAULT_OFFSET_RADIUS = 20.0
"""``search_radius`` of ``offset-consensus`` when none is given (world units)."""


@dataclass(frozen=True)
class DescriptorParams:
    """Descriptor parameters (BigStitcher-Spark defaults).

    Attributes
    ----------
    method : str
        ``fast-rotation``, ``fast-translation``, ``precise-translation`` or
        ``offset-consensus`` (see :func:`match_offsets`).
    num_neighbors : int
        Neighbours per descriptor (3; ``fast-rotation`` always uses 3).
    redundancy : int
        Extra neighbours whose subsets make more descriptors per point.
    significance : float
        Ratio test factor (on squared descriptor distances).
    search_radius : float or None
        Only pair points closer than this in world coordinates (world units);
        for ``offset-consensus`` the largest expected misregistration
        (default :data:`DEFAULT_OFFSET_RADIUS`).
    """

    method: str = "fast-rotation"
    num_neighbors: int = 3
    redundancy: int = 1
    significance: float = 3.0
    search_radius: float | None = None


DEFAULT_DESCRIPTOR = DescriptorParams()
DEFAULT_RANSAC = RansacParams()


@dataclass
class PairMatch:
    """The matches of one pair of point clouds A and B.

    Attributes
    ----------
    candidates : int
        Correspondence candidates from the descriptors.
    index_a, index_b : ndarray of int64
        Matched rows of A and B (empty on failure): the RANSAC inliers, extended by guided matching.
    model : ndarray (3, 4) or None
        Affine mapping A's world points onto B's.
    rms : float
        RMS distance ``|model(a) - b|`` over the matches, world units (NaN on failure).
    reason : str or None
        Why the pair failed; None when it matched.
    ransac_inliers : int
        Candidates RANSAC kept as inliers (0 on failure); :attr:`inlier_ratio` is their share.
    """

    candidates: int
    index_a: np.ndarray
    index_b: np.ndarray
    model: np.ndarray | None
    rms: float
    reason: str | None = None
    ransac_inliers: int = 0

    @property
    def ok(self) -> bool:
        """True when the pair matched."""
        return self.reason is None

    @property
    def inlier_ratio(self) -> float:
        """RANSAC inliers per candidate (at most 1; BigStitcher's inlier ratio)."""
        return self.ransac_inliers / self.candidates if self.candidates else 0.0


def consistent(index_a: np.ndarray, index_b: np.ndarray) -> np.ndarray:
    """Mask of matches whose A point and B point occur in no other match (``removeInconsistentMatches``)."""
    _, inv_a, count_a = np.unique(index_a, return_inverse=True, return_counts=True)
    _, inv_b, count_b = np.unique(index_b, return_inverse=True, return_counts=True)
    return (count_a[inv_a] == 1) & (count_b[inv_b] == 1)


LEAVE_ONE_OUT_MAX = 100
"""Largest match set predicted leave-one-out by :func:`cross_validate`; above it, one match barely moves
the fit (its leverage is about parameters / matches), so the residuals of the fit to all matches are used."""


def cross_validate(model: TransformModel, src, dst, max_epsilon: float, xp: ModuleType = np, batch: int = 256):
    """Matches that a model fitted to the *other* matches explains within ``max_epsilon``.

    In a small set of matches one wrong match bends a least-squares fit
    enough to hide among the residuals (the median-based trimming keeps it);
    the model fitted without it, though, misses it by about its own error. So
    each match is predicted by the model fitted to all the others (leave one
    out, fitted in batches), the worst-predicted match is dropped while its
    error exceeds ``max_epsilon``, and the rest are predicted again. Sets of
    more than :data:`LEAVE_ONE_OUT_MAX` matches drop every match whose
    residual under the fit to all exceeds ``max_epsilon`` at once, and refit.

    Parameters
    ----------
    model : TransformModel
    src, dst : array (M, 3)
        Matched points (world xyz) of A and B, host or device arrays.
    max_epsilon : float
        Largest accepted prediction error, world units.

    Returns
    -------
    ndarray of int64
        Rows of ``src``/``dst`` kept, ascending.
    """
    keep = np.arange(int(src.shape[0]))
    while keep.size > model.min_matches:
        s, d = src[xp.asarray(keep)], dst[xp.asarray(keep)]
        if keep.size > LEAVE_ONE_OUT_MAX:
            error = _host(residuals(model.fit(s, d, None, xp), s, d, xp))
            over = ~(error <= max_epsilon)
            if not over.any():
                break
            keep = keep[~over]
            continue
        error = _leave_one_out(model, s, d, xp, batch)
        worst = int(np.argmax(np.where(np.isfinite(error), error, np.inf)))
        if error[worst] <= max_epsilon:
            break
        keep = np.delete(keep, worst)
    return keep


def _leave_one_out(model: TransformModel, src, dst, xp, batch: int) -> np.ndarray:
    """Distance of each match to its prediction by the model fitted to the other matches (host array)."""
    n = int(src.shape[0])
    error = np.empty(n)
    for start in range(0, n, batch):
        rows = np.arange(start, min(start + batch, n))
        others = np.ones((rows.size, n), dtype=bool)
        others[np.arange(rows.size), rows] = False
        stack = (rows.size,) + tuple(src.shape)
        fitted = model.fit(xp.broadcast_to(src, stack), xp.broadcast_to(dst, stack), xp.asarray(others), xp)
        picked = xp.asarray(rows)
        error[rows] = _host(residuals(fitted, src[picked][:, None, :], dst[picked][:, None, :], xp)[:, 0])
    return error


def _host(a) -> np.ndarray:
    return np.asarray(a.get() if hasattr(a, "get") else a)


def _validated(n: int, pa, pb, ma, mb, model: TransformModel, params: RansacParams, xp, inliers: int) -> PairMatch:
    """The pair's result after :func:`cross_validate`: refit on the kept matches, or the failure."""
    need = max(model.min_matches, params.min_inliers)
    keep = cross_validate(model, pa[xp.asarray(ma)], pb[xp.asarray(mb)], params.max_epsilon, xp)
    if keep.size < need:
        return _failed(n, f"{keep.size} of {ma.size} matches predicted within {params.max_epsilon:g} by the others, "
                       f"fewer than {need}")
    ma, mb = ma[keep], mb[keep]
    src, dst = pa[xp.asarray(ma)], pb[xp.asarray(mb)]
    affine = model.fit(src, dst, None, xp)
    r = residuals(affine, src, dst, xp)
    chance = chance_reason(transform_points(_host(affine), _host(pa)), _host(pb), _host(r), params.max_epsilon)
    if chance:
        return _failed(n, chance)
    return PairMatch(n, ma, mb, _host(affine), float(xp.sqrt((r * r).mean())), ransac_inliers=inliers)


def _failed(candidates: int, reason: str) -> PairMatch:
    empty = np.zeros(0, np.int64)
    return PairMatch(candidates, empty, empty, None, float("nan"), reason)


def _ransac_consistent(src, dst, ia, ib, model, params, seed, xp) -> tuple[RansacResult, np.ndarray, np.ndarray]:
    """RANSAC, then drop matches sharing a point; if too few remain, RANSAC again without shared points."""
    need = max(model.min_matches, params.min_inliers)
    result = ransac(src, dst, model, params, seed, xp)
    if result.model is None:
        return result, ia, ib
    keep = consistent(ia[result.inliers], ib[result.inliers])
    if keep.sum() >= need:
        result.inliers = result.inliers[keep]
        return result, ia, ib
    unique = consistent(ia, ib)
    rerun = ransac(src[unique], dst[unique], model, params, seed, xp)
    if rerun.model is None:
        rerun.reason = f"{int(keep.sum())} inliers left after removing matches that share a point; {rerun.reason}"
    return rerun, ia[unique], ib[unique]


def match_candidates(
    points_a_xyz,
    points_b_xyz,
    ia: np.ndarray,
    ib: np.ndarray,
    model: TransformModel,
    ransac_params: RansacParams = DEFAULT_RANSAC,
    seed=0,
    guided: bool = True,
    xp: ModuleType = np,
) -> PairMatch:
    """RANSAC over given candidate pairs ``(ia[i], ib[i])`` and BigStitcher's clean-up.

    Parameters
    ----------
    points_a_xyz, points_b_xyz : array (N, 3)
        World coordinates of both clouds (host or device arrays).
    ia, ib : ndarray of int64
        Candidate pairs as row indices into A and B.
    seed : int or list of int
        RANSAC seed.
    guided : bool
        After RANSAC, collect every mutual nearest neighbour pair within
        ``max_epsilon`` under the model and refit, iterating until stable
        (ICP seeded with the RANSAC model). Descriptors find only the points
        whose neighbourhoods agree in both views; this adds the rest.

    Finally every match must be predicted within ``max_epsilon`` by the
    model fitted to the other matches (:func:`cross_validate`), and the model
    is refitted to those.
    """
    pa = xp.asarray(points_a_xyz, dtype=xp.float64)
    pb = xp.asarray(points_b_xyz, dtype=xp.float64)
    n = int(ia.size)
    result, ia, ib = _ransac_consistent(pa[xp.asarray(ia)], pb[xp.asarray(ib)], ia, ib, model, ransac_params, seed, xp)
    if result.model is None:
        return _failed(n, result.reason)
    ma, mb, affine = ia[result.inliers], ib[result.inliers], result.model
    if guided:
        ga, gb, g_affine = icp(
            pa, pb, model, affine, IcpParams(ransac_params.max_epsilon, 20), ransac_params, seed, xp
        )
        if g_affine is not None and ga.size >= ma.size:
            ma, mb = ga, gb
    return _validated(n, pa, pb, ma, mb, model, ransac_params, xp, int(result.inliers.size))


def match_points(
    points_a_xyz,
    points_b_xyz,
    model: TransformModel,
    descriptor: DescriptorParams = DEFAULT_DESCRIPTOR,
    ransac_params: RansacParams = DEFAULT_RANSAC,
    seed=0,
    guided: bool = True,
    xp: ModuleType = np,
) -> PairMatch:
    """Match two point clouds given in world coordinates: candidates, RANSAC, trimming, clean-up.

    Parameters
    ----------
    points_a_xyz, points_b_xyz : array (N, 3)
        Interest points of views A and B in world coordinates (xyz).
    model : TransformModel
        Model of the residual misregistration from A to B.
    descriptor : DescriptorParams
    ransac_params : RansacParams
    seed : int or list of int
        RANSAC seed; the same seed gives the same result.
    guided : bool
        Guided matching after RANSAC (see :func:`match_candidates`).
    xp : module
        Array module (``numpy`` or ``cupy``).

    Returns
    -------
    PairMatch
        Matches as row indices into A and B, or the reason of the failure.
    """
    if descriptor.method == OFFSET_CONSENSUS:
        return match_offsets(points_a_xyz, points_b_xyz, model, descriptor.search_radius, ransac_params, seed, xp)
    ia, ib = find_candidates(
        points_a_xyz,
        points_b_xyz,
        descriptor.method,
        descriptor.num_neighbors,
        descriptor.redundancy,
        descriptor.significance,
        descriptor.search_radius,
        xp,
    )
    need = max(model.min_matches, ransac_params.min_inliers)
    if ia.size < need:
        return _failed(int(ia.size), f"{ia.size} descriptor candidates, fewer than the {need} inliers required")
    return match_candidates(points_a_xyz, points_b_xyz, ia, ib, model, ransac_params, seed, guided, xp)


def pairs_within(points_a_xyz, points_b_xyz, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(ia, ib)`` of points closer than ``radius`` (host arrays, sorted)."""
    pairs = cKDTree(np.asarray(points_a_xyz)).sparse_distance_matrix(
        cKDTree(np.asarray(points_b_xyz)), radius, output_type="ndarray"
    )
    order = np.lexsort((pairs["j"], pairs["i"]))
    return pairs["i"][order].astype(np.int64), pairs["j"][order].astype(np.int64)


def match_offsets(
    points_a_xyz,
    points_b_xyz,
    model: TransformModel,
    search_radius: float | None = None,
    ransac_params: RansacParams = DEFAULT_RANSAC,
    seed=0,
    xp: ModuleType = np,
) -> PairMatch:
    """Match without descriptors, for sparse points and thin overlaps (method ``offset-consensus``).

    Every pair of points closer than ``search_radius`` is a candidate and
    proposes the offset between them; RANSAC with a translation model finds
    the offset that most candidates agree on (``min_inlier_ratio`` does not
    apply: most candidates are wrong by construction; nor does trimming, as
    an offset cannot follow a small rotation), and ICP started from
    that translation fits ``model`` to the mutual nearest neighbours within
    ``max_epsilon``. Works when the current registrations are off by less than
    ``search_radius`` and by mostly a translation, however few neighbours a
    point has inside the overlap, where descriptors fail.

    Parameters
    ----------
    points_a_xyz, points_b_xyz : array (N, 3)
        World coordinates (host arrays).
    search_radius : float, optional
        Largest misregistration to search, world units (default :data:`DEFAULT_OFFSET_RADIUS`).
    """
    radius = DEFAULT_OFFSET_RADIUS if search_radius is None else search_radius
    pa = np.asarray(points_a_xyz, dtype=np.float64)
    pb = np.asarray(points_b_xyz, dtype=np.float64)
    need = max(model.min_matches, ransac_params.min_inliers)
    if len(pa) < need or len(pb) < need:
        return _failed(0, f"{len(pa)} and {len(pb)} points, fewer than the {need} matches required")
    ia, ib = pairs_within(pa, pb, radius)
    n = int(ia.size)
    consensus = replace(ransac_params, min_inlier_ratio=0.0, max_trust=np.inf)  # ICP trims, with the real model
    shift = ransac(pa[ia], pb[ib], TransformModel("translation", "none"), consensus, seed, xp)
    if shift.model is None:
        return _failed(n, f"offsets of the point pairs within {radius:g}: {shift.reason}")
    ga, gb, affine = icp(pa, pb, model, shift.model, IcpParams(ransac_params.max_epsilon, 20), ransac_params, seed, xp)
    if affine is None:
        return _failed(n, f"{ga.size} mutual nearest neighbours under the consensus offset, fewer than {need}")
    return _validated(n, xp.asarray(pa), xp.asarray(pb), ga, gb, model, ransac_params, xp, int(shift.inliers.size))
