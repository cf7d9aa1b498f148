"""``rhapso-gpu run``: interrupted in the middle of fusion (SIGINT, then SIGKILL) and rerun, the outputs equal an
undisturbed run's; the stages before fusion are skipped on the reruns (issue 7, reliability)."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from rhapso_gpu.cli import main
from rhapso_gpu.io.interestpoints import container_location, read_interest_points
from rhapso_gpu.io.ome_zarr import PROGRESS_DIR
from rhapso_gpu.io.spimdata_xml import load_spimdata

PIPELINE = """\
xml: ds/dataset.xml
output: out
stages:
  - stage: detect
    params: {dsxy: 1}
  - stage: match
    params: {method: offset-consensus, model: rigid, min_inliers: 5, search_radius: 35.0}
  - stage: solve
    params: {model: rigid, relative_threshold: 2.5, absolute_threshold: 3.5}
  - stage: fuse
    output: fused.ome.zarr
    params: {data_type: uint16, chunk_size: [32, 32, 32], block_scale: [1, 1, 1]}
  - stage: multiscale
    params: {factors: [[2, 2, 2]]}
"""


@pytest.fixture(scope="module")
def synth_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline_resume") / "ds"
    assert main(["synth", str(out), "--tiles", "2x2x1", "--content", "beads", "--seed", "3",
                 "--cluster", "synchronous", "-q"]) == 0
    return out


def _workspace(synth_dataset, folder: Path) -> Path:
    shutil.copytree(synth_dataset, folder / "ds")
    (folder / "pipeline.yml").write_text(PIPELINE)
    return folder


def _command(folder: Path, log: str) -> list[str]:
    return [sys.executable, "-m", "rhapso_gpu", "run", str(folder / "pipeline.yml"), "--cluster", "synchronous",
            "--log-file", str(folder / log), "-q"]


def _interrupt_during_fusion(folder: Path, sig: int, min_blocks: int) -> tuple[int, str]:
    """Start `run`, wait until fusion has finished ``min_blocks`` more blocks, send ``sig``; the exit status."""
    progress = folder / "out" / "fused.ome.zarr" / PROGRESS_DIR
    before = len(list(progress.iterdir())) if progress.exists() else 0
    proc = subprocess.Popen(_command(folder, f"run-{sig}.log"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.exists() and len(list(progress.iterdir())) >= before + min_blocks:
                proc.send_signal(sig)
                break
            time.sleep(0.02)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, "the run finished before it could be interrupted"
    return proc.returncode, err.decode()


def _state(folder: Path) -> dict:
    return json.loads((folder / "ds" / "dataset.xml.pipeline" / "state.json").read_text())["stages"]


def _registrations(folder: Path) -> dict:
    spim = load_spimdata(str(folder / "ds" / "dataset.xml"))
    return {v: [(t.name, t.matrix.tolist()) for t in ts] for v, ts in spim.registrations.items()}


def _points(folder: Path) -> dict:
    spim = load_spimdata(str(folder / "ds" / "dataset.xml"))
    location = container_location(spim)
    return {(ref.view, ref.label): read_interest_points(location, ref.view, ref.label).loc_xyz
            for ref in spim.interest_points}


def _fused(folder: Path) -> list[np.ndarray]:
    group = zarr.open_group(str(folder / "out" / "fused.ome.zarr"), mode="r")
    return [np.asarray(group[name][...]) for name in sorted(group.array_keys())]


def test_interrupted_run_resumes_and_equals_an_undisturbed_run(synth_dataset, tmp_path):
    reference = _workspace(synth_dataset, tmp_path / "reference")
    assert main(_command(reference, "run.log")[3:]) == 0  # the undisturbed run, in this process

    work = _workspace(synth_dataset, tmp_path / "work")
    code, err = _interrupt_during_fusion(work, signal.SIGINT, min_blocks=10)
    assert code == 130 and "interrupted" in err
    assert _state(work)["fuse"]["status"] == "started"
    code, _ = _interrupt_during_fusion(work, signal.SIGKILL, min_blocks=10)
    assert code == -signal.SIGKILL
    blocks_before_resume = len(list((work / "out" / "fused.ome.zarr" / PROGRESS_DIR).iterdir()))
    assert blocks_before_resume >= 20

    assert subprocess.run(_command(work, "resume.log"), capture_output=True, check=False).returncode == 0
    log = (work / "resume.log").read_text()
    for stage in ("detect", "match", "solve"):
        assert f"pipeline: {stage} skipped: unchanged" in log
    assert f"({blocks_before_resume} already done)" in _state(work)["fuse"]["result"]
    assert "pipeline: multiscale ran" in log

    assert _registrations(work) == _registrations(reference)
    nominal = load_spimdata(str(synth_dataset / "dataset.xml")).registrations
    assert all(len(ts) == len(nominal[v]) + 1 for v, ts in _registrations(work).items())  # one solve, not two
    points, ref_points = _points(work), _points(reference)
    assert points.keys() == ref_points.keys() and points
    for path in points:
        np.testing.assert_array_equal(points[path], ref_points[path])
    fused, ref_fused = _fused(work), _fused(reference)
    assert len(fused) == len(ref_fused) == 2
    for level, ref_level in zip(fused, ref_fused):
        np.testing.assert_array_equal(level, ref_level)
    assert ref_fused[0].max() > 0

    # and a rerun of the finished pipeline does nothing
    assert main(_command(work, "again.log")[3:]) == 0
    again = (work / "again.log").read_text()
    assert again.count("skipped: unchanged") == 5 and " ran in " not in again
