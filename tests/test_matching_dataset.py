"""Matching a synthetic tiled dataset after detection, checked against the ground truth (issue 4)."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from rhapso_gpu.cli import main
from rhapso_gpu.geometry import apply_affine, view_affine
from rhapso_gpu.io.correspondences import read_correspondences
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.interestpoints import container_location, read_interest_points
from rhapso_gpu.io.params import validate_params
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.matching.views import match_dataset, select_pairs
from rhapso_gpu.scheduler import open_cluster

SPARSE = ["--method", "offset-consensus", "--model", "rigid", "--set", "min_inliers=5"]
THIN = {"model": "rigid", "min_inliers": 5}
"""Thin overlaps hold 5 to 15 shared beads: a rigid model (an affine is barely determined by 5 points)."""
MIN_SHARED = 5
"""A pair 'truly overlaps' when at least this many detections of both views are the same bead."""
SAME = 2.0
"""Detections of the same bead: closer than this in true world px (beads are >= 5 px apart and detections
are within ~0.1 px of the truth even at tile borders, but two close beads may merge into one detection)."""


@pytest.fixture(scope="module")
def detected(tmp_path_factory):
    """3x3x2 tiles of beads, stage errors up to 8 px and 0.5 degrees, z-overlaps of about 10 slices; detected."""
    out = tmp_path_factory.mktemp("match") / "ds"
    assert main(["synth", str(out), "--content", "beads", "--tiles", "3x3x2", "--translation-error", "8",
                 "--rotation-error", "0.5", "--seed", "1", "--cluster", "synchronous", "-q"]) == 0
    assert main(["detect", str(out / "dataset.xml"), "--cluster", "synchronous", "-q"]) == 0
    return out


def _truth(ds):
    """The dataset, its ground truth, and every view's detections in TRUE world coordinates."""
    spim = load_spimdata(str(ds / "dataset.xml"))
    truth = load_ground_truth(str(ds / "ground_truth.json"))
    true_world = {
        v: apply_affine(truth.true_affines[v], read_interest_points(container_location(spim), v, "beads").loc_xyz)
        for v in spim.view_ids()
    }
    return spim, truth, true_world


def _shared(true_world, a, b) -> int:
    """Detections of A that B detected too."""
    return int(np.isfinite(cKDTree(true_world[b]).query(true_world[a], distance_upper_bound=SAME)[0]).sum())


def _genuine(true_world, link) -> np.ndarray:
    """Per correspondence of a link (PairCorrespondences): both detections are of the same bead."""
    d = true_world[link.a[0]][link.ids_a.astype(int)] - true_world[link.b[0]][link.ids_b.astype(int)]
    return np.linalg.norm(d, axis=1) < SAME


def _overlapping(true_world, results):
    return [r for r in results if _shared(true_world, r.a[0], r.b[0]) >= MIN_SHARED]


@pytest.mark.parametrize("method", ["fast-rotation", "fast-translation", "precise-translation", "offset-consensus"])
def test_every_truly_overlapping_pair_matches_the_truth(detected, method):
    spim, truth, true_world = _truth(detected)
    params = validate_params(MatchParams, {"method": method, **THIN})
    with open_cluster("synchronous") as cluster:
        results = match_dataset(spim, params, cluster)
    assert all(len(r.a) == len(r.b) == 1 for r in results)  # no grouping: one view per side
    overlapping = _overlapping(true_world, results)
    stacked_in_z = [r for r in overlapping if r.a[0].setup // 9 != r.b[0].setup // 9]
    assert len(overlapping) >= 15 and len(stacked_in_z) >= 5
    for r in overlapping:
        (a,), (b,) = r.a, r.b
        assert r.match.ok, f"{a}-{b}: {r.match.reason}"
        (link,) = r.links
        assert link.a == (a, "beads") and link.b == (b, "beads")
        assert link.ids_a.size >= 5
        assert _genuine(true_world, link).all(), f"{a}-{b}: a correspondence links two different beads"
        # the pair's transform (A world -> B world, nominal registrations) against the true one
        true_rel = (view_affine(spim, b) @ np.linalg.inv(truth.true_affines[b]) @ truth.true_affines[a]
                    @ np.linalg.inv(view_affine(spim, a)))
        world_a = apply_affine(view_affine(spim, a), read_interest_points(
            container_location(spim), a, "beads").loc_xyz[link.ids_a.astype(int)])
        err = np.linalg.norm(apply_affine(r.match.model, world_a) - apply_affine(true_rel, world_a), axis=1)
        rms = np.sqrt((err**2).mean())
        assert rms < 0.5, f"{a}-{b}: transform off by {rms:.2f} px"
    for r in results:  # a failed pair has no correspondences and says why; a matched one is genuine
        if not r.match.ok:
            assert not r.links and r.match.reason
        else:
            (link,) = r.links
            assert _genuine(true_world, link).all(), f"{link.a}-{link.b}: a correspondence links two different beads"


def test_descriptors_alone_fail_thin_overlaps_and_say_so(detected):
    """Without the fallback, descriptors match few thin overlaps (too few shared neighbours), never wrongly."""
    spim, _, true_world = _truth(detected)
    params = validate_params(MatchParams, {"method": "fast-rotation", "fallback": "none", **THIN})
    with open_cluster("synchronous") as cluster:
        results = match_dataset(spim, params, cluster)
    overlapping = _overlapping(true_world, results)
    failed = [r for r in overlapping if not r.match.ok]
    assert len(failed) >= len(overlapping) // 2
    for r in failed:
        assert r.method == "fast-rotation" and not r.links
        assert "descriptor candidates" in r.match.reason or "inliers" in r.match.reason, r.match.reason
    for r in results:
        if r.match.ok:
            assert r.method == "fast-rotation" and _genuine(true_world, r.links[0]).all()


def test_match_command_writes_symmetric_correspondences_reproducibly(detected, capsys):
    xml = str(detected / "dataset.xml")
    assert main(["match", xml, *SPARSE, "--cluster", "synchronous"]) == 0
    out = capsys.readouterr().out
    assert "pairs matched" in out and "candidates" in out
    spim = load_spimdata(xml)
    n5 = container_location(spim)
    first = {v: read_correspondences(n5, v, "beads") for v in spim.view_ids()}
    assert sum(len(t) for t in first.values()) >= 30
    for v, table in first.items():
        for (other, label), (here, there) in table.items():
            back_here, back_there = first[other][(v, label)]
            assert sorted(zip(here.tolist(), there.tolist())) == sorted(zip(back_there.tolist(), back_here.tolist()))
    # again with two worker threads: the same correspondences (seeded per pair), old ones replaced
    assert main(["match", xml, *SPARSE, "--cluster", "threads", "--workers", "2", "-q"]) == 0
    second = {v: read_correspondences(n5, v, "beads") for v in spim.view_ids()}
    assert first.keys() == second.keys()
    for v, table in first.items():
        assert table.keys() == second[v].keys()
        for key, (here, there) in table.items():
            np.testing.assert_array_equal(here, second[v][key][0])
            np.testing.assert_array_equal(there, second[v][key][1])


def test_failed_pairs_are_reported_not_linked(detected, capsys):
    xml = str(detected / "dataset.xml")
    assert main(["match", xml, "--method", "fast-rotation", "--model", "affine", "--cluster", "synchronous"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # undo rich's line wrapping
    assert "not matched" in out and "fewer than the 12" in out
    assert "fast-rotation: " in out and "; offset-consensus: " in out  # both attempts and why they failed
    spim = load_spimdata(xml)
    tables = {v: read_correspondences(container_location(spim), v, "beads") for v in spim.view_ids()}
    linked = {frozenset((v, other)) for v, table in tables.items() for other, _ in table}
    assert 0 < len(linked) < len(select_pairs(spim, MatchParams()))  # failed pairs got no links


def test_match_command_reports_the_fallback(detected, capsys):
    xml = str(detected / "dataset.xml")
    args = ["--method", "fast-translation", "--model", "rigid", "--set", "min_inliers=5", "--cluster", "synchronous"]
    assert main(["match", xml, *args]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "by the fallback)" in out and "offset-consensus" in out and "fast-translation" in out


def test_unknown_label_and_bad_parameter_are_user_errors(detected, capsys):
    xml = str(detected / "dataset.xml")
    assert main(["match", xml, "--label", "nuclei", "--cluster", "synchronous"]) == 2
    assert "no interest points labelled 'nuclei'" in capsys.readouterr().err
    assert main(["match", xml, "--set", "min_inlier=3", "--cluster", "synchronous"]) == 2
    assert "did you mean 'min_inliers'" in capsys.readouterr().err


def test_pair_selection(detected):
    spim = load_spimdata(str(detected / "dataset.xml"))
    overlapping = select_pairs(spim, MatchParams())
    every = select_pairs(spim, validate_params(MatchParams, {"pairs": "all"}))
    assert len(every) == 18 * 17 // 2 and set(overlapping) < set(every)
    assert all(a < b for a, b in overlapping)
    assert (spim.view_ids()[0], spim.view_ids()[1]) in overlapping  # x neighbours
    assert (spim.view_ids()[0], spim.view_ids()[9]) in overlapping  # stacked in z
    assert (spim.view_ids()[0], spim.view_ids()[8]) not in overlapping  # opposite corners
