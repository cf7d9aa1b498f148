"""`rhapso-gpu params from-rhapso`: Rhapso parameter files (rebuilt from the Rhapso reference, see
tests/data/rhapso/README.md) convert into pipeline files that validate, with every key accounted for."""

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
