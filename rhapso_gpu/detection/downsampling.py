"""Which pyramid level to read, the remaining 2x steps, and the exact way back to full resolution.

BigStitcher (``DownsampleTools.openAndDownsample``) reads the coarsest
existing level whose factors are not coarser than the request
``(dsxy, dsxy, dsz)`` and makes up the rest with 2x steps of the kernel
``[0.25, 0.5, 0.25]`` centred on input voxel ``2 i`` (output size
``floor(n / 2)``; at ``i = 0`` the missing left neighbour is dropped and the
weights renormalised: ``(v0 + 0.5 v1) / 1.5``).

Coordinates: downsampled voxel ``p`` (xyz) is level voxel ``2^steps * p``
(a pure scale, no shift), and level voxel ``q`` is full-resolution voxel
``f q + (f - 1) / 2`` (the mipmap transform). :attr:`DownsamplePlan.to_full_res_xyz`
is their product.

Everything works on regions so that blocks compute exactly what a whole-view
pass would: :func:`level_range` says which level voxels a downsampled range
needs, :func:`downsample_region` computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError


@dataclass(frozen=True)
class DownsamplePlan:
    """How one view is brought to the requested downsampling.

    Attributes
    ----------
    level : int
        Pyramid level read (0 = full resolution).
    level_factors_xyz : tuple of int
        That level's factors relative to full resolution (x, y, z).
    steps_xyz : tuple of int
        Number of 2x steps applied on top, per axis (x, y, z).
    level_shape_zyx : tuple of int
        Shape of the level read (z, y, x).
    shape_zyx : tuple of int
        Shape after the 2x steps (z, y, x): the downsampled image.
    """

    level: int
    level_factors_xyz: tuple[int, int, int]
    steps_xyz: tuple[int, int, int]
    level_shape_zyx: tuple[int, int, int]
    shape_zyx: tuple[int, int, int]

    @property
    def factors_xyz(self) -> tuple[int, int, int]:
        """Total downsampling (x, y, z) relative to full resolution."""
        return tuple(int(f) << int(s) for f, s in zip(self.level_factors_xyz, self.steps_xyz))

    @property
    def to_full_res_xyz(self) -> np.ndarray:
        """4x4 affine: downsampled voxel (xyz) -> full-resolution local voxel (xyz).

        ``mipmap(level) @ diag(2^steps)``: scale ``f 2^s``, translation ``(f - 1) / 2``.
        """
        f = np.asarray(self.level_factors_xyz, dtype=np.float64)
        m = np.diag(np.append(f * (2.0 ** np.asarray(self.steps_xyz, dtype=np.float64)), 1.0))
        m[:3, 3] = (f - 1.0) / 2.0
        return m


def _power_of_two(value: int) -> int | None:
    """``log2(value)`` when ``value`` is a positive power of two, else None."""
    value = int(value)
    return value.bit_length() - 1 if value > 0 and value & (value - 1) == 0 else None


def plan_downsampling(levels, dsxy: int, dsz: int, where: str = "view") -> DownsamplePlan:
    """Choose the level and the remaining 2x steps for a request ``(dsxy, dsxy, dsz)``.

    Parameters
    ----------
    levels : sequence of (factors_xyz, shape_zyx)
        The view's pyramid, level 0 first (e.g. from ``PyramidLevel``).
    dsxy, dsz : int
        Requested downsampling in x/y and z; powers of two.
    where : str
        Names the view in errors.

    Returns
    -------
    DownsamplePlan
        The coarsest level whose integer factors divide the request with a
        power-of-two quotient on every axis (ties: the lower level).

    Raises
    ------
    UserError
        If a request is not a power of two, or the downsampled image has fewer
        than 3 voxels on some axis (no 3x3x3 neighbourhood fits).
    """
    request = (int(dsxy), int(dsxy), int(dsz))
    for name, r in (("dsxy", dsxy), ("dsz", dsz)):
        if _power_of_two(r) is None:
            raise UserError(f"{name}={r}: downsampling must be a power of two (1, 2, 4, ...)")
    best = None
    for index, (factors_xyz, shape_zyx) in enumerate(levels):
        f = [float(v) for v in factors_xyz]
        if any(v != round(v) for v in f):
            continue
        quotients = [r / int(v) for r, v in zip(request, f)]
        if any(q != round(q) or _power_of_two(int(q)) is None for q in quotients):
            continue
        product = np.prod(f)
        if best is None or product > best[0]:
            best = (product, index, tuple(int(v) for v in f), tuple(_power_of_two(int(q)) for q in quotients),
                    tuple(int(n) for n in shape_zyx))
    if best is None:
        raise UserError(f"{where}: no pyramid level divides the requested downsampling {request} (x, y, z)")
    _, index, factors, steps, level_shape = best
    shape = tuple(n >> s for n, s in zip(level_shape, steps[::-1]))
    if min(shape) < 3:
        raise UserError(
            f"{where}: downsampling (x, y, z) {request} leaves {' x '.join(map(str, shape[::-1]))} voxels "
            "(x y z); DoG needs at least 3 per axis: lower dsxy/dsz"
        )
    return DownsamplePlan(index, factors, steps, level_shape, shape)


def level_range(start: int, stop: int, steps: int, level_size: int) -> tuple[int, int]:
    """Level voxels ``[a, b)`` (one axis) that downsampled voxels ``[start, stop)`` after ``steps`` 2x steps need."""
    sizes = [int(level_size)]
    for _ in range(steps):
        sizes.append(sizes[-1] // 2)
    a, b = int(start), int(stop)
    for k in range(steps, 0, -1):
        a, b = max(0, 2 * a - 1), min(sizes[k - 1], 2 * (b - 1) + 2)
    return a, b


def _halve_axis(xp, data, axis: int, start: int, out_start: int, out_stop: int):
    """One 2x step along ``axis``: ``data`` holds global voxels from ``start``; returns ``[out_start, out_stop)``."""

    def take(first: int, count: int):
        index = [slice(None)] * data.ndim
        index[axis] = slice(first, first + 2 * (count - 1) + 1, 2)
        return data[tuple(index)]

    parts = []
    lo = out_start
    if lo == 0 and out_stop > 0:  # left edge: neighbour -1 missing, weights renormalised
        first = take(0, 1)
        second = take(1, 1)
        parts.append((first + xp.float32(0.5) * second) / xp.float32(1.5))
        lo = 1
    count = out_stop - lo
    if count > 0:
        centre = 2 * lo - start
        left, mid, right = take(centre - 1, count), take(centre, count), take(centre + 1, count)
        parts.append(xp.float32(0.25) * left + xp.float32(0.5) * mid + xp.float32(0.25) * right)
    return parts[0] if len(parts) == 1 else xp.concatenate(parts, axis=axis)


def downsample_region(xp, data_zyx, level_start_zyx, plan: DownsamplePlan, out_start_zyx, out_stop_zyx):
    """Downsampled voxels ``[out_start, out_stop)`` (z, y, x) from a level region, float32.

    Parameters
    ----------
    xp : module
        Array module of ``data_zyx``.
    data_zyx : array
        Level voxels starting at ``level_start_zyx``; must cover
        :func:`level_range` of the requested output on every axis.
    level_start_zyx : sequence of int
        Global level index of ``data_zyx[0, 0, 0]``.
    plan : DownsamplePlan
    out_start_zyx, out_stop_zyx : sequence of int
        Requested range in downsampled voxels.

    Returns
    -------
    array of float32
        Shape ``out_stop - out_start``; each 2x step is the quasi-Gaussian above,
        axes processed in the order z, y, x.
    """
    out = data_zyx.astype(xp.float32, copy=False)
    steps_zyx = plan.steps_xyz[::-1]
    for axis in range(3):
        steps = steps_zyx[axis]
        sizes = [plan.level_shape_zyx[axis]]
        for _ in range(steps):
            sizes.append(sizes[-1] // 2)
        start = int(level_start_zyx[axis])
        for k in range(1, steps + 1):
            # the range needed at step k for the final output (level_range with steps - k remaining)
            a, b = int(out_start_zyx[axis]), int(out_stop_zyx[axis])
            for j in range(steps, k, -1):
                a, b = max(0, 2 * a - 1), min(sizes[j - 1], 2 * (b - 1) + 2)
            out = _halve_axis(xp, out, axis, start, a, b)
            start = a
        if steps == 0:
            lo = int(out_start_zyx[axis]) - start
            index = [slice(None)] * 3
            index[axis] = slice(lo, lo + int(out_stop_zyx[axis]) - int(out_start_zyx[axis]))
            out = out[tuple(index)]
    return out
