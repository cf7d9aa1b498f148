"""k-nearest-neighbour search: SciPy's KD-tree on the CPU, batched brute force on the GPU.

Both paths return the same neighbours (up to exact distance ties): the
brute-force search computes every squared distance in blocks of queries,
as array operations of the backend's array module.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
from scipy.spatial import cKDTree

_BLOCK_ELEMENTS = 1 << 24
"""Squared distances held at once by the brute-force search (128 MiB of float64)."""


def knn_bruteforce(data, queries, k: int, xp: ModuleType = np):
    """The ``k`` nearest rows of ``data`` for each row of ``queries``, by exhaustive search.

    Parameters
    ----------
    data : array (n, d)
    queries : array (m, d)
    k : int
        Neighbours per query; at most ``n``.
    xp : module
        Array module (``numpy`` or ``cupy``) of ``data`` and ``queries``.

    Returns
    -------
    dist2 : array (m, k)
        Squared Euclidean distances, ascending.
    index : array (m, k) of int64
        Row indices into ``data``.
    """
    data = xp.asarray(data, dtype=xp.float64)
    queries = xp.asarray(queries, dtype=xp.float64)
    n, m = data.shape[0], queries.shape[0]
    if k > n:
        raise ValueError(f"k={k} neighbours requested from {n} points")
    dist2 = xp.empty((m, k), dtype=xp.float64)
    index = xp.empty((m, k), dtype=xp.int64)
    step = max(1, _BLOCK_ELEMENTS // max(n, 1))
    for start in range(0, m, step):
        q = queries[start : start + step]
        # exact differences rather than |a|^2 + |b|^2 - 2ab, so that distances match the KD-tree's;
        # accumulated per coordinate, so the block holds (step, n) values, never (step, n, d)
        d2 = xp.zeros((q.shape[0], n), dtype=xp.float64)
        for j in range(data.shape[1]):
            d2 += (q[:, None, j] - data[None, :, j]) ** 2
        part = xp.argpartition(d2, k - 1, axis=1)[:, :k] if k < n else xp.broadcast_to(xp.arange(n), d2.shape)
        pd = xp.take_along_axis(d2, part, axis=1)
        order = xp.argsort(pd, axis=1, kind="stable")
        index[start : start + step] = xp.take_along_axis(part, order, axis=1)
        dist2[start : start + step] = xp.take_along_axis(pd, order, axis=1)
    return dist2, index


def knn(data, queries, k: int, xp: ModuleType = np):
    """The ``k`` nearest rows of ``data`` for each row of ``queries``: KD-tree on NumPy, brute force otherwise.

    Returns ``(dist2, index)`` as :func:`knn_bruteforce`.
    """
    if xp is not np:
        return knn_bruteforce(data, queries, k, xp)
    data = np.asarray(data, dtype=np.float64)
    if k > data.shape[0]:
        raise ValueError(f"k={k} neighbours requested from {data.shape[0]} points")
    dist, index = cKDTree(data).query(np.asarray(queries, dtype=np.float64), k=k)
    dist, index = dist.reshape(-1, k), index.reshape(-1, k)
    return dist**2, index.astype(np.int64)
