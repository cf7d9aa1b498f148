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

from rhapso_gpu.cli import main
from rhapso_gpu.errors import UserError
from rhapso_gpu.scheduler import open_cluster, validate_compute_options


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


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"memory_limit": "lots"}, "--memory-limit: 'lots' is not a size like 4GB"),
        ({"memory_limit": ""}, "--memory-limit: '' is not a size like 4GB"),
        ({"memory_limit": "-4GB"}, "--memory-limit: '-4GB' is not a size like 4GB"),
        ({"n_workers": 0}, "--workers: 0 is not a number of workers"),
        ({"n_workers": -3}, "--workers: -3 is not a number of workers"),
        ({"threads_per_worker": 0}, "--threads-per-worker: 0 is not a number of threads"),
    ],
)
@pytest.mark.parametrize("spec", ["synchronous", "threads", "local", "tcp://127.0.0.1:1"])
def test_bad_compute_options_are_user_errors_for_every_cluster_kind(spec, kwargs, message):
    # checked before anything starts or connects (tcp://127.0.0.1:1 is never dialled)
    with pytest.raises(UserError, match=f"^{message}"), open_cluster(spec, connect_timeout=1, **kwargs):
        pass


@pytest.mark.parametrize("limit", ["4GB", "512 MiB", "1e9", "auto"])
def test_good_memory_limits_pass(limit):
    validate_compute_options(2, 1, limit)
    validate_compute_options(None, 1, None)


NOT_WORKERS = "is not a number of workers (expected 1 or more; leave it out for one per core)"


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"rhapso-gpu {command}: error: ")
    return err.strip().removeprefix(f"rhapso-gpu {command}: error: ")


@pytest.mark.parametrize(
    "options,message",
    [
        (["--memory-limit", "lots"], "--memory-limit: 'lots' is not a size like 4GB"),
        (["--workers", "-3", "--cluster", "threads"], f"--workers: -3 {NOT_WORKERS}"),
        (["--workers", "0"], f"--workers: 0 {NOT_WORKERS}"),
        (["--workers", "0", "--cluster", "synchronous"], f"--workers: 0 {NOT_WORKERS}"),
    ],
)
def test_bad_compute_options_on_the_command_line(tmp_path, capsys, options, message):
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--tiles", "1x1x1", "--tile-size", "32x32x16", "-q", *options]) == 2
    assert _one_line_error(capsys, "synth") == message
    assert not out.exists()  # nothing was written


@pytest.fixture(scope="module")
def scheduler_without_workers(tmp_path_factory):
    """A real `dask scheduler` on 127.0.0.1 that no worker joins."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
         "--dashboard-address", "127.0.0.1:0", "--no-show"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path_factory.mktemp("scheduler"),
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the dask scheduler did not start") from None
                time.sleep(0.1)
        yield f"tcp://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_scheduler_without_workers_is_a_user_error(scheduler_without_workers):
    address = scheduler_without_workers
    with pytest.raises(UserError) as info, open_cluster(address, connect_timeout=1):
        pass
    assert str(info.value) == (
        f"--cluster {address}: the dask scheduler at that address has no workers (none joined within 1 s); "
        f"start one on each machine with 'dask worker {address}' ('dask cuda worker {address}' on GPU machines)")


def test_scheduler_without_workers_on_the_command_line(tmp_path, capsys, scheduler_without_workers):
    # the command line waits its default 10 s for a worker
    address = scheduler_without_workers
    out = tmp_path / "ds"
    assert main(["synth", str(out), "--tiles", "1x1x1", "--tile-size", "32x32x16", "-q", "--cluster", address]) == 2
    message = _one_line_error(capsys, "synth")
    assert message.startswith(f"--cluster {address}: the dask scheduler at that address has no workers")
    assert f"'dask worker {address}'" in message
