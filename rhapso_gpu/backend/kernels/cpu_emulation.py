"""Run the CUDA kernels on the CPU: the same ``.cu`` source, compiled as C++ by g++.

This is how CI tests kernel logic on machines without a GPU. For one ``.cu``
file it generates a C++ translation unit holding

* the kernel source verbatim, with ``cuda_cpu_shim.h`` force-included
  (``g++ -include``) to define ``__global__``, ``__device__``,
  ``__forceinline__``, ``dim3`` and ``blockIdx/threadIdx/blockDim/gridDim``
  (``thread_local``);
* per :class:`~rhapso_gpu.backend.kernels.spec.KernelSpec` of that file, a
  ``static_assert`` that the kernel's C signature is exactly the spec's, and an
  ``extern "C"`` launcher ``rhapso_emulate_<name>`` that loops over the whole
  grid x block and calls the kernel once per thread.

The shared library is built with ``g++ -x c++ -std=c++17 -O2 -shared -fPIC``,
cached by a hash of everything that goes into it (in the temporary directory,
``rhapso_gpu_cuda_cpu/``), and loaded with :mod:`ctypes`.

Limitations
-----------
Threads run one after another, in the calling OS thread. Kernels therefore must
not use ``__shared__`` memory, ``__syncthreads()``, atomics or warp intrinsics:
the shim does not define them, so such a kernel fails to compile here rather
than compute something else. Only host (NumPy) arrays can be passed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import numpy as np

from rhapso_gpu.backend.kernels.spec import KernelSpec, all_specs

SHIM = "cuda_cpu_shim.h"
CXX_FLAGS = ("-x", "c++", "-std=c++17", "-O2", "-shared", "-fPIC")

_LOCK = threading.Lock()
_LIBRARIES: dict[str, ctypes.CDLL] = {}


class EmulatorUnavailable(RuntimeError):
    """The C++ compiler needed for CPU emulation is missing."""


def compiler() -> str:
    """Path of g++, the compiler of the CPU emulation.

    Raises
    ------
    EmulatorUnavailable
        If g++ is not on PATH.
    """
    cxx = shutil.which("g++")
    if cxx is None:
        raise EmulatorUnavailable(
            "CPU emulation of CUDA kernels needs g++ on PATH (install g++, e.g. apt-get install g++)"
        )
    return cxx


def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


def _launcher(spec: KernelSpec) -> str:
    params = ", ".join(f"{p.ctype} {p.name}" for p in spec.params)
    names = ", ".join(p.name for p in spec.params)
    return f"""
static_assert(std::is_same<decltype(&{spec.name}), {spec.c_function_type()}>::value,
              "{spec.source}: the signature of {spec.name} differs from its KernelSpec");
extern "C" void rhapso_emulate_{spec.name}(unsigned int gx, unsigned int gy, unsigned int gz,
                                            unsigned int bx, unsigned int by, unsigned int bz, {params})
{{
    gridDim = dim3(gx, gy, gz);
    blockDim = dim3(bx, by, bz);
    for (unsigned int kz = 0; kz < gz; ++kz)
    for (unsigned int ky = 0; ky < gy; ++ky)
    for (unsigned int kx = 0; kx < gx; ++kx) {{
        blockIdx = dim3(kx, ky, kz);
        for (unsigned int tz = 0; tz < bz; ++tz)
        for (unsigned int ty = 0; ty < by; ++ty)
        for (unsigned int tx = 0; tx < bx; ++tx) {{
            threadIdx = dim3(tx, ty, tz);
            {spec.name}({names});
        }}
    }}
}}
"""


def translation_unit(source: str, specs: tuple[KernelSpec, ...]) -> str:
    """C++ source that builds the CPU emulation of ``source`` (a ``.cu`` file of this package)."""
    launchers = "".join(_launcher(s) for s in specs)
    return f'#line 1 "{source}"\n{_read(source)}\n#line 1 "<rhapso-gpu emulation launchers>"\n{launchers}'


def _cache_dir() -> Path:
    path = Path(tempfile.gettempdir()) / "rhapso_gpu_cuda_cpu"
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_library(source: str, specs: tuple[KernelSpec, ...]) -> Path:
    """Compile the CPU emulation of ``source`` with launchers for ``specs``; return the cached ``.so``.

    Raises
    ------
    EmulatorUnavailable
        If g++ is missing.
    RuntimeError
        With g++'s messages, if the source does not compile or a spec does not
        match its kernel's signature.
    """
    cxx = compiler()
    code = translation_unit(source, specs)
    shim = _read(SHIM)
    digest = hashlib.sha256("\0".join([cxx, *CXX_FLAGS, shim, code]).encode()).hexdigest()[:24]
    lib = _cache_dir() / f"{Path(source).stem}-{digest}.so"
    if lib.exists():
        return lib
    with resources.as_file(resources.files(__package__).joinpath(SHIM)) as shim_path:
        tmp = lib.with_name(f"{lib.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        proc = subprocess.run(
            [cxx, *CXX_FLAGS, "-include", str(shim_path), "-", "-o", str(tmp)],
            input=code,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"g++ could not compile {source} for CPU emulation:\n{proc.stderr}")
    os.replace(tmp, lib)  # atomic: concurrent builds of the same source do not see partial files
    return lib


def library(source: str) -> ctypes.CDLL:
    """The loaded CPU build of ``source`` with launchers for all its kernel specs (built once)."""
    with _LOCK:
        if source not in _LIBRARIES:
            specs = tuple(s for s in all_specs() if s.source == source)
            if not specs:
                raise ValueError(f"no KernelSpec declares an entry point of {source}")
            cdll = ctypes.CDLL(str(build_library(source, specs)))
            for spec in specs:
                fn = getattr(cdll, f"rhapso_emulate_{spec.name}")
                fn.restype = None
                fn.argtypes = [ctypes.c_uint] * 6 + [
                    ctypes.c_void_p if p.is_pointer else np.ctypeslib.as_ctypes_type(p.dtype) for p in spec.params
                ]
            _LIBRARIES[source] = cdll
        return _LIBRARIES[source]


def launch(spec: KernelSpec, grid: tuple[int, int, int], block: tuple[int, int, int], args) -> None:
    """Run ``spec`` over ``grid`` x ``block`` on the CPU (a :data:`~rhapso_gpu.backend.kernels.spec.Launcher`).

    Parameters
    ----------
    spec : KernelSpec
        Entry point to run.
    grid, block : tuple of int
        Launch dimensions ``(x, y, z)``, as for a CUDA launch.
    args : sequence
        Kernel arguments; arrays must be C-contiguous NumPy arrays, and
        writable where the kernel writes.
    """
    values = spec.marshal(args)
    c_args = []
    for p, v in zip(spec.params, values):
        if not p.is_pointer:
            c_args.append(v.item())
            continue
        if not isinstance(v, np.ndarray):
            raise TypeError(f"{spec.name}: CPU emulation needs NumPy arrays, got {type(v).__name__} for {p.name}")
        if not p.is_const and not v.flags.writeable:
            raise ValueError(f"{spec.name}: argument {p.name} is written by the kernel but is read-only")
        c_args.append(v.ctypes.data)
    fn = getattr(library(spec.source), f"rhapso_emulate_{spec.name}")
    fn(*grid, *block, *c_args)
