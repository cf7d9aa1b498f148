"""Geometric local descriptors of point clouds and their correspondence candidates.

The three descriptor methods of BigStitcher (mvr ``pairwise/methods``):

``fast-rotation`` (geometric hashing)
    For every subset of 3 of a point's ``3 + redundancy`` nearest neighbours
    (offsets ``a, b, c`` ordered by distance): a local frame with x along
    ``a``, z along ``a x b`` turned towards ``c``, y = z x x; the 6-D
    descriptor ``(|a|, b.x, b.y, c.x, c.y, c.z)`` is invariant to rotation
    and translation.
``fast-translation`` (FRGLDM)
    The concatenated offsets to the ``num_neighbors`` neighbours of every
    subset of the ``num_neighbors + redundancy`` nearest (``3 k``-D),
    invariant to translation only.
``precise-translation`` (RGLDM)
    The same offset descriptors, but every point of A is compared with every
    point of B (optionally only within ``search_radius``), the distance of a
    point pair being the smallest over all subset combinations.

Descriptor distances are squared Euclidean distances, as in BigStitcher; the
ratio test accepts the best B point when ``best * significance <= second``,
the second best being the best *other* B point. All work is array
operations of the array module ``xp``; the fast methods use
:func:`~rhapso_gpu.matching.knn.knn` (KD-tree on the CPU, brute force on the GPU).
"""

from __future__ import annotations

import itertools
from types import ModuleType

import numpy as np

from rhapso_gpu.matching.knn import knn

METHODS = ("fast-rotation", "fast-translation", "precise-translation")

_BLOCK_ELEMENTS = 1 << 23
"""Subset-pair distances held at once by the exhaustive comparison (64 MiB of float64)."""


def subsets(n: int, k: int) -> np.ndarray:
    """All ``k``-subsets of ``range(n)`` in lexicographic order, ``(C(n, k), k)``."""
    return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64).reshape(-1, k)


def neighbour_offsets(points_xyz, n: int, xp: ModuleType = np):
    """Offsets ``(N, n, 3)`` from each point to its ``n`` nearest other points, nearest first."""
    points_xyz = xp.asarray(points_xyz, dtype=xp.float64)
    _, index = knn(points_xyz, points_xyz, n + 1, xp)
    # drop the point itself; with duplicate points it need not be column 0, so drop by identity
    own = index == xp.arange(points_xyz.shape[0])[:, None]
    has_self = own.any(axis=1)
    keep = ~own
    keep[:, -1] &= has_self  # if the point was not among the results, drop the farthest instead
    neighbours = index[keep].reshape(-1, n)
    return points_xyz[neighbours] - points_xyz[:, None, :]


def min_points(method: str, num_neighbors: int, redundancy: int) -> int:
    """Fewest points a view needs for a descriptor (the point and its neighbours)."""
    k = 3 if method == "fast-rotation" else num_neighbors
    return k + redundancy + 1


def translation_descriptors(points_xyz, num_neighbors: int = 3, redundancy: int = 1, xp: ModuleType = np):
    """Translation-invariant descriptors ``(N, S, 3 k)``, one per neighbour subset (FRGLDM/RGLDM).

    Descriptors containing a zero offset (a duplicate point) are NaN.
    """
    offsets = neighbour_offsets(points_xyz, num_neighbors + redundancy, xp)
    subs = xp.asarray(subsets(num_neighbors + redundancy, num_neighbors))
    desc = offsets[:, subs, :]  # (N, S, k, 3)
    bad = ((desc**2).sum(axis=-1) == 0).any(axis=-1)
    desc = desc.reshape(desc.shape[0], desc.shape[1], -1)
    return xp.where(bad[..., None], xp.nan, desc)


def rotation_descriptors(points_xyz, redundancy: int = 0, xp: ModuleType = np):
    """Rotation- and translation-invariant descriptors ``(N, S, 6)`` (geometric hashing).

    mpicbg's local coordinate system of a point and three neighbours ``a, b, c``
    (nearest first): x along the farthest, ``c``; z along ``a x c`` turned
    towards ``b``; y = z x x. The descriptor is ``(|c|, a.x, a.y, b.x, b.y, b.z)``
    (``a.z`` is 0 by construction). Degenerate subsets (a duplicate point,
    collinear neighbours) are NaN.
    """
    offsets = neighbour_offsets(points_xyz, 3 + redundancy, xp)
    subs = xp.asarray(subsets(3 + redundancy, 3))
    trio = offsets[:, subs, :]  # (N, S, 3, 3)
    a, b, c = trio[..., 0, :], trio[..., 1, :], trio[..., 2, :]
    lc = xp.sqrt((c**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        x = c / lc[..., None]
        z = xp.cross(a, x)
        lz = xp.sqrt((z**2).sum(axis=-1))
        z = z / xp.where(lz > 1e-9 * lc, lz, xp.nan)[..., None]
        z = z * xp.where((b * z).sum(axis=-1) < 0, -1.0, 1.0)[..., None]
        y = xp.cross(z, x)
        desc = xp.stack(
            [lc, (a * x).sum(-1), (a * y).sum(-1), (b * x).sum(-1), (b * y).sum(-1), (b * z).sum(-1)], axis=-1
        )
    return xp.where(xp.isfinite(desc).all(axis=-1, keepdims=True), desc, xp.nan)


def _ratio_pairs(best_a, best_b, best, second, significance, xp):
    """Candidates ``(ia, ib)`` that pass the ratio test, each (A, B) pair once, sorted."""
    ok = xp.isfinite(best) & (best * significance <= second)
    ia, ib = best_a[ok], best_b[ok]
    if ia.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ia, ib = np.asarray(_host(ia)), np.asarray(_host(ib))
    pairs = np.unique(np.stack([ia, ib], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _host(a):
    return a.get() if hasattr(a, "get") else a


def candidates_kdtree(desc_a, desc_b, significance: float, xp: ModuleType = np):
    """Candidates by nearest descriptor (fast methods).

    Every valid descriptor of A looks up its nearest descriptors of B; the best
    is accepted when ``best * significance <= second``, with ``second`` the
    nearest descriptor of a different B point.

    Parameters
    ----------
    desc_a, desc_b : array (N, S, d)
        Descriptors per point and neighbour subset (NaN rows are skipped).

    Returns
    -------
    ia, ib : ndarray of int64
        Indices of candidate point pairs into A and B (host arrays).
    """
    _, s, d = desc_a.shape
    flat_a = desc_a.reshape(-1, d)
    flat_b = desc_b.reshape(-1, d)
    valid_a = xp.isfinite(flat_a).all(axis=1)
    valid_b = xp.isfinite(flat_b).all(axis=1)
    rows_a = xp.nonzero(valid_a)[0]
    rows_b = xp.nonzero(valid_b)[0]
    point_b = rows_b // desc_b.shape[1]
    if rows_a.size == 0 or int(point_b.size) == 0 or int(xp.unique(point_b).size) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k = min(desc_b.shape[1] + 1, int(rows_b.size))  # enough to always reach a second B point
    dist2, index = knn(flat_b[rows_b], flat_a[rows_a], k, xp)
    owner = point_b[index]  # (m, k) B point of each neighbour
    other = owner != owner[:, :1]
    has_other = other.any(axis=1)
    first_other = xp.argmax(other, axis=1)
    second = xp.where(has_other, xp.take_along_axis(dist2, first_other[:, None], axis=1)[:, 0], xp.inf)
    return _ratio_pairs(rows_a // s, owner[:, 0], dist2[:, 0], second, significance, xp)


def candidates_exhaustive(
    desc_a,
    desc_b,
    significance: float,
    points_a_xyz=None,
    points_b_xyz=None,
    search_radius: float | None = None,
    xp: ModuleType = np,
):
    """Candidates by exhaustive comparison of every A point with every B point (precise-translation).

    The distance of points ``i`` (A) and ``j`` (B) is the smallest squared
    descriptor distance over all pairs of their neighbour subsets. With
    ``search_radius`` (world units), only B points within that distance of the
    A point (both in world coordinates, ``points_*_xyz``) are compared.

    Returns
    -------
    ia, ib : ndarray of int64
        Indices of candidate point pairs into A and B (host arrays).
    """
    na, sa, d = desc_a.shape
    nb, sb, _ = desc_b.shape
    if na == 0 or nb < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    flat_b = desc_b.reshape(-1, d)
    flat_b = xp.where(xp.isfinite(flat_b), flat_b, 1e30)  # an invalid subset never wins
    best = xp.empty(na, dtype=xp.float64)
    second = xp.empty(na, dtype=xp.float64)
    best_b = xp.empty(na, dtype=xp.int64)
    step = max(1, _BLOCK_ELEMENTS // (sa * nb * sb * max(d // 3, 1)))
    for start in range(0, na, step):
        block = desc_a[start : start + step].reshape(-1, d)
        block = xp.where(xp.isfinite(block), block, -1e30)
        dd = xp.zeros((block.shape[0], flat_b.shape[0]), dtype=xp.float64)
        for j in range(d):  # accumulate per coordinate: exact, and no (m, n, d) temporary
            dd += (block[:, None, j] - flat_b[None, :, j]) ** 2
        dist = dd.reshape(-1, sa, nb, sb).min(axis=(1, 3))  # (m, nb)
        if search_radius is not None:
            pa = xp.asarray(points_a_xyz)[start : start + step]
            near = ((pa[:, None, :] - xp.asarray(points_b_xyz)[None, :, :]) ** 2).sum(-1) <= search_radius**2
            dist = xp.where(near, dist, xp.inf)
        two = xp.argpartition(dist, 1, axis=1)[:, :2]
        pd = xp.take_along_axis(dist, two, axis=1)
        swap = pd[:, 1] < pd[:, 0]
        best[start : start + step] = xp.where(swap, pd[:, 1], pd[:, 0])
        second[start : start + step] = xp.where(swap, pd[:, 0], pd[:, 1])
        best_b[start : start + step] = xp.where(swap, two[:, 1], two[:, 0])
    # BigStitcher's RGLDM needs a second candidate: a lone B point in range passes no ratio test
    best = xp.where((best >= 1e29) | ~(second < 1e29), xp.inf, best)
    return _ratio_pairs(xp.arange(na), best_b, best, second, significance, xp)


def find_candidates(
    points_a_xyz,
    points_b_xyz,
    method: str,
    num_neighbors: int = 3,
    redundancy: int = 1,
    significance: float = 3.0,
    search_radius: float | None = None,
    xp: ModuleType = np,
):
    """Correspondence candidates between two point clouds (world xyz) with one descriptor method.

    Parameters
    ----------
    points_a_xyz, points_b_xyz : array (N, 3)
        Points of the two views in world coordinates.
    method : str
        One of :data:`METHODS`.
    num_neighbors : int
        Neighbours per descriptor (``fast-rotation`` always uses 3).
    redundancy : int
        Extra neighbours; every ``num_neighbors``-subset of the nearest
        ``num_neighbors + redundancy`` makes one descriptor.
    significance : float
        Ratio test factor on squared descriptor distances.
    search_radius : float, optional
        Only pair points closer than this in world coordinates (world units).

    Returns
    -------
    ia, ib : ndarray of int64
        Candidate pairs as row indices into A and B (host arrays), sorted, unique.
    """
    if method not in METHODS:
        raise ValueError(f"descriptor method {method!r}: expected one of {', '.join(METHODS)}")
    need = min_points(method, num_neighbors, redundancy)
    if len(points_a_xyz) < need or len(points_b_xyz) < need:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if method == "fast-rotation":
        da = rotation_descriptors(points_a_xyz, redundancy, xp)
        db = rotation_descriptors(points_b_xyz, redundancy, xp)
    else:
        da = translation_descriptors(points_a_xyz, num_neighbors, redundancy, xp)
        db = translation_descriptors(points_b_xyz, num_neighbors, redundancy, xp)
    if method == "precise-translation":
        return candidates_exhaustive(da, db, significance, points_a_xyz, points_b_xyz, search_radius, xp)
    ia, ib = candidates_kdtree(da, db, significance, xp)
    if search_radius is not None and ia.size:
        pa, pb = np.asarray(_host(xp.asarray(points_a_xyz))), np.asarray(_host(xp.asarray(points_b_xyz)))
        near = ((pa[ia] - pb[ib]) ** 2).sum(axis=1) <= search_radius**2
        ia, ib = ia[near], ib[near]
    return ia, ib
