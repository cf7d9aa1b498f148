"""Registry of named fused kernels, one implementation per backend.

A kernel is registered with a NumPy callable and a CuPy implementation. The
CuPy one may be an import path ``"package.module:function"`` so that CuPy is
imported only when the CuPy backend first asks for the kernel (the lazy
registration dask-image uses).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

BACKEND_NAMES = ("numpy", "cupy")


@dataclass
class _Entry:
    numpy: Callable
    cupy: Callable | str
    resolved: dict[str, Callable] = field(default_factory=dict)


_ENTRIES: dict[str, _Entry] = {}


def _check_import_path(name: str, path: str) -> None:
    module, sep, attr = path.partition(":")
    if not sep or not all(part.isidentifier() for part in module.split(".")) or not attr.isidentifier():
        raise ValueError(f"kernel {name!r}: cupy implementation {path!r} is not of the form 'package.module:function'")


def register_kernel(name: str, *, numpy: Callable, cupy: Callable | str) -> None:
    """Register the fused kernel ``name``.

    Parameters
    ----------
    name : str
        Kernel name, as passed to :meth:`Backend.kernel`.
    numpy : callable
        NumPy/SciPy implementation (the twin).
    cupy : callable or str
        CuPy implementation, or its import path ``"package.module:function"``,
        imported on first use by the CuPy backend.

    Raises
    ------
    ValueError
        If ``name`` is already registered with other implementations, or the
        import path is malformed. Registering the same pair again is a no-op.
    TypeError
        If an implementation is neither callable nor (for CuPy) a string.
    """
    if not callable(numpy):
        raise TypeError(f"kernel {name!r}: the numpy implementation must be callable, got {numpy!r}")
    if isinstance(cupy, str):
        _check_import_path(name, cupy)
    elif not callable(cupy):
        raise TypeError(f"kernel {name!r}: the cupy implementation must be callable or 'module:function'")
    existing = _ENTRIES.get(name)
    if existing is not None:
        if existing.numpy is numpy and existing.cupy == cupy:
            return
        raise ValueError(f"kernel {name!r} is already registered with other implementations")
    _ENTRIES[name] = _Entry(numpy=numpy, cupy=cupy)


def registered_kernels() -> tuple[str, ...]:
    """Names of all registered kernels, sorted."""
    return tuple(sorted(_ENTRIES))


def resolve_kernel(name: str, backend_name: str) -> Callable:
    """The implementation of kernel ``name`` for backend ``backend_name`` ("numpy" or "cupy").

    Raises
    ------
    KeyError
        If no kernel of that name is registered.
    """
    if backend_name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend_name!r}; expected one of {BACKEND_NAMES}")
    entry = _ENTRIES.get(name)
    if entry is None:
        raise KeyError(f"no kernel named {name!r}; registered: {', '.join(registered_kernels()) or 'none'}")
    if backend_name == "numpy":
        return entry.numpy
    if backend_name not in entry.resolved:
        impl = entry.cupy
        if isinstance(impl, str):
            module, _, attr = impl.partition(":")
            impl = getattr(importlib.import_module(module), attr)
        entry.resolved[backend_name] = impl
    return entry.resolved[backend_name]
