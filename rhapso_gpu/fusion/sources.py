"""Per view: which pyramid level to read, its blending geometry, and the crop a block needs.

All affines are 4x4 in xyz. A view's *level pixel* coordinates are those of
the chosen pyramid level; ``level_to_output`` maps them to output voxel
indices through the level's mipmap transform (scale ``f``, translation
``(f - 1) / 2``), the view's registration and the inverse of the output grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cpu_fallback.fusion import FusionView
from rhapso_gpu.geometry import apply_affine, box_corners, view_affine
from rhapso_gpu.io.images import PyramidLevel
from rhapso_gpu.io.spimdata import SpimData, ViewId

LEVEL_TOLERANCE = 1.02
"""A level is fine enough when each of its pixel steps spans at most this many output voxels
(or no more than the full-resolution step does), as BigStitcher's ``acceptedError`` 0.02."""


@dataclass(frozen=True)
class ViewSource:
    """One view as the fusion reads it.

    Attributes
    ----------
    view : ViewId
    level : int
        Pyramid level read.
    image : PyramidLevel
        That level, opened once when planning: the lazy image whose reader the block tasks read
        from (each worker process opens its files once, :mod:`rhapso_gpu.io.reader_cache`).
    level_size_xyz : numpy.ndarray
        Size of that level in pixels (xyz).
    output_to_level : numpy.ndarray
        4x4: output voxel index -> level pixel (xyz).
    support_lo_xyz, support_hi_xyz : numpy.ndarray
        Inclusive support in level pixels: the level minus the blending border.
    blend_xyz : numpy.ndarray
        Cosine-ramp width in level pixels (xyz).
    """

    view: ViewId
    level: int
    image: PyramidLevel
    level_size_xyz: np.ndarray
    output_to_level: np.ndarray
    support_lo_xyz: np.ndarray
    support_hi_xyz: np.ndarray
    blend_xyz: np.ndarray


@dataclass(frozen=True)
class BlockRead:
    """What one block reads from one view.

    Attributes
    ----------
    source : ViewSource
    crop_lo_xyz, crop_hi_xyz : numpy.ndarray
        Inclusive pixel range (xyz) of the level to read.
    block_to_region : numpy.ndarray
        3x4: block-local output voxel (xyz) -> pixel of the crop (xyz).
    """

    source: ViewSource
    crop_lo_xyz: np.ndarray
    crop_hi_xyz: np.ndarray
    block_to_region: np.ndarray

    @property
    def slices_zyx(self) -> tuple[slice, slice, slice]:
        return tuple(slice(int(a), int(b) + 1) for a, b in zip(self.crop_lo_xyz[::-1], self.crop_hi_xyz[::-1]))

    def read(self) -> np.ndarray:
        """Read the crop now: (z, y, x), native dtype (see :meth:`PyramidLevel.read_region_zyx`)."""
        return self.source.image.read_region_zyx(self.slices_zyx)

    def fusion_view(self, region_zyx) -> FusionView:
        """The kernel's input for this view, given the crop's pixels."""
        return FusionView(
            region_zyx,
            self.block_to_region,
            self.source.support_lo_xyz - self.crop_lo_xyz,
            self.source.support_hi_xyz - self.crop_lo_xyz,
            self.source.blend_xyz,
        )


def _steps(level_to_output: np.ndarray) -> np.ndarray:
    """Output voxels spanned by one level pixel along each level axis (xyz): column norms."""
    return np.linalg.norm(level_to_output[:3, :3], axis=0)


def choose_level(levels: list[PyramidLevel], full_to_output: np.ndarray) -> int:
    """The coarsest level still fine enough for the output (see :data:`LEVEL_TOLERANCE`).

    Parameters
    ----------
    levels : list of PyramidLevel
        The view's pyramid, level 0 first.
    full_to_output : numpy.ndarray
        4x4: full-resolution pixel -> output voxel (xyz).
    """
    full_steps = _steps(full_to_output)
    best, best_volume = 0, 1.0
    for level in levels:
        steps = _steps(full_to_output @ level.mipmap_xyz)
        fine = (steps <= LEVEL_TOLERANCE) | (steps <= full_steps * LEVEL_TOLERANCE)
        volume = float(np.prod(level.factors_xyz))
        if np.all(fine) and volume > best_volume:
            best, best_volume = level.index, volume
    return best


def view_source(
    spim: SpimData,
    view: ViewId,
    levels: list[PyramidLevel],
    output_to_world: np.ndarray,
    blending_range: float,
    blending_border: float,
) -> ViewSource:
    """Plan how the fusion reads ``view``: level, geometry, blending in level pixels.

    Blending range and border are given in output voxels and divided per axis
    by the level pixel's extent in output voxels (BigStitcher's ``adjustBlending``:
    40 output pixels become 8 pixels along a 5x anisotropic z).
    """
    full_to_output = np.linalg.inv(output_to_world) @ view_affine(spim, view)
    index = choose_level(levels, full_to_output)
    level = levels[index]
    level_to_output = full_to_output @ level.mipmap_xyz
    steps = _steps(level_to_output)
    size_xyz = np.asarray(level.data_zyx.shape[::-1], dtype=float)
    border = blending_border / steps
    return ViewSource(
        view=view,
        level=index,
        image=level,
        level_size_xyz=size_xyz.astype(np.int64),
        output_to_level=np.linalg.inv(level_to_output),
        support_lo_xyz=border,
        support_hi_xyz=size_xyz - 1.0 - border,
        blend_xyz=blending_range / steps,
    )


def block_read(source: ViewSource, start_xyz, stop_xyz) -> BlockRead | None:
    """The crop of ``source`` that output voxels ``[start, stop)`` (xyz) need, or None if they miss its support.

    The crop holds the trilinear neighbours of every voxel inside the support
    (the block's level-pixel bounding box plus one pixel, clipped to the level).
    """
    start = np.asarray(start_xyz, dtype=float)
    corners = apply_affine(source.output_to_level, box_corners(start, np.asarray(stop_xyz, dtype=float) - 1))
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    if np.any(hi < source.support_lo_xyz) or np.any(lo > source.support_hi_xyz):
        return None
    last = source.level_size_xyz - 1
    crop_lo = np.clip(np.floor(lo).astype(np.int64) - 1, 0, last)
    crop_hi = np.clip(np.ceil(hi).astype(np.int64) + 1, 0, last)
    to_crop = np.eye(4)
    to_crop[:3, 3] = -crop_lo
    from_block = np.eye(4)
    from_block[:3, 3] = start
    block_to_region = (to_crop @ source.output_to_level @ from_block)[:3, :]
    return BlockRead(source, crop_lo, crop_hi, block_to_region)
