"""Lazy image access per view and resolution level.

:func:`open_view_levels` reads the dataset's ``<ImageLoader>`` and returns the
view's pyramid as lazy dask arrays in **C order (z, y, x)**, native dtype.
Supported loader formats (each parsed in its own private module):

* ``bdv.multimg.zarr`` (OME-Zarr, NGFF 0.4 / zarr v2 and 0.5 / zarr v3) - ``_zarr_loader``
* ``bdv.n5`` - ``_n5_loader``
* ``spimreconstruction.filemap2`` (TIFF, one level) - ``_tiff_loader``
* ``split.imgloader`` / ``split.multiresolutionimgloader`` / ``split.viewerimgloader``
  (sub-views of any of these) - ``_split_loader``

Errors in the document or the image files are :class:`UserError` naming the
view (``tp0/setup3``) and the file; so are unreadable chunks at compute time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import _n5_loader, _split_loader, _tiff_loader, _zarr_loader
from rhapso_gpu.io._loader_common import array_source
from rhapso_gpu.io.spimdata import SpimData, ViewId

_LOADERS = {
    "bdv.multimg.zarr": _zarr_loader.open_levels,
    "bdv.n5": _n5_loader.open_levels,
    "spimreconstruction.filemap2": _tiff_loader.open_levels,
}
_LOADERS.update(dict.fromkeys(_split_loader.FORMATS, _split_loader.opener(_LOADERS)))


@dataclass(frozen=True)
class PyramidLevel:
    """One resolution level of a view.

    Attributes
    ----------
    index : int
        Level number, 0 = full resolution.
    data_zyx : dask.array.Array
        Lazy image, C order (z, y, x), native dtype.
    factors_xyz : tuple of float
        Downsampling factors (x, y, z) relative to full resolution.
    """

    index: int
    data_zyx: da.Array
    factors_xyz: tuple[float, float, float]

    @property
    def mipmap_xyz(self) -> np.ndarray:
        """4x4 affine from this level's pixel coordinates (xyz) to full-resolution pixels (xyz).

        Scale ``f`` and translation ``(f - 1) / 2`` per axis (BigDataViewer
        convention: level voxel ``i`` is centred on full-resolution ``f*i + (f-1)/2``).
        """
        f = np.asarray(self.factors_xyz, dtype=np.float64)
        m = np.diag(np.append(f, 1.0))
        m[:3, 3] = (f - 1.0) / 2.0
        return m

    def read_region_zyx(self, slices_zyx: tuple[slice, slice, slice]) -> np.ndarray:
        """Read a box of this level now, in the calling thread.

        Reads straight from the level's reader (one call, no dask graph) when
        :attr:`data_zyx` is a plain lazy view of one, otherwise computes the
        dask slice synchronously; the pixels are the same either way.

        Parameters
        ----------
        slices_zyx : tuple of slice
            Three step-1 slices (z, y, x) in pixels of this level.

        Returns
        -------
        numpy.ndarray
            The box, C order (z, y, x), native dtype.

        Raises
        ------
        UserError
            When the image files cannot be read.
        """
        if len(slices_zyx) != 3 or any(s.step not in (None, 1) for s in slices_zyx):
            raise ValueError(f"read_region_zyx takes three step-1 slices (z, y, x), got {slices_zyx}")
        bounds = [s.indices(n)[:2] for s, n in zip(slices_zyx, self.data_zyx.shape)]
        region = tuple(slice(start, max(start, stop)) for start, stop in bounds)
        source = array_source(self.data_zyx)
        if source is not None:
            return np.asarray(source[region])
        (box,) = dask.compute(self.data_zyx[region], scheduler="synchronous", optimize_graph=False)
        return np.asarray(box)


def open_view_levels(spim: SpimData, view: ViewId, storage_options: dict[str, Any] | None = None) -> list[PyramidLevel]:
    """Open all resolution levels of one view, lazily.

    Parameters
    ----------
    spim : SpimData
        The dataset; relative image paths resolve against its BasePath.
    view : ViewId
        ``(timepoint, setup)``.
    storage_options : dict, optional
        fsspec options for remote (``s3://``) images.

    Returns
    -------
    list of PyramidLevel
        Level 0 (full resolution) first.

    Raises
    ------
    UserError
        Unsupported loader format, missing or unreadable image files or
        metadata, or a level-0 shape that differs from the ViewSetup's ``<size>``.
    """
    view = ViewId(*view)
    xml = spim.location or "dataset.xml"
    fmt = spim.image_format
    if fmt not in _LOADERS:
        raise UserError(f"{xml}: image loader format '{fmt}' is not supported (supported: {', '.join(_LOADERS)})")
    if view.setup not in spim.setups:
        raise UserError(f"{xml}: {view}: setup {view.setup} is not among the ViewSetups")
    loaded = _LOADERS[fmt](spim, view, storage_options)
    size_xyz = spim.setups[view.setup].size_xyz
    shape_zyx = tuple(loaded[0].data_zyx.shape)
    if size_xyz is not None and shape_zyx != tuple(int(v) for v in reversed(size_xyz)):
        raise UserError(
            f"{view}: {loaded[0].location}: image is {' x '.join(map(str, reversed(shape_zyx)))} (x y z) "
            f"but the ViewSetup <size> is {' '.join(str(int(v)) for v in size_xyz)}"
        )
    return [PyramidLevel(i, level.data_zyx, tuple(level.factors_xyz)) for i, level in enumerate(loaded)]
