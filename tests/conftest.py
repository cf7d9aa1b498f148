"""Shared fixtures."""

from dataclasses import dataclass

import pytest

from rhapso_gpu.backend import get_backend, gpu_available

_GPU_OK, _GPU_REASON = gpu_available()

BACKEND_PARAMS = [
    "numpy",
    pytest.param(
        "cupy",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not _GPU_OK, reason=f"no CuPy backend here: {_GPU_REASON}")],
    ),
]
"""Backend names to parametrize over; the cupy case skips, with the reason, where no GPU is usable."""


@pytest.fixture(params=BACKEND_PARAMS)
def backend(request):
    """Each array backend in turn (the CuPy one only where ``cupy.is_available()``)."""
    return get_backend(request.param)


@dataclass(frozen=True)
class S3Server:
    """A local S3 endpoint with one bucket, and the fsspec options that reach it."""

    endpoint: str
    bucket: str
    storage_options: dict

    def url(self, key: str) -> str:
        """``s3://<bucket>/<key>``."""
        return f"s3://{self.bucket}/{key}"


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on 127.0.0.1 (free port) with an empty bucket ``rhapso-test``.

    Dummy credentials are set in the environment for the fixture's lifetime, and
    nothing but 127.0.0.1 is contacted.
    """
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "RHAPSO_S3_ANON"):
            env.delenv(name, raising=False)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            _, port = server.get_host_and_port()
            endpoint = f"http://127.0.0.1:{port}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="rhapso-test")
            options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}
            yield S3Server(endpoint, "rhapso-test", options)
        finally:
            server.stop()
