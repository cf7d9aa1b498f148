"""Interest points of the split dataset: real points carried over, fake points tying sub-views together.

Coordinates are **xyz**. Real points and overlaps are computed in the
original view's full-resolution local pixels; stored points are in each
sub-view's local pixels (original local minus the sub-view's ``min``), as
``interestpoints.n5`` requires.

* Real points: every label of an original view is copied, as label
  ``<label>_split`` (BigStitcher's name), to each sub-view whose box holds the
  point (inclusive bounds; ids renumbered to the row index). Correspondences of
  real points are not carried over (neither does BigStitcher).
* Fake points: for every pair of sub-views of the same original view whose
  boxes overlap, ``ceil(point_density * voxels / 100^3)`` points clamped to
  ``min_points .. max_points``, uniform in the overlap box (pixel centres), the
  same original position in both sub-views, each copy then moved by an
  independent uniform ``+-error/2`` per axis. Candidates within
  ``exclude_radius`` of a real point of the original view are dropped (up to
  ten candidates are drawn per wanted point). They are stored under
  ``fake_label`` with symmetric correspondences between the two copies, so the
  solver keeps the sub-views of one view together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from rhapso_gpu.io.correspondences import PairCorrespondences, store_matches
from rhapso_gpu.io.interestpoints import (
    container_location,
    read_interest_points,
    set_interest_points_ref,
    write_interest_points,
)
from rhapso_gpu.io.spimdata import SpimData, ViewId
from rhapso_gpu.split.params import SplitParams
from rhapso_gpu.split.views import SubView

SPLIT_SUFFIX = "_split"


@dataclass
class PointsSummary:
    """What :func:`write_split_points` stored: counts per kind."""

    real_points: int = 0
    fake_points: int = 0
    fake_pairs: int = 0
    labels: list[str] = field(default_factory=list)


def intersection(a: SubView, b: SubView) -> tuple[np.ndarray, np.ndarray] | None:
    """Inclusive overlap box of two sub-views of one original view (its local pixels, xyz), or None."""
    lo, hi = np.maximum(a.min_xyz, b.min_xyz), np.minimum(a.max_xyz, b.max_xyz)
    return None if np.any(lo > hi) else (lo, hi)


def fake_point_count(lo: np.ndarray, hi: np.ndarray, params: SplitParams) -> int:
    """Number of fake points wanted in the inclusive box ``lo .. hi`` (pixels)."""
    voxels = float(np.prod(hi - lo + 1))
    return min(params.max_points, max(params.min_points, math.ceil(params.point_density * voxels / 100.0**3)))


def draw_fake_points(
    lo: np.ndarray, hi: np.ndarray, params: SplitParams, rng: np.random.Generator, real: cKDTree | None
) -> np.ndarray:
    """Fake point positions (N, 3) in the inclusive box, in the original view's local pixels (xyz).

    Positions within ``params.exclude_radius`` of a point of ``real`` are
    dropped; at most :func:`fake_point_count` points are returned.
    """
    wanted = fake_point_count(lo, hi, params)
    excluding = real is not None and params.exclude_radius > 0 and real.n > 0
    candidates = rng.uniform(lo, hi, size=(wanted * (10 if excluding else 1), 3))
    if excluding:
        distance, _ = real.query(candidates, k=1, distance_upper_bound=params.exclude_radius)
        candidates = candidates[~np.isfinite(distance)]
    return candidates[:wanted]


def _params_text(params: SplitParams, step_xyz) -> str:
    """BigStitcher's ``params`` string of the fake-point label."""
    return (f"Fake points for image splitting: overlapPx={list(params.target_overlap)}, "
            f"targetSize={list(params.target_image_size)}, minStepSize={list(step_xyz)}, "
            f"optimize={str(not params.disable_optimization).lower()}, pointDensity={params.point_density}, "
            f"minPoints={params.min_points}, maxPoints={params.max_points}, error={params.error}, "
            f"excludeRadius={params.exclude_radius}")


def write_split_points(
    original: SpimData, split: SpimData, subviews: list[SubView], params: SplitParams, step_xyz,
    storage_options: dict | None = None,
) -> PointsSummary:
    """Write the real and fake points of every present sub-view and add their refs to ``split``.

    Points go to ``split``'s ``interestpoints.n5``; the original's points are
    read from its own container. Deterministic: one generator seeded with
    ``params.seed``, views visited in (time point, setup) order.
    """
    summary = PointsSummary()
    source, target = container_location(original), container_location(split)
    by_old: dict[int, list[SubView]] = {}
    for sv in subviews:
        by_old.setdefault(sv.old_setup, []).append(sv)
    rng = np.random.default_rng(params.seed)
    fake_views: dict[ViewId, list[np.ndarray]] = {}
    matches: list[PairCorrespondences] = []
    labels: set[str] = set()
    for old_view in original.view_ids():
        real_all = []
        for ref in sorted((r for r in original.interest_points if r.view == old_view), key=lambda r: r.label):
            points = read_interest_points(source, old_view, ref.label, storage_options)
            real_all.append(points.loc_xyz)
            for sv in by_old[old_view.setup]:
                view = ViewId(old_view.timepoint, sv.setup)
                inside = np.all((points.loc_xyz >= sv.min_xyz) & (points.loc_xyz <= sv.max_xyz), axis=1)
                label = ref.label + SPLIT_SUFFIX
                intensities = None if points.intensities is None else points.intensities[inside]
                write_interest_points(target, view, label, points.loc_xyz[inside] - sv.min_xyz, intensities,
                                      storage_options)
                set_interest_points_ref(split, view, label, ref.params)
                labels.add(label)
                summary.real_points += int(inside.sum())
        if not params.add_fake_points:
            continue
        real = cKDTree(np.concatenate(real_all)) if real_all else None
        group = by_old[old_view.setup]
        for i, sv_b in enumerate(group):
            for sv_a in group[:i]:
                box = intersection(sv_a, sv_b)
                if box is None:
                    continue
                positions = draw_fake_points(box[0], box[1], params, rng, real)
                ids = {}
                for sv in (sv_a, sv_b):
                    view = ViewId(old_view.timepoint, sv.setup)
                    jitter = rng.uniform(-params.error / 2, params.error / 2, size=positions.shape)
                    stored = fake_views.setdefault(view, [])
                    start = sum(len(p) for p in stored)
                    stored.append(positions + jitter - sv.min_xyz)
                    ids[sv.setup] = np.arange(start, start + len(positions), dtype=np.uint64)
                va, vb = ViewId(old_view.timepoint, sv_a.setup), ViewId(old_view.timepoint, sv_b.setup)
                matches.append(PairCorrespondences((va, params.fake_label), (vb, params.fake_label),
                                                   ids[sv_a.setup], ids[sv_b.setup]))
                summary.fake_pairs += 1
                summary.fake_points += len(positions)
    text = _params_text(params, step_xyz)
    for view, parts in sorted(fake_views.items()):
        write_interest_points(target, view, params.fake_label, np.concatenate(parts), None, storage_options)
        set_interest_points_ref(split, view, params.fake_label, text)
        labels.add(params.fake_label)
    if fake_views:
        store_matches(target, matches, [(v, params.fake_label) for v in sorted(fake_views)], storage_options)
    summary.labels = sorted(labels)
    return summary
