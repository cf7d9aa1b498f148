"""Launch wrapper of ``dog_peaks.cu`` (fused DoG extrema test + sub-pixel localisation).

Written once for every launcher: the CuPy RawModule launcher
(:func:`cupy_dog_peaks`) and the CPU emulator used in CI
(:func:`rhapso_gpu.backend.kernels.cpu_emulation.launch` with :mod:`numpy`).
The input contract is :func:`cpu_fallback.dog_peaks.plan_dog_peaks`, shared
with the NumPy twin :func:`cpu_fallback.dog_peaks.dog_peaks`.
"""

from __future__ import annotations

from types import ModuleType

from cpu_fallback.dog_peaks import plan_dog_peaks
from rhapso_gpu.backend.kernels.downsample import launch_config
from rhapso_gpu.backend.kernels.spec import KernelSpec, Launcher, Param

SOURCE = "dog_peaks.cu"

SPEC = KernelSpec(
    source=SOURCE,
    name="dog_peaks_f32",
    params=(
        Param("const float*", "dog"),
        Param("const long long*", "candidates"),
        Param("long long", "n_candidates"),
        *(Param("long long", n) for n in ("nz", "ny", "nx", "lo_z", "lo_y", "lo_x", "hi_z", "hi_y", "hi_x")),
        *(Param("long long", n) for n in ("origin_z", "origin_y", "origin_x")),
        Param("double", "threshold"),
        Param("int", "find_max"),
        Param("int", "find_min"),
        Param("int", "max_moves"),
        Param("double", "move_tolerance"),
        Param("signed char*", "kind"),
        Param("double*", "position_zyx"),
        Param("double*", "value"),
    ),
)
SPECS = (SPEC,)


def run_dog_peaks(
    dog_zyx,
    candidates,
    lo_zyx,
    hi_zyx,
    threshold: float,
    find_max: bool = True,
    find_min: bool = False,
    max_moves: int = 10,
    move_tolerance: float = 0.01,
    origin_zyx=(0, 0, 0),
    *,
    launch: Launcher,
    xp: ModuleType,
    threads_per_block: int = 128,
    max_blocks: int = 1 << 16,
):
    """Run ``dog_peaks.cu`` over ``candidates``; same arguments and results as the NumPy twin.

    Parameters
    ----------
    launch : Launcher
        The CuPy RawModule launcher or the CPU emulator.
    xp : module
        Array module of the launcher's memory (:mod:`cupy` or :mod:`numpy`).
    threads_per_block, max_blocks : int
        Launch geometry (one thread per candidate, grid-stride loop); any values
        give the same result.

    Returns
    -------
    kind, position_zyx, value : arrays of ``xp``
        See :func:`cpu_fallback.dog_peaks.dog_peaks`.
    """
    req = plan_dog_peaks(
        dog_zyx.shape, dog_zyx.dtype, lo_zyx, hi_zyx, threshold, find_max, find_min, max_moves, move_tolerance,
        origin_zyx,
    )
    dog = xp.ascontiguousarray(xp.asarray(dog_zyx))
    cand = xp.ascontiguousarray(xp.asarray(candidates, dtype=xp.int64).ravel())
    n = int(cand.size)
    kind = xp.zeros(n, dtype=xp.int8)
    position = xp.zeros((n, 3), dtype=xp.float64)
    value = xp.zeros(n, dtype=xp.float64)
    if n == 0:
        return kind, position, value
    grid, block = launch_config(n, threads_per_block, max_blocks)
    args = (
        dog, cand, n, *req.shape, *req.lo_zyx, *req.hi_zyx, *req.origin_zyx, req.threshold, int(req.find_max), int(req.find_min),
        req.max_moves, req.move_tolerance, kind, position, value,
    )
    launch(SPEC, grid, block, args)
    return kind, position, value


def cupy_dog_peaks(dog_zyx, candidates, lo_zyx, hi_zyx, threshold, find_max=True, find_min=False, max_moves=10,
                   move_tolerance=0.01, origin_zyx=(0, 0, 0)):
    """The ``dog_peaks`` kernel on the current CUDA device (registered as the CuPy implementation)."""
    import cupy

    from rhapso_gpu.backend.cupy_backend import launch

    return run_dog_peaks(
        dog_zyx, candidates, lo_zyx, hi_zyx, threshold, find_max, find_min, max_moves, move_tolerance, origin_zyx,
        launch=launch, xp=cupy,
    )
