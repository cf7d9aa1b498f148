"""The one place that decides where dask work runs.

Every stage hands its dask collections to :meth:`Cluster.compute`, so moving
from a laptop to a GPU box or to a cluster on AWS is a ``--cluster`` flag, not
a code change.

``--cluster`` values
--------------------
``synchronous``
    Everything in the calling thread (for debugging with pdb).
``threads``
    dask's thread pool in this process.
``local`` (default)
    A ``distributed.LocalCluster`` of worker processes on 127.0.0.1.
``local-cuda``
    A ``dask_cuda.LocalCUDACluster``: one worker per visible GPU.
``tcp://host:port``
    An existing scheduler, e.g. on AWS, with ``dask cuda worker`` processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dask

from rhapso_gpu.errors import UserError

log = logging.getLogger("rhapso_gpu")

CLUSTER_CHOICES = ("synchronous", "threads", "local", "local-cuda", "tcp://HOST:PORT")


@dataclass
class Cluster:
    """A place to run dask work.

    Attributes
    ----------
    spec : str
        The ``--cluster`` value it was opened with.
    client : distributed.Client or None
        None for ``synchronous`` and ``threads``.
    n_workers : int
        Worker processes (or threads) available.
    """

    spec: str
    client: Any = None
    n_workers: int = 1

    @property
    def description(self) -> str:
        """One line for logs: the kind of cluster, its address and its size."""
        if self.client is None:
            return f"{self.spec} ({self.n_workers} thread{'s' if self.n_workers != 1 else ''})"
        return f"{self.spec} at {self.client.scheduler.address} ({self.n_workers} workers)"

    def compute(self, *collections, **kwargs):
        """Compute dask collections here; same contract as :func:`dask.compute`."""
        if self.client is not None:
            return dask.compute(*collections, scheduler=self.client, **kwargs)
        if self.spec == "synchronous":
            return dask.compute(*collections, scheduler="synchronous", **kwargs)
        return dask.compute(*collections, scheduler="threads", num_workers=self.n_workers, **kwargs)


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextmanager
def open_cluster(
    spec: str = "local",
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = None,
    connect_timeout: float = 10.0,
) -> Iterator[Cluster]:
    """Open the cluster named by ``spec`` and close what was started on exit.

    Parameters
    ----------
    spec : str
        One of ``synchronous``, ``threads``, ``local``, ``local-cuda`` or
        ``tcp://host:port``.
    n_workers : int, optional
        Worker processes (``local``) or threads (``threads``); defaults to the
        number of usable cores. Ignored for ``tcp://`` and ``local-cuda``.
    threads_per_worker : int
        Threads per worker process (``local``).
    memory_limit : str, optional
        Per-worker memory limit for ``local``, e.g. ``"4GB"``.
    connect_timeout : float
        Seconds to wait for a ``tcp://`` scheduler.

    Raises
    ------
    UserError
        For an unknown spec, an unreachable scheduler or ``local-cuda``
        without GPUs.
    """
    spec = str(spec).strip()
    if spec in ("synchronous", "threads"):
        n = 1 if spec == "synchronous" else (n_workers or _default_workers())
        cluster = Cluster(spec=spec, n_workers=n)
        log.info("cluster: %s", cluster.description)
        yield cluster
        return
    if spec == "local":
        yield from _local_cluster(n_workers, threads_per_worker, memory_limit)
        return
    if spec == "local-cuda":
        yield from _local_cuda_cluster(memory_limit)
        return
    if spec.startswith(("tcp://", "tls://")):
        yield from _remote_cluster(spec, connect_timeout)
        return
    raise UserError(f"--cluster '{spec}': unknown value (expected one of {', '.join(CLUSTER_CHOICES)})")


def _local_cluster(n_workers, threads_per_worker, memory_limit):
    from distributed import Client, LocalCluster

    n = n_workers or _default_workers()
    kwargs: dict[str, Any] = {
        "n_workers": n,
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
    }
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    with LocalCluster(**kwargs) as lc, Client(lc, set_as_default=False) as client:
        cluster = Cluster(spec="local", client=client, n_workers=n)
        log.info("cluster: %s", cluster.description)
        yield cluster


def _local_cuda_cluster(memory_limit):
    from rhapso_gpu.backend import gpu_available

    ok, reason = gpu_available()
    if not ok:
        raise UserError(f"--cluster local-cuda: no usable CUDA GPU ({reason}); use --cluster local")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise UserError("--cluster local-cuda: dask-cuda is not installed (pip install 'rhapso-gpu[gpu]')") from None
    from distributed import Client

    kwargs: dict[str, Any] = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    with LocalCUDACluster(**kwargs) as lc, Client(lc, set_as_default=False) as client:
        n = len(client.scheduler_info()["workers"])
        cluster = Cluster(spec="local-cuda", client=client, n_workers=n)
        log.info("cluster: %s", cluster.description)
        yield cluster


def _remote_cluster(address: str, timeout: float):
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise UserError(f"--cluster {address}: cannot reach the dask scheduler ({type(e).__name__})") from None
    try:
        n = len(client.scheduler_info()["workers"])
        if n == 0:
            client.wait_for_workers(1, timeout=timeout)
            n = len(client.scheduler_info()["workers"])
        cluster = Cluster(spec=address, client=client, n_workers=n)
        log.info("cluster: %s", cluster.description)
        yield cluster
    finally:
        client.close()
