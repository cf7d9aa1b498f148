"""Kill a real fusion process part way, rerun it: finished blocks are skipped and the result is identical."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from rhapso_gpu.cli import main
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.ome_zarr import PROGRESS_DIR
from rhapso_gpu.io.spimdata import ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata

ROOT = Path(__file__).parents[1]
FUSE = ["--chunk-size", "16x16x16", "--block-scale", "1x1x1", "--data-type", "uint16", "--backend", "numpy"]


def test_killed_fusion_resumes_to_the_same_result(tmp_path, capsys):
    assert (
        main(
            [
                "synth",
                str(tmp_path),
                "--tiles",
                "2x2x1",
                "--tile-size",
                "96x96x32",
                "--seed",
                "4",
                "--cluster",
                "synchronous",
                "--backend",
                "numpy",
                "-q",
            ]
        )
        == 0
    )
    spim = load_spimdata(str(tmp_path / "dataset.xml"))
    truth = load_ground_truth(str(tmp_path / "ground_truth.json"))
    for view in spim.registrations:
        spim.registrations[view] = [ViewTransform.from_matrix("truth", truth.true_affines[view])]
    xml = str(tmp_path / "true.xml")
    save_spimdata(spim, xml)

    out = tmp_path / "fused.zarr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhapso_gpu", "fuse", xml, str(out), *FUSE, "--cluster", "synchronous", "-q"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    progress = out / PROGRESS_DIR
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if progress.is_dir() and len(os.listdir(progress)) >= 40:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"fusion ended before it could be killed: {proc.stderr.read().decode()}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    done_before = len([n for n in os.listdir(progress) if not n.endswith(".tmp")])
    assert zarr.open_group(str(out), mode="r").attrs["rhapso-gpu"]["complete"] is False

    capsys.readouterr()
    assert main(["fuse", xml, str(out), *FUSE, "--cluster", "synchronous"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    n_blocks = int(printed.split(" blocks (")[0].rsplit(" ", 1)[-1])
    skipped = int(printed.split(" blocks (")[1].split(" already done")[0])
    assert skipped == done_before and 40 <= skipped < n_blocks
    assert not progress.exists() and zarr.open_group(str(out), mode="r").attrs["rhapso-gpu"]["complete"] is True

    reference = tmp_path / "reference.zarr"
    assert main(["fuse", xml, str(reference), *FUSE, "--cluster", "threads", "--workers", "2", "-q"]) == 0
    resumed = zarr.open_array(str(out / "0"), mode="r")[...]
    uninterrupted = zarr.open_array(str(reference / "0"), mode="r")[...]
    assert resumed.max() > 0
    np.testing.assert_array_equal(resumed, uninterrupted)
