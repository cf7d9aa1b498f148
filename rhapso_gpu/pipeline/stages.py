"""One function per stage kind: the same calls the single commands make, on the pipeline's current XML.

Each takes a :class:`StageContext` and returns a :class:`StageOutcome`: a
one-line result and the XML that later stages work on (the same XML, except
after ``split``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.console import Console

from rhapso_gpu import __version__
from rhapso_gpu.cli.align import run_alignment
from rhapso_gpu.cli.detect import detect_xml
from rhapso_gpu.cli.evaluate import evaluate_xml, print_report
from rhapso_gpu.cli.info import print_info
from rhapso_gpu.cli.match import match_xml
from rhapso_gpu.cli.solve import print_report as print_solve_report
from rhapso_gpu.cli.solve import solve_xml
from rhapso_gpu.cli.split import check_output
from rhapso_gpu.errors import UserError
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.io import ome_zarr, storage
from rhapso_gpu.io.interestpoints import container_location
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.multiscale.pyramid import build_pyramid, propose_factors
from rhapso_gpu.pipeline.schema import Pipeline, StageSpec
from rhapso_gpu.split import split_dataset
from rhapso_gpu.stitching import stitch_dataset, store_stitching_results


@dataclass
class StageContext:
    """What a stage runs with.

    Attributes
    ----------
    spec : StageSpec
    pipeline : Pipeline
    xml : str
        The XML the stage reads (and, for detect/solve/align, updates in place).
    outputs : dict of str to str
        The stage's resolved output/input locations (see :func:`planned_outputs`).
    cluster : rhapso_gpu.scheduler.Cluster
    backend : str
    console : rich.console.Console
    owned : bool
        An earlier run of this stage (finished or not) wrote to these outputs:
        split may replace its XML.
    same_inputs : bool
        ... and it had the same input token: fuse resumes its container
        (otherwise fuse replaces a container it owns, and refuses a foreign one).
    """

    spec: StageSpec
    pipeline: Pipeline
    xml: str
    outputs: dict[str, str]
    cluster: Any
    backend: str
    console: Console
    owned: bool = False
    same_inputs: bool = False


@dataclass
class StageOutcome:
    """A stage's one-line result and the XML that later stages work on."""

    result: str
    xml: str


WRITES_XML = frozenset({"detect", "stitch", "match", "solve", "align"})
"""Stage kinds that save the XML they read (split writes a new XML; fuse, multiscale and qc only read it)."""


def planned_outputs(spec: StageSpec, pipeline: Pipeline, xml: str, last_fused: str | None) -> dict[str, str]:
    """The locations a stage writes (or, for multiscale, reads), resolved; part of its fingerprint.

    Reads nothing (a dry run prints them without contacting storage).
    """
    if spec.stage == "fuse":
        return {"zarr": pipeline.resolve_output(spec.output or f"{spec.key}.ome.zarr")}
    if spec.stage == "split":
        stem = storage.join(storage.parent(xml), xml.rstrip("/").rsplit("/", 1)[-1].removesuffix(".xml"))
        return {"xml": pipeline.resolve_output(spec.output) if spec.output else f"{stem}.split.xml"}
    if spec.stage == "multiscale":
        location = pipeline.resolve_output(spec.input) if spec.input else last_fused
        if location is None:
            raise UserError(f"{pipeline.source}: stage {spec.key}: no 'input' and no fuse stage before it")
        return {"zarr": location}
    if spec.stage in ("solve", "qc") and spec.output:
        return {"report": pipeline.resolve_output(spec.output)}
    return {}


def outputs_present(spec: StageSpec, outputs: dict[str, str], xml: str) -> bool:
    """True when the outputs a finished stage left are still there (a fused container still complete, the
    interest points of a detection still in the container the XML names)."""
    if spec.stage == "fuse":
        return bool((ome_zarr.container_attributes(outputs["zarr"]) or {}).get("complete"))
    if spec.stage == "detect" and not storage.exists(container_location(load_spimdata(xml))):
        return False
    return all(storage.exists(location) for location in outputs.values())


def _detect(ctx: StageContext) -> StageOutcome:
    detected = detect_xml(ctx.xml, ctx.backend, ctx.spec.parameters, ctx.cluster)
    return StageOutcome(f"{detected.summary} ({detected.location})", ctx.xml)


def _stitch(ctx: StageContext) -> StageOutcome:
    spim = load_spimdata(ctx.xml)
    results = stitch_dataset(spim, ctx.spec.parameters, ctx.cluster, ctx.backend)
    store_stitching_results(spim, results)
    save_spimdata(spim, ctx.xml)
    return StageOutcome(f"{sum(r.accepted for r in results)} of {len(results)} pairs stitched (phase correlation)",
                        ctx.xml)


def _match(ctx: StageContext) -> StageOutcome:
    return StageOutcome(match_xml(ctx.xml, ctx.backend, ctx.spec.parameters, ctx.cluster).summary, ctx.xml)


def _solve(ctx: StageContext) -> StageOutcome:
    params = ctx.spec.parameters
    report, location = solve_xml(ctx.xml, params, ctx.outputs.get("report"))
    print_solve_report(report, ctx.console, title=f"{ctx.spec.key} {params.model}")
    return StageOutcome(f"{report['links']} links, residual RMS {report['rms']} / max {report['max']} px, "
                        f"{len(report['removed_links'])} removed; {location}", ctx.xml)


def _align(ctx: StageContext) -> StageOutcome:
    rows = run_alignment(ctx.xml, ctx.spec.parameters, ctx.cluster, ctx.backend, ctx.console,
                         f"{ctx.pipeline.source}: {ctx.spec.key}")
    ran = [name for name, seconds, _ in rows if seconds is not None]
    return StageOutcome(f"{', '.join(ran) or 'nothing'} ran; {rows[-1][0]}: {rows[-1][2]}", ctx.xml)


def _split(ctx: StageContext) -> StageOutcome:
    out = ctx.outputs["xml"]
    check_output(ctx.xml, out, overwrite=ctx.owned)
    result = split_dataset(load_spimdata(ctx.xml), ctx.spec.parameters, out)
    n_old = len({sv.old_setup for sv in result.subviews})
    return StageOutcome(f"{n_old} setups -> {len(result.subviews)} sub-views; {result.points.fake_points} fake "
                        f"points; later stages use {out}", out)


def _fuse(ctx: StageContext) -> StageOutcome:
    params = ctx.spec.parameters
    result = fuse_dataset(load_spimdata(ctx.xml), ctx.outputs["zarr"], params, ctx.cluster, ctx.backend,
                          overwrite=ctx.owned and not ctx.same_inputs)
    return StageOutcome(f"{result.n_views} views into {result.location} (t, c, z, y, x) "
                        f"{' x '.join(map(str, result.shape_tczyx))}, {result.n_blocks} blocks "
                        f"({result.n_skipped} already done)", ctx.xml)


def _multiscale(ctx: StageContext) -> StageOutcome:
    params = ctx.spec.parameters
    location = ctx.outputs["zarr"]
    factors = [tuple(f) for f in params.factors] if params.factors else None
    if factors is None and params.levels is not None:
        info = ome_zarr.read_multiscale_info(location)
        factors = propose_factors(ome_zarr.open_level(location, 0).shape[2:], info.voxel_size_xyz,
                                  max_levels=params.levels)
    result = build_pyramid(location, factors, ctx.cluster, ctx.backend)
    return StageOutcome(f"{len(result.factors_xyz) - 1} pyramid level(s) in {location}", ctx.xml)


def _qc(ctx: StageContext) -> StageOutcome:
    params = ctx.spec.parameters
    if params.truth is None:
        print_info(ctx.xml, images=True, console=ctx.console)
        return StageOutcome("images open and match their sizes (no ground truth given)", ctx.xml)
    report = evaluate_xml(ctx.xml, params.truth, params.remove)
    print_report(report, ctx.console, title=f"{ctx.spec.key}: registration error")
    if "report" in ctx.outputs:
        summary = {"version": __version__, "parameters": params.model_dump(mode="json"), "xml": ctx.xml,
                   "truth": params.truth, "remove": report.remove, "rms": report.rms,
                   "max": report.max, "per_view": {str(v): {"rms": e.rms, "max": e.max}
                                                   for v, e in sorted(report.per_view.items())}}
        storage.write_bytes_atomic(ctx.outputs["report"], json.dumps(summary, indent=1).encode())
    text = f"registration error RMS {report.rms:.3f} / max {report.max:.3f} px (global {report.remove} removed)"
    if params.max_rms is not None and report.rms > params.max_rms:
        raise UserError(f"{ctx.pipeline.source}: stage {ctx.spec.key}: {text} is above max_rms {params.max_rms}")
    return StageOutcome(text, ctx.xml)


RUNNERS = {"detect": _detect, "stitch": _stitch, "match": _match, "solve": _solve, "align": _align, "split": _split, "fuse": _fuse,
           "multiscale": _multiscale, "qc": _qc}


def run_stage(ctx: StageContext) -> StageOutcome:
    """Run one stage, its dask work labelled with the stage's name in the progress bars."""
    with ctx.cluster.stage(ctx.spec.key):
        return RUNNERS[ctx.spec.stage](ctx)
