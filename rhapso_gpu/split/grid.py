"""The split grid of one view: BigStitcher's ``SplittingTools.distributeIntervalsFixedOverlap``.

All sizes, overlaps and boxes are in **full-resolution local pixels** of the
original view, axis order **xyz**; boxes are inclusive ``(min, max)`` integer
pairs. Box corners and sizes (except the last box's size) are multiples of the
step (the coarsest pyramid factor per axis), so every pyramid level of a
sub-view is an exact crop of the original's.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from rhapso_gpu.errors import UserError


def round_up(value: int, step: int) -> int:
    """The smallest multiple of ``step`` that is ``>= value`` (``closestLargerLongDivisableBy``)."""
    return -(-int(value) // int(step)) * int(step)


def step_size(factors_xyz) -> tuple[int, int, int]:
    """Per axis, the least common multiple of integer pyramid factors (an iterable of xyz triples)."""
    step = [1, 1, 1]
    for f in factors_xyz:
        for d in range(3):
            if abs(f[d] - round(f[d])) < 1e-9 and round(f[d]) >= 1:
                step[d] = math.lcm(step[d], round(f[d]))
    return tuple(step)


def _java_rem(a: int, b: int) -> int:
    """Java's ``a % b`` (sign of the dividend), which BigStitcher's rule relies on."""
    r = abs(a) % abs(b)
    return r if a >= 0 else -r


def last_image_size(length: int, size: int, overlap: int) -> int:
    """Size of the last block when ``length`` is cut into blocks of ``size`` overlapping by ``overlap``."""
    last = overlap + _java_rem(length - 2 * (size - overlap) - overlap, size - overlap)
    return length + last if last < 0 else last


def _balanced_size(length: int, size: int, overlap: int, step: int) -> int:
    """BigStitcher's optimisation: change ``size`` by steps so the last block is as large as possible.

    When the last block is at most half a block, blocks grow (they may then
    exceed ``size``); otherwise they shrink.
    """
    last = last_image_size(length, size, overlap)
    if last == size:
        return size
    current = size
    if last <= size // 2:
        while True:
            current += step
            new_last = last_image_size(length, current, overlap)
            delta, last = last - new_last, new_last
            if delta <= 0 or current >= length:
                return current
    while current - step > overlap:
        current -= step
        new_last = last_image_size(length, current, overlap)
        delta, last = last - new_last, new_last
        if delta >= 0:
            return current + step
    return current


def split_axis(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Inclusive ``(min, max)`` blocks of ``size`` covering ``0 .. length - 1``, consecutive ones sharing ``overlap``."""
    blocks = []
    start = 0
    while True:
        stop = min(length - 1, start + size - 1)
        blocks.append((start, stop))
        if stop >= length - 1:
            return blocks
        start = stop - overlap + 1


def split_view(
    size_xyz, target_size_xyz, overlap_xyz, step_xyz, optimize: bool = True
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The sub-view boxes of one view, x fastest (BigStitcher's order).

    Parameters
    ----------
    size_xyz : sequence of int
        The view's size in pixels.
    target_size_xyz, overlap_xyz : sequence of int
        Multiples of ``step_xyz``; ``overlap < target size``.
    step_xyz : sequence of int
    optimize : bool
        Balance the last block (see :func:`_balanced_size`); an axis no longer
        than the target size is never cut.

    Returns
    -------
    list of (min_xyz, max_xyz)
        Inclusive int64 boxes in the view's local pixels.
    """
    axes = []
    for d in range(3):
        length, size, overlap, step = (int(v[d]) for v in (size_xyz, target_size_xyz, overlap_xyz, step_xyz))
        if size % step or overlap % step or overlap >= size:
            raise UserError(
                f"axis {'xyz'[d]}: size {size} and overlap {overlap} must be multiples of {step}, overlap < size"
            )
        if length <= size:
            axes.append([(0, length - 1)])
            continue
        final = _balanced_size(length, size, overlap, step) if optimize else size
        axes.append(split_axis(length, final, overlap))
    boxes = []
    for z, y, x in itertools.product(axes[2], axes[1], axes[0]):
        boxes.append((np.array([x[0], y[0], z[0]], np.int64), np.array([x[1], y[1], z[1]], np.int64)))
    return boxes
