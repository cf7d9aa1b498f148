"""The ``spimreconstruction.filemap2`` image loader, for TIFF files (one level only).

Each view maps to ``<FileMapping view_setup= timepoint= series= channel=>``
with a ``<file>``. Files are read lazily with tifffile, one dask chunk per z
plane, from local paths or URLs. As in BigStitcher's Bio-Formats reader, the
time index inside a file is 0 when the file holds a single time point and the
view's time point id otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tifffile

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io._loader_common import LoadedLevel, VolumeReader, resolve_location, to_dask
from rhapso_gpu.io.spimdata import SpimData, ViewId


class TiffVolume(VolumeReader):
    """A (z, y, x) volume made of TIFF pages, one page per z plane.

    Uncompressed contiguous series are read by byte offset; others page by
    page through tifffile.

    Parameters
    ----------
    location : str
    shape_zyx : tuple of int
    file_dtype : numpy.dtype or str
        Pixel dtype including the file's byte order (the volume's dtype is native).
    page_indices : list of int or None
        For each z plane, the page index within the file (when ``plane_offsets`` is None).
    page_shape : tuple of int
        Shape of one page as stored (y, x, possibly with a samples axis).
    plane_offsets : list of int or None
        For each z plane, the byte offset of its pixels when the series is
        uncompressed and contiguous.
    sample : tuple of (int, int) or None
        ``(axis, index)`` selecting a channel from the samples axis of a page, or None.
    """

    def __init__(
        self,
        location,
        shape_zyx,
        file_dtype,
        page_indices,
        page_shape,
        plane_offsets=None,
        sample=None,
        storage_options=None,
    ):
        super().__init__(location, shape_zyx, file_dtype)
        self.file_dtype = np.dtype(file_dtype).str
        self.page_indices = None if page_indices is None else [int(i) for i in page_indices]
        self.page_shape = tuple(int(s) for s in page_shape)
        self.plane_offsets = None if plane_offsets is None else [int(o) for o in plane_offsets]
        self.sample = sample
        self.storage_options = storage_options

    def _read(self, region_zyx):
        z, y, x = region_zyx
        fs, path = storage.get_fs(self.location, self.storage_options)
        with fs.open(path, "rb") as fh:
            if self.plane_offsets is not None:
                dtype = np.dtype(self.file_dtype)
                nbytes = math.prod(self.page_shape) * dtype.itemsize
                planes = []
                for offset in self.plane_offsets[z]:
                    fh.seek(offset)
                    planes.append(np.frombuffer(fh.read(nbytes), dtype).reshape(self.page_shape))
            else:
                with tifffile.TiffFile(fh) as tif:
                    planes = [tif.pages[i].asarray().reshape(self.page_shape) for i in self.page_indices[z]]
        planes = np.stack(planes)
        if self.sample is not None:
            planes = np.take(planes, self.sample[1], axis=1 + self.sample[0])
        return planes[:, y, x]


def open_levels(spim: SpimData, view: ViewId, storage_options: dict[str, Any] | None) -> list[LoadedLevel]:
    """The single full-resolution level of ``view`` (see :func:`rhapso_gpu.io.images.open_view_levels`)."""
    xml = spim.location or "dataset.xml"
    loader = spim.image_loader
    if (loader.findtext("ZGrouped") or "false").strip().lower() == "true":
        raise UserError(
            f"{xml}: spimreconstruction.filemap2 with <ZGrouped>true</ZGrouped> (one file per plane) is not supported"
        )
    mappings = {}
    for el in loader.iter("FileMapping"):
        file_el = el.find("file")
        if file_el is None or el.get("view_setup") is None or el.get("timepoint") is None:
            raise UserError(f"{xml}: <FileMapping> needs view_setup=, timepoint= and a <file>")
        location = resolve_location(spim, (file_el.text or "").strip(), file_el.get("type", "relative"))
        mappings[ViewId(int(el.get("timepoint")), int(el.get("view_setup")))] = (location, el)
    if view not in mappings:
        raise UserError(f"{xml}: the spimreconstruction.filemap2 ImageLoader has no <FileMapping> for {view}")
    location, el = mappings[view]
    timepoints_in_file = {v.timepoint for v, (loc, _) in mappings.items() if loc == location}
    t_index = view.timepoint if len(timepoints_in_file) > 1 else 0
    series, channel = int(el.get("series", 0)), int(el.get("channel", 0))
    fs, path = storage.get_fs(location, storage_options)
    if not fs.exists(path):
        raise UserError(f"{view}: {location}: TIFF file not found")
    try:
        with fs.open(path, "rb") as fh, tifffile.TiffFile(fh) as tif:
            if not 0 <= series < len(tif.series):
                raise UserError(f"{view}: {location}: series {series} not in the file ({len(tif.series)} series)")
            reader = _volume(tif.series[series], tif.byteorder, location, channel, t_index, view, storage_options)
    except (tifffile.TiffFileError, OSError, ValueError) as err:
        raise UserError(f"{view}: {location}: not a readable TIFF file ({err})") from None
    data = to_dask(reader, (1,) + reader.shape[1:])
    return [LoadedLevel(data, (1.0, 1.0, 1.0), location)]


def _volume(series, byteorder, location, channel, t_index, view, storage_options) -> TiffVolume:
    """Work out which page of ``series`` holds each z plane of the wanted channel and time point."""
    page_axes, axes, shape = series.keyframe.axes, series.axes, series.shape
    if not (axes.endswith(page_axes) and page_axes.replace("S", "") == "YX"):
        raise UserError(f"{view}: {location}: unsupported TIFF layout (axes {axes}, page axes {page_axes})")
    lead_axes, lead_shape = axes[: len(axes) - len(page_axes)], shape[: len(axes) - len(page_axes)]
    # z is 'Z', else an unnamed plane axis, else T (Bio-Formats' XYZ/XYT mix-up fix when the file has one time point)
    z_candidates = [i for i, a in enumerate(lead_axes) if a == "Z"] or [
        i for i, a in enumerate(lead_axes) if a not in "CT"
    ]
    if not z_candidates and "T" in lead_axes and t_index == 0:
        z_candidates = [lead_axes.index("T")]
    z_axis = z_candidates[0] if z_candidates else None
    index = []
    for i, (axis, size) in enumerate(zip(lead_axes, lead_shape)):
        wanted = {"C": channel, "T": t_index}.get(axis, 0) if i != z_axis else 0
        if not 0 <= wanted < size:
            raise UserError(f"{view}: {location}: {axis} index {wanted} out of range (axes {axes}, shape {shape})")
        if i != z_axis and axis not in "CT" and size != 1:
            raise UserError(f"{view}: {location}: cannot tell the z axis (axes {axes}, shape {shape})")
        index.append(wanted)
    sample = None
    if "S" in page_axes:  # samples (e.g. RGB) are the channels unless the file also has a C axis
        s_axis, s_index = page_axes.index("S"), channel if "C" not in lead_axes else 0
        if not 0 <= s_index < series.keyframe.shape[s_axis]:
            raise UserError(f"{view}: {location}: channel {channel} out of range (axes {axes}, shape {shape})")
        sample = (s_axis, s_index)
    elif "C" not in lead_axes and channel != 0:
        raise UserError(f"{view}: {location}: channel {channel} requested but the file has one channel (axes {axes})")
    n_z = lead_shape[z_axis] if z_axis is not None else 1
    keys = []  # plane index within the series, per z
    for z in range(n_z):
        if z_axis is not None:
            index[z_axis] = z
        keys.append(int(np.ravel_multi_index(index, lead_shape)) if lead_shape else 0)
    page_shape = tuple(series.keyframe.shape)
    plane_yx = tuple(s for s, a in zip(page_shape, page_axes) if a != "S")
    if math.prod(plane_yx) == 0:
        raise UserError(f"{view}: {location}: empty image planes")
    file_dtype = series.dtype.newbyteorder(byteorder)
    plane_offsets = None
    if series.dataoffset is not None:  # uncompressed and contiguous: planes follow each other
        plane_offsets = [series.dataoffset + k * math.prod(page_shape) * file_dtype.itemsize for k in keys]
    page_indices = None if plane_offsets is not None else [series.pages[k].index for k in keys]
    return TiffVolume(
        location, (n_z,) + plane_yx, file_dtype, page_indices, page_shape, plane_offsets, sample, storage_options
    )
