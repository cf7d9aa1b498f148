"""``rhapso-gpu solve XML``: global optimisation of the views' registrations from the stored matches."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, output_console
from rhapso_gpu.io.params import load_params, parse_set_options
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.solver import SolveParams, apply_solution, build_report, report_location, solve_dataset, write_report


def add_parser(sub) -> None:
    p = sub.add_parser(
        "solve",
        help="global optimisation: one model per view from the stored matches (updates the XML)",
        description="Solve one model per view (translation, rigid, affine, or affine regularised towards "
        "another model) from the correspondences in interestpoints.n5, as BigStitcher's global optimisation "
        "does, but with direct sparse solves. Wrong links are removed (BigStitcher's thresholds) and views "
        "without matches are placed by their metadata overlaps. The result is pre-concatenated to every "
        "registration (XML saved with backups ~1..~5) and a JSON report of per-link residuals goes next to "
        "the XML. Values come from --params (YAML), then --set, then the options below.",
    )
    p.add_argument("xml", help="dataset.xml with matched interest points")
    p.add_argument("--model", choices=("translation", "rigid", "affine"), default=None, help="model (default affine)")
    p.add_argument("--lambda", dest="lam", type=float, default=None, help="affine regularisation weight (default 0.1)")
    p.add_argument("--fixed", action="append", default=None, metavar="TP,SETUP",
                   help="view held fixed (repeatable; default: first view of every time point)")
    p.add_argument("--label", action="append", default=None, help="label whose matches are used (default beads)")
    p.add_argument("--report", metavar="JSON", help="report location (default: <xml stem>.solve-<model>.json)")
    p.add_argument("--params", metavar="YAML", help="parameter file (keys as SolveParams, see params/solve.yml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    add_common(p)
    p.set_defaults(run=run)


def solve_params(args: argparse.Namespace) -> SolveParams:
    """Validated parameters: --params file, then --set, then the explicit options."""
    overrides = parse_set_options(args.set)
    for key, value in (("model", args.model), ("lambda", args.lam), ("fixed_views", args.fixed),
                       ("labels", args.label)):
        if value is not None:
            overrides[key] = value
    return load_params(SolveParams, args.params, overrides)


def print_report(report: dict, console: Console, title: str = "global optimisation") -> None:
    """A short summary: residuals, the worst link and tile, removed links, views placed by metadata."""
    table = Table(title=f"{title}: {report['model']} (residuals in world px)")
    for col in ("links", "matches", "RMS", "max", "worst link", "worst tile", "removed", "by metadata"):
        table.add_column(col, justify="left" if col.startswith("worst") else "right")
    wl, wt = report["worst_link"], report["worst_tile"]
    table.add_row(
        str(report["links"]), str(report["matches"]),
        "" if report["rms"] is None else f"{report['rms']:.3f}",
        "" if report["max"] is None else f"{report['max']:.3f}",
        "" if wl is None else f"{wl['a']}-{wl['b']} (max {wl['max']:.2f})",
        "" if wt is None else f"{wt['view']} (mean {wt['mean']:.2f})",
        str(len(report["removed_links"])), str(len(report["placed_by_metadata"])),
    )
    console.print(table)
    if report.get("groups"):
        console.print(f"  one model per group: {len(report['groups'])} groups of views "
                      f"({', '.join('+'.join(g) for g in report['groups'][:3])}{', ...' if len(report['groups']) > 3 else ''})")
    sel = report.get("model_selection")
    if sel:
        f_text = "n/a" if sel["F"] is None else f"{sel['F']:.3g}"
        console.print(f"  model selection: {sel['chosen']} (F = {f_text}, p = {sel['p']:.3g}; residual sum of "
                      f"squares affine {sel['rss_affine']:.4g}, rigid {sel['rss_rigid']:.4g})")
    for r in report["removed_links"]:
        console.print(f"  [yellow]removed link[/yellow] {r['a']} - {r['b']}: mean residual {r['error']:.2f} "
                      f"(tile errors avg {r['avg_tile_error']:.2f}, max {r['max_tile_error']:.2f})")
    for v in report["placed_by_metadata"]:
        console.print(f"  [yellow]not matched to a fixed view[/yellow] {v}: placed by metadata overlaps (weak links)")
    for v in report["unplaced"]:
        console.print(f"  [red]not placed[/red] {v}: no matches and no overlap with a placed view")
    for c in report["convergence"]:
        if not c["converged"]:
            console.print(f"  [red]not converged[/red] {c['solve']}: last change {c['last_change']} after "
                          f"{c['iterations']} iterations (raise max_iterations)")


def solve_xml(xml: str, params: SolveParams, report_path: str | None = None) -> tuple[dict, str]:
    """Solve, save the XML (with backups) and the report; returns the report and its location."""
    spim = load_spimdata(xml)
    solved = solve_dataset(spim, params)
    apply_solution(spim, solved)
    save_spimdata(spim, xml)
    report = build_report(solved, params)
    location = write_report(report, report_path or report_location(xml, params.model))
    return report, location


def run(args: argparse.Namespace) -> int:
    params = solve_params(args)
    start = time.perf_counter()
    report, location = solve_xml(args.xml, params, args.report)
    console = output_console(args)
    print_report(report, console)
    console.print(f"solved {report['views']} views in {time.perf_counter() - start:.1f} s; "
                  f"wrote {args.xml} and {location}")
    return 0
