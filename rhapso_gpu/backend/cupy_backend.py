"""CuPy implementation of the backend interface, and the RawModule kernel launcher.

Imported only when the CuPy backend is selected (by ``get_backend`` or for a
CuPy array); CuPy itself is imported inside the functions, so importing this
module never touches CUDA. Kernels run on the current CUDA device and stream.
"""

from __future__ import annotations

import threading
from importlib import resources

import numpy as np

from rhapso_gpu.backend.kernels.downsample import run_downsample_mean
from rhapso_gpu.backend.kernels.spec import KernelSpec

NAME = "cupy"
KERNEL_PACKAGE = "rhapso_gpu.backend.kernels"
COMPILE_OPTIONS = ("-std=c++17",)

_LOCK = threading.Lock()
_MODULES: dict[tuple[int, str], object] = {}


def _cupy():
    import cupy

    return cupy


def modules():
    """The array and ndimage modules: ``(cupy, cupyx.scipy.ndimage)``."""
    import cupyx.scipy.ndimage

    return _cupy(), cupyx.scipy.ndimage


def current_device_id() -> int:
    """Id of the current CUDA device."""
    return _cupy().cuda.Device().id


def device_description(device_id: int) -> str:
    """Human description of a CUDA device, e.g. ``"NVIDIA A10G (CUDA device 0)"``."""
    name = _cupy().cuda.runtime.getDeviceProperties(device_id)["name"]
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return f"{name} (CUDA device {device_id})"


def asarray(a, dtype=None):
    """Copy host data to the current device (no copy for a device array of ``dtype``)."""
    return _cupy().asarray(a, dtype=dtype)


def to_host(a) -> np.ndarray:
    """Copy a device array to host memory."""
    return _cupy().asnumpy(a)


def raw_module(source: str):
    """The ``cupy.RawModule`` of ``source`` (a ``.cu`` file of the kernels package), cached per device.

    NVRTC compiles it on first use of one of its functions.
    """
    cupy = _cupy()
    key = (cupy.cuda.Device().id, source)
    with _LOCK:
        if key not in _MODULES:
            code = resources.files(KERNEL_PACKAGE).joinpath(source).read_text()
            _MODULES[key] = cupy.RawModule(code=code, options=COMPILE_OPTIONS)
        return _MODULES[key]


def launch(spec: KernelSpec, grid: tuple[int, int, int], block: tuple[int, int, int], args) -> None:
    """Launch ``spec`` on the current device and stream (a :data:`~rhapso_gpu.backend.kernels.spec.Launcher`)."""
    raw_module(spec.source).get_function(spec.name)(tuple(grid), tuple(block), spec.marshal(args))


def downsample_mean(volume_zyx, factors_zyx):
    """The ``downsample_mean`` kernel on the GPU; see :func:`cpu_fallback.kernels.downsample_mean`."""
    return run_downsample_mean(volume_zyx, factors_zyx, launch=launch, xp=_cupy())
