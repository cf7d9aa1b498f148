"""``rhapso-gpu stitch XML``: pairwise shifts of overlapping views by phase correlation (BigStitcher's stitching)."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, add_compute, output_console
from rhapso_gpu.io.params import load_params, parse_set_options
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.stitching import PairStitch, StitchParams, stitch_dataset, store_stitching_results


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stitch",
        help="pairwise shifts of overlapping views by phase correlation (writes <StitchingResults>)",
        description="Calculate pairwise shifts as BigStitcher's stitching does: both views of every overlapping "
        "pair are resampled into their overlap (widened by max_shift) in world space with their current "
        "registrations, phase correlation proposes peaks, the cross-correlation r of the overlapping parts "
        "picks one, refined to sub-pixel; pairs below min_r are rejected. Accepted shifts are stored as "
        "<StitchingResults> in the XML (backups ~1..~5); `rhapso-gpu solve --set links=stitching` then solves "
        "from them. Values come from --params (YAML, see params/stitch.yml), then --set.",
    )
    p.add_argument("xml", help="dataset.xml")
    p.add_argument("--params", metavar="YAML", help="parameter file (keys as StitchParams, see params/stitch.yml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def _view(v) -> str:
    return f"{v.timepoint}/{v.setup}"


def print_results(results: list[PairStitch], console: Console) -> None:
    """The per-pair table: shift (world px, xyz), r, and accepted or the reason for rejection."""
    table = Table(title="pairwise shifts (views as timepoint/setup; shift of B onto A in world px, xyz)")
    for col, justify in (("pair", "left"), ("shift x", "right"), ("shift y", "right"), ("shift z", "right"),
                         ("r", "right"), ("result", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "result")
    for r in results:
        shift = ["", "", ""] if r.shift_xyz is None else [f"{v:.2f}" for v in r.shift_xyz]
        table.add_row(f"{_view(r.a)} - {_view(r.b)}", *shift, f"{r.r:.3f}",
                      "accepted" if r.accepted else f"[red]rejected[/red]: {r.reason}")
    console.print(table)
    console.print(f"{sum(r.accepted for r in results)} of {len(results)} pairs accepted")


def run(args: argparse.Namespace) -> int:
    params = load_params(StitchParams, args.params, parse_set_options(args.set))
    spim = load_spimdata(args.xml)
    start = time.perf_counter()
    with (
        open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster,
        cluster.stage("stitch"),
    ):
        results = stitch_dataset(spim, params, cluster, args.backend)
    store_stitching_results(spim, results)
    save_spimdata(spim, args.xml)
    console = output_console(args)
    print_results(results, console)
    console.print(f"stitched in {time.perf_counter() - start:.1f} s; results written to {args.xml}")
    return 0
