"""The match graph of a global optimisation: tiles, links and their point matches.

Every match joins a point of tile ``a`` with a point of tile ``b``, both given
in the coordinates the tiles' models act on (for a dataset: **world** xyz under
the views' current registrations, isotropic pixels). A link is the set of
matches between one pair of tiles; links are stored once, ``a < b``.

The solver needs the matches only through the per-link moments of the
homogeneous points ``h = (x, y, z, 1)``::

    S_aa = sum w h_a h_a^T,   S_bb = sum w h_b h_b^T,   S_ab = sum w h_a h_b^T   (4x4 each)

since ``sum w |M_a h_a - M_b h_b|^2`` of any affines ``M`` (3x4) is a quadratic
form in them. So a solve costs O(links), and the matches are read again only
for the per-link residuals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class MatchGraph:
    """Point matches between tiles, grouped by link.

    Attributes
    ----------
    n_tiles : int
    link_a, link_b : ndarray of int64 (L,)
        Tiles of each link, ``link_a < link_b``.
    offsets : ndarray of int64 (L + 1,)
        Matches of link ``l`` are rows ``offsets[l]:offsets[l + 1]``.
    points_a, points_b : ndarray of float64 (M, 3)
        Matched points (xyz) of tile ``a`` and tile ``b``.
    weights : ndarray of float64 (M,)
        Match weights.
    weak : ndarray of bool (L,)
        Links made from metadata overlaps (two-round method), not from matches.
    observations : ndarray of float64 (L,)
        Independent scalar observations of each link, for statistics such as
        ``select_model``'s F-test: 3 per match (default), but 3 for a link that
        repeats one measured 3-D shift at several points (stitching links).
    """

    n_tiles: int
    link_a: np.ndarray
    link_b: np.ndarray
    offsets: np.ndarray
    points_a: np.ndarray
    points_b: np.ndarray
    weights: np.ndarray
    weak: np.ndarray = field(default=None)
    observations: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.weak is None:
            self.weak = np.zeros(len(self.link_a), bool)
        if self.observations is None:
            self.observations = 3.0 * np.diff(self.offsets)

    @classmethod
    def from_links(cls, n_tiles: int, links: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]],
                   weak: list[bool] | None = None, observations: list[float] | None = None) -> MatchGraph:
        """Build from ``(tile_a, tile_b, points_a (n,3), points_b (n,3), weights (n,))`` per link.

        Links with ``tile_a > tile_b`` are flipped; empty links are dropped; links
        of the same pair are merged (order of first appearance; their
        ``observations``, default ``3 n`` each, add up).
        """
        merged: dict[tuple[int, int], list] = {}
        for i, (a, b, pa, pb, w) in enumerate(links):
            pa, pb = np.asarray(pa, np.float64).reshape(-1, 3), np.asarray(pb, np.float64).reshape(-1, 3)
            w = np.broadcast_to(np.asarray(w, np.float64), (len(pa),))
            if len(pa) == 0 or a == b:
                continue
            if a > b:
                a, b, pa, pb = b, a, pb, pa
            entry = merged.setdefault((int(a), int(b)), [[], [], [], bool(weak[i]) if weak else False, 0.0])
            entry[0].append(pa)
            entry[1].append(pb)
            entry[2].append(w)
            entry[4] += float(observations[i]) if observations is not None else 3.0 * len(pa)
        keys = sorted(merged)
        counts = [sum(len(p) for p in merged[k][0]) for k in keys]
        cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape))
        return cls(
            n_tiles=int(n_tiles),
            link_a=np.array([k[0] for k in keys], np.int64),
            link_b=np.array([k[1] for k in keys], np.int64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            points_a=cat([p for k in keys for p in merged[k][0]], (0, 3)),
            points_b=cat([p for k in keys for p in merged[k][1]], (0, 3)),
            weights=cat([w for k in keys for w in merged[k][2]], (0,)),
            weak=np.array([merged[k][3] for k in keys], bool),
            observations=np.array([merged[k][4] for k in keys], np.float64),
        )

    @property
    def n_links(self) -> int:
        return len(self.link_a)

    @property
    def match_link(self) -> np.ndarray:
        """Link index of every match, (M,)."""
        return np.repeat(np.arange(self.n_links), np.diff(self.offsets))

    def merge_tiles(self, tile_of: np.ndarray, n_tiles: int) -> MatchGraph:
        """The graph of groups of tiles: tile ``t`` becomes ``tile_of[t]``; matches within a group are dropped."""
        tile_of = np.asarray(tile_of, np.int64)
        links = [(tile_of[a], tile_of[b], self.points_a[lo:hi], self.points_b[lo:hi], self.weights[lo:hi])
                 for a, b, lo, hi in zip(self.link_a, self.link_b, self.offsets[:-1], self.offsets[1:], strict=True)]
        return MatchGraph.from_links(n_tiles, links, weak=list(self.weak), observations=list(self.observations))

    def subset(self, keep: np.ndarray) -> MatchGraph:
        """The graph with only the links where ``keep`` (bool (L,)) is true."""
        keep = np.asarray(keep, bool)
        rows = np.repeat(keep, np.diff(self.offsets))
        counts = np.diff(self.offsets)[keep]
        return MatchGraph(
            self.n_tiles, self.link_a[keep], self.link_b[keep],
            np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            self.points_a[rows], self.points_b[rows], self.weights[rows], self.weak[keep], self.observations[keep],
        )


@dataclass
class LinkMoments:
    """Weighted second moments of the homogeneous matched points of every link.

    Attributes
    ----------
    s_aa, s_bb, s_ab : ndarray of float64 (L, 4, 4)
        ``sum w h_a h_a^T``, ``sum w h_b h_b^T``, ``sum w h_a h_b^T``.
    """

    s_aa: np.ndarray
    s_bb: np.ndarray
    s_ab: np.ndarray

    def subset(self, keep: np.ndarray) -> LinkMoments:
        """The moments of the links where ``keep`` (bool (L,)) is true, as of ``MatchGraph.subset(keep)``."""
        return LinkMoments(self.s_aa[keep], self.s_bb[keep], self.s_ab[keep])


def link_moments(graph: MatchGraph, chunk: int = 1 << 18) -> LinkMoments:
    """Per-link moments, accumulated in chunks of matches so memory stays O(chunk + links)."""
    n_links = graph.n_links
    out = [np.zeros((n_links, 4, 4)) for _ in range(3)]
    link = graph.match_link
    for start in range(0, len(graph.weights), chunk):
        sl = slice(start, start + chunk)
        w = graph.weights[sl]
        ha = np.concatenate([graph.points_a[sl], np.ones((len(w), 1))], axis=1)
        hb = np.concatenate([graph.points_b[sl], np.ones((len(w), 1))], axis=1)
        for acc, (x, y) in zip(out, ((ha, ha), (hb, hb), (ha, hb)), strict=True):
            prod = (w[:, None, None] * x[:, :, None] * y[:, None, :]).reshape(len(w), 16)
            for k in range(16):
                acc.reshape(n_links, 16)[:, k] += np.bincount(link[sl], prod[:, k], minlength=n_links)
    return LinkMoments(*out)


def match_distances(graph: MatchGraph, models: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Distance ``|M_a p_a - M_b p_b|`` of every match under tile models ``(n_tiles, 3, 4)``, (M,)."""
    link = graph.match_link
    out = np.empty(len(graph.weights))
    for start in range(0, len(out), chunk):
        sl = slice(start, start + chunk)
        ma, mb = models[graph.link_a[link[sl]]], models[graph.link_b[link[sl]]]
        ya = np.einsum("nij,nj->ni", ma[:, :, :3], graph.points_a[sl]) + ma[:, :, 3]
        yb = np.einsum("nij,nj->ni", mb[:, :, :3], graph.points_b[sl]) + mb[:, :, 3]
        out[sl] = np.linalg.norm(ya - yb, axis=1)
    return out
