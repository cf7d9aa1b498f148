"""OME-Zarr multiscale containers for fused volumes, written block by block.

Layout (BigStitcher-Spark's fused OME-Zarr): the container root is one
multiscale group; level ``L`` is the 5-D array ``/{L}`` with axes
``(t, c, z, y, x)``. OME-NGFF 0.4 on zarr v2 (default, widest viewer support)
or 0.5 on zarr v3. Each level's ``coordinateTransformations`` are the voxel
size times its factors and the half-voxel translation ``0.5 * (f - 1)`` voxels
of block-mean pyramids (the metadata helper of
:mod:`rhapso_gpu.io.image_writers`); the world position of voxel 0 of level 0
is a multiscale-level translation.

Writers of many blocks record each finished block as an empty marker file
under ``.rhapso-progress/`` in the container, so a rerun after a crash skips
what is done (:func:`mark_done`, :func:`done_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numcodecs
import numpy as np
import zarr

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io._zarr_loader import open_store
from rhapso_gpu.io.image_writers import NGFF_VERSIONS, _ngff_multiscale

ATTRIBUTE = "rhapso-gpu"
"""Root attribute holding what wrote the container and with which parameters."""

PROGRESS_DIR = ".rhapso-progress"


@dataclass(frozen=True)
class MultiscaleInfo:
    """What the container's metadata says about its levels.

    Attributes
    ----------
    ngff_version : str
        ``"0.4"`` (zarr v2) or ``"0.5"`` (zarr v3).
    voxel_size_xyz : tuple of float
        Level-0 voxel size (x, y, z) in ``unit``.
    unit : str
    origin_xyz : tuple of float
        Physical position (x, y, z) of level-0 voxel 0.
    factors_xyz : list of tuple of int
        Downsampling factors (x, y, z) of each level relative to level 0.
    name : str
    """

    ngff_version: str
    voxel_size_xyz: tuple[float, float, float]
    unit: str
    origin_xyz: tuple[float, float, float]
    factors_xyz: list[tuple[int, int, int]]
    name: str


def _group(location: str, storage_options=None, mode: str = "r") -> zarr.Group:
    store = open_store(location, storage_options, read_only=mode == "r")
    try:
        return zarr.open_group(store, mode=mode)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise UserError(f"{location}: no zarr group here ({type(err).__name__})") from None


def _multiscale_metadata(info: MultiscaleInfo) -> dict:
    multiscale = _ngff_multiscale(info.name, info.factors_xyz, info.voxel_size_xyz, info.unit, info.ngff_version)
    origin_tczyx = [0.0, 0.0] + [float(v) for v in info.origin_xyz[::-1]]
    multiscale["coordinateTransformations"] = [
        {"type": "scale", "scale": [1.0] * 5},
        {"type": "translation", "translation": origin_tczyx},
    ]
    return multiscale


def write_multiscale_metadata(location: str, info: MultiscaleInfo, storage_options=None) -> None:
    """Write the OME-NGFF ``multiscales`` of the container (one dataset per level in ``info``)."""
    group = _group(location, storage_options, mode="r+")
    multiscale = _multiscale_metadata(info)
    if info.ngff_version == "0.4":
        group.attrs.update({"multiscales": [multiscale]})
    else:
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale]}})


def read_multiscale_info(location: str, storage_options=None) -> MultiscaleInfo:
    """Read back the metadata written by :func:`write_multiscale_metadata`.

    Raises
    ------
    UserError
        If the location holds no OME-NGFF multiscale written in this layout.
    """
    group = _group(location, storage_options)
    attrs = dict(group.attrs)
    try:
        version = "0.5" if "ome" in attrs else "0.4"
        multiscale = (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]
        datasets = multiscale["datasets"]
        scales = [np.asarray(d["coordinateTransformations"][0]["scale"], float)[-3:][::-1] for d in datasets]
        unit = next(a.get("unit", "") for a in multiscale["axes"] if a["name"] == "x")
        origin = [t for t in multiscale.get("coordinateTransformations", []) if t["type"] == "translation"]
        origin_xyz = tuple(float(v) for v in origin[0]["translation"][-3:][::-1]) if origin else (0.0, 0.0, 0.0)
    except (KeyError, IndexError, TypeError, StopIteration) as err:
        raise UserError(
            f"{location}: no readable OME-NGFF multiscales metadata ({type(err).__name__}: {err})"
        ) from None
    factors = [tuple(round(float(v)) for v in s / scales[0]) for s in scales]
    return MultiscaleInfo(
        version, tuple(float(v) for v in scales[0]), unit, origin_xyz, factors, str(multiscale.get("name", ""))
    )


def _array_options(ngff_version: str) -> dict[str, Any]:
    if ngff_version == "0.4":
        return {"compressors": numcodecs.Zstd(level=3), "chunk_key_encoding": {"name": "v2", "separator": "/"}}
    return {"compressors": zarr.codecs.ZstdCodec(level=3), "dimension_names": ["t", "c", "z", "y", "x"]}


def create_container(
    location: str,
    shape_tczyx,
    dtype,
    chunks_zyx,
    info: MultiscaleInfo,
    attributes: dict | None = None,
    storage_options=None,
    shard_chunks_zyx=None,
) -> zarr.Array:
    """Create (overwriting) a multiscale container with its level-0 array and metadata.

    Parameters
    ----------
    location : str
        Container location (local path or URL), e.g. ``fused.ome.zarr``.
    shape_tczyx : tuple of int
        Level-0 shape (t, c, z, y, x).
    dtype : numpy.dtype
    chunks_zyx : tuple of int
        Chunk shape (z, y, x) in voxels; clipped to the shape.
    info : MultiscaleInfo
        Metadata; its ``factors_xyz`` should list level 0 only (``[(1, 1, 1)]``).
    attributes : dict, optional
        Stored under the root attribute :data:`ATTRIBUTE`.
    shard_chunks_zyx : tuple of int, optional
        NGFF 0.5 (zarr v3) only: chunks per shard (z, y, x); see :func:`create_level`.

    Returns
    -------
    zarr.Array
        The level-0 array, filled with 0.
    """
    if info.ngff_version not in NGFF_VERSIONS:
        raise UserError(f"OME-NGFF version '{info.ngff_version}' is not one of {', '.join(NGFF_VERSIONS)}")
    clear_progress(location, storage_options)
    store = open_store(location, storage_options, read_only=False)
    group = zarr.open_group(store, mode="w", zarr_format=2 if info.ngff_version == "0.4" else 3)
    array = create_level(group, 0, shape_tczyx, dtype, chunks_zyx, info.ngff_version, shard_chunks_zyx)
    if attributes is not None:
        group.attrs.update({ATTRIBUTE: attributes})
    write_multiscale_metadata(location, info, storage_options)
    return array


def write_unit_zyx(array: zarr.Array) -> tuple[int, int, int]:
    """The smallest box (z, y, x) that one writer may own: the shard if the array is sharded, else the chunk."""
    return tuple(int(n) for n in (array.shards or array.chunks)[2:])


def create_level(
    group: zarr.Group, level: int, shape_tczyx, dtype, chunks_zyx, ngff_version: str, shard_chunks_zyx=None
) -> zarr.Array:
    """Create (overwriting) the array of one level, chunks ``(1, 1, *chunks_zyx)`` clipped to the shape.

    With ``shard_chunks_zyx`` (NGFF 0.5 only), chunks are grouped into shards of
    that many chunks per axis (fewer where the level is smaller), so one file
    holds many chunks; writers must then own whole shards (:func:`write_unit_zyx`).
    """
    shape = tuple(int(n) for n in shape_tczyx)
    chunks_zyx = tuple(max(1, min(int(c), n)) for c, n in zip(chunks_zyx, shape[2:]))
    options = _array_options(ngff_version)
    if shard_chunks_zyx is not None:
        if ngff_version != "0.5":
            raise UserError("sharding needs OME-NGFF 0.5 (zarr v3); set ngff_version to 0.5")
        per_shard = [min(int(k), -(-n // c)) for k, n, c in zip(shard_chunks_zyx, shape[2:], chunks_zyx)]
        options["shards"] = (1, 1) + tuple(c * k for c, k in zip(chunks_zyx, per_shard))
    return group.create_array(
        str(level),
        shape=shape,
        chunks=(1, 1) + chunks_zyx,
        dtype=np.dtype(dtype),
        fill_value=0,
        overwrite=True,
        **options,
    )


def open_group(location: str, storage_options=None, mode: str = "r") -> zarr.Group:
    """The container's root group (``mode`` ``"r"`` or ``"r+"``)."""
    return _group(location, storage_options, mode)


def open_level(location: str, level: int, storage_options=None, mode: str = "r") -> zarr.Array:
    """The array of one level (``mode`` ``"r"`` or ``"r+"``)."""
    try:
        return zarr.open_array(open_store(storage.join(location, str(level)), storage_options, mode == "r"), mode=mode)
    except (FileNotFoundError, zarr.errors.ArrayNotFoundError) as err:
        raise UserError(f"{location}: level {level} not found ({type(err).__name__})") from None


def container_attributes(location: str, storage_options=None) -> dict | None:
    """The :data:`ATTRIBUTE` root attribute, or None when there is no container or no such attribute."""
    if not storage.exists(location, storage_options):
        return None
    try:
        group = zarr.open_group(open_store(location, storage_options), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        return None
    value = group.attrs.get(ATTRIBUTE)
    return dict(value) if isinstance(value, dict) else None


def update_attributes(location: str, values: dict, storage_options=None) -> None:
    """Merge ``values`` into the :data:`ATTRIBUTE` root attribute."""
    group = _group(location, storage_options, mode="r+")
    current = dict(group.attrs.get(ATTRIBUTE, {}))
    current.update(values)
    group.attrs.update({ATTRIBUTE: current})


def mark_done(location: str, key: str, storage_options=None) -> None:
    """Record that the block ``key`` (a file name, no slashes) is written completely."""
    storage.write_bytes_atomic(storage.join(location, PROGRESS_DIR, key), b"", storage_options, durable=False)


def done_keys(location: str, storage_options=None) -> set[str]:
    """Keys of all blocks recorded by :func:`mark_done`."""
    fs, path = storage.get_fs(storage.join(location, PROGRESS_DIR), storage_options)
    if not fs.exists(path):
        return set()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if not p.endswith(".tmp")}


def clear_progress(location: str, storage_options=None) -> None:
    """Forget all finished-block records (when a container is complete or recreated)."""
    fs, path = storage.get_fs(storage.join(location, PROGRESS_DIR), storage_options)
    if fs.exists(path):
        fs.rm(path, recursive=True)
