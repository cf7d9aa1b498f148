"""``rhapso-gpu synth OUT_DIR``: a synthetic tiled dataset with ground truth."""

from __future__ import annotations

import argparse

from rich.console import Console

from rhapso_gpu.cli._options import add_common, add_compute, output_console, parse_triple
from rhapso_gpu.io.params import load_params
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import SynthParams, SynthResult, check_target, generate_dataset

_FIELDS = SynthParams.model_fields


def add_parser(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a tiled dataset with known true poses (dataset.xml, images, ground_truth.json)",
        description="Generate a tiled dataset: dataset.xml with the NOMINAL stage poses, the images, and "
        "ground_truth.json with the TRUE poses and bead positions. Values default to PARAMS (YAML with the "
        "same names, underscores for dashes), then to the defaults shown.",
    )
    p.add_argument("out_dir", help="output folder (local or s3://)")
    p.add_argument("--params", metavar="YAML", help="parameter file (keys as the options below)")
    add_synth_options(p)
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def add_synth_options(p: argparse.ArgumentParser) -> None:
    """The dataset options, shared with ``demo``."""
    g = p.add_argument_group("dataset")

    def opt(name, **kw):
        field = _FIELDS[name]
        default = field.default
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        g.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"{field.description} (default {shown})", **kw)

    opt("tiles", metavar="XxYxZ")
    opt("tile_size", metavar="XxYxZ")
    opt("overlap", type=float, metavar="F")
    opt("voxel_size", metavar="XxYxZ")
    opt("unit")
    opt("translation_error", type=float, metavar="PX")
    opt("rotation_error", type=float, metavar="DEG")
    opt("affine_error", type=float, metavar="F")
    opt("content", choices=("beads+tissue", "beads", "nuclei"))
    opt("bead_density", type=float, metavar="N")
    opt("format", choices=("zarr", "n5", "tiff"))
    opt("ngff_version", choices=("0.4", "0.5"))
    opt("levels", type=int, metavar="N")
    opt("seed", type=int, metavar="N")
    g.add_argument("--no-noise", dest="noise", action="store_const", const=False, default=None, help="no Poisson noise")


def synth_params(args: argparse.Namespace, defaults: dict | None = None) -> SynthParams:
    """Validated parameters from ``--params``, then the options given (then ``defaults``, then the model's)."""
    overrides = dict(defaults or {})
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in ("tiles", "tile_size"):
            value = parse_triple(value, "--" + name.replace("_", "-"), int)
        elif name == "voxel_size":
            value = parse_triple(value, "--voxel-size", float)
        overrides[name] = value
    return load_params(SynthParams, getattr(args, "params", None), overrides)


def print_result(result: SynthResult, params: SynthParams, console: Console) -> None:
    levels = ", ".join("x".join(map(str, f)) for f in result.factors_xyz)
    console.print(
        f"wrote {result.n_views} views ({params.content}, {params.format}, pyramid factors {levels}) "
        f"in {result.seconds:.1f} s"
    )
    console.print(f"  {result.xml}")
    console.print(f"  {result.truth}")


def run(args: argparse.Namespace) -> int:
    params = synth_params(args)
    check_target(args.out_dir)  # before starting any workers
    with (
        open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster,
        cluster.stage("synth"),
    ):
        result = generate_dataset(args.out_dir, params, cluster, args.backend)
    print_result(result, params, output_console(args))
    return 0
