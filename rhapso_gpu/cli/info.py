"""``rhapso-gpu info XML``: what a dataset holds, and whether its images can be read."""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
from rich.console import Console
from rich.table import Table

from rhapso_gpu.cli._options import add_common, output_console
from rhapso_gpu.geometry import overlapping_pairs, view_affine, view_box_world
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata_xml import load_spimdata


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="summarise a BigStitcher dataset.xml and check its images")
    p.add_argument("xml", help="dataset.xml (local path or s3:// URL)")
    p.add_argument("--no-images", action="store_true", help="do not open the images (XML only)")
    add_common(p)
    p.set_defaults(run=run)


def _fmt(values, digits=1) -> str:
    return ",".join(f"{v:.{digits}f}" for v in values)


def run(args: argparse.Namespace) -> int:
    print_info(args.xml, images=not args.no_images, console=output_console(args))
    return 0


def print_info(xml: str, images: bool, console: Console) -> None:
    """Print the summary of a dataset; with ``images``, open every view's levels and check them."""
    spim = load_spimdata(xml)
    views = spim.view_ids()
    console.print(f"[bold]dataset[/bold]       {xml}  (view = timepoint/setup)")
    console.print(f"image loader  {spim.image_format}  (base path {spim.base_location()})")
    tp = spim.timepoints
    console.print(
        f"time points   {len(tp.ids)} ({tp.kind}: {', '.join(map(str, tp.ids[:10]))}{' ...' if len(tp.ids) > 10 else ''})"
    )
    console.print(f"setups        {len(spim.setups)}; views {len(views)} ({len(spim.missing_views)} missing)")
    for definition in spim.attribute_definitions:
        console.print(f"  {definition.name + 's':<14}{len(definition.entities)}")
    labels = Counter(ref.label for ref in spim.interest_points)
    if labels:
        console.print("interest points  " + ", ".join(f"{k} ({n} views)" for k, n in sorted(labels.items())))
    for box in spim.bounding_boxes:
        console.print(f"bounding box  {box.name}: {box.min_xyz} .. {box.max_xyz}")
    if spim.stitching_results:
        console.print(f"stitching results  {len(spim.stitching_results)} pairs")
    # views with a registration made only of affines have a world box
    affine_views = [v for v in views if v in spim.registrations and all(t.raw is None for t in spim.registrations[v])]
    console.print(f"overlapping view pairs  {len(overlapping_pairs(spim, affine_views))}")

    voxels = Counter(
        f"{'x'.join(f'{v:g}' for v in vs.size_xyz)} {vs.unit}"
        for vs in (spim.setup(v).voxel_size for v in views)
        if vs is not None
    )
    console.print("voxel sizes   " + "; ".join(f"{k} ({n} views)" for k, n in voxels.items()))
    chains = Counter(tuple(t.name or "(unnamed)" for t in spim.registrations.get(v, [])) for v in views)
    for names, n in chains.most_common():
        console.print(f"transforms    {n} views: " + " <- ".join(names))

    table = Table(title="views (size xyz in pixels; world box in isotropic pixels)")
    for col in ("view", "tile", "ch", "size", "world box min -> max"):
        table.add_column(col, no_wrap=True)
    if images:
        table.add_column("pyramid", no_wrap=True)
    for view in views:
        setup = spim.setup(view)
        row = [
            f"{view.timepoint}/{view.setup}",
            str(setup.attributes.get("tile", "")),
            str(setup.attributes.get("channel", "")),
            "x".join(map(str, setup.size_xyz or ())),
        ]
        if view in affine_views and setup.size_xyz is not None:
            lo, hi = view_box_world(spim, view, view_affine(spim, view))
            row.append(f"{_fmt(lo, 0)} -> {_fmt(hi, 0)}")
        else:
            row.append("")
        if images:
            levels = open_view_levels(spim, view)
            coarsest = "x".join(f"{f:g}" for f in np.asarray(levels[-1].factors_xyz))
            row.append(f"{len(levels)} level{'s' if len(levels) > 1 else ''}" + (f" to {coarsest}" if len(levels) > 1 else ""))
        table.add_row(*row)
    console.print(table)
    if images:
        console.print(f"all {len(views)} views open; level-0 shapes match <size>")
