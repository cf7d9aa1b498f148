"""Choosing the array backend: NumPy/SciPy on the CPU or CuPy on a CUDA GPU.

The GPU test is ``cupy.is_available()`` and nothing else: on a machine without a
GPU or driver, ``import cupy`` succeeds but any allocation fails.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

import cpu_fallback
from rhapso_gpu.backend._registry import resolve_kernel
from rhapso_gpu.errors import UserError

log = logging.getLogger("rhapso_gpu")

CHOICES = ("auto", "numpy", "cupy")
"""Accepted values of ``--backend``."""


@dataclass(frozen=True)
class Backend:
    """One array backend: the modules every algorithm computes with.

    Algorithms are written once against this interface and never import NumPy
    or CuPy for computation themselves.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy"``.
    xp : module
        Array module: :mod:`numpy` or :mod:`cupy`.
    ndimage : module
        :mod:`scipy.ndimage` or :mod:`cupyx.scipy.ndimage`.
    device : str
        Human description of the device, for logs (for example the GPU name).
    """

    name: str
    xp: ModuleType
    ndimage: ModuleType
    device: str
    _asarray: Callable = field(repr=False, compare=False)
    _to_host: Callable = field(repr=False, compare=False)

    def asarray(self, a, dtype=None):
        """Move ``a`` to this backend's device (host -> device); no copy on NumPy.

        Parameters
        ----------
        a : array_like
            Host or device array.
        dtype : numpy.dtype, optional
            Convert to this voxel type.
        """
        return self._asarray(a, dtype)

    def to_host(self, a) -> np.ndarray:
        """Copy ``a`` to host memory as a :class:`numpy.ndarray` (device -> host)."""
        return self._to_host(a)

    def kernel(self, name: str) -> Callable:
        """The fused kernel ``name`` for this backend (see :func:`register_kernel`).

        Raises
        ------
        KeyError
            If no kernel of that name is registered.
        """
        return resolve_kernel(name, self.name)


def gpu_available() -> tuple[bool, str]:
    """Whether the CuPy backend can run here, and why (or why not).

    Returns
    -------
    available : bool
        True only when CuPy imports and ``cupy.is_available()`` is true.
    reason : str
        Short human reason, for example ``"cupy is not installed"``.
    """
    try:
        import cupy
    except ImportError:
        return False, "cupy is not installed"
    if not cupy.is_available():
        return False, "cupy.is_available() is False"
    return True, "cupy.is_available() is True"


@functools.cache
def _numpy_backend() -> Backend:
    return Backend(
        name=cpu_fallback.NAME,
        xp=cpu_fallback.xp,
        ndimage=cpu_fallback.ndimage,
        device=cpu_fallback.device_description(),
        _asarray=cpu_fallback.asarray,
        _to_host=cpu_fallback.to_host,
    )


@functools.cache
def _cupy_backend_for(device_id: int) -> Backend:
    from rhapso_gpu.backend import cupy_backend

    xp, ndimage = cupy_backend.modules()
    return Backend(
        name=cupy_backend.NAME,
        xp=xp,
        ndimage=ndimage,
        device=cupy_backend.device_description(device_id),
        _asarray=cupy_backend.asarray,
        _to_host=cupy_backend.to_host,
    )


def _cupy_backend() -> Backend:
    from rhapso_gpu.backend import cupy_backend

    return _cupy_backend_for(cupy_backend.current_device_id())


def get_backend(name: str = "auto") -> Backend:
    """Return the backend named by ``--backend`` and log the choice (once per process).

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}
        ``"auto"`` picks CuPy when ``cupy.is_available()`` is true, else NumPy.
        ``"cupy"`` requires a usable GPU. The CuPy backend uses the current
        CUDA device (one device per dask-cuda worker).

    Returns
    -------
    Backend
        Cached: the same object for the same backend and device.

    Raises
    ------
    UserError
        For an unknown name, or ``"cupy"`` without a usable GPU.
    """
    if name not in CHOICES:
        raise UserError(f"--backend {name!r}: choose one of {', '.join(CHOICES)}")
    if name == "numpy":
        backend, why = _numpy_backend(), "--backend numpy"
    else:
        available, reason = gpu_available()
        if name == "cupy" and not available:
            raise UserError(f"--backend cupy: no usable CUDA GPU ({reason})")
        backend = _cupy_backend() if available else _numpy_backend()
        why = f"--backend {name}: {reason}" if available else f"--backend {name}: no usable CUDA GPU, {reason}"
    # Once per process and choice: tasks call this for every block.
    if (name, backend) not in _LOGGED:
        _LOGGED.add((name, backend))
        log.info("backend %s on %s (%s)", backend.name, backend.device, why)
    return backend


_LOGGED: set = set()


def _is_cupy_array(a) -> bool:
    return type(a).__module__.partition(".")[0] in ("cupy", "cupyx")


def backend_for_array(a) -> Backend:
    """The backend that owns array ``a`` (dispatch on the array type, as dask-image does).

    CuPy arrays, and dask arrays whose chunks are CuPy arrays, get the CuPy
    backend; everything else gets the NumPy backend. Nothing is logged, so this
    is cheap to call per chunk.

    Parameters
    ----------
    a : array
        NumPy, CuPy or dask array, or any array-like.
    """
    if type(a).__module__.partition(".")[0] == "dask":
        a = getattr(a, "_meta", a)
    return _cupy_backend() if _is_cupy_array(a) else _numpy_backend()
