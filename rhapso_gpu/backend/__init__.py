"""The array backend every algorithm computes with: NumPy/SciPy or CuPy.

Algorithms are written once against :class:`Backend` (``xp``, ``ndimage``,
device transfers and named fused kernels) and tested on NumPy::

    backend = get_backend("auto")          # CuPy only if cupy.is_available()
    volume = backend.asarray(host_volume)  # host -> device
    smooth = backend.ndimage.gaussian_filter(volume, 2.0)
    level1 = backend.kernel("downsample_mean")(smooth, (2, 2, 2))
    result = backend.to_host(level1)       # device -> host

Inside dask tasks, pick the backend from the chunk with
:func:`backend_for_array`. The NumPy implementation lives in
:mod:`cpu_fallback`, the CuPy one in :mod:`rhapso_gpu.backend.cupy_backend`
(imported only when selected), the CUDA kernels in
:mod:`rhapso_gpu.backend.kernels`.
"""

import cpu_fallback.kernels
from rhapso_gpu.backend._registry import register_kernel, registered_kernels
from rhapso_gpu.backend._select import CHOICES, Backend, backend_for_array, get_backend, gpu_available
from rhapso_gpu.backend.ops import downsample_mean

register_kernel(
    "downsample_mean",
    numpy=cpu_fallback.kernels.downsample_mean,
    cupy="rhapso_gpu.backend.cupy_backend:downsample_mean",
)

__all__ = [
    "CHOICES",
    "Backend",
    "backend_for_array",
    "downsample_mean",
    "get_backend",
    "gpu_available",
    "register_kernel",
    "registered_kernels",
]
