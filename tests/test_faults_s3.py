"""S3 outages: the S3 server (moto, 127.0.0.1) stops in the middle of a fusion that reads from and writes to s3://.

A short outage is ridden out by retries and the result equals a local fusion; a
long one ends the command with a one-line error, the output is not marked
complete, and a rerun resumes it to the same result. Never a half-written
output reported as done.
"""

import logging
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import s3fs
import zarr

from rhapso_gpu.cli import main
from rhapso_gpu.io.ome_zarr import ATTRIBUTE, PROGRESS_DIR

ROOT = Path(__file__).parents[1]
BUCKET = "rhapso-faults"
OUTAGE = 3.0
"""Seconds of a short outage, which the retries of storage reads and writes ride out."""
FUSE = ["--chunk-size", "16x16x16", "--block-scale", "2x2x1", "--data-type", "uint16", "--backend", "numpy"]


class RestartableS3:
    """A moto S3 server on a fixed 127.0.0.1 port that can be stopped and started again (its data persists)."""

    def __init__(self):
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._factory = lambda: ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server = None

    def start(self):
        self._server = self._factory()
        self._server.start()

    def stop(self):
        if self._server is not None:
            self._server.stop()
            self._server = None


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """The restartable server with a bucket holding a synthetic dataset (uploaded), and the local copy."""
    import boto3

    local = tmp_path_factory.mktemp("s3-faults")
    args = ["synth", str(local / "data"), "--tiles", "2x2x1", "--tile-size", "64x64x32", "--seed", "4"]
    assert main([*args, "--cluster", "synchronous", "--backend", "numpy", "-q"]) == 0
    server = RestartableS3()
    s3fs.S3FileSystem.clear_instance_cache()  # cached file systems keep the endpoint they were made with
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "RHAPSO_S3_ANON"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_ENDPOINT_URL", server.endpoint)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        server.start()
        try:
            boto3.client("s3", endpoint_url=server.endpoint).create_bucket(Bucket=BUCKET)
            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint})
            fs.put(str(local / "data"), f"{BUCKET}/data", recursive=True)
            assert main(["fuse", str(local / "data" / "dataset.xml"), str(local / "reference.zarr"), *FUSE,
                         "--cluster", "synchronous", "-q"]) == 0
            yield server, local
        finally:
            server.stop()
            s3fs.S3FileSystem.clear_instance_cache()


def _fuse(xml: str, out_url: str, **env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rhapso_gpu", "fuse", xml, out_url, *FUSE, "--cluster", "threads", "--workers", "2",
         "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **env},
    )


def _fs(server) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": server.endpoint}, skip_instance_cache=True)


def _wait_for_blocks(server, key: str, n: int, proc, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        fs = _fs(server)
        try:
            done = len(fs.ls(f"{BUCKET}/{key}/{PROGRESS_DIR}", refresh=True))
        except FileNotFoundError:
            done = 0
        if done >= n:
            return done
        time.sleep(0.05)
    raise AssertionError(f"fusion wrote fewer than {n} blocks before it ended (exit {proc.poll()})")


def _attributes(server, key: str) -> dict:
    group = zarr.open_group(
        zarr.storage.FsspecStore.from_url(f"s3://{BUCKET}/{key}", storage_options={
            "client_kwargs": {"endpoint_url": server.endpoint}}, read_only=True), mode="r")
    return dict(group.attrs[ATTRIBUTE])


def _fused(server, key: str) -> np.ndarray:
    store = zarr.storage.FsspecStore.from_url(
        f"s3://{BUCKET}/{key}/0", storage_options={"client_kwargs": {"endpoint_url": server.endpoint}}, read_only=True
    )
    return zarr.open_array(store, mode="r")[...]


def _check_same_as_local(server, local, key):
    assert _attributes(server, key)["complete"] is True
    expected = zarr.open_array(str(local / "reference.zarr" / "0"), mode="r")[...]
    assert _fused(server, key).tobytes() == expected.tobytes()


def test_short_s3_outage_is_ridden_out(s3):
    server, local = s3
    key = "fused-short.zarr"
    proc = _fuse(f"s3://{BUCKET}/data/dataset.xml", f"s3://{BUCKET}/{key}")
    try:
        _wait_for_blocks(server, key, 6, proc)
        server.stop()
        assert proc.poll() is None  # the outage starts while the fusion runs
        time.sleep(OUTAGE)
        server.start()
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    _check_same_as_local(server, local, key)


@pytest.mark.parametrize("source", ["s3", "local"])
def test_long_s3_outage_fails_in_one_line_and_resumes(s3, source, capsys):
    """With S3 input the first failure is a read or a write; with local input it is a write of the output."""
    server, local = s3
    key = f"fused-long-{source}.zarr"
    xml = f"s3://{BUCKET}/data/dataset.xml" if source == "s3" else str(local / "data" / "dataset.xml")
    proc = _fuse(xml, f"s3://{BUCKET}/{key}", RHAPSO_S3_MAX_ATTEMPTS="2")  # give up after one retry
    try:
        _wait_for_blocks(server, key, 6, proc)
        server.stop()
        assert proc.poll() is None  # the outage starts while the fusion runs
        try:
            _, stderr = proc.communicate(timeout=300)  # the server stays down until the command gives up
        finally:
            server.start()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"rhapso-gpu fuse: error: s3://{BUCKET}/"), stderr
    assert _attributes(server, key)["complete"] is False  # not reported as done
    capsys.readouterr()
    args = ["fuse", xml, f"s3://{BUCKET}/{key}", *FUSE, "--cluster", "threads"]  # not -q: the result line is read
    assert main(args) == 0
    resumed = re.search(r"\((\d+) already done\)", capsys.readouterr().out)
    assert resumed and int(resumed.group(1)) >= 6  # the rerun skipped the blocks written before the outage
    _check_same_as_local(server, local, key)


def test_unreachable_xml_is_a_one_line_error(s3):
    server, _ = s3
    server.stop()
    try:
        proc = subprocess.run([sys.executable, "-m", "rhapso_gpu", "info", f"s3://{BUCKET}/data/dataset.xml"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "RHAPSO_S3_MAX_ATTEMPTS": "2"})
    finally:
        server.start()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"rhapso-gpu info: error: s3://{BUCKET}/data/dataset.xml: cannot read the ")
    assert "EndpointConnectionError" in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
