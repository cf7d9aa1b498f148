"""``rhapso-gpu multiscale ZARR``: write the block-mean pyramid of an OME-Zarr volume."""

from __future__ import annotations

import argparse
import logging

from rich.console import Console

from rhapso_gpu.cli._options import add_common, add_compute, output_console, parse_triple
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import ome_zarr
from rhapso_gpu.multiscale.pyramid import MIN_SIZE, PyramidResult, build_pyramid, propose_factors
from rhapso_gpu.scheduler import open_cluster

log = logging.getLogger("rhapso_gpu")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "multiscale",
        help="write the multiscale pyramid (block means, OME-NGFF metadata) of an OME-Zarr volume",
        description="Replace the levels above 0 of an OME-Zarr container (as written by fuse) by block-mean "
        "levels, one task per block, with OME-NGFF scale and half-voxel translation per level.",
    )
    p.add_argument("zarr", help="OME-Zarr container (local or s3://)")
    add_pyramid_options(p)
    add_compute(p)
    add_common(p)
    p.set_defaults(run=run)


def add_pyramid_options(p: argparse.ArgumentParser) -> None:
    """``--factors`` and ``--levels``, shared with ``fuse --multiscale``."""
    g = p.add_argument_group("pyramid")
    g.add_argument(
        "--factors",
        action="append",
        metavar="XxYxZ",
        help="factors of one level relative to the one below; repeat per level "
        "(default: 2x2x2, 2x2x1 while z is 2x coarser, up to a top level of at most 256 voxels per axis)",
    )
    g.add_argument("--levels", type=int, metavar="N", help="number of levels including level 0 (default: automatic)")


def pyramid_factors(args: argparse.Namespace, location: str) -> list[tuple[int, int, int]] | None:
    """Relative factors from ``--factors``/``--levels``; None for the automatic proposal."""
    if args.factors:
        factors = [parse_triple(f, "--factors", int) for f in args.factors]
        if args.levels is not None and args.levels != len(factors) + 1:
            raise UserError(f"--levels {args.levels} disagrees with {len(factors)} --factors (plus level 0)")
        return factors
    if args.levels is None:
        return None
    if args.levels < 1:
        raise UserError(f"--levels {args.levels}: must be at least 1")
    info = ome_zarr.read_multiscale_info(location)
    shape_zyx = ome_zarr.open_level(location, 0).shape[2:]
    factors = propose_factors(shape_zyx, info.voxel_size_xyz, max_levels=args.levels)
    if len(factors) + 1 < args.levels:
        log.warning(
            "multiscale: only %d level(s) fit %s (xyz) without an axis below %d voxels (asked for %d)",
            len(factors) + 1,
            "x".join(map(str, shape_zyx[::-1])),
            MIN_SIZE,
            args.levels,
        )
    return factors


def print_pyramid(result: PyramidResult, console: Console) -> None:
    for level, (f, shape) in enumerate(zip(result.factors_xyz, result.shapes_zyx)):
        console.print(f"  level {level}: {' x '.join(map(str, shape[::-1]))} (xyz), factors {'x'.join(map(str, f))}")


def run(args: argparse.Namespace) -> int:
    factors = pyramid_factors(args, args.zarr)
    with (
        open_cluster(args.cluster, n_workers=args.workers, memory_limit=args.memory_limit) as cluster,
        cluster.stage("multiscale"),
    ):
        result = build_pyramid(args.zarr, factors, cluster, args.backend)
    console = output_console(args, soft_wrap=True)
    console.print(
        f"wrote {len(result.factors_xyz) - 1} pyramid level(s) in {result.seconds:.1f} s ({result.n_tasks} tasks)"
    )
    print_pyramid(result, console)
    return 0
