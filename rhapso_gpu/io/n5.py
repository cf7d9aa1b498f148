"""A small N5 reader and writer on fsspec (local paths and ``s3://``).

Axis order
----------
N5 lists ``dimensions``, ``blockSize`` and chunk grid indices **fastest axis
first** (x, y, z). This module's public API uses **NumPy C order** (z, y, x)
everywhere: ``shape_zyx``, ``chunks_zyx``, ``grid_zyx`` and regions are C order
and are reversed only when reading or writing N5 metadata and chunk files.

Format
------
* Container root ``attributes.json`` holds ``{"n5": "4.0.0"}``; groups are
  folders (usually with an ``attributes.json``); a dataset's ``attributes.json``
  holds ``dimensions``, ``blockSize``, ``dataType`` and ``compression``.
* Block ``(i, j, k)`` (N5 order) is the file ``<dataset>/i/j/k``: a big-endian
  header ``uint16 mode`` (0 = default), ``uint16 ndim``, ``ndim x uint32`` block
  size (N5 order), then the compressed big-endian payload. Edge blocks are
  truncated to the remaining size; a missing block file reads as zeros.
"""

from __future__ import annotations

import bz2
import gzip
import itertools
import json
import lzma
import math
import struct
import zlib
from typing import Any

import dask.array as da
import numpy as np
from numcodecs import Blosc, Zstd

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage

N5_VERSION = "4.0.0"
DATA_TYPES = ("uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64")
DEFAULT_COMPRESSION = {"type": "gzip", "level": -1, "useZlib": False}


def _gzip_encode(compression: dict, raw: bytes) -> bytes:
    level = int(compression.get("level", -1))
    level = 6 if level < 0 else level  # -1 is java.util.zip.Deflater's default, i.e. level 6
    if compression.get("useZlib", False):
        return zlib.compress(raw, level)
    return gzip.compress(raw, compresslevel=level, mtime=0)


def _blosc(compression: dict) -> Blosc:
    return Blosc(
        cname=compression.get("cname", "lz4"),
        clevel=int(compression.get("clevel", 5)),
        shuffle=int(compression.get("shuffle", 1)),
        blocksize=int(compression.get("blocksize", 0)),
    )


# N5 compression "type" -> (encode, decode), each called as f(compression_object, bytes).
_CODECS = {
    "raw": (lambda c, b: b, lambda c, b: b),
    # wbits 47 decodes both gzip and zlib streams (useZlib false or true).
    "gzip": (_gzip_encode, lambda c, b: zlib.decompress(b, 47)),
    "zstd": (lambda c, b: bytes(Zstd(level=int(c.get("level", 3))).encode(b)), lambda c, b: bytes(Zstd().decode(b))),
    "blosc": (lambda c, b: bytes(_blosc(c).encode(b)), lambda c, b: bytes(Blosc().decode(b))),
    "xz": (
        lambda c, b: lzma.compress(b, format=lzma.FORMAT_XZ, preset=int(c.get("preset", 6))),
        lambda c, b: lzma.decompress(b),
    ),
    "bzip2": (lambda c, b: bz2.compress(b, compresslevel=int(c.get("blockSize", 9))), lambda c, b: bz2.decompress(b)),
}


def _codec(compression: dict):
    kind = compression.get("type", "raw")
    if kind not in _CODECS:
        raise UserError(f"N5 compression '{kind}' is not supported (supported: {', '.join(_CODECS)})")
    return _CODECS[kind]


def encode_block(block_zyx: np.ndarray, dtype: np.dtype, compression: dict) -> bytes:
    """The bytes of an N5 chunk file (default mode) holding ``block_zyx`` (C order)."""
    header = struct.pack(f">HH{block_zyx.ndim}I", 0, block_zyx.ndim, *reversed(block_zyx.shape))
    payload = np.ascontiguousarray(block_zyx, dtype=np.dtype(dtype).newbyteorder(">")).tobytes()
    return header + _codec(compression)[0](compression, payload)


def decode_block(data: bytes, dtype: np.dtype, compression: dict) -> np.ndarray:
    """Decode an N5 chunk file to a C-order array (modes 0 and 1 are supported)."""
    mode, ndim = struct.unpack_from(">HH", data, 0)
    if mode not in (0, 1):
        raise ValueError(f"block mode {mode} is not supported (only 0 = default and 1 = varlength)")
    dims_n5 = struct.unpack_from(f">{ndim}I", data, 4)
    offset = 4 + 4 * ndim + (4 if mode == 1 else 0)  # varlength adds a uint32 element count
    raw = _codec(compression)[1](compression, data[offset:])
    count = math.prod(dims_n5)
    values = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(">"), count=count)
    return values.astype(np.dtype(dtype).newbyteorder("="), copy=True).reshape(tuple(reversed(dims_n5)))


class N5Container:
    """An N5 container at a local path or URL.

    Paths given to the methods are relative to the container root
    (``"setup0/timepoint0/s0"``; ``""`` is the root).

    Parameters
    ----------
    location : str
        Local path or URL of the container folder.
    storage_options : dict, optional
        fsspec options for remote locations.
    """

    def __init__(self, location: str, storage_options: dict[str, Any] | None = None):
        self.location = str(location)
        self.storage_options = storage_options

    @classmethod
    def create(cls, location: str, storage_options: dict[str, Any] | None = None) -> N5Container:
        """Create (or reopen) a container and set its ``"n5"`` version attribute."""
        container = cls(location, storage_options)
        container.write_attributes("", {"n5": N5_VERSION})
        return container

    def path(self, path: str) -> str:
        """The location of ``path`` inside the container."""
        return storage.join(self.location, path) if path.strip("/") else self.location

    def read_attributes(self, path: str = "") -> dict:
        """The attributes of a group or dataset; ``{}`` when it has no ``attributes.json``."""
        location = storage.join(self.path(path), "attributes.json")
        if not storage.exists(location, self.storage_options):
            return {}
        try:
            attrs = json.loads(storage.read_bytes(location, self.storage_options, what="N5 attributes"))
        except ValueError as err:
            raise UserError(f"{location}: not valid JSON ({err})") from None
        if not isinstance(attrs, dict):
            raise UserError(f"{location}: expected a JSON object")
        return attrs

    def write_attributes(self, path: str, attributes: dict) -> None:
        """Merge ``attributes`` into the node's attributes, as N5 does.

        Top-level keys are replaced; a value of ``None`` removes the key.
        """
        attrs = self.read_attributes(path)
        attrs.update(attributes)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        text = json.dumps(attrs, separators=(",", ":"))
        storage.write_bytes_atomic(
            storage.join(self.path(path), "attributes.json"), text.encode(), self.storage_options
        )

    def create_group(self, path: str) -> None:
        """Create a group (a folder with an ``attributes.json``), keeping existing attributes."""
        self.write_attributes(path, {})

    def exists(self, path: str) -> bool:
        """True when a group or dataset exists at ``path``."""
        return storage.exists(self.path(path), self.storage_options)

    def create_dataset(
        self,
        path: str,
        shape_zyx: tuple[int, ...],
        chunks_zyx: tuple[int, ...],
        dtype: str | np.dtype,
        compression: dict | None = None,
    ) -> N5Dataset:
        """Create (or redefine) a dataset; existing blocks are not removed.

        Parameters
        ----------
        path : str
            Dataset path inside the container.
        shape_zyx, chunks_zyx : tuple of int
            Array and block shape in C order (written reversed as N5 order).
        dtype : str or numpy.dtype
            One of :data:`DATA_TYPES`.
        compression : dict, optional
            N5 compression object; default gzip (``level -1``, gzip stream).
        """
        dtype = np.dtype(dtype)
        if dtype.name not in DATA_TYPES:
            raise UserError(f"{self.path(path)}: N5 data type {dtype.name} is not supported")
        if len(shape_zyx) != len(chunks_zyx):
            raise ValueError(f"shape {shape_zyx} and chunks {chunks_zyx} differ in length")
        compression = dict(DEFAULT_COMPRESSION if compression is None else compression)
        _codec(compression)  # reject an unsupported compression before writing anything
        self.write_attributes(
            path,
            {
                "dimensions": [int(v) for v in reversed(shape_zyx)],
                "blockSize": [int(v) for v in reversed(chunks_zyx)],
                "dataType": dtype.name,
                "compression": compression,
            },
        )
        return self.open_dataset(path)

    def open_dataset(self, path: str) -> N5Dataset:
        """Open an existing dataset; a missing or malformed one is a :class:`UserError`."""
        location = self.path(path)
        attrs = self.read_attributes(path)
        if "dimensions" not in attrs:
            raise UserError(f"{location}: N5 dataset not found (no attributes.json with 'dimensions')")
        try:
            compression = attrs.get("compression", {"type": attrs.get("compressionType", "raw")})
            return N5Dataset(
                location,
                shape_zyx=tuple(int(v) for v in reversed(attrs["dimensions"])),
                chunks_zyx=tuple(int(v) for v in reversed(attrs["blockSize"])),
                dtype=np.dtype(attrs["dataType"]).name,
                compression=compression,
                storage_options=self.storage_options,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise UserError(f"{location}/attributes.json: bad N5 dataset attributes ({err})") from None


class N5Dataset:
    """An N5 dataset seen as a C-order array. Picklable, so it can travel to dask workers.

    Attributes
    ----------
    location : str
        Dataset folder (local path or URL).
    shape, chunks : tuple of int
        Array and block shape, C order (z, y, x for 3-D).
    dtype : numpy.dtype
    compression : dict
        The N5 compression object.
    """

    def __init__(self, location, shape_zyx, chunks_zyx, dtype, compression, storage_options=None):
        self.location = str(location)
        self.shape = tuple(shape_zyx)
        self.chunks = tuple(chunks_zyx)
        self.dtype = np.dtype(dtype)
        self.compression = dict(compression)
        self.storage_options = storage_options
        self.ndim = len(self.shape)

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """Number of blocks per axis, C order."""
        return tuple(math.ceil(s / c) for s, c in zip(self.shape, self.chunks))

    def block_location(self, grid_zyx: tuple[int, ...]) -> str:
        """The chunk file of block ``grid_zyx`` (C order; the file path is N5 order)."""
        return storage.join(self.location, *(str(int(i)) for i in reversed(grid_zyx)))

    def block_shape(self, grid_zyx: tuple[int, ...]) -> tuple[int, ...]:
        """The (edge-truncated) shape of block ``grid_zyx``, C order."""
        return tuple(min(c, s - g * c) for g, c, s in zip(grid_zyx, self.chunks, self.shape))

    def read_block(self, grid_zyx: tuple[int, ...]) -> np.ndarray:
        """Read one block (zeros when its file is missing)."""
        location = self.block_location(grid_zyx)
        fs, path = storage.get_fs(location, self.storage_options)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return np.zeros(self.block_shape(grid_zyx), dtype=self.dtype)
        except OSError as err:
            raise UserError(f"{location}: cannot read N5 block ({err})") from None
        try:
            block = decode_block(data, self.dtype, self.compression)
        except (ValueError, struct.error, zlib.error, lzma.LZMAError, OSError, RuntimeError) as err:
            raise UserError(f"{location}: corrupt N5 block ({err})") from None
        expected = self.block_shape(grid_zyx)
        if block.ndim != len(expected) or any(b < e for b, e in zip(block.shape, expected)):
            raise UserError(f"{location}: N5 block has shape {block.shape}, expected {expected} (C order)")
        # Some writers store edge blocks at full block size; keep the part inside the dataset.
        return block[tuple(slice(0, e) for e in expected)]

    def write_block(self, grid_zyx: tuple[int, ...], block_zyx: np.ndarray) -> None:
        """Write one block; its shape must be :meth:`block_shape` of ``grid_zyx``."""
        block_zyx = np.asarray(block_zyx)
        if block_zyx.shape != self.block_shape(grid_zyx):
            raise ValueError(f"block {grid_zyx} has shape {block_zyx.shape}, expected {self.block_shape(grid_zyx)}")
        data = encode_block(block_zyx, self.dtype, self.compression)
        storage.write_bytes_atomic(self.block_location(grid_zyx), data, self.storage_options, durable=False)

    def write(self, array_zyx: np.ndarray) -> None:
        """Write a whole array (shape must equal :attr:`shape`), block by block."""
        array_zyx = np.asarray(array_zyx)
        if array_zyx.shape != self.shape:
            raise ValueError(f"array has shape {array_zyx.shape}, dataset {self.shape}")
        for grid in np.ndindex(*self.grid_shape):
            region = tuple(slice(g * c, g * c + n) for g, c, n in zip(grid, self.chunks, self.block_shape(grid)))
            self.write_block(grid, array_zyx[region])

    def read(self, region: tuple[slice, ...] = ()) -> np.ndarray:
        """Read a box: ``region`` is a tuple of step-1 slices in C order (missing axes: everything)."""
        region = tuple(region) + (slice(None),) * (self.ndim - len(region))
        if any(s.step not in (None, 1) for s in region):
            raise ValueError("N5Dataset.read takes step-1 slices only")
        start, stop = zip(*[s.indices(n)[:2] for s, n in zip(region, self.shape)])
        stop = tuple(max(a, b) for a, b in zip(start, stop))
        out = np.zeros([b - a for a, b in zip(start, stop)], dtype=self.dtype)
        if out.size == 0:
            return out
        grid_ranges = [range(a // c, (b - 1) // c + 1) for a, b, c in zip(start, stop, self.chunks)]
        for grid in itertools.product(*grid_ranges):
            block = self.read_block(grid)
            origin = [g * c for g, c in zip(grid, self.chunks)]
            lo = [max(a, o) for a, o in zip(start, origin)]
            hi = [min(b, o + n) for b, o, n in zip(stop, origin, block.shape)]
            src = tuple(slice(l - o, h - o) for l, h, o in zip(lo, hi, origin))
            dst = tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, start))
            out[dst] = block[src]
        return out

    def __getitem__(self, region: tuple[slice, ...]) -> np.ndarray:
        return self.read(region if isinstance(region, tuple) else (region,))

    def __dask_tokenize__(self):
        return (
            "n5",
            self.location,
            self.shape,
            self.chunks,
            self.dtype.str,
            json.dumps(self.compression, sort_keys=True),
        )


def as_dask(dataset: N5Dataset) -> da.Array:
    """A lazy dask array (C order) over ``dataset`` with one dask chunk per N5 block."""
    return da.from_array(
        dataset,
        chunks=dataset.chunks,
        lock=False,
        asarray=False,
        fancy=False,
        meta=np.empty((0,) * dataset.ndim, dtype=dataset.dtype),
    )
