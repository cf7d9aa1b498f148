"""The per-voxel loop of the ``fuse_block`` twin, compiled by numba.

Line for line the arithmetic of ``rhapso_gpu/backend/kernels/fuse_block.cu``
(contract in :mod:`cpu_fallback.fusion`), in float32 with the same order of
operations, one voxel after another in one thread; the loop releases the GIL,
so the ``threads`` scheduler fuses blocks in parallel. Imported on first use,
so ``import cpu_fallback`` does not pay for numba; compiled functions are
cached on disk (``cache=True``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_OUTSIDE = np.float32(-1.0)  # axis weight meaning "outside the support"


@njit(cache=True, inline="always")
def _blend_fn(t, lut):
    steps = lut.shape[0] - 1
    u = t * np.float32(steps)
    k = math.floor(u)
    k = 0 if k < 0 else (min(k, steps - 1))
    lo = lut[k]
    return lo + (u - np.float32(k)) * (lut[k + 1] - lo)


@njit(cache=True, inline="always")
def _axis_weight(p, lo, hi, blend, lut):
    if not (p >= lo and p <= hi):
        return _OUTSIDE
    if blend > _F0:
        d = min(p - lo, hi - p)
        if d >= blend:
            return _F1
        return _blend_fn(min(max(d / blend, _F0), _F1), lut)
    return _F1


@njit(cache=True, inline="always")
def _trilinear(data, offset, nx, ny, nz, x, y, z):
    x = min(max(x, _F0), np.float32(nx - 1))
    y = min(max(y, _F0), np.float32(ny - 1))
    z = min(max(z, _F0), np.float32(nz - 1))
    x0, y0, z0 = int(x), int(y), int(z)  # truncation = floor: the positions are clamped to >= 0
    x1 = x0 + 1 if x0 + 1 < nx else x0
    y1 = y0 + 1 if y0 + 1 < ny else y0
    z1 = z0 + 1 if z0 + 1 < nz else z0
    fx, fy, fz = x - np.float32(x0), y - np.float32(y0), z - np.float32(z0)
    p00 = offset + (z0 * ny + y0) * nx
    p01 = offset + (z0 * ny + y1) * nx
    p10 = offset + (z1 * ny + y0) * nx
    p11 = offset + (z1 * ny + y1) * nx
    c00 = data[p00 + x0] + fx * (data[p00 + x1] - data[p00 + x0])
    c01 = data[p01 + x0] + fx * (data[p01 + x1] - data[p01 + x0])
    c10 = data[p10 + x0] + fx * (data[p10 + x1] - data[p10 + x0])
    c11 = data[p11 + x0] + fx * (data[p11 + x1] - data[p11 + x0])
    c0 = c00 + fy * (c01 - c00)
    c1 = c10 + fy * (c11 - c10)
    return c0 + fz * (c1 - c0)


@njit(cache=True, nogil=True, boundscheck=False)
def fuse_voxels(data, layout, geometry, lut, out, n_views, fusion):
    """Fill ``out`` (float32, z, y, x); arguments as the kernel's (see ``fuse_block.cu``).

    The products ``a1*y`` and ``a2*z`` are taken once per row; the sums keep the
    kernel's order, so every position is bit-identical to the kernel's.
    """
    oz, oy, ox = out.shape
    row = np.empty((max(n_views, 1), 6), dtype=np.float32)  # per view: a1*y, a2*z for the three axes
    for zi in range(oz):
        z = np.float32(zi)
        for yi in range(oy):
            y = np.float32(yi)
            for v in range(n_views):
                for d in range(3):
                    row[v, 2 * d] = geometry[v, 4 * d + 1] * y
                    row[v, 2 * d + 1] = geometry[v, 4 * d + 2] * z
            for xi in range(ox):
                x = np.float32(xi)
                acc, norm, best_w = _F0, _F0, _F0
                taken = False
                for k in range(n_views):
                    v = n_views - 1 - k if fusion == 4 else k  # highest-view-wins walks the views backwards
                    px = ((geometry[v, 0] * x + row[v, 0]) + row[v, 1]) + geometry[v, 3]
                    wx = _axis_weight(px, geometry[v, 12], geometry[v, 15], geometry[v, 18], lut)
                    if wx < _F0:
                        continue
                    py = ((geometry[v, 4] * x + row[v, 2]) + row[v, 3]) + geometry[v, 7]
                    wy = _axis_weight(py, geometry[v, 13], geometry[v, 16], geometry[v, 19], lut)
                    if wy < _F0:
                        continue
                    pz = ((geometry[v, 8] * x + row[v, 4]) + row[v, 5]) + geometry[v, 11]
                    wz = _axis_weight(pz, geometry[v, 14], geometry[v, 17], geometry[v, 20], lut)
                    if wz < _F0:
                        continue
                    w = (wx * wy) * wz
                    if fusion == 5 and not (w > best_w):
                        continue
                    value = _trilinear(data, layout[v, 0], layout[v, 1], layout[v, 2], layout[v, 3], px, py, pz)
                    if fusion == 0:
                        acc += value
                        norm += _F1
                    elif fusion == 1:
                        acc += w * value
                        norm += w
                    elif fusion == 2:
                        acc = max(acc, value) if taken else value
                        taken = True
                    elif fusion == 5:
                        acc = value
                        best_w = w
                    else:  # 3, 4: the first covering view in walking order wins
                        acc = value
                        break
                if fusion <= 1:
                    acc = acc / norm if norm > _F0 else _F0
                out[zi, yi, xi] = acc
