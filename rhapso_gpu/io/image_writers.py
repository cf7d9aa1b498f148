"""Write a view's images (all pyramid levels) and the matching ``<ImageLoader>`` element.

Layouts, relative to the dataset's BasePath (BigStitcher-Spark conventions):

* ``zarr``: container ``dataset.ome.zarr``, one multiscale group per view
  ``s{setup}-t{tp}.zarr`` with 5-D arrays ``(t, c, z, y, x) = (1, 1, z, y, x)``
  at ``/{level}``; OME-NGFF 0.4 on zarr v2 (default) or 0.5 on zarr v3.
  Loader ``bdv.multimg.zarr`` version 3.0.
* ``n5``: ``dataset.n5/setup{S}/timepoint{T}/s{L}`` (gzip); group ``setup{S}``
  holds ``dataType`` and ``downsamplingFactors``. Loader ``bdv.n5`` version 1.1.
* ``tiff``: ``tiles/tp{T}_setup{S}.tif``, full resolution only. Loader
  ``spimreconstruction.filemap2``.

All writes overwrite what is there, so re-running is safe.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from typing import Any

import numcodecs
import numpy as np
import tifffile
import zarr

from rhapso_gpu.io import n5, storage
from rhapso_gpu.io._zarr_loader import open_store
from rhapso_gpu.io.spimdata import ViewId

FORMATS = ("zarr", "n5", "tiff")
NGFF_VERSIONS = ("0.4", "0.5")
ZARR_CONTAINER = "dataset.ome.zarr"
N5_CONTAINER = "dataset.n5"


def zarr_group_name(view: ViewId) -> str:
    """The view's multiscale group inside ``dataset.ome.zarr``."""
    return f"s{view.setup}-t{view.timepoint}.zarr"


def n5_dataset_path(view: ViewId, level: int) -> str:
    """The view's level dataset inside ``dataset.n5``."""
    return f"setup{view.setup}/timepoint{view.timepoint}/s{level}"


def tiff_path(view: ViewId) -> str:
    """The view's TIFF file, relative to the BasePath."""
    return f"tiles/tp{view.timepoint}_setup{view.setup}.tif"


def write_view_levels(
    fmt: str,
    base_location: str,
    view: ViewId,
    levels_zyx: list[np.ndarray],
    factors_xyz: list[tuple[int, int, int]],
    voxel_size_xyz: tuple[float, float, float],
    unit: str = "micrometer",
    chunks_zyx: tuple[int, int, int] = (64, 128, 128),
    ngff_version: str = "0.4",
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write one view's pyramid.

    Parameters
    ----------
    fmt : {'zarr', 'n5', 'tiff'}
    base_location : str
        The dataset's BasePath (local path or URL).
    view : ViewId
    levels_zyx : list of numpy.ndarray
        Level 0 (full resolution) first, each C order (z, y, x). ``tiff`` writes level 0 only.
    factors_xyz : list of tuple of int
        Downsampling factors (x, y, z) of each level relative to level 0.
    voxel_size_xyz : tuple of float
        Full-resolution voxel size (x, y, z) in ``unit``.
    unit : str
        Physical unit (OME-NGFF unit name such as ``micrometer``).
    chunks_zyx : tuple of int
        Block shape (z, y, x), clipped to each level's shape.
    ngff_version : {'0.4', '0.5'}
        ``zarr`` only: NGFF 0.4 on zarr v2 or 0.5 on zarr v3.
    storage_options : dict, optional
        fsspec options for remote locations.
    """
    view = ViewId(*view)
    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r} is not one of {FORMATS}")
    if len(levels_zyx) != len(factors_xyz) or not levels_zyx:
        raise ValueError(f"{len(levels_zyx)} levels but {len(factors_xyz)} factor triples")
    levels_zyx = [np.asarray(level) for level in levels_zyx]
    if fmt == "zarr":
        _write_zarr(
            base_location,
            view,
            levels_zyx,
            factors_xyz,
            voxel_size_xyz,
            unit,
            chunks_zyx,
            ngff_version,
            storage_options,
        )
    elif fmt == "n5":
        _write_n5(base_location, view, levels_zyx, factors_xyz, chunks_zyx, storage_options)
    else:
        _write_tiff(base_location, view, levels_zyx[0], voxel_size_xyz, unit, storage_options)


def image_loader_element(fmt: str, views: list[ViewId], ngff_version: str = "0.4") -> ET.Element:
    """The ``<ImageLoader>`` element for images written by :func:`write_view_levels`.

    Parameters
    ----------
    fmt : {'zarr', 'n5', 'tiff'}
    views : list of ViewId
    ngff_version : {'0.4', '0.5'}
        Checked for validity; the ``bdv.multimg.zarr`` element is the same for both.
    """
    if fmt not in FORMATS:
        raise ValueError(f"image format {fmt!r} is not one of {FORMATS}")
    if ngff_version not in NGFF_VERSIONS:
        raise ValueError(f"OME-NGFF version {ngff_version!r} is not one of {NGFF_VERSIONS}")
    views = sorted(ViewId(*v) for v in views)
    if fmt == "zarr":
        el = ET.Element("ImageLoader", {"format": "bdv.multimg.zarr", "version": "3.0"})
        ET.SubElement(el, "zarr", {"type": "relative"}).text = ZARR_CONTAINER
        groups = ET.SubElement(el, "zgroups")
        for v in views:
            attrs = {"setup": str(v.setup), "tp": str(v.timepoint), "path": zarr_group_name(v), "indicies": "[]"}
            ET.SubElement(groups, "zgroup", attrs)
    elif fmt == "n5":
        el = ET.Element("ImageLoader", {"format": "bdv.n5", "version": "1.1"})
        ET.SubElement(el, "n5", {"type": "relative"}).text = N5_CONTAINER
    else:
        el = ET.Element("ImageLoader", {"format": "spimreconstruction.filemap2"})
        ET.SubElement(el, "ZGrouped").text = "false"
        files = ET.SubElement(el, "files")
        for v in views:
            attrs = {"view_setup": str(v.setup), "timepoint": str(v.timepoint), "series": "0", "channel": "0"}
            mapping = ET.SubElement(files, "FileMapping", attrs)
            ET.SubElement(mapping, "file", {"type": "relative"}).text = tiff_path(v)
    return el


def _clip(chunks_zyx, shape_zyx) -> tuple[int, ...]:
    return tuple(max(1, min(int(c), int(s))) for c, s in zip(chunks_zyx, shape_zyx))


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _ngff_multiscale(name, factors_xyz, voxel_size_xyz, unit, ngff_version) -> dict:
    """OME-NGFF multiscale metadata for 5-D (t, c, z, y, x) levels at paths ``0, 1, ...``."""
    axes = [{"name": "t", "type": "time", "unit": "millisecond"}, {"name": "c", "type": "channel"}]
    axes += [{"name": a, "type": "space", "unit": unit} for a in "zyx"]
    voxel_zyx = np.asarray(voxel_size_xyz, dtype=float)[::-1]
    datasets = []
    for level, factors in enumerate(factors_xyz):
        f_zyx = np.asarray(factors, dtype=float)[::-1]
        scale = [1.0, 1.0] + [float(v) for v in voxel_zyx * f_zyx]
        translation = [0.0, 0.0] + [float(v) for v in 0.5 * (f_zyx - 1.0) * voxel_zyx]
        transforms = [{"type": "scale", "scale": scale}, {"type": "translation", "translation": translation}]
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    multiscale = {"name": name, "axes": axes, "datasets": datasets}
    if ngff_version == "0.4":
        multiscale = {"version": "0.4", **multiscale}
    return multiscale


def _write_zarr(base, view, levels_zyx, factors_xyz, voxel_size_xyz, unit, chunks_zyx, ngff_version, storage_options):
    if ngff_version not in NGFF_VERSIONS:
        raise ValueError(f"OME-NGFF version {ngff_version!r} is not one of {NGFF_VERSIONS}")
    zarr_format = 2 if ngff_version == "0.4" else 3
    store = open_store(storage.join(base, ZARR_CONTAINER), storage_options, read_only=False)
    root = zarr.open_group(store, mode="a", zarr_format=zarr_format)
    group = root.require_group(zarr_group_name(view))
    multiscale = _ngff_multiscale(
        zarr_group_name(view)[: -len(".zarr")], factors_xyz, voxel_size_xyz, unit, ngff_version
    )
    if zarr_format == 2:
        group.attrs.update({"multiscales": [multiscale]})
        options = {"compressors": numcodecs.Zstd(level=3), "chunk_key_encoding": {"name": "v2", "separator": "/"}}
    else:
        group.attrs.update({"ome": {"version": "0.5", "multiscales": [multiscale]}})
        options = {"compressors": zarr.codecs.ZstdCodec(level=3), "dimension_names": ["t", "c", "z", "y", "x"]}
    for level, data in enumerate(levels_zyx):
        array = group.create_array(
            str(level),
            shape=(1, 1) + data.shape,
            chunks=(1, 1) + _clip(chunks_zyx, data.shape),
            dtype=data.dtype,
            fill_value=0,
            overwrite=True,
            **options,
        )
        array[...] = data[np.newaxis, np.newaxis]


def _write_n5(base, view, levels_zyx, factors_xyz, chunks_zyx, storage_options):
    container = n5.N5Container.create(storage.join(base, N5_CONTAINER), storage_options)
    factor_lists = [[_json_number(f) for f in factors] for factors in factors_xyz]
    setup_group = f"setup{view.setup}"
    container.write_attributes(setup_group, {"dataType": levels_zyx[0].dtype.name, "downsamplingFactors": factor_lists})
    container.create_group(f"{setup_group}/timepoint{view.timepoint}")
    for level, (data, factors) in enumerate(zip(levels_zyx, factor_lists)):
        path = n5_dataset_path(view, level)
        dataset = container.create_dataset(path, data.shape, _clip(chunks_zyx, data.shape), data.dtype)
        container.write_attributes(path, {"downsamplingFactors": factors})
        dataset.write(data)


def _write_tiff(base, view, data_zyx, voxel_size_xyz, unit, storage_options):
    buffer = io.BytesIO()
    vx, vy, vz = (float(v) for v in voxel_size_xyz)
    if data_zyx.dtype in (np.uint8, np.uint16, np.float32):  # an ImageJ hyperstack: Fiji/Bio-Formats see z, not t
        imagej_unit = "micron" if unit == "micrometer" else unit
        tifffile.imwrite(
            buffer,
            data_zyx,
            imagej=True,
            resolution=(1.0 / vx, 1.0 / vy),
            metadata={"axes": "ZYX", "spacing": vz, "unit": imagej_unit},
        )
    else:
        tifffile.imwrite(buffer, data_zyx, photometric="minisblack", metadata={"axes": "ZYX"})
    storage.write_bytes_atomic(storage.join(base, tiff_path(view)), buffer.getvalue(), storage_options)
