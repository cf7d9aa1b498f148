"""The passes of the ``gauss3`` CPU twin, compiled by numba (contract: :mod:`cpu_fallback.gauss3`).

Imported on first use, so ``import cpu_fallback`` does not pay for numba.
"""

from __future__ import annotations

from numba import njit

from cpu_fallback._numba_util import mirror_index as _mirror


@njit(cache=True, nogil=True)
def _along_z(src, h, dst):
    nz, ny, nx = src.shape
    r = h.shape[0] - 1
    for z in range(nz):
        o = dst[z]
        c = src[z]
        for y in range(ny):
            for i in range(nx):
                o[y, i] = h[0] * c[y, i]
        for k in range(1, r + 1):
            a = src[_mirror(z - k, nz)]
            b = src[_mirror(z + k, nz)]
            w = h[k]
            for y in range(ny):
                for i in range(nx):
                    o[y, i] += w * (a[y, i] + b[y, i])


@njit(cache=True, nogil=True)
def _along_y(src, h, dst):
    nz, ny, nx = src.shape
    r = h.shape[0] - 1
    for z in range(nz):
        for y in range(ny):
            c = src[z, y]
            o = dst[z, y]
            for i in range(nx):
                o[i] = h[0] * c[i]
            for k in range(1, r + 1):
                a = src[z, _mirror(y - k, ny)]
                b = src[z, _mirror(y + k, ny)]
                w = h[k]
                for i in range(nx):
                    o[i] += w * (a[i] + b[i])


@njit(cache=True, nogil=True)
def _along_x(src, h, dst):
    nz, ny, nx = src.shape
    r = h.shape[0] - 1
    lo = min(r, nx)  # columns [lo, hi) have every tap inside the row
    hi = max(nx - r, lo)
    for z in range(nz):
        for y in range(ny):
            c = src[z, y]
            o = dst[z, y]
            inner = o[lo:hi]
            centre = c[lo:hi]
            for i in range(hi - lo):
                inner[i] = h[0] * centre[i]
            for k in range(1, r + 1):
                w = h[k]
                left = c[lo - k : hi - k]  # non-negative indices below: the loop vectorises
                right = c[lo + k : hi + k]
                for i in range(hi - lo):
                    inner[i] += w * (left[i] + right[i])
            for j in range(lo + nx - hi):  # the mirrored ends, same order of taps
                i = j if j < lo else hi + j - lo
                acc = h[0] * c[i]
                for k in range(1, r + 1):
                    acc += h[k] * (c[_mirror(i - k, nx)] + c[_mirror(i + k, nx)])
                o[i] = acc
