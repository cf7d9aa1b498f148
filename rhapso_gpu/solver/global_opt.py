"""Global optimisation of a match graph: fixed tiles, pre-alignment, link removal, two rounds.

BigStitcher's ``GlobalOptIterative`` / ``GlobalOptTwoRound`` with the direct
solves of :mod:`rhapso_gpu.solver.linear`:

1. Pre-align from the fixed tiles outward (breadth first; each new ring of
   tiles fitted to its already placed neighbours).
2. Solve. While the tile errors break BigStitcher's rule
   (``avg * relative_threshold < max and max > 0.75``, or ``avg > absolute_threshold``;
   tile error = mean match distance), remove the single worst link (weighted
   mean distance) between two tiles that both keep another link, and solve again.
3. Two rounds: every connected group of tiles left without a fixed tile is
   placed with weak links, the 8 corners of the metadata overlap boxes of its
   views with views of other groups, and a second solve of one model per group.

All coordinates are world xyz (isotropic pixels); a tile model maps the
tile's current world coordinates to corrected ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import box_corners, overlapping_box_pairs
from rhapso_gpu.models import TransformModel
from rhapso_gpu.solver.affine import solve_affine
from rhapso_gpu.solver.graph import LinkMoments, MatchGraph, link_moments, match_distances
from rhapso_gpu.solver.linear import (
    IDENTITY,
    SolveStats,
    fit_tiles,
    solve_rigid,
    solve_translation,
    tile_extent,
    tile_fit_moments,
)

MIN_MAX_ERROR = 0.75
"""BigStitcher's ``SimpleIterativeConvergenceStrategy.minMaxError`` (world units)."""


@dataclass(frozen=True)
class SolverSettings:
    """Settings of :func:`optimize` (see ``SolveParams`` for their meaning)."""

    model: TransformModel
    link_removal: bool = True
    two_round: bool = True
    relative_threshold: float = 3.5
    absolute_threshold: float = 7.0
    max_iterations: int = 100
    tolerance: float = 1e-6
    batch_removal: bool = False


@dataclass
class RemovedLink:
    """A link removed by the iterative strategy, with the errors that made it go."""

    tile_a: int
    tile_b: int
    error: float
    avg_tile_error: float
    max_tile_error: float


@dataclass
class Optimum:
    """Result of :func:`optimize`.

    Attributes
    ----------
    models : ndarray (n_tiles, 3, 4)
        Tile models (world xyz -> corrected world xyz).
    graph : MatchGraph
        The real links (removed ones included; see ``removed``).
    removed : ndarray of bool (L,)
        Links removed by the iterative strategy.
    removals : list of RemovedLink
    weak : MatchGraph or None
        Weak links of the second round, between tiles (``tile -> group`` in ``groups``).
    groups : ndarray of int (n_tiles,)
        Connected group of every tile after round 1.
    placed_by_metadata : list of int
        Tiles whose group had no fixed tile and was placed by weak links.
    unplaced : list of int
        Tiles whose group had no fixed tile and no weak link (left unchanged).
    anchors : list of int
        Tiles held fixed in round 1 as the gauge of a group without a fixed tile.
    stats : list of (str, SolveStats)
        Every solve, in order.
    """

    models: np.ndarray
    graph: MatchGraph
    removed: np.ndarray
    removals: list[RemovedLink] = field(default_factory=list)
    weak: MatchGraph | None = None
    groups: np.ndarray | None = None
    placed_by_metadata: list[int] = field(default_factory=list)
    unplaced: list[int] = field(default_factory=list)
    anchors: list[int] = field(default_factory=list)
    stats: list[tuple[str, SolveStats]] = field(default_factory=list)


def components(n_tiles: int, link_a: np.ndarray, link_b: np.ndarray) -> np.ndarray:
    """Connected component label of every tile, numbered by their smallest tile (deterministic)."""
    adj = coo_matrix((np.ones(len(link_a)), (link_a, link_b)), shape=(n_tiles, n_tiles))
    _, labels = connected_components(adj, directed=False)
    first = {}
    for lab in labels:
        first.setdefault(int(lab), len(first))
    return np.array([first[int(lab)] for lab in labels], np.int64)


def _centers(graph: MatchGraph) -> np.ndarray:
    """Mean matched point of every tile (world), the centre of its rotations; 0 for unlinked tiles."""
    link = graph.match_link
    sums = np.zeros((graph.n_tiles, 3))
    counts = np.zeros(graph.n_tiles)
    np.add.at(sums, graph.link_a[link], graph.points_a)
    np.add.at(sums, graph.link_b[link], graph.points_b)
    np.add.at(counts, graph.link_a[link], 1)
    np.add.at(counts, graph.link_b[link], 1)
    return sums / np.maximum(counts, 1)[:, None]


def prealign(graph: MatchGraph, moments, fixed: np.ndarray, kind: str) -> np.ndarray:
    """Models placing every tile reachable from a fixed tile, ring by ring (breadth first).

    Each new tile is fitted (``kind``; translation where that is undetermined) to
    its links with already placed tiles. Unreachable tiles keep the identity.
    """
    n = graph.n_tiles
    models = np.repeat(IDENTITY[None], n, axis=0)
    placed = fixed.copy()
    while True:
        on_a, on_b = placed[graph.link_a], placed[graph.link_b]
        use = on_a ^ on_b
        if not use.any():
            return models
        ring = np.unique(np.concatenate([graph.link_b[use & on_a], graph.link_a[use & on_b]]))
        d, c = tile_fit_moments(n, graph.link_a, graph.link_b, moments, models, use)
        fitted = fit_tiles(kind, d[ring], c[ring])
        bad = ~np.isfinite(fitted).all(axis=(1, 2))
        if bad.any():
            fitted[bad] = fit_tiles("translation", d[ring[bad]], c[ring[bad]])
        models[ring] = fitted
        placed[ring] = True


def _solve(graph: MatchGraph, fixed: np.ndarray, settings: SolverSettings, start: np.ndarray | None,
           moments: LinkMoments | None = None):
    """One solve of all tiles; groups without a fixed tile are held by their smallest tile.

    ``moments`` are the graph's :func:`link_moments` if already known.
    """
    model = settings.model
    if model.regularized and model.lam == 1.0:  # the regulariser alone
        if model.regularizer == "identity":
            return np.repeat(IDENTITY[None], graph.n_tiles, axis=0), SolveStats(0, 0.0, True), []
        model = TransformModel(model.regularizer, "none", 0.0)
    moments = link_moments(graph) if moments is None else moments
    labels = components(graph.n_tiles, graph.link_a, graph.link_b)
    held = fixed.copy()
    anchors = []
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        if not held[members].any():
            held[members[0]] = True
            anchors.append(int(members[0]))
    extent = tile_extent(graph.n_tiles, graph.link_a, graph.link_b, moments)
    init = prealign(graph, moments, held, "translation" if model.kind == "translation" else "rigid")
    if start is not None:
        init = start
    args = (graph.n_tiles, graph.link_a, graph.link_b, moments, held, init)
    try:
        if model.kind == "translation":
            models, stats = solve_translation(*args)
        elif model.kind == "rigid":
            models, stats = solve_rigid(*args, _centers(graph), settings.max_iterations, settings.tolerance, extent)
        else:
            models, stats = solve_affine(*args, model, settings.max_iterations, settings.tolerance, extent)
    except RuntimeError as e:  # singular factor: a tile's matches do not determine its model
        raise UserError(
            f"global optimisation ({model.describe()}): the matches do not determine every tile's model ({e}); "
            "use a rigid or regularised model, or more matches"
        ) from None
    return models, stats, anchors


def tile_errors(graph: MatchGraph, models: np.ndarray, keep: np.ndarray):
    """Per-match distances, per-link weighted mean distance, per-tile mean distance (NaN: no links)."""
    dist = match_distances(graph, models)
    link = graph.match_link
    n_links = graph.n_links
    wsum = np.bincount(link, graph.weights, minlength=n_links)
    link_err = np.bincount(link, graph.weights * dist, minlength=n_links) / np.where(wsum > 0, wsum, 1)
    dsum = np.bincount(link, dist, minlength=n_links)
    cnt = np.diff(graph.offsets).astype(float)
    tsum = np.zeros(graph.n_tiles)
    tcnt = np.zeros(graph.n_tiles)
    for side in (graph.link_a, graph.link_b):
        np.add.at(tsum, side[keep], dsum[keep])
        np.add.at(tcnt, side[keep], cnt[keep])
    tile_err = np.where(tcnt > 0, tsum / np.where(tcnt > 0, tcnt, 1), np.nan)
    return dist, link_err, tile_err


def _removable(graph: MatchGraph, keep: np.ndarray) -> np.ndarray:
    """Links between two tiles that both keep another link (removing one never isolates a tile)."""
    degree = np.bincount(graph.link_a[keep], minlength=graph.n_tiles) + np.bincount(
        graph.link_b[keep], minlength=graph.n_tiles
    )
    return keep & (degree[graph.link_a] > 1) & (degree[graph.link_b] > 1)


def links_to_remove(graph: MatchGraph, keep: np.ndarray, link_err: np.ndarray, avg: float,
                    settings: SolverSettings) -> np.ndarray:
    """Links to remove after a solve that broke the rule (indices, worst first).

    The worst removable link, as BigStitcher. With ``batch_removal`` also every
    removable link that is the worst within two links of its tiles and whose
    error is above ``relative_threshold`` times the mean tile error (and
    0.75 px): wrong links far apart do not change each other's ranking, so a
    graph with hundreds of them needs a few solves instead of hundreds.
    """
    ok = _removable(graph, keep)
    if not ok.any():
        return np.zeros(0, np.int64)
    worst = int(np.flatnonzero(ok)[np.argmax(link_err[ok])])
    if not settings.batch_removal:
        return np.array([worst])
    err = np.where(keep, link_err, -np.inf)
    near = np.full(graph.n_tiles, -np.inf)  # worst link error at each tile
    np.maximum.at(near, graph.link_a, err)
    np.maximum.at(near, graph.link_b, err)
    near2 = near.copy()  # ... and at its neighbours (links within two hops)
    np.maximum.at(near2, graph.link_a[keep], near[graph.link_b[keep]])
    np.maximum.at(near2, graph.link_b[keep], near[graph.link_a[keep]])
    local_max = err >= np.maximum(near2[graph.link_a], near2[graph.link_b])
    big = err > max(settings.relative_threshold * avg, MIN_MAX_ERROR)
    picked = np.flatnonzero(ok & local_max & big)
    picked = picked[np.argsort(-err[picked], kind="stable")]
    return np.concatenate([[worst], picked[picked != worst]]).astype(np.int64)


def not_converged(tile_err: np.ndarray, settings: SolverSettings) -> tuple[bool, float, float]:
    """BigStitcher's ``SimpleIterativeConvergenceStrategy``: ``(not converged, avg, max)`` of tile errors."""
    errs = tile_err[np.isfinite(tile_err)]
    if errs.size == 0:
        return False, 0.0, 0.0
    avg, mx = float(errs.mean()), float(errs.max())
    bad = (avg * settings.relative_threshold < mx and mx > MIN_MAX_ERROR) or avg > settings.absolute_threshold
    return bad, avg, mx


def _round_one(graph: MatchGraph, fixed: np.ndarray, settings: SolverSettings, opt: Optimum) -> np.ndarray:
    keep = np.ones(graph.n_links, bool)
    moments = link_moments(graph)  # of all links, once: a removal only drops links
    models, stats, anchors = _solve(graph, fixed, settings, None, moments)
    opt.stats.append(("round 1", stats))
    while settings.link_removal:
        _, link_err, tile_err = tile_errors(graph, models, keep)
        bad, avg, mx = not_converged(tile_err, settings)
        remove = links_to_remove(graph, keep, link_err, avg, settings) if bad else []
        if len(remove) == 0:
            break
        for worst in remove:
            keep[worst] = False
            opt.removals.append(
                RemovedLink(int(graph.link_a[worst]), int(graph.link_b[worst]), float(link_err[worst]), avg, mx)
            )
        models, stats, anchors = _solve(graph.subset(keep), fixed, settings, models, moments.subset(keep))
        opt.stats.append((f"after removing {len(remove)} link(s)", stats))
    opt.removed = ~keep
    opt.anchors = anchors
    return models


_UNIT_CORNERS = box_corners(np.zeros(3), np.ones(3)).astype(bool)  # (8, 3): which corners take the max


def weak_links(models: np.ndarray, groups: np.ndarray, boxes: np.ndarray, pairs=None,
               classes: np.ndarray | None = None) -> MatchGraph:
    """Weak links between groups: 8 corners of each metadata overlap box, under both tiles' models.

    Parameters
    ----------
    boxes : ndarray (n_tiles, 2, 3)
        World box (min, max; xyz) of every tile under its metadata registration.
    pairs : iterable of (int, int), optional
        Tile pairs allowed to be linked; those in one group or whose boxes do
        not overlap are skipped. Default: the pairs whose boxes overlap
        (:func:`overlapping_box_pairs`, of the same ``classes`` if given).
    classes : ndarray (n_tiles,), optional
        With the default pairs: link only tiles of the same class (time point).
    """
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    boxes = np.asarray(boxes, np.float64)
    if pairs is None:
        a, b = overlapping_box_pairs(boxes, classes)
    else:
        ab = np.asarray(list(pairs) if not isinstance(pairs, np.ndarray) else pairs, np.int64).reshape(-1, 2)
        a, b = ab[:, 0], ab[:, 1]
    apart = groups[a] != groups[b]
    a, b = a[apart], b[apart]
    lo, hi = np.maximum(boxes[a, 0], boxes[b, 0]), np.minimum(boxes[a, 1], boxes[b, 1])
    ok = ~np.any(lo > hi, axis=1)
    a, b, lo, hi = a[ok], b[ok], lo[ok], hi[ok]
    corners = np.where(_UNIT_CORNERS, hi[:, None, :], lo[:, None, :])  # (k, 8, 3)
    pa = corners @ np.swapaxes(models[a, :, :3], 1, 2) + models[a, None, :, 3]
    pb = corners @ np.swapaxes(models[b, :, :3], 1, 2) + models[b, None, :, 3]
    # as MatchGraph.from_links: one link per pair of groups (lower first), tile pairs merged in order
    ga, gb = groups[a].astype(np.int64), groups[b].astype(np.int64)
    flip = ga > gb
    ga, gb = np.where(flip, gb, ga), np.where(flip, ga, gb)
    pa, pb = np.where(flip[:, None, None], pb, pa), np.where(flip[:, None, None], pa, pb)
    order = np.lexsort((gb, ga))  # stable: tile pairs of one link keep their order
    ga, gb, pa, pb = ga[order], gb[order], pa[order], pb[order]
    new = np.ones(len(ga), bool)
    new[1:] = (ga[1:] != ga[:-1]) | (gb[1:] != gb[:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(ga)))
    return MatchGraph(
        n_tiles=n_groups, link_a=ga[starts], link_b=gb[starts],
        offsets=np.concatenate([[0], 8 * np.cumsum(counts)]).astype(np.int64),
        points_a=pa.reshape(-1, 3), points_b=pb.reshape(-1, 3), weights=np.ones(8 * len(ga)),
        weak=np.ones(len(starts), bool), observations=24.0 * counts,
    )


def optimize(graph: MatchGraph, fixed: np.ndarray, settings: SolverSettings,
             boxes: np.ndarray | None = None, weak_pairs=None, weak_classes: np.ndarray | None = None) -> Optimum:
    """Solve the tile models of a match graph.

    Parameters
    ----------
    graph : MatchGraph
    fixed : ndarray of bool (n_tiles,)
        Tiles that keep the identity.
    settings : SolverSettings
    boxes : ndarray (n_tiles, 2, 3), optional
        Metadata world boxes, needed for the second round.
    weak_pairs : list of (int, int), optional
        Tile pairs whose overlaps may give weak links (default: the pairs whose
        boxes overlap, found only if round 1 leaves a group without a fixed tile).
    weak_classes : ndarray (n_tiles,), optional
        With the default ``weak_pairs``: weak links only between tiles of the
        same class (e.g. time point).

    Returns
    -------
    Optimum
    """
    fixed = np.asarray(fixed, bool)
    if not fixed.any():
        raise UserError("global optimisation: no fixed tile (name one, or keep the default first view)")
    opt = Optimum(np.repeat(IDENTITY[None], graph.n_tiles, axis=0), graph, np.zeros(graph.n_links, bool))
    models = _round_one(graph, fixed, settings, opt)
    keep = ~opt.removed
    groups = components(graph.n_tiles, graph.link_a[keep], graph.link_b[keep])
    opt.groups = groups
    fixed_groups = np.zeros(int(groups.max()) + 1, bool)
    fixed_groups[groups[fixed]] = True
    floating = np.flatnonzero(~fixed_groups[groups])
    if settings.two_round and floating.size and boxes is not None:
        opt.weak = weak_links(models, groups, boxes, weak_pairs, weak_classes)
        linked = np.zeros(len(fixed_groups), bool)
        linked[opt.weak.link_a] = linked[opt.weak.link_b] = True
        group_models, stats, _ = _solve(opt.weak, fixed_groups, settings, None)
        opt.stats.append(("round 2 (weak links)", stats))
        models = _compose(group_models[groups], models)
        reached = _reached(opt.weak, fixed_groups)
        opt.placed_by_metadata = [int(t) for t in floating if linked[groups[t]] and reached[groups[t]]]
    placed = set(opt.placed_by_metadata)
    opt.unplaced = [int(t) for t in floating if t not in placed]
    opt.models = models
    return opt


def _reached(weak: MatchGraph, fixed_groups: np.ndarray) -> np.ndarray:
    """Whether every group is joined to a fixed group by weak links, bool (n_groups,)."""
    labels = components(weak.n_tiles, weak.link_a, weak.link_b)
    has_fixed = np.zeros(int(labels.max()) + 1 if len(labels) else 0, bool)
    has_fixed[labels[fixed_groups]] = True
    return has_fixed[labels]


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer o inner`` for stacks of 3x4 affines."""
    out = np.empty_like(inner)
    out[:, :, :3] = outer[:, :, :3] @ inner[:, :, :3]
    out[:, :, 3] = np.einsum("nij,nj->ni", outer[:, :, :3], inner[:, :, 3]) + outer[:, :, 3]
    return out
