"""``rhapso-gpu detect XML``: DoG interest points of every view, written as BigStitcher does."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from rhapso_gpu.backend import get_backend
from rhapso_gpu.cli._options import add_common, add_compute, output_console
from rhapso_gpu.detection import DetectionResult, DetectParams, detect_interest_points, save_interest_points
from rhapso_gpu.io.params import load_params, parse_set_options
from rhapso_gpu.io.spimdata import SpimData
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.scheduler import open_cluster


def add_parser(sub) -> None:
    p = sub.add_parser(
        "detect",
        help="detect interest points (Difference of Gaussian) in every view",
        description="Detect DoG interest points (BigStitcher's algorithm) in every view of XML and write them to "
        "<BasePath>/interestpoints.n5 with a <ViewInterestPointsFile> per view. Parameters come from --params "
        "(YAML), then --set key=value; with none, robust defaults are used and printed. Keys: "
        + ", ".join(DetectParams.model_fields),
    )
    p.add_argument("xml", help="dataset.xml (local path or s3:// URL); updated in place (backups ~1..~5)")
    p.add_argument("--params", metavar="YAML", help="parameter file (keys as listed above)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    p.add_argument("--label", default=None, help="interest-point label (default: beads)")
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def detect_params(args: argparse.Namespace) -> DetectParams:
    """Validated parameters: ``--params`` file, then ``--set`` values, then ``--label``."""
    overrides = parse_set_options(args.set)
    if args.label is not None:
        overrides["label"] = args.label
    return load_params(DetectParams, args.params, overrides)


def print_summary(result: DetectionResult, params: DetectParams, console: Console) -> None:
    """The table of points per view and the values the run chose."""
    table = Table(title=f"interest points '{params.label}'")
    for name in ("view", "level", "factors (x,y,z)", "blocks", "threshold", "points"):
        table.add_column(name, justify="right" if name != "view" else "left")
    total = 0
    for view, vp in sorted(result.views.items()):
        total += len(vp.loc_xyz)
        table.add_row(
            str(view), str(vp.plan.level), "x".join(map(str, vp.plan.factors_xyz)), str(vp.n_blocks),
            f"{vp.threshold:.4g}", str(len(vp.loc_xyz)),
        )
    console.print(table)
    console.print(
        f"{total} points in {len(result.views)} views, {result.seconds:.1f} s "
        f"({result.n_voxels / max(result.seconds, 1e-9) / 1e6:.1f} M downsampled voxels/s); "
        f"sigma {params.sigma:g}, threshold {params.threshold}, min/max intensity "
        f"{result.min_intensity:g}/{result.max_intensity:g}"
        + ("" if params.min_intensity is not None and params.max_intensity is not None else " (from the data)")
    )


@dataclass(frozen=True)
class Detected:
    """What :func:`detect_xml` did.

    Attributes
    ----------
    result : DetectionResult
    location : str
        The ``interestpoints.n5`` container written.
    summary : str
        One line: points, label, views.
    """

    result: DetectionResult
    location: str
    summary: str


def detect_xml(xml: str, backend: str, params: DetectParams, cluster, spim: SpimData | None = None) -> Detected:
    """Detect the interest points of every view of ``xml``, write them and save the XML (with backups).

    Parameters
    ----------
    xml : str
        dataset.xml, local path or URL; updated in place.
    backend : {'numpy', 'cupy'}
        Backend the workers compute with.
    params : DetectParams
    cluster : rhapso_gpu.scheduler.Cluster
    spim : SpimData, optional
        ``xml`` already loaded (default: load it).
    """
    spim = load_spimdata(xml) if spim is None else spim
    result = detect_interest_points(spim, params, cluster, backend)
    location = save_interest_points(spim, result, params)
    save_spimdata(spim, xml)
    n = sum(len(vp.loc_xyz) for vp in result.views.values())
    return Detected(result, location, f"{n} points '{params.label}' in {len(result.views)} views")


def run(args: argparse.Namespace) -> int:
    params = detect_params(args)
    spim = load_spimdata(args.xml)  # bad input fails before workers start
    backend = get_backend(args.backend)
    with (
        open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster,
        cluster.stage("detect"),
    ):
        detected = detect_xml(args.xml, backend.name, params, cluster, spim)
    console = output_console(args)
    print_summary(detected.result, params, console)
    console.print(f"wrote {detected.location} and {args.xml}")
    return 0
