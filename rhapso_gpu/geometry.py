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
    A sweep along x: sorting the boxes by their lower x bound makes the cost
    O(n log n + k) for n views and k candidate pairs, so thousands of tiles are cheap.
    """
    views = sorted(views if views is not None else spim.view_ids())
    if len(views) < 2:
        return []
    boxes = np.array([np.concatenate(view_box_world(spim, v)) for v in views])  # (n, 6)
    lo, hi = boxes[:, :3], boxes[:, 3:]
    order = np.argsort(lo[:, 0], kind="stable")
    sorted_lo_x = lo[order, 0]
    pairs = []
    for rank, i in enumerate(order):
        end = np.searchsorted(sorted_lo_x, hi[i, 0] - min_extent, side="right")
        cand = order[rank + 1 : end]
        if cand.size == 0:
            continue
        extent = np.minimum(hi[i], hi[cand]) - np.maximum(lo[i], lo[cand])
        ok = np.all(extent >= min_extent, axis=1) & np.all(extent >= 0, axis=1)
        for j in cand[ok]:
            a, b = sorted((views[i], views[j]))
            if same_timepoint and a.timepoint != b.timepoint:
                continue
            pairs.append((a, b))
    return sorted(pairs)


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
