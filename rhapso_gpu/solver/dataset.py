"""Global optimisation of a dataset: matches from ``interestpoints.n5``, models into the registrations.

Every view is one tile, or, with ``group_tiles`` / ``group_channels`` /
``group_illuminations``, every group of views that differ only in those
attributes (BigStitcher's grouping: one model per group, matches within a
group ignored). Matched points are read in the views' full-resolution local
pixels (xyz) and taken to world coordinates with the views' current
registrations; the solved tile model ``M`` (world -> corrected world) is
pre-concatenated to the registration of each of the tile's views as a new
``ViewTransform`` at index 0 (``new world = M @ old world``), as BigStitcher
stores it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import f as f_dist

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine, view_affine, view_box_world
from rhapso_gpu.io.correspondences import read_correspondences
from rhapso_gpu.io.grouping import view_groups
from rhapso_gpu.io.interestpoints import container_location, read_interest_points
from rhapso_gpu.io.spimdata import SpimData, ViewId, ViewTransform
from rhapso_gpu.models import TransformModel
from rhapso_gpu.solver.global_opt import Optimum, optimize
from rhapso_gpu.solver.graph import MatchGraph, match_distances
from rhapso_gpu.solver.linear import IDENTITY
from rhapso_gpu.solver.params import SolveParams
from rhapso_gpu.solver.stitching_links import stitching_graph

MPICBG_NAMES = {
    "identity": "IdentityModel",
    "translation": "TranslationModel3D",
    "rigid": "RigidModel3D",
    "affine": "AffineModel3D",
}


def transform_name(model: TransformModel) -> str:
    """The ``<Name>`` of the stored transform, BigStitcher's wording with the real lambda."""
    main = MPICBG_NAMES[model.kind]
    if not model.regularized:
        return main
    return f"{main} regularized with an {MPICBG_NAMES[model.regularizer]}, lambda = {model.lam:g}"


@dataclass
class DatasetSolve:
    """A solved dataset: the views, fixed views, the optimum.

    Tile ``i`` of the optimum is the views ``tiles[i]`` (one each unless grouped).
    ``selection`` describes the model selection (``select_model``), else None.
    """

    views: list[ViewId]
    fixed: list[ViewId]
    optimum: Optimum
    model: TransformModel
    selection: dict | None = None
    tiles: list[tuple[ViewId, ...]] | None = None

    def __post_init__(self):
        if self.tiles is None:
            self.tiles = [(v,) for v in self.views]

    def tile_name(self, tile: int) -> str:
        """``tp0/setup1`` for a single view, ``tp0/setup0+tp0/setup1`` for a group."""
        return "+".join(str(v) for v in self.tiles[tile])


def fixed_views(spim: SpimData, views: list[ViewId], params: SolveParams) -> list[ViewId]:
    """The views held fixed: those named, else the first view of every time point (never random)."""
    if params.fixed_views is None:
        first: dict[int, ViewId] = {}
        for v in sorted(views):
            first.setdefault(v.timepoint, v)
        return sorted(first.values()) if params.timepoints == "individually" else [min(views)]
    named = [ViewId(*(int(p) for p in str(text).split(","))) for text in params.fixed_views]
    missing = [str(v) for v in named if v not in set(views)]
    if missing:
        raise UserError(f"fixed_views: {', '.join(missing)} not among the dataset's views")
    return sorted(named)


def _label_weight(params: SolveParams, label: str) -> float:
    return float(params.label_weights.get(label, 1.0))


def build_graph(spim: SpimData, views: list[ViewId], params: SolveParams) -> MatchGraph:
    """Matches between the views from the stored correspondences, in world coordinates.

    A match of labels ``la`` and ``lb`` weighs ``(w_la + w_lb) / 2``. Each
    pair is read from its lower view's correspondences (they are stored in both).
    With ``params.links == "stitching"`` the matches come from the stitching
    results instead (:mod:`~rhapso_gpu.solver.stitching_links`).
    """
    if params.links == "stitching":
        return stitching_graph(spim, views, same_timepoint=params.timepoints == "individually")
    index = {v: i for i, v in enumerate(views)}
    labels = set(params.labels)
    refs = {(r.view, r.label) for r in spim.interest_points}
    location = container_location(spim)
    world: dict[tuple[ViewId, str], tuple[np.ndarray, np.ndarray]] = {}

    def points(view: ViewId, label: str):
        if (view, label) not in world:
            p = read_interest_points(location, view, label)
            order = np.argsort(p.ids, kind="stable")
            world[view, label] = (p.ids[order], apply_affine(view_affine(spim, view), p.loc_xyz[order]))
        return world[view, label]

    def lookup(view, label, ids, where):
        sorted_ids, xyz = points(view, label)
        pos = np.searchsorted(sorted_ids, ids)
        ok = (pos < len(sorted_ids)) & (sorted_ids[np.minimum(pos, len(sorted_ids) - 1)] == ids)
        if not ok.all():
            raise UserError(f"{location}: {where}: correspondences name point ids missing from {view} '{label}'")
        return xyz[pos]

    links = []
    for view in views:
        for label in sorted(labels):
            if (view, label) not in refs:
                continue
            for (other, other_label), (ids_here, ids_other) in sorted(read_correspondences(location, view, label).items()):
                if other_label not in labels or other not in index or other <= view:
                    continue
                if params.timepoints == "individually" and other.timepoint != view.timepoint:
                    continue
                where = f"{view} '{label}' -> {other} '{other_label}'"
                pa = lookup(view, label, ids_here, where)
                pb = lookup(other, other_label, ids_other, where)
                w = 0.5 * (_label_weight(params, label) + _label_weight(params, other_label))
                links.append((index[view], index[other], pa, pb, np.full(len(pa), w)))
    return MatchGraph.from_links(len(views), links)


def solve_dataset(spim: SpimData, params: SolveParams, views: list[ViewId] | None = None) -> DatasetSolve:
    """Solve the views' models (the dataset is not changed; see :func:`apply_solution`)."""
    views = sorted(views if views is not None else spim.view_ids())
    if not views:
        raise UserError(f"{spim.location or 'dataset'}: no views to solve")
    fixed = fixed_views(spim, views, params)
    tiles = view_groups(spim, views, params.grouped())
    tile_of = {v: t for t, members in enumerate(tiles) for v in members}
    graph = build_graph(spim, views, params)
    if len(tiles) < len(views):
        graph = graph.merge_tiles(np.array([tile_of[v] for v in views]), len(tiles))
    if graph.n_links == 0:
        raise UserError(
            f"{spim.location or 'dataset'}: no correspondences between the views"
            f"{' of different groups' if len(tiles) < len(views) else ''} for label(s) "
            f"{', '.join(params.labels)} (run `rhapso-gpu match` first, or choose labels with --label)"
        )
    view_boxes = {v: np.stack(view_box_world(spim, v)) for v in views}
    boxes = np.array([[np.min([view_boxes[v][0] for v in t], axis=0), np.max([view_boxes[v][1] for v in t], axis=0)]
                      for t in tiles])
    # weak links (round 2) only between tiles of one time point, when treated individually; the
    # overlapping pairs are found by a sweep, and only if round 1 leaves a group without a fixed tile
    classes = np.array([t[0].timepoint for t in tiles]) if params.timepoints == "individually" else None
    fixed_mask = np.zeros(len(tiles), bool)
    fixed_mask[[tile_of[v] for v in fixed]] = True
    settings = params.settings()
    optimum = optimize(graph, fixed_mask, settings, boxes, weak_classes=classes)
    solved = DatasetSolve(views, fixed, optimum, params.transform_model(), tiles=tiles)
    if params.select_model and params.model == "affine":
        rigid = replace(settings, model=TransformModel("rigid", "none", 0.0))
        rigid_optimum = optimize(graph, fixed_mask, rigid, boxes, weak_classes=classes)
        solved.selection = select_model(optimum, rigid_optimum, params.select_p)
        if solved.selection["chosen"] == "rigid":
            solved = DatasetSolve(views, fixed, rigid_optimum, rigid.model, solved.selection, tiles)
    return solved


SELECT_TRIM = 3.0
"""Matches whose rigid residual exceeds this many times the median are left out of the model F-test."""


def select_model(affine: Optimum, rigid: Optimum, p_value: float) -> dict:
    """F-test of the affine against the rigid solution on the links both kept.

    ``F = ((RSS_rigid - RSS_affine) / 6 m) / (RSS_affine / (N - 12 m))`` with
    ``m`` free tiles and ``N`` independent observations (``MatchGraph.observations``:
    3 per point match, 3 per stitching link however many corners repeat its
    shift): the affine is chosen only when its 6 extra parameters per tile
    explain significantly more than noise. When ``N <= 12 m`` the affine is not
    determined by the links and the rigid is kept.

    The test runs on the core of the matches, those whose rigid residual is at
    most :data:`SELECT_TRIM` times the median (``N`` scaled by the share kept):
    poorly localised points (blobs in tissue) give heavy tails that an affine
    "explains" by bending the tiles, which the F-test's Gaussian noise would
    take for a real affine (measured on beads+tissue 3x3x2: affine chosen, true
    error 0.175 -> 0.215 px; with the core, rigid kept and 0.140 px).
    """
    keep = ~(affine.removed | rigid.removed)
    rows = np.repeat(keep, np.diff(affine.graph.offsets))
    w = affine.graph.weights[rows]
    distances = {name: match_distances(opt.graph, opt.models)[rows] for name, opt in (("affine", affine),
                                                                                      ("rigid", rigid))}
    core = distances["rigid"] <= SELECT_TRIM * np.median(distances["rigid"]) if rows.any() else np.zeros(0, bool)
    rss = {name: float((w * d**2)[core].sum()) for name, d in distances.items()}
    moved = np.flatnonzero(np.abs(affine.models - IDENTITY).max(axis=(1, 2)) > 0)
    m, observations = max(len(moved), 1), float(affine.graph.observations[keep].sum())
    share = float(core.mean()) if core.size else 0.0
    n = observations * share
    dof = n - 12 * m
    if dof <= 0:
        f_stat, p = float("nan"), 1.0  # the affine is not determined: keep the rigid
    elif rss["affine"] <= 0:
        f_stat, p = float("inf"), 0.0 if rss["rigid"] > 0 else 1.0
    else:
        f_stat = max(rss["rigid"] - rss["affine"], 0.0) / (6 * m) / (rss["affine"] / dof)
        p = float(f_dist.sf(f_stat, 6 * m, dof))
    # JSON has no NaN or infinity: F is null when the affine is undetermined or fits exactly
    return {"chosen": "affine" if p < p_value else "rigid",
            "F": round(f_stat, 4) if np.isfinite(f_stat) else None, "p": p,
            "observations": observations, "core_share": round(share, 4), "dof": dof,
            "rss_affine": round(rss["affine"], 6), "rss_rigid": round(rss["rigid"], 6)}


def apply_solution(spim: SpimData, solved: DatasetSolve) -> None:
    """Pre-concatenate every view's tile model as a new ``ViewTransform`` at index 0."""
    name = transform_name(solved.model)
    for members, model in zip(solved.tiles, solved.optimum.models, strict=True):
        for view in members:
            spim.registrations[view].insert(0, ViewTransform.from_matrix(name, model))
