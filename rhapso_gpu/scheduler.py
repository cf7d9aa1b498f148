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

Options
-------
``--workers``, ``--threads-per-worker`` and ``--memory-limit`` are checked by
:func:`validate_compute_options` (which :func:`open_cluster` calls), so a bad
value is the same one-line error in every command.

Progress
--------
:meth:`Cluster.compute` shows a progress bar with an ETA on stderr, labelled
by :meth:`Cluster.stage`, when stderr is a terminal and the ``rhapso_gpu``
logger is not quieter than INFO (``--quiet``); ``Cluster.progress`` forces it
on or off.
"""

from __future__ import annotations

import logging
import numbers
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
from dask.callbacks import Callback
from dask.utils import parse_bytes
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

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
    progress : bool or None
        Progress bars on stderr: None (default) shows them when stderr is a
        terminal and the ``rhapso_gpu`` logger shows INFO messages.
    label : str
        What the bars are labelled with; set it with :meth:`stage`.
    console : rich.console.Console or None
        Where the bars go (default: stderr).
    """

    spec: str
    client: Any = None
    n_workers: int = 1
    progress: bool | None = None
    label: str = "compute"
    console: Any = field(default=None, repr=False)

    @property
    def description(self) -> str:
        """One line for logs: the kind of cluster, its address and its size."""
        if self.client is None:
            return f"{self.spec} ({self.n_workers} thread{'s' if self.n_workers != 1 else ''})"
        return f"{self.spec} at {self.client.scheduler.address} ({self.n_workers} workers)"

    @contextmanager
    def stage(self, label: str) -> Iterator[Cluster]:
        """Label the progress bars of the computes inside the block (e.g. ``with cluster.stage("fuse"):``)."""
        previous, self.label = self.label, label
        try:
            yield self
        finally:
            self.label = previous

    def show_progress(self) -> bool:
        """True when :meth:`compute` draws progress bars (see ``progress``)."""
        if self.progress is not None:
            return self.progress
        return sys.stderr.isatty() and log.getEffectiveLevel() <= logging.INFO

    def compute(self, *collections, **kwargs):
        """Compute dask collections here; same contract as :func:`dask.compute`.

        With :meth:`show_progress`, a bar counts the finished tasks (local
        schedulers) or the finished output keys (distributed) with an ETA.
        """
        if not (collections and self.show_progress() and all(dask.is_dask_collection(c) for c in collections)):
            return self._compute(collections, kwargs)
        console = self.console or Console(stderr=True, force_terminal=self.progress or None)
        with _progress_bar(self.label, console) as (bar, task):
            if self.client is None:
                with _TaskCounter(bar, task):
                    return self._compute(collections, kwargs)
            return self._compute_distributed(collections, kwargs, bar, task)

    def _compute(self, collections, kwargs):
        if self.client is not None:
            return dask.compute(*collections, scheduler=self.client, **kwargs)
        if self.spec == "synchronous":
            return dask.compute(*collections, scheduler="synchronous", **kwargs)
        return dask.compute(*collections, scheduler="threads", num_workers=self.n_workers, **kwargs)

    def _compute_distributed(self, collections, kwargs, bar, task):
        # persist first, so the bar can follow the output keys' futures, then gather from the persisted ones
        from distributed import as_completed, futures_of

        persisted = self.client.persist(list(collections), optimize_graph=kwargs.get("optimize_graph", True))
        futures = futures_of(persisted)
        bar.update(task, total=len(futures))
        for _ in as_completed(futures, loop=self.client.loop):
            bar.advance(task)
        return dask.compute(*persisted, scheduler=self.client, **kwargs)


@contextmanager
def _progress_bar(label: str, console: Console):
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("tasks"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        yield bar, bar.add_task(label, total=None)


class _TaskCounter(Callback):
    """A dask local-scheduler callback that advances a rich progress task per finished task."""

    def __init__(self, bar: Progress, task) -> None:
        super().__init__()
        self._bar, self._task = bar, task

    def _start_state(self, dsk, state) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar.update(self._task, total=total, completed=len(state["finished"]))

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        self._bar.advance(self._task)


def validate_compute_options(
    n_workers: int | None = None, threads_per_worker: int = 1, memory_limit: str | None = None
) -> None:
    """Check ``--workers``, ``--threads-per-worker`` and ``--memory-limit`` (None means the default).

    Raises
    ------
    UserError
        For a count below 1 (``--workers 0`` does not mean "all cores": leave
        it out for that) or a memory limit that is not a size like ``4GB``
        (or ``auto``).
    """
    if n_workers is not None and not _is_count(n_workers):
        raise UserError(f"--workers: {n_workers!r} is not a number of workers (expected 1 or more; "
                        "leave it out for one per core)")
    if not _is_count(threads_per_worker):
        raise UserError(f"--threads-per-worker: {threads_per_worker!r} is not a number of threads (expected 1 or more)")
    if memory_limit is not None and str(memory_limit).strip() != "auto" and not _is_size(memory_limit):
        raise UserError(f"--memory-limit: {str(memory_limit)!r} is not a size like 4GB")


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _is_size(text) -> bool:
    text = str(text).strip()
    if not any(c.isdigit() for c in text):  # parse_bytes("") is 1 byte
        return False
    try:
        return parse_bytes(text) >= 1
    except (ValueError, TypeError):
        return False


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


@contextmanager
def open_cluster(
    spec: str = "local",
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = None,
    connect_timeout: float = 10.0,
    progress: bool | None = None,
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
    progress : bool, optional
        Force progress bars on or off (default: on a terminal, see :class:`Cluster`).

    Raises
    ------
    UserError
        For an unknown spec, bad options (:func:`validate_compute_options`),
        an unreachable scheduler or one without workers, or ``local-cuda``
        without GPUs.
    """
    spec = str(spec).strip()
    validate_compute_options(n_workers, threads_per_worker, memory_limit)
    if spec in ("synchronous", "threads"):
        n = 1 if spec == "synchronous" else (n_workers or _default_workers())
        yield from _opened(Cluster(spec=spec, n_workers=n, progress=progress))
    elif spec == "local":
        yield from _local_cluster(n_workers, threads_per_worker, memory_limit, progress)
    elif spec == "local-cuda":
        yield from _local_cuda_cluster(memory_limit, progress)
    elif spec.startswith(("tcp://", "tls://")):
        yield from _remote_cluster(spec, connect_timeout, progress)
    else:
        raise UserError(f"--cluster '{spec}': unknown value (expected one of {', '.join(CLUSTER_CHOICES)})")


def _opened(cluster: Cluster):
    log.info("cluster: %s", cluster.description)
    yield cluster


def _local_cluster(n_workers, threads_per_worker, memory_limit, progress):
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
    # distributed sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which turns off glibc's adaptive mmap
    # threshold: every large temporary array is then mapped and page-faulted anew (about 60 000 faults and
    # +50% CPU per 256x256x64 detection block). Without it, workers allocate as this process does.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        lc = LocalCluster(**kwargs)
    with lc, Client(lc, set_as_default=False) as client:
        yield from _opened(Cluster(spec="local", client=client, n_workers=n, progress=progress))


def _local_cuda_cluster(memory_limit, progress):
    from rhapso_gpu.backend import gpu_available

    ok, reason = gpu_available()
    if not ok:
        raise UserError(f"--cluster local-cuda: no usable CUDA GPU ({reason}); use --cluster local")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise UserError("--cluster local-cuda: dask-cuda is not installed (from the repository: "
                        "scripts/setup.sh gpu, or pip install -e '.[gpu]')") from None
    from distributed import Client

    kwargs: dict[str, Any] = {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"}
    if memory_limit:
        kwargs["memory_limit"] = memory_limit
    with LocalCUDACluster(**kwargs) as lc, Client(lc, set_as_default=False) as client:
        n = len(client.scheduler_info()["workers"])
        yield from _opened(Cluster(spec="local-cuda", client=client, n_workers=n, progress=progress))


def _remote_cluster(address: str, timeout: float, progress: bool | None):
    from distributed import Client

    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise UserError(f"--cluster {address}: cannot reach the dask scheduler ({type(e).__name__})") from None
    try:
        n = len(client.scheduler_info()["workers"])
        if n == 0:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:  # distributed's WorkerStartTimeoutError
                raise UserError(
                    f"--cluster {address}: the dask scheduler at that address has no workers (none joined within "
                    f"{timeout:g} s); start one on each machine with 'dask worker {address}' "
                    f"('dask cuda worker {address}' on GPU machines)"
                ) from None
            n = len(client.scheduler_info()["workers"])
        yield from _opened(Cluster(spec=address, client=client, n_workers=n, progress=progress))
    finally:
        client.close()
