"""Launch wrapper of ``downsample_mean.cu``: input checks, launch geometry, arguments.

Written once for every launcher. The CuPy backend passes its RawModule
launcher and :mod:`cupy`; CI passes the CPU emulator
(:func:`rhapso_gpu.backend.kernels.cpu_emulation.launch`) and :mod:`numpy`,
so the code that runs on the GPU is the code tested on the CPU. The input
contract is :func:`cpu_fallback.kernels.plan_downsample_mean`, shared with the
NumPy twin :func:`cpu_fallback.kernels.downsample_mean`.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from cpu_fallback.kernels import DOWNSAMPLE_MEAN_DTYPES, plan_downsample_mean
from rhapso_gpu.backend.kernels.spec import KernelSpec, Launcher, Param

SOURCE = "downsample_mean.cu"

_C_TYPES = {
    np.dtype(np.uint8): ("u8", "unsigned char"),
    np.dtype(np.uint16): ("u16", "unsigned short"),
    np.dtype(np.int16): ("i16", "short"),
    np.dtype(np.float32): ("f32", "float"),
}


def _spec(suffix: str, ctype: str) -> KernelSpec:
    scalars = [("long long", n) for n in ("ny", "nx", "oz", "oy", "ox")] + [("int", n) for n in ("fz", "fy", "fx")]
    return KernelSpec(
        source=SOURCE,
        name=f"downsample_mean_{suffix}",
        params=(Param(f"const {ctype}*", "src"), Param(f"{ctype}*", "dst"), *(Param(t, n) for t, n in scalars)),
    )


SPEC_BY_DTYPE = {dtype: _spec(*_C_TYPES[dtype]) for dtype in DOWNSAMPLE_MEAN_DTYPES}
"""The entry point of ``downsample_mean.cu`` for each voxel type."""

SPECS = tuple(SPEC_BY_DTYPE.values())

THREADS_PER_BLOCK = 256
MAX_BLOCKS = 1 << 16
"""Grid cap: 65536 blocks x 256 threads fill any current GPU; larger outputs use the kernel's grid-stride loop."""


def launch_config(
    n_out: int, threads_per_block: int = THREADS_PER_BLOCK, max_blocks: int = MAX_BLOCKS
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """One-dimensional grid and block for ``n_out`` output voxels, one thread per voxel.

    Returns
    -------
    grid, block : tuple of int
        ``(x, y, z)`` launch dimensions; the grid is capped at ``max_blocks``.
    """
    blocks = min(-(-n_out // threads_per_block), max_blocks)
    return (blocks, 1, 1), (threads_per_block, 1, 1)


def run_downsample_mean(
    volume_zyx,
    factors_zyx,
    *,
    launch: Launcher,
    xp: ModuleType,
    threads_per_block: int = THREADS_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
):
    """Block-mean downsample a 3-D volume with the ``downsample_mean.cu`` kernel.

    Parameters
    ----------
    volume_zyx : array
        Volume of ``xp`` (or convertible to it), axis order ``(z, y, x)``, voxel
        type uint8, uint16, int16 or float32.
    factors_zyx : sequence of int
        Integer factors ``(fz, fy, fx)``.
    launch : Launcher
        Runs the kernel: the CuPy RawModule launcher or the CPU emulator.
    xp : module
        Array module of the launcher's memory (:mod:`cupy` or :mod:`numpy`).
    threads_per_block, max_blocks : int
        Launch geometry; any values give the same result.

    Returns
    -------
    array of ``xp``
        Shape ``(nz // fz, ny // fy, nx // fx)``, same voxel type; see
        :func:`cpu_fallback.kernels.downsample_mean` for the arithmetic.
    """
    plan = plan_downsample_mean(volume_zyx.shape, volume_zyx.dtype, factors_zyx)
    src = xp.ascontiguousarray(xp.asarray(volume_zyx))
    dst = xp.empty(plan.out_shape, dtype=plan.dtype)
    grid, block = launch_config(dst.size, threads_per_block, max_blocks)
    _, ny, nx = plan.in_shape
    launch(SPEC_BY_DTYPE[plan.dtype], grid, block, (src, dst, ny, nx, *plan.out_shape, *plan.factors))
    return dst
