"""The output grid of a fusion and its blocks.

World coordinates are BigStitcher's (isotropic pixels of the smallest voxel
dimension). Output voxel ``(i, j, k)`` (xyz) sits at world
``min_xyz + step_xyz * (i, j, k)``: ``step`` is the output downsampling on
every axis, times the anisotropy factor on z when anisotropy is preserved.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import view_box_world
from rhapso_gpu.io.spimdata import SpimData, ViewId


@dataclass(frozen=True)
class OutputGrid:
    """Where the output voxels are in world space.

    Attributes
    ----------
    min_world_xyz : numpy.ndarray
        World position (xyz) of output voxel 0.
    step_world_xyz : numpy.ndarray
        World pixels per output voxel (xyz).
    shape_zyx : tuple of int
        Output size (z, y, x) in voxels.
    """

    min_world_xyz: np.ndarray
    step_world_xyz: np.ndarray
    shape_zyx: tuple[int, int, int]

    @property
    def output_to_world(self) -> np.ndarray:
        """4x4 affine (xyz): output voxel index -> world."""
        m = np.diag(np.append(self.step_world_xyz, 1.0))
        m[:3, 3] = self.min_world_xyz
        return m


def anisotropy_of(spim: SpimData, views: list[ViewId]) -> float:
    """BigStitcher's anisotropy factor: mean over views of ``z / ((x + y) / 2)`` voxel size."""
    ratios = []
    for v in views:
        vs = spim.setup(v).voxel_size
        if vs is None:
            raise UserError(f"{spim.location or 'dataset'}: setup {v.setup} has no <voxelSize> (needed for anisotropy)")
        x, y, z = vs.size_xyz
        ratios.append(z / ((x + y) / 2.0))
    return float(np.mean(ratios))


def bounding_box(spim: SpimData, views: list[ViewId], name: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive world box ``(min_xyz, max_xyz)`` (integers): the named XML box, or all views' boxes."""
    if name is not None:
        for box in spim.bounding_boxes:
            if box.name == name:
                return np.asarray(box.min_xyz, float), np.asarray(box.max_xyz, float)
        known = ", ".join(b.name for b in spim.bounding_boxes) or "none"
        raise UserError(f"{spim.location or 'dataset'}: no <BoundingBox> named '{name}' (known: {known})")
    boxes = [view_box_world(spim, v) for v in views]
    lo = np.floor(np.min([b[0] for b in boxes], axis=0))
    hi = np.ceil(np.max([b[1] for b in boxes], axis=0))
    return lo, hi


def make_grid(min_xyz, max_xyz, downsampling: int = 1, anisotropy: float = 1.0) -> OutputGrid:
    """The output grid covering the inclusive world box with the given steps.

    Parameters
    ----------
    min_xyz, max_xyz : array_like
        Inclusive world box.
    downsampling : int
        World pixels per output voxel on every axis.
    anisotropy : float
        Extra factor on the z step (1 = isotropic output).
    """
    lo, hi = np.asarray(min_xyz, float), np.asarray(max_xyz, float)
    if np.any(hi < lo):
        raise UserError(f"bounding box is empty: min {lo.tolist()} > max {hi.tolist()}")
    step = np.array([downsampling, downsampling, downsampling * anisotropy], dtype=float)
    size_xyz = np.floor((hi - lo) / step + 1e-9).astype(np.int64) + 1
    return OutputGrid(lo, step, tuple(int(n) for n in size_xyz[::-1]))


@dataclass(frozen=True)
class Block:
    """One task's output block: a whole number of chunks (the last one per axis may be cut by the volume).

    Attributes
    ----------
    index_zyx : tuple of int
        Block index (z, y, x).
    start_zyx, stop_zyx : tuple of int
        Output voxel range ``[start, stop)`` (z, y, x).
    """

    index_zyx: tuple[int, int, int]
    start_zyx: tuple[int, int, int]
    stop_zyx: tuple[int, int, int]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.start_zyx, self.stop_zyx))

    @property
    def slices_zyx(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.start_zyx, self.stop_zyx))


def blocks(shape_zyx, block_zyx) -> list[Block]:
    """Tile ``shape_zyx`` with blocks of ``block_zyx`` voxels, z slowest."""
    counts = [-(-int(n) // int(b)) for n, b in zip(shape_zyx, block_zyx)]
    out = []
    for idx in itertools.product(*(range(c) for c in counts)):
        start = tuple(i * int(b) for i, b in zip(idx, block_zyx))
        stop = tuple(min(s + int(b), int(n)) for s, b, n in zip(start, block_zyx, shape_zyx))
        out.append(Block(tuple(idx), start, stop))
    return out
