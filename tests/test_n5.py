"""The hand-written N5 implementation: exact bytes, attributes, round trips, errors."""

import gzip
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import n5

SHAPE_ZYX = (3, 4, 5)
CHUNKS_ZYX = (2, 2, 3)
DATA = np.arange(np.prod(SHAPE_ZYX), dtype=np.uint16).reshape(SHAPE_ZYX) * 257  # both bytes differ


def _expected_header(block_shape_zyx):
    """Mode 0, ndim, then the block size in N5 order (x, y, z), all big-endian."""
    return struct.pack(">HH3I", 0, 3, *reversed(block_shape_zyx))


@pytest.fixture()
def container(tmp_path):
    return n5.N5Container.create(str(tmp_path / "c.n5"))


def test_root_and_dataset_attributes_json(container, tmp_path):
    container.create_dataset("g/ds", SHAPE_ZYX, CHUNKS_ZYX, "uint16")
    root = json.loads((tmp_path / "c.n5" / "attributes.json").read_text())
    assert root == {"n5": "4.0.0"}
    attrs = json.loads((tmp_path / "c.n5" / "g" / "ds" / "attributes.json").read_text())
    assert attrs == {
        "dimensions": [5, 4, 3],
        "blockSize": [3, 2, 2],
        "dataType": "uint16",
        "compression": {"type": "gzip", "level": -1, "useZlib": False},
    }


@pytest.mark.parametrize("compression", [{"type": "raw"}, {"type": "gzip", "level": -1, "useZlib": False}])
def test_block_files_are_byte_exact(container, tmp_path, compression):
    ds = container.create_dataset("ds", SHAPE_ZYX, CHUNKS_ZYX, "uint16", compression)
    ds.write(DATA)
    folder = tmp_path / "c.n5" / "ds"
    # grid (z=0, y=1, x=1) is a full block in z and y, truncated in x: file x/y/z = 1/1/0
    # grid (z=1, y=0, x=0) is the z edge block (1 plane left): file 0/0/1
    for grid_zyx, file_xyz in [((0, 1, 1), "1/1/0"), ((1, 0, 0), "0/0/1"), ((0, 0, 0), "0/0/0")]:
        region = tuple(slice(g * c, min((g + 1) * c, s)) for g, c, s in zip(grid_zyx, CHUNKS_ZYX, SHAPE_ZYX))
        block = DATA[region]
        payload = block.astype(">u2").tobytes()  # x fastest, big-endian
        if compression["type"] == "gzip":
            payload = gzip.compress(payload, compresslevel=6, mtime=0)
        data = (folder / file_xyz).read_bytes()
        assert data == _expected_header(block.shape) + payload
    assert (folder / "1/0/1").read_bytes()[:16] == _expected_header((1, 2, 2))
    # x has 2 blocks, y 2, z 2: exactly 8 chunk files
    assert sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "attributes.json"
    ) == [f"{x}/{y}/{z}" for x in range(2) for y in range(2) for z in range(2)]


def test_gzip_payload_is_a_gzip_stream_of_big_endian_values(container, tmp_path):
    ds = container.create_dataset("ds", (1, 1, 3), (1, 1, 3), "uint16")
    ds.write(np.array([[[1, 2, 0x0102]]], dtype=np.uint16))
    data = (tmp_path / "c.n5" / "ds" / "0" / "0" / "0").read_bytes()
    assert data[:16] == bytes.fromhex("0000 0003 00000003 00000001 00000001".replace(" ", ""))
    assert data[16:18] == b"\x1f\x8b"
    assert gzip.decompress(data[16:]) == bytes.fromhex("0001 0002 0102".replace(" ", ""))


@pytest.mark.parametrize(
    "dtype,compression",
    [
        ("uint8", {"type": "raw"}),
        ("uint16", {"type": "gzip", "level": -1, "useZlib": False}),
        ("uint32", {"type": "gzip", "level": 6, "useZlib": True}),
        ("uint64", {"type": "zstd", "level": 3}),
        ("int8", {"type": "bzip2", "blockSize": 9}),
        ("int16", {"type": "xz", "preset": 6}),
        ("int32", {"type": "blosc", "cname": "lz4", "clevel": 5, "shuffle": 1, "blocksize": 0, "nthreads": 1}),
        ("int64", {"type": "raw"}),
        ("float32", {"type": "zstd", "level": 6}),
        ("float64", {"type": "gzip", "level": 1, "useZlib": False}),
    ],
)
def test_round_trip(container, dtype, compression):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info:
        data = rng.integers(info.min, info.max, size=(5, 7, 9), dtype=dtype, endpoint=True)
    else:
        data = rng.normal(size=(5, 7, 9)).astype(dtype)
    ds = container.create_dataset("a/b", data.shape, (2, 3, 4), dtype, compression)
    ds.write(data)
    again = container.open_dataset("a/b")
    assert again.dtype == np.dtype(dtype) and again.shape == data.shape and again.chunks == (2, 3, 4)
    np.testing.assert_array_equal(again.read(), data)
    np.testing.assert_array_equal(again.read((slice(1, 4), slice(2, 7), slice(3, 9))), data[1:4, 2:7, 3:9])
    lazy = n5.as_dask(again)
    assert lazy.chunksize == (2, 3, 4) and lazy.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lazy)).compute(), data)


def test_missing_blocks_read_as_zeros(container):
    ds = container.create_dataset("ds", (4, 4, 4), (2, 2, 2), "float32")
    ds.write_block((1, 0, 1), np.full((2, 2, 2), 7, np.float32))
    out = n5.as_dask(container.open_dataset("ds")).compute()
    expected = np.zeros((4, 4, 4), np.float32)
    expected[2:4, 0:2, 2:4] = 7
    np.testing.assert_array_equal(out, expected)


def test_reads_foreign_blocks(container, tmp_path):
    """Blocks as Java N5 writes them: zstd streaming frames, zlib streams, varlength mode."""
    values = np.arange(6, dtype=np.int32).reshape(1, 2, 3)
    payload = values.astype(">i4").tobytes()
    # a zstd frame without content size and one raw block (as ZstdOutputStream writes)
    frame = struct.pack("<I", 0xFD2FB528) + bytes([0x00, 0x30]) + ((len(payload) << 3) | 1).to_bytes(3, "little")
    cases = {
        "zstd": ({"type": "zstd", "level": 6, "nbWorkers": 0}, _expected_header((1, 2, 3)) + frame + payload),
        "zlib": ({"type": "gzip", "level": 6, "useZlib": True}, _expected_header((1, 2, 3)) + zlib.compress(payload)),
        "varlength": ({"type": "raw"}, struct.pack(">HH3II", 1, 3, 3, 2, 1, 6) + payload),
    }
    for name, (compression, block_bytes) in cases.items():
        container.create_dataset(name, (1, 2, 3), (1, 2, 3), "int32", compression)
        chunk = tmp_path / "c.n5" / name / "0" / "0" / "0"
        chunk.parent.mkdir(parents=True)
        chunk.write_bytes(block_bytes)
        np.testing.assert_array_equal(container.open_dataset(name).read(), values, err_msg=name)


def test_attributes_merge(container):
    container.create_group("g")
    container.write_attributes("g", {"a": 1, "b": [1, 2]})
    container.write_attributes("g", {"b": {"x": 1}, "c": "s"})
    assert container.read_attributes("g") == {"a": 1, "b": {"x": 1}, "c": "s"}
    container.write_attributes("g", {"a": None})
    assert container.read_attributes("g") == {"b": {"x": 1}, "c": "s"}
    container.create_group("g")  # re-creating keeps attributes
    assert container.read_attributes("g") == {"b": {"x": 1}, "c": "s"}
    assert container.read_attributes("nothing/here") == {}
    assert container.exists("g") and not container.exists("nothing")


def test_redefining_a_dataset_is_idempotent(container):
    for _ in range(2):
        ds = container.create_dataset("ds", SHAPE_ZYX, CHUNKS_ZYX, "uint16")
        ds.write(DATA)
    np.testing.assert_array_equal(container.open_dataset("ds").read(), DATA)


def test_errors_name_the_file(container, tmp_path):
    with pytest.raises(UserError, match=r"c\.n5/missing: N5 dataset not found"):
        container.open_dataset("missing")
    ds = container.create_dataset("ds", SHAPE_ZYX, CHUNKS_ZYX, "uint16")
    ds.write(DATA)
    chunk = Path(ds.block_location((0, 0, 0)))
    chunk.write_bytes(chunk.read_bytes()[:20])  # truncated gzip stream
    with pytest.raises(UserError, match=r"ds/0/0/0: corrupt N5 block"):
        n5.as_dask(container.open_dataset("ds")).compute()
    with pytest.raises(UserError, match="compression 'lz4' is not supported"):
        container.create_dataset("lz", SHAPE_ZYX, CHUNKS_ZYX, "uint8", {"type": "lz4"})
    (tmp_path / "c.n5" / "bad").mkdir()
    (tmp_path / "c.n5" / "bad" / "attributes.json").write_text("{not json")
    with pytest.raises(UserError, match=r"bad/attributes\.json: not valid JSON"):
        container.read_attributes("bad")
