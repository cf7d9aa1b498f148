"""The scheduler: every --cluster kind computes the same result; tcp:// reaches real processes."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

from rhapso_gpu.errors import UserError
from rhapso_gpu.scheduler import open_cluster


def _work():
    x = da.arange(100_000, chunks=10_000, dtype=np.int64)
    return (x * 2).sum()


@pytest.mark.parametrize("spec", ["synchronous", "threads", "local"])
def test_local_kinds_compute_the_same_answer(spec):
    with open_cluster(spec, n_workers=2) as cluster:
        (total,) = cluster.compute(_work())
    assert total == 2 * (100_000 * 99_999 // 2)


def test_unknown_spec_is_a_user_error():
    with pytest.raises(UserError, match="--cluster 'lokal': unknown value"), open_cluster("lokal"):
        pass


def test_unreachable_scheduler_is_a_user_error():
    port = _free_port()
    with (
        pytest.raises(UserError, match=f"tcp://127.0.0.1:{port}: cannot reach"),
        open_cluster(f"tcp://127.0.0.1:{port}", connect_timeout=2),
    ):
        pass


def test_local_cuda_without_gpu_is_a_user_error():
    from rhapso_gpu.backend import gpu_available

    if gpu_available()[0]:
        pytest.skip("a GPU is present; this checks the message on GPU-less machines")
    with pytest.raises(UserError, match="local-cuda: no usable CUDA GPU"), open_cluster("local-cuda"):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tcp_scheduler(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes on 127.0.0.1."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # the workers import this file's functions by name, so they need its folder on their path
    pythonpath = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
             "--dashboard-address", ":0", "--no-show"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
        )
    ]
    time.sleep(1.0)
    for i in range(2):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                 "--nthreads", "1", "--no-dashboard", "--name", f"w{i}", "--local-directory", str(tmp_path / f"w{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
            )
        )
    try:
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _where_am_i(i):
    from distributed import get_worker

    time.sleep(0.3)
    return get_worker().name


def test_tcp_scheduler_with_two_worker_processes(tcp_scheduler):
    with open_cluster(tcp_scheduler, connect_timeout=30) as cluster:
        cluster.client.wait_for_workers(2, timeout=30)
        (total,) = cluster.compute(_work())
        names = cluster.compute(*[dask.delayed(_where_am_i)(i) for i in range(8)])
        pids = cluster.client.run(os.getpid)
    assert total == 2 * (100_000 * 99_999 // 2)
    assert set(names) == {"w0", "w1"}  # the work really ran in both worker processes
    assert os.getpid() not in pids.values() and len(set(pids.values())) == 2


@pytest.mark.parametrize("spec", ["synchronous", "threads", "local"])
def test_progress_bar_counts_tasks_and_keeps_the_result(spec):
    import io

    from rich.console import Console

    out = io.StringIO()
    tasks = [dask.delayed(lambda i: i * i, pure=True)(i) for i in range(12)]
    with open_cluster(spec, n_workers=2, progress=True) as cluster:
        cluster.console = Console(file=out, force_terminal=True, width=120)
        with cluster.stage("squares"):
            squares = cluster.compute(*tasks)
        (total,) = cluster.compute(_work())
        assert cluster.label == "compute"  # the stage label is restored
    assert list(squares) == [i * i for i in range(12)]
    assert total == 2 * (100_000 * 99_999 // 2)
    text = out.getvalue()
    assert "squares" in text and "12/12" in text


def test_progress_is_off_without_a_terminal(capsys):
    with open_cluster("threads", n_workers=2) as cluster:
        assert cluster.show_progress() is False  # pytest captures stderr: not a terminal
        (total,) = cluster.compute(_work())
    assert total == 2 * (100_000 * 99_999 // 2)
    assert "━" not in capsys.readouterr().err  # no bar drawn
