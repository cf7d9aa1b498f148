"""What the entry points share: load a pipeline file, describe its plan, run it on a cluster with a summary."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from rich.console import Console

from rhapso_gpu.cli.run import print_summary
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.pipeline import Pipeline, load_pipeline, run_pipeline
from rhapso_gpu.pipeline.stages import planned_outputs

_EDITS_XML = ("detect", "stitch", "match", "solve", "align")
"""Stages that update the XML they read in place (detect and match also write ``interestpoints.n5``)."""


def load_plan(location: str) -> Pipeline:
    """The validated pipeline file (a one-line :class:`UserError` for a bad one)."""
    return load_pipeline(location)


def plan_rows(pipeline: Pipeline) -> list[dict]:
    """Per stage, in order: ``name``, ``stage``, and the locations it ``reads`` and ``writes``.

    Follows the XML through the stages as the runner does (after a ``split``
    the later stages work on the split XML) without reading anything.
    """
    rows, xml, last_fused = [], pipeline.xml, None
    for spec in pipeline.steps:
        outputs = planned_outputs(spec, pipeline, xml, last_fused)
        reads, writes = [xml], list(outputs.values())
        if spec.stage in _EDITS_XML:
            n5 = ["interestpoints.n5 under the XML's BasePath"] if spec.stage != "solve" else []
            writes = [xml, *n5, *writes]
        elif spec.stage == "multiscale":
            reads, writes = [outputs["zarr"]], [outputs["zarr"] + " (levels 1..)"]
        elif spec.stage == "qc" and getattr(spec.parameters, "truth", None):
            reads.append(spec.parameters.truth)
        rows.append({"name": spec.key, "stage": spec.stage, "reads": reads, "writes": writes})
        if spec.stage == "split":
            xml = outputs["xml"]
        if spec.stage == "fuse":
            last_fused = outputs["zarr"]
    return rows


def describe_plan(pipeline: Pipeline) -> str:
    """The plan as text: the XML, the output folder, then one line per stage with what it reads and writes."""
    head = f"pipeline {pipeline.source}: {len(pipeline.steps)} stages on {pipeline.xml}, outputs under {pipeline.output}"
    lines = [head]
    for i, row in enumerate(plan_rows(pipeline), 1):
        label = row["name"] if row["name"] == row["stage"] else f"{row['name']} ({row['stage']})"
        lines.append(f"  {i}. {label}: reads {', '.join(row['reads'])}; writes {', '.join(row['writes']) or '-'}")
    return "\n".join(lines)


def remote_only(pipeline: Pipeline, where: str) -> None:
    """Refuse local paths in a pipeline meant for remote workers (they cannot see this machine's files).

    Raises
    ------
    UserError
        Naming the first local location (the XML, an output, or a QC truth file).
    """
    for row in plan_rows(pipeline):
        for location in row["reads"] + row["writes"]:
            location = location.split(" ")[0]
            if location != "interestpoints.n5" and not storage.is_remote(location):
                raise UserError(
                    f"{where}: stage {row['name']} uses the local path {location}; workers on AWS see only "
                    "s3:// locations (upload the dataset and use s3:// URLs for xml and output)"
                )


def run_plan(pipeline: Pipeline, cluster, backend: str, console: Console, quiet: bool) -> list:
    """Run the pipeline on ``cluster`` and print the summary table (also when a stage fails)."""
    title = f"run {pipeline.source} on {cluster.description}"
    try:
        rows = run_pipeline(pipeline, cluster, backend, console, quiet)
    except BaseException as e:
        rows = getattr(e, "pipeline_results", None)
        if rows and not quiet:
            print_summary(rows, Console(highlight=False, stderr=True), title)
        raise
    if not quiet:
        print_summary(rows, console, title)
    return rows


def entry_point(
    prog: str,
    args: argparse.Namespace,
    body: Callable[[Console], None],
    interrupted: str,
    stops: dict[type[BaseException], tuple[str, int]] | None = None,
) -> int:
    """Run ``body(console)`` as a command line; returns the exit status.

    Log records go to stderr (warnings only with ``args.quiet``). A user error
    ends with one line and status 2 (the traceback with ``args.debug``); Ctrl-C
    prints ``interrupted`` and gives 130; ``stops`` maps further exception
    types to their message and status (e.g. SIGTERM, 143).
    """
    log = logging.getLogger("rhapso_gpu")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stderr))
        log.setLevel(logging.WARNING if args.quiet else logging.INFO)
    stops = stops or {}
    try:
        body(Console(highlight=False, soft_wrap=True))
        return 0
    except UserError as e:
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    except tuple(stops) as e:
        message, status = stops[type(e)]
        print(f"{prog}: {message}", file=sys.stderr)
        return status
