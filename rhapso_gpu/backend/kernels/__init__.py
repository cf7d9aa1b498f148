"""Custom CUDA kernels (``*.cu``), their launch wrappers and the CPU emulator.

Each kernel has: a ``.cu`` source with ``extern "C" __global__`` entry points;
a wrapper module declaring their C signatures (``SPECS``, see
:mod:`~rhapso_gpu.backend.kernels.spec`) and launching them through any
launcher; and a NumPy twin with the same contract in :mod:`cpu_fallback.kernels`.
CI compiles every ``.cu`` with nvcc (sm_75, sm_90) and runs it on the CPU with
:mod:`~rhapso_gpu.backend.kernels.cpu_emulation` against the twin.
"""
