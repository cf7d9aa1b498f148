"""Matching the interest points of a dataset's views: pair selection, world points, one task per pair.

Points are read from ``interestpoints.n5`` in each view's full-resolution
local pixels (xyz) and taken to world coordinates with the view's current
registration; a pair's result maps A's world points onto B's. With grouping
(``group_tiles``, ``group_channels``, ``group_illuminations``) each side of a
pair is a group of views whose points are pooled and merged
(:mod:`rhapso_gpu.matching.grouping`); the matches are split back per pair of
views with the original point ids.
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
from rhapso_gpu.matching.descriptors import METHODS
from rhapso_gpu.matching.grouping import Group, PointSet, pool, split_matches, view_groups
from rhapso_gpu.matching.icp import icp
from rhapso_gpu.matching.pairwise import OFFSET_CONSENSUS, PairMatch, match_offsets, match_points
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.matching.significance import chance_reason


@dataclass
class PairResult:
    """Matches of one pair of views (or groups of views) for one pair of labels.

    Attributes
    ----------
    a, b : tuple of ViewId
        The views of each side (one unless grouped).
    label_a, label_b : str
        Labels of each side (equal unless ``match_across_labels``).
    points_a, points_b : int
        Points of each side used (merged; inside the overlap when ``overlap_only``).
    match : PairMatch
        Candidates, inliers, model (A world -> B world), RMS, or the failure reason;
        rows index the used points of each side.
    links : list of PairCorrespondences
        The matches as original point ids per pair of views (A's view first);
        with groups, pairs of views with fewer than the model's minimum
        number of matches are left out. Empty when the pair failed.
    method : str
        The method that gave ``match``: ``params.method``, or the fallback
        (``offset-consensus``) when the descriptors failed the pair.
    """

    a: Group
    b: Group
    label_a: str
    label_b: str
    points_a: int
    points_b: int
    match: PairMatch
    links: list[PairCorrespondences]
    method: str


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


def select_group_pairs(spim: SpimData, params: MatchParams, groups: list[Group]) -> list[tuple[Group, Group]]:
    """Pairs of groups to match: two groups pair when any of their views pair (:func:`select_pairs`).

    Views of the same group are never matched with each other. Sorted, each pair once.
    """
    member = {v: i for i, g in enumerate(groups) for v in g}
    view_pairs = select_pairs(spim, params, list(member))
    index_pairs = {tuple(sorted((member[a], member[b]))) for a, b in view_pairs if member[a] != member[b]}
    return [(groups[i], groups[j]) for i, j in sorted(index_pairs)]


def label_pairs(params: MatchParams) -> list[tuple[str, str]]:
    """Label of A and label of B of every matching: each label with itself, and with the others if asked."""
    labels = list(dict.fromkeys(params.labels))
    if params.match_across_labels:
        return [(la, lb) for la in labels for lb in labels]
    return [(label, label) for label in labels]


def load_view_points(spim: SpimData, view: ViewId, label: str) -> PointSet:
    """Read a view's points of one label and take them to world coordinates."""
    known = {(r.view, r.label) for r in spim.interest_points}
    if (view, label) not in known:
        raise UserError(
            f"{spim.location or 'dataset'}: view {view} has no interest points labelled '{label}' "
            "(run `rhapso-gpu detect` first, or choose a label with --set labels=[...])"
        )
    points = read_interest_points(container_location(spim), view, label)
    world = apply_affine(view_affine(spim, view), points.loc_xyz)
    return PointSet((view,), label, np.zeros(len(points.ids), np.int64), points.ids, world)


def _inside(world_xyz: np.ndarray, box, margin: float) -> np.ndarray:
    lo, hi = box
    return np.all((world_xyz >= lo - margin) & (world_xyz <= hi + margin), axis=1)


def pair_points(spim: SpimData, a: PointSet, b: PointSet, params: MatchParams) -> tuple[np.ndarray, np.ndarray]:
    """The rows of A and B to match: all, or those inside an overlap box (plus the margin).

    A point of view ``v`` of A counts as inside when it lies in the overlap of
    ``v`` with any view of B (and vice versa).
    """
    if not params.overlap_only:
        return np.arange(len(a)), np.arange(len(b))
    boxes = {v: view_box_world(spim, v) for v in a.views + b.views}
    keep_a, keep_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    for i, va in enumerate(a.views):
        for j, vb in enumerate(b.views):
            box = intersect_boxes(boxes[va], boxes[vb])
            if box is not None:
                keep_a |= (a.origin == i) & _inside(a.world_xyz, box, params.overlap_margin)
                keep_b |= (b.origin == j) & _inside(b.world_xyz, box, params.overlap_margin)
    return np.flatnonzero(keep_a), np.flatnonzero(keep_b)


def match_pair(a: PointSet, b: PointSet, rows_a, rows_b, params: MatchParams, backend: str = "numpy") -> PairResult:
    """Match one pair of views or groups (a dask task): descriptor or ICP matching of the selected rows.

    The RANSAC seed is ``[seed, tp_a, setup_a, tp_b, setup_b]`` of the first
    view of each side, so a pair's result does not depend on which worker
    runs it or in which order. When a descriptor method fails and
    ``params.fallback`` is ``offset-consensus``, that method matches the same
    points; if it fails too, the reason names both failures.
    """
    xp = get_backend(backend).xp
    pa, pb = a.world_xyz[rows_a], b.world_xyz[rows_b]
    va, vb = a.views[0], b.views[0]
    seed = [params.seed, va.timepoint, va.setup, vb.timepoint, vb.setup]
    model = params.transform_model()
    if params.method == "icp":
        ia, ib, affine = icp(pa, pb, model, None, params.icp(), params.ransac(), seed, xp)
        match = _icp_result(pa, pb, ia, ib, affine, params)
    else:
        match = match_points(pa, pb, model, params.descriptor(), params.ransac(), seed, params.guided, xp)
    method = params.method
    if not match.ok and params.method in METHODS and params.fallback == OFFSET_CONSENSUS:
        second = match_offsets(pa, pb, model, params.search_radius, params.ransac(), seed, xp)
        if second.ok:
            match, method = second, OFFSET_CONSENSUS
        else:
            second.reason = f"{params.method}: {match.reason}; {OFFSET_CONSENSUS}: {second.reason}"
            match = second
    links = split_matches(a, b, rows_a[match.index_a], rows_b[match.index_b], model.min_matches) if match.ok else []
    return PairResult(a.views, b.views, a.label, b.label, len(rows_a), len(rows_b), match, links, method)


def _icp_result(pa, pb, ia, ib, affine, params: MatchParams) -> PairMatch:
    n = int(ia.size)
    empty = np.zeros(0, np.int64)
    if affine is None:
        need = max(params.transform_model().min_matches, params.min_inliers)
        return PairMatch(n, empty, empty, None, float("nan"), f"icp: {n} assignments, fewer than the {need} required")
    distance = np.linalg.norm(apply_affine(affine, pa[ia]) - pb[ib], axis=1)
    chance = chance_reason(apply_affine(affine, pa), pb, distance, params.icp_max_distance)
    if chance:
        return PairMatch(n, empty, empty, None, float("nan"), f"icp: {chance}")
    return PairMatch(n, ia, ib, affine, float(np.sqrt((distance**2).mean())), ransac_inliers=n)


def match_dataset(spim: SpimData, params: MatchParams, cluster, backend: str = "numpy") -> list[PairResult]:
    """Match every selected pair of views or groups for every pair of labels, one dask task each.

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
        In label-pair order (:func:`label_pairs`), then pair order (sorted views or groups).
    """
    groups = view_groups(spim, spim.view_ids(), params.grouped())
    pairs = select_group_pairs(spim, params, groups)
    used = sorted({g for pair in pairs for g in pair})
    labels = list(dict.fromkeys(params.labels))
    points = {
        (g, label): pool([load_view_points(spim, v, label) for v in g], params.merge_distance)
        for label in labels
        for g in used
    }
    tasks = []
    for la, lb in label_pairs(params):
        for ga, gb in pairs:
            a, b = points[ga, la], points[gb, lb]
            rows_a, rows_b = pair_points(spim, a, b, params)
            tasks.append(dask.delayed(match_pair)(a, b, rows_a, rows_b, params, backend))
    return list(cluster.compute(*tasks)) if tasks else []


def store_results(spim: SpimData, results: list[PairResult], params: MatchParams) -> None:
    """Write the matches to ``interestpoints.n5``, replacing the labels' earlier correspondences.

    Every view of the dataset that has one of the matched labels loses its old
    correspondences among those views and labels; failed pairs get none. Each
    link is stored in both views' lists, keyed by the other view and label.
    """
    labels = set(params.labels)
    replace = [(r.view, r.label) for r in spim.interest_points if r.label in labels]
    store_matches(container_location(spim), [link for r in results for link in r.links], replace)
