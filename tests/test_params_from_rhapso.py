"""`rhapso-gpu params from-rhapso`: Rhapso parameter files (rebuilt from the Rhapso reference, see
tests/data/rhapso/README.md) convert into pipeline files that validate, with every key accounted for."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rhapso_gpu.cli import main
from rhapso_gpu.cli.params import read_rhapso
from rhapso_gpu.errors import UserError
from rhapso_gpu.pipeline import load_pipeline
from rhapso_gpu.pipeline.from_rhapso import UNKNOWN, convert_rhapso

DATA = Path(__file__).parent / "data" / "rhapso"
EXASPIM = str(DATA / "exaSPIM_794495.yml")
FUSION = str(DATA / "HCR_823476_fusion.yml")
HCR = str(DATA / "HCR_802704_detection_matching.yml")


def _convert(tmp_path, *files, extra=()):
    out = tmp_path / "pipeline.yml"
    assert main(["params", "from-rhapso", *files, "--out", str(out), "-q", *extra]) == 0
    return out, load_pipeline(str(out))


def _steps(pipeline):
    return {s.key: s for s in pipeline.steps}


def test_exaspim_alignment_and_fusion_convert_and_validate(tmp_path):
    _, pipeline = _convert(tmp_path, EXASPIM, FUSION)
    steps = _steps(pipeline)
    assert list(steps) == ["detect", "match_rigid", "solve_rigid", "match_affine", "solve_affine", "split",
                           "match_split_affine", "solve_split_affine", "fuse", "multiscale"]
    assert pipeline.xml == "s3://example-bucket/exaSPIM_794495/dataset_794495.xml"

    d = steps["detect"].parameters
    assert (d.dsxy, d.dsz, d.sigma, d.threshold, d.median_filter, d.combine_distance, d.max_spots) == (
        16, 16, 2.0, 0.005, 10, 0.5, 10000)
    assert (d.min_intensity, d.max_intensity) == (1, 5)

    rigid, affine, split_affine = (steps[f"match_{s}"].parameters for s in ("rigid", "affine", "split_affine"))
    assert (rigid.model, rigid.search_radius, rigid.significance, rigid.num_neighbors, rigid.min_inliers,
            rigid.max_epsilon, rigid.min_inlier_ratio, rigid.iterations) == ("rigid", 600, 2, 2, 15, 100, 0.1, 10000)
    assert (affine.model, affine.search_radius, affine.num_neighbors, affine.min_inliers, affine.lam) == (
        "affine", 100, 3, 20, 0.05)
    assert (split_affine.model, split_affine.max_epsilon, split_affine.labels) == ("affine", 50, ["beads_split"])
    assert {m.method for m in (rigid, affine, split_affine)} == {"fast-translation"}

    s_rigid, s_affine, s_split = (steps[f"solve_{s}"].parameters for s in ("rigid", "affine", "split_affine"))
    assert (s_rigid.model, s_affine.model, s_split.model) == ("rigid", "affine", "affine")
    assert (s_affine.lam, s_affine.relative_threshold, s_affine.absolute_threshold) == (0.05, 3.5, 7.0)
    assert s_split.labels == ["beads_split", "splitPoints"] and s_split.label_weights == {"splitPoints": 0.03}
    assert s_rigid.fixed_views is None  # fixed_tile: False

    sp = steps["split"]
    assert sp.output == "s3://example-bucket/exaSPIM_794495/rhapso-split.xml"
    assert (tuple(sp.parameters.target_image_size), tuple(sp.parameters.target_overlap)) == (
        (7040, 7040, 4000), (128, 128, 128))
    assert (sp.parameters.point_density, sp.parameters.min_points, sp.parameters.max_points,
            sp.parameters.error, sp.parameters.exclude_radius) == (100.0, 20, 500, 0.5, 200.0)

    fuse = steps["fuse"]
    assert fuse.output == "s3://example-bucket/HCR_823476/fusion/fused.zarr"
    assert fuse.parameters.fusion == "avg-blend" and tuple(fuse.parameters.block_scale) == (2, 2, 2)
    # Rhapso's zyx factors become xyz
    assert [tuple(f) for f in steps["multiscale"].parameters.factors] == [
        (2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)]


def test_every_rhapso_key_is_accounted_for_in_the_output(tmp_path):
    out, _ = _convert(tmp_path, EXASPIM, FUSION)
    header = [line for line in out.read_text().splitlines() if line.startswith("#   ")]
    keys = set(read_rhapso([EXASPIM, FUSION]))
    reported = {line[4:].split(":", 1)[0] for line in header}
    assert reported == keys
    for line in header:
        assert " -> " in line or " not applicable: " in line, line
    not_applicable = {line[4:].split(":", 1)[0] for line in header if "not applicable" in line}
    assert {"damp", "max_plateauwidth", "chunks_per_bound", "file_type", "num_neighbors_rigid",
            "intensity_range"} <= not_applicable
    assert "dsxy" not in not_applicable and "search_radius_rigid" not in not_applicable


def test_transitional_key_names_and_model_from_the_suffix(tmp_path):
    _, pipeline = _convert(tmp_path, HCR)
    steps = _steps(pipeline)
    assert list(steps) == ["detect", "match_rigid", "match_affine"]
    rigid, affine = steps["match_rigid"].parameters, steps["match_affine"].parameters
    assert (rigid.model, rigid.min_inliers, rigid.max_epsilon, rigid.search_radius) == ("rigid", 25, 128, 256)
    assert (affine.model, affine.min_inliers, affine.max_epsilon, affine.min_inlier_ratio) == ("affine", 40, 20, 0.2)
    notes = {k: o for k, _, o in convert_rhapso(read_rhapso([HCR])).notes}
    assert notes["ransac_sample_size_rigid"].startswith("not applicable")


def test_fixed_tile_and_unknown_keys():
    conversion = convert_rhapso({"xml_file_path_detection": "d.xml", "run_type_solver_rigid": "rigid",
                                 "fixed_tile_rigid": "timepoint: 0, setup: 3", "colour": "blue"})
    solve = conversion.pipeline["stages"][0]
    assert solve["params"]["fixed_views"] == ["0,3"] and solve["params"]["model"] == "rigid"
    assert ("colour", "blue", UNKNOWN) in conversion.notes


def test_printing_without_out_and_the_xml_option(tmp_path, capsys):
    assert main(["params", "from-rhapso", FUSION, "--xml", "aligned.xml"]) == 0
    values = yaml.safe_load(capsys.readouterr().out)
    assert values["xml"] == "aligned.xml" and [s["stage"] for s in values["stages"]] == ["fuse", "multiscale"]


def test_conflicting_files_and_missing_xml_are_user_errors(tmp_path):
    other = tmp_path / "other.yml"
    other.write_text("dsxy: 2\nxml_file_path_detection: a.xml\n")
    with pytest.raises(UserError, match="'dsxy' is 2 here but 16 in an earlier file"):
        read_rhapso([EXASPIM, str(other)])
    with pytest.raises(UserError, match="no input XML"):
        convert_rhapso({"dsxy": 2})


# --- user errors: one line naming the file and the key, exit status 2, the inputs unchanged -----------------------

def _fails(tmp_path, capsys, text, *extra, out=None):
    """Convert a Rhapso file with ``text``; it must fail with one line on stderr and leave the file as it was."""
    rhapso = tmp_path / "rhapso.yml"
    rhapso.write_text(text)
    code = main(["params", "from-rhapso", str(rhapso), *extra, "--out", str(out or tmp_path / "pipeline.yml")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert rhapso.read_text() == text
    return err.strip(), str(rhapso)


@pytest.mark.parametrize("line, message", [
    ("output_block_size: 128", "output_block_size 128: expected a list of 3 positive whole numbers"),
    ("output_block_size: [128, 0, 128]", "output_block_size [128, 0, 128]: expected a list of 3 positive"),
    ("block_size: [256, 256]", "block_size [256, 256]: expected a list of 3 positive whole numbers"),
    ("block_size: [256, 256, 256]\noutput_block_size: [a, 1, 1]", "output_block_size ['a', 1, 1]: expected"),
    ("scale_factor: 2", "scale_factor 2: expected a list of [z, y, x] factors"),
    ("n_lvls: 3\nscale_factor: [[1, 2]]", "scale_factor [[1, 2]]: expected a list of [z, y, x] factors"),
    ("output_zarr_version: v3", "output_zarr_version 'v3': expected 2 or 3"),
    ("overlap_strategy: [1]", "overlap_strategy [1]: expected one of avg_blend, max_blend, lowest_view_wins"),
    ("output_path: [1]", "output_path [1]: expected a path or URL"),
])
def test_bad_fusion_values_are_one_line_errors_naming_file_and_key(tmp_path, capsys, line, message):
    err, rhapso = _fails(tmp_path, capsys, f"aligned_xml_path: d.xml\n{line}\n")
    assert f"{rhapso}: {message}" in err
    assert not (tmp_path / "pipeline.yml").exists()


@pytest.mark.parametrize("line, message", [
    ("fixed_tile_rigid: 'setup 3'", "fixed_tile_rigid 'setup 3': expected 'timepoint: T, setup: S'"),
    ("fixed_tile: 3", "fixed_tile 3: expected 'timepoint: T, setup: S'"),
    ("match_type_affine: similarity", "match_type_affine 'similarity': expected rigid, affine or split-affine"),
    ("run_type_solver_rigid: [rigid]", "run_type_solver_rigid ['rigid']: expected rigid, affine or split-affine"),
])
def test_bad_model_and_fixed_tile_errors_name_the_file(tmp_path, capsys, line, message):
    err, rhapso = _fails(tmp_path, capsys, f"xml_file_path_detection: d.xml\n{line}\n")
    assert f"{rhapso}: {message}" in err


def test_missing_xml_names_the_files(tmp_path, capsys):
    err, rhapso = _fails(tmp_path, capsys, "dsxy: 2\n")
    assert err.endswith(f"error: {rhapso}: no input XML in the Rhapso parameters (xml_file_path_detection or "
                        "aligned_xml_path); pass --xml")
    with pytest.raises(UserError, match=r"^a\.yml, b\.yml: no input XML"):
        convert_rhapso({"dsxy": 2, "sigma": 1.0}, sources={"dsxy": "a.yml", "sigma": "b.yml"})


def test_a_bad_value_checked_by_the_pipeline_names_the_rhapso_file(tmp_path, capsys):
    err, rhapso = _fails(tmp_path, capsys, "xml_file_path_detection: d.xml\ndsxy: many\n")
    assert f"pipeline converted from {rhapso}: stages[0] (detect) params: parameter 'dsxy'" in err


def test_a_subprocess_gets_one_line_and_status_2(tmp_path):
    rhapso = tmp_path / "rhapso.yml"
    rhapso.write_text("aligned_xml_path: d.xml\noutput_block_size: 128\n")
    done = subprocess.run([sys.executable, "-m", "rhapso_gpu", "params", "from-rhapso", str(rhapso), "--out",
                           str(tmp_path / "p.yml")], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"rhapso-gpu params: error: {rhapso}: output_block_size 128: expected a list of "
                                   "3 positive whole numbers (x y z), e.g. [128, 128, 128]")


# --- --out never overwrites an input -----------------------------------------------------------------------------

def test_out_may_not_be_an_input_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "aligned_xml_path: d.xml\noverlap_strategy: max_blend\n"
    err, rhapso = _fails(tmp_path, capsys, text, out=tmp_path / "rhapso.yml")
    assert err.endswith(f"error: --out {tmp_path / 'rhapso.yml'}: is the input {rhapso}; inputs are never "
                        "overwritten, choose another --out")
    err, _ = _fails(tmp_path, capsys, text, out="./rhapso.yml")  # the same file spelled differently
    assert "--out ./rhapso.yml: is the input" in err
    (tmp_path / "link.yml").symlink_to(tmp_path / "rhapso.yml")
    err, _ = _fails(tmp_path, capsys, text, out=tmp_path / "link.yml")
    assert "link.yml: is the input" in err
    second = tmp_path / "fusion.yml"
    second.write_text("n_lvls: 2\n")
    err, _ = _fails(tmp_path, capsys, text, str(second), out=second)  # the second of two inputs
    assert f"is the input {second}" in err and second.read_text() == "n_lvls: 2\n"


def test_out_may_not_be_the_xml(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.xml").write_text("<SpimData/>")
    err, _ = _fails(tmp_path, capsys, "aligned_xml_path: d.xml\noverlap_strategy: max_blend\n", out="d.xml")
    assert f"--out d.xml: is the input {tmp_path / 'd.xml'}" in err
    err, _ = _fails(tmp_path, capsys, "overlap_strategy: max_blend\n", "--xml", "d.xml", out=tmp_path / "d.xml")
    assert "is the input" in err and (tmp_path / "d.xml").read_text() == "<SpimData/>"


# --- relative paths ------------------------------------------------------------------------------------------------

def test_relative_paths_point_where_rhapso_would_from_the_out_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Rhapso reads relative locations from the working directory
    text = ("xml_file_path_detection: data/dataset.xml\nrun_type_solver_rigid: rigid\n"
            "metrics_output_path_rigid: metrics/rigid.json\nxml_output_file_path_split: s3://bucket/split.xml\n"
            "output_path: fusion/fused.zarr\nmultiscale_zarr_path: fusion/fused.zarr\n")
    (tmp_path / "rhapso.yml").write_text(text)
    out = tmp_path / "out" / "conv.yml"
    assert main(["params", "from-rhapso", "rhapso.yml", "--out", "out/conv.yml", "-q"]) == 0
    assert (tmp_path / "rhapso.yml").read_text() == text
    written = yaml.safe_load(out.read_text())
    assert written["xml"] == "../data/dataset.xml"
    outputs = {s.get("name", s["stage"]): s.get("output") for s in written["stages"]}
    assert outputs["split"] == "s3://bucket/split.xml"  # URLs as given
    pipeline = load_pipeline(str(out))
    steps = _steps(pipeline)
    assert pipeline.xml == str(tmp_path / "data" / "dataset.xml")
    resolved = {name: os.path.normpath(pipeline.resolve_output(steps[name].output)) for name in ("fuse", "solve_rigid")}
    assert resolved == {"fuse": str(tmp_path / "fusion" / "fused.zarr"),
                        "solve_rigid": str(tmp_path / "metrics" / "rigid.json")}
    assert "relative path rewritten" in out.read_text()


def test_absolute_paths_are_kept_and_a_remote_xml_makes_outputs_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    conversion = convert_rhapso({"aligned_xml_path": "s3://bucket/d.xml", "output_path": "fused.zarr"},
                                folder=str(tmp_path / "out"))
    assert conversion.pipeline["xml"] == "s3://bucket/d.xml"
    assert conversion.pipeline["stages"][0]["output"] == str(tmp_path / "fused.zarr")
    conversion = convert_rhapso({"aligned_xml_path": str(tmp_path / "d.xml"), "output_path": "/abs/fused.zarr"},
                                folder=str(tmp_path / "out"))
    assert conversion.pipeline["xml"] == str(tmp_path / "d.xml")
    assert conversion.pipeline["stages"][0]["output"] == "/abs/fused.zarr"


def test_a_converted_pipeline_in_another_folder_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "ds", "--tiles", "2x1x1", "--tile-size", "32x32x16", "--content", "beads", "--seed", "1",
                 "--cluster", "synchronous", "-q"]) == 0
    (tmp_path / "fusion.yml").write_text("aligned_xml_path: ds/dataset.xml\noutput_path: fusion/fused.zarr\n"
                                         "overlap_strategy: max_blend\noutput_block_size: [32, 32, 16]\n"
                                         "scale_factor: [[1, 2, 2]]\n")
    assert main(["params", "from-rhapso", "fusion.yml", "--out", "out/conv.yml", "-q"]) == 0
    assert main(["run", "out/conv.yml", "--cluster", "synchronous", "-q"]) == 0
    assert (tmp_path / "fusion" / "fused.zarr").is_dir()  # where Rhapso would have written it


# --- two keys for one parameter --------------------------------------------------------------------------------------

def test_two_keys_setting_one_parameter_differently_are_an_error(tmp_path, capsys):
    err, rhapso = _fails(tmp_path, capsys, "xml_file_path_detection: d.xml\nmodel_min_matches_rigid: 15\n"
                                           "model_min_inliers_rigid: 25\n")
    assert err.endswith(f"error: {rhapso}: model_min_inliers_rigid 25 conflicts with model_min_matches_rigid 15: "
                        "both set match_rigid.min_inliers; keep one of them (Rhapso 0.4.5 reads "
                        "model_min_inliers_*, older versions model_min_matches_*)")
    with pytest.raises(UserError, match=r"^b\.yml: relative_threshold_rigid 2\.0 conflicts with relative_threshold "
                                        r"3\.5 in a\.yml: both set solve_rigid\.relative_threshold"):
        convert_rhapso({"xml_file_path_detection": "d.xml", "relative_threshold": 3.5,
                        "relative_threshold_rigid": 2.0},
                       sources={"xml_file_path_detection": "a.yml", "relative_threshold": "a.yml",
                                "relative_threshold_rigid": "b.yml"})


def test_two_keys_with_the_same_value_are_both_reported():
    conversion = convert_rhapso({"xml_file_path_detection": "d.xml", "model_min_matches_rigid": 15,
                                 "model_min_inliers_rigid": 15})
    assert conversion.pipeline["stages"][0]["params"]["min_inliers"] == 15
    outcomes = {k: o for k, _, o in conversion.notes}
    assert outcomes["model_min_matches_rigid"] == outcomes["model_min_inliers_rigid"] == "-> match_rigid.min_inliers"
