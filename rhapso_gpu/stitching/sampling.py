"""Resample a view into a world-space grid with its current registration.

A grid is an axis-aligned box of world space (xyz, isotropic pixels) sampled
every ``spacing_xyz``; grid index ``(k, j, i)`` (zyx) lies at world
``origin + spacing * (i, j, k)``. Both views of a pair are sampled on the
same grid, so their images differ only by the registration error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhapso_gpu.geometry import view_affine
from rhapso_gpu.io.images import PyramidLevel, open_view_levels
from rhapso_gpu.io.spimdata import SpimData, ViewId


@dataclass(frozen=True)
class WorldGrid:
    """A world-space sampling grid.

    Attributes
    ----------
    origin_xyz : ndarray, shape (3,)
        World position of grid index 0.
    spacing_xyz : ndarray, shape (3,)
        World distance between grid points.
    shape_zyx : tuple of int
    """

    origin_xyz: np.ndarray
    spacing_xyz: np.ndarray
    shape_zyx: tuple[int, int, int]

    @classmethod
    def covering(cls, min_xyz, max_xyz, spacing_xyz) -> WorldGrid:
        """The grid from ``min_xyz`` with at least the extent of the box ``[min, max]``."""
        lo, hi = np.asarray(min_xyz, float), np.asarray(max_xyz, float)
        spacing = np.asarray(spacing_xyz, float)
        n = np.maximum(np.floor((hi - lo) / spacing + 1e-9).astype(np.int64) + 1, 1)
        return cls(lo, spacing, tuple(int(v) for v in n[::-1]))

    @property
    def to_world(self) -> np.ndarray:
        """4x4 affine from grid index (xyz) to world (xyz)."""
        m = np.diag(np.append(self.spacing_xyz, 1.0))
        m[:3, 3] = self.origin_xyz
        return m


def choose_level(levels: list[PyramidLevel], downsampling_xyz) -> PyramidLevel:
    """The coarsest pyramid level whose factors do not exceed ``downsampling`` on any axis."""
    want = np.asarray(downsampling_xyz, float) + 1e-9
    fitting = [lv for lv in levels if np.all(np.asarray(lv.factors_xyz) <= want)]
    return max(fitting or levels[:1], key=lambda lv: float(np.prod(lv.factors_xyz)))


def sample_view(backend, spim: SpimData, view: ViewId, grid: WorldGrid, downsampling_xyz, storage_options=None):
    """The view's image and its footprint on ``grid`` (trilinear, current registration).

    Parameters
    ----------
    backend : rhapso_gpu.backend.Backend
    spim : SpimData
    view : ViewId
    grid : WorldGrid
    downsampling_xyz : sequence of int
        Read the coarsest pyramid level not coarser than this (full-resolution pixels).
    storage_options : dict, optional
        fsspec options for remote images.

    Returns
    -------
    image : array, zyx, float32
        0 outside the view.
    mask : array of bool, zyx
        Grid points inside the view.
    """
    xp = backend.xp
    level = choose_level(open_view_levels(spim, view, storage_options), downsampling_xyz)
    # grid index (xyz) -> level pixel (xyz)
    grid_to_level = np.linalg.inv(view_affine(spim, view) @ level.mipmap_xyz) @ grid.to_world
    corners = np.array([[i, j, k, 1.0] for i in (0, grid.shape_zyx[2] - 1)
                        for j in (0, grid.shape_zyx[1] - 1) for k in (0, grid.shape_zyx[0] - 1)])
    local = (corners @ grid_to_level.T)[:, :3]
    size_xyz = np.asarray(level.data_zyx.shape[::-1])
    lo = np.clip(np.floor(local.min(axis=0)).astype(np.int64) - 1, 0, size_xyz)
    hi = np.clip(np.ceil(local.max(axis=0)).astype(np.int64) + 2, 0, size_xyz)
    if np.any(hi - lo < 1):
        empty = xp.zeros(grid.shape_zyx, dtype=xp.float32)
        return empty, empty.astype(bool)
    region = level.read_region_zyx(tuple(slice(int(a), int(b)) for a, b in zip(lo[::-1], hi[::-1])))
    region = backend.asarray(region, xp.float32)
    # zyx form of the affine, relative to the region read
    perm = [2, 1, 0]
    matrix = grid_to_level[:3, :3][np.ix_(perm, perm)]
    offset = (grid_to_level[:3, 3] - lo)[perm]
    ndi = backend.ndimage
    image = ndi.affine_transform(region, backend.asarray(matrix), offset=tuple(offset), output_shape=grid.shape_zyx,
                                 order=1, mode="constant", cval=0.0)
    # inside the view: level coordinates within its pixel centres [0, size - 1]
    inside = xp.ones(grid.shape_zyx, dtype=bool)
    i, j, k = (xp.arange(n, dtype=xp.float64) for n in grid.shape_zyx[::-1])
    for a in range(3):
        m = grid_to_level[a]
        coord = m[3] + m[0] * i[None, None, :] + m[1] * j[None, :, None] + m[2] * k[:, None, None]
        inside &= (coord >= -1e-6) & (coord <= size_xyz[a] - 1 + 1e-6)
    return image, inside
