"""Choosing among a view's peaks: automatic threshold, merging close points, keeping the brightest.

Every function returns the indices of the points kept, **in increasing order**,
so the view's storage order (C order of the initial extremum) is preserved and
the output is the same for any block partition or worker count.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree


def auto_threshold(strength: np.ndarray, target: int, floor: float) -> float:
    """The threshold that keeps about ``target`` points.

    Parameters
    ----------
    strength : numpy.ndarray, shape (N,)
        Per peak, the highest threshold it survives,
        ``min(|refined value|, 3 |initial DoG value|)`` (see
        :func:`rhapso_gpu.detection.blocks.auto_strength`), found at ``floor``.
    target : int
        Wanted number of points.
    floor : float
        The threshold the peaks were found with; the lowest possible answer.

    Returns
    -------
    float
        ``floor`` when there are at most ``target`` peaks, else the
        ``(target + 1)``-th largest strength, so that the ``target`` strongest
        peaks (ties aside) lie above it.
    """
    if len(strength) <= target:
        return float(floor)
    return float(max(floor, np.sort(strength)[::-1][target]))


def combine_close(points_xyz: np.ndarray, strength: np.ndarray, distance: float) -> np.ndarray:
    """Drop points within ``distance`` of a stronger kept point (greedy, strongest first).

    Parameters
    ----------
    points_xyz : numpy.ndarray, shape (N, 3)
        Positions (full-resolution pixels).
    strength : numpy.ndarray, shape (N,)
        Larger is kept first; ties go to the earlier point.
    distance : float
        Points at most this far apart are merged; 0 merges only identical positions.

    Returns
    -------
    numpy.ndarray of int64
        Kept indices, increasing.
    """
    n = len(points_xyz)
    if n < 2:
        return np.arange(n)
    pairs = cKDTree(points_xyz).query_pairs(r=max(float(distance), 1e-9), output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), -np.asarray(strength, dtype=np.float64)))] = np.arange(n)
    # only points in a pair can be dropped: resolve those greedily in rank order
    involved = np.unique(pairs)
    neighbours: dict[int, list[int]] = {int(i): [] for i in involved}
    for a, b in pairs:
        neighbours[int(a)].append(int(b))
        neighbours[int(b)].append(int(a))
    dropped = np.zeros(n, dtype=bool)
    for i in involved[np.argsort(rank[involved], kind="stable")]:
        if dropped[i]:
            continue
        for j in neighbours[int(i)]:
            if rank[j] > rank[i]:
                dropped[j] = True
    return np.flatnonzero(~dropped)


def brightest(intensity: np.ndarray, n: int) -> np.ndarray:
    """Indices (increasing) of the ``n`` highest intensities; ties go to the earlier point."""
    if n <= 0 or len(intensity) <= n:
        return np.arange(len(intensity))
    order = np.lexsort((np.arange(len(intensity)), -np.asarray(intensity, dtype=np.float64)))
    return np.sort(order[:n])


def brightest_per_box(intensity: np.ndarray, box: np.ndarray, box_sizes: np.ndarray, n: int) -> np.ndarray:
    """Keep, in each overlap box, ``round(n * size / largest size)`` brightest points (Spark ``--maxSpotsPerOverlap``).

    Parameters
    ----------
    intensity : numpy.ndarray, shape (N,)
    box : numpy.ndarray of int, shape (N,)
        Box index of each point (its first box).
    box_sizes : numpy.ndarray, shape (K,)
        Voxel count of each box.
    n : int
        Budget of the largest box.
    """
    kept = []
    largest = float(np.max(box_sizes)) if len(box_sizes) else 1.0
    for k, size in enumerate(box_sizes):
        members = np.flatnonzero(box == k)
        limit = round(n * float(size) / largest)
        kept.append(members[brightest(intensity[members], limit)] if limit > 0 else members[:0])
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)
