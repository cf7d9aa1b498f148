"""Pairwise shifts of overlapping views by phase correlation, stored as BigStitcher's StitchingResults.

For every pair of overlapping views (current registrations, same time
point; face neighbours unless ``neighbours: all``) both views are resampled
on one isotropic world grid covering their overlap widened by ``max_shift``;
:func:`~rhapso_gpu.stitching.correlation.phase_correlate` finds the
translation ``t`` (world xyz) that moves view B onto view A
(``new world_B = world_B + t``). With ``subpixel``, B is resampled once more
at ``t`` and the small remaining shift is added (a parabola through ``r`` is
biased towards whole pixels except near zero). A ``<PairwiseResult>`` stores
``t`` as a 3x4 affine with ``r``, the hash of both registrations and the
world box where the views overlap once B is moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dask
import numpy as np

from rhapso_gpu.backend import get_backend
from rhapso_gpu.geometry import intersect_boxes, overlapping_pairs, registration_hash, view_affine, view_box_world
from rhapso_gpu.io.spimdata import PairwiseResult, SpimData, ViewId
from rhapso_gpu.stitching.correlation import phase_correlate
from rhapso_gpu.stitching.params import StitchParams
from rhapso_gpu.stitching.sampling import WorldGrid, sample_view


@dataclass
class PairStitch:
    """The pairwise shift of views ``a`` (fixed) and ``b`` (moving).

    Attributes
    ----------
    shift_xyz : ndarray or None
        World translation (xyz) moving B onto A; None when nothing could be measured.
    r : float
        Cross-correlation of the overlapping parts at the shift.
    accepted : bool
    reason : str
        Why it was rejected ('' when accepted).
    overlap_box : tuple of ndarray or None
        World box ``(min_xyz, max_xyz)`` where A and the moved B overlap.
    hash : float
        :func:`~rhapso_gpu.geometry.registration_hash` of the registrations it was computed with.
    candidates : list
        The checked peaks: integer shift (grid px, xyz) and r.
    """

    a: ViewId
    b: ViewId
    shift_xyz: np.ndarray | None
    r: float
    accepted: bool
    reason: str
    overlap_box: tuple[np.ndarray, np.ndarray] | None
    hash: float
    candidates: list = field(default_factory=list)


def grid_spacing(spim: SpimData, views, downsampling_xyz) -> np.ndarray:
    """World spacing of the (isotropic) sampling grid: the finest downsampled pixel size of the views.

    Coarser axes (z of anisotropic data) are interpolated: a parabola through
    ``r`` at whole slices is too coarse for a sub-pixel peak.
    """
    step = [np.linalg.norm(view_affine(spim, v)[:3, :3] * np.asarray(downsampling_xyz, float), axis=0) for v in views]
    return np.full(3, float(np.max(step, axis=0).min()))


def _refine(be, spim, a, b, grid, shift, params, storage_options, image_a, mask_a):
    """Correlate again with B resampled at the shift found: near zero the parabola is unbiased."""
    moved = WorldGrid(grid.origin_xyz - shift, grid.spacing_xyz, grid.shape_zyx)  # B's content moved by ``shift``
    image_b, mask_b = sample_view(be, spim, b, moved, params.downsampling, storage_options)
    found = phase_correlate(be, image_a, mask_a, image_b, mask_b, peaks=1, max_shift_xyz=(1, 1, 1),
                            min_extent_xyz=np.maximum(np.ceil(params.min_overlap / grid.spacing_xyz), 1))
    if found.shift_xyz is None or found.at_edge:
        return shift
    return shift + found.shift_xyz * grid.spacing_xyz


def stitch_pair(spim: SpimData, a: ViewId, b: ViewId, params: StitchParams, backend: str = "numpy",
                storage_options=None) -> PairStitch:
    """Phase-correlate the overlap of views ``a`` and ``b`` (see the module docstring)."""
    be = get_backend(backend)
    box_a, box_b = view_box_world(spim, a), view_box_world(spim, b)
    key = registration_hash(view_affine(spim, a), view_affine(spim, b))
    overlap = intersect_boxes(box_a, box_b)
    if overlap is None:
        return PairStitch(a, b, None, 0.0, False, "no overlap", None, key)
    spacing = grid_spacing(spim, (a, b), params.downsampling)
    union = (np.minimum(box_a[0], box_b[0]), np.maximum(box_a[1], box_b[1]))
    lo = np.maximum(overlap[0] - params.max_shift, union[0])
    hi = np.minimum(overlap[1] + params.max_shift, union[1])
    grid = WorldGrid.covering(lo, hi, spacing)
    image_a, mask_a = sample_view(be, spim, a, grid, params.downsampling, storage_options)
    image_b, mask_b = sample_view(be, spim, b, grid, params.downsampling, storage_options)
    found = phase_correlate(
        be, image_a, mask_a, image_b, mask_b,
        peaks=params.peaks,
        max_shift_xyz=params.max_shift / spacing,
        min_extent_xyz=np.maximum(np.ceil(params.min_overlap / spacing), 1),
        subpixel=params.subpixel,
    )
    if found.shift_xyz is None:
        return PairStitch(a, b, None, 0.0, False, f"overlap below {params.min_overlap:g} px at every shift", None, key)
    shift = found.shift_xyz * spacing
    if params.subpixel and not found.at_edge:
        shift = _refine(be, spim, a, b, grid, shift, params, storage_options, image_a, mask_a)
    moved = intersect_boxes(box_a, (box_b[0] + shift, box_b[1] + shift))
    if found.at_edge:
        reason = "best r at the edge of the search range (max_shift, min_overlap)"
    elif found.r < params.min_r:
        reason = f"r {found.r:.3f} < min_r {params.min_r:g}"
    else:
        reason = ""
    return PairStitch(a, b, shift, found.r, not reason, reason, moved, key, found.candidates)


FACE_FRACTION = 0.25
"""Share of the smaller view an overlap must span, along two axes, for the views to be face neighbours."""


def share_a_face(spim: SpimData, a: ViewId, b: ViewId) -> bool:
    """Whether the views' overlap spans ``FACE_FRACTION`` of the smaller view along at least two axes."""
    box_a, box_b = view_box_world(spim, a), view_box_world(spim, b)
    overlap = intersect_boxes(box_a, box_b)
    if overlap is None:
        return False
    smaller = np.minimum(box_a[1] - box_a[0], box_b[1] - box_b[0])
    return int(np.sum(overlap[1] - overlap[0] >= FACE_FRACTION * smaller)) >= 2


def stitch_dataset(spim: SpimData, params: StitchParams, cluster, backend: str = "numpy",
                   views: list[ViewId] | None = None) -> list[PairStitch]:
    """Stitch every pair of overlapping views of the same time point (``neighbours``), one dask task per pair.

    Parameters
    ----------
    spim : SpimData
    params : StitchParams
    cluster
        An open :class:`rhapso_gpu.scheduler.Cluster` (anything with ``compute(*delayed)``).
    backend : str
        Array backend of the tasks (``numpy``, ``cupy`` or ``auto``).
    views : list of ViewId, optional
        Restrict to these views (default all).

    Returns
    -------
    list of PairStitch
        In pair order (sorted views).
    """
    pairs = [p for p in overlapping_pairs(spim, views) if params.neighbours == "all" or share_a_face(spim, *p)]
    tasks = [dask.delayed(stitch_pair)(spim, a, b, params, backend) for a, b in pairs]
    return list(cluster.compute(*tasks)) if tasks else []


def to_pairwise_result(result: PairStitch) -> PairwiseResult:
    """The ``<PairwiseResult>`` of an accepted pair (shift as a row-packed 3x4 translation)."""
    shift = np.hstack([np.eye(3), np.asarray(result.shift_xyz, dtype=np.float64)[:, None]])
    box = tuple(float(v) for v in np.concatenate(result.overlap_box))
    return PairwiseResult(
        setups_a=[result.a.setup], setups_b=[result.b.setup],
        timepoints_a=[result.a.timepoint], timepoints_b=[result.b.timepoint],
        shift=shift, correlation=float(result.r), hash=float(result.hash), overlap_box=box,
    )


def store_stitching_results(spim: SpimData, results: list[PairStitch]) -> None:
    """Put the accepted pairs into ``spim.stitching_results``, replacing earlier results of every pair stitched.

    Results of pairs not stitched now are kept (the solver ignores them once
    their hash no longer matches the registrations).
    """
    done = {(r.a, r.b) for r in results}

    def pair_of(p: PairwiseResult):
        if len(p.setups_a) != 1 or len(p.setups_b) != 1:
            return None
        a, b = ViewId(p.timepoints_a[0], p.setups_a[0]), ViewId(p.timepoints_b[0], p.setups_b[0])
        return tuple(sorted((a, b)))

    kept = [p for p in spim.stitching_results if pair_of(p) not in done]
    spim.stitching_results = kept + [to_pairwise_result(r) for r in results if r.accepted]
