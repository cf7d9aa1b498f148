"""``split_dataset``: the whole split of a dataset, from the original SpimData to the split XML."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata import SpimData
from rhapso_gpu.io.spimdata_xml import save_spimdata
from rhapso_gpu.split.grid import round_up, split_view, step_size
from rhapso_gpu.split.params import SplitParams
from rhapso_gpu.split.points import PointsSummary, write_split_points
from rhapso_gpu.split.views import SubView, build_split_spimdata

log = logging.getLogger("rhapso_gpu")


@dataclass
class SplitResult:
    """What :func:`split_dataset` produced.

    Attributes
    ----------
    spim : SpimData
        The split dataset (already saved at ``spim.location``).
    subviews : list of SubView
    step_xyz, target_size_xyz, overlap_xyz : tuple of int
        The step (coarsest pyramid factors) and the target size and overlap
        rounded up to it, in pixels (x, y, z).
    points : PointsSummary
    """

    spim: SpimData
    subviews: list[SubView]
    step_xyz: tuple[int, int, int]
    target_size_xyz: tuple[int, int, int]
    overlap_xyz: tuple[int, int, int]
    points: PointsSummary


def _folder(location: str) -> str:
    """The folder of a local path (absolute) or URL."""
    return storage.parent(location) if storage.is_remote(location) else os.path.dirname(os.path.abspath(location))


def pyramid_step(spim: SpimData, storage_options: dict | None = None) -> tuple[int, int, int]:
    """Per axis, the least common multiple of every view's pyramid factors (opens the images lazily)."""
    factors = [lvl.factors_xyz for v in spim.view_ids() for lvl in open_view_levels(spim, v, storage_options)]
    return step_size(factors)


def split_dataset(
    original: SpimData, params: SplitParams, out: str, storage_options: dict | None = None
) -> SplitResult:
    """Split every view of ``original`` into sub-views and write the split XML to ``out``.

    Target size and overlap are rounded up to multiples of the pyramid step
    (so every level of a sub-view is an exact crop). The split XML keeps the
    BasePath when ``out`` is in the original XML's folder; elsewhere it gets
    the original BasePath as an absolute path, so images and
    ``interestpoints.n5`` stay where they are. Points go to that
    ``interestpoints.n5`` under new labels (``<label>_split`` and
    ``params.fake_label``) and new setup ids; the original XML is not written.

    Raises
    ------
    UserError
        When a view has no size, or the overlap is not smaller than the target size.
    """
    step = pyramid_step(original, storage_options)
    size = tuple(round_up(s, st) for s, st in zip(params.target_image_size, step))
    overlap = tuple(round_up(o, st) for o, st in zip(params.target_overlap, step))
    for d in range(3):
        if overlap[d] >= size[d]:
            raise UserError(f"target_overlap {list(overlap)} must be smaller than target_image_size {list(size)} "
                            f"(both rounded up to the pyramid step {list(step)}) along {'xyz'[d]}")
    boxes = {}
    for sid, setup in sorted(original.setups.items()):
        if setup.size_xyz is None:
            raise UserError(f"{original.location}: <ViewSetup> id={sid} has no <size>")
        boxes[sid] = split_view(setup.size_xyz, size, overlap, step, not params.disable_optimization)
    split, subviews = build_split_spimdata(original, boxes)
    relative = original.base_path_type != "absolute" and not storage.is_absolute(original.base_path)
    if relative and (original.location is None or _folder(out) != _folder(original.location)):
        base = original.base_location()
        split.base_path = base if storage.is_remote(base) else os.path.abspath(base)
        split.base_path_type = "absolute"
    split.location = out
    points = write_split_points(original, split, subviews, params, step, storage_options)
    save_spimdata(split, out, storage_options)
    log.info("split: %d views into %d sub-views (size %s, overlap %s, step %s); %d fake points in %d overlaps",
             len(original.setups), len(subviews), size, overlap, step, points.fake_points, points.fake_pairs)
    return SplitResult(split, subviews, step, size, overlap, points)

