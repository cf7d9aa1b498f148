"""The ``correspondences`` group of interestpoints.n5, byte-level as BigStitcher writes it."""

import gzip
import json
import struct

import numpy as np

from rhapso_gpu.io.correspondences import (
    PairCorrespondences,
    read_correspondences,
    store_matches,
    write_correspondences,
)
from rhapso_gpu.io.interestpoints import write_interest_points
from rhapso_gpu.io.spimdata import ViewId

V0, V1, V2 = ViewId(0, 0), ViewId(0, 1), ViewId(0, 2)


def _json(path):
    return json.loads(path.read_text())


def test_layout_and_bytes(tmp_path):
    n5 = tmp_path / "interestpoints.n5"
    write_correspondences(str(n5), V0, "beads", {(V1, "beads"): (np.array([3, 5]), np.array([7, 9])),
                                                 (V2, "beads"): (np.array([1]), np.array([2]))})
    group = n5 / "tpId_0_viewSetupId_0" / "beads" / "correspondences"
    attrs = _json(group / "attributes.json")
    assert attrs == {"correspondences": "1.0.0", "idMap": {"0,1,beads": 0, "0,2,beads": 1}}
    data_attrs = _json(group / "data" / "attributes.json")
    assert data_attrs["dimensions"] == [3, 3] and data_attrs["blockSize"] == [1, 300000]
    assert data_attrs["dataType"] == "uint64" and data_attrs["compression"]["type"] == "gzip"
    # three blocks, one per column (idA, idB, key): N5 block header, then gzipped big-endian uint64
    columns = []
    for col in range(3):
        raw = (group / "data" / str(col) / "0").read_bytes()
        mode, ndim, d0, d1 = struct.unpack(">HHII", raw[:12])
        assert (mode, ndim, d0, d1) == (0, 2, 1, 3)
        columns.append(np.frombuffer(gzip.decompress(raw[12:]), ">u8"))
    np.testing.assert_array_equal(np.stack(columns, axis=1), [[3, 7, 0], [5, 9, 0], [1, 2, 1]])
    back = read_correspondences(str(n5), V0, "beads")
    np.testing.assert_array_equal(back[(V1, "beads")][0], [3, 5])
    np.testing.assert_array_equal(back[(V2, "beads")][1], [2])


def test_empty_form_has_no_data(tmp_path):
    n5 = tmp_path / "interestpoints.n5"
    write_correspondences(str(n5), V0, "beads", {})
    group = n5 / "tpId_0_viewSetupId_0" / "beads" / "correspondences"
    assert _json(group / "attributes.json") == {"correspondences": "1.0.0", "idMap": {}}
    assert not (group / "data").exists()
    assert read_correspondences(str(n5), V0, "beads") == {}


def test_symmetric_storage_and_rematching_replaces(tmp_path):
    n5 = str(tmp_path / "interestpoints.n5")
    for v in (V0, V1, V2):
        write_interest_points(n5, v, "beads", np.random.default_rng(0).uniform(0, 10, (20, 3)))
    write_interest_points(n5, V0, "nuclei", np.zeros((4, 3)))
    labels = [(V0, "beads"), (V1, "beads"), (V2, "beads")]
    store_matches(n5, [PairCorrespondences((V0, "beads"), (V1, "beads"), np.array([1, 2]), np.array([11, 12]))], labels)
    # a correspondence to another label, kept when the beads are matched again
    keep = {(V0, "nuclei"): (np.array([4]), np.array([3]))}
    write_correspondences(n5, V1, "beads", {**read_correspondences(n5, V1, "beads"), **keep})
    back_b = read_correspondences(n5, V1, "beads")
    np.testing.assert_array_equal(back_b[(V0, "beads")][0], [11, 12])
    np.testing.assert_array_equal(back_b[(V0, "beads")][1], [1, 2])

    store_matches(n5, [PairCorrespondences((V1, "beads"), (V2, "beads"), np.array([5]), np.array([6]))], labels)
    assert read_correspondences(n5, V0, "beads") == {}  # the old V0-V1 link is gone
    v1 = read_correspondences(n5, V1, "beads")
    assert set(v1) == {(V2, "beads"), (V0, "nuclei")}
    np.testing.assert_array_equal(v1[(V0, "nuclei")][0], [4])
    np.testing.assert_array_equal(read_correspondences(n5, V2, "beads")[(V1, "beads")][0], [6])


def test_reads_double_valued_id_map(tmp_path):
    """Gson may store idMap values as doubles."""
    n5 = tmp_path / "interestpoints.n5"
    write_correspondences(str(n5), V0, "beads", {(V1, "beads"): (np.array([0]), np.array([1]))})
    attrs_file = n5 / "tpId_0_viewSetupId_0" / "beads" / "correspondences" / "attributes.json"
    attrs_file.write_text(json.dumps({"correspondences": "1.0.0", "idMap": {"0,1,beads": 0.0}}))
    assert set(read_correspondences(str(n5), V0, "beads")) == {(V1, "beads")}
