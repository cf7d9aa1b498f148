"""The command line end to end: synth -> info -> evaluate, demo, and bad input."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rhapso_gpu.cli import main
from rhapso_gpu.geometry import view_affine
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata import ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata

SMALL = ["--tiles", "2x2x1", "--tile-size", "48x40x12", "--cluster", "synchronous", "--backend", "numpy"]
DATA = Path(__file__).parent / "data"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["synth", str(out), *SMALL, "--translation-error", "4", "--seed", "3"]) == 0
    return out


def test_synth_writes_a_dataset_bigstitcher_can_read(dataset):
    spim = load_spimdata(str(dataset / "dataset.xml"))
    truth = load_ground_truth(str(dataset / "ground_truth.json"))
    assert spim.image_format == "bdv.multimg.zarr" and len(spim.view_ids()) == 4
    assert [t.name for t in spim.registrations[spim.view_ids()[0]]] == ["Translation to Regular Grid", "calibration"]
    assert spim.setups[0].size_xyz == (48, 40, 12) and spim.setups[0].voxel_size.size_xyz == (0.5, 0.5, 1.0)
    for view in spim.view_ids():
        np.testing.assert_allclose(view_affine(spim, view), truth.nominal_affines[view])
        levels = open_view_levels(spim, view)
        assert levels[0].data_zyx.shape == (12, 40, 48)
        assert [tuple(lv.factors_xyz) for lv in levels] == [(1, 1, 1), (2, 2, 1), (4, 4, 1)]  # z (12) stays above 8 px
        full = levels[0].data_zyx.compute()
        assert full.dtype == np.uint16 and full.max() > 150  # background is 100: there is signal
        # level 1 is the block mean of level 0 (2x2x1), rounded half up
        expected = np.floor(full[:, :40, :48].reshape(12, 20, 2, 24, 2).mean(axis=(2, 4)) + 0.5)
        np.testing.assert_array_equal(levels[1].data_zyx.compute(), expected)
    assert truth.beads_world_xyz.shape[1] == 3 and len(truth.beads_world_xyz) > 10
    assert truth.params["translation_error"] == 4.0 and truth.params["seed"] == 3


def test_evaluate_reports_the_injected_error_of_the_nominal_xml(dataset, capsys, tmp_path):
    truth = load_ground_truth(str(dataset / "ground_truth.json"))
    report = tmp_path / "report.json"
    code, out, _ = _run(
        capsys, "evaluate", dataset / "dataset.xml", "--truth", dataset / "ground_truth.json",
        "--remove", "translation", "--json", report,
    )
    assert code == 0 and "worst view" in out
    # by hand: with translation errors only, every point of a view is off by the same vector;
    # removing the best global translation leaves each view's error minus the mean error
    views = sorted(truth.true_affines)
    errors = np.array([truth.true_affines[v][:3, 3] - truth.nominal_affines[v][:3, 3] for v in views])
    expected = np.linalg.norm(errors - errors.mean(axis=0), axis=1)
    result = json.loads(report.read_text())
    assert np.max(np.abs(errors)) <= 4.0 and np.max(expected) > 1.0
    np.testing.assert_allclose(result["rms"], np.sqrt(np.mean(expected**2)), rtol=1e-6)
    np.testing.assert_allclose(result["max"], expected.max(), rtol=1e-6)


def test_evaluate_reports_zero_for_the_true_registrations(dataset, capsys, tmp_path):
    truth = load_ground_truth(str(dataset / "ground_truth.json"))
    spim = load_spimdata(str(dataset / "dataset.xml"))
    for view, m in truth.true_affines.items():
        spim.registrations[view] = [ViewTransform.from_matrix("truth", m)]
    xml = tmp_path / "truth.xml"
    save_spimdata(spim, str(xml))
    report = tmp_path / "report.json"
    code, _, _ = _run(capsys, "evaluate", xml, "--truth", dataset / "ground_truth.json", "--json", report)
    assert code == 0
    assert json.loads(report.read_text())["max"] < 1e-6


@pytest.mark.parametrize("fmt", ["n5", "tiff"])
def test_synth_other_formats(tmp_path, capsys, fmt):
    code, out, err = _run(capsys, "synth", tmp_path, *SMALL, "--format", fmt)
    assert code == 0, err
    spim = load_spimdata(str(tmp_path / "dataset.xml"))
    assert spim.image_format == {"n5": "bdv.n5", "tiff": "spimreconstruction.filemap2"}[fmt]
    code, out, err = _run(capsys, "info", tmp_path / "dataset.xml")
    assert code == 0 and "all 4 views open" in out


def test_synth_is_reproducible_and_a_rerun_keeps_a_backup(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b, a):
        assert _run(capsys, "synth", out, *SMALL, "--seed", "7")[0] == 0
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and "~" not in p.name)
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert _digest(a / rel) == _digest(b / rel), rel
    assert (a / "dataset.xml~1").read_bytes() == (a / "dataset.xml").read_bytes()


def test_synth_nuclei_content(tmp_path, capsys):
    code, _, err = _run(capsys, "synth", tmp_path, "--content", "nuclei", "--tiles", "2x1x1", "--cluster", "synchronous")
    assert code == 0, err
    spim = load_spimdata(str(tmp_path / "dataset.xml"))
    image = open_view_levels(spim, spim.view_ids()[0])[0].data_zyx.compute()
    assert image.std() > 50  # real structure, not just background noise
    code, out, _ = _run(capsys, "evaluate", tmp_path / "dataset.xml", "--truth", tmp_path / "ground_truth.json")
    assert code == 0 and "all" in out


# --- bad input: one line on stderr, exit status 2, nothing on disk changed ------------------------


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    # log lines ("I ...", "W ...") may precede it; the error itself is one line
    lines = [line for line in err.strip().splitlines() if not line.startswith(("I ", "W ", "D "))]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_malformed_xml_is_one_line_and_untouched(tmp_path, capsys):
    xml = tmp_path / "dataset.xml"
    xml.write_text("<SpimData version='0.2'><BasePath type='relative'>.</BasePath>")
    before = _digest(xml)
    code, _, err = _run(capsys, "info", xml)
    _assert_one_line_error(code, err, str(xml), "not well-formed XML")
    assert _digest(xml) == before


def test_missing_xml(tmp_path, capsys):
    code, _, err = _run(capsys, "evaluate", tmp_path / "nope.xml", "--truth", tmp_path / "t.json")
    _assert_one_line_error(code, err, "nope.xml", "not found")


def test_unknown_loader_is_one_line_and_untouched(tmp_path, capsys):
    xml = tmp_path / "dataset.xml"
    text = (DATA / "loader_n5.xml").read_text().replace('format="bdv.n5" version="1.0"', 'format="bdv.hdf5"')
    xml.write_text(text)
    before = _digest(xml)
    code, _, err = _run(capsys, "info", xml)
    _assert_one_line_error(code, err, "bdv.hdf5", "not supported")
    assert _digest(xml) == before


def test_missing_ground_truth(dataset, capsys, tmp_path):
    code, _, err = _run(capsys, "evaluate", dataset / "dataset.xml", "--truth", tmp_path / "none.json")
    _assert_one_line_error(code, err, "none.json", "ground-truth file not found")


def test_synth_refuses_to_overwrite_a_foreign_dataset(tmp_path, capsys):
    xml = tmp_path / "dataset.xml"
    xml.write_bytes((DATA / "loader_n5.xml").read_bytes())
    before = _digest(xml)
    code, _, err = _run(capsys, "synth", tmp_path, *SMALL)
    _assert_one_line_error(code, err, str(xml), "was not written by synth")
    assert _digest(xml) == before and sorted(p.name for p in tmp_path.iterdir()) == ["dataset.xml"]


@pytest.mark.parametrize(
    "argv, fragments",
    [
        (["--overlap", "1.5"], ["parameter 'overlap'", "less than 0.9"]),
        (["--tiles", "3x3"], ["--tiles '3x3'", "three values"]),
        (["--voxel-size", "1xbx2"], ["--voxel-size '1xbx2'"]),
        (["--cluster", "lokal"], ["--cluster 'lokal'", "unknown value"]),
    ],
)
def test_bad_parameters(tmp_path, capsys, argv, fragments):
    code, _, err = _run(capsys, "synth", tmp_path / "out", "--cluster", "synchronous", *argv)
    _assert_one_line_error(code, err, *fragments)


def test_parameter_file_with_a_typo_suggests_the_key(tmp_path, capsys):
    params = tmp_path / "synth.yml"
    params.write_text("tiles: [2, 2, 1]\ntranslaton_error: 3\n")
    code, _, err = _run(capsys, "synth", tmp_path / "out", "--params", params, "--cluster", "synchronous")
    _assert_one_line_error(code, err, "unknown parameter 'translaton_error'", "did you mean 'translation_error'")


def test_parameter_file_values_are_used(tmp_path, capsys):
    params = tmp_path / "synth.yml"
    params.write_text("tiles: [2, 1, 1]\ntile_size: [40, 32, 8]\nformat: n5\n")
    code, _, err = _run(capsys, "synth", tmp_path / "out", "--params", params, "--cluster", "synchronous", "--levels", "2")
    assert code == 0, err
    spim = load_spimdata(str(tmp_path / "out" / "dataset.xml"))
    assert len(spim.setups) == 2 and spim.setups[1].size_xyz == (40, 32, 8) and spim.image_format == "bdv.n5"
    assert load_ground_truth(str(tmp_path / "out" / "ground_truth.json")).params["levels"] == 2


def test_demo_runs_end_to_end_from_the_console_script(tmp_path):
    """The README's main command on its default dataset: aligned to well under a pixel, then fused."""
    result = subprocess.run(
        [sys.executable, "-m", "rhapso_gpu", "demo", "--out", str(tmp_path / "demo"), "--cluster", "threads"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "backend numpy" in result.stderr  # the chosen backend is logged
    out = tmp_path / "demo"
    # measure independently of what the demo printed
    nominal = json.loads((out / "ground_truth.json").read_text())
    assert nominal["params"]["translation_error"] == 5.0
    code = main(["evaluate", str(out / "dataset.xml"), "--truth", str(out / "ground_truth.json"),
                 "--json", str(tmp_path / "aligned.json")])
    aligned = json.loads((tmp_path / "aligned.json").read_text())
    assert code == 0 and aligned["rms"] < 0.3 and aligned["max"] < 1.0
    assert "registration error" in result.stdout and (out / "fused.ome.zarr" / "0").is_dir()
    assert (out / "fused.ome.zarr" / "1").is_dir()  # the pyramid


def test_set_options_are_parsed_as_yaml_values():
    from rhapso_gpu.errors import UserError
    from rhapso_gpu.io.params import parse_set_options

    assert parse_set_options(["sigma=1.8", "overlap_only=true", "tiles=[2, 2, 1]", "label=beads"]) == {
        "sigma": 1.8, "overlap_only": True, "tiles": [2, 2, 1], "label": "beads",
    }
    with pytest.raises(UserError, match="--set 'sigma': expected key=value"):
        parse_set_options(["sigma"])


def test_the_synth_template_validates_and_matches_the_defaults():
    from rhapso_gpu.io.params import load_params
    from rhapso_gpu.synth.dataset import SynthParams

    template = Path(__file__).parents[1] / "params" / "synth.yml"
    assert load_params(SynthParams, str(template)) == SynthParams()


def test_set_null_is_kept_and_a_bad_set_value_is_blamed_on_the_command_line(tmp_path, capsys):
    """--set key=null means YAML's null (not "ignore me"); an error in a --set value does not name the file."""
    from rhapso_gpu.detection import DetectParams
    from rhapso_gpu.errors import UserError
    from rhapso_gpu.io.params import load_params, parse_set_options

    params = tmp_path / "d.yml"
    params.write_text("sigma: 1.8\nmax_intensity: 500\n")
    assert load_params(DetectParams, str(params)).max_intensity == 500
    assert load_params(DetectParams, str(params), parse_set_options(["max_intensity=null"])).max_intensity is None
    with pytest.raises(UserError, match=r"^command line: parameter 'sigma'"):
        load_params(DetectParams, str(params), parse_set_options(["sigma=abc"]))
    with pytest.raises(UserError, match=r"^command line: parameter 'sigma'.*got None"):
        load_params(DetectParams, str(params), parse_set_options(["sigma="]))
    params.write_text("sigma: abc\n")
    with pytest.raises(UserError, match=r"d\.yml: parameter 'sigma'"):
        load_params(DetectParams, str(params))


def test_quiet_commands_print_nothing(tmp_path, capsys):
    """-q: only warnings and errors, on every command (their tables and results included)."""
    ds, xml = tmp_path / "ds", str(tmp_path / "ds" / "dataset.xml")
    fused = str(tmp_path / "f.ome.zarr")
    commands = [
        ["synth", str(ds), "--tiles", "2x1x1", "--cluster", "synchronous"],
        ["info", xml],
        ["detect", xml, "--cluster", "synchronous"],
        ["match", xml, "--method", "offset-consensus", "--model", "translation", "--set", "min_inliers=5",
         "--cluster", "synchronous"],
        ["solve", xml, "--model", "translation"],
        ["evaluate", xml, "--truth", str(ds / "ground_truth.json")],
        ["stitch", xml, "--cluster", "synchronous"],
        ["fuse", xml, fused, "--cluster", "synchronous"],
        ["multiscale", fused, "--cluster", "synchronous"],
        ["split", xml, "--out", str(ds / "split.xml"), "--set", "target_image_size=[64, 64, 32]",
         "--set", "target_overlap=[16, 16, 8]"],
    ]
    for command in commands:
        assert main([*command, "-q"]) == 0, command
        assert capsys.readouterr().out == "", command
