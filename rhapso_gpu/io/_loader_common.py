"""Pieces shared by the image loaders (``_zarr_loader``, ``_n5_loader``, ``_tiff_loader``).

* :class:`VolumeReader` and :func:`to_dask`: picklable, lazily opened volume
  readers that dask reads chunk by chunk. A reader holds only locations and
  metadata, so a dask graph built on it can be shipped to distributed workers;
  each worker process opens the file once and keeps the handle in
  :data:`rhapso_gpu.io.reader_cache.HANDLES` for later tasks. Any failure while
  reading a chunk becomes a :class:`UserError` naming the file.
* :func:`array_source`: the reader behind such a dask array, to read a box
  at once without building a dask graph.
* :func:`resolve_location`: a document path resolved against the BasePath.
"""

from __future__ import annotations

import os
import posixpath
from abc import ABC, abstractmethod
from typing import NamedTuple

import dask.array as da
import numpy as np
from fsspec.core import split_protocol

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.reader_cache import HANDLES, local_fingerprint
from rhapso_gpu.io.spimdata import SpimData


def resolve_location(spim: SpimData, path: str, path_type: str = "relative") -> str:
    """Resolve a path of the ``<ImageLoader>`` against the BasePath, without ``.`` or ``..`` parts."""
    location = spim.resolve(path, path_type)
    if storage.is_remote(location):
        protocol, rest = split_protocol(location)
        return f"{protocol}://{posixpath.normpath(rest)}"
    return os.path.normpath(location)


class LoadedLevel(NamedTuple):
    """One resolution level as a loader returns it.

    Attributes
    ----------
    data_zyx : dask.array.Array
        Lazy, C order (z, y, x), native dtype.
    factors_xyz : tuple of float
        Downsampling factors relative to full resolution (x, y, z).
    location : str
        The file, array or dataset the level is read from (for messages).
    """

    data_zyx: da.Array
    factors_xyz: tuple[float, float, float]
    location: str


class VolumeReader(ABC):
    """Base class: a read-only (z, y, x) volume at ``location``.

    Subclasses implement :meth:`_read` for a box given as three step-1
    slices (z, y, x). Those that read through an open handle also implement
    ``_open()`` (open it) and ``_fingerprint_files()`` (local files whose
    change means it must be opened again), and take it from :meth:`_handle`:
    one handle per process for every copy of the reader. Attributes whose
    names start with ``_`` are left out when the reader is pickled.

    Parameters
    ----------
    location : str
        Local path or URL of what is read (named in errors).
    shape_zyx : tuple of int
    dtype : numpy.dtype
        Stored pixel type; the volume delivers it in native byte order.
    """

    ndim = 3

    def __init__(self, location: str, shape_zyx: tuple[int, int, int], dtype):
        self.location = str(location)
        self.shape = tuple(int(v) for v in shape_zyx)
        self.dtype = np.dtype(dtype).newbyteorder("=")

    @abstractmethod
    def _read(self, region_zyx: tuple[slice, slice, slice]) -> np.ndarray:
        """Read the box ``region_zyx`` (three step-1 slices, z, y, x)."""

    def _handle(self):
        """The handle ``self._open()`` opens, cached per process while ``self._fingerprint_files()`` are unchanged."""
        return HANDLES.get(self.__dask_tokenize__(), self._open, local_fingerprint(*self._fingerprint_files()))

    def __getitem__(self, region_zyx: tuple[slice, slice, slice]) -> np.ndarray:
        try:
            return np.asarray(self._read(tuple(region_zyx)), dtype=self.dtype)
        except UserError:
            raise
        except Exception as err:
            box = ", ".join(f"{s.start}:{s.stop}" for s in region_zyx)
            raise UserError(
                f"{self.location}: cannot read the chunk [{box}] (z, y, x): {type(err).__name__}: {err}"
            ) from err

    def __dask_tokenize__(self):
        return (
            type(self).__name__,
            self.location,
            self.shape,
            self.dtype.str,
            repr(sorted(self.__getstate__().items())),
        )

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def to_dask(reader: VolumeReader, chunks_zyx: tuple[int, int, int]) -> da.Array:
    """A lazy dask array over ``reader`` with the given chunk shape (z, y, x)."""
    chunks = tuple(max(1, min(int(c), s)) for c, s in zip(chunks_zyx, reader.shape))
    return da.from_array(
        reader, chunks=chunks, lock=False, asarray=False, fancy=False, meta=np.empty((0, 0, 0), dtype=reader.dtype)
    )


def array_source(data: da.Array):
    """The object a ``da.from_array`` array (as :func:`to_dask` builds) reads from, or None.

    Found under the graph layer ``"original-" + data.name``, where dask's
    ``from_array`` keeps it. None for any other dask array (sliced, computed
    from others) or graph layout (another dask version), so callers fall back
    to computing ``data``.

    Parameters
    ----------
    data : dask.array.Array

    Returns
    -------
    object or None
        Indexable with a tuple of step-1 slices in C order, shape ``data.shape``.
    """
    key = f"original-{data.name}"
    layer = getattr(data.dask, "layers", {}).get(key)
    source = None if layer is None else layer.get(key)
    if source is None or tuple(getattr(source, "shape", ())) != tuple(data.shape):
        return None
    return source
