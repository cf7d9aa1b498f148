"""A synthetic specimen in world space, rendered region by region.

Conventions
-----------
* World coordinates are **xyz** in isotropic pixels (the smallest voxel
  dimension), as in BigStitcher's ``calibration`` transform.
* Rasters are NumPy/CuPy arrays indexed **zyx**. A region raster with origin
  ``origin_xyz`` holds at index ``[k, j, i]`` the specimen at world point
  ``origin_xyz + (i, j, k)``.

Model
-----
Every object is a set of weighted points blurred by an isotropic Gaussian:

* **beads**: sub-pixel point sources (sigma ``bead_sigma``), the ground-truth
  points; a minimum distance keeps them apart;
* **blobs**: cell-like Gaussian blobs of several sizes (``blob_sigmas``);
* **tubes**: smooth random curves sampled every 0.5 px (sigma ``tube_sigma``).

A slowly varying brightness field (a few long plane waves) scales the weight of
every point at its position, so the field modulates the specimen without
moving any bead's centroid.

Rendering deposits the points with trilinear (splat) weights, which keeps
each point's first moment exact, and applies a truncated Gaussian blur. The
raster is padded by the blur radius, so a region is exact up to its edges and
two overlapping regions agree where they overlap. Wide blurs are rendered on a
coarser lattice that is aligned to the world origin (so that too is
region-independent) and interpolated linearly back to full resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.spatial import cKDTree

from rhapso_gpu.errors import UserError

CONTENTS = ("beads+tissue", "beads")

#: ``scipy.ndimage.gaussian_filter``'s default ``truncate``: the blur radius is ``int(4 sigma + 0.5)``.
_TRUNCATE = 4.0
#: Wide blurs run on a lattice coarsened by a power of two while the coarse sigma stays at least this.
_MIN_COARSE_SIGMA = 2.5
#: Spacing of the samples along a tube (world px).
TUBE_STEP = 0.5


@dataclass(frozen=True)
class PointLayer:
    """Weighted points that share one Gaussian blur.

    Attributes
    ----------
    name : str
        ``beads``, ``tubes`` or ``blobs_s<sigma>``.
    sigma : float
        Blur sigma in world px.
    points_xyz : ndarray, shape (N, 3)
        World positions (xyz), float64.
    weights : ndarray, shape (N,)
        Integrated intensity of each point (a weight of
        ``(2 pi)^1.5 sigma^3`` gives a peak of about 1).
    """

    name: str
    sigma: float
    points_xyz: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class Specimen:
    """A deterministic specimen filling a world box.

    Attributes
    ----------
    min_xyz, max_xyz : ndarray, shape (3,)
        The world box (xyz) in which objects were generated.
    seed : int
        The seed everything was drawn from.
    content : {'beads+tissue', 'beads'}
    beads_xyz : ndarray, shape (N, 3)
        Ground-truth bead centres in world xyz (the beads layer's points).
    layers : tuple of PointLayer
        Everything that is rendered, beads first.
    wave_vectors_xyz : ndarray, shape (K, 3)
        Brightness-field plane waves in cycles per world px.
    wave_phases : ndarray, shape (K,)
        Their phases in radians.
    """

    min_xyz: np.ndarray
    max_xyz: np.ndarray
    seed: int
    content: str
    beads_xyz: np.ndarray
    layers: tuple[PointLayer, ...]
    wave_vectors_xyz: np.ndarray
    wave_phases: np.ndarray

    def brightness(self, points_xyz: np.ndarray) -> np.ndarray:
        """The brightness field, in [0.4, 1.0], at world points (N, 3) xyz."""
        return _brightness(self.wave_vectors_xyz, self.wave_phases, points_xyz)


def _brightness(wave_vectors_xyz: np.ndarray, wave_phases: np.ndarray, points_xyz: np.ndarray) -> np.ndarray:
    """``0.7 + 0.3 * mean_k cos(2 pi k . p + phase_k)`` at world points (N, 3) xyz."""
    phase = np.asarray(points_xyz, dtype=np.float64) @ wave_vectors_xyz.T * (2 * np.pi) + wave_phases
    return 0.7 + 0.3 * np.cos(phase).mean(axis=1)


def peak_weight(sigma: float) -> float:
    """Integrated intensity of a 3-D Gaussian of the given sigma whose peak is 1."""
    return (2 * np.pi) ** 1.5 * sigma**3


def make_specimen(
    min_xyz,
    max_xyz,
    seed: int = 0,
    content: str = "beads+tissue",
    bead_density: float = 5.0,
    bead_sigma: float = 1.5,
    min_bead_distance: float = 5.0,
    blob_sigmas: tuple[float, ...] = (3.0, 6.0, 10.0),
    blob_densities: tuple[float, ...] = (10.0, 3.0, 1.0),
    tube_density: float = 0.3,
    tube_length: float = 150.0,
    tube_sigma: float = 1.5,
) -> Specimen:
    """Draw a specimen filling a world box.

    Parameters
    ----------
    min_xyz, max_xyz : sequence of 3 floats
        The world box (xyz, isotropic px).
    seed : int
        Everything is drawn from this seed. Each component (beads, blobs, tubes,
        brightness) has its own stream, so changing one density leaves the
        other components unchanged.
    content : {'beads+tissue', 'beads'}
        ``beads`` renders the beads alone (for exact centroid tests).
    bead_density : float
        Beads per 1e5 world voxels, before removing beads closer than
        ``min_bead_distance``.
    bead_sigma : float
        Bead blur sigma (world px). Bead peaks are 0.5-1.0 before brightness.
    min_bead_distance : float
        Beads closer than this (world px) to an earlier bead are dropped.
    blob_sigmas, blob_densities : tuple of float
        Blob sizes (sigma, world px) and their densities per 1e5 world voxels.
        Blob peaks are 0.15-0.4.
    tube_density : float
        Tubes per 1e5 world voxels; each is a smooth random curve of
        ``tube_length`` world px, peak 0.2-0.4, blurred by ``tube_sigma``.

    Returns
    -------
    Specimen
    """
    if content not in CONTENTS:
        raise UserError(f"specimen content '{content}' is not one of {', '.join(CONTENTS)}")
    if len(blob_sigmas) != len(blob_densities):
        raise UserError(f"blob_sigmas ({len(blob_sigmas)}) and blob_densities ({len(blob_densities)}) differ in length")
    lo = np.asarray(min_xyz, dtype=np.float64)
    hi = np.asarray(max_xyz, dtype=np.float64)
    if lo.shape != (3,) or hi.shape != (3,) or np.any(hi <= lo):
        raise UserError(f"specimen extent {lo.tolist()}..{hi.tolist()} is not a non-empty xyz box")
    volume = float(np.prod(hi - lo))
    rng_beads, rng_blobs, rng_tubes, rng_field = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
    )

    waves = rng_field.normal(size=(3, 3))
    waves *= (1.0 / rng_field.uniform(150.0, 400.0, size=3) / np.linalg.norm(waves, axis=1))[:, None]
    phases = rng_field.uniform(0, 2 * np.pi, size=3)

    beads = _uniform_points(rng_beads, lo, hi, _count(bead_density, volume))
    beads = beads[_spaced(beads, min_bead_distance)]
    bead_peaks = rng_beads.uniform(0.5, 1.0, size=len(beads))
    layers = [
        PointLayer("beads", bead_sigma, beads, bead_peaks * peak_weight(bead_sigma) * _brightness(waves, phases, beads))
    ]

    if content == "beads+tissue":
        for sigma, density in zip(blob_sigmas, blob_densities):
            centres = _uniform_points(rng_blobs, lo, hi, _count(density, volume))
            peaks = rng_blobs.uniform(0.15, 0.4, size=len(centres))
            weights = peaks * peak_weight(sigma) * _brightness(waves, phases, centres)
            layers.append(PointLayer(f"blobs_s{sigma:g}", float(sigma), centres, weights))
        tube_xyz, tube_peaks = _tubes(rng_tubes, lo, hi, _count(tube_density, volume), tube_length)
        # A line of points spaced `step` apart, blurred in 3-D, has a 2-D Gaussian cross-section.
        weights = tube_peaks * TUBE_STEP * 2 * np.pi * tube_sigma**2 * _brightness(waves, phases, tube_xyz)
        layers.append(PointLayer("tubes", float(tube_sigma), tube_xyz, weights))

    return Specimen(lo, hi, seed, content, beads, tuple(layers), waves, phases)


def _count(density_per_1e5: float, volume: float) -> int:
    return round(density_per_1e5 * volume / 1e5)


def _uniform_points(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    return lo + rng.uniform(size=(n, 3)) * (hi - lo)


def _spaced(points_xyz: np.ndarray, min_distance: float) -> np.ndarray:
    """Boolean mask keeping every point that has no earlier point closer than ``min_distance``."""
    keep = np.ones(len(points_xyz), dtype=bool)
    if min_distance > 0 and len(points_xyz) > 1:
        pairs = cKDTree(points_xyz).query_pairs(min_distance, output_type="ndarray")
        keep[pairs.max(axis=1)] = False
    return keep


def _tubes(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, n: int, length: float):
    """Smooth random curves: ``(points (M, 3) xyz, peak per point (M,))`` clipped to the box.

    Each curve starts at a uniform point with a random direction; the direction
    wanders around it as a smoothed Gaussian process (correlation ~10 px), and
    the curve advances ``TUBE_STEP`` px per sample.
    """
    steps = max(int(length / TUBE_STEP), 1)
    starts = _uniform_points(rng, lo, hi, n)
    d0 = rng.normal(size=(n, 3))
    d0 /= np.linalg.norm(d0, axis=1, keepdims=True)
    wander = gaussian_filter1d(rng.normal(size=(n, steps, 3)), sigma=20.0, axis=1, mode="nearest")
    wander /= wander.std() if wander.size else 1.0
    direction = d0[:, None, :] + 0.6 * wander
    direction /= np.linalg.norm(direction, axis=2, keepdims=True)
    points = starts[:, None, :] + np.cumsum(TUBE_STEP * direction, axis=1)
    peaks = np.broadcast_to(rng.uniform(0.2, 0.4, size=(n, 1)), (n, steps))
    points, peaks = points.reshape(-1, 3), peaks.reshape(-1)
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    return points[inside], peaks[inside]


def render_region(specimen: Specimen, origin_xyz, shape_zyx, backend):
    """Render the specimen on a world-pixel region.

    Parameters
    ----------
    specimen : Specimen
    origin_xyz : sequence of 3 ints
        World position (xyz) of raster index ``[0, 0, 0]``; the raster's pixels
        are world pixels, so index ``[k, j, i]`` is world ``origin + (i, j, k)``.
    shape_zyx : sequence of 3 ints
        Raster shape (zyx).
    backend : Backend
        Array backend (``xp``, ``ndimage``, ``asarray``, ``to_host``).

    Returns
    -------
    array, shape ``shape_zyx``, float32
        On the backend's device. Beads peak at about their amplitude times the
        brightness (0.2-1.0).

    Notes
    -----
    Each layer is splatted into a raster padded by its blur radius plus three
    pixels, so the truncated Gaussian blur is exact at the region's edges:
    rendering a large region and cropping gives the same values as rendering
    the crop. Layers of sigma >= 5 are rendered on a lattice coarsened by 2^n
    (aligned to world 0, sigma/2^n >= 2.5) and interpolated linearly.
    """
    origin = np.asarray(origin_xyz, dtype=np.float64)
    if not np.array_equal(origin, np.round(origin)):
        raise UserError(f"render_region: origin {origin.tolist()} must be whole world pixels")
    shape_zyx = tuple(int(s) for s in shape_zyx)
    xp = backend.xp
    out = xp.zeros(shape_zyx, dtype=xp.float32)
    by_sigma: dict[float, list[PointLayer]] = {}
    for layer in specimen.layers:
        by_sigma.setdefault(layer.sigma, []).append(layer)
    for sigma, layers in by_sigma.items():
        points = np.concatenate([layer.points_xyz for layer in layers])
        weights = np.concatenate([layer.weights for layer in layers])
        out += _render_blurred(points, weights, sigma, origin, shape_zyx, backend)
    return out


def _render_blurred(points_xyz, weights, sigma, origin_xyz, shape_zyx, backend):
    """Points blurred by ``sigma`` on the region (float32, zyx), via a world-aligned lattice."""
    factor = 1
    while sigma / (2 * factor) >= _MIN_COARSE_SIGMA:
        factor *= 2
    sigma_c = sigma / factor
    radius = int(_TRUNCATE * sigma_c + 0.5)
    pad = radius + 3
    last_xyz = origin_xyz + np.array(shape_zyx[::-1]) - 1
    lo_c = np.floor(origin_xyz / factor).astype(np.int64) - pad  # coarse lattice index of raster [0,0,0] (xyz)
    hi_c = np.ceil(last_xyz / factor).astype(np.int64) + pad
    shape_c_zyx = tuple(int(s) for s in (hi_c - lo_c + 1)[::-1])

    # The region needs the blurred lattice nodes [pad, last - pad + 1] (the +1 for interpolation). Every
    # point whose splat reaches within the blur radius of them is deposited, and the raster holds its splat.
    rel = points_xyz / factor - lo_c
    last = hi_c - lo_c
    near = np.all((rel >= pad - radius - 1) & (rel <= last - pad + radius + 2), axis=1)
    # A coarse voxel holds factor^3 world voxels: dividing keeps the integrated intensity per world voxel.
    raster = _splat(rel[near], weights[near] / factor**3, shape_c_zyx, backend)
    raster = backend.ndimage.gaussian_filter(raster, sigma_c, mode="constant", cval=0.0, truncate=_TRUNCATE)

    if factor == 1:
        start = (origin_xyz.astype(np.int64) - lo_c)[::-1]
        return raster[tuple(slice(s, s + n) for s, n in zip(start, shape_zyx))]
    offset_zyx = (origin_xyz / factor - lo_c)[::-1]
    return backend.ndimage.affine_transform(
        raster,
        backend.asarray(np.full(3, 1.0 / factor)),
        offset=tuple(offset_zyx),
        output_shape=shape_zyx,
        order=1,
        mode="constant",
        cval=0.0,
    )


def _splat(rel_xyz: np.ndarray, weights: np.ndarray, shape_zyx, backend):
    """Deposit points at raster coordinates ``rel_xyz`` (N, 3) with trilinear weights (float32, zyx).

    The weights of each point sum to its weight and their centroid is the point,
    so the splat keeps both the integrated intensity and the position exact.
    """
    base = np.floor(rel_xyz).astype(np.int64)
    frac = rel_xyz - base
    nz, ny, nx = shape_zyx
    corner = np.array([[i, j, k] for k in (0, 1) for j in (0, 1) for i in (0, 1)])  # (8, 3) xyz
    idx = base[:, None, :] + corner[None]  # (N, 8, 3)
    w = weights[:, None] * np.prod(np.where(corner[None] == 1, frac[:, None, :], 1 - frac[:, None, :]), axis=2)
    flat = (idx[..., 2] * ny + idx[..., 1]) * nx + idx[..., 0]
    xp = backend.xp
    raster = xp.bincount(backend.asarray(flat.ravel()), weights=backend.asarray(w.ravel()), minlength=nz * ny * nx)
    return raster.astype(xp.float32).reshape(shape_zyx)
