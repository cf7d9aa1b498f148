"""One model per group of views (``group_channels`` / ``group_tiles`` / ``group_illuminations``), with known answers.

A row of tiles along x, each imaged in two channels that share the tile's
stage error (a shift and a small rotation; tile 0, the fixed one, has none).
Interest points are the beads each view sees (a random 75 % each, own ids),
correspondences are written from the known bead identities: between views of
neighbouring tiles, and, wrongly, between the two channels of a tile (every
point paired with another bead), which grouping must ignore.
"""

import json

import numpy as np
import pytest

from rhapso_gpu.cli import main
from rhapso_gpu.geometry import view_affine
from rhapso_gpu.io.correspondences import PairCorrespondences, store_matches
from rhapso_gpu.io.interestpoints import container_location, set_interest_points_ref, write_interest_points
from rhapso_gpu.io.spimdata import AttributeDefinition, Entity, SpimData, Timepoints, ViewId, ViewSetup, ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.solver import SolveParams, build_report, solve_dataset
from rhapso_gpu.solver.linear import _rotation

TILES = 3
SIZE_XYZ = np.array([120.0, 100.0, 40.0])
STEP_X = 90.0
"""Nominal spacing along x (world px): 30 px overlaps between neighbours."""


def _dataset(tmp_path, seed=0):
    """Write the dataset; returns its XML and the true affine (local px -> world) of every view."""
    rng = np.random.default_rng(seed)
    beads = rng.uniform(0, [STEP_X * (TILES - 1) + SIZE_XYZ[0], SIZE_XYZ[1], SIZE_XYZ[2]], (2500, 3))
    spim = SpimData(timepoints=Timepoints("range", [0], ["0"]))
    spim.location = str(tmp_path / "dataset.xml")
    n5 = container_location(spim)
    true, seen = {}, {}
    for tile in range(TILES):
        nominal = np.array([STEP_X * tile, 0.0, 0.0])
        rot = np.eye(3) if tile == 0 else _rotation(rng.normal(0, 0.01, (1, 3)))[0]
        shift = nominal + (0.0 if tile == 0 else rng.uniform(-6, 6, 3))  # shared by both channels
        for channel in range(2):
            view = ViewId(0, 2 * tile + channel)
            attrs = {"illumination": 0, "channel": channel, "tile": tile, "angle": 0}
            spim.setups[view.setup] = ViewSetup(view.setup, f"s{view.setup}", tuple(SIZE_XYZ.astype(int)),
                                                attributes=attrs)
            spim.registrations[view] = [ViewTransform("nominal", np.c_[np.eye(3), nominal])]
            local = (beads - shift) @ rot  # rot^T (bead - shift), row vectors
            inside = np.flatnonzero(np.all((local >= 0) & (local <= SIZE_XYZ - 1), axis=1))
            seen[view] = rng.permutation(inside[rng.random(inside.size) < 0.75])  # point id -> bead
            write_interest_points(n5, view, "beads", local[seen[view]])
            set_interest_points_ref(spim, view, "beads", "test")
            true[view] = np.c_[rot, shift]
    spim.attribute_definitions = [
        AttributeDefinition(name, name.capitalize(), [Entity(i, str(i)) for i in range(n)])
        for name, n in (("illumination", 1), ("channel", 2), ("tile", TILES), ("angle", 1))
    ]
    matches = []
    views = sorted(true)
    for i, va in enumerate(views):
        for vb in views[i + 1:]:
            ta, tb = va.setup // 2, vb.setup // 2
            if abs(ta - tb) > 1:
                continue
            _, ia, ib = np.intersect1d(seen[va], seen[vb], return_indices=True)
            if ta == tb:  # the two channels of one tile: every point paired with another bead
                ib = np.roll(ib, 7)
            matches.append(PairCorrespondences((va, "beads"), (vb, "beads"), ia.astype(np.uint64),
                                               ib.astype(np.uint64)))
    store_matches(n5, matches, [(v, "beads") for v in views])
    save_spimdata(spim)
    return spim.location, true


def test_channels_of_a_tile_share_one_model_and_recover_the_stage_error(tmp_path):
    xml, true = _dataset(tmp_path)
    assert main(["solve", xml, "--model", "rigid", "--set", "group_channels=true", "--set", "method=one-round",
                 "--report", str(tmp_path / "report.json"), "-q"]) == 0
    solved = load_spimdata(xml)
    for view, truth in true.items():
        np.testing.assert_allclose(view_affine(solved, view)[:3], truth, atol=1e-6)
        # one transform for both channels of a tile, pre-concatenated at index 0
        assert solved.registrations[view][0].name == "RigidModel3D"
    for tile in range(TILES):
        np.testing.assert_array_equal(solved.registrations[ViewId(0, 2 * tile)][0].affine,
                                      solved.registrations[ViewId(0, 2 * tile + 1)][0].affine)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["groups"] == [[f"tp0/setup{2 * t}", f"tp0/setup{2 * t + 1}"] for t in range(TILES)]
    assert {(x["a"], x["b"]) for x in report["per_link"]} == {
        ("tp0/setup0+tp0/setup1", "tp0/setup2+tp0/setup3"), ("tp0/setup2+tp0/setup3", "tp0/setup4+tp0/setup5")}
    assert report["max"] < 1e-5  # the wrong links inside the groups were never used


def test_without_grouping_the_channels_are_pulled_apart(tmp_path):
    xml, _ = _dataset(tmp_path)
    spim = load_spimdata(xml)
    solved = solve_dataset(spim, SolveParams(model="rigid", method="one-round"))
    assert len(solved.tiles) == 2 * TILES and build_report(solved)["groups"] == []
    models = solved.optimum.models
    corner = np.array([SIZE_XYZ[0] + STEP_X, SIZE_XYZ[1], SIZE_XYZ[2], 1.0])
    apart = [np.linalg.norm((models[2 * t] - models[2 * t + 1]) @ corner) for t in range(1, TILES)]
    assert min(apart) > 1.0, apart


def test_groups_follow_the_setup_attributes(tmp_path):
    xml, _ = _dataset(tmp_path)
    from rhapso_gpu.io.grouping import view_groups

    spim = load_spimdata(xml)
    views = spim.view_ids()
    assert view_groups(spim, views, set()) == [(v,) for v in views]
    assert view_groups(spim, views, {"channel"}) == [(ViewId(0, 2 * t), ViewId(0, 2 * t + 1)) for t in range(TILES)]
    assert view_groups(spim, views, {"tile"}) == [tuple(ViewId(0, 2 * t + c) for t in range(TILES)) for c in (0, 1)]
    with pytest.raises(Exception, match="between the views of different groups"):
        solve_dataset(spim, SolveParams(model="rigid", group_tiles=True, group_channels=True))
