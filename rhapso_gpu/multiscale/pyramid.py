"""Block-mean pyramids of an OME-Zarr multiscale container, one scheduler task per block.

Level ``L`` is the block mean of level ``L - 1`` by its relative factors
(shapes ``floor(n / f)``, the remainder dropped, as BigDataViewer pyramids do),
computed with the ``downsample_mean`` kernel. Each task writes one shard (or,
unsharded, one chunk) of the new level, so no two tasks write the same file;
levels keep the chunk and shard layout of level 0. The metadata gets each level's scale and the
half-voxel translation ``0.5 * (f - 1)`` voxels of the mean (BigDataViewer's
mipmap convention), so every level lines up with level 0 in a viewer.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

import dask
import numpy as np

from rhapso_gpu import __version__
from rhapso_gpu.backend import downsample_mean, get_backend
from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import propose_mipmap_factors
from rhapso_gpu.io import ome_zarr

log = logging.getLogger("rhapso_gpu")

MIN_SIZE = 16
"""Proposed pyramids stop before an axis of a level would drop below this many voxels."""

MAX_TOP_SIZE = 256
"""Proposed pyramids stop once every axis of the top level is at most this many voxels (BigDataViewer)."""


@dataclass
class PyramidResult:
    """What :func:`build_pyramid` wrote."""

    factors_xyz: list[tuple[int, int, int]]
    shapes_zyx: list[tuple[int, int, int]]
    n_tasks: int
    seconds: float


def propose_factors(shape_zyx, voxel_size_xyz, max_levels: int | None = None) -> list[tuple[int, int, int]]:
    """Relative factors (x, y, z) per new level for a volume of ``shape_zyx``.

    :func:`rhapso_gpu.geometry.propose_mipmap_factors` with :data:`MIN_SIZE`
    and :data:`MAX_TOP_SIZE`: levels are added while the top level has an axis
    above 256 voxels (or until ``max_levels`` levels in all, level 0 included).
    """
    return propose_mipmap_factors(
        tuple(shape_zyx)[::-1], voxel_size_xyz, max_levels=max_levels, min_size=MIN_SIZE, max_top_size=MAX_TOP_SIZE
    )


def _downsample_task(
    location: str, level: int, t: int, c: int, target_slices, relative_zyx, backend_name: str, storage_options
) -> int:
    """Compute one block of ``level`` from ``level - 1`` and write it (runs on a worker)."""
    source = ome_zarr.open_level(location, level - 1, storage_options)
    src = tuple(slice(s.start * f, s.stop * f) for s, f in zip(target_slices, relative_zyx))
    backend = get_backend(backend_name)
    block = downsample_mean(backend.asarray(np.asarray(source[(t, c, *src)])), relative_zyx, backend=backend)
    ome_zarr.open_level(location, level, storage_options, mode="r+")[(t, c, *target_slices)] = backend.to_host(block)
    return 1


def build_pyramid(
    location: str,
    relative_factors_xyz: list[tuple[int, int, int]] | None,
    cluster,
    backend_name: str = "auto",
    storage_options=None,
) -> PyramidResult:
    """Replace the levels above 0 of the container at ``location`` by block-mean levels.

    Parameters
    ----------
    location : str
        An OME-Zarr multiscale container of 5-D ``(t, c, z, y, x)`` levels
        (as written by ``rhapso-gpu fuse``).
    relative_factors_xyz : list of tuple of int, optional
        Factors (x, y, z) of each new level relative to the one below;
        default :func:`propose_factors`.
    cluster : rhapso_gpu.scheduler.Cluster
    backend_name : {'auto', 'numpy', 'cupy'}
    storage_options : dict, optional

    Raises
    ------
    UserError
        When the container has no readable multiscale metadata, its fusion did
        not finish, a factor is not a positive integer, or a level would be empty.
    """
    start = time.perf_counter()
    backend = get_backend(backend_name)
    written_by = ome_zarr.container_attributes(location, storage_options) or {}
    if written_by.get("complete") is False:
        raise UserError(f"{location}: the fusion into it did not finish; rerun rhapso-gpu fuse (it resumes) first")
    info = ome_zarr.read_multiscale_info(location, storage_options)
    base = ome_zarr.open_level(location, 0, storage_options)
    if base.ndim != 5:
        raise UserError(f"{location}: level 0 is {base.ndim}-D; expected (t, c, z, y, x)")
    chunks_zyx = base.chunks[2:]
    shard_chunks_zyx = tuple(s // c for s, c in zip(base.shards[2:], chunks_zyx)) if base.shards else None
    if relative_factors_xyz is None:
        relative_factors_xyz = propose_factors(base.shape[2:], info.voxel_size_xyz)
    group = ome_zarr.open_group(location, storage_options, mode="r+")
    for name in list(group.array_keys()):
        if name.isdigit() and int(name) > 0:
            del group[name]
    factors_xyz = [(1, 1, 1)]
    shapes = [tuple(base.shape[2:])]
    n_tasks = 0
    for level, rel_xyz in enumerate(relative_factors_xyz, start=1):
        rel_zyx = tuple(int(f) for f in rel_xyz[::-1])
        if len(rel_zyx) != 3 or min(rel_zyx) < 1 or any(int(f) != f for f in rel_xyz):
            raise UserError(f"pyramid level {level}: factors {rel_xyz} must be three positive integers (x, y, z)")
        shape = tuple(n // f for n, f in zip(shapes[-1], rel_zyx))
        if min(shape) < 1:
            raise UserError(
                f"pyramid level {level}: factors {rel_xyz} leave an empty level (from {shapes[-1][::-1]} xyz)"
            )
        array = ome_zarr.create_level(
            group, level, base.shape[:2] + shape, base.dtype, chunks_zyx, info.ngff_version, shard_chunks_zyx
        )
        unit_zyx = ome_zarr.write_unit_zyx(array)
        tasks = []
        for t in range(base.shape[0]):
            for c in range(base.shape[1]):
                for idx in np.ndindex(*(-(-n // k) for n, k in zip(shape, unit_zyx))):
                    target = tuple(slice(i * k, min((i + 1) * k, n)) for i, k, n in zip(idx, unit_zyx, shape))
                    tasks.append(
                        dask.delayed(_downsample_task, pure=False)(
                            location, level, t, c, target, rel_zyx, backend.name, storage_options
                        )
                    )
        cluster.compute(*tasks)
        n_tasks += len(tasks)
        factors_xyz.append(tuple(a * int(b) for a, b in zip(factors_xyz[-1], rel_xyz)))
        shapes.append(shape)
        log.info("multiscale: level %d %s (xyz) factors %s", level, "x".join(map(str, shape[::-1])), factors_xyz[-1])
    ome_zarr.write_multiscale_metadata(location, dataclasses.replace(info, factors_xyz=factors_xyz), storage_options)
    ome_zarr.update_attributes(location, {"multiscale": {"version": __version__, "backend": backend.name,
                                                         "relative_factors_xyz": [list(map(int, f)) for f in
                                                                                  relative_factors_xyz]}},
                               storage_options)
    return PyramidResult(factors_xyz, shapes, n_tasks, time.perf_counter() - start)
