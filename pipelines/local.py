"""Run a pipeline file on a dask cluster on this machine.

Usage (from the repository root)::

    python -m pipelines.local PIPELINE.yml --workers 4 --memory-limit 4GB [--threads-per-worker 1]

A ``dask_cuda.LocalCUDACluster`` (one worker per GPU) where a CUDA GPU is
usable (:func:`rhapso_gpu.backend.gpu_available`), else a ``LocalCluster`` of
``--workers`` processes, each limited to ``--memory-limit``. Stages that are
unchanged since the last run are skipped, an interrupted one resumes
(:func:`rhapso_gpu.pipeline.run_pipeline`).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console

from pipelines._run import entry_point, load_plan, run_plan
from rhapso_gpu.backend import gpu_available
from rhapso_gpu.scheduler import open_cluster, validate_compute_options


def cluster_spec() -> str:
    """``local-cuda`` where a CUDA GPU is usable, else ``local``."""
    return "local-cuda" if gpu_available()[0] else "local"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.local",
        description="Run a pipeline file on a local dask cluster: LocalCUDACluster (one worker per GPU) where a "
        "GPU is usable, else LocalCluster worker processes.",
    )
    p.add_argument("pipeline", help="pipeline YAML (see params/pipeline-*.yml)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes without GPUs (default: cores); with GPUs one per GPU")
    p.add_argument("--memory-limit", default=None, metavar="SIZE", help="memory per worker, e.g. 4GB")
    p.add_argument("--threads-per-worker", type=int, default=1, metavar="K", help="threads per worker (default 1)")
    p.add_argument("--backend", choices=("auto", "numpy", "cupy"), default="auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no tables or progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors")
    return p


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (2 for user errors, 130 when interrupted)."""
    args = build_parser().parse_args(argv)

    def body(console: Console) -> None:
        validate_compute_options(args.workers, args.threads_per_worker, args.memory_limit)  # before reading files
        pipeline = load_plan(args.pipeline)
        with open_cluster(cluster_spec(), n_workers=args.workers, threads_per_worker=args.threads_per_worker,
                          memory_limit=args.memory_limit, progress=False if args.quiet else None) as cluster:
            run_plan(pipeline, cluster, args.backend, console, args.quiet)

    return entry_point("pipelines.local", args, body, "interrupted; rerun to resume")


if __name__ == "__main__":
    sys.exit(main())
