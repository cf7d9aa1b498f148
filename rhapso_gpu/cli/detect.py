"""``rhapso-gpu detect XML``: DoG interest points of every view, written as BigStitcher does."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rhapso_gpu.backend import get_backend
from rhapso_gpu.cli._options import add_common, add_compute
from rhapso_gpu.detection import DetectionResult, DetectParams, detect_interest_points, save_interest_points
from rhapso_gpu.io.params import load_params, parse_set_options
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


def run(args: argparse.Namespace) -> int:
    params = detect_params(args)
    spim = load_spimdata(args.xml)
    backend = get_backend(args.backend)
    console = Console(highlight=False, stderr=False)
    with open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster, Progress(
        TextColumn("detect"), BarColumn(), MofNCompleteColumn(), TextColumn("blocks"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True, disable=getattr(args, "quiet", False),
    ) as bar:
        task = bar.add_task("blocks", total=None)
        result = detect_interest_points(
            spim, params, cluster, backend.name, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total),
        )
    location = save_interest_points(spim, result, params)
    save_spimdata(spim, args.xml)
    print_summary(result, params, console)
    console.print(f"wrote {location} and {args.xml}")
    return 0
