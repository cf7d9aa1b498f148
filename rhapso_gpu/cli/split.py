"""``rhapso-gpu split XML --out SPLIT.xml``: split tall views into overlapping sub-views (BigStitcher's split)."""

from __future__ import annotations

import argparse
import os

from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, output_console
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.params import load_params, parse_set_options
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.split import SplitParams, SplitResult, split_dataset


def add_parser(sub) -> None:
    p = sub.add_parser(
        "split",
        help="split views into overlapping sub-views with fake corresponding points (for split-affine)",
        description="Split every view of XML into sub-views of about target_image_size pixels overlapping by "
        "target_overlap (both rounded up to the coarsest pyramid factors), as BigStitcher's 'Split images' does, "
        "and write a new XML whose split.* image loader wraps the original one. Real interest points are copied "
        "to the sub-views as '<label>_split'; fake points with correspondences tie overlapping sub-views of one "
        "view together. The input XML is never written. Keys: " + ", ".join(SplitParams.model_fields),
    )
    p.add_argument("xml", help="dataset.xml (local path or s3:// URL); read only")
    p.add_argument("--out", required=True, metavar="SPLIT_XML", help="the split XML to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (kept as backup ~1)")
    p.add_argument("--params", metavar="YAML", help="parameter file (see params/split.yml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one parameter")
    add_common(p)
    p.set_defaults(run=run)


def _same_file(a: str, b: str) -> bool:
    if storage.is_remote(a) or storage.is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(a) == os.path.abspath(b) or (
        os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b)
    )


def check_output(xml: str, out: str, overwrite: bool) -> None:
    """Refuse to write the input XML, or an existing output without ``overwrite``."""
    if _same_file(xml, out):
        raise UserError(f"--out {out} is the input XML; split never overwrites its input")
    if storage.exists(out) and not overwrite:
        raise UserError(f"--out {out} exists; pass --overwrite to replace it")


def print_summary(result: SplitResult, console: Console) -> None:
    """One row per original setup: its sub-views' boxes (local pixels, x y z)."""
    table = Table(title="split views (boxes in the original view's pixels, x y z, inclusive)")
    for name in ("old setup", "new setups", "boxes"):
        table.add_column(name, justify="left")
    by_old: dict[int, list] = {}
    for sv in result.subviews:
        by_old.setdefault(sv.old_setup, []).append(sv)
    for old, group in sorted(by_old.items()):
        boxes = "; ".join(f"{sv.min_xyz.tolist()}..{sv.max_xyz.tolist()}" for sv in group)
        table.add_row(str(old), ", ".join(str(sv.setup) for sv in group), boxes)
    console.print(table)
    pts = result.points
    console.print(
        f"{len(by_old)} setups -> {len(result.subviews)} sub-views; target size {list(result.target_size_xyz)}, "
        f"overlap {list(result.overlap_xyz)} (step {list(result.step_xyz)}); {pts.fake_points} fake points in "
        f"{pts.fake_pairs} overlaps, {pts.real_points} real points carried over"
    )


def run(args: argparse.Namespace) -> int:
    params = load_params(SplitParams, args.params, parse_set_options(args.set))
    check_output(args.xml, args.out, args.overwrite)
    spim = load_spimdata(args.xml)
    result = split_dataset(spim, params, args.out)
    console = output_console(args)
    print_summary(result, console)
    console.print(f"wrote {args.out}")
    return 0
