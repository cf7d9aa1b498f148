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

import cpu_fallback.dog_peaks
import cpu_fallback.fusion
import cpu_fallback.gauss3
import cpu_fallback.kernels
import cpu_fallback.median
from rhapso_gpu.backend._registry import register_kernel, registered_kernels
from rhapso_gpu.backend._select import CHOICES, Backend, backend_for_array, get_backend, gpu_available
from rhapso_gpu.backend.ops import downsample_mean

register_kernel(
    "downsample_mean",
    numpy=cpu_fallback.kernels.downsample_mean,
    cupy="rhapso_gpu.backend.cupy_backend:downsample_mean",
)
register_kernel(
    "dog_peaks",
    numpy=cpu_fallback.dog_peaks.dog_peaks,
    cupy="rhapso_gpu.backend.kernels.dog_peaks:cupy_dog_peaks",
)
register_kernel("gauss3", numpy=cpu_fallback.gauss3.gauss3, cupy="rhapso_gpu.backend.kernels.gauss3:cupy_gauss3")
register_kernel(
    "sampled_median",
    numpy=cpu_fallback.median.sampled_median,
    cupy="rhapso_gpu.backend.kernels.median:cupy_sampled_median",
)
register_kernel(
    "fuse_block",
    numpy=cpu_fallback.fusion.fuse_block,
    cupy="rhapso_gpu.backend.kernels.fusion:fuse_block_cupy",
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
