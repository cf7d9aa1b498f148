"""Grouped matching (tiles/channels/illuminations) and matching several labels, checked against ground truth.

``synth`` makes one channel only, so the datasets here are built in memory: a
row of tiles along x, each imaged in two channels (or two illuminations) with
the same stage error, beads detected by each channel with a random subset and
its own point ids.
"""

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

from rhapso_gpu.cli import main
from rhapso_gpu.io.correspondences import read_correspondences
from rhapso_gpu.io.grouping import view_groups
from rhapso_gpu.io.interestpoints import container_location, set_interest_points_ref, write_interest_points
from rhapso_gpu.io.params import validate_params
from rhapso_gpu.io.spimdata import AttributeDefinition, Entity, SpimData, Timepoints, ViewId, ViewSetup, ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.matching.grouping import PointSet, merge_mask, pool, split_matches
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.matching.views import label_pairs, load_view_points, match_dataset, store_results
from rhapso_gpu.scheduler import open_cluster

TILES = 3
SIZE_XYZ = (120, 100, 40)
STEP_X = 90.0
"""Nominal tile spacing along x (world px): 30 px overlaps between neighbours, none between tiles 0 and 2."""
MIN_SPACING = 6.0
"""Beads are at least this far apart (world px), so a merge radius of 5 joins only detections of one bead."""
JITTER = 0.15
"""Detection error (px, per axis)."""


def _beads(rng, n=3000):
    """Random bead positions (world xyz), of each close pair the second one dropped."""
    hi = np.array([STEP_X * (TILES - 1) + SIZE_XYZ[0], SIZE_XYZ[1], SIZE_XYZ[2]], float) - 1
    xyz = rng.uniform(0, hi, (n, 3))
    crowded = cKDTree(xyz).query_pairs(MIN_SPACING, output_type="ndarray").max(axis=1)
    return np.delete(xyz, crowded, axis=0)


def _dataset(tmp_path, attribute="channel", labels=("beads",), seed=0):
    """Tiles in a row, two values of ``attribute`` each; interest points written, XML saved.

    Returns the SpimData and ``truth[(view, label)]``: the bead index of every point id.
    Setup ``2 * tile + k`` is tile ``tile`` with ``attribute`` ``k``.
    """
    rng = np.random.default_rng(seed)
    beads = _beads(rng)
    spim = SpimData(timepoints=Timepoints("range", [0], ["0"]))
    spim.location = str(tmp_path / "dataset.xml")
    n5 = container_location(spim)
    truth = {}
    for tile in range(TILES):
        nominal = np.array([STEP_X * tile, 0.0, 0.0])
        true = nominal + rng.uniform(-4, 4, 3)  # both channels share the tile's stage error
        for k in range(2):
            attrs = {"illumination": 0, "channel": 0, "tile": tile, "angle": 0, attribute: k}
            view = ViewId(0, 2 * tile + k)
            spim.setups[view.setup] = ViewSetup(view.setup, f"s{view.setup}", SIZE_XYZ, attributes=attrs)
            spim.registrations[view] = [ViewTransform("nominal", np.c_[np.eye(3), nominal])]
            local = beads - true
            inside = np.flatnonzero(np.all((local >= 0) & (local <= np.array(SIZE_XYZ) - 1), axis=1))
            for label in labels:
                seen = rng.permutation(inside[rng.random(inside.size) < 0.75])  # ids: row order, own per view
                write_interest_points(n5, view, label, local[seen] + rng.normal(0, JITTER, (seen.size, 3)))
                set_interest_points_ref(spim, view, label, "test")
                truth[view, label] = seen
    spim.attribute_definitions = [
        AttributeDefinition(name, name.capitalize(), [Entity(i, str(i)) for i in range(n)])
        for name, n in (("illumination", 2), ("channel", 2), ("tile", TILES), ("angle", 1))
    ]
    save_spimdata(spim)
    return spim, truth


def _walk(xyz, origin, radius, order):
    """BigStitcher's sequential merge walk, point by point (the reference for merge_mask)."""
    keep = np.ones(len(xyz), bool)
    tree = cKDTree(xyz)
    for p in order:
        if keep[p]:
            for q in tree.query_ball_point(xyz[p], radius):
                if origin[q] != origin[p]:
                    keep[q] = False
    return keep


def test_merge_mask_is_the_sequential_walk():
    rng = np.random.default_rng(5)
    xyz = rng.uniform(0, 40, (600, 3))  # dense: chains of overlapping neighbourhoods across 3 views
    origin = rng.integers(0, 3, 600)
    keep = merge_mask(xyz, origin, 4.0, seed=11)
    assert keep.sum() < 600
    np.testing.assert_array_equal(keep, _walk(xyz, origin, 4.0, np.random.default_rng(11).permutation(600)))
    np.testing.assert_array_equal(keep, merge_mask(xyz, origin, 4.0, seed=11))  # deterministic
    # points of one view never remove each other; radius 0 keeps everything
    assert merge_mask(xyz, np.zeros(600, int), 4.0).all()
    assert merge_mask(xyz, origin, 0.0).all()


def test_split_matches_per_view_pair_drops_small_pairs():
    va, vb, vc, vd = (ViewId(0, s) for s in range(4))
    a = PointSet((va, vb), "beads", np.array([0, 0, 1, 1, 1, 0]), np.arange(10, 16, dtype=np.uint64), np.zeros((6, 3)))
    b = PointSet((vc, vd), "spots", np.array([1, 0, 0, 0, 1, 1]), np.arange(20, 26, dtype=np.uint64), np.zeros((6, 3)))
    rows_a, rows_b = np.array([0, 1, 2, 3, 4, 5]), np.array([1, 2, 3, 0, 4, 5])
    # view pairs: (va,vc) rows 0,1; (vb,vc) row 2; (vb,vd) rows 3,4; (va,vd) row 5
    links = split_matches(a, b, rows_a, rows_b, min_matches=2)
    assert [(link.a, link.b) for link in links] == [((va, "beads"), (vc, "spots")), ((vb, "beads"), (vd, "spots"))]
    np.testing.assert_array_equal(links[0].ids_a, [10, 11])
    np.testing.assert_array_equal(links[0].ids_b, [21, 22])
    np.testing.assert_array_equal(links[1].ids_a, [13, 14])
    np.testing.assert_array_equal(links[1].ids_b, [20, 24])
    assert len(split_matches(a, b, rows_a, rows_b, min_matches=1)) == 4
    assert split_matches(a, b, rows_a[:0], rows_b[:0], min_matches=1) == []


def test_view_groups():
    """One grouping rule on the io floor, used by matching and the solver alike."""
    from rhapso_gpu.matching import grouping
    from rhapso_gpu.solver import dataset

    assert grouping.view_groups is dataset.view_groups is view_groups
    spim = SpimData()
    for s, (tile, ch, ill) in enumerate([(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (0, 0, 1)]):
        spim.setups[s] = ViewSetup(s, attributes={"illumination": ill, "channel": ch, "tile": tile, "angle": 0})
    views = [ViewId(t, s) for t in (0, 1) for s in range(5)]
    v = {(t, s): ViewId(t, s) for t, s in views}
    assert view_groups(spim, views, set()) == [(w,) for w in sorted(views)]
    channels = view_groups(spim, views, {"channel"})
    assert channels[:3] == [(v[0, 0], v[0, 1]), (v[0, 2], v[0, 3]), (v[0, 4],)] and len(channels) == 6
    assert view_groups(spim, views, {"tile", "channel"})[:2] == [(v[0, 0], v[0, 1], v[0, 2], v[0, 3]), (v[0, 4],)]
    assert view_groups(spim, views, {"tile", "channel", "illumination"}) == [
        tuple(v[0, s] for s in range(5)),
        tuple(v[1, s] for s in range(5)),
    ]  # never across time points


@pytest.fixture(scope="module")
def channels(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("groups"), "channel")


def _bead(truth, view, label, ids):
    return truth[view, label][ids.astype(int)]


def test_pooled_group_keeps_one_point_per_bead(channels):
    spim, truth = channels
    tile0 = (ViewId(0, 0), ViewId(0, 1))
    sets = [load_view_points(spim, v, "beads") for v in tile0]
    merged = pool(sets, 5.0)
    beads = np.concatenate(
        [truth[merged.views[i], "beads"][merged.ids[merged.origin == i].astype(int)] for i in range(2)]
    )
    seen = np.union1d(truth[tile0[0], "beads"], truth[tile0[1], "beads"])
    assert np.intersect1d(truth[tile0[0], "beads"], truth[tile0[1], "beads"]).size > 50  # duplicates to merge
    assert np.array_equal(np.sort(beads), seen)  # every bead once: duplicates removed, none lost
    assert (merged.origin == 0).any() and (merged.origin == 1).any()  # both channels contribute


def _check_links(results, truth, groups_of):
    """Every link joins views of the two matched groups and the same beads; returns matched bead pairs."""
    found = set()
    for r in results:
        assert r.match.ok, f"{r.a}-{r.b}: {r.match.reason}"
        for link in r.links:
            (va, la), (vb, lb) = link.a, link.b
            assert groups_of[va] == r.a and groups_of[vb] == r.b and (la, lb) == (r.label_a, r.label_b)
            assert link.ids_a.size >= 4  # affine's minimum
            bead_a, bead_b = _bead(truth, va, la, link.ids_a), _bead(truth, vb, lb, link.ids_b)
            np.testing.assert_array_equal(bead_a, bead_b)
        beads = np.concatenate([_bead(truth, link.a[0], link.a[1], link.ids_a) for link in r.links])
        assert np.unique(beads).size == beads.size  # merged duplicates: each bead matched once per group pair
        found |= {(r.a, r.b, r.label_a, r.label_b, int(b)) for b in beads}
    return found


@pytest.mark.parametrize("attribute", ["channel", "illumination"])
def test_grouped_views_match_between_groups_with_original_ids(tmp_path, attribute):
    spim, truth = _dataset(tmp_path, attribute, seed=1)
    option = {"channel": "group_channels", "illumination": "group_illuminations"}[attribute]
    params = validate_params(MatchParams, {option: True})
    with open_cluster("synchronous") as cluster:
        results = match_dataset(spim, params, cluster)
    groups = [(ViewId(0, 2 * t), ViewId(0, 2 * t + 1)) for t in range(TILES)]
    groups_of = {v: g for g in groups for v in g}
    assert [(r.a, r.b) for r in results] == [(groups[0], groups[1]), (groups[1], groups[2])]
    found = _check_links(results, truth, groups_of)
    # nearly every bead that both tiles detected (in any channel) inside their overlap is matched
    for r in results:
        both = np.intersect1d(
            np.union1d(*(truth[v, "beads"] for v in r.a)), np.union1d(*(truth[v, "beads"] for v in r.b))
        )
        matched = {b for (ga, gb, _, _, b) in found if (ga, gb) == (r.a, r.b)}
        assert len(matched) >= 0.9 * both.size, f"{len(matched)} of {both.size} shared beads matched"
        assert len(r.links) >= 3  # split back over several channel combinations
    # stored per view, symmetric, with each view's own ids; nothing within a tile
    store_results(spim, results, params)
    n5 = container_location(spim)
    stored = {v: read_correspondences(n5, v, "beads") for v in groups_of}
    assert all(stored[v] for v in groups_of)
    for v, table in stored.items():
        for (other, label), (here, there) in table.items():
            assert groups_of[other] != groups_of[v] and label == "beads"
            np.testing.assert_array_equal(_bead(truth, v, "beads", here), _bead(truth, other, "beads", there))
            back_there, back_here = stored[other][v, "beads"]
            assert sorted(zip(here.tolist(), there.tolist())) == sorted(zip(back_here.tolist(), back_there.tolist()))


def test_ungrouped_channels_are_matched_with_each_other(channels):
    """Without grouping the two channels of a tile are a pair of their own (they overlap completely)."""
    spim, _ = channels
    params = validate_params(MatchParams, {"method": "offset-consensus", "model": "translation"})
    with open_cluster("synchronous") as cluster:
        results = match_dataset(spim, params, cluster)
    pairs = {(r.a, r.b) for r in results}
    assert ((ViewId(0, 0),), (ViewId(0, 1),)) in pairs and all(len(r.a) == 1 for r in results)


def test_match_command_groups_channels(channels, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # no wrapping in the table
    spim, truth = channels
    xml = spim.location
    assert (
        main(["match", xml, "--set", "group_channels=true", "--set", "merge_distance=3", "--cluster", "synchronous"])
        == 0
    )
    out = capsys.readouterr().out
    assert "0/0+0/1 - 0/2+0/3" in out and "links" in out
    assert "2 of 2 pairs matched" in out
    n5 = container_location(load_spimdata(xml))
    table = read_correspondences(n5, ViewId(0, 0), "beads")
    assert table and {other.setup for other, _ in table} <= {2, 3}
    for (other, label), (here, there) in table.items():
        np.testing.assert_array_equal(_bead(truth, ViewId(0, 0), "beads", here), _bead(truth, other, label, there))


@pytest.mark.parametrize("across", [False, True])
def test_several_labels(tmp_path, across):
    spim, truth = _dataset(tmp_path, "channel", labels=("beads", "spots"), seed=2)
    values = {"labels": ["beads", "spots"], "match_across_labels": across, "group_channels": True}
    params = validate_params(MatchParams, values)
    pairs = [("beads", "beads"), ("beads", "spots"), ("spots", "beads"), ("spots", "spots")]
    assert label_pairs(params) == (pairs if across else [pairs[0], pairs[3]])
    with open_cluster("synchronous") as cluster:
        results = match_dataset(spim, params, cluster)
    assert {(r.label_a, r.label_b) for r in results} == set(label_pairs(params))
    groups_of = {v: (ViewId(0, v.setup - v.setup % 2), ViewId(0, v.setup - v.setup % 2 + 1)) for v in spim.view_ids()}
    _check_links(results, truth, groups_of)
    store_results(spim, results, params)
    n5 = container_location(spim)
    v0 = ViewId(0, 0)
    for label in ("beads", "spots"):
        table = read_correspondences(n5, v0, label)
        expected = {"beads", "spots"} if across else {label}
        assert {lab for _, lab in table} == expected
        for (other, other_label), (here, there) in table.items():
            # the reverse list: same links, keyed by this view and label
            back_there, back_here = read_correspondences(n5, other, other_label)[v0, label]
            assert sorted(zip(here.tolist(), there.tolist())) == sorted(zip(back_here.tolist(), back_there.tolist()))
            np.testing.assert_array_equal(_bead(truth, v0, label, here), _bead(truth, other, other_label, there))
        attrs = json.loads(
            (
                tmp_path / "interestpoints.n5" / "tpId_0_viewSetupId_0" / label / "correspondences" / "attributes.json"
            ).read_text()
        )
        assert set(attrs["idMap"]) == {f"0,{other.setup},{other_label}" for other, other_label in table}
