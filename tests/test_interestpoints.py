"""interestpoints.n5 byte for byte: a hand-made container written to the specification reads back, ours matches it."""

import gzip
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from rhapso_gpu.errors import UserError
from rhapso_gpu.io.interestpoints import (
    label_path,
    read_interest_points,
    set_interest_points_ref,
    write_interest_points,
)
from rhapso_gpu.io.spimdata import InterestPointsRef, SpimData, ViewId

VIEW = ViewId(0, 3)


def _json(path: Path, obj) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "attributes.json").write_text(json.dumps(obj))


def _block(values: np.ndarray, dims_n5, dtype: str, how: str) -> bytes:
    """An N5 default-mode block: uint16 mode 0, uint16 ndim, uint32 dims (fastest first), big-endian payload."""
    header = struct.pack(">HH", 0, len(dims_n5)) + struct.pack(f">{len(dims_n5)}I", *dims_n5)
    payload = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder(">")).tobytes()
    if how == "gzip":  # Java GZIPOutputStream framing
        body = gzip.compress(payload, compresslevel=6, mtime=0)
    elif how == "zlib":
        body = zlib.compress(payload, 6)
    else:
        body = payload
    return header + body


def _hand_made(root: Path, loc_xyz: np.ndarray, level_json, how="gzip") -> None:
    """A container as multiview-reconstruction InterestPointsN5 writes it (reference section 2.1)."""
    n = len(loc_xyz)
    _json(root, {"n5": "2.5.1"})
    group = root / "tpId_0_viewSetupId_3" / "beads" / "interestpoints"
    _json(group, {"pointcloud": "1.0.0", "type": "list", "list version": "1.0.0"})
    compression = {"type": "gzip", "useZlib": how == "zlib", **level_json}
    _json(group / "id", {"dataType": "uint64", "compression": compression, "blockSize": [1, 300000], "dimensions": [1, n]})
    _json(group / "loc", {"dataType": "float64", "compression": compression, "blockSize": [3, 300000], "dimensions": [3, n]})
    (group / "id" / "0").mkdir()
    (group / "loc" / "0").mkdir()
    # the block holds x0 y0 z0 x1 y1 z1 ... (x fastest): C order of an (n, 3) array
    (group / "id" / "0" / "0").write_bytes(_block(np.arange(n, dtype=np.uint64), [1, n], "uint64", how))
    (group / "loc" / "0" / "0").write_bytes(_block(loc_xyz, [3, n], "float64", how))


LOC = np.array([[1.5, 2.25, 3.0], [100.125, -0.5, 7.75], [0.0, 0.0, 0.0], [12.0, 13.0, 14.0]])


@pytest.mark.parametrize(
    "level_json, how", [({"level": -1}, "gzip"), ({"level": 6}, "gzip"), ({}, "gzip"), ({"level": -1}, "zlib")]
)
def test_reads_a_hand_made_container(tmp_path, level_json, how):
    _hand_made(tmp_path / "interestpoints.n5", LOC, level_json, how)
    points = read_interest_points(str(tmp_path / "interestpoints.n5"), VIEW, "beads")
    np.testing.assert_array_equal(points.loc_xyz, LOC)
    np.testing.assert_array_equal(points.ids, np.arange(4, dtype=np.uint64))
    assert points.ids.dtype == np.uint64 and points.intensities is None


def test_writes_what_the_specification_says(tmp_path):
    root = tmp_path / "interestpoints.n5"
    intensities = np.array([10.5, 20.0, 0.0, 3.25], np.float32)
    assert write_interest_points(str(root), VIEW, "beads", LOC, intensities) == "tpId_0_viewSetupId_3/beads"
    group = root / "tpId_0_viewSetupId_3" / "beads"
    attrs = lambda p: json.loads((p / "attributes.json").read_text())
    assert attrs(root) == {"n5": "4.0.0"}
    assert attrs(group / "interestpoints") == {"pointcloud": "1.0.0", "type": "list", "list version": "1.0.0"}
    gz = {"type": "gzip", "level": -1, "useZlib": False}
    assert attrs(group / "interestpoints" / "id") == {
        "dimensions": [1, 4], "blockSize": [1, 300000], "dataType": "uint64", "compression": gz
    }
    assert attrs(group / "interestpoints" / "loc") == {
        "dimensions": [3, 4], "blockSize": [3, 300000], "dataType": "float64", "compression": gz
    }
    inten = attrs(group / "interestpoints" / "intensities")
    assert inten["dimensions"] == [1, 4] and inten["dataType"] == "float32" and inten["compression"]["type"] == "zstd"
    assert attrs(group / "correspondences") == {"correspondences": "1.0.0", "idMap": {}}
    # block bytes: default-mode header, then a gzip stream of the big-endian payload (x fastest)
    raw = (group / "interestpoints" / "loc" / "0" / "0").read_bytes()
    assert raw[:12] == struct.pack(">HHII", 0, 2, 3, 4)
    assert raw[12:14] == b"\x1f\x8b"  # gzip, not zlib (useZlib false)
    np.testing.assert_array_equal(np.frombuffer(zlib.decompress(raw[12:], 47), ">f8").reshape(4, 3), LOC)
    raw_id = (group / "interestpoints" / "id" / "0" / "0").read_bytes()
    assert raw_id[:12] == struct.pack(">HHII", 0, 2, 1, 4)
    np.testing.assert_array_equal(np.frombuffer(zlib.decompress(raw_id[12:], 47), ">u8"), np.arange(4))
    back = read_interest_points(str(root), VIEW, "beads")
    np.testing.assert_array_equal(back.loc_xyz, LOC)
    np.testing.assert_array_equal(back.intensities, intensities)


def test_large_lists_are_cut_into_300000_point_blocks(tmp_path):
    loc = np.random.default_rng(0).uniform(0, 1000, (300_001, 3))
    write_interest_points(str(tmp_path), VIEW, "beads", loc)
    ds = tmp_path / "tpId_0_viewSetupId_3" / "beads" / "interestpoints" / "loc"
    assert sorted(p.name for p in (ds / "0").iterdir()) == ["0", "1"]
    assert (ds / "0" / "1").read_bytes()[:12] == struct.pack(">HHII", 0, 2, 3, 1)  # truncated edge block
    np.testing.assert_array_equal(read_interest_points(str(tmp_path), VIEW, "beads").loc_xyz, loc)


def test_empty_list_uses_the_one_dimensional_form(tmp_path):
    write_interest_points(str(tmp_path), VIEW, "beads", np.zeros((0, 3)))
    ds = tmp_path / "tpId_0_viewSetupId_3" / "beads" / "interestpoints"
    for name, dtype in (("id", "uint64"), ("loc", "float64")):
        attrs = json.loads((ds / name / "attributes.json").read_text())
        assert (attrs["dimensions"], attrs["blockSize"], attrs["dataType"]) == ([0], [1], dtype)
        assert [p.name for p in (ds / name).iterdir()] == ["attributes.json"]
    points = read_interest_points(str(tmp_path), VIEW, "beads")
    assert points.loc_xyz.shape == (0, 3) and points.ids.shape == (0,)


def test_rewriting_a_label_replaces_it(tmp_path):
    write_interest_points(str(tmp_path), VIEW, "beads", np.ones((5, 3)))
    (tmp_path / "tpId_0_viewSetupId_3" / "beads" / "correspondences" / "data").mkdir()
    write_interest_points(str(tmp_path), VIEW, "beads", LOC[:2])
    write_interest_points(str(tmp_path), VIEW, "other", LOC)
    np.testing.assert_array_equal(read_interest_points(str(tmp_path), VIEW, "beads").loc_xyz, LOC[:2])
    assert not (tmp_path / "tpId_0_viewSetupId_3" / "beads" / "correspondences" / "data").exists()
    assert len(read_interest_points(str(tmp_path), VIEW, "other").loc_xyz) == 4


def test_missing_label_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no interest points for tp0/setup3 label 'beads'"):
        read_interest_points(str(tmp_path), VIEW, "beads")


def test_xml_entry_is_replaced_not_duplicated():
    spim = SpimData()
    spim.interest_points = [InterestPointsRef(ViewId(0, 1), "beads", "old", "x")]
    set_interest_points_ref(spim, ViewId(0, 1), "beads", "DOG new")
    set_interest_points_ref(spim, ViewId(0, 1), "nuclei", "DOG n")
    assert [(r.label, r.params, r.path) for r in spim.interest_points] == [
        ("beads", "DOG new", label_path(ViewId(0, 1), "beads")),
        ("nuclei", "DOG n", "tpId_0_viewSetupId_1/nuclei"),
    ]
