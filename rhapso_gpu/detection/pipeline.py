"""DoG interest-point detection of whole datasets: views -> blocks -> points -> ``interestpoints.n5``.

:func:`detect_interest_points` plans every view (pyramid level, 2x steps,
blocks, overlap boxes), runs the blocks on the cluster in batches (reporting
progress), then per view merges the blocks' peaks in the C order of their
initial extremum, applies ``threshold: auto``, maps them to full-resolution
local pixels, merges close points and limits their number.
:func:`save_interest_points` writes them as BigStitcher does and records the
``<ViewInterestPointsFile>`` entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dask
import numpy as np

from rhapso_gpu.detection.blocks import BlockTask, auto_strength, detect_block, plan_blocks
from rhapso_gpu.detection.downsampling import DownsamplePlan, plan_downsampling
from rhapso_gpu.detection.intensity_range import robust_range
from rhapso_gpu.detection.overlap import overlap_boxes_zyx
from rhapso_gpu.detection.params import DetectParams
from rhapso_gpu.detection.selection import auto_threshold, brightest, brightest_per_box, combine_close
from rhapso_gpu.errors import UserError
from rhapso_gpu.geometry import apply_affine
from rhapso_gpu.io.images import PyramidLevel, open_view_levels
from rhapso_gpu.io.interestpoints import container_location, set_interest_points_ref, write_interest_points
from rhapso_gpu.io.n5 import N5Container
from rhapso_gpu.io.spimdata import SpimData, ViewId
from rhapso_gpu.io.spimdata_xml import format_number

log = logging.getLogger("rhapso_gpu")

_FIELDS = {  # what detect_block returns: name -> (dtype, trailing shape)
    "start_zyx": (np.int64, (3,)),
    "position_zyx": (np.float64, (3,)),
    "kind": (np.int8, ()),
    "value": (np.float64, ()),
    "initial_value": (np.float32, ()),
    "intensity": (np.float32, ()),
    "box": (np.int64, ()),
}


@dataclass
class ViewPoints:
    """The detected points of one view.

    Attributes
    ----------
    view : ViewId
    loc_xyz : numpy.ndarray of float64, shape (N, 3)
        Full-resolution local pixel coordinates (x, y, z); row = id.
    intensity : numpy.ndarray of float32, shape (N,)
        Image intensity at each point (downsampled, un-normalised image).
    value : numpy.ndarray of float64, shape (N,)
        Refined DoG value (normalised units; negative for image maxima).
    threshold : float
        The threshold used (for ``threshold: auto``, the one chosen; the lowest
        of the overlaps' with ``auto_per: overlap``).
    plan : DownsamplePlan
    n_blocks : int
    """

    view: ViewId
    loc_xyz: np.ndarray
    intensity: np.ndarray
    value: np.ndarray
    threshold: float
    plan: DownsamplePlan
    n_blocks: int


@dataclass
class DetectionResult:
    """Points of every processed view, and the values the run chose."""

    views: dict[ViewId, ViewPoints] = field(default_factory=dict)
    min_intensity: float = 0.0
    max_intensity: float = 1.0
    seconds: float = 0.0
    n_voxels: int = 0
    """Downsampled voxels processed (block cores)."""


@dataclass
class _ViewPlan:
    view: ViewId
    levels: list[PyramidLevel]
    plan: DownsamplePlan
    boxes_zyx: np.ndarray | None
    tasks: list[BlockTask] = field(default_factory=list)


class _LevelRegion:
    """A region of a lazy level, read inside the block's own task.

    Dask does not look inside this holder (a plain class: dask unpacks
    dataclasses), so the region is not turned into separate chunk tasks that
    another worker might run: each block reads its own data where it runs.
    """

    def __init__(self, level, slices_zyx: tuple[slice, slice, slice]):
        self.level = level  # a rhapso_gpu.io.images.PyramidLevel
        self.slices_zyx = slices_zyx

    def read(self) -> np.ndarray:
        return self.level.read_region_zyx(self.slices_zyx)


def _detect_region(region: _LevelRegion, task: BlockTask, backend_name: str) -> dict[str, np.ndarray]:
    return detect_block(region.read(), task, backend_name)


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _merge(results: list[dict]) -> dict[str, np.ndarray]:
    if not results:
        return {k: np.zeros((0, *shape), dtype=dtype) for k, (dtype, shape) in _FIELDS.items()}
    merged = {k: np.concatenate([r[k] for r in results]) for k in _FIELDS}
    order = np.lexsort(merged["start_zyx"].T[::-1])  # C order of the initial extremum: block-independent
    return {k: v[order] for k, v in merged.items()}


def _finish_view(vp: _ViewPlan, peaks: dict[str, np.ndarray], params: DetectParams) -> ViewPoints:
    threshold = params.threshold
    if threshold == "auto":  # per view, or per overlap box (points are grouped by their first box)
        strength = auto_strength(peaks["value"], peaks["initial_value"])
        if params.auto_per == "overlap":
            groups = [np.flatnonzero(peaks["box"] == b) for b in np.unique(peaks["box"])]
        else:
            groups = [np.arange(len(strength))]
        keep, chosen = [], []
        for members in groups:
            t = auto_threshold(strength[members], params.auto_points, params.auto_min_threshold)
            chosen.append(t)
            keep.append(members[strength[members] > t] if len(members) > params.auto_points else members)
        keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        peaks = {k: v[keep] for k, v in peaks.items()}
        threshold = min(chosen) if chosen else params.auto_min_threshold
    loc = apply_affine(vp.plan.to_full_res_xyz, peaks["position_zyx"][:, ::-1])
    keep = combine_close(loc, np.abs(peaks["value"]), params.combine_distance)
    if params.max_spots > 0:
        if params.max_spots_per_overlap and vp.boxes_zyx is not None:
            sizes = np.prod(vp.boxes_zyx[:, 1, :] - vp.boxes_zyx[:, 0, :] + 1, axis=1)
            keep = keep[brightest_per_box(peaks["intensity"][keep], peaks["box"][keep], sizes, params.max_spots)]
        else:
            keep = keep[brightest(peaks["intensity"][keep], params.max_spots)]
    return ViewPoints(
        vp.view, loc[keep], peaks["intensity"][keep], peaks["value"][keep], float(threshold), vp.plan, len(vp.tasks)
    )


def detect_interest_points(
    spim: SpimData,
    params: DetectParams,
    cluster,
    backend_name: str = "numpy",
    views: list[ViewId] | None = None,
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DetectionResult:
    """Detect DoG interest points in views of a dataset.

    Parameters
    ----------
    spim : SpimData
    params : DetectParams
    cluster : rhapso_gpu.scheduler.Cluster
        Where blocks run (``cluster.compute``); batches of
        ``4 * cluster.n_workers`` blocks at a time, each batch's progress bar
        labelled with the blocks it holds.
    backend_name : {'numpy', 'cupy'}
        Backend the workers compute with.
    views : list of ViewId, optional
        Default: every present view.
    storage_options : dict, optional
        fsspec options for remote images.
    progress : callable, optional
        ``progress(done_blocks, total_blocks)`` after each batch.

    Returns
    -------
    DetectionResult
    """
    start = time.perf_counter()
    views = sorted(views if views is not None else spim.view_ids())
    plans = []
    for view in views:
        levels = open_view_levels(spim, view, storage_options)
        plan = plan_downsampling(
            [(lv.factors_xyz, lv.data_zyx.shape) for lv in levels], params.dsxy, params.dsz, where=str(view)
        )
        boxes = None
        if params.overlap_only:
            boxes, _ = overlap_boxes_zyx(spim, view, views, plan.to_full_res_xyz, plan.shape_zyx)
            if len(boxes) == 0:
                log.warning("detect: %s overlaps no other view; overlap_only leaves it without points", view)
        plans.append(_ViewPlan(view, levels, plan, boxes))

    result = DetectionResult()
    if params.min_intensity is None or params.max_intensity is None:
        low, high = robust_range([vp.levels[-1].data_zyx for vp in plans], cluster)
        result.min_intensity = low if params.min_intensity is None else params.min_intensity
        result.max_intensity = high if params.max_intensity is None else params.max_intensity
    else:
        result.min_intensity, result.max_intensity = params.min_intensity, params.max_intensity
    if not result.max_intensity > result.min_intensity:
        raise UserError(
            f"max_intensity ({result.max_intensity:g}) must be larger than min_intensity ({result.min_intensity:g})"
        )

    auto = params.threshold == "auto"
    if auto and params.auto_per == "overlap" and not params.overlap_only:
        raise UserError("auto_per: overlap needs overlap_only: true (the overlaps are what gets the target count)")
    threshold = params.auto_min_threshold if auto else float(params.threshold)
    for vp in plans:
        vp.tasks = plan_blocks(
            vp.plan, params.block_size, params.sigma, threshold, params.find_max, params.find_min,
            result.min_intensity, result.max_intensity, params.median_filter, vp.boxes_zyx,
            params.auto_points + 1 if auto else None,
        )
    jobs = [(i, task, vp.levels[vp.plan.level]) for i, vp in enumerate(plans) for task in vp.tasks]
    per_view: list[list[dict]] = [[] for _ in plans]
    done = 0
    if progress:
        progress(0, len(jobs))
    for batch in _batches(jobs, max(1, 4 * int(getattr(cluster, "n_workers", 1)))):
        tasks = [
            dask.delayed(_detect_region, pure=True)(_LevelRegion(level, t.level_slices), t, backend_name)
            for _, t, level in batch
        ]
        with cluster.stage(f"{cluster.label}: blocks {done + 1}-{done + len(batch)} of {len(jobs)}"):
            batch_results = cluster.compute(*tasks)
        for (i, _, _), res in zip(batch, batch_results):
            per_view[i].append(res)
        done += len(batch)
        if progress:
            progress(done, len(jobs))

    for vp, results in zip(plans, per_view):
        result.views[vp.view] = _finish_view(vp, _merge(results), params)
        result.n_voxels += sum(int(np.prod(np.subtract(t.core_stop, t.core_start))) for t in vp.tasks)
    result.seconds = time.perf_counter() - start
    return result


def params_string(params: DetectParams, points: ViewPoints, min_intensity: float, max_intensity: float) -> str:
    """The ``params`` attribute of ``<ViewInterestPointsFile>`` (BigStitcher-Spark's keys, then ours)."""
    t = f"{format_number(points.threshold)}" + (" (auto)" if params.threshold == "auto" else "")
    return (
        f"DOG (rhapso-gpu) s={format_number(params.sigma)} t={t} "
        f"overlappingOnly={str(params.overlap_only).lower()} min={str(params.find_min).lower()} "
        f"max={str(params.find_max).lower()} downsampleXY={params.dsxy} downsampleZ={params.dsz} "
        f"minIntensity={format_number(min_intensity)} maxIntensity={format_number(max_intensity)} "
        f"medianFilter={params.median_filter} combineDistance={format_number(params.combine_distance)} "
        f"maxSpots={params.max_spots} maxSpotsPerOverlap={str(params.max_spots_per_overlap).lower()}"
    )


def save_interest_points(spim: SpimData, result: DetectionResult, params: DetectParams,
                         storage_options: dict | None = None) -> str:
    """Write every view's points to ``<BasePath>/interestpoints.n5`` and record them in ``spim``.

    The caller saves the XML afterwards (``save_spimdata``). The label's N5
    group also gets the run's parameters as attributes (``rhapso-gpu detection``).

    Returns
    -------
    str
        The container location.
    """
    location = container_location(spim)
    for view, points in sorted(result.views.items()):
        group = write_interest_points(location, view, params.label, points.loc_xyz, points.intensity, storage_options)
        text = params_string(params, points, result.min_intensity, result.max_intensity)
        N5Container(location, storage_options).write_attributes(
            group,
            {
                "rhapso-gpu detection": {
                    **params.model_dump(mode="json"),
                    "threshold_used": points.threshold,
                    "min_intensity_used": result.min_intensity,
                    "max_intensity_used": result.max_intensity,
                    "level": points.plan.level,
                    "to_full_res_xyz": points.plan.to_full_res_xyz[:3].tolist(),
                }
            },
        )
        set_interest_points_ref(spim, view, params.label, text)
    return location
