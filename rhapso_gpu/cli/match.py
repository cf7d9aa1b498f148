"""``rhapso-gpu match XML``: pairwise interest-point matching (descriptors + RANSAC, or ICP)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, add_compute, output_console
from rhapso_gpu.io.params import load_params, parse_set_options
from rhapso_gpu.io.spimdata import SpimData
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.matching.views import PairResult, match_dataset, store_results
from rhapso_gpu.scheduler import open_cluster


def add_parser(sub) -> None:
    p = sub.add_parser(
        "match",
        help="match interest points between overlapping views (writes correspondences to interestpoints.n5)",
        description="Match the interest points of every pair of overlapping views in world space (current "
        "registrations) with geometric descriptors and batched RANSAC, or with ICP, and store the "
        "correspondences in interestpoints.n5 as BigStitcher does (replacing earlier ones of the labels). "
        "Values come from --params (YAML), then --set, then the options below.",
    )
    p.add_argument("xml", help="dataset.xml with detected interest points")
    p.add_argument("--model", choices=("translation", "rigid", "affine"), default=None, help="model (default affine)")
    p.add_argument(
        "--method",
        choices=("fast-rotation", "fast-translation", "precise-translation", "offset-consensus", "icp"),
        default=None,
        help="descriptor method (default fast-rotation); offset-consensus for sparse points and thin overlaps; "
        "or icp from the current registrations",
    )
    p.add_argument("--label", action="append", default=None, help="label to match (repeatable; default beads)")
    p.add_argument("--params", metavar="YAML", help="parameter file (keys as MatchParams, see params/match.yml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one parameter (repeatable)")
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def match_params(args: argparse.Namespace) -> MatchParams:
    """Validated parameters: --params file, then --set, then the explicit options."""
    overrides = parse_set_options(args.set)
    for name in ("model", "method"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.label:
        overrides["labels"] = args.label
    return load_params(MatchParams, args.params, overrides)


def _side(views) -> str:
    """A view as ``timepoint/setup``, or a group of views joined by '+'."""
    return "+".join(f"{v.timepoint}/{v.setup}" for v in views)


def _labels(r: PairResult) -> str:
    """The pair's label, or ``labelA-labelB`` when labels are matched across."""
    return r.label_a if r.label_a == r.label_b else f"{r.label_a}-{r.label_b}"


def print_results(results: list[PairResult], console: Console, method: str) -> None:
    """The per-pair summary table and the failed pairs with their reasons.

    ``method`` is the requested method, to count the pairs its fallback matched. ``inliers`` and ``ratio``
    are RANSAC's (of the candidates), ``matches`` the correspondences stored after guided matching and
    cross-validation. ``links`` counts the pairs of views that received correspondences
    (more than one when groups are matched); the ``method`` column is the method that
    matched the pair (the fallback where the descriptors failed).
    """
    table = Table(title="pairwise matching (views as timepoint/setup; distances in world units)")
    for col, justify in (("pair", "left"), ("label", "left"), ("points", "right"), ("cand.", "right"),
                         ("inliers", "right"), ("ratio", "right"), ("matches", "right"), ("RMS", "right"), ("links", "right"),
                         ("method", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for r in results:
        m = r.match
        ok = m.ok
        table.add_row(
            f"{_side(r.a)} - {_side(r.b)}",
            _labels(r),
            f"{r.points_a}/{r.points_b}",
            str(m.candidates),
            str(m.ransac_inliers) if ok else "[red]failed[/red]",
            f"{m.inlier_ratio:.2f}" if ok else "",
            str(m.index_a.size) if ok else "",
            f"{m.rms:.3f}" if ok else "",
            str(len(r.links)) if ok else "",
            r.method if ok else "",
        )
    console.print(table)
    failed = [r for r in results if not r.match.ok]
    n_ok = len(results) - len(failed)
    fallback = sum(1 for r in results if r.match.ok and r.method != method)
    console.print(f"{n_ok} of {len(results)} pairs matched" + (f" ({fallback} by the fallback)" if fallback else ""))
    for r in failed:
        console.print(f"  [red]not matched[/red] {_side(r.a)} - {_side(r.b)} ({_labels(r)}): {r.match.reason}")


@dataclass(frozen=True)
class Matched:
    """What :func:`match_xml` did.

    Attributes
    ----------
    results : list of PairResult
        Every matched (or failed) pair.
    summary : str
        One line: pairs matched, correspondences, method and model.
    """

    results: list[PairResult]
    summary: str


def match_xml(xml: str, backend: str, params: MatchParams, cluster, spim: SpimData | None = None) -> Matched:
    """Match the interest points of the overlapping views of ``xml``; store the correspondences.

    The correspondences go to ``interestpoints.n5`` (replacing earlier ones of
    the labels); the XML itself is not changed.

    Parameters
    ----------
    xml : str
        dataset.xml with detected interest points, local path or URL.
    backend : {'auto', 'numpy', 'cupy'}
        Backend the workers compute with.
    params : MatchParams
    cluster : rhapso_gpu.scheduler.Cluster
    spim : SpimData, optional
        ``xml`` already loaded (default: load it).
    """
    spim = load_spimdata(xml) if spim is None else spim
    results = match_dataset(spim, params, cluster, backend)
    store_results(spim, results, params)
    ok = [r for r in results if r.match.ok]
    n = sum(int(r.match.index_a.size) for r in ok)
    return Matched(results, f"{len(ok)} of {len(results)} pairs matched, {n} correspondences "
                            f"({params.method}, {params.model})")


def run(args: argparse.Namespace) -> int:
    params = match_params(args)
    spim = load_spimdata(args.xml)  # bad input fails before workers start
    start = time.perf_counter()
    with (
        open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster,
        cluster.stage("match"),
    ):
        matched = match_xml(args.xml, args.backend, params, cluster, spim)
    console = output_console(args)
    print_results(matched.results, console, params.method)
    console.print(f"matched in {time.perf_counter() - start:.1f} s; correspondences written to interestpoints.n5")
    return 0
