"""``rhapso-gpu fuse XML OUT.zarr``: fuse registered views into an OME-Zarr volume (optionally with its pyramid)."""

from __future__ import annotations

import argparse

from cpu_fallback.fusion import FUSION_TYPES
from rhapso_gpu.cli._options import add_common, add_compute, output_console, parse_triple
from rhapso_gpu.cli.multiscale import add_pyramid_options, print_pyramid, pyramid_factors
from rhapso_gpu.errors import UserError
from rhapso_gpu.fusion.bdv_xml import write_fused_xml
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.io.params import load_params, parse_set_options
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.multiscale.pyramid import build_pyramid
from rhapso_gpu.scheduler import open_cluster

_FIELDS = FuseParams.model_fields
_TRIPLES = ("chunk_size", "block_scale", "shard_chunks")
_LISTS = ("timepoints", "channels", "illuminations", "tiles", "angles")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fuse",
        help="fuse the registered views into an OME-Zarr volume in world space",
        description="Fuse the selected views (one output channel per channel and one output time point per time "
        "point; tiles, illuminations and angles are fused together) block by block into an OME-Zarr volume. "
        "A rerun with the same inputs resumes: finished blocks are skipped. Values come from PARAMS (YAML, same "
        "names with underscores), then --set key=value, then the options below.",
    )
    p.add_argument("xml", help="dataset.xml with the registrations to apply (local or s3://)")
    p.add_argument("out", help="output OME-Zarr container, e.g. fused.ome.zarr (local or s3://)")
    p.add_argument("--params", metavar="YAML", help="parameter file (keys as the options below)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set one parameter (YAML value); repeatable")
    g = p.add_argument_group("fusion")

    def opt(name, **kw):
        field = _FIELDS[name]
        default = field.default
        shown = "x".join(map(str, default)) if isinstance(default, tuple) else default
        g.add_argument(
            "--" + name.replace("_", "-"), dest=name, default=None, help=f"{field.description} (default {shown})", **kw
        )

    opt("fusion", choices=FUSION_TYPES)
    opt("data_type", choices=("uint8", "uint16", "float32"))
    opt("min_intensity", type=float, metavar="V")
    opt("max_intensity", type=float, metavar="V")
    opt("bounding_box", metavar="NAME")
    g.add_argument(
        "--preserve-anisotropy",
        dest="preserve_anisotropy",
        action="store_const",
        const=True,
        default=None,
        help="keep the z spacing of the input (default off)",
    )
    opt("anisotropy_factor", type=float, metavar="F")
    opt("downsampling", type=int, metavar="N")
    opt("blending_range", type=float, metavar="PX")
    opt("blending_border", type=float, metavar="PX")
    opt("chunk_size", metavar="XxYxZ")
    opt("block_scale", metavar="XxYxZ")
    opt("ngff_version", choices=("0.4", "0.5"))
    opt("shard_chunks", metavar="XxYxZ")
    for name in _LISTS:
        opt(name, metavar="ID,ID")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output instead of resuming it")
    g.add_argument("--multiscale", action="store_true", help="also write the pyramid (see rhapso-gpu multiscale)")
    g.add_argument(
        "--bdv-xml",
        metavar="XML",
        help="also write a BigStitcher/BigDataViewer dataset.xml for the fused volume (opens in Fiji)",
    )
    add_pyramid_options(p)
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def fuse_params(args: argparse.Namespace) -> FuseParams:
    """Validated parameters: ``--params`` file, then ``--set``, then the options given."""
    overrides = parse_set_options(args.set)
    for name in _FIELDS:
        value = getattr(args, name, None)
        if value is None:
            continue
        if name in _TRIPLES:
            value = parse_triple(value, "--" + name.replace("_", "-"), int)
        elif name in _LISTS:
            try:
                value = [int(v) for v in str(value).replace(" ", "").split(",") if v]
            except ValueError:
                raise UserError(f"--{name} '{value}': expected ids like 0,2,3") from None
        overrides[name] = value
    return load_params(FuseParams, args.params, overrides)


def run(args: argparse.Namespace) -> int:
    params = fuse_params(args)
    spim = load_spimdata(args.xml)
    console = output_console(args, soft_wrap=True)
    with open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster:
        with cluster.stage("fuse"):
            result = fuse_dataset(spim, args.out, params, cluster, args.backend, overwrite=args.overwrite)
        shape = " x ".join(map(str, result.shape_tczyx))
        voxel = " x ".join(f"{v:g}" for v in result.voxel_size_xyz)
        console.print(
            f"fused {result.n_views} views ({params.fusion}, {params.data_type}) into {result.location}: "
            f"(t, c, z, y, x) {shape}, voxel {voxel} {result.unit} (xyz), {result.n_blocks} blocks "
            f"({result.n_skipped} already done) in {result.seconds:.1f} s"
        )
        if args.multiscale:
            with cluster.stage("multiscale"):
                pyramid = build_pyramid(args.out, pyramid_factors(args, args.out), cluster, args.backend)
            console.print(f"wrote {len(pyramid.factors_xyz) - 1} pyramid level(s) in {pyramid.seconds:.1f} s")
            print_pyramid(pyramid, console)
    if args.bdv_xml:
        console.print(f"wrote {write_fused_xml(result.plan, args.out, args.bdv_xml)}")
    return 0
