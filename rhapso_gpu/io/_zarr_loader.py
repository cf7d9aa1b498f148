"""The ``bdv.multimg.zarr`` image loader: one OME-Zarr multiscale group per view.

Understands the loader element in its current form (version 3.0,
``<zgroup setup= tp= path= indicies=>``) and the AIND/Allen form (versions
1.0/2.0, ``<zgroup setup= timepoint=><path>..</path></zgroup>``, optionally
with ``<s3bucket>``), and OME-NGFF 0.4 (zarr v2, ``.zattrs``) and 0.5 (zarr v3,
``zarr.json`` attributes ``"ome"``) multiscale metadata.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

import numpy as np
import zarr

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io._loader_common import LoadedLevel, VolumeReader, resolve_location, to_dask
from rhapso_gpu.io.spimdata import SpimData, ViewId


def open_store(location: str, storage_options: dict[str, Any] | None = None, read_only: bool = True):
    """A zarr 3 store rooted at ``location`` (``LocalStore`` or ``FsspecStore`` for URLs)."""
    if storage.is_remote(location):
        options = storage.default_storage_options(location) if storage_options is None else storage_options
        return zarr.storage.FsspecStore.from_url(location, storage_options=options, read_only=read_only)
    _, path = storage.get_fs(location)
    return zarr.storage.LocalStore(path, read_only=read_only)


class ZarrVolume(VolumeReader):
    """A (z, y, x) volume inside a 3-D, 4-D or 5-D zarr array.

    Parameters
    ----------
    location : str
        The array's location.
    leading_index : tuple of int
        Indices into the axes before z (c or t, c); empty for 3-D arrays.
    """

    def __init__(self, location, shape_zyx, dtype, leading_index=(), storage_options=None):
        super().__init__(location, shape_zyx, dtype)
        self.leading_index = tuple(int(i) for i in leading_index)
        self.storage_options = storage_options

    def _open(self):
        return zarr.open_array(open_store(self.location, self.storage_options), mode="r")

    def _fingerprint_files(self):
        return tuple(storage.join(self.location, name) for name in ("zarr.json", ".zarray"))

    def _read(self, region_zyx):
        return self._handle()[self.leading_index + region_zyx]


def open_levels(spim: SpimData, view: ViewId, storage_options: dict[str, Any] | None) -> list[LoadedLevel]:
    """The pyramid of ``view``, level 0 first (see :func:`rhapso_gpu.io.images.open_view_levels`)."""
    loader = spim.image_loader
    group_path, indicies = _zgroup(loader, view, spim.location or "dataset.xml")
    group = storage.join(_container(spim, loader), group_path)
    axes, datasets = _multiscale(group, view, storage_options)
    locations = [storage.join(group, str(d.get("path", ""))) for d in datasets]
    arrays = [_open_array(location, view, storage_options) for location in locations]
    scales = [_scale(d, len(axes)) for d in datasets]
    levels = []
    for array, location, scale in zip(arrays, locations, scales):
        factors = _factors_xyz(axes, scales[0], scale, arrays[0].shape, array.shape)
        leading = _leading_index(array.shape, indicies, view, location)
        reader = ZarrVolume(location, array.shape[-3:], array.dtype, leading, storage_options)
        chunks = array.shards or array.chunks
        levels.append(LoadedLevel(to_dask(reader, chunks[-3:]), factors, location))
    return levels


def _container(spim: SpimData, loader: ET.Element) -> str:
    zarr_el = loader.find("zarr")
    if zarr_el is None or not (zarr_el.text or "").strip():
        raise UserError(f"{spim.location or 'dataset.xml'}: ImageLoader bdv.multimg.zarr has no <zarr> container path")
    text = zarr_el.text.strip()
    bucket = (loader.findtext("s3bucket") or "").strip()
    if bucket:  # AIND v1.0: <s3bucket> + key prefix in <zarr>
        return f"s3://{bucket}/{text.strip('/')}"
    return resolve_location(spim, text, zarr_el.get("type", "relative"))


def _zgroup(loader: ET.Element, view: ViewId, xml: str) -> tuple[str, list[int] | None]:
    """``(path, indicies)`` of the view's zgroup; ``indicies`` is None when not given."""
    for el in loader.iter("zgroup"):
        tp = el.get("tp", el.get("timepoint"))
        if el.get("setup") is None or tp is None:
            raise UserError(f"{xml}: <zgroup> without setup= and tp= (or timepoint=) attributes")
        if (int(tp), int(el.get("setup"))) != (view.timepoint, view.setup):
            continue
        path = el.get("path", el.findtext("path"))
        if not (path or "").strip():
            raise UserError(f"{xml}: <zgroup> of {view} has no path")
        numbers = re.findall(r"-?\d+", el.get("indicies", ""))
        return path.strip(), [int(n) for n in numbers] or None
    raise UserError(f"{xml}: the bdv.multimg.zarr ImageLoader has no <zgroup> for {view}")


def _multiscale(group: str, view: ViewId, storage_options) -> tuple[list[str], list[dict]]:
    """Axis names (C order) and ``datasets`` of the group's first OME-NGFF multiscale."""
    candidates = [("zarr.json", lambda doc: doc.get("attributes", {})), (".zattrs", lambda doc: doc)]
    for name, attributes_of in candidates:
        location = storage.join(group, name)
        if not storage.exists(location, storage_options):
            continue
        try:
            attrs = attributes_of(json.loads(storage.read_bytes(location, storage_options)))
            multiscale = attrs.get("ome", attrs)["multiscales"][0]  # NGFF 0.5 nests it under "ome"
            datasets = list(multiscale["datasets"])
            if not datasets:
                raise ValueError("no datasets")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as err:
            raise UserError(f"{view}: {location}: no readable OME-NGFF multiscales metadata ({err})") from None
        axes = multiscale.get("axes") or ["z", "y", "x"]  # NGFF < 0.3 had no axes; spatial axes come last
        return [a["name"] if isinstance(a, dict) else str(a) for a in axes], datasets
    raise UserError(f"{view}: {group}: OME-Zarr group not found (no zarr.json or .zattrs)")


def _open_array(location: str, view: ViewId, storage_options):
    try:
        array = zarr.open_array(open_store(location, storage_options), mode="r")
    except Exception as err:  # zarr raises many kinds of errors for missing or bad arrays
        raise UserError(f"{view}: {location}: cannot open the zarr array ({type(err).__name__}: {err})") from err
    if not 3 <= array.ndim <= 5:
        raise UserError(f"{view}: {location}: expected a 3-D to 5-D array, found {array.ndim}-D")
    return array


def _scale(dataset: dict, ndim: int) -> np.ndarray | None:
    """The dataset's scale (C order, product of its ``scale`` transforms), or None."""
    scales = [
        t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale" and "scale" in t
    ]
    if not scales:
        return None
    return np.prod([np.asarray(s, dtype=float)[-ndim:] for s in scales], axis=0)


def _factors_xyz(axes, scale0, scale, shape0, shape) -> tuple[float, float, float]:
    """Per-axis factor of a level: scale / level-0 scale, or the shape ratio without scales."""
    factors = []
    for name, fallback_axis in (("x", -1), ("y", -2), ("z", -3)):
        i = axes.index(name) if name in axes else len(axes) + fallback_axis
        if scale is None or scale0 is None:
            factors.append(float(round(shape0[i - len(axes)] / shape[i - len(axes)])))
        else:
            factors.append(round(float(scale[i] / scale0[i]), 4))
    return tuple(factors)


def _leading_index(shape, indicies, view: ViewId, location: str) -> tuple[int, ...]:
    """Indices for the axes before z; ``indicies`` are listed from the axis after z outward (c, then t)."""
    n_leading = len(shape) - 3
    if indicies is None:
        if any(s != 1 for s in shape[:n_leading]):
            raise UserError(
                f"{view}: {location}: array of shape {tuple(shape)} has channels or time points; "
                'the zgroup needs indicies="c t" to select one'
            )
        return (0,) * n_leading
    if len(indicies) != n_leading:
        raise UserError(f"{view}: {location}: indicies {indicies} do not fit an array of shape {tuple(shape)}")
    leading = tuple(reversed(indicies))
    if any(not 0 <= i < s for i, s in zip(leading, shape)):
        raise UserError(f"{view}: {location}: indicies {indicies} are out of range for shape {tuple(shape)}")
    return leading
