"""A worker process killed (SIGKILL) in the middle of detection or fusion: the run completes, outputs are identical.

A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1 (the
``tcp_scheduler`` fixture of test_scheduler.py). A watcher thread waits until
part of the work is done and a worker is busy (the scheduler's processing
table), then kills that worker's process; the results are compared with an
undisturbed run in this process.
"""

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from test_scheduler import tcp_scheduler  # noqa: F401  (the fixture)

from rhapso_gpu.cli import main
from rhapso_gpu.detection import DetectParams, detect_interest_points
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.io.ome_zarr import PROGRESS_DIR, container_attributes, done_keys
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.scheduler import open_cluster


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("faults")
    args = ["synth", str(out), "--tiles", "2x2x1", "--tile-size", "96x96x32", "--seed", "4"]
    assert main([*args, "--cluster", "synchronous", "--backend", "numpy", "-q"]) == 0
    return str(out / "dataset.xml")


class WorkerKiller:
    """Kill the process of a worker that has tasks in flight, once ``ready()`` says enough work is done."""

    def __init__(self, client, ready, timeout: float = 120.0):
        self.client = client
        self.ready = ready
        self.pids = client.run(os.getpid)  # worker address -> pid of its process
        self.killed: str | None = None
        self.timeout = timeout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self):
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.ready():
                busy = sorted(w for w, keys in self.client.processing().items() if keys and w in self.pids)
                if busy:
                    os.kill(self.pids[busy[0]], signal.SIGKILL)
                    self.killed = busy[0]
                    return
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_worker_killed_during_fusion(dataset, tcp_scheduler, tmp_path):  # noqa: F811
    spim = load_spimdata(dataset)
    params = FuseParams(chunk_size=(16, 16, 16), block_scale=(1, 1, 1), data_type="uint16")
    with open_cluster("synchronous") as local:
        reference = fuse_dataset(spim, str(tmp_path / "reference.zarr"), params, local, "numpy")
    n_blocks = reference.n_blocks
    out = tmp_path / "disturbed.zarr"
    state = {}

    def ready():  # a fifth of the blocks written, and more to go
        done = len(done_keys(str(out))) if (out / PROGRESS_DIR).exists() else 0
        state["done_at_kill"] = done
        return done >= n_blocks // 5

    with open_cluster(tcp_scheduler, connect_timeout=30) as cluster:
        cluster.client.wait_for_workers(2, timeout=30)
        with WorkerKiller(cluster.client, ready) as killer:
            result = fuse_dataset(spim, str(out), params, cluster, "numpy")
    assert killer.killed is not None, "no worker was killed: the run ended before the watcher fired"
    assert 0 < state["done_at_kill"] < n_blocks  # killed in the middle
    assert result.n_blocks == n_blocks and result.n_skipped == 0
    assert container_attributes(str(out))["complete"] is True
    expected = zarr.open_array(str(tmp_path / "reference.zarr" / "0"), mode="r")[...]
    got = zarr.open_array(str(out / "0"), mode="r")[...]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    assert _chunk_files(out / "0") == _chunk_files(tmp_path / "reference.zarr" / "0")


def _chunk_files(array_dir: Path) -> dict[str, bytes]:
    """Every stored chunk of a zarr v2 array, by key (the encoded bytes)."""
    return {
        str(p.relative_to(array_dir)): p.read_bytes()
        for p in array_dir.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def test_worker_killed_during_detection(dataset, tcp_scheduler):  # noqa: F811
    spim = load_spimdata(dataset)
    params = DetectParams(block_size=(16, 16, 16), threshold=0.02)
    with open_cluster("synchronous") as local:
        reference = detect_interest_points(spim, params, local, "numpy")
    progress = {"done": 0, "total": 1}

    def report(done, total):
        progress.update(done=done, total=total)

    def ready():
        return 0 < progress["done"] < progress["total"]

    with open_cluster(tcp_scheduler, connect_timeout=30) as cluster:
        cluster.client.wait_for_workers(2, timeout=30)
        with WorkerKiller(cluster.client, ready) as killer:
            result = detect_interest_points(spim, params, cluster, "numpy", progress=report)
    assert killer.killed is not None, "no worker was killed: the run ended before the watcher fired"
    assert progress["done"] == progress["total"] > 8  # several batches, the kill came after the first
    assert sorted(result.views) == sorted(reference.views)
    assert (result.min_intensity, result.max_intensity) == (reference.min_intensity, reference.max_intensity)
    total = 0
    for view, ref in reference.views.items():
        got = result.views[view]
        total += len(ref.loc_xyz)
        np.testing.assert_array_equal(got.loc_xyz, ref.loc_xyz)
        np.testing.assert_array_equal(got.intensity, ref.intensity)
        np.testing.assert_array_equal(got.value, ref.value)
        assert got.threshold == ref.threshold
    assert total > 50  # a real result, not two empty ones
