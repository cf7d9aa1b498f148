"""``python -m pipelines.local``: a pipeline file on a LocalCluster of two worker processes, end to end."""

import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from pipelines import local
from rhapso_gpu.backend import gpu_available
from rhapso_gpu.cli import main as rhapso
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.io.ome_zarr import container_attributes
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.scheduler import open_cluster

ROOT = Path(__file__).parents[1]
FUSE = {"data_type": "uint16", "chunk_size": [32, 32, 32], "block_scale": [1, 1, 1]}
PIPELINE = f"""
xml: data/dataset.xml
stages:
  - stage: align
  - stage: qc
    params: {{truth: data/ground_truth.json, max_rms: 0.3}}
    output: qc.json
  - stage: fuse
    output: fused.ome.zarr
    params: {FUSE}
"""


def test_cluster_kind_follows_the_gpu():
    assert local.cluster_spec() == ("local-cuda" if gpu_available()[0] else "local")


def test_pipeline_on_two_worker_processes(tmp_path, capsys):
    args = ["synth", str(tmp_path / "data"), "--tiles", "2x2x1", "--tile-size", "128x128x48", "--seed", "0"]
    assert rhapso([*args, "--cluster", "synchronous", "--backend", "numpy", "-q"]) == 0
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE)
    capsys.readouterr()

    assert local.main([str(pipeline), "--workers", "2", "--memory-limit", "2GB", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    if not gpu_available()[0]:
        assert "on local at tcp://127.0.0.1:" in out and "(2 workers)" in out
    assert out.count("│ ran ") == 3  # align, qc and fuse ran (the summary table)

    # qc passed its max_rms against the ground truth; the fused volume equals a fusion of the same XML here
    qc = (tmp_path / "data" / "qc.json").read_text()
    assert '"rms"' in qc
    fused = tmp_path / "data" / "fused.ome.zarr"
    assert container_attributes(str(fused))["complete"] is True
    with open_cluster("synchronous") as here:
        fuse_dataset(load_spimdata(str(tmp_path / "data" / "dataset.xml")), str(tmp_path / "ref.zarr"),
                     FuseParams(**FUSE), here, "numpy")
    expected = zarr.open_array(str(tmp_path / "ref.zarr" / "0"), mode="r")[...]
    assert zarr.open_array(str(fused / "0"), mode="r")[...].tobytes() == expected.tobytes()

    # a rerun skips every stage
    assert local.main([str(pipeline), "--workers", "2", "--backend", "numpy"]) == 0
    assert capsys.readouterr().out.count("│ skipped") == 3


@pytest.mark.parametrize(
    "option,message",
    [
        (["--memory-limit", "4XB"], "--memory-limit: '4XB' is not a size like 4GB"),
        (["--workers", "0"],
         "--workers: 0 is not a number of workers (expected 1 or more; leave it out for one per core)"),
        (["--threads-per-worker", "0"], "--threads-per-worker: 0 is not a number of threads (expected 1 or more)"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, option, message):
    # the same check as every rhapso-gpu command (rhapso_gpu.scheduler.validate_compute_options), before any file
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text(PIPELINE)
    proc = subprocess.run([sys.executable, "-m", "pipelines.local", str(pipeline), *option],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pipelines.local: error: {message}"


def test_unknown_pipeline_key_is_a_one_line_error(tmp_path, capsys):
    pipeline = tmp_path / "pipeline.yml"
    pipeline.write_text("xml: data/dataset.xml\nstagez: []\n")
    assert local.main([str(pipeline)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipelines.local: error: ") and "stagez" in err and "\n" not in err
