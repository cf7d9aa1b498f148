"""The per-voxel work of the ``fuse_block`` twin, compiled by numba.

The arithmetic of ``rhapso_gpu/backend/kernels/fuse_block.cu`` (contract in
:mod:`cpu_fallback.fusion`), in float32 with the same order of operations, so
every position, weight and interpolated value is bit-identical to the
kernel's. Only the loop order differs: for each output row (z, y) and each
view, :func:`_sample_row` computes the view's value and weight for the whole
row, branch-free, so LLVM vectorises it (gathers for the trilinear and
blending-table reads); :func:`fuse_voxels` then combines the views per voxel
in ViewId order, as the kernel's inner loop does. One thread; the loops
release the GIL, so the ``threads`` scheduler fuses blocks in parallel.
Imported on first use, so ``import cpu_fallback`` does not pay for numba;
compiled functions are cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.core.compiler import Compiler

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_OUTSIDE = np.float32(-1.0)  # weight meaning "the view does not cover this voxel"
_U1 = np.uint64(1)


class _NoAliasCompiler(Compiler):
    """numba's standard pipeline, with LLVM ``noalias`` on the array arguments.

    Without it LLVM cannot prove that the gathers from the regions do not
    read the row buffers being written, and leaves the row loop scalar (about
    4x slower). Callers of functions compiled this way must pass arrays that
    do not overlap.
    """

    def define_pipelines(self):
        if hasattr(self.state.flags, "noalias"):  # a numba without the flag still compiles, unvectorised
            self.state.flags.noalias = True
        return super().define_pipelines()


@njit(cache=True, nogil=True, boundscheck=False, error_model="numpy", pipeline_class=_NoAliasCompiler)
def _sample_row(data, offset, nx, ny, nz, g, lut, y, z, value, weight):
    """One view along one output row: ``value[x]`` and ``weight[x]`` for x = 0 .. len(value) - 1.

    Parameters
    ----------
    data : numpy.ndarray
        All regions, concatenated (any real dtype; read as float32).
    offset, nx, ny, nz : numpy.uint64
        Start of the view's region in ``data`` and its size (x, y, z).
    g : numpy.ndarray, shape (21,), float32
        The view's row of :attr:`cpu_fallback.fusion.FusionBlockPlan.geometry`.
    lut : numpy.ndarray
        :data:`cpu_fallback.fusion.BLEND_LUT`.
    y, z : numpy.float32
        Block-local output row (y, z).
    value, weight : numpy.ndarray, float32
        Filled: the trilinear value (border-extended) and the blending weight
        ``(wx * wy) * wz`` in [0, 1], or -1 where the view does not cover the voxel.
    """
    last = np.float32(lut.shape[0] - 2)
    steps = np.float32(lut.shape[0] - 1)
    a0, a3, a4, a7, a8, a11 = g[0], g[3], g[4], g[7], g[8], g[11]
    rx1, rx2 = g[1] * y, g[2] * z
    ry1, ry2 = g[5] * y, g[6] * z
    rz1, rz2 = g[9] * y, g[10] * z
    lx, ly, lz, hx, hy, hz = g[12], g[13], g[14], g[15], g[16], g[17]
    bx, by, bz = g[18], g[19], g[20]
    sx = bx if bx > _F0 else _F1  # divisors that are never 0; the ramp is only used where d < blend
    sy = by if by > _F0 else _F1
    sz = bz if bz > _F0 else _F1
    fnx, fny, fnz = np.float32(nx - _U1), np.float32(ny - _U1), np.float32(nz - _U1)
    for xi in range(value.shape[0]):
        x = np.float32(xi)
        px = ((a0 * x + rx1) + rx2) + a3
        py = ((a4 * x + ry1) + ry2) + a7
        pz = ((a8 * x + rz1) + rz2) + a11
        inside = (px >= lx) & (px <= hx) & (py >= ly) & (py <= hy) & (pz >= lz) & (pz <= hz)
        # per axis: d = distance to the nearer support edge; fn(clamp(d / blend)) from the table when d < blend
        d = min(px - lx, hx - px)
        u = min(max(d / sx, _F0), _F1) * steps
        k = np.uint64(min(u, last))  # = clamp(floor(u), 0, steps - 1) for u in [0, steps]
        t0 = lut[k]
        wx = t0 + (u - np.float32(k)) * (lut[k + _U1] - t0) if d < bx else _F1
        d = min(py - ly, hy - py)
        u = min(max(d / sy, _F0), _F1) * steps
        k = np.uint64(min(u, last))
        t0 = lut[k]
        wy = t0 + (u - np.float32(k)) * (lut[k + _U1] - t0) if d < by else _F1
        d = min(pz - lz, hz - pz)
        u = min(max(d / sz, _F0), _F1) * steps
        k = np.uint64(min(u, last))
        t0 = lut[k]
        wz = t0 + (u - np.float32(k)) * (lut[k + _U1] - t0) if d < bz else _F1
        # trilinear, positions clamped to the region (border extension); truncation = floor for >= 0
        cx, cy, cz = min(max(px, _F0), fnx), min(max(py, _F0), fny), min(max(pz, _F0), fnz)
        x0, y0, z0 = np.uint64(cx), np.uint64(cy), np.uint64(cz)
        x1, y1, z1 = min(x0 + _U1, nx - _U1), min(y0 + _U1, ny - _U1), min(z0 + _U1, nz - _U1)
        fx, fy, fz = cx - np.float32(x0), cy - np.float32(y0), cz - np.float32(z0)
        p00 = offset + (z0 * ny + y0) * nx
        p01 = offset + (z0 * ny + y1) * nx
        p10 = offset + (z1 * ny + y0) * nx
        p11 = offset + (z1 * ny + y1) * nx
        v000, v001 = np.float32(data[p00 + x0]), np.float32(data[p00 + x1])
        v010, v011 = np.float32(data[p01 + x0]), np.float32(data[p01 + x1])
        v100, v101 = np.float32(data[p10 + x0]), np.float32(data[p10 + x1])
        v110, v111 = np.float32(data[p11 + x0]), np.float32(data[p11 + x1])
        c00 = v000 + fx * (v001 - v000)
        c01 = v010 + fx * (v011 - v010)
        c10 = v100 + fx * (v101 - v100)
        c11 = v110 + fx * (v111 - v110)
        c0 = c00 + fy * (c01 - c00)
        c1 = c10 + fy * (c11 - c10)
        value[xi] = c0 + fz * (c1 - c0)
        weight[xi] = (wx * wy) * wz if inside else _OUTSIDE


@njit(cache=True, nogil=True, boundscheck=False)
def _row_missed(g, y, z, x_last):
    """True when the view covers no voxel of the row: positions are monotone in x, so the ends bound them."""
    x = np.float32(x_last)
    for d in range(3):
        r1, r2 = g[4 * d + 1] * y, g[4 * d + 2] * z
        p_first = ((g[4 * d] * _F0 + r1) + r2) + g[4 * d + 3]
        p_last = ((g[4 * d] * x + r1) + r2) + g[4 * d + 3]
        if max(p_first, p_last) < g[12 + d] or min(p_first, p_last) > g[15 + d]:
            return True
    return False


@njit(cache=True, nogil=True, boundscheck=False)
def fuse_voxels(data, layout, geometry, lut, out, n_views, fusion):
    """Fill ``out`` (float32, z, y, x); arguments as the kernel's (see ``fuse_block.cu``).

    ``data`` may hold any real dtype (the values are read as float32, as the
    kernel's float32 copy of them). Views are combined per voxel in ViewId
    order (``highest-view-wins`` keeps the last covering view, which is the
    kernel's first in its backward walk).
    """
    oz, oy, ox = out.shape
    acc = np.zeros(ox, dtype=np.float32)
    norm = np.zeros(ox, dtype=np.float32)  # avg, avg-blend: sum of weights; others: 1 once a view was taken
    value = np.empty(ox, dtype=np.float32)
    weight = np.empty(ox, dtype=np.float32)
    sizes = layout.astype(np.uint64)
    for zi in range(oz):
        z = np.float32(zi)
        for yi in range(oy):
            y = np.float32(yi)
            acc[:] = _F0
            norm[:] = _F0
            for v in range(n_views):
                g = geometry[v]
                if _row_missed(g, y, z, ox - 1):
                    continue
                _sample_row(data, sizes[v, 0], sizes[v, 1], sizes[v, 2], sizes[v, 3], g, lut, y, z, value, weight)
                for xi in range(ox):
                    w = weight[xi]
                    if w < _F0:
                        continue
                    if fusion == 0:
                        acc[xi] += value[xi]
                        norm[xi] += _F1
                    elif fusion == 1:
                        acc[xi] += w * value[xi]
                        norm[xi] += w
                    elif fusion == 2:
                        acc[xi] = max(acc[xi], value[xi]) if norm[xi] > _F0 else value[xi]
                        norm[xi] = _F1
                    elif fusion == 3:
                        if norm[xi] == _F0:
                            acc[xi] = value[xi]
                            norm[xi] = _F1
                    elif fusion == 4:
                        acc[xi] = value[xi]
                    elif w > norm[xi]:  # 5: the largest weight > 0 wins, the first on ties
                        acc[xi] = value[xi]
                        norm[xi] = w
            for xi in range(ox):
                if fusion <= 1:
                    out[zi, yi, xi] = acc[xi] / norm[xi] if norm[xi] > _F0 else _F0
                else:
                    out[zi, yi, xi] = acc[xi]
