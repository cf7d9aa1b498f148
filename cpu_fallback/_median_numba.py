"""The passes of the ``sampled_median`` CPU twin, compiled by numba (contract: :mod:`cpu_fallback.median`).

Imported on first use, so ``import cpu_fallback`` does not pay for numba.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cpu_fallback._numba_util import mirror_index as _mirror


@njit(cache=True, inline="always", nogil=True)
def _median(buf, m):
    # insertion sort of m <= 7 values; the middle one (m is odd)
    for i in range(1, m):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    return buf[m // 2]


@njit(cache=True, inline="always", nogil=True)
def _median7(p0, p1, p2, p3, p4, p5, p6):
    # Devillard's opt_med7 exchange network, branch-free (min/max): the 4th smallest of 7
    p0, p5 = min(p0, p5), max(p0, p5)
    p0, p3 = min(p0, p3), max(p0, p3)
    p1, p6 = min(p1, p6), max(p1, p6)
    p2, p4 = min(p2, p4), max(p2, p4)
    p0, p1 = min(p0, p1), max(p0, p1)
    p3, p5 = min(p3, p5), max(p3, p5)
    p2, p6 = min(p2, p6), max(p2, p6)
    p2, p3 = min(p2, p3), max(p2, p3)
    p3, p6 = min(p3, p6), max(p3, p6)
    p4, p5 = min(p4, p5), max(p4, p5)
    p1, p4 = min(p1, p4), max(p1, p4)
    p1, p3 = min(p1, p3), max(p1, p3)
    p3, p4 = min(p3, p4), max(p3, p4)
    return p3


@njit(cache=True, inline="always", nogil=True)
def _median5(p0, p1, p2, p3, p4):
    # Devillard's opt_med5 exchange network
    p0, p1 = min(p0, p1), max(p0, p1)
    p3, p4 = min(p3, p4), max(p3, p4)
    p0, p3 = min(p0, p3), max(p0, p3)
    p1, p4 = min(p1, p4), max(p1, p4)
    p1, p2 = min(p1, p2), max(p1, p2)
    p2, p3 = min(p2, p3), max(p2, p3)
    p1, p2 = min(p1, p2), max(p1, p2)
    return p2


@njit(cache=True, nogil=True)
def _median_lines(lines, out):
    """``out[i]`` = median over k of ``lines[k, i]`` (an odd number of lines, at most 7)."""
    m, n = lines.shape
    if m == 7:
        for i in range(n):
            out[i] = _median7(lines[0, i], lines[1, i], lines[2, i], lines[3, i], lines[4, i], lines[5, i],
                              lines[6, i])
        return
    if m == 5:
        for i in range(n):
            out[i] = _median5(lines[0, i], lines[1, i], lines[2, i], lines[3, i], lines[4, i])
        return
    if m == 3:
        for i in range(n):
            a, b, c = lines[0, i], lines[1, i], lines[2, i]
            out[i] = max(min(a, b), min(max(a, b), c))
        return
    buf = np.empty(m, np.float32)
    for i in range(n):
        for k in range(m):
            buf[k] = lines[k, i]
        out[i] = _median(buf, m)


@njit(cache=True, nogil=True)
def _along_x(src, offsets, dst):
    nz, ny, nx = src.shape
    m = offsets.shape[0]
    r = max(abs(offsets[0]), abs(offsets[m - 1]))
    line = np.empty(nx + 2 * r, np.float32)
    lines = np.empty((m, nx), np.float32)
    for z in range(nz):
        for y in range(ny):
            row = src[z, y]
            for i in range(nx + 2 * r):
                line[i] = row[_mirror(i - r, nx)]
            for k in range(m):
                shifted = line[r + offsets[k] : r + offsets[k] + nx]
                target = lines[k]
                for i in range(nx):
                    target[i] = shifted[i]
            _median_lines(lines, dst[z, y])


@njit(cache=True, nogil=True)
def _along_y(src, offsets, dst):
    nz, ny, nx = src.shape
    m = offsets.shape[0]
    lines = np.empty((m, nx), np.float32)
    for z in range(nz):
        plane = src[z]
        for y in range(ny):
            for k in range(m):
                source = plane[_mirror(y + offsets[k], ny)]
                target = lines[k]
                for i in range(nx):
                    target[i] = source[i]
            _median_lines(lines, dst[z, y])
