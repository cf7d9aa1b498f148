"""The C signature of a CUDA kernel, declared once and used by every launcher.

A :class:`KernelSpec` names a ``.cu`` source and an ``extern "C"`` entry point
and lists its parameters as C types. The CuPy launcher and the CPU emulator
both marshal arguments through :meth:`KernelSpec.marshal`, and the emulator
checks at compile time that the spec matches the function in the source.

A launcher is a callable ``launch(spec, grid, block, args)`` with ``grid`` and
``block`` as ``(x, y, z)`` tuples; it runs the kernel synchronously from the
caller's point of view (results are visible to the next operation on the same
stream).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_SCALAR_TYPES = {
    "int": np.dtype(np.int32),
    "unsigned int": np.dtype(np.uint32),
    "long long": np.dtype(np.int64),
    "unsigned long long": np.dtype(np.uint64),
    "float": np.dtype(np.float32),
    "double": np.dtype(np.float64),
}
_POINTEE_TYPES = {
    "unsigned char": np.dtype(np.uint8),
    "signed char": np.dtype(np.int8),
    "unsigned short": np.dtype(np.uint16),
    "short": np.dtype(np.int16),
    **_SCALAR_TYPES,
}


@dataclass(frozen=True)
class Param:
    """One kernel parameter.

    Attributes
    ----------
    ctype : str
        C type as written in the kernel, without ``__restrict__``: a scalar such
        as ``"long long"`` or a pointer such as ``"const unsigned short*"``.
    name : str
        Parameter name (for messages and the generated emulator code).
    """

    ctype: str
    name: str

    @property
    def is_pointer(self) -> bool:
        return self.ctype.endswith("*")

    @property
    def is_const(self) -> bool:
        return self.ctype.startswith("const ")

    def __post_init__(self):
        if self._base_type() not in self._table():
            raise ValueError(f"kernel parameter {self.name}: no launcher can marshal C type {self.ctype!r}")

    def _base_type(self) -> str:
        return self.ctype.removeprefix("const ").removesuffix("*").strip()

    def _table(self) -> dict[str, np.dtype]:
        return _POINTEE_TYPES if self.is_pointer else _SCALAR_TYPES

    @property
    def dtype(self) -> np.dtype:
        """NumPy type of the scalar, or of the elements a pointer points to."""
        return self._table()[self._base_type()]


@dataclass(frozen=True)
class KernelSpec:
    """An ``extern "C" __global__`` entry point of a ``.cu`` file.

    Attributes
    ----------
    source : str
        File name of the ``.cu`` source in ``rhapso_gpu/backend/kernels/``.
    name : str
        Name of the entry point.
    params : tuple of Param
        Parameters in declaration order.
    """

    source: str
    name: str
    params: tuple[Param, ...]

    def c_function_type(self) -> str:
        """The C++ type of a pointer to the entry point, e.g. ``void (*)(const float*, int)``."""
        return f"void (*)({', '.join(p.ctype for p in self.params)})"

    def marshal(self, args) -> tuple:
        """Check ``args`` against the signature and convert scalars to their C types.

        Parameters
        ----------
        args : sequence
            One value per parameter: C-contiguous arrays (NumPy or CuPy) of the
            pointee type for pointers, Python or NumPy numbers for scalars.

        Returns
        -------
        tuple
            Arrays unchanged, scalars as NumPy scalars of the declared type.

        Raises
        ------
        TypeError, OverflowError
            On a wrong argument count, array type or layout, or a scalar that
            does not fit its C type.
        """
        if len(args) != len(self.params):
            raise TypeError(f"{self.name}: expected {len(self.params)} arguments, got {len(args)}")
        out = []
        for p, a in zip(self.params, args):
            if p.is_pointer:
                if getattr(a, "dtype", None) != p.dtype or not a.flags.c_contiguous:
                    raise TypeError(f"{self.name}: argument {p.name} must be a C-contiguous {p.dtype} array")
                out.append(a)
            else:
                if p.dtype.kind in "iu" and not isinstance(a, (int, np.integer)):
                    raise TypeError(f"{self.name}: argument {p.name} must be an integer, got {a!r}")
                out.append(p.dtype.type(a))
        return tuple(out)


Launcher = Callable[[KernelSpec, tuple[int, int, int], tuple[int, int, int], tuple], None]
"""``launch(spec, grid, block, args)``: run one kernel over ``grid`` x ``block``."""


def all_specs() -> tuple[KernelSpec, ...]:
    """Every kernel spec declared by the wrapper modules of this package (their ``SPECS``)."""
    package = importlib.import_module(__package__)
    specs = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{__package__}.{info.name}")
        specs.extend(getattr(module, "SPECS", ()))
    return tuple(specs)
