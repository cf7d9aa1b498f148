"""Small numba helpers shared by the compiled CPU twins."""

from __future__ import annotations

from numba import njit


@njit(cache=True, inline="always", nogil=True)
def mirror_index(i, n):
    """Index ``i`` reflected into ``[0, n)`` with the edge sample repeated (mirror-double, as ``scipy``'s 'reflect')."""
    if 0 <= i < n:
        return i
    if -n <= i < 0:
        return -i - 1
    if n <= i < 2 * n:
        return 2 * n - 1 - i
    period = 2 * n
    i = i % period
    if i < 0:
        i += period
    return i if i < n else period - 1 - i
