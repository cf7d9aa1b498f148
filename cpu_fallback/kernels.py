"""NumPy twins of the fused CUDA kernels, and the contracts they share.

Each function here computes exactly what the CUDA kernel of the same name in
``rhapso_gpu/backend/kernels/`` computes, with vectorised NumPy. The input
checks (the ``plan_*`` functions) are the single statement of a kernel's
contract: the CUDA wrapper calls the same function, so both backends accept and
reject the same inputs.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError

DOWNSAMPLE_MEAN_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))
"""Voxel types :func:`downsample_mean` accepts; the output has the same type."""


@dataclass(frozen=True)
class DownsamplePlan:
    """A checked block-mean downsampling request.

    Attributes
    ----------
    factors : tuple of int
        Integer downsampling factors ``(fz, fy, fx)``, each >= 1.
    in_shape : tuple of int
        Input shape ``(nz, ny, nx)`` in voxels.
    out_shape : tuple of int
        Output shape ``(nz // fz, ny // fy, nx // fx)`` in voxels.
    dtype : numpy.dtype
        Voxel type of input and output.
    """

    factors: tuple[int, int, int]
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    dtype: np.dtype


def _factor(value, axis: str) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise UserError(f"downsample_mean: factor on axis {axis} must be an integer, got {value!r}")
    try:
        factor = operator.index(value)
    except TypeError:
        raise UserError(f"downsample_mean: factor on axis {axis} must be an integer, got {value!r}") from None
    if factor < 1:
        raise UserError(f"downsample_mean: factor on axis {axis} must be >= 1, got {factor}")
    return factor


def plan_downsample_mean(shape, dtype, factors_zyx) -> DownsamplePlan:
    """Check a block-mean downsampling request and compute its output shape.

    Parameters
    ----------
    shape : tuple of int
        Shape of the input volume, axis order ``(z, y, x)``, in voxels.
    dtype : numpy.dtype or str
        Voxel type; one of :data:`DOWNSAMPLE_MEAN_DTYPES`.
    factors_zyx : sequence of int
        Integer factors ``(fz, fy, fx)``; each must be >= 1 and no larger than
        the volume along its axis.

    Returns
    -------
    DownsamplePlan

    Raises
    ------
    UserError
        On a volume that is not 3-D, an unsupported voxel type, or a bad factor.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise UserError(f"downsample_mean: expected a 3-D (z, y, x) volume, got shape {shape}")
    dtype = np.dtype(dtype)
    if dtype not in DOWNSAMPLE_MEAN_DTYPES:
        names = ", ".join(d.name for d in DOWNSAMPLE_MEAN_DTYPES)
        raise UserError(f"downsample_mean: voxel type {dtype.name} is not supported (use {names})")
    factors_zyx = tuple(factors_zyx)
    if len(factors_zyx) != 3:
        raise UserError(f"downsample_mean: expected 3 factors (fz, fy, fx), got {factors_zyx}")
    factors = tuple(_factor(f, axis) for f, axis in zip(factors_zyx, "zyx"))
    for n, f, axis in zip(shape, factors, "zyx"):
        if f > n:
            raise UserError(f"downsample_mean: factor {f} on axis {axis} exceeds the volume size {n} (shape {shape})")
    out_shape = tuple(n // f for n, f in zip(shape, factors))
    return DownsamplePlan(factors=factors, in_shape=shape, out_shape=out_shape, dtype=dtype)


def downsample_mean(volume_zyx: np.ndarray, factors_zyx) -> np.ndarray:
    """Block-mean downsampling of a 3-D volume (NumPy twin of ``downsample_mean.cu``).

    Parameters
    ----------
    volume_zyx : numpy.ndarray
        Volume, axis order ``(z, y, x)``, voxel type uint8, uint16, int16 or float32.
    factors_zyx : sequence of int
        Integer factors ``(fz, fy, fx)``, each between 1 and the volume size on its axis.

    Returns
    -------
    numpy.ndarray
        Shape ``(nz // fz, ny // fy, nx // fx)``, same voxel type as the input. The
        trailing remainder of every axis is dropped (as BigDataViewer / N5 pyramids
        do). Each output voxel is the mean of its ``fz * fy * fx`` block: summed in
        float32 and divided by the block volume in float32. Integer outputs are
        ``floor(mean + 0.5)`` (round half up, so -2.5 becomes -2), clamped to the
        range of the type; float32 outputs are the float32 mean.

    Notes
    -----
    For integer input the float32 sum is exact while it stays below 2**24 (for
    uint16, blocks of up to 256 voxels), so the twin and the kernel agree bit for
    bit there. Beyond that, and for float32 input, the two may differ by float32
    rounding because they add in a different order.
    """
    plan = plan_downsample_mean(volume_zyx.shape, volume_zyx.dtype, factors_zyx)
    (oz, oy, ox), (fz, fy, fx) = plan.out_shape, plan.factors
    blocks = np.asarray(volume_zyx)[: oz * fz, : oy * fy, : ox * fx].reshape(oz, fz, oy, fy, ox, fx)
    mean = blocks.sum(axis=(1, 3, 5), dtype=np.float32) / np.float32(fz * fy * fx)
    if plan.dtype.kind == "f":
        return mean.astype(plan.dtype, copy=False)
    info = np.iinfo(plan.dtype)
    rounded = np.floor(mean + np.float32(0.5))
    return np.clip(rounded, np.float32(info.min), np.float32(info.max)).astype(plan.dtype)
