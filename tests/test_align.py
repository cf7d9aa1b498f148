"""``rhapso-gpu align`` end to end on synthetic tiles with ground truth (issue 5 acceptance)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from rhapso_gpu.cli import main
from rhapso_gpu.cli.evaluate import evaluate_xml
from rhapso_gpu.evaluation.registration_error import registration_error
from rhapso_gpu.geometry import view_affine, view_size_xyz
from rhapso_gpu.io.correspondences import read_correspondences, write_correspondences
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.interestpoints import container_location
from rhapso_gpu.io.spimdata import ViewId
from rhapso_gpu.io.spimdata_xml import load_spimdata

RIGID_ONLY = ["--skip", "match_affine", "--skip", "solve_affine"]
AFFINE_ONLY = ["--skip", "detect", "--skip", "match_rigid", "--skip", "solve_rigid"]


@pytest.fixture(scope="module")
def beads(tmp_path_factory):
    """The acceptance dataset: 3x3x2 tiles, stage errors up to 10 px and 0.5 degrees (nominal poses in the XML)."""
    out = tmp_path_factory.mktemp("align") / "ds"
    assert main(["synth", str(out), "--tiles", "3x3x2", "--translation-error", "10", "--rotation-error", "0.5",
                 "--content", "beads", "--seed", "1", "--cluster", "synchronous", "-q"]) == 0
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst / "dataset.xml")


def _error(xml, views=None):
    """Registration error (RMS, max; full-resolution px) of ``views`` (default all), one global affine removed."""
    if views is None:
        report = evaluate_xml(xml, str(Path(xml).parent / "ground_truth.json"))
        return report.rms, report.max
    spim = load_spimdata(xml)
    truth = load_ground_truth(str(Path(xml).parent / "ground_truth.json"))
    report = registration_error({v: view_affine(spim, v) for v in views}, {v: truth.true_affines[v] for v in views},
                                {v: tuple(view_size_xyz(spim, v)) for v in views})
    return report.rms, report.max


def test_align_reaches_subpixel_and_the_affine_stage_is_not_worse(beads, tmp_path):
    xml = _copy(beads, tmp_path / "ds")
    nominal = _error(xml)
    assert main(["align", xml, *RIGID_ONLY, "--cluster", "synchronous", "-q"]) == 0
    rigid = _error(xml)
    assert main(["align", xml, *AFFINE_ONLY, "--cluster", "synchronous", "-q"]) == 0
    affine = _error(xml)
    assert nominal[0] > 5
    assert rigid[0] < 0.3 and rigid[1] < 1.0, rigid
    assert affine[0] < 0.3 and affine[1] < 1.0, affine
    assert affine[0] <= rigid[0] + 1e-3 and affine[1] <= rigid[1] + 1e-2, (rigid, affine)
    # one transform per solve, named after its model, pre-concatenated (index 0)
    spim = load_spimdata(xml)
    names = [t.name for t in spim.registrations[ViewId(0, 5)]]
    assert names[1] == "RigidModel3D" and names[0] in (
        "RigidModel3D", "AffineModel3D regularized with an RigidModel3D, lambda = 0.1")
    report = json.loads((tmp_path / "ds" / "dataset.solve-affine.json").read_text())
    assert report["version"] and report["parameters"]["model"] == "affine"  # the run's settings, recorded
    assert report["parameters"]["lambda"] == 0.1
    assert report["model_selection"]["chosen"] in ("rigid", "affine")
    assert {"a", "b", "matches", "mean", "rms", "max", "removed"} <= set(report["per_link"][0])
    assert report["worst_link"]["max"] == max(x["max"] for x in report["per_link"] if not x["removed"])


def _blank(ds, setup):
    """Make one tile's images empty (a constant), at every pyramid level."""
    group = zarr.open_group(str(ds / "dataset.ome.zarr" / f"s{setup}-t0.zarr"), mode="r+")
    for _, arr in group.arrays():
        arr[...] = 100


def _inject_wrong_link(xml, a, b):
    """Scramble the correspondences of views a-b (each point paired with another's partner), in both lists."""
    spim = load_spimdata(xml)
    loc = container_location(spim)
    va, vb = ViewId(0, a), ViewId(0, b)
    table_a = read_correspondences(loc, va, "beads")
    table_b = read_correspondences(loc, vb, "beads")
    ids_a, ids_b = table_a[vb, "beads"]
    wrong_b = np.roll(ids_b, 1)
    table_a[vb, "beads"] = (ids_a, wrong_b)
    table_b[va, "beads"] = (wrong_b, ids_a)
    write_correspondences(loc, va, "beads", table_a)
    write_correspondences(loc, vb, "beads", table_b)


def test_blank_tile_and_wrong_link(beads, tmp_path):
    ds = tmp_path / "ds"
    xml = _copy(beads, ds)
    _blank(ds, 4)
    assert main(["align", xml, "--skip", "solve_rigid", *RIGID_ONLY, "--cluster", "synchronous", "-q"]) == 0
    _inject_wrong_link(xml, 0, 1)
    assert main(["align", xml, "--skip", "detect", "--skip", "match_rigid", "--cluster", "synchronous", "-q"]) == 0
    rigid = json.loads((ds / "dataset.solve-rigid.json").read_text())
    assert [(r["a"], r["b"]) for r in rigid["removed_links"]] == [("tp0/setup0", "tp0/setup1")]
    assert rigid["placed_by_metadata"] == ["tp0/setup4"]
    affine = json.loads((ds / "dataset.solve-affine.json").read_text())
    assert affine["placed_by_metadata"] == ["tp0/setup4"]
    others = [ViewId(0, s) for s in range(18) if s != 4]
    rms, mx = _error(xml, others)
    assert rms < 0.3 and mx < 1.0, (rms, mx)
    # the blank tile is where its stage position puts it next to its (corrected) neighbours: within the stage error
    report = evaluate_xml(xml, str(ds / "ground_truth.json"))
    assert report.per_view[ViewId(0, 4)].max < 20


def test_identical_across_runs_and_worker_counts(beads, tmp_path):
    results = []
    for i, cluster in enumerate((["--cluster", "synchronous"], ["--cluster", "threads", "--workers", "2"])):
        xml = _copy(beads, tmp_path / f"ds{i}")
        assert main(["align", xml, *cluster, "-q"]) == 0
        spim = load_spimdata(xml)
        results.append({v: [t.affine for t in ts] for v, ts in spim.registrations.items()})
    assert results[0].keys() == results[1].keys()
    for v in results[0]:
        np.testing.assert_array_equal(np.array(results[0][v]), np.array(results[1][v]))


@pytest.mark.parametrize("name", ["align", "solve"])
def test_parameter_templates_are_valid_and_state_the_defaults(name):
    """params/align.yml and params/solve.yml load, and what they set is what runs without them."""
    import yaml

    from rhapso_gpu.cli.align import PATHS, STAGE_DEFAULTS, STAGES, AlignParams
    from rhapso_gpu.io.params import load_params
    from rhapso_gpu.solver import SolveParams

    path = Path(__file__).parents[1] / "params" / f"{name}.yml"
    if name == "solve":
        assert load_params(SolveParams, str(path)) == SolveParams()
        return
    params = load_params(AlignParams, str(path))
    raw = yaml.safe_load(path.read_text())
    assert (raw["strategy"], raw["auto_max_rms"]) == (AlignParams().strategy, AlignParams().auto_max_rms) == ("auto", 0.5)
    for stage in STAGES:
        for path_name in PATHS:
            assert params.stage(stage, path=path_name) == AlignParams().stage(stage, path=path_name)
        assert raw[stage] == STAGE_DEFAULTS[stage]


def test_plain_align_on_beads_keeps_interest_points_and_quiet_prints_nothing(beads, tmp_path, capsys):
    """strategy auto on beads: the first rigid solve agrees (no stitching stage runs); -q prints no table."""
    xml = _copy(beads, tmp_path / "ds")
    capsys.readouterr()
    assert main(["align", xml, "--cluster", "synchronous", "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "strategy" not in captured.err, captured
    assert not (tmp_path / "ds" / "dataset.solve-translation.json").exists()  # solve_stitch did not run
    rigid = json.loads((tmp_path / "ds" / "dataset.solve-rigid.json").read_text())
    assert rigid["rms"] < 1.0 and rigid["links"] > 0
    rms, mx = _error(xml)
    assert rms < 0.3 and mx < 1.0, (rms, mx)


def test_strategy_options(tmp_path, capsys):
    """--strategy and --set strategy/auto_max_rms reach the parameters; a bad value is a one-line user error."""
    from rhapso_gpu.cli import build_parser
    from rhapso_gpu.cli.align import align_params

    def parse(*options):
        return align_params(build_parser().parse_args(["align", "x.xml", *options]))

    assert parse().paths() == ("interest-points", "stitching")
    assert parse("--strategy", "stitching").paths() == ("stitching",)
    nuclei = str(Path(__file__).parents[1] / "params" / "align-nuclei.yml")
    assert parse("--params", nuclei, "--strategy", "auto").strategy == "auto"  # the option wins over the file
    params = parse("--set", "strategy=interest-points", "--set", "auto_max_rms=2")
    assert (params.paths(), params.auto_max_rms) == (("interest-points",), 2.0)
    assert params.stage("stitch_rigid")[0] and not parse("--set", "stitch_rigid.skip=false").stage("stitch_rigid")[0]
    assert main(["align", str(tmp_path / "x.xml"), "--set", "strategy=beads"]) == 2
    err = capsys.readouterr().err
    assert "strategy" in err and "Traceback" not in err, err
