"""``rhapso-gpu synth``: write a complete synthetic dataset with its ground truth.

The output folder holds what a BigStitcher user would have after importing an
acquisition — ``dataset.xml`` with the NOMINAL stage poses (calibration +
grid translation) and the images (with a pyramid for zarr and n5) — plus
``ground_truth.json`` with every view's TRUE pose and the true bead positions.
Tiles are rendered independently, one dask task each, so a large grid spreads
over the cluster with memory bounded by one tile.
"""

from __future__ import annotations

import itertools
import logging
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal

import dask
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rhapso_gpu import __version__
from rhapso_gpu.backend import downsample_mean, get_backend
from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import propose_mipmap_factors
from rhapso_gpu.io import storage
from rhapso_gpu.io.ground_truth import GroundTruth, save_ground_truth
from rhapso_gpu.io.image_writers import image_loader_element, write_view_levels
from rhapso_gpu.io.spimdata import (
    AttributeDefinition,
    Entity,
    SpimData,
    Timepoints,
    ViewSetup,
    ViewTransform,
    VoxelSize,
)
from rhapso_gpu.io.spimdata_xml import format_number, load_spimdata, save_spimdata
from rhapso_gpu.synth.nuclei import load_nuclei, plan_nuclei_grid, render_nuclei_tile
from rhapso_gpu.synth.specimen import make_specimen
from rhapso_gpu.synth.tiles import TilePlan, bead_ground_truth, nominal_transforms, plan_extent, plan_grid, render_tile

log = logging.getLogger("rhapso_gpu")

XML_NAME = "dataset.xml"
TRUTH_NAME = "ground_truth.json"


class SynthParams(BaseModel):
    """Parameters of a synthetic dataset (the same names in YAML and, with dashes, on the command line)."""

    model_config = ConfigDict(extra="forbid")

    tiles: tuple[int, int, int] = Field((3, 3, 1), description="tile grid (x, y, z)")
    tile_size: tuple[int, int, int] = Field((128, 128, 64), description="tile size (x, y, z) in pixels; ignored for nuclei")
    overlap: float = Field(0.15, ge=0.0, lt=0.9, description="overlap of neighbouring tiles, fraction of the tile (for nuclei a minimum: raised to 2x the translation error + 8 px where needed)")
    voxel_size: tuple[float, float, float] = Field((0.5, 0.5, 1.0), description="voxel size (x, y, z) in unit")
    unit: str = Field("µm", description="unit of voxel_size")
    translation_error: float = Field(5.0, ge=0.0, description="stage error per axis, uniform +-, in world pixels")
    rotation_error: float = Field(0.0, ge=0.0, le=10.0, description="maximum rotation error per tile in degrees")
    affine_error: float = Field(0.0, ge=0.0, le=0.1, description="maximum shear/scale error per tile")
    content: Literal["beads+tissue", "beads", "nuclei"] = Field("beads+tissue", description="what the specimen holds")
    bead_density: float = Field(5.0, gt=0.0, le=100.0, description="beads per 100,000 world voxels")
    format: Literal["zarr", "n5", "tiff"] = Field("zarr", description="image format")
    ngff_version: Literal["0.4", "0.5"] = Field("0.4", description="OME-NGFF version for zarr (0.4 = zarr v2)")
    levels: int = Field(3, ge=1, le=8, description="pyramid levels including full resolution (zarr, n5)")
    noise: bool = Field(True, description="Poisson noise")
    seed: int = Field(0, ge=0, description="seed for everything random")


@dataclass
class SynthResult:
    """What :func:`generate_dataset` wrote."""

    xml: str
    truth: str
    n_views: int
    factors_xyz: list[tuple[int, int, int]]
    seconds: float


def propose_pyramid(size_xyz, voxel_size_xyz, levels: int, min_size: int = 8) -> list[tuple[int, int, int]]:
    """Downsampling factors (x, y, z) per level relative to full resolution, level 0 first.

    :func:`rhapso_gpu.geometry.propose_mipmap_factors` (at most ``levels``
    levels, no axis below ``min_size`` pixels), accumulated.
    """
    factors = [(1, 1, 1)]
    for relative in propose_mipmap_factors(size_xyz, voxel_size_xyz, max_levels=levels, min_size=min_size):
        factors.append(tuple(int(a * b) for a, b in zip(factors[-1], relative)))
    return factors


def _pyramid(tile_zyx: np.ndarray, factors_xyz, backend) -> list[np.ndarray]:
    levels = [tile_zyx]
    current = backend.asarray(tile_zyx)
    for prev, f in itertools.pairwise(factors_xyz):
        relative_zyx = tuple(int(a // b) for a, b in zip(f[::-1], prev[::-1]))
        current = downsample_mean(current, relative_zyx, backend=backend)
        levels.append(backend.to_host(current))
    return levels


def _make_tile(out_dir: str, plan: TilePlan, params: SynthParams, specimen, factors_xyz, backend_name: str) -> dict:
    """Render, downsample and write one tile (runs on a worker)."""
    backend = get_backend(backend_name)
    render = render_nuclei_tile if params.content == "nuclei" else render_tile
    tile = render(specimen, plan, backend, noise=params.noise, seed=params.seed)
    levels = _pyramid(tile, factors_xyz if params.format != "tiff" else factors_xyz[:1], backend)
    write_view_levels(
        params.format,
        out_dir,
        plan.view,
        levels,
        factors_xyz[: len(levels)],
        params.voxel_size,
        unit="micrometer" if params.unit in ("µm", "um", "micrometer") else params.unit,
        ngff_version=params.ngff_version,
    )
    return {"view": plan.view, "mean": float(tile.mean()), "max": int(tile.max())}


def _plans_and_specimen(params: SynthParams):
    errors = {
        "overlap": params.overlap,
        "voxel_size_xyz": params.voxel_size,
        "translation_error": params.translation_error,
        "rotation_error_deg": params.rotation_error,
        "affine_error": params.affine_error,
        "seed": params.seed,
    }
    if params.content == "nuclei":
        specimen = load_nuclei(seed=params.seed)
        return plan_nuclei_grid(specimen, tiles_xyz=params.tiles, **errors), specimen, np.zeros((0, 3))
    plans = plan_grid(tiles_xyz=params.tiles, tile_size_xyz=params.tile_size, **errors)
    lo, hi = plan_extent(plans)
    content = "beads" if params.content == "beads" else "beads+tissue"
    specimen = make_specimen(lo, hi, seed=params.seed, content=content, bead_density=params.bead_density)
    return plans, specimen, bead_ground_truth(specimen)


def build_spimdata(plans: list[TilePlan], params: SynthParams) -> SpimData:
    """The ``dataset.xml`` of a synthetic dataset: nominal registrations, one tile attribute per view."""
    spim = SpimData(timepoints=Timepoints("range", [0], ["0"]))
    spim.image_loader = image_loader_element(params.format, [p.view for p in plans], params.ngff_version)
    min_voxel = float(min(params.voxel_size))
    tiles = AttributeDefinition("tile", "Tile")
    for plan in plans:
        sid = plan.view.setup
        spim.setups[sid] = ViewSetup(
            id=sid,
            name=f"tile_x{plan.grid_index_xyz[0]}_y{plan.grid_index_xyz[1]}_z{plan.grid_index_xyz[2]}",
            size_xyz=tuple(int(s) for s in plan.size_xyz),
            voxel_size=VoxelSize(params.unit, tuple(float(v) for v in params.voxel_size)),
            attributes={"illumination": 0, "channel": 0, "tile": sid, "angle": 0},
        )
        transforms = nominal_transforms(plan)  # [("Translation to Regular Grid", T), ("calibration", C)]
        spim.registrations[plan.view] = [ViewTransform(name, np.asarray(m)[:3, :4].copy()) for name, m in transforms]
        # BigStitcher's <Tile><location> is the stage position in physical units
        location_xyz = np.asarray(transforms[0][1])[:3, 3] * min_voxel
        tiles.entities.append(Entity(sid, spim.setups[sid].name, fields=[_element("location", location_xyz)]))
    spim.attribute_definitions = [
        AttributeDefinition("illumination", "Illumination", [Entity(0, "0")]),
        AttributeDefinition("channel", "Channel", [Entity(0, "0")]),
        tiles,
        AttributeDefinition("angle", "Angle", [Entity(0, "0")]),
    ]
    return spim


def _element(tag: str, values) -> ET.Element:
    el = ET.Element(tag)
    el.text = " ".join(format_number(float(v)) for v in values)
    return el


def check_target(out_dir: str) -> None:
    """Refuse an output folder whose ``dataset.xml`` synth did not write (so it is never overwritten), or that
    is a file or lies under one."""
    storage.check_folder(out_dir, "synth output folder")
    xml, truth = storage.join(out_dir, XML_NAME), storage.join(out_dir, TRUTH_NAME)
    if storage.exists(xml) and not storage.exists(truth):
        raise UserError(
            f"{xml} exists and was not written by synth (no {TRUTH_NAME} beside it); choose an empty folder"
        )
    if storage.exists(xml):
        load_spimdata(xml)  # an unreadable earlier XML is reported rather than overwritten blindly


def generate_dataset(out_dir: str, params: SynthParams, cluster, backend_name: str = "auto") -> SynthResult:
    """Generate and write a synthetic dataset.

    Parameters
    ----------
    out_dir : str
        Output folder (local or URL); it receives ``dataset.xml``,
        ``ground_truth.json`` and the images.
    params : SynthParams
    cluster : rhapso_gpu.scheduler.Cluster
        Where the tiles are rendered (one task per tile).
    backend_name : {'auto', 'numpy', 'cupy'}

    Notes
    -----
    Re-running with the same parameters writes identical images and ground
    truth; the previous ``dataset.xml`` is kept as ``dataset.xml~1``.
    """
    start = time.perf_counter()
    check_target(out_dir)
    backend = get_backend(backend_name)
    plans, specimen, beads = _plans_and_specimen(params)
    factors = propose_pyramid(plans[0].size_xyz, params.voxel_size, params.levels)
    if params.format == "tiff":
        factors = factors[:1]
    log.info(
        "synth: %d tiles of %s px (xyz), %d pyramid level(s), %s, rendering on %s with %s",
        len(plans), "x".join(map(str, plans[0].size_xyz)), len(factors), params.format,
        cluster.description, backend.name,
    )
    specimen_task = dask.delayed(specimen, pure=True)
    tasks = [dask.delayed(_make_tile, pure=True)(out_dir, p, params, specimen_task, factors, backend.name) for p in plans]
    stats = cluster.compute(*tasks)
    empty = [s["view"] for s in stats if s["max"] == 0]
    if empty:
        log.warning("synth: %d tile(s) are empty: %s", len(empty), ", ".join(map(str, empty)))

    spim = build_spimdata(plans, params)
    xml = storage.join(out_dir, XML_NAME)
    truth = GroundTruth(
        true_affines={p.view: p.true_xyz for p in plans},
        nominal_affines={p.view: p.nominal_xyz for p in plans},
        beads_world_xyz=beads,
        params={"generator": f"rhapso-gpu {__version__} synth", **params.model_dump(mode="json")},
    )
    truth_location = storage.join(out_dir, TRUTH_NAME)
    save_ground_truth(truth, truth_location)
    save_spimdata(spim, xml)
    return SynthResult(xml, truth_location, len(plans), factors, time.perf_counter() - start)
