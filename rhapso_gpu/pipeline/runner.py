"""Run a pipeline: skip the stages whose inputs and parameters are unchanged, resume the interrupted one.

A stage is *unchanged* when its record (see :mod:`rhapso_gpu.pipeline.state`)
says it finished with the same input token (kind, parameters, package version,
the SHA-256 of the XML it reads, the token of the stage before it, its output
locations) and its outputs are still there. The XML a stage reads is the XML
state the previous stage left, so a rerun compares against the states the
pipeline itself produced: after a full run, ``dataset.xml`` holds the solved
registrations, and the rerun recognises that state as the pipeline's own
output instead of a new input (no second transform is added).

The first stage that is not unchanged runs, and so does every stage after it.
Before it runs, the XML is put back into the state it needs (from the
snapshot its predecessor recorded; the replaced file stays as backup ``~1``),
so a stage that edits the XML in place is never applied on top of its own
output or of a later stage's output. Fusion resumes block by block when its
record matches (the container's own records decide which blocks are done).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from rich.console import Console

from rhapso_gpu.backend import get_backend
from rhapso_gpu.io import storage
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.pipeline.schema import Pipeline
from rhapso_gpu.pipeline.stages import WRITES_XML, StageContext, outputs_present, planned_outputs, run_stage
from rhapso_gpu.pipeline.state import RunState, input_token, sha256

log = logging.getLogger("rhapso_gpu")


@dataclass
class StageResult:
    """One row of the run's summary.

    Attributes
    ----------
    name : str
        The stage's name in the pipeline.
    stage : str
        Its kind (detect, match, ...).
    status : {'ran', 'skipped', 'failed', 'interrupted', 'not run'}
    seconds : float or None
        Wall time of the stage (None when it did not run).
    result : str
        One line: what it did, or why it was skipped or failed.
    """

    name: str
    stage: str
    status: str
    seconds: float | None
    result: str


def _put_back(state: RunState, xml: str, digest: str) -> None:
    """Make the XML at ``xml`` the recorded state ``digest`` (the file it replaces becomes backup ~1)."""
    current = storage.read_bytes(xml, what="dataset XML") if storage.exists(xml) else None
    if current is not None and sha256(current) == digest:
        return
    log.info("pipeline: restoring %s to the state its last finished stage left (replaced file kept as ~1)", xml)
    storage.write_with_backups(xml, state.read_snapshot(digest))


def _chain_start(pipeline: Pipeline, state: RunState, disk_sha: str) -> str:
    """The XML state the first stage reads: the recorded one when the XML on disk is this pipeline's own work.

    The XML on disk is the pipeline's own work when it is a state a recorded stage read or wrote, or when an
    interrupted stage wrote it before it could record that (its backup ``~1`` is then the state that stage
    started from). Anything else is an edit made since the run: it is kept, and every stage runs on it.
    """
    first = state.stages.get(pipeline.steps[0].key)
    if not first or first.get("xml") != pipeline.xml or not state.has_snapshot(first.get("xml_sha", "")):
        return disk_sha
    keys = {s.key for s in pipeline.steps}
    records = [r for name, r in state.stages.items() if name in keys]
    own = {r.get("out_sha") for r in records if r.get("out_xml") == pipeline.xml}
    own |= {r.get("xml_sha") for r in records if r.get("xml") == pipeline.xml}
    if disk_sha in own or _written_by_interrupted_stage(pipeline.xml, records):
        return first["xml_sha"]
    log.warning("pipeline: %s changed since the last run; every stage runs again on it", pipeline.xml)
    return disk_sha


def _written_by_interrupted_stage(xml: str, records: list[dict]) -> bool:
    """An interrupted stage that saves its XML (detect, match, solve, ...) saved ``xml`` before it could record
    that: the backup ``~1`` holds the state it started from. (Stages that never write the XML are not asked,
    so a BigStitcher save after an interrupted fusion, whose ``~1`` is fusion's input, stays an edit.)"""
    started = {r.get("xml_sha") for r in records
               if r.get("status") == "started" and r.get("xml") == xml and r.get("kind") in WRITES_XML}
    backup = f"{xml}~1"
    return bool(started) and storage.exists(backup) and sha256(storage.read_bytes(backup, what="XML backup")) in started


def run_pipeline(pipeline: Pipeline, cluster, backend: str = "auto", console: Console | None = None,
                 quiet: bool = False) -> list[StageResult]:
    """Run the stages of ``pipeline`` in order on ``cluster``.

    Parameters
    ----------
    pipeline : Pipeline
        From :func:`~rhapso_gpu.pipeline.load_pipeline`.
    cluster : rhapso_gpu.scheduler.Cluster
        From :func:`~rhapso_gpu.scheduler.open_cluster`.
    backend : {'auto', 'numpy', 'cupy'}
    console : rich.console.Console, optional
        Where the stages print their tables (default: stdout).
    quiet : bool
        Print nothing, whatever ``console`` (the returned rows and the log
        still say what happened).

    Returns
    -------
    list of StageResult
        One row per stage, in order.

    Raises
    ------
    Exception
        What a stage raised (a :class:`~rhapso_gpu.errors.UserError` for bad
        input); the exception's ``pipeline_results`` attribute holds the rows
        so far, the failed stage's included, for the summary.
    """
    console = Console(quiet=True) if quiet else (console or Console(highlight=False))
    backend_name = get_backend(backend).name
    load_spimdata(pipeline.xml)  # a missing or malformed XML is a user error before anything is written
    state = RunState.open(pipeline.xml)
    disk = storage.read_bytes(pipeline.xml, what="dataset XML")
    xml, xml_sha = pipeline.xml, _chain_start(pipeline, state, sha256(disk))
    if xml_sha == sha256(disk):
        state.snapshot(disk)
    previous: str | None = None
    last_fused: str | None = None
    running = False
    results: list[StageResult] = []
    for spec in pipeline.steps:
        params = spec.parameters.model_dump(mode="json", by_alias=True)
        outputs = planned_outputs(spec, pipeline, xml, last_fused)
        tok = input_token(spec.stage, params, xml, xml_sha, previous, {"outputs": outputs})
        record = state.stages.get(spec.key)
        if (not running and record and record.get("status") == "done" and record.get("input_token") == tok
                and state.has_snapshot(record["out_sha"]) and outputs_present(spec, outputs, xml)):
            results.append(StageResult(spec.key, spec.stage, "skipped", None, f"unchanged ({record['result']})"))
            log.info("pipeline: %s skipped: unchanged since %s", spec.key, record.get("time"))
        else:
            running = True
            record = _run_one(pipeline, state, spec, xml, xml_sha, tok, params, outputs, record, cluster,
                              backend_name, console, results)
        xml, xml_sha, previous = record["out_xml"], record["out_sha"], tok
        if spec.stage == "fuse":
            last_fused = outputs["zarr"]
    if not running:
        _put_back(state, xml, xml_sha)
    return results


def _run_one(pipeline, state, spec, xml, xml_sha, tok, params, outputs, record, cluster, backend, console,
             results) -> dict:
    """Run one stage and record it; returns its 'done' record."""
    _put_back(state, xml, xml_sha)
    owned = bool(record) and record.get("outputs") == outputs
    same_inputs = owned and record.get("input_token") == tok
    common = {"kind": spec.stage, "params": params, "input_token": tok, "xml": xml, "xml_sha": xml_sha,
              "outputs": outputs}
    state.record(spec.key, status="started", **common)
    console.rule(f"{spec.key}")
    log.info("pipeline: %s started (%s)", spec.key, spec.stage)
    start = time.perf_counter()
    try:
        outcome = run_stage(StageContext(spec, pipeline, xml, outputs, cluster, backend, console, owned, same_inputs))
    except BaseException as e:
        status, seconds = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed", time.perf_counter() - start
        results.append(StageResult(spec.key, spec.stage, status, seconds,
                                   str(e).splitlines()[0] if str(e) else type(e).__name__))
        done = {r.name for r in results}
        results.extend(StageResult(s.key, s.stage, "not run", None, "") for s in pipeline.steps if s.key not in done)
        e.pipeline_results = results
        log.error("pipeline: %s %s after %.1f s: %s", spec.key, status, seconds, e)
        raise
    seconds = time.perf_counter() - start
    out_sha = state.snapshot(storage.read_bytes(outcome.xml, what="dataset XML"))
    state.record(spec.key, status="done", **common, out_xml=outcome.xml, out_sha=out_sha, seconds=seconds,
                 result=outcome.result)
    results.append(StageResult(spec.key, spec.stage, "ran", seconds, outcome.result))
    log.info("pipeline: %s ran in %.1f s: %s", spec.key, seconds, outcome.result)
    return state.stages[spec.key]
