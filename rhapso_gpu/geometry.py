"""Geometry of views in world space: affines, bounding boxes, overlaps.

All coordinates are **xyz**. A view's affine maps its full-resolution local
pixel coordinates to world coordinates (isotropic pixels). A view's box spans
the centres of its first and last pixels, ``[0, size - 1]`` along each axis,
as in BigStitcher.
"""

from __future__ import annotations

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io.spimdata import SpimData, ViewId


def compose(transforms) -> np.ndarray:
    """Compose 3x4/4x4 affines left to right: ``T[0] @ T[1] @ ... @ T[n-1]`` (4x4)."""
    m = np.eye(4)
    for t in transforms:
        a = np.asarray(t, dtype=np.float64)
        t4 = np.eye(4)
        t4[: a.shape[0], :] = a[:4, :4] if a.shape[0] == 4 else a
        m = m @ t4
    return m


def view_affine(spim: SpimData, view: ViewId) -> np.ndarray:
    """The 4x4 affine from the view's full-resolution local pixels (xyz) to world (xyz).

    Raises
    ------
    UserError
        When the view has no registration or holds a non-affine transform.
    """
    try:
        transforms = spim.registrations[view]
    except KeyError:
        raise UserError(f"{spim.location or 'dataset'}: view {view} has no <ViewRegistration>") from None
    for t in transforms:
        if t.raw is not None:
            raise UserError(
                f"{spim.location or 'dataset'}: view {view}: transform '{t.name}' is not an affine "
                f"(type='{t.raw.get('type')}'), which rhapso-gpu cannot apply"
            )
    return compose(t.affine for t in transforms)


def apply_affine(matrix: np.ndarray, points_xyz: np.ndarray) -> np.ndarray:
    """Apply a 3x4/4x4 affine to an (N, 3) array of xyz points."""
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points_xyz, dtype=np.float64)
    return p @ m[:3, :3].T + m[:3, 3]


def registration_hash(affine_a: np.ndarray, affine_b: np.ndarray) -> float:
    """BigStitcher's hash of a pair's registrations, ``sum_i (a_i + 13 b_i)`` over the 12 row-packed coefficients.

    A stored pairwise stitching result whose hash differs from that of the
    views' current registrations is stale (``PairwiseStitchingResult.calculateHash``).
    """
    a = np.asarray(affine_a, dtype=np.float64)[:3, :4]
    b = np.asarray(affine_b, dtype=np.float64)[:3, :4]
    return float((a + 13.0 * b).sum())


def view_size_xyz(spim: SpimData, view: ViewId) -> np.ndarray:
    """Full-resolution size of the view in pixels (xyz)."""
    setup = spim.setup(view)
    if setup.size_xyz is None:
        raise UserError(f"{spim.location or 'dataset'}: <ViewSetup> id={setup.id} has no <size>")
    return np.asarray(setup.size_xyz, dtype=np.int64)


def box_corners(min_xyz, max_xyz) -> np.ndarray:
    """The 8 corners (8, 3) of an axis-aligned box."""
    lo, hi = np.asarray(min_xyz, float), np.asarray(max_xyz, float)
    idx = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    return np.where(idx == 0, lo, hi)


def view_box_world(spim: SpimData, view: ViewId, affine: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box ``(min_xyz, max_xyz)`` of the view's pixel centres.

    Parameters
    ----------
    affine : ndarray, optional
        Use this local-to-world affine instead of the view's registration.
    """
    m = view_affine(spim, view) if affine is None else affine
    corners = apply_affine(m, box_corners(np.zeros(3), view_size_xyz(spim, view) - 1))
    return corners.min(axis=0), corners.max(axis=0)


def intersect_boxes(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]):
    """Intersection of two ``(min, max)`` boxes, or None when they do not overlap."""
    lo, hi = np.maximum(a[0], b[0]), np.minimum(a[1], b[1])
    if np.any(lo > hi):
        return None
    return lo, hi


def overlap_box(spim: SpimData, a: ViewId, b: ViewId) -> tuple[np.ndarray, np.ndarray] | None:
    """World box where the bounding boxes of views ``a`` and ``b`` intersect, or None."""
    return intersect_boxes(view_box_world(spim, a), view_box_world(spim, b))


def overlapping_pairs(
    spim: SpimData, views: list[ViewId] | None = None, same_timepoint: bool = True, min_extent: float = 0.0
) -> list[tuple[ViewId, ViewId]]:
    """All pairs of views whose world boxes overlap.

    Parameters
    ----------
    views : list of ViewId, optional
        Defaults to every present view.
    same_timepoint : bool
        Pair only views of the same time point (BigStitcher's default).
    min_extent : float
        Require the overlap to be thicker than this along every axis (world units).

    Returns
    -------
    list of (ViewId, ViewId)
        Each pair once, ``a < b``, sorted.

    Notes
    -----
    The sweep of :func:`overlapping_box_pairs`, so thousands of tiles are cheap.
    """
    views = sorted(views if views is not None else spim.view_ids())
    if len(views) < 2:
        return []
    boxes = np.array([np.stack(view_box_world(spim, v)) for v in views])  # (n, 2, 3)
    classes = np.array([v.timepoint for v in views]) if same_timepoint else None
    a, b = overlapping_box_pairs(boxes, classes, min_extent=min_extent)
    return [(views[i], views[j]) for i, j in zip(a.tolist(), b.tolist())]


def overlapping_box_pairs(boxes: np.ndarray, classes: np.ndarray | None = None, min_extent: float = 0.0,
                          chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of boxes that overlap (touching counts), ``a < b``, sorted.

    A sweep: sorted by their lower bound along the axis that leaves the fewest
    candidates, each box is tested only against the boxes that start before it
    ends, in chunks of at most about ``chunk`` candidates. Cost O(n log n + c)
    for ``c`` candidate pairs along the sweep axis, memory O(n + chunk + k) for
    ``k`` overlapping pairs.

    Parameters
    ----------
    boxes : ndarray (n, 2, 3)
        Boxes (min, max; xyz), world units.
    classes : ndarray (n,), optional
        Pair only boxes of the same class (e.g. time point).
    min_extent : float
        Require the overlap to be at least this thick along every axis (world units).

    Returns
    -------
    a, b : ndarray of int64 (k,)
        Indices into ``boxes``.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 2, 3)
    # a box empty along an axis (min > max, or NaN) overlaps nothing
    valid = np.flatnonzero(np.all(boxes[:, 0] <= boxes[:, 1], axis=1))
    n = len(valid)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = boxes[valid, 0].T.copy(), boxes[valid, 1].T.copy()  # (3, n): one contiguous row per axis
    thick = max(float(min_extent), 0.0)
    best = None
    for axis in range(3):
        order = np.argsort(lo[axis], kind="stable")
        end = np.searchsorted(lo[axis, order], hi[axis, order] - thick, side="right")  # candidates: ranks (r, end)
        count = np.maximum(end - np.arange(n) - 1, 0)
        if best is None or count.sum() < best[2].sum():
            best = (axis, order, count)
    _, order, count = best
    cls = None if classes is None else np.asarray(classes)[valid]
    found_a, found_b = [], []
    total = np.cumsum(count)
    first = 0
    while first < n:  # ranks [first, last) hold about `chunk` candidates (at least one rank)
        last = max(int(np.searchsorted(total, (total[first - 1] if first else 0) + chunk, side="right")), first + 1)
        last = min(last, n)
        per = count[first:last]
        rank_i = np.repeat(np.arange(first, last), per)
        # candidate ranks rank+1 .. end-1: an arange restarted at every rank
        rank_j = np.arange(rank_i.size) - np.repeat(np.cumsum(per) - per, per) + rank_i + 1
        i, j = order[rank_i], order[rank_j]
        for ax in range(3):  # axis by axis, each on the survivors of the last
            ok = np.minimum(hi[ax, i], hi[ax, j]) - np.maximum(lo[ax, i], lo[ax, j]) >= thick
            i, j = i[ok], j[ok]
        if cls is not None:
            ok = cls[i] == cls[j]
            i, j = i[ok], j[ok]
        found_a.append(np.minimum(i, j))
        found_b.append(np.maximum(i, j))
        first = last
    a, b = valid[np.concatenate(found_a)], valid[np.concatenate(found_b)]
    sort = np.lexsort((b, a))
    return a[sort].astype(np.int64), b[sort].astype(np.int64)


def propose_mipmap_factors(
    shape_xyz, voxel_size_xyz, max_levels: int | None = None, min_size: int = 16, max_top_size: int = 256
) -> list[tuple[int, int, int]]:
    """Relative downsampling factors (x, y, z) for each new pyramid level.

    Every axis is halved except those whose current voxel is already 2x (or
    more) coarser than the finest, so isotropic data gets 2x2x2 and
    anisotropic data 2x2x1 until x and y catch up (BigDataViewer's rule).

    Parameters
    ----------
    shape_xyz : sequence of int
        Full-resolution size in pixels (x, y, z).
    voxel_size_xyz : sequence of float
        Voxel size (x, y, z), any unit.
    max_levels : int, optional
        At most this many levels in all, level 0 included. Without it, levels
        are added while the top level has an axis above ``max_top_size``.
    min_size : int
        No axis is halved below this many pixels.
    max_top_size : int
        See ``max_levels``.

    Returns
    -------
    list of tuple of int
        One (fx, fy, fz) per level above 0, relative to the level below.
    """
    size = np.asarray(shape_xyz, dtype=np.int64)
    step = np.asarray(voxel_size_xyz, dtype=float)
    factors: list[tuple[int, int, int]] = []
    while max_levels is None or len(factors) + 1 < max_levels:
        if max_levels is None and np.all(size <= max_top_size):
            break
        f = np.where((step < 2 * step.min() - 1e-9) & (size // 2 >= min_size), 2, 1)
        if np.all(f == 1):
            break
        factors.append(tuple(int(v) for v in f))
        size, step = size // f, step * f
    return factors
