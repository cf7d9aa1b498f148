"""CuPy implementation of the ``gauss3`` kernel (contract: :mod:`cpu_fallback.gauss3`).

Three ``cupyx.scipy.ndimage.correlate1d`` passes (z, y, x) with the full
symmetric kernel and ``mode="reflect"``; cupyx computes float32 input in
float32, like the CPU twin (the order of the taps may differ, so results agree
to float32 rounding). No custom CUDA source: nothing here is in ``SPECS``.
"""

from __future__ import annotations

import numpy as np


def cupy_gauss3(volume_zyx, half_kernel):
    """Separable Gauss3 blur on the current CUDA device; see :func:`cpu_fallback.gauss3.gauss3`."""
    import cupy
    import cupyx.scipy.ndimage

    h = np.asarray(half_kernel, dtype=np.float32)
    kernel = cupy.asarray(np.concatenate([h[:0:-1], h]))
    out = cupy.ascontiguousarray(cupy.asarray(volume_zyx, dtype=cupy.float32))
    for axis in range(3):
        out = cupyx.scipy.ndimage.correlate1d(out, kernel, axis=axis, mode="reflect", output=cupy.float32)
    return out
