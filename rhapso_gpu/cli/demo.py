"""``rhapso-gpu demo``: the README's main job, end to end on a generated dataset.

synth (a tiled dataset with known true poses) -> evaluate the nominal stage
positions -> align (detect, match, solve rigid then affine) -> evaluate again
-> fuse into OME-Zarr with its pyramid. It prints the accuracy before and
after alignment, the time of every stage, the backend and where the outputs are.
"""

from __future__ import annotations

import argparse
import time

from rich.table import Table

from rhapso_gpu.backend import get_backend
from rhapso_gpu.cli._options import add_common, add_compute, output_console
from rhapso_gpu.cli.align import AlignParams, run_alignment
from rhapso_gpu.cli.evaluate import evaluate_xml, print_report
from rhapso_gpu.cli.info import print_info
from rhapso_gpu.cli.synth import add_synth_options, print_result, synth_params
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.io import storage
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.multiscale.pyramid import build_pyramid
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import check_target, generate_dataset

FUSED_NAME = "fused.ome.zarr"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a dataset, align it, measure the error against the truth, fuse it",
        description="End to end on a generated dataset: synth, evaluate the nominal registration, align "
        "(detect, match, solve rigid and affine), evaluate again, fuse into OME-Zarr with a pyramid.",
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--no-fuse", action="store_true", help="stop after the alignment")
    add_synth_options(p)
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console = output_console(args)
    backend = get_backend(args.backend)
    params = synth_params(args)
    check_target(args.out)
    times: list[tuple[str, float]] = []

    def timed(name, fn):
        start = time.perf_counter()
        with cluster.stage(name):
            value = fn()
        times.append((name, time.perf_counter() - start))
        return value

    with open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster:
        console.rule("1. synth: a tiled dataset with known true poses")
        result = timed("synth", lambda: generate_dataset(args.out, params, cluster, backend.name))
        print_result(result, params, console)
        print_info(result.xml, images=True, console=console)

        console.rule("2. evaluate: nominal stage positions against the truth")
        nominal = timed("evaluate", lambda: evaluate_xml(result.xml, result.truth))
        print_report(nominal, console, title="error of the nominal registration")

        console.rule("3. align: detect, match, solve rigid, match, solve affine")
        with cluster.stage("align"):
            rows = run_alignment(result.xml, AlignParams(), cluster, backend.name, console)
        times.extend((name, seconds) for name, seconds, _ in rows if seconds is not None)

        console.rule("4. evaluate: aligned registration against the truth")
        aligned = timed("evaluate", lambda: evaluate_xml(result.xml, result.truth))
        print_report(aligned, console, title="error after alignment")

        fused = None
        if not args.no_fuse:
            console.rule("5. fuse: OME-Zarr volume and pyramid")
            fused_location = storage.join(args.out, FUSED_NAME)
            spim = load_spimdata(result.xml)
            fused = timed(
                "fuse",
                lambda: fuse_dataset(spim, fused_location, FuseParams(data_type="uint16"), cluster, backend.name,
                                     overwrite=True),
            )
            pyramid = timed("multiscale", lambda: build_pyramid(fused_location, None, cluster, backend.name))
            console.print(
                f"fused {fused.n_views} views into {fused.location}: (t, c, z, y, x) "
                f"{' x '.join(map(str, fused.shape_tczyx))}, {len(pyramid.factors_xyz)} pyramid levels"
            )
        cluster_description = cluster.description

    console.rule("summary")
    table = Table()
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in times:
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("[bold]total[/bold]", f"[bold]{sum(s for _, s in times):.1f}[/bold]")
    console.print(table)
    console.print(f"backend: {backend.name}; cluster: {cluster_description}")
    console.print(
        f"registration error (full-resolution px, RMS / max): nominal {nominal.rms:.2f} / {nominal.max:.2f} "
        f"-> aligned {aligned.rms:.3f} / {aligned.max:.3f}"
    )
    console.print(f"outputs: {result.xml} (aligned), {result.truth}" + (f", {fused.location}" if fused else ""))
    return 0
