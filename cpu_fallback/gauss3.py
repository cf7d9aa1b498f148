"""CPU twin of the ``gauss3`` kernel: separable symmetric Gaussian correlation in float32, compiled by numba.

Contract (shared with the CuPy implementation, which runs
``cupyx.scipy.ndimage.correlate1d`` on float32 data, i.e. float32 arithmetic):

* input: a C-contiguous float32 volume (z, y, x) and an imglib2 Gauss3 half
  kernel ``h`` (centre first, ``R + 1`` taps);
* three passes, along z, then y, then x; each output is
  ``h[0] v[i] + sum_{k=1..R} h[k] (v[i-k] + v[i+k])``, accumulated in float32
  in increasing ``k``;
* out-of-bounds indices are mirrored with the edge voxel repeated (imglib2
  "mirror double", SciPy ``reflect``), repeatedly for volumes shorter than
  the kernel.

It matches ``scipy.ndimage.correlate1d(..., mode="reflect")`` (which sums in
float64) to float32 rounding, about six times faster on one core (256 x 256 x 64), and
releases the GIL, so the ``threads`` scheduler runs blocks in parallel. Each
output depends only on its neighbourhood, never on the array extent away from
the border, so blocks with halos reproduce a whole-view pass bit for bit.
The passes live in :mod:`cpu_fallback._gauss3_numba`, imported (and compiled,
then cached on disk) on first use.
"""

from __future__ import annotations

import numpy as np

from cpu_fallback._checks import float32_volume


def gauss3(volume_zyx: np.ndarray, half_kernel) -> np.ndarray:
    """Separable Gauss3 blur of a float32 volume (z, y, x), float32 arithmetic, mirror-double boundary.

    Parameters
    ----------
    volume_zyx : numpy.ndarray
        float32 volume, axis order (z, y, x).
    half_kernel : array_like
        Half kernel, centre first (see :func:`rhapso_gpu.detection.dog.half_kernel`).

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    volume = float32_volume(volume_zyx, "gauss3")
    from cpu_fallback._gauss3_numba import _along_x, _along_y, _along_z

    h = np.asarray(half_kernel, dtype=np.float32)
    first = np.empty_like(volume)
    second = np.empty_like(volume)
    _along_z(volume, h, first)
    _along_y(first, h, second)
    _along_x(second, h, first)
    return first
