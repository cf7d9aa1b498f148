"""Where a view overlaps other views, in its own downsampled voxels (for ``overlap_only``)."""

from __future__ import annotations

import numpy as np

from rhapso_gpu.geometry import apply_affine, box_corners, view_affine, view_size_xyz
from rhapso_gpu.io.spimdata import SpimData, ViewId


def overlap_boxes_zyx(spim: SpimData, view: ViewId, others: list[ViewId], to_full_res_xyz: np.ndarray,
                      shape_zyx) -> tuple[np.ndarray, list[ViewId]]:
    """Boxes of ``view``'s downsampled image that overlap each other view (same time point).

    For each other view, its pixel box is mapped into ``view``'s full-resolution
    local pixels with the registrations (``inv(A_view) @ A_other``), bounded by
    an axis-aligned box, intersected with ``view``'s image, and taken to
    downsampled voxels with ``inv(to_full_res_xyz)``, rounded outwards.

    Parameters
    ----------
    spim : SpimData
    view : ViewId
    others : list of ViewId
        Candidate views; ``view`` itself and other time points are ignored.
    to_full_res_xyz : numpy.ndarray
        4x4 downsampled voxel -> full-resolution local voxel (xyz).
    shape_zyx : tuple of int
        Downsampled image shape.

    Returns
    -------
    boxes : numpy.ndarray of int64, shape (K, 2, 3)
        Inclusive ``[lo, hi]`` boxes in downsampled voxels (z, y, x), in the order of ``others``.
    views : list of ViewId
        The other view of each box.
    """
    a_inv = np.linalg.inv(view_affine(spim, view))
    size = view_size_xyz(spim, view)
    to_ds = np.linalg.inv(to_full_res_xyz)
    last_zyx = np.asarray(shape_zyx, dtype=np.int64) - 1
    boxes, kept = [], []
    for other in others:
        if other == view or other.timepoint != view.timepoint:
            continue
        corners = apply_affine(a_inv @ view_affine(spim, other), box_corners(np.zeros(3), view_size_xyz(spim, other) - 1))
        lo = np.maximum(corners.min(axis=0), 0.0)
        hi = np.minimum(corners.max(axis=0), size - 1.0)
        if np.any(lo > hi):
            continue
        ds = apply_affine(to_ds, box_corners(lo, hi))
        lo_zyx = np.clip(np.floor(ds.min(axis=0)).astype(np.int64)[::-1], 0, last_zyx)
        hi_zyx = np.clip(np.ceil(ds.max(axis=0)).astype(np.int64)[::-1], 0, last_zyx)
        boxes.append(np.stack([lo_zyx, hi_zyx]))
        kept.append(other)
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 2, 3), kept
