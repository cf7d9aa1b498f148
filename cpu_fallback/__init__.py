"""NumPy/SciPy implementation of the rhapso-gpu array backend.

:func:`rhapso_gpu.backend.get_backend` builds the ``"numpy"`` backend from the
pieces here: the array module (:mod:`numpy`), the ndimage module
(:mod:`scipy.ndimage`) and the host transfers, which are no-ops. The NumPy twins
of the fused CUDA kernels live in :mod:`cpu_fallback.kernels`.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage

NAME = "numpy"
xp = np
ndimage = scipy.ndimage


def asarray(a, dtype=None) -> np.ndarray:
    """Return ``a`` as a NumPy array without copying when it already is one of ``dtype``."""
    return np.asarray(a, dtype=dtype)


def to_host(a) -> np.ndarray:
    """Return ``a`` as a NumPy array (no copy: host arrays already live on the host)."""
    return np.asarray(a)


def device_description() -> str:
    """Human description of where this backend computes."""
    return "CPU (NumPy/SciPy)"
