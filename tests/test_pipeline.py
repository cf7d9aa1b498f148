"""Pipeline files (issue 7): validation with one-line errors, the templates, skip/rerun semantics, `rhapso-gpu run`."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from rhapso_gpu.cli import main
from rhapso_gpu.errors import UserError
from rhapso_gpu.io.spimdata import ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.pipeline import load_pipeline, parse_pipeline, run_pipeline
from rhapso_gpu.scheduler import open_cluster

ROOT = Path(__file__).parents[1]
TEMPLATES = sorted((ROOT / "params").glob("pipeline-*.yml"))

ALIGN_RIGID = [
    {"stage": "detect", "params": {"dsxy": 1}},
    {"stage": "match", "params": {"method": "offset-consensus", "model": "rigid", "min_inliers": 5,
                                  "search_radius": 35.0}},
    {"stage": "solve", "params": {"model": "rigid", "relative_threshold": 2.5, "absolute_threshold": 3.5}},
    {"stage": "qc", "params": {"truth": "ds/ground_truth.json"}},
]


def _write(folder: Path, values: dict) -> str:
    path = folder / "pipeline.yml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return str(path)


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_templates_validate(template):
    pipeline = load_pipeline(str(template))
    assert pipeline.steps
    for spec in pipeline.steps:
        assert spec.parameters is not None


def test_all_four_templates_exist():
    names = {p.name for p in TEMPLATES}
    assert {"pipeline-demo.yml", "pipeline-exaspim-s3.yml", "pipeline-tiff-local.yml", "pipeline-fuse.yml"} <= names


def test_paths_resolve_against_the_pipeline_file_and_output(tmp_path):
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "output": "out",
                             "stages": [{"stage": "fuse"}, {"stage": "multiscale"}]})
    pipeline = load_pipeline(path)
    assert pipeline.xml == str(tmp_path / "ds" / "dataset.xml")
    assert pipeline.output == str(tmp_path / "out")
    assert pipeline.resolve_output("fused.ome.zarr") == str(tmp_path / "out" / "fused.ome.zarr")
    assert pipeline.resolve_output("s3://bucket/x.zarr") == "s3://bucket/x.zarr"
    assert [s.key for s in pipeline.steps] == ["fuse", "multiscale"]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"xml": "a.xml", "stage": []}, r"pipeline.yml: unknown parameter 'stage'; did you mean 'stages'\?"),
        ({"xml": "a.xml", "stages": [{"stage": "detect", "parms": {}}]},
         r"stages\[0\]: unknown parameter 'parms'; did you mean 'params'\?"),
        ({"xml": "a.xml", "stages": [{"stage": "detect"}, {"stage": "match", "params": {"serch_radius": 5}}]},
         r"stages\[1\] \(match\) params: unknown parameter 'serch_radius'; did you mean 'search_radius'\?"),
        ({"xml": "a.xml", "stages": [{"stage": "detekt"}]}, r"stages\[0\]: parameter 'stage': Input should be"),
        ({"xml": "a.xml", "stages": [{"stage": "match"}, {"stage": "match"}]},
         r"stages\[1\]: stage name 'match' is used twice"),
        ({"xml": "a.xml", "stages": [{"stage": "solve", "params": {"model": "similarity"}}]},
         r"stages\[0\] \(solve\) params: parameter 'model'"),
        ({"xml": "a.xml", "stages": [{"stage": "align", "params": {"match_rigid": {"min_inlier": 3}}}]},
         r"\(align\) params: match_rigid: unknown parameter 'min_inlier'; did you mean 'min_inliers'\?"),
        ({"xml": "a.xml", "stages": []}, r"parameter 'stages'"),
        ({"stages": [{"stage": "detect"}]}, r"parameter 'xml'"),
    ],
)
def test_invalid_pipelines_are_one_line_user_errors(tmp_path, values, message):
    path = _write(tmp_path, values)
    with pytest.raises(UserError, match=message) as error:
        load_pipeline(path)
    assert "\n" not in str(error.value) and str(error.value).startswith(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="pipeline file not found"):
        load_pipeline(str(tmp_path / "nope.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("xml: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_pipeline(str(bad))


def test_run_command_reports_a_bad_pipeline_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, {"xml": "a.xml", "stages": [{"stage": "fuse", "params": {"fusoin": "max"}}]})
    assert main(["run", path, "--cluster", "synchronous"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'fusion'?" in err


# --- running ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "ds"
    assert main(["synth", str(out), "--tiles", "2x2x1", "--content", "beads", "--seed", "3",
                 "--cluster", "synchronous", "-q"]) == 0
    return out


def _run(path: str):
    with open_cluster("synchronous") as cluster:
        return {r.name: r for r in run_pipeline(load_pipeline(path), cluster, "numpy", quiet=True)}


def _transforms(xml: Path) -> dict:
    return {v: [t.matrix.tolist() for t in ts] for v, ts in load_spimdata(str(xml)).registrations.items()}


def test_rerun_skips_and_a_changed_stage_reruns_from_the_recorded_xml(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    xml = tmp_path / "ds" / "dataset.xml"
    nominal = _transforms(xml)
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": ALIGN_RIGID})

    first = _run(path)
    assert [r.status for r in first.values()] == ["ran"] * 4
    assert float(first["qc"].result.split()[3]) < 0.3  # "registration error RMS <rms> / ..."
    solved = _transforms(xml)
    assert all(len(solved[v]) == len(nominal[v]) + 1 for v in nominal)

    again = _run(path)
    assert [r.status for r in again.values()] == ["skipped"] * 4
    assert _transforms(xml) == solved

    # a new matching parameter: detect is kept, match and the stages after it run again, from the XML state
    # detect left (the rigid solve is not stacked on top of the first one)
    values = yaml.safe_load(Path(path).read_text())
    values["stages"][1]["params"]["min_inliers"] = 4
    _write(tmp_path, values)
    changed = _run(path)
    assert [r.status for r in changed.values()] == ["skipped", "ran", "ran", "ran"]
    assert _transforms(xml) == solved
    assert (tmp_path / "ds" / "dataset.xml~1").exists()  # the replaced XML is kept as a backup

    state = json.loads((tmp_path / "ds" / "dataset.xml.pipeline" / "state.json").read_text())["stages"]
    assert state["match"]["params"]["min_inliers"] == 4 and state["match"]["status"] == "done"
    assert state["detect"]["version"] and len(state["solve"]["input_token"]) == 64


def test_an_edited_xml_is_a_new_input(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": ALIGN_RIGID[:1]})
    assert _run(path)["detect"].status == "ran"
    xml = tmp_path / "ds" / "dataset.xml"
    spim = load_spimdata(str(xml))
    view = min(spim.registrations)
    spim.registrations[view].insert(0, ViewTransform.from_matrix("edited by hand", np.eye(4)[:3]))
    save_spimdata(spim, str(xml))
    assert _run(path)["detect"].status == "ran"
    assert "edited by hand" in xml.read_text()  # the user's edit is the new input, not undone


def test_a_failing_stage_is_reported_with_the_rows_so_far(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    stages = [ALIGN_RIGID[0], {"stage": "qc", "params": {"truth": "ds/missing.json"}}, {"stage": "fuse"}]
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": stages})
    with pytest.raises(UserError, match="missing.json") as error:
        _run(path)
    rows = [(r.name, r.status) for r in error.value.pipeline_results]
    assert rows == [("detect", "ran"), ("qc", "failed"), ("fuse", "not run")]
    # the rerun skips detect and fails again at qc
    with pytest.raises(UserError) as error:
        _run(path)
    assert [r.status for r in error.value.pipeline_results] == ["skipped", "failed", "not run"]


def test_run_command_prints_the_summary_and_writes_the_log(small_dataset, tmp_path, capsys):
    shutil.copytree(small_dataset, tmp_path / "ds")
    stages = [*ALIGN_RIGID, {"stage": "fuse", "params": {"data_type": "uint16", "chunk_size": [64, 64, 64]}},
              {"stage": "multiscale", "params": {"levels": 2}}]
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "output": "out", "stages": stages})
    log = tmp_path / "run.log"
    assert main(["run", path, "--cluster", "synchronous", "--log-file", str(log)]) == 0
    out = capsys.readouterr().out
    for name in ("detect", "match", "solve", "qc", "fuse", "multiscale"):
        assert name in out
    assert (tmp_path / "out" / "fuse.ome.zarr").exists()
    text = log.read_text()
    assert "pipeline: multiscale ran" in text and "1 pyramid level(s)" in text
    assert main(["run", path, "--cluster", "synchronous", "--log-file", str(log), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert log.read_text().count("skipped: unchanged") == 6


def test_parse_pipeline_resolves_against_a_given_folder(tmp_path):
    pipeline = parse_pipeline({"xml": "d.xml", "stages": [{"stage": "qc", "params": {"truth": "t.json"}}]},
                              "mine", str(tmp_path))
    assert pipeline.xml == str(tmp_path / "d.xml")
    assert pipeline.steps[0].parameters.truth == str(tmp_path / "t.json")


def test_a_solve_killed_after_saving_the_xml_is_not_applied_twice(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    xml = tmp_path / "ds" / "dataset.xml"
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": ALIGN_RIGID[:3]})
    _run(path)
    solved = _transforms(xml)
    # what a kill between the solve's XML save and its record leaves: the solved XML, the record still 'started'
    state_file = tmp_path / "ds" / "dataset.xml.pipeline" / "state.json"
    state = json.loads(state_file.read_text())
    state["stages"]["solve"]["status"] = "started"
    state_file.write_text(json.dumps(state))
    rows = _run(path)
    assert [r.status for r in rows.values()] == ["skipped", "skipped", "ran"]
    assert _transforms(xml) == solved  # solved once from the matched state, not on top of the first solve


def test_stages_after_split_work_on_the_split_xml(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    stages = [ALIGN_RIGID[0], {"stage": "split", "params": {"target_image_size": [64, 64, 64],
                                                            "target_overlap": [16, 16, 16]}},
              {"stage": "match", "params": {**ALIGN_RIGID[1]["params"], "labels": ["beads_split"]}}]
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": stages})
    assert [r.status for r in _run(path).values()] == ["ran"] * 3
    split_xml = tmp_path / "ds" / "dataset.split.xml"
    state = json.loads((tmp_path / "ds" / "dataset.xml.pipeline" / "state.json").read_text())["stages"]
    assert state["split"]["out_xml"] == state["match"]["xml"] == str(split_xml)
    assert len(load_spimdata(str(split_xml)).setups) > len(load_spimdata(str(tmp_path / "ds" / "dataset.xml")).setups)
    # a new split size replaces the split XML this pipeline wrote (no "exists" error) and reruns the matching
    stages[1]["params"]["target_overlap"] = [32, 32, 32]
    _write(tmp_path, {"xml": "ds/dataset.xml", "stages": stages})
    assert [r.status for r in _run(path).values()] == ["skipped", "ran", "ran"]


def test_the_align_shorthand_reaches_subpixel(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    stages = [{"stage": "align", "params": {"match_affine": {"skip": True}, "solve_affine": {"skip": True}}},
              {"stage": "qc", "params": {"truth": "ds/ground_truth.json", "max_rms": 0.3}, "output": "qc.json"}]
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": stages})
    rows = _run(path)
    assert [r.status for r in rows.values()] == ["ran", "ran"]
    assert "detect, match_rigid, solve_rigid ran" in rows["align"].result
    report = json.loads((tmp_path / "ds" / "qc.json").read_text())
    assert report["rms"] < 0.3 and len(report["per_view"]) == 4
    assert report["version"] and report["parameters"]["max_rms"] == 0.3


def test_an_edit_after_an_interrupted_fusion_is_kept(small_dataset, tmp_path):
    """Fusion interrupted, then the XML edited and saved with backups (as BigStitcher saves): the edit is a new
    input; the rerun does not restore the recorded state over it."""
    shutil.copytree(small_dataset, tmp_path / "ds")
    xml = tmp_path / "ds" / "dataset.xml"
    stages = [*ALIGN_RIGID[:3], {"stage": "fuse", "params": {"data_type": "uint16", "chunk_size": [64, 64, 64]}}]
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "output": "out", "stages": stages})
    _run(path)
    state_file = tmp_path / "ds" / "dataset.xml.pipeline" / "state.json"
    state = json.loads(state_file.read_text())
    state["stages"]["fuse"]["status"] = "started"  # what an interrupt in the middle of fusion leaves
    state_file.write_text(json.dumps(state))
    spim = load_spimdata(str(xml))
    spim.registrations[min(spim.registrations)].insert(0, ViewTransform.from_matrix("edited by hand", np.eye(4)[:3]))
    save_spimdata(spim, str(xml))  # backup ~1 = the state fusion started from
    rows = _run(path)
    assert [r.status for r in rows.values()] == ["ran"] * 4
    assert "edited by hand" in xml.read_text()


def test_a_deleted_interest_point_container_runs_detect_again(small_dataset, tmp_path):
    shutil.copytree(small_dataset, tmp_path / "ds")
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": ALIGN_RIGID[:2]})
    _run(path)
    shutil.rmtree(tmp_path / "ds" / "interestpoints.n5")
    rows = _run(path)
    assert [r.status for r in rows.values()] == ["ran", "ran"]
    assert (tmp_path / "ds" / "interestpoints.n5").is_dir()


def test_a_malformed_xml_writes_nothing(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.xml").write_text("<SpimData><oops></SpimData>")
    path = _write(tmp_path, {"xml": "ds/dataset.xml", "stages": ALIGN_RIGID[:1]})
    assert main(["run", path, "--cluster", "synchronous"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "dataset.xml: not well-formed XML" in err.splitlines()[-1], err
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["dataset.xml"]
