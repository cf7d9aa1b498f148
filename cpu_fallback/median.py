"""CPU twin of the ``sampled_median`` kernel: separable median of a few samples along x, then y.

Contract (shared with the CuPy implementation, two ``cupyx.scipy.ndimage.median_filter``
passes with a 1-D footprint; see :mod:`rhapso_gpu.detection.background` for why):

* input: a C-contiguous float32 volume (z, y, x) and sample offsets
  (int, odd count, sorted, symmetric, e.g. ``-10 -7 -3 0 3 7 10``);
* pass 1: each voxel becomes the median of the voxels at those x offsets;
  pass 2: the same along y on the result of pass 1;
* out-of-bounds indices are mirrored with the edge voxel repeated (SciPy
  ``reflect``). A median picks one of its inputs, so the result equals
  ``scipy.ndimage.median_filter(..., footprint=..., mode="reflect")`` exactly.

The passes (:mod:`cpu_fallback._median_numba`) release the GIL and are
compiled on first use, then cached on disk.
"""

from __future__ import annotations

import numpy as np

from cpu_fallback._checks import float32_volume
from rhapso_gpu.errors import UserError


def sampled_median(volume_zyx: np.ndarray, offsets) -> np.ndarray:
    """Median of the samples at ``offsets`` along x, then along y (float32, z, y, x).

    Parameters
    ----------
    volume_zyx : numpy.ndarray
        float32 volume, axis order (z, y, x).
    offsets : array_like of int
        Odd number of sample offsets in pixels, e.g. from
        :func:`rhapso_gpu.detection.background.sample_offsets`.

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    from cpu_fallback._median_numba import _along_x, _along_y

    volume = float32_volume(volume_zyx, "sampled_median")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) % 2 == 0:
        raise UserError(f"sampled_median: expected an odd number of offsets, got {offsets.tolist()}")
    along_x = np.empty_like(volume)
    out = np.empty_like(volume)
    _along_x(volume, offsets, along_x)
    _along_y(along_x, offsets, out)
    return out
