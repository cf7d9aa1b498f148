"""``rhapso-gpu run PIPELINE.yml``: run a pipeline file's stages in order, skipping unchanged ones."""

from __future__ import annotations

import argparse
import logging

from rich.console import Console
from rich.table import Table

from rhapso_gpu.backend import get_backend
from rhapso_gpu.cli._options import add_common, add_compute
from rhapso_gpu.errors import UserError
from rhapso_gpu.scheduler import open_cluster

log = logging.getLogger("rhapso_gpu")

_STYLE = {"ran": "green", "skipped": "cyan", "failed": "red", "interrupted": "red", "not run": "dim"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline file (detect, match, solve, split, fuse, multiscale, qc, align) with skip and resume",
        description="Run the stages listed in PIPELINE (YAML; templates in params/pipeline-*.yml) on its XML. "
        "Each stage records its parameters, the package version and a fingerprint of its inputs in "
        "<xml>.pipeline/; a rerun skips the stages whose inputs and parameters are unchanged and resumes an "
        "interrupted one (fusion block by block). Ends with a summary table.",
    )
    p.add_argument("pipeline", help="pipeline file (local path or URL)")
    p.add_argument("--log-file", metavar="FILE", help="also write the log (stage starts, results, errors) here")
    p.add_argument("--progress", action="store_true", help="progress bars even when stderr is not a terminal")
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def print_summary(rows, console: Console, title: str) -> None:
    """The table of stages: status (ran, skipped, failed, ...), seconds and the one-line result."""
    table = Table(title=title)
    for col in ("stage", "status", "seconds", "result"):
        table.add_column(col, justify="right" if col == "seconds" else "left", overflow="fold")
    for r in rows:
        status = f"[{_STYLE.get(r.status, '')}]{r.status}[/]" + (": unchanged" if r.status == "skipped" else "")
        result = r.result.removeprefix("unchanged (").removesuffix(")") if r.status == "skipped" else r.result
        table.add_row(r.name, status, "" if r.seconds is None else f"{r.seconds:.1f}", result)
    console.print(table)


def _log_to(location: str | None) -> logging.Handler | None:
    if not location:
        return None
    try:
        handler = logging.FileHandler(location, encoding="utf-8")
    except OSError as e:
        raise UserError(f"--log-file {location}: cannot write it ({e.strerror})") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    shown = log.getEffectiveLevel()
    for other in log.handlers:  # the file gets INFO even with --quiet; the terminal keeps its level
        other.setLevel(max(other.level, shown))
    log.addHandler(handler)
    log.setLevel(min(shown, logging.INFO))
    return handler


def run(args: argparse.Namespace) -> int:
    # imported here: rhapso_gpu.pipeline builds on the single commands' modules of this package
    from rhapso_gpu.pipeline import load_pipeline, run_pipeline

    pipeline = load_pipeline(args.pipeline)
    console = Console(highlight=False, quiet=args.quiet)
    progress = False if args.quiet else (True if args.progress else None)
    handler = _log_to(args.log_file)
    title = f"run {args.pipeline} ({pipeline.xml})"
    try:
        log.info("pipeline %s: %d stages on %s", args.pipeline, len(pipeline.steps), pipeline.xml)
        with open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit,
                          progress=progress) as cluster:
            try:
                rows = run_pipeline(pipeline, cluster, args.backend, console, args.quiet)
            except BaseException as e:
                rows = getattr(e, "pipeline_results", None)
                if rows and not args.quiet:
                    print_summary(rows, Console(highlight=False, stderr=True), title)
                raise
            where = cluster.description
        print_summary(rows, console, title)
        ran = sum(r.seconds or 0.0 for r in rows)
        console.print(f"{sum(r.status == 'ran' for r in rows)} stage(s) ran in {ran:.1f} s, "
                      f"{sum(r.status == 'skipped' for r in rows)} skipped; backend {get_backend(args.backend).name}, "
                      f"cluster {where}")
        return 0
    finally:
        if handler is not None:
            log.removeHandler(handler)
            handler.close()
