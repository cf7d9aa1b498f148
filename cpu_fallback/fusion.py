"""CPU twin of the ``fuse_block`` CUDA kernel, and the contract both share.

One call fuses one output block from the views that overlap it. Each view
comes as a float32 *region* (a crop of one pyramid level of the view, axis
order z, y, x) and its geometry, all in region pixel coordinates (xyz):

* ``block_to_region_xyz``: 3x4 affine from a block-local output voxel index
  ``(x, y, z)`` to region pixel coordinates ``(x, y, z)``;
* ``support_lo_xyz``/``support_hi_xyz``: the view's support (BigStitcher's
  ``b0``/``b3``: the level image minus the blending border), in region pixels;
* ``blend_xyz``: width of the cosine ramp in region pixels (0 = hard edge).

Per output voxel and view: the region position ``p = A @ (x, y, z, 1)``
(float32, evaluated as ``((a0*x + a1*y) + a2*z) + a3``); the view *covers* the
voxel when ``lo <= p <= hi`` on every axis; its blending weight is
``w = (wx * wy) * wz`` with ``w_d = fn(min(p - lo, hi - p) / blend)`` inside
the ramp and 1 beyond it, ``fn(t) = (cos((1 - t) * pi) + 1) / 2`` read from
BigStitcher's 31-entry table (:data:`BLEND_LUT`) with linear interpolation;
its value is the trilinear interpolation of the region with border extension
(positions clamped to the region), in float32. Fusion types:

``avg``                 mean over covering views
``avg-blend``           sum(w * v) / sum(w) (0 where sum(w) = 0)
``max``                 maximum over covering views
``lowest-view-wins``    the first covering view (views come in ViewId order)
``highest-view-wins``   the last covering view
``closest-pixel-wins``  the view with the largest weight w > 0 (first on ties)

Voxels no view covers are 0. The twin runs the same per-voxel arithmetic as the
kernel, compiled by numba (:mod:`cpu_fallback._fusion_numba`, one thread: the
scheduler runs blocks in parallel), one output row and one view at a time in
vectorised loops, so no coordinate grid is ever stored. Regions of one common
8- or 16-bit integer type are packed for it as they are (read as float32 in the
loop, which is exact) instead of as a float32 copy, halving the packed bytes.
An independent vectorised NumPy/SciPy statement of the contract is kept as the
reference in ``tests/test_fusion_kernel.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError

FUSION_TYPES = ("avg", "avg-blend", "max", "lowest-view-wins", "highest-view-wins", "closest-pixel-wins")
"""Fusion types; the kernel receives the index into this tuple."""

BLEND_LUT_STEPS = 30
BLEND_LUT = ((np.cos((1 - np.arange(BLEND_LUT_STEPS + 1) / BLEND_LUT_STEPS) * np.pi) + 1) / 2).astype(np.float32)
"""BigStitcher's blending table: ``fn(i / 30)``, i = 0..30, in float32 (``fuse_block.cu`` holds the same values)."""


@dataclass(frozen=True)
class FusionView:
    """One view's input to :func:`fuse_block`.

    Attributes
    ----------
    region_zyx : numpy.ndarray
        Crop of the chosen pyramid level, axis order (z, y, x); converted to float32.
    block_to_region_xyz : numpy.ndarray, shape (3, 4)
        Block-local output voxel (x, y, z) -> region pixel (x, y, z).
    support_lo_xyz, support_hi_xyz : numpy.ndarray, shape (3,)
        Inclusive support of the view in region pixels (xyz).
    blend_xyz : numpy.ndarray, shape (3,)
        Cosine-ramp width in region pixels (xyz), >= 0.
    """

    region_zyx: object
    block_to_region_xyz: np.ndarray
    support_lo_xyz: np.ndarray
    support_hi_xyz: np.ndarray
    blend_xyz: np.ndarray


@dataclass(frozen=True)
class FusionBlockPlan:
    """A checked :func:`fuse_block` request, packed as the kernel reads it.

    Attributes
    ----------
    out_shape_zyx : tuple of int
        Block shape (z, y, x) in output voxels.
    fusion_code : int
        Index into :data:`FUSION_TYPES`.
    geometry : numpy.ndarray, shape (n_views, 21), float32
        Per view: the 3x4 affine (row-major), ``lo`` (xyz), ``hi`` (xyz), ``blend`` (xyz).
    region_shapes_zyx : tuple of tuple of int
        Shape of each region.
    layout : numpy.ndarray, shape (max(n_views, 1), 4), int64
        Per view: offset of its region in the concatenation of all regions
        (C order), then its size ``(nx, ny, nz)``.
    """

    out_shape_zyx: tuple[int, int, int]
    fusion_code: int
    geometry: np.ndarray
    region_shapes_zyx: tuple[tuple[int, int, int], ...]
    layout: np.ndarray

    @property
    def n_region_voxels(self) -> int:
        """Voxels of all regions together."""
        return int(sum(int(np.prod(s)) for s in self.region_shapes_zyx))

    @property
    def n_views(self) -> int:
        return len(self.region_shapes_zyx)


GEOMETRY_WIDTH = 21
"""float32 values per view in :attr:`FusionBlockPlan.geometry`."""

PACKED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32))
"""Region types :func:`fuse_block` packs as they are when all regions share one; others become float32."""


def packed_dtype(regions) -> np.dtype:
    """The dtype :func:`fuse_block` packs ``regions`` in: their common type if in :data:`PACKED_DTYPES`, else float32.

    Every value of these types is exactly a float32, so the fused result does not depend on the choice.
    """
    dtypes = {np.asarray(r).dtype for r in regions}
    if len(dtypes) == 1 and (dtype := dtypes.pop()) in PACKED_DTYPES:
        return dtype
    return np.dtype(np.float32)


def plan_fuse_block(out_shape_zyx, fusion_type: str, views: list[FusionView]) -> FusionBlockPlan:
    """Check a block-fusion request and pack its geometry (shared by the twin and the CUDA wrapper).

    Raises
    ------
    UserError
        On an unknown fusion type, a bad block shape, an empty or non-3-D
        region, or a negative blending width.
    """
    if fusion_type not in FUSION_TYPES:
        raise UserError(f"fusion type '{fusion_type}' is not one of {', '.join(FUSION_TYPES)}")
    out_shape = tuple(int(n) for n in out_shape_zyx)
    if len(out_shape) != 3 or min(out_shape) < 1:
        raise UserError(f"fuse_block: the block shape must be three positive sizes (z, y, x), got {out_shape}")
    geometry = np.zeros((len(views), GEOMETRY_WIDTH), dtype=np.float32)
    shapes = []
    for i, v in enumerate(views):
        shape = tuple(int(n) for n in v.region_zyx.shape)
        if len(shape) != 3 or min(shape) < 1:
            raise UserError(f"fuse_block: view {i}: the region must be a non-empty 3-D (z, y, x) array, got {shape}")
        blend = np.asarray(v.blend_xyz, dtype=np.float64)
        if np.any(blend < 0) or not np.all(np.isfinite(blend)):
            raise UserError(f"fuse_block: view {i}: blending widths must be finite and >= 0, got {blend.tolist()}")
        geometry[i, :12] = np.asarray(v.block_to_region_xyz, dtype=np.float64).reshape(3, 4).ravel()
        geometry[i, 12:15] = v.support_lo_xyz
        geometry[i, 15:18] = v.support_hi_xyz
        geometry[i, 18:21] = blend
        shapes.append(shape)
    layout = np.zeros((max(1, len(shapes)), 4), dtype=np.int64)
    offset = 0
    for i, (nz, ny, nx) in enumerate(shapes):
        layout[i] = (offset, nx, ny, nz)
        offset += nx * ny * nz
    if not shapes:
        geometry = np.zeros((1, GEOMETRY_WIDTH), dtype=np.float32)
    return FusionBlockPlan(out_shape, FUSION_TYPES.index(fusion_type), geometry, tuple(shapes), layout)


def fuse_block(out_shape_zyx, fusion_type: str, views: list[FusionView]) -> np.ndarray:
    """Fuse one output block on the CPU (twin of ``fuse_block.cu``; contract in the module docstring).

    Parameters
    ----------
    out_shape_zyx : tuple of int
        Block shape (z, y, x) in output voxels.
    fusion_type : str
        One of :data:`FUSION_TYPES`.
    views : list of FusionView
        The views overlapping the block, in ViewId order; regions are NumPy arrays of any real type
        (packed as :func:`packed_dtype` says).

    Returns
    -------
    numpy.ndarray
        float32 block of shape ``out_shape_zyx``; 0 where no view covers a voxel.
    """
    from cpu_fallback._fusion_numba import fuse_voxels

    plan = plan_fuse_block(out_shape_zyx, fusion_type, views)
    data = np.empty(max(1, plan.n_region_voxels), dtype=packed_dtype([v.region_zyx for v in views]))
    for v, shape, (offset, nx, ny, nz) in zip(views, plan.region_shapes_zyx, plan.layout):
        data[offset : offset + nx * ny * nz].reshape(shape)[...] = v.region_zyx
    out = np.empty(plan.out_shape_zyx, dtype=np.float32)
    fuse_voxels(data, plan.layout, plan.geometry, BLEND_LUT, out, plan.n_views, plan.fusion_code)
    return out
