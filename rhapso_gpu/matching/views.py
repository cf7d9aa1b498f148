"""Matching the interest points of a dataset's views: pair selection, world points, one task per pair.

Points are read from ``interestpoints.n5`` in each view's full-resolution
local pixels (xyz) and taken to world coordinates with the view's current
registration; a pair's result maps A's world points onto B's.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask
import numpy as np

from rhapso_gpu.backend import get_backend
from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine, intersect_boxes, overlapping_pairs, view_affine, view_box_world
from rhapso_gpu.io.correspondences import PairCorrespondences, store_matches
from rhapso_gpu.io.interestpoints import container_location, read_interest_points
from rhapso_gpu.io.spimdata import SpimData, ViewId
from rhapso_gpu.matching.icp import icp
from rhapso_gpu.matching.pairwise import PairMatch, match_points
from rhapso_gpu.matching.params import MatchParams


@dataclass
class ViewPoints:
    """Interest points of one view and label in world coordinates.

    Attributes
    ----------
    view : ViewId
    label : str
    ids : ndarray of uint64 (N,)
        Point ids as stored.
    world_xyz : ndarray of float64 (N, 3)
        Positions in world coordinates under the current registration.
    """

    view: ViewId
    label: str
    ids: np.ndarray
    world_xyz: np.ndarray


@dataclass
class PairResult:
    """Matches of one pair of views for one label.

    Attributes
    ----------
    a, b : ViewId
    label : str
    points_a, points_b : int
        Points of each view used (inside the overlap when ``overlap_only``).
    match : PairMatch
        Candidates, inliers, model (A world -> B world), RMS, or the failure reason.
    ids_a, ids_b : ndarray of uint64
        Matched point ids of A and B.
    """

    a: ViewId
    b: ViewId
    label: str
    points_a: int
    points_b: int
    match: PairMatch
    ids_a: np.ndarray
    ids_b: np.ndarray


def select_pairs(spim: SpimData, params: MatchParams, views: list[ViewId] | None = None) -> list[tuple[ViewId, ViewId]]:
    """Pairs of views to match, each once (``a < b``), sorted.

    ``params.pairs`` picks overlapping boxes (under the current registrations)
    or all pairs; ``params.timepoints`` pairs views within each time point,
    every view with the views of the reference time point (and those among
    themselves), or across all time points.
    """
    views = sorted(views if views is not None else spim.view_ids())
    if params.pairs == "overlapping":
        candidates = overlapping_pairs(spim, views, same_timepoint=False)
    else:
        candidates = [(a, b) for i, a in enumerate(views) for b in views[i + 1 :]]
    if params.timepoints == "individually":
        return [(a, b) for a, b in candidates if a.timepoint == b.timepoint]
    if params.timepoints == "reference":
        tps = sorted({v.timepoint for v in views})
        ref = tps[0] if params.reference_timepoint is None else params.reference_timepoint
        if ref not in tps:
            raise UserError(f"reference_timepoint {ref}: not a time point of the views ({tps})")
        return [(a, b) for a, b in candidates if ref in (a.timepoint, b.timepoint)]
    return candidates


def load_view_points(spim: SpimData, view: ViewId, label: str) -> ViewPoints:
    """Read a view's points of one label and take them to world coordinates."""
    known = {(r.view, r.label) for r in spim.interest_points}
    if (view, label) not in known:
        raise UserError(
            f"{spim.location or 'dataset'}: view {view} has no interest points labelled '{label}' "
            "(run `rhapso-gpu detect` first, or choose a label with --set labels=[...])"
        )
    points = read_interest_points(container_location(spim), view, label)
    return ViewPoints(view, label, points.ids, apply_affine(view_affine(spim, view), points.loc_xyz))


def _inside(world_xyz: np.ndarray, box, margin: float) -> np.ndarray:
    lo, hi = box
    return np.all((world_xyz >= lo - margin) & (world_xyz <= hi + margin), axis=1)


def pair_points(spim: SpimData, a: ViewPoints, b: ViewPoints, params: MatchParams):
    """The rows of A and B to match: all, or those inside the overlap box plus the margin."""
    if not params.overlap_only:
        return np.arange(len(a.ids)), np.arange(len(b.ids))
    box = intersect_boxes(view_box_world(spim, a.view), view_box_world(spim, b.view))
    if box is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m = params.overlap_margin
    return np.flatnonzero(_inside(a.world_xyz, box, m)), np.flatnonzero(_inside(b.world_xyz, box, m))


def match_pair(a: ViewPoints, b: ViewPoints, rows_a, rows_b, params: MatchParams, backend: str = "numpy") -> PairResult:
    """Match one pair of views (a dask task): descriptor or ICP matching of the selected rows.

    The RANSAC seed is ``[seed, tp_a, setup_a, tp_b, setup_b]``, so a pair's
    result does not depend on which worker runs it or in which order.
    """
    xp = get_backend(backend).xp
    pa, pb = a.world_xyz[rows_a], b.world_xyz[rows_b]
    seed = [params.seed, a.view.timepoint, a.view.setup, b.view.timepoint, b.view.setup]
    model = params.transform_model()
    if params.method == "icp":
        ia, ib, affine = icp(pa, pb, model, None, params.icp(), params.ransac(), seed, xp)
        match = _icp_result(pa, pb, ia, ib, affine, params)
    else:
        match = match_points(pa, pb, model, params.descriptor(), params.ransac(), seed, params.guided, xp)
    ids_a = a.ids[rows_a][match.index_a]
    ids_b = b.ids[rows_b][match.index_b]
    return PairResult(a.view, b.view, a.label, len(rows_a), len(rows_b), match, ids_a, ids_b)


def _icp_result(pa, pb, ia, ib, affine, params: MatchParams) -> PairMatch:
    n = int(ia.size)
    empty = np.zeros(0, np.int64)
    if affine is None:
        need = max(params.transform_model().min_matches, params.min_inliers)
        return PairMatch(n, empty, empty, None, float("nan"), f"icp: {n} assignments, fewer than the {need} required")
    moved = apply_affine(affine, pa[ia])
    rms = float(np.sqrt(((moved - pb[ib]) ** 2).sum(axis=1).mean()))
    return PairMatch(n, ia, ib, affine, rms)


def match_dataset(spim: SpimData, params: MatchParams, cluster, backend: str = "numpy") -> list[PairResult]:
    """Match every selected pair of views for every label, one dask task per pair and label.

    Parameters
    ----------
    spim : SpimData
    params : MatchParams
    cluster
        An open :class:`rhapso_gpu.scheduler.Cluster` (anything with ``compute(*delayed)``).
    backend : str
        Array backend of the tasks (``numpy``, ``cupy`` or ``auto``).

    Returns
    -------
    list of PairResult
        In pair order (sorted views), then label order.
    """
    pairs = select_pairs(spim, params)
    views = sorted({v for pair in pairs for v in pair})
    tasks = []
    for label in params.labels:
        points = {v: load_view_points(spim, v, label) for v in views}
        for a, b in pairs:
            rows_a, rows_b = pair_points(spim, points[a], points[b], params)
            tasks.append(dask.delayed(match_pair)(points[a], points[b], rows_a, rows_b, params, backend))
    return list(cluster.compute(*tasks)) if tasks else []


def store_results(spim: SpimData, results: list[PairResult], params: MatchParams) -> None:
    """Write the matches to ``interestpoints.n5``, replacing the labels' earlier correspondences.

    Every view of the dataset that has one of the matched labels loses its old
    correspondences among those views and labels; failed pairs get none.
    """
    labels = set(params.labels)
    replace = [(r.view, r.label) for r in spim.interest_points if r.label in labels]
    matches = [
        PairCorrespondences((r.a, r.label), (r.b, r.label), r.ids_a, r.ids_b) for r in results if r.match.ok
    ]
    store_matches(container_location(spim), matches, replace)
