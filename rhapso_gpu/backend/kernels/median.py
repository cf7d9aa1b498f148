"""CuPy implementation of the ``sampled_median`` kernel (contract: :mod:`cpu_fallback.median`).

Two ``cupyx.scipy.ndimage.median_filter`` passes (x, then y) with a 1-D
footprint holding the sample offsets, ``mode="reflect"``. No custom CUDA
source: nothing here is in ``SPECS``.
"""

from __future__ import annotations

import numpy as np


def cupy_sampled_median(volume_zyx, offsets):
    """Separable sampled median on the current CUDA device; see :func:`cpu_fallback.median.sampled_median`."""
    import cupy
    import cupyx.scipy.ndimage

    offsets = np.asarray(offsets, dtype=np.int64)
    radius = int(np.abs(offsets).max())
    footprint = np.zeros(2 * radius + 1, dtype=bool)
    footprint[offsets + radius] = True
    out = cupy.ascontiguousarray(cupy.asarray(volume_zyx, dtype=cupy.float32))
    for shape in ((1, 1, footprint.size), (1, footprint.size, 1)):
        out = cupyx.scipy.ndimage.median_filter(out, footprint=cupy.asarray(footprint.reshape(shape)), mode="reflect")
    return out
