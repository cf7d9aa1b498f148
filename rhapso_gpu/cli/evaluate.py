"""``rhapso-gpu evaluate XML --truth ground_truth.json``: registration error against ground truth."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, output_console
from rhapso_gpu.errors import UserError
from rhapso_gpu.evaluation.registration_error import ErrorReport, registration_error
from rhapso_gpu.geometry import view_affine, view_size_xyz
from rhapso_gpu.io import storage
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.spimdata_xml import load_spimdata


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="how far the XML's registrations are from the ground truth (full-resolution pixels)",
        description="Compare every view's registration with its true pose at points spread through the tile, "
        "after removing one global transform (registrations are only defined up to one), and print RMS and "
        "maximum distances per view and overall, in full-resolution pixels.",
    )
    p.add_argument("xml", help="dataset.xml to evaluate")
    p.add_argument("--truth", required=True, metavar="JSON", help="ground_truth.json written by synth")
    p.add_argument(
        "--remove",
        choices=("affine", "rigid", "translation", "none"),
        default="affine",
        help="global transform removed before measuring (default affine)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    add_common(p)
    p.set_defaults(run=run)


def evaluate_xml(xml: str, truth_location: str, remove: str = "affine") -> ErrorReport:
    """Registration error of every view of ``xml`` that the ground truth knows."""
    spim = load_spimdata(xml)
    truth = load_ground_truth(truth_location)
    missing = [v for v in truth.true_affines if v not in spim.registrations]
    if missing:
        raise UserError(f"{xml}: no registration for {len(missing)} view(s) of {truth_location}, e.g. {missing[0]}")
    views = sorted(truth.true_affines)
    estimated = {v: view_affine(spim, v) for v in views}
    sizes = {v: tuple(view_size_xyz(spim, v)) for v in views}
    return registration_error(estimated, truth.true_affines, sizes, remove=remove)


def print_report(report: ErrorReport, console: Console, title: str = "registration error") -> None:
    table = Table(title=f"{title} (full-resolution px, global {report.remove} removed)")
    table.add_column("view")
    table.add_column("RMS", justify="right")
    table.add_column("max", justify="right")
    for view, err in sorted(report.per_view.items()):
        table.add_row(str(view), f"{err.rms:.3f}", f"{err.max:.3f}")
    table.add_row("[bold]all[/bold]", f"[bold]{report.rms:.3f}[/bold]", f"[bold]{report.max:.3f}[/bold]")
    console.print(table)
    console.print(f"worst view: {report.worst_view}")


def run(args: argparse.Namespace) -> int:
    report = evaluate_xml(args.xml, args.truth, args.remove)
    print_report(report, output_console(args))
    if args.json:
        storage.write_bytes_atomic(args.json, json.dumps(report.to_dict(), indent=1).encode())
    return 0
