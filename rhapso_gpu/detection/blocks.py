"""Blocks with halos: each block reports exactly the peaks whose initial extremum lies in its core.

A view's downsampled image is cut into a grid of cores (``block_size``). A
block computes the downsampled, normalised, background-subtracted DoG on its
core plus a halo (:func:`block_halo_zyx`) wide enough that every DoG value the
peak test and the localisation can look at equals the whole-view value; the
halo is clipped at the image border, where the filters mirror the image. Peaks are assigned to the
block holding their **initial** (integer) extremum, so the blocks partition the
peaks of a whole-view run exactly: same peaks, same positions, no duplicates.
Memory is bounded by the block size plus halo, never by the view size.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.backend import get_backend
from rhapso_gpu.detection.background import subtract_background
from rhapso_gpu.detection.border import BORDER_RADIUS, refine_border_peaks
from rhapso_gpu.detection.dog import MAX_MOVES, difference_of_gaussian, dog_halo, find_peaks
from rhapso_gpu.detection.downsampling import DownsamplePlan, downsample_region, level_range


@dataclass(frozen=True)
class BlockTask:
    """Everything one block needs (picklable; sent to a dask worker).

    All ranges are half-open, in downsampled voxels (z, y, x) unless named ``level_``.

    Attributes
    ----------
    core_start, core_stop : tuple of int
        The block's own voxels: peaks whose initial extremum lies here.
    read_start, read_stop : tuple of int
        Core plus halo, clipped to the image: the downsampled voxels computed.
    level_start, level_stop : tuple of int
        Level voxels to read for ``read`` (:func:`level_range`).
    plan : DownsamplePlan
    sigma, threshold : float
        DoG sigma (downsampled px) and threshold (normalised).
    find_max, find_min : bool
    min_intensity, max_intensity : float
        Normalisation range.
    median_radius : int
        Background subtraction radius in x and y (0 = off).
    overlap_boxes_zyx : numpy.ndarray or None
        (K, 2, 3) inclusive boxes (downsampled voxels); peaks whose initial
        extremum lies in none of them are dropped.
    top_n : int or None
        Keep only the ``top_n`` strongest peaks per overlap box (threshold ``auto``).
    """

    core_start: tuple[int, int, int]
    core_stop: tuple[int, int, int]
    read_start: tuple[int, int, int]
    read_stop: tuple[int, int, int]
    level_start: tuple[int, int, int]
    level_stop: tuple[int, int, int]
    plan: DownsamplePlan
    sigma: float
    threshold: float
    find_max: bool
    find_min: bool
    min_intensity: float
    max_intensity: float
    median_radius: int = 0
    overlap_boxes_zyx: np.ndarray | None = None
    top_n: int | None = None

    @property
    def level_slices(self) -> tuple[slice, slice, slice]:
        """The level region to read, as slices (z, y, x)."""
        return tuple(slice(a, b) for a, b in zip(self.level_start, self.level_stop))


def block_halo_zyx(sigma: float, median_radius: int) -> tuple[int, int, int]:
    """Halo (downsampled voxels, z, y, x) for exact peaks: DoG context plus the median radius in y and x.

    The context also covers the window of a border refit (:mod:`~.border`) around a peak that moved
    ``MAX_MOVES`` voxels out of the core.
    """
    h = max(dog_halo(sigma), MAX_MOVES + 1 + BORDER_RADIUS)
    return (h, h + int(median_radius), h + int(median_radius))


def _intersects(start, stop, boxes_zyx: np.ndarray) -> bool:
    lo, hi = boxes_zyx[:, 0, :], boxes_zyx[:, 1, :]
    return bool(np.any(np.all((hi >= np.asarray(start)) & (lo <= np.asarray(stop) - 1), axis=1)))


def plan_blocks(
    plan: DownsamplePlan,
    block_size_xyz,
    sigma: float,
    threshold: float,
    find_max: bool,
    find_min: bool,
    min_intensity: float,
    max_intensity: float,
    median_radius: int = 0,
    overlap_boxes_zyx: np.ndarray | None = None,
    top_n: int | None = None,
) -> list[BlockTask]:
    """Cut a view's downsampled image into blocks, in C order of their cores.

    Blocks whose core meets no overlap box are left out when
    ``overlap_boxes_zyx`` is given (an empty array: no blocks at all).
    """
    shape = plan.shape_zyx
    size = tuple(int(v) for v in block_size_xyz[::-1])
    halo = block_halo_zyx(sigma, median_radius)
    tasks = []
    for corner in itertools.product(*(range(0, n, s) for n, s in zip(shape, size))):
        core_start = tuple(int(c) for c in corner)
        core_stop = tuple(min(c + s, n) for c, s, n in zip(core_start, size, shape))
        if overlap_boxes_zyx is not None and (
            len(overlap_boxes_zyx) == 0 or not _intersects(core_start, core_stop, overlap_boxes_zyx)
        ):
            continue
        read_start = tuple(max(0, c - h) for c, h in zip(core_start, halo))
        read_stop = tuple(min(n, c + h) for c, h, n in zip(core_stop, halo, shape))
        ranges = [
            level_range(a, b, s, n)
            for a, b, s, n in zip(read_start, read_stop, plan.steps_xyz[::-1], plan.level_shape_zyx)
        ]
        tasks.append(
            BlockTask(
                core_start, core_stop, read_start, read_stop,
                tuple(r[0] for r in ranges), tuple(r[1] for r in ranges), plan, float(sigma), float(threshold),
                bool(find_max), bool(find_min), float(min_intensity), float(max_intensity), int(median_radius),
                overlap_boxes_zyx, top_n,
            )
        )
    return tasks


def _trilinear(xp, volume_zyx, position_zyx):
    """Linear interpolation of ``volume_zyx`` at (N, 3) array-voxel positions (clamped to the array)."""
    shape = xp.asarray(np.asarray(volume_zyx.shape, dtype=np.int64))
    base = xp.clip(xp.floor(position_zyx).astype(xp.int64), 0, shape - 2)
    frac = xp.clip(position_zyx - base, 0.0, 1.0)
    out = xp.zeros(len(position_zyx), dtype=xp.float64)
    for corner in itertools.product((0, 1), repeat=3):
        c = xp.asarray(np.asarray(corner, dtype=np.int64))
        weight = xp.prod(xp.where(c == 1, frac, 1.0 - frac), axis=1)
        idx = base + c
        out += weight * volume_zyx[idx[:, 0], idx[:, 1], idx[:, 2]]
    return out


def detect_block(level_data_zyx, task: BlockTask, backend_name: str = "numpy") -> dict[str, np.ndarray]:
    """Detect the peaks of one block (runs on a worker).

    Parameters
    ----------
    level_data_zyx : array_like
        The level region ``task.level_slices`` (native voxel type).
    task : BlockTask
    backend_name : {'numpy', 'cupy'}

    Returns
    -------
    dict of numpy.ndarray
        ``start_zyx`` (N, 3) int64: initial extremum (downsampled voxels, global);
        ``position_zyx`` (N, 3) float64: refined position (downsampled voxels, global;
        near the image border from :func:`~rhapso_gpu.detection.border.refine_border_peaks`,
        which also drops beads centred outside the image);
        ``kind`` (N,) int8 (+1 image max, -1 image min); ``value`` (N,) float64:
        refined DoG value; ``initial_value`` (N,) float32; ``intensity`` (N,)
        float32: image intensity at the point (linear interpolation of the
        downsampled, un-normalised image); ``box`` (N,) int64: first overlap box
        holding the initial extremum (-1 without overlap boxes). Rows are in
        C order of ``start_zyx``.
    """
    backend = get_backend(backend_name)
    xp = backend.xp
    data = backend.asarray(np.asarray(level_data_zyx))
    image = downsample_region(xp, data, task.level_start, task.plan, task.read_start, task.read_stop)
    scale = np.float32(1.0 / (task.max_intensity - task.min_intensity))
    image = xp.ascontiguousarray((image - np.float32(task.min_intensity)) * scale, dtype=xp.float32)
    # The array starts and ends at the image border wherever the halo was clipped there, so the filters' own
    # mirror boundary (SciPy 'reflect') is the image's mirror: no padding needed, and every block computes
    # the values a whole-view pass computes.
    flat = subtract_background(backend, image, task.median_radius)
    dog = difference_of_gaussian(backend, flat, task.sigma)
    offset = np.asarray(task.read_start, dtype=np.int64)
    core = tuple(slice(int(c0 - o), int(c1 - o)) for c0, c1, o in zip(task.core_start, task.core_stop, offset))
    valid_lo = tuple(int(1 - o) for o in offset)
    valid_hi = tuple(int(n - 2 - o) for n, o in zip(task.plan.shape_zyx, offset))
    peaks = find_peaks(
        backend, dog, core, valid_lo, valid_hi, task.threshold, task.find_max, task.find_min, tuple(offset)
    )
    # near the image border the mirrored DoG biases the quadratic fit: refit there on in-image voxels only
    position, fitted = refine_border_peaks(xp, flat, peaks.position_zyx, offset, task.plan.shape_zyx)
    ny, nx = dog.shape[1], dog.shape[2]
    start = xp.stack([peaks.start_index // (ny * nx), (peaks.start_index // nx) % ny, peaks.start_index % nx], axis=1)
    intensity = _trilinear(xp, image, position - xp.asarray(offset)) / float(scale) + task.min_intensity
    result = {
        "start_zyx": backend.to_host(start) + offset,
        "position_zyx": backend.to_host(position),
        "kind": backend.to_host(peaks.kind),
        "value": backend.to_host(peaks.value),
        "initial_value": backend.to_host(peaks.initial_value),
        "intensity": backend.to_host(intensity).astype(np.float32),
    }
    result = {k: v[backend.to_host(fitted)] for k, v in result.items()}
    result["box"] = np.full(len(result["kind"]), -1, dtype=np.int64)
    if task.overlap_boxes_zyx is not None:
        boxes = np.asarray(task.overlap_boxes_zyx)
        s = result["start_zyx"]
        inside = np.all((s[:, None, :] >= boxes[None, :, 0, :]) & (s[:, None, :] <= boxes[None, :, 1, :]), axis=2)
        first = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
        keep = first >= 0
        result = {k: v[keep] for k, v in result.items()}
        result["box"] = first[keep]
    if task.top_n is not None:  # the strongest top_n per overlap box (one group without boxes)
        strength = auto_strength(result["value"], result["initial_value"])
        keep = [
            members[np.argsort(-strength[members], kind="stable")[: task.top_n]]
            for members in (np.flatnonzero(result["box"] == b) for b in np.unique(result["box"]))
        ]
        keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        result = {k: v[keep] for k, v in result.items()}
    return result


def auto_strength(value: np.ndarray, initial_value: np.ndarray) -> np.ndarray:
    """The highest threshold a peak survives: ``min(|refined value|, 3 |initial DoG value|)``."""
    return np.minimum(np.abs(np.asarray(value, dtype=np.float64)), 3.0 * np.abs(np.asarray(initial_value, np.float64)))
