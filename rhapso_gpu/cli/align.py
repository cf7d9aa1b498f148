"""``rhapso-gpu align XML``: the whole alignment a new user wants, one command.

Stages, each skippable and tunable in the YAML (``params/align.yml``):
stitch -> solve_stitch -> detect -> match_rigid -> stitch_rigid -> solve_rigid
-> match_affine -> stitch_affine -> solve_affine. The second matching runs
from the rigid result, so it can search a small radius and finds more (and
more exact) correspondences than the first.

Two paths run a subset of the stages (``strategy``):

* ``interest-points``: detect -> match_rigid -> solve_rigid -> match_affine
  -> solve_affine (beads: sub-pixel in seconds).
* ``stitching``, for content without reproducible interest points (nuclei):
  stitch -> solve_stitch -> stitch_rigid -> solve_rigid -> stitch_affine ->
  solve_affine. A coarse stitch (intensity-based pairwise shifts) and a
  translation solve from it, then full-resolution stitches from each improved
  start feed the rigid and affine solves (``links: stitching``), so every solve
  sees shifts measured at its own start; a solve whose shifts agree worse than
  the previous solve's is not applied.
* ``auto`` (the default) starts with interest points and, when the first rigid
  solve shows that they cannot carry a sub-pixel alignment (no links, or the
  median of the links' residual RMS above ``auto_max_rms``: the points are
  localised too poorly, as DoG points on nuclei are), restores the
  registrations the run started from and takes the stitching path.

A stage's ``skip`` given by the user (or ``--skip``) wins over its path.
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, add_compute
from rhapso_gpu.cli.detect import detect_xml
from rhapso_gpu.cli.match import match_xml
from rhapso_gpu.cli.solve import print_report
from rhapso_gpu.detection import DetectParams
from rhapso_gpu.errors import UserError
from rhapso_gpu.io.params import load_params, parse_set_options, validate_params
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.solver import SolveParams, apply_solution, build_report, report_location, solve_dataset, write_report
from rhapso_gpu.stitching import StitchParams, stitch_dataset, store_stitching_results

log = logging.getLogger(__name__)

STAGES = ("stitch", "solve_stitch", "detect", "match_rigid", "stitch_rigid", "solve_rigid", "match_affine",
          "stitch_affine", "solve_affine")
_FINE_STITCH = {"downsampling": [1, 1, 1], "max_shift": 4.0, "min_r": 0.9}
PATHS = {
    "interest-points": ("detect", "match_rigid", "solve_rigid", "match_affine", "solve_affine"),
    "stitching": ("stitch", "solve_stitch", "stitch_rigid", "solve_rigid", "stitch_affine", "solve_affine"),
}
# Values a path sets on top of STAGE_DEFAULTS (the user's values win over both).
_PATH_VALUES: dict[str, dict[str, dict[str, Any]]] = {
    "interest-points": {},
    "stitching": {"solve_rigid": {"links": "stitching"}, "solve_affine": {"links": "stitching"}},
}

STAGE_DEFAULTS: dict[str, dict[str, Any]] = {
    # Intensity-based stitching, the stitching path only (interest points align beads to sub-pixel on their own;
    # with stitching on, beads end the same in 6x the time). The coarse stitch searches the stage error at 2x2x1;
    # min_r is stricter than BigStitcher's 0.7 (nuclei pairs with r 0.7-0.9 were off by pixels).
    "stitch": {"min_r": 0.9},
    "solve_stitch": {"links": "stitching", "model": "translation", "relative_threshold": 2.5,
                     "absolute_threshold": 3.5},
    # Full resolution in x/y: localisation at the coarser level limits the result to ~1 px.
    "detect": {"dsxy": 1},
    # Tiled data: thin overlaps hold too few common beads with the same neighbours for descriptors, so
    # the first matching takes the offset most point pairs agree on (search_radius above the stage error).
    "match_rigid": {"method": "offset-consensus", "model": "rigid", "min_inliers": 5, "search_radius": 35.0},
    # Sub-pixel data: BigStitcher's STRICT link removal (2.5 x mean tile error, 3.5 px) catches a wrong link that
    # the RELAXED default lets spread over a small grid; good links stay below its 0.75 px floor.
    "solve_rigid": {"model": "rigid", "relative_threshold": 2.5, "absolute_threshold": 3.5},
    # Full-resolution stitches from the better start, before the solves that use them (links: stitching).
    "stitch_rigid": _FINE_STITCH,
    # From the rigid result every pair is within a pixel or two: a small radius, a tight epsilon; the pairwise
    # model stays rigid (a thin overlap slab does not determine a pairwise affine; the solve fits the affine).
    "match_affine": {"method": "offset-consensus", "model": "rigid", "min_inliers": 5, "search_radius": 10.0,
                     "max_epsilon": 2.5},
    # The affine only where the matches support it (F-test against the rigid solve of the same matches).
    "solve_affine": {"model": "affine", "regularizer": "rigid", "lambda": 0.1, "select_model": True,
                     "relative_threshold": 2.5, "absolute_threshold": 3.5},
    "stitch_affine": _FINE_STITCH,
}
STAGE_PARAMS = {"stitch": StitchParams, "solve_stitch": SolveParams, "detect": DetectParams,
                "match_rigid": MatchParams, "stitch_rigid": StitchParams, "solve_rigid": SolveParams,
                "match_affine": MatchParams, "stitch_affine": StitchParams, "solve_affine": SolveParams}


class AlignParams(BaseModel):
    """``align`` parameters: the path (``strategy``), then one mapping per stage (its parameters, plus ``skip``)."""

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["auto", "interest-points", "stitching"] = Field(
        "auto", description="interest-points (beads), stitching (phase correlation, e.g. nuclei), or auto: "
        "interest points, then stitching if the first rigid solve shows they did not align the tiles")
    auto_max_rms: float = Field(
        0.5, gt=0, description="strategy auto: median over the links of their residual RMS (world px) after the "
        "first rigid solve, above which the interest points are judged too imprecise for a sub-pixel alignment "
        "(measured on synth: beads 0.07-0.08, beads+tissue 0.32-0.36, nuclei 0.60-0.63)")

    stitch: dict[str, Any] = Field({}, description="StitchParams of the coarse stitch (params/stitch.yml)")
    solve_stitch: dict[str, Any] = Field({}, description="SolveParams of the solve from the coarse stitch")
    detect: dict[str, Any] = Field({}, description="DetectParams (params/detect.yml)")
    match_rigid: dict[str, Any] = Field({}, description="MatchParams of the first matching (params/match.yml)")
    stitch_rigid: dict[str, Any] = Field({}, description="StitchParams of the stitch before the rigid solve")
    solve_rigid: dict[str, Any] = Field({}, description="SolveParams of the rigid solve (params/solve.yml)")
    match_affine: dict[str, Any] = Field({}, description="MatchParams of the second matching")
    stitch_affine: dict[str, Any] = Field({}, description="StitchParams of the stitch before the affine solve")
    solve_affine: dict[str, Any] = Field({}, description="SolveParams of the affine solve")

    def stage(self, name: str, source: str = "align parameters", path: str | None = None) -> tuple[bool, BaseModel]:
        """``(skip, validated parameters)`` of a stage on ``path`` (default: the first path of ``strategy``).

        Values are align's defaults, then the path's, then the user's; a stage
        is skipped when it is not on the path, unless the user's ``skip`` says otherwise.
        """
        path = path or self.paths()[0]
        values = {**STAGE_DEFAULTS[name], **_PATH_VALUES[path].get(name, {}), **getattr(self, name)}
        skip = bool(values.pop("skip", name not in PATHS[path]))
        return skip, validate_params(STAGE_PARAMS[name], values, f"{source}: {name}")

    def paths(self) -> tuple[str, ...]:
        """The paths ``strategy`` may run, in order (auto: interest points, then stitching)."""
        return ("interest-points", "stitching") if self.strategy == "auto" else (self.strategy,)


_TOP_LEVEL = ("strategy", "auto_max_rms")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "align",
        help="detect, match and solve (rigid, then affine) in one command",
        description="Align a dataset: detect interest points, match them (rigid), solve rigid, match again "
        "from the rigid result (affine), solve affine; or, for content without reproducible interest points, "
        "stitch by phase correlation and solve from the pairwise shifts. --strategy auto (the default) starts "
        "with interest points and, when the rigid solve shows they do not agree, restores the start and "
        "stitches instead, saying so. Every stage is skippable and tunable in --params (see params/align.yml); "
        "--set stage.key=value (or key=value for strategy, auto_max_rms) overrides one value. Prints a table "
        "per stage; the "
        "XML is updated in place (backups ~1..~5) with one transform per solve, and each solve writes a "
        "JSON report next to the XML.",
    )
    p.add_argument("xml", help="dataset.xml (local path or s3:// URL)")
    p.add_argument("--params", metavar="YAML", help="parameter file (see params/align.yml)")
    p.add_argument("--strategy", choices=("auto", "interest-points", "stitching"), default=None,
                   help="which stages run (default: the --params value, else auto): interest-points (beads), "
                   "stitching (phase correlation, e.g. nuclei), auto (interest points, stitching if they fail)")
    p.add_argument("--set", action="append", metavar="STAGE.KEY=VALUE", help="override one value (repeatable)")
    p.add_argument("--skip", action="append", choices=STAGES, default=[], help="skip a stage (repeatable)")
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def align_params(args: argparse.Namespace) -> AlignParams:
    """Validated parameters: --params file, then ``--set``, ``--strategy`` and ``--skip``."""
    nested: dict[str, dict[str, Any]] = {}
    top: dict[str, Any] = {}
    for key, value in parse_set_options(args.set).items():
        stage, dot, name = key.partition(".")
        if not dot and key in _TOP_LEVEL:
            top[key] = value
        elif not dot or stage not in STAGES:
            raise UserError(f"--set {key}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(STAGES)}, "
                            f"or one of {', '.join(_TOP_LEVEL)}=VALUE")
        else:
            nested.setdefault(stage, {})[name] = value
    params = load_params(AlignParams, args.params, {**top, **({"strategy": args.strategy} if args.strategy else {})})
    for stage in STAGES:
        extra = {**nested.get(stage, {}), **({"skip": True} if stage in args.skip else {})}
        if extra:
            setattr(params, stage, {**getattr(params, stage), **extra})
    return params


def _stitch(xml: str, backend: str, params: StitchParams, cluster) -> str:
    spim = load_spimdata(xml)
    results = stitch_dataset(spim, params, cluster, backend)
    store_stitching_results(spim, results)
    save_spimdata(spim, xml)
    ok = [r for r in results if r.accepted]
    low = min((r.r for r in ok), default=float("nan"))
    return (f"{len(ok)} of {len(results)} pairs accepted (lowest r {low:.3f}; "
            f"downsampling {'x'.join(map(str, params.downsampling))}, max_shift {params.max_shift:g})")


def _solve(xml: str, params: SolveParams, console: Console, previous: dict | None) -> tuple[str, dict, dict | None]:
    """Solve and apply, except a stitching solve less consistent than ``previous`` (see :func:`run_alignment`).

    Returns the row text, this solve's report, and the report of the stitching
    solve now in the XML (``previous`` when this solve was not applied or did
    not use stitching links).
    """
    spim = load_spimdata(xml)
    solved = solve_dataset(spim, params)
    report = build_report(solved, params)
    keep = (params.links == "stitching" and previous is not None and report["rms"] is not None
            and report["rms"] > previous["rms"])
    report["applied"] = not keep
    if keep:
        report["kept_previous"] = (f"residual RMS {report['rms']} px above {previous['rms']} px of the previous "
                                   "stitching solve: its new shifts are less consistent")
    else:
        apply_solution(spim, solved)
        save_spimdata(spim, xml)
    location = write_report(report, report_location(xml, params.model))
    print_report(report, console, title=f"solve {params.model}")
    text = (f"{report['links']} links, residual RMS {report['rms']} / max {report['max']} px, "
            f"{len(report['removed_links'])} removed, {len(report['placed_by_metadata'])} by metadata; {location}")
    if keep:
        return f"NOT APPLIED ({report['kept_previous']}); {text}", report, previous
    return text, report, report if params.links == "stitching" else previous


def _interest_points_failed(report: dict, max_rms: float) -> str | None:
    """Why the first rigid solve shows that interest points cannot align the tiles sub-pixel, or None.

    The median over the links of each link's residual RMS measures how well the points are localised; a
    few wrong links (removed or not) do not move it.
    """
    if not report["links"]:
        return "no pair matched"
    typical = _median_link_rms(report)
    if typical > max_rms:
        return f"median link residual RMS {typical:g} px of the rigid solve > auto_max_rms {max_rms:g} px"
    return None


def _median_link_rms(report: dict) -> float:
    """Median over the kept links of a solve report of their residual RMS (world px)."""
    return float(np.median([link["rms"] for link in report["per_link"] if not link["removed"]]))


def run_alignment(
    xml: str, params: AlignParams, cluster, backend: str, console: Console, source: str = "align parameters"
) -> list[tuple[str, float | None, str]]:
    """Run the alignment stages of ``params.strategy`` on ``xml`` (updated in place, with backups).

    With ``strategy: auto``, the interest-point path runs first; if its rigid
    solve has no links or a residual RMS above ``auto_max_rms`` (world px), the
    registrations the run started from are restored (kept in memory) and the
    stitching path runs instead. A ``strategy`` row says which path ran and why.

    A solve from stitching links (``links: stitching``) is applied only if its
    residual RMS is not above that of the previous stitching solve of this run:
    shifts measured from a better start must agree at least as well, and when
    they do not (new pairs with biased shifts, e.g. from overlaps a few slices
    thin), re-solving from them made nuclei registrations worse. Its report
    then says ``"applied": false`` and why.

    Returns
    -------
    list of (stage, seconds, result)
        One row per stage (both paths' stages when auto switched paths);
        ``seconds`` is None for a skipped stage and for the ``strategy`` row.
    """
    paths = params.paths()
    plans = {path: {name: params.stage(name, source, path) for name in STAGES} for path in paths}  # validate first
    start_registrations = copy.deepcopy(load_spimdata(xml).registrations) if len(paths) > 1 else None
    rows: list[tuple[str, float | None, str]] = []
    for i, path in enumerate(paths):
        decide = i + 1 < len(paths)  # auto: judge the interest points after the first rigid solve
        previous = None  # report of the last applied stitching solve
        failed = judged = None
        for name, (skip, stage_params) in plans[path].items():
            if skip:
                rows.append((name, None, "skipped"))
                continue
            start = time.perf_counter()
            with cluster.stage(name):
                if name.startswith("stitch"):
                    text = _stitch(xml, backend, stage_params, cluster)
                elif name == "detect":
                    text = detect_xml(xml, backend, stage_params, cluster).summary
                elif name.startswith("match"):
                    text = match_xml(xml, backend, stage_params, cluster).summary
                else:
                    text, report, previous = _solve(xml, stage_params, console, previous)
            rows.append((name, time.perf_counter() - start, text))
            console.print(f"[bold]{name}[/bold]: {text}")
            if decide and name == "solve_rigid":
                judged = report
                failed = _interest_points_failed(report, params.auto_max_rms)
                if failed:
                    break
        if failed:
            spim = load_spimdata(xml)
            spim.registrations = copy.deepcopy(start_registrations)
            save_spimdata(spim, xml)
            text = (f"stitching, as interest points did not align the tiles ({failed}); "
                    "restored the registrations the run started from")
            if console.quiet:  # say it once, where the user looks: a warning passes -q
                log.warning("align strategy: %s", text)
            else:
                console.print(f"[bold]strategy[/bold]: {text}")
            rows.append(("strategy", None, text))
            continue
        if decide:
            text = ("interest-points: solve_rigid skipped, nothing to judge" if judged is None else
                    f"interest-points: the rigid solve's median link residual RMS {_median_link_rms(judged):g} px "
                    f"is within auto_max_rms {params.auto_max_rms:g} px")
            rows.append(("strategy", None, text))
            console.print(f"[bold]strategy[/bold]: {text}")
        break
    return rows


def run(args: argparse.Namespace) -> int:
    params = align_params(args)
    source = args.params or "align parameters"
    for path in params.paths():  # validate everything before starting workers
        for name in STAGES:
            params.stage(name, source, path)
    console = Console(highlight=False, quiet=args.quiet)
    with open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster:
        rows = run_alignment(args.xml, params, cluster, args.backend, console, source)
    summary = Table(title=f"align {args.xml}")
    for col in ("stage", "seconds", "result"):
        summary.add_column(col, justify="right" if col == "seconds" else "left")
    for name, seconds, text in rows:
        summary.add_row(name, "" if seconds is None else f"{seconds:.1f}", text)
    console.print(summary)
    return 0
