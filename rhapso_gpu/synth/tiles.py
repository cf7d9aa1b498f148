"""A grid of tiles with nominal and true poses, and how a tile is imaged.

Conventions
-----------
* Poses are 4x4 affines (xyz) from a tile's full-resolution **local pixel**
  coordinates to **world** coordinates (isotropic pixels, BigStitcher's world).
* The *nominal* pose is what the microscope reports (calibration, then a
  regular-grid translation); it is what ``dataset.xml`` holds. The *true* pose
  is the nominal one perturbed by seeded errors; the images are rendered with
  it, and registration has to recover it.
* Images are **zyx** arrays.

Imaging a tile (:func:`render_tile_from`) is shared by every specimen type: a
*world source* renders a raster covering a requested world box, each tile
pixel samples it trilinearly at ``world = true @ local``, and the tile is
blurred by a PSF in tile pixel space, scaled to photons, offset by a
background and given Poisson noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine, box_corners
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.synth.specimen import Specimen, render_region

#: A world source: ``source(min_xyz, max_xyz) -> (raster_zyx, index_to_world_xyz)``. It returns a raster
#: (on the backend's device) covering the world box and the 4x4 affine (xyz) from its pixel indices to
#: world; world points outside the raster sample as 0.
WorldSource = Callable[[np.ndarray, np.ndarray], tuple[object, np.ndarray]]

_TRUNCATE = 4.0


@dataclass
class TilePlan:
    """One tile of a grid.

    Attributes
    ----------
    view : ViewId
    grid_index_xyz : tuple of 3 ints
        Position in the grid (xyz).
    size_xyz : tuple of 3 ints
        Tile size in pixels (xyz).
    voxel_size_xyz : tuple of 3 floats
        Voxel size (xyz, e.g. µm).
    nominal_xyz : ndarray, shape (4, 4)
        Nominal pose, local px -> world (calibration then grid translation).
    true_xyz : ndarray, shape (4, 4)
        True pose, local px -> world, used for rendering.
    """

    view: ViewId
    grid_index_xyz: tuple[int, int, int]
    size_xyz: tuple[int, int, int]
    voxel_size_xyz: tuple[float, float, float]
    nominal_xyz: np.ndarray
    true_xyz: np.ndarray


def calibration_xyz(voxel_size_xyz) -> np.ndarray:
    """BigStitcher's calibration (4x4, xyz): ``diag(voxel_d / min(voxel))``."""
    v = np.asarray(voxel_size_xyz, dtype=np.float64)
    return np.diag(np.append(v / v.min(), 1.0))


def translation_xyz(t_xyz) -> np.ndarray:
    """A 4x4 translation (xyz)."""
    m = np.eye(4)
    m[:3, 3] = t_xyz
    return m


def plan_grid(
    tiles_xyz=(3, 3, 1),
    tile_size_xyz=(128, 128, 64),
    overlap: float = 0.15,
    voxel_size_xyz=(1.0, 1.0, 2.0),
    translation_error: float = 5.0,
    rotation_error_deg: float = 0.0,
    affine_error: float = 0.0,
    seed: int = 0,
    grid_origin_xyz=(0.0, 0.0, 0.0),
) -> list[TilePlan]:
    """Plan a regular grid of tiles with seeded pose errors.

    Parameters
    ----------
    tiles_xyz : 3 ints
        Number of tiles along x, y, z. Setup ids run x fastest, then y, then z;
        every tile is at time point 0.
    tile_size_xyz : 3 ints
        Tile size in pixels (xyz).
    overlap : float
        Overlap of neighbouring tiles as a fraction of the tile's world extent
        ``size * calibration``: the grid step is ``(1 - overlap)`` of it.
    voxel_size_xyz : 3 floats
        Voxel size; world units are ``min(voxel_size_xyz)``.
    translation_error : float
        Each true pose is translated by a uniform error in
        ``[-translation_error, translation_error]`` world px per axis.
    rotation_error_deg : float
        Rotation about the tile centre by a uniform angle in ``[-r, r]`` degrees
        about a random axis.
    affine_error : float
        Shear/scale about the tile centre: ``I + U(-a, a)`` on each of the nine
        linear entries.
    seed : int
        Each tile's errors are drawn from ``SeedSequence([seed, setup])``, so a
        tile's errors do not depend on the grid size.
    grid_origin_xyz : 3 floats
        World position of the first tile's pixel ``(0, 0, 0)``.

    Returns
    -------
    list of TilePlan
        ``true = T(error) @ T(c) @ R @ A @ T(-c) @ nominal`` where ``c`` is the
        tile's nominal world centre and ``nominal = T(grid) @ calibration``.
    """
    n_xyz = np.asarray(tiles_xyz, dtype=np.int64)
    size = np.asarray(tile_size_xyz, dtype=np.int64)
    if n_xyz.shape != (3,) or np.any(n_xyz < 1):
        raise UserError(f"tiles_xyz {tuple(tiles_xyz)} must be three counts >= 1")
    if size.shape != (3,) or np.any(size < 1):
        raise UserError(f"tile_size_xyz {tuple(tile_size_xyz)} must be three sizes >= 1")
    if not 0.0 <= overlap < 1.0:
        raise UserError(f"overlap {overlap} must be in [0, 1)")
    if np.any(np.asarray(voxel_size_xyz, dtype=np.float64) <= 0):
        raise UserError(f"voxel_size_xyz {tuple(voxel_size_xyz)} must be positive")
    cal = calibration_xyz(voxel_size_xyz)
    step_xyz = (1.0 - overlap) * size * np.diag(cal)[:3]
    centre_local = (size - 1) / 2.0
    plans = []
    for setup, (k, j, i) in enumerate(np.ndindex(*n_xyz[::-1])):
        index = (i, j, k)
        nominal = translation_xyz(np.asarray(grid_origin_xyz, dtype=np.float64) + step_xyz * index) @ cal
        rng = np.random.default_rng(np.random.SeedSequence([seed, setup]))
        error = rng.uniform(-translation_error, translation_error, size=3)
        rotation = _rotation(rng, rotation_error_deg)
        linear = np.eye(4)
        linear[:3, :3] += rng.uniform(-affine_error, affine_error, size=(3, 3))
        c = apply_affine(nominal, centre_local[None])[0]
        true = translation_xyz(error + c) @ rotation @ linear @ translation_xyz(-c) @ nominal
        plans.append(
            TilePlan(
                view=ViewId(0, setup),
                grid_index_xyz=index,
                size_xyz=tuple(int(s) for s in size),
                voxel_size_xyz=tuple(float(v) for v in voxel_size_xyz),
                nominal_xyz=nominal,
                true_xyz=true,
            )
        )
    return plans


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A 4x4 rotation by a uniform angle in [-max_deg, max_deg] about a random axis (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)
    return m


def nominal_transforms(plan: TilePlan) -> list[tuple[str, np.ndarray]]:
    """The nominal pose as BigStitcher ViewTransforms in XML order.

    Returns
    -------
    list of (str, ndarray (3, 4))
        ``[("Translation to Regular Grid", T), ("calibration", C)]``; the first
        listed is applied last, so ``compose([T, C]) == plan.nominal_xyz``.
    """
    cal = calibration_xyz(plan.voxel_size_xyz)
    grid = plan.nominal_xyz @ np.linalg.inv(cal)
    return [("Translation to Regular Grid", grid[:3, :].copy()), ("calibration", cal[:3, :].copy())]


def true_box_world(plan: TilePlan) -> tuple[np.ndarray, np.ndarray]:
    """World bounding box ``(min_xyz, max_xyz)`` of the tile's pixel centres under its true pose."""
    corners = apply_affine(plan.true_xyz, box_corners(np.zeros(3), np.asarray(plan.size_xyz) - 1))
    return corners.min(axis=0), corners.max(axis=0)


def plan_extent(plans: list[TilePlan], margin: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """World box (xyz) covering every tile's true box plus ``margin`` world px: where to generate a specimen."""
    boxes = [true_box_world(p) for p in plans]
    lo = np.min([b[0] for b in boxes], axis=0) - margin
    hi = np.max([b[1] for b in boxes], axis=0) + margin
    return lo, hi


def bead_ground_truth(specimen: Specimen) -> np.ndarray:
    """All bead centres (N, 3) in world xyz."""
    return specimen.beads_xyz.copy()


def world_to_local(plan: TilePlan, points_xyz: np.ndarray) -> np.ndarray:
    """Map world points (N, 3) xyz to the tile's local pixel coordinates (xyz) with the true pose."""
    return apply_affine(np.linalg.inv(plan.true_xyz), points_xyz)


def beads_in_tile(specimen: Specimen, plan: TilePlan, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Beads that lie inside a tile.

    Parameters
    ----------
    margin : float
        Keep beads at least this many tile pixels inside ``[0, size - 1]``.

    Returns
    -------
    indices : ndarray (M,)
        Rows of :func:`bead_ground_truth`.
    local_xyz : ndarray (M, 3)
        Their local pixel coordinates (xyz), ``inv(true) @ world``.
    """
    local = world_to_local(plan, specimen.beads_xyz)
    inside = np.all((local >= margin) & (local <= np.asarray(plan.size_xyz) - 1 - margin), axis=1)
    return np.flatnonzero(inside), local[inside]


def tile_seed(base: int, view: ViewId) -> np.random.SeedSequence:
    """The noise seed of one tile: independent of every other tile."""
    return np.random.SeedSequence([int(base), view.timepoint, view.setup])


def specimen_source(specimen: Specimen, backend) -> WorldSource:
    """A :data:`WorldSource` rendering the specimen on whole world pixels with :func:`render_region`."""

    def source(min_xyz, max_xyz):
        origin = np.floor(min_xyz).astype(np.int64)
        shape_zyx = (np.ceil(max_xyz).astype(np.int64) - origin + 1)[::-1]
        return render_region(specimen, origin, shape_zyx, backend), translation_xyz(origin)

    return source


def render_tile(specimen: Specimen, plan: TilePlan, backend, seed: int | None = None, **imaging) -> np.ndarray:
    """Image one tile of a synthetic specimen (zyx, uint16).

    ``imaging`` takes the keyword arguments of :func:`render_tile_from`
    (``psf_sigma_xyz``, ``background``, ``photons``, ``noise``,
    ``max_region_voxels``). ``seed`` defaults to ``specimen.seed``; the noise of
    each tile comes from :func:`tile_seed` ``(seed, plan.view)``, so a tile is
    the same whether it is rendered alone or with the others.
    """
    seed = specimen.seed if seed is None else seed
    return render_tile_from(specimen_source(specimen, backend), plan, backend, seed=seed, **imaging)


def render_tile_from(
    source: WorldSource,
    plan: TilePlan,
    backend,
    psf_sigma_xyz=(1.0, 1.0, 0.7),
    background: float = 100.0,
    photons: float = 2000.0,
    noise: bool = True,
    seed: int = 0,
    max_region_voxels: int = 2**24,
) -> np.ndarray:
    """Image one tile from a world source.

    For every tile pixel, ``world = plan.true_xyz @ local`` samples the source
    trilinearly; the samples are blurred by the PSF in tile pixel space (the
    tile is sampled with a halo of the PSF radius, so its edges see real
    content), scaled by ``photons``, offset by ``background`` and, with
    ``noise``, drawn from a Poisson distribution; the counts are rounded and
    clipped to uint16.

    Parameters
    ----------
    source : WorldSource
    plan : TilePlan
    backend : Backend
        Sampling and blurring run on it; noise runs on the host (NumPy), so a
        seed gives the same noise on every backend.
    psf_sigma_xyz : 3 floats
        PSF Gaussian sigma in tile pixels (xyz); 0 disables an axis.
    background : float
        Counts added everywhere.
    photons : float
        Counts for a specimen value of 1 (about a bright bead's peak before the PSF).
    noise : bool
        Poisson noise on (counts) when True.
    seed : int
        Base seed; the tile's noise uses :func:`tile_seed` ``(seed, plan.view)``.
    max_region_voxels : int
        Render the tile in z-slabs whose world regions hold about this many
        voxels, bounding memory for large or rotated tiles.

    Returns
    -------
    numpy.ndarray, shape ``size_xyz[::-1]`` (zyx), uint16
    """
    size_xyz = np.asarray(plan.size_xyz, dtype=np.int64)
    sigma_xyz = np.asarray(psf_sigma_xyz, dtype=np.float64)
    halo_xyz = np.array([int(_TRUNCATE * s + 0.5) if s > 0 else 0 for s in sigma_xyz])
    full_lo, full_hi = _sample_box(plan, -halo_xyz, size_xyz - 1 + halo_xyz)
    n_slabs = int(np.clip(np.ceil(np.prod(full_hi - full_lo + 1) / max_region_voxels), 1, size_xyz[2]))
    planes = int(np.ceil(size_xyz[2] / n_slabs))

    signal = np.empty(size_xyz[::-1], dtype=np.float32)
    for z0 in range(0, int(size_xyz[2]), planes):
        z1 = min(z0 + planes, int(size_xyz[2]))
        start_xyz = np.array([-halo_xyz[0], -halo_xyz[1], z0 - halo_xyz[2]])
        stop_xyz = np.array([size_xyz[0] + halo_xyz[0], size_xyz[1] + halo_xyz[1], z1 + halo_xyz[2]])
        slab = _sample_source(source, plan, start_xyz, stop_xyz, backend)
        if np.any(sigma_xyz > 0):
            slab = backend.ndimage.gaussian_filter(slab, tuple(sigma_xyz[::-1]), mode="constant", truncate=_TRUNCATE)
        hz, hy, hx = halo_xyz[::-1]
        signal[z0:z1] = backend.to_host(slab[hz : slab.shape[0] - hz, hy : slab.shape[1] - hy, hx : slab.shape[2] - hx])

    counts = signal.astype(np.float64) * photons + background
    if noise:
        counts = np.random.default_rng(tile_seed(seed, plan.view)).poisson(np.maximum(counts, 0.0)).astype(np.float64)
    return np.clip(np.rint(counts), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _sample_box(plan: TilePlan, start_xyz, last_xyz) -> tuple[np.ndarray, np.ndarray]:
    """World box of local pixels ``[start, last]`` under the true pose, padded for trilinear sampling."""
    corners = apply_affine(plan.true_xyz, box_corners(start_xyz, last_xyz))
    return np.floor(corners.min(axis=0)) - 1, np.ceil(corners.max(axis=0)) + 1


def _sample_source(source: WorldSource, plan: TilePlan, start_xyz, stop_xyz, backend):
    """Trilinear samples (float32, zyx) of the source at local pixels ``[start, stop)`` (xyz) of the tile."""
    raster, index_to_world = source(*_sample_box(plan, start_xyz, np.asarray(stop_xyz) - 1))
    # output index (xyz) -> local -> world -> raster index
    a = np.linalg.inv(index_to_world) @ plan.true_xyz @ translation_xyz(start_xyz)
    matrix_zyx = a[:3, :3][::-1, ::-1]
    offset_zyx = a[:3, 3][::-1]
    shape_zyx = tuple(int(n) for n in (np.asarray(stop_xyz) - start_xyz)[::-1])
    return backend.ndimage.affine_transform(
        raster,
        backend.asarray(np.ascontiguousarray(matrix_zyx)),
        offset=tuple(offset_zyx),
        output_shape=shape_zyx,
        order=1,
        mode="constant",
        cval=0.0,
    )
