"""Grouping views for matching: pooled point sets, merging of duplicates, splitting matches back per view.

BigStitcher's ``--groupTiles/--groupIllums/--groupChannels``: views that
differ only in the grouped attributes are matched as one virtual view. Their
world points are pooled and merged with ``InterestPointGroupingMinDistance``
(a point kept in a deterministic shuffled walk suppresses the points of the
group's *other* views within the merge radius), the groups are matched with
each other, and every match is split back to the pair of original views and
point ids it links. Which views form a group is the io floor's rule
(:func:`rhapso_gpu.io.grouping.view_groups`, shared with the solver).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from rhapso_gpu.io.correspondences import PairCorrespondences
from rhapso_gpu.io.grouping import GROUPABLE, Group, view_groups  # noqa: F401  (re-exported)

MERGE_SEED = 234
"""Seed of the shuffle before merging (BigStitcher's ``new Random(234)``; the permutation itself differs)."""


@dataclass
class PointSet:
    """Interest points of one label of a view or of a group of views, in world coordinates.

    Attributes
    ----------
    views : tuple of ViewId
        The views the points come from (one unless grouped), sorted.
    label : str
    origin : ndarray of int64 (N,)
        Per point: its view, as an index into ``views``.
    ids : ndarray of uint64 (N,)
        Per point: its id in its view and label, as stored.
    world_xyz : ndarray of float64 (N, 3)
        Positions in world coordinates (xyz) under the current registrations.
    """

    views: Group
    label: str
    origin: np.ndarray
    ids: np.ndarray
    world_xyz: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def merge_mask(world_xyz: np.ndarray, origin: np.ndarray, radius: float, seed: int = MERGE_SEED) -> np.ndarray:
    """Points kept when merging a group's pooled points (``InterestPointGroupingMinDistance``).

    The points are walked in a shuffled order; a point that is still kept when
    reached removes every point of another view within ``radius``. Points of
    the same view never remove each other. Equivalent to that sequential walk,
    computed in rounds over the cross-view neighbour pairs: a point is kept
    once every earlier neighbour is removed, and removed once an earlier
    neighbour is kept.

    Parameters
    ----------
    world_xyz : ndarray (N, 3)
        Pooled world coordinates (xyz).
    origin : ndarray of int (N,)
        View of each point.
    radius : float
        Merge distance, world units (inclusive); 0 keeps every point.
    seed : int
        Seed of the walk order.

    Returns
    -------
    ndarray of bool (N,)
    """
    n = len(world_xyz)
    if n < 2 or radius <= 0:
        return np.ones(n, bool)
    rank = np.empty(n, np.int64)
    rank[np.random.default_rng(seed).permutation(n)] = np.arange(n)
    pairs = cKDTree(world_xyz).query_pairs(radius, output_type="ndarray")
    pairs = pairs[origin[pairs[:, 0]] != origin[pairs[:, 1]]]
    swap = rank[pairs[:, 0]] > rank[pairs[:, 1]]
    early = np.where(swap, pairs[:, 1], pairs[:, 0])
    late = np.where(swap, pairs[:, 0], pairs[:, 1])
    state = np.zeros(n, np.int8)  # 0 undecided, 1 kept, -1 removed
    state[np.setdiff1d(np.arange(n), late)] = 1  # no earlier neighbour
    while True:
        state[late[(state[early] == 1) & (state[late] == 0)]] = -1
        undecided = state == 0
        if not undecided.any():
            return state == 1
        blocked = np.zeros(n, bool)
        blocked[late[state[early] == 0]] = True
        state[undecided & ~blocked] = 1


def pool(sets: list[PointSet], merge_distance: float) -> PointSet:
    """One point set of a group: the views' points pooled, then merged (see :func:`merge_mask`).

    Parameters
    ----------
    sets : list of PointSet
        One single-view set per view of the group, same label.
    merge_distance : float
        Merge radius, world units.
    """
    if len(sets) == 1:
        return sets[0]
    origin = np.concatenate([np.full(len(s), i, np.int64) for i, s in enumerate(sets)])
    ids = np.concatenate([s.ids for s in sets])
    xyz = np.concatenate([s.world_xyz for s in sets]).reshape(-1, 3)
    keep = merge_mask(xyz, origin, merge_distance)
    views = tuple(s.views[0] for s in sets)
    return PointSet(views, sets[0].label, origin[keep], ids[keep], xyz[keep])


def split_matches(
    a: PointSet, b: PointSet, rows_a: np.ndarray, rows_b: np.ndarray, min_matches: int
) -> list[PairCorrespondences]:
    """Split matched rows of two point sets into correspondences per pair of original views.

    Parameters
    ----------
    a, b : PointSet
    rows_a, rows_b : ndarray of int
        Matched rows of ``a`` and ``b`` (row ``i`` of each forms one match).
    min_matches : int
        A pair of views with fewer matches is dropped (BigStitcher: the model's minimum).

    Returns
    -------
    list of PairCorrespondences
        Original point ids, one entry per pair of views, in (view of A, view of B) order.
    """
    va, vb = a.origin[rows_a], b.origin[rows_b]
    pairs, inverse, counts = np.unique(np.stack([va, vb], axis=1), axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    out = []
    for k in np.flatnonzero(counts >= min_matches):
        sel = inverse == k
        ia, ib = pairs[k]
        out.append(
            PairCorrespondences((a.views[ia], a.label), (b.views[ib], b.label), a.ids[rows_a[sel]], b.ids[rows_b[sel]])
        )
    return out
