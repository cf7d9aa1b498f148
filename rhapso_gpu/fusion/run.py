"""Fuse a dataset into an OME-Zarr volume: one scheduler task per output block, resumable.

The container holds one 5-D array ``(t, c, z, y, x)``: one output time point
per selected time point and one output channel per selected channel; every
other selected view of that (time point, channel) — tiles, illuminations,
angles — is fused into it. Each task fuses one block (a whole number of
chunks, so no two tasks write one chunk), reading only the views and the
pixels that overlap it, and records itself as done; a rerun with the same
inputs and parameters skips the finished blocks (:mod:`rhapso_gpu.io.ome_zarr`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import dask
import numpy as np
import zarr

from cpu_fallback.fusion import packed_dtype
from rhapso_gpu import __version__
from rhapso_gpu.backend import get_backend
from rhapso_gpu.errors import UserError
from rhapso_gpu.fusion.grid import Block, OutputGrid, anisotropy_of, blocks, bounding_box, make_grid
from rhapso_gpu.fusion.params import OUTPUT_MAX, FuseParams
from rhapso_gpu.fusion.sources import BlockRead, ViewSource, block_read, view_source
from rhapso_gpu.io import ome_zarr, storage
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata import SpimData, ViewId

log = logging.getLogger("rhapso_gpu")


@dataclass(frozen=True)
class Slot:
    """One output (time point, channel) and the views fused into it, in ViewId order."""

    t_index: int
    c_index: int
    timepoint: int
    channel: int
    views: tuple[ViewId, ...]


@dataclass
class FusionPlan:
    """Everything decided before any pixel is read.

    Attributes
    ----------
    grid : OutputGrid
    slots : list of Slot
    sources : dict of ViewId to ViewSource
    voxel_size_xyz : tuple of float
        Output voxel size (xyz) in ``unit``.
    origin_xyz : tuple of float
        Physical position (xyz, ``unit``) of output voxel 0.
    unit : str
    block_zyx : tuple of int
        Task block in output voxels (z, y, x): ``block_scale`` shards (or chunks).
    """

    grid: OutputGrid
    slots: list[Slot]
    sources: dict[ViewId, ViewSource]
    voxel_size_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    unit: str
    block_zyx: tuple[int, int, int]
    attributes: dict = field(default_factory=dict)

    @property
    def shape_tczyx(self) -> tuple[int, ...]:
        n_t = len({s.t_index for s in self.slots})
        n_c = len({s.c_index for s in self.slots})
        return (n_t, n_c, *self.grid.shape_zyx)


@dataclass
class FuseResult:
    """What :func:`fuse_dataset` did.

    ``max_task_bytes`` is the largest memory estimate (:func:`task_bytes`) of a
    task run now (0 when every block was already done).
    """

    location: str
    shape_tczyx: tuple[int, ...]
    voxel_size_xyz: tuple[float, float, float]
    unit: str
    n_views: int
    n_blocks: int
    n_skipped: int
    seconds: float
    max_task_bytes: int
    plan: FusionPlan


def _selected(value: int | None, wanted: list[int] | None) -> bool:
    return wanted is None or (value if value is not None else 0) in wanted


def select_slots(spim: SpimData, params: FuseParams) -> list[Slot]:
    """The output (time point, channel) slots and their views, from the selection parameters.

    Raises
    ------
    UserError
        When the selection matches no view.
    """
    chosen: dict[tuple[int, int], list[ViewId]] = {}
    for v in spim.view_ids():
        attrs = spim.setup(v).attributes
        if not _selected(v.timepoint, params.timepoints):
            continue
        if not all(
            _selected(attrs.get(name), getattr(params, key))
            for name, key in (
                ("channel", "channels"),
                ("illumination", "illuminations"),
                ("tile", "tiles"),
                ("angle", "angles"),
            )
        ):
            continue
        chosen.setdefault((v.timepoint, attrs.get("channel", 0)), []).append(v)
    if not chosen:
        raise UserError(f"{spim.location or 'dataset'}: no view matches the selection (time points, channels, ...)")
    timepoints = sorted({t for t, _ in chosen})
    channels = sorted({c for _, c in chosen})
    return [
        Slot(timepoints.index(t), channels.index(c), t, c, tuple(sorted(vs))) for (t, c), vs in sorted(chosen.items())
    ]


def plan_fusion(spim: SpimData, params: FuseParams, storage_options=None) -> FusionPlan:
    """Decide the output grid, the slots, and per view the level and blending (reads only metadata)."""
    slots = select_slots(spim, params)
    views = sorted({v for s in slots for v in s.views})
    anisotropy = 1.0
    if params.preserve_anisotropy:
        anisotropy = params.anisotropy_factor or anisotropy_of(spim, views)
    lo, hi = bounding_box(spim, views, params.bounding_box)
    grid = make_grid(lo, hi, params.downsampling, anisotropy)
    sources = {
        v: view_source(
            spim,
            v,
            open_view_levels(spim, v, storage_options),
            grid.output_to_world,
            params.blending_range,
            params.blending_border,
        )
        for v in views
    }
    voxel = spim.setup(views[0]).voxel_size
    world_px = float(min(voxel.size_xyz)) if voxel is not None else 1.0
    unit = voxel.unit if voxel is not None else "pixel"
    voxel_size = tuple(float(s * world_px) for s in grid.step_world_xyz)
    shard_xyz = params.shard_chunks or (1, 1, 1)
    block_xyz = [c * k * s for c, k, s in zip(params.chunk_size, shard_xyz, params.block_scale)]
    block_zyx = tuple(int(n) for n in block_xyz[::-1])
    attributes = {
        "command": "fuse",
        "input_xml": _absolute(spim.location),
        "parameters": params.model_dump(mode="json"),
        "bounding_box_min_world_xyz": [float(v) for v in lo],
        "bounding_box_max_world_xyz": [float(v) for v in hi],
        "anisotropy_factor": anisotropy,
        "output_voxel_size_xyz": list(voxel_size),
        "unit": unit,
        "slots": [
            {
                "t": s.t_index,
                "c": s.c_index,
                "timepoint": s.timepoint,
                "channel": s.channel,
                "views": [[v.timepoint, v.setup] for v in s.views],
            }
            for s in slots
        ],
        "levels_read": {f"{v.timepoint}/{v.setup}": src.level for v, src in sources.items()},
    }
    origin = tuple(float(v * world_px) for v in lo)
    return FusionPlan(grid, slots, sources, voxel_size, origin, unit, block_zyx, attributes)


def _absolute(location: str | None) -> str | None:
    if location is None or storage.is_remote(location):
        return location
    return os.path.abspath(location)


def to_output_type(block, data_type: str, intensity_range: tuple[float, float], xp):
    """Convert a fused float32 block to the output type.

    float32 is kept as is. For uint8/uint16, ``(v - min) * top / (max - min)``
    (``top`` = 255 or 65535) is rounded half up and clamped to ``[0, top]``:
    BigStitcher's mapping, without its offset quirk (it adds ``-min/(max-min)``
    unscaled; identical for ``min = 0``). The scaling runs in float64, so exact
    ties round the same on every backend.
    """
    if data_type == "float32":
        return block.astype(xp.float32, copy=False)
    top = OUTPUT_MAX[data_type]
    lo, hi = intensity_range
    scaled = block.astype(xp.float64)  # float64, divide last: exact ties (127.5); in place, one float64 copy
    scaled -= lo
    scaled *= top
    scaled /= hi - lo
    scaled += 0.5
    xp.floor(scaled, out=scaled)
    xp.clip(scaled, 0, top, out=scaled)
    return scaled.astype(data_type)


def block_key(slot: Slot, block: Block) -> str:
    """File name of a block's done-marker."""
    z, y, x = block.index_zyx
    return f"t{slot.t_index}-c{slot.c_index}-z{z}-y{y}-x{x}"


def fuse_block_task(
    location: str,
    slot: Slot,
    block: Block,
    reads: list[BlockRead],
    params: FuseParams,
    backend_name: str,
    storage_options=None,
) -> dict:
    """Fuse one block, write it, and mark it done (runs on a worker).

    Returns
    -------
    dict
        ``key``, ``views`` (number read) and ``bytes``: an estimate (not a
        measurement) of the host memory the task allocates at its peak, from
        :func:`task_bytes`.
    """
    backend = get_backend(backend_name)
    regions = [r.read() for r in reads]
    crop_bytes = sum(r.nbytes for r in regions)
    packed_bytes = 0
    if backend.name == "numpy":  # the twin packs the crops on the host (CuPy packs them on the GPU)
        packed_bytes = packed_dtype(regions).itemsize * sum(r.size for r in regions)
    views = [r.fusion_view(backend.asarray(region)) for r, region in zip(reads, regions)]
    fused = backend.kernel("fuse_block")(block.shape_zyx, params.fusion, views)
    del regions, views  # the crops are not needed for converting and writing
    out = backend.to_host(to_output_type(fused, params.data_type, params.intensity_range(), backend.xp))
    del fused
    key = block_key(slot, block)
    try:  # the block is marked done only after its chunks are stored
        array = ome_zarr.open_level(location, 0, storage_options, mode="r+")
        array[(slot.t_index, slot.c_index, *block.slices_zyx)] = out
        ome_zarr.mark_done(location, key, storage_options)
    except UserError:
        raise
    except Exception as err:  # storage unreachable after its retries (see rhapso_gpu.io.storage)
        raise UserError(f"{location}: cannot write the block {key}: {type(err).__name__}: {err}") from err
    estimate = task_bytes(reads, crop_bytes, packed_bytes, int(np.prod(block.shape_zyx)), params.data_type)
    return {"key": key, "views": len(reads), "bytes": estimate}


def task_bytes(reads: list[BlockRead], crop_bytes: int, packed_bytes: int, n_block: int, data_type: str) -> int:
    """Estimated peak host bytes of :func:`fuse_block_task`: the largest of its phases.

    * read: the crops, plus the chunks being decoded for one crop (zarr decodes
      up to ``async.concurrency`` chunks at once);
    * fuse: the crops, their packed copy, and the float32 block;
    * convert (integer output): the float32 block, its float64 scaling and the converted block;
    * write: the converted block and zarr's chunk copies and encoded bytes (about twice the block).

    On 256 x 256 x 128 blocks from 2 and 4 uint16 views (uint16 and float32
    output) it equalled the peak traced by ``tracemalloc`` to 1 MB; the process's
    peak RSS grew by 0-40 MB more (allocator and codec buffers). It leaves out
    the process itself (Python, NumPy, numba, zarr: about 300 MB of RSS before any task).

    Parameters
    ----------
    reads : list of BlockRead
    crop_bytes : int
        Bytes of the crops as read (native dtype).
    packed_bytes : int
        Bytes of the crops as packed for the kernel on the host (0 when packed on the GPU).
    n_block : int
        Output voxels of the block.
    data_type : str
        Output voxel type.
    """
    concurrency = int(zarr.config.get("async.concurrency") or 1)
    decoding = 0
    for r in reads:
        data = r.source.image.data_zyx
        chunk_bytes = int(np.prod(data.chunksize)) * data.dtype.itemsize
        touched = int(np.prod([(s.stop - 1) // c - s.start // c + 1 for s, c in zip(r.slices_zyx, data.chunksize)]))
        decoding = max(decoding, min(touched, concurrency) * chunk_bytes)
    itemsize = np.dtype(data_type).itemsize
    phases = [
        crop_bytes + decoding,
        crop_bytes + packed_bytes + 4 * n_block,
        (4 + 8 + itemsize) * n_block if data_type != "float32" else 4 * n_block,
        3 * itemsize * n_block,
    ]
    return max(phases)


def _prepare_container(
    location: str, plan: FusionPlan, params: FuseParams, overwrite: bool, storage_options
) -> tuple[bool, set[str]]:
    """Create the container, or check an existing one; return ``(complete, keys of finished blocks)``."""
    existing = ome_zarr.container_attributes(location, storage_options)
    if existing is not None and not overwrite:
        recorded = {k: v for k, v in existing.items() if k not in ("complete", "version", "multiscale")}
        if recorded != plan.attributes:
            raise UserError(
                f"{location}: exists and was fused from other inputs or parameters; "
                "choose another output or pass --overwrite"
            )
        if existing.get("complete"):
            return True, set()
        return False, ome_zarr.done_keys(location, storage_options)
    if existing is None and storage.exists(location, storage_options) and not overwrite:
        raise UserError(
            f"{location}: exists and was not written by rhapso-gpu fuse; choose another output or pass --overwrite"
        )
    info = ome_zarr.MultiscaleInfo(
        ngff_version=params.ngff_version,
        voxel_size_xyz=plan.voxel_size_xyz,
        unit=_ngff_unit(plan.unit),
        origin_xyz=plan.origin_xyz,
        factors_xyz=[(1, 1, 1)],
        name="fused",
    )
    attributes = {**plan.attributes, "version": __version__, "complete": False}
    ome_zarr.create_container(
        location,
        plan.shape_tczyx,
        params.data_type,
        params.chunk_size[::-1],
        info,
        attributes,
        storage_options,
        params.shard_chunks[::-1] if params.shard_chunks else None,
    )
    return False, set()


def _ngff_unit(unit: str) -> str:
    return "micrometer" if unit in ("µm", "um", "micron", "micrometer") else unit


def fuse_dataset(
    spim: SpimData,
    location: str,
    params: FuseParams,
    cluster,
    backend_name: str = "auto",
    overwrite: bool = False,
    storage_options=None,
) -> FuseResult:
    """Fuse the selected views of ``spim`` into the OME-Zarr container at ``location``.

    Parameters
    ----------
    spim : SpimData
        The dataset with its registrations (loaded from XML).
    location : str
        Output container (local path or URL).
    params : FuseParams
    cluster : rhapso_gpu.scheduler.Cluster
        Where block tasks run.
    backend_name : {'auto', 'numpy', 'cupy'}
    overwrite : bool
        Replace an existing container instead of resuming it.
    storage_options : dict, optional
        fsspec options for remote input and output.

    Returns
    -------
    FuseResult

    Notes
    -----
    A rerun with the same dataset and parameters resumes: finished blocks are
    skipped and the result equals an uninterrupted run. Different inputs or
    parameters on an existing container are a :class:`UserError` unless
    ``overwrite``.
    """
    start = time.perf_counter()
    backend = get_backend(backend_name)
    plan = plan_fusion(spim, params, storage_options)
    complete, done = _prepare_container(location, plan, params, overwrite, storage_options)
    all_blocks = blocks(plan.grid.shape_zyx, plan.block_zyx)
    tasks, skipped = [], 0
    for slot in plan.slots:
        for block in all_blocks:
            if complete or block_key(slot, block) in done:
                skipped += 1
                continue
            start_xyz, stop_xyz = block.start_zyx[::-1], block.stop_zyx[::-1]
            reads = [r for v in slot.views if (r := block_read(plan.sources[v], start_xyz, stop_xyz)) is not None]
            # traverse=False: the reads hold their views' lazy images, which dask must not compute as inputs
            reads_task = dask.delayed(reads, traverse=False)
            tasks.append(
                dask.delayed(fuse_block_task, pure=False)(
                    location, slot, block, reads_task, params, backend.name, storage_options
                )
            )
    log.info(
        "fuse: %d views into %s (t, c, z, y, x) %s, %d block tasks (%d already done) on %s with %s",
        len(plan.sources),
        "x".join(map(str, plan.shape_tczyx)),
        params.data_type,
        len(tasks),
        skipped,
        cluster.description,
        backend.name,
    )
    stats = cluster.compute(*tasks) if tasks else ()
    ome_zarr.update_attributes(location, {"complete": True}, storage_options)
    ome_zarr.clear_progress(location, storage_options)
    return FuseResult(
        location=location,
        shape_tczyx=plan.shape_tczyx,
        voxel_size_xyz=plan.voxel_size_xyz,
        unit=plan.unit,
        n_views=len(plan.sources),
        n_blocks=len(tasks) + skipped,
        n_skipped=skipped,
        seconds=time.perf_counter() - start,
        max_task_bytes=max((s["bytes"] for s in stats), default=0),
        plan=plan,
    )
