"""``rhapso-gpu demo``: the README's main job, on a generated dataset.

Generates a dataset with ground truth, shows it, and measures how far its
nominal (stage) registration is from the truth. Later stages (alignment,
fusion, pyramid) join here as they land.
"""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.table import Table

from rhapso_gpu.backend import get_backend
from rhapso_gpu.cli._options import add_common, add_compute
from rhapso_gpu.cli.evaluate import evaluate_xml, print_report
from rhapso_gpu.cli.info import print_info
from rhapso_gpu.cli.synth import add_synth_options, print_result, synth_params
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import check_target, generate_dataset


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="generate a dataset, show it and measure its registration error")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    add_synth_options(p)
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = Console(highlight=False)
    backend = get_backend(args.backend)
    params = synth_params(args)
    times: list[tuple[str, float]] = []
    check_target(args.out)

    console.rule("1. synth: a tiled dataset with known true poses")
    start = time.perf_counter()
    with open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster:
        result = generate_dataset(args.out, params, cluster, backend.name)
        cluster_description = cluster.description
    times.append(("synth", time.perf_counter() - start))
    print_result(result, params, console)

    console.rule("2. info: what the dataset holds")
    start = time.perf_counter()
    print_info(result.xml, images=True, console=console)
    times.append(("info", time.perf_counter() - start))

    console.rule("3. evaluate: nominal stage positions against the truth")
    start = time.perf_counter()
    report = evaluate_xml(result.xml, result.truth)
    times.append(("evaluate", time.perf_counter() - start))
    print_report(report, console, title="error of the nominal registration")

    console.rule("summary")
    table = Table(show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in times:
        table.add_row(name, f"{seconds:.1f}")
    console.print(table)
    console.print(f"backend: {backend.name}; cluster: {cluster_description}")
    console.print(
        f"nominal registration error: RMS {report.rms:.2f} px, max {report.max:.2f} px "
        f"(what alignment has to remove; injected stage error up to {params.translation_error:g} px per axis)"
    )
    console.print(f"outputs: {result.xml}, {result.truth}")
    return 0
