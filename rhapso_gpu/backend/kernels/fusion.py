"""Launch wrapper of ``fuse_block.cu``: packing of the view regions, launch geometry, arguments.

Written once for every launcher: the CuPy backend passes its RawModule
launcher and :mod:`cupy` (:func:`fuse_block_cupy`), CI passes the CPU emulator
and :mod:`numpy`. The input contract is
:func:`cpu_fallback.fusion.plan_fuse_block`, shared with the NumPy twin
:func:`cpu_fallback.fusion.fuse_block`.
"""

from __future__ import annotations

from types import ModuleType

from cpu_fallback.fusion import FusionView, plan_fuse_block
from rhapso_gpu.backend.kernels.downsample import MAX_BLOCKS, THREADS_PER_BLOCK, launch_config
from rhapso_gpu.backend.kernels.spec import KernelSpec, Launcher, Param

SOURCE = "fuse_block.cu"

FUSE_BLOCK_SPEC = KernelSpec(
    source=SOURCE,
    name="fuse_block_f32",
    params=(
        Param("const float*", "data"),
        Param("const long long*", "layout"),
        Param("const float*", "geometry"),
        Param("float*", "out"),
        Param("int", "n_views"),
        Param("int", "fusion"),
        Param("long long", "oz"),
        Param("long long", "oy"),
        Param("long long", "ox"),
    ),
)

SPECS = (FUSE_BLOCK_SPEC,)


def run_fuse_block(
    out_shape_zyx,
    fusion_type: str,
    views: list[FusionView],
    *,
    launch: Launcher,
    xp: ModuleType,
    threads_per_block: int = THREADS_PER_BLOCK,
    max_blocks: int = MAX_BLOCKS,
):
    """Fuse one output block with the ``fuse_block.cu`` kernel.

    Parameters
    ----------
    out_shape_zyx : tuple of int
        Block shape (z, y, x) in output voxels.
    fusion_type : str
        One of :data:`cpu_fallback.fusion.FUSION_TYPES`.
    views : list of FusionView
        Regions may be host or ``xp`` arrays of any real type (converted to float32).
    launch : Launcher
        The CuPy RawModule launcher or the CPU emulator.
    xp : module
        Array module of the launcher's memory.
    threads_per_block, max_blocks : int
        Launch geometry; any values give the same result.

    Returns
    -------
    array of ``xp``
        float32 block of shape ``out_shape_zyx``.
    """
    plan = plan_fuse_block(out_shape_zyx, fusion_type, views)
    data = xp.empty(max(1, plan.n_region_voxels), dtype=xp.float32)
    for v, (offset, nx, ny, nz) in zip(views, plan.layout):
        data[int(offset) : int(offset + nx * ny * nz)] = xp.asarray(v.region_zyx, dtype=xp.float32).ravel()
    out = xp.empty(plan.out_shape_zyx, dtype=xp.float32)
    grid, block = launch_config(out.size, threads_per_block, max_blocks)
    args = (
        data,
        xp.asarray(plan.layout),
        xp.asarray(plan.geometry),
        out,
        plan.n_views,
        plan.fusion_code,
        *plan.out_shape_zyx,
    )
    launch(FUSE_BLOCK_SPEC, grid, block, args)
    return out


def fuse_block_cupy(out_shape_zyx, fusion_type: str, views: list[FusionView]):
    """The ``fuse_block`` kernel on the current GPU; see :func:`cpu_fallback.fusion.fuse_block`."""
    import cupy

    from rhapso_gpu.backend import cupy_backend

    return run_fuse_block(out_shape_zyx, fusion_type, views, launch=cupy_backend.launch, xp=cupy)
