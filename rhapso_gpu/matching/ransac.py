"""Batched RANSAC over correspondence candidates, then BigStitcher's trimming and clean-up.

Hypotheses are drawn up front (a seeded NumPy generator on the host, so the
result depends only on the seed, never on the device or worker count), then
fitted and scored in batches: one batch fits ``batch`` minimal samples at once
and scores every one of them against every candidate as a single array
expression. Per batch, the best-scoring hypotheses are refitted on their
inliers until their inlier sets stop growing (mpicbg ``AbstractModel.ransac``);
the winner is then trimmed by refitting and dropping residuals above
``max_trust`` times the median until stable (mpicbg ``filter``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from rhapso_gpu.models import TransformModel, transform_points


@dataclass(frozen=True)
class RansacParams:
    """RANSAC parameters (BigStitcher-Spark defaults).

    Attributes
    ----------
    iterations : int
        Hypotheses drawn.
    max_epsilon : float
        Inlier distance, world units (px of the world grid).
    min_inlier_ratio : float
        A model needs more than this fraction of the candidates as inliers.
    min_inliers : int
        ... and at least this many (and at least the model's minimum).
    max_trust : float
        Trimming factor on the median residual.
    batch : int
        Hypotheses fitted and scored at once (memory ~ ``batch * candidates * 40`` bytes).
    refine_top : int
        Best hypotheses of each batch refitted on their inliers.
    """

    iterations: int = 10_000
    max_epsilon: float = 5.0
    min_inlier_ratio: float = 0.1
    min_inliers: int = 12
    max_trust: float = 4.0
    batch: int = 512
    refine_top: int = 8


@dataclass
class RansacResult:
    """Outcome of :func:`ransac`.

    Attributes
    ----------
    model : ndarray (3, 4) or None
        Affine mapping source to target points (None on failure).
    inliers : ndarray of int64
        Indices of the inlier candidates, ascending (empty on failure).
    reason : str or None
        Why no model was accepted.
    """

    model: np.ndarray | None
    inliers: np.ndarray
    reason: str | None = None


def draw_samples(rng: np.random.Generator, n_hypotheses: int, n_candidates: int, size: int) -> np.ndarray:
    """``(n_hypotheses, size)`` indices, each row ``size`` distinct values of ``range(n_candidates)``.

    Column ``j`` draws uniformly among the ``n_candidates - j`` values not yet in
    the row (the r-th unused value is found by stepping over the sorted used ones),
    a loop over ``size`` only.
    """
    out = np.empty((n_hypotheses, size), dtype=np.int64)
    for j in range(size):
        r = rng.integers(0, n_candidates - j, size=n_hypotheses)
        used = np.sort(out[:, :j], axis=1)
        for c in range(j):
            r += r >= used[:, c]
        out[:, j] = r
    return out


def residuals(models, src, dst, xp: ModuleType = np):
    """Distances ``(..., M)`` between ``model(src)`` and ``dst`` for affines ``(..., 3, 4)``."""
    d = transform_points(models, src, xp) - dst
    return xp.sqrt((d * d).sum(axis=-1))


def squared_residuals(models, src_h_t, dst_t, xp: ModuleType = np):
    """Squared distances ``(B, M)`` of affines ``(B, 3, 4)`` over candidates in column layout.

    ``src_h_t`` is ``(4, M)`` (homogeneous source points as columns), ``dst_t``
    ``(3, M)``: one batched matrix product and three contiguous row operations,
    the fast layout for scoring many hypotheses against many candidates.
    """
    r = xp.matmul(models.astype(src_h_t.dtype), src_h_t)  # (B, 3, M)
    r -= dst_t
    r *= r
    return r[:, 0] + r[:, 1] + r[:, 2]


def _refine(model: TransformModel, src, dst, inl, eps: float, xp, max_rounds: int = 20):
    """Refit each hypothesis on its inliers while its inlier set grows; ``(models, inlier masks)``."""
    m = inl.shape[0]
    src_b = xp.broadcast_to(src, (m,) + src.shape)
    dst_b = xp.broadcast_to(dst, (m,) + dst.shape)
    fitted = model.fit(src_b, dst_b, inl, xp)
    count = inl.sum(axis=1)
    for _ in range(max_rounds):
        new_models = model.fit(src_b, dst_b, inl, xp)
        new_inl = residuals(new_models, src, dst, xp) < eps
        new_count = new_inl.sum(axis=1)
        grew = new_count > count
        if not bool(grew.any()):
            break
        fitted = xp.where(grew[:, None, None], new_models, fitted)
        inl = xp.where(grew[:, None], new_inl, inl)
        count = xp.where(grew, new_count, count)
    return fitted, inl


def _consensus(model: TransformModel, src, dst, params: RansacParams, rng, xp):
    """Best hypothesis after refinement: ``(inlier mask, count)``, or ``(None, best count seen)``."""
    n = src.shape[0]
    s = model.min_matches
    need = max(s, params.min_inliers)
    samples = draw_samples(rng, params.iterations, n, s)
    # scoring in float32 (half the memory traffic; 1e-3 px at 1e4 px from the origin), fits in float64
    src_h_t = xp.concatenate([src.T, xp.ones((1, n), dtype=src.dtype)], axis=0).astype(xp.float32)
    dst_t = xp.ascontiguousarray(dst.T, dtype=xp.float32)
    eps2 = params.max_epsilon**2
    best_mask, best_key = None, None
    best_seen = 0
    for start in range(0, params.iterations, params.batch):
        idx = xp.asarray(samples[start : start + params.batch])
        hyp = model.fit(src[idx], dst[idx], None, xp)
        inl = squared_residuals(hyp, src_h_t, dst_t, xp) < eps2
        count = inl.sum(axis=1)
        best_seen = max(best_seen, int(count.max()))
        good = (count >= need) & (count > params.min_inlier_ratio * n)
        if not bool(good.any()):
            continue
        order = xp.argsort(-count, kind="stable")[: params.refine_top]
        order = order[good[order]]
        models, masks = _refine(model, src, dst, inl[order], params.max_epsilon, xp)
        counts = masks.sum(axis=1)
        err = xp.where(masks, residuals(models, src, dst, xp), 0.0).sum(axis=1) / xp.maximum(counts, 1)
        ok = (counts >= need) & (counts > params.min_inlier_ratio * n) & xp.isfinite(err)
        for i in np.flatnonzero(np.asarray(_host(ok))):  # at most refine_top candidates
            key = (-int(counts[i]), float(err[i]))
            if best_key is None or key < best_key:
                best_key, best_mask = key, masks[i]
    if best_mask is None:
        return None, best_seen
    return best_mask, -best_key[0]


def _host(a):
    return a.get() if hasattr(a, "get") else a


def trim(model: TransformModel, src, dst, inliers: np.ndarray, max_trust: float, xp: ModuleType = np):
    """Refit and drop residuals above ``max_trust`` times the median until stable (mpicbg ``filter``).

    Returns the kept candidate indices (ascending) and the final model ``(3, 4)``.
    """
    keep = np.asarray(inliers, dtype=np.int64)
    while True:
        fitted = model.fit(src[keep], dst[keep], None, xp)
        r = residuals(fitted, src[keep], dst[keep], xp)
        med = float(xp.median(r))
        ok = np.asarray(_host(r <= max_trust * med))
        if ok.all() or not ok.any():
            return keep, np.asarray(_host(fitted))
        keep = keep[ok]


def ransac(
    src_xyz,
    dst_xyz,
    model: TransformModel,
    params: RansacParams | None = None,
    seed: int | np.random.Generator | list[int] = 0,
    xp: ModuleType = np,
) -> RansacResult:
    """Fit ``model`` mapping ``src_xyz`` to ``dst_xyz`` (candidate pairs, ``(M, 3)`` each) robustly.

    Parameters
    ----------
    src_xyz, dst_xyz : array (M, 3)
        Candidate correspondences, row ``i`` of both is candidate ``i`` (world xyz).
    model : TransformModel
    params : RansacParams, optional
        Defaults to :class:`RansacParams` ().
    seed : int, list of int or numpy.random.Generator
        Seed of the hypothesis draw: equal seeds give identical results.
    xp : module
        Array module to compute with (``numpy`` or ``cupy``).
    """
    params = RansacParams() if params is None else params
    src = xp.asarray(src_xyz, dtype=xp.float64)
    dst = xp.asarray(dst_xyz, dtype=xp.float64)
    n = int(src.shape[0])
    need = max(model.min_matches, params.min_inliers)
    empty = np.zeros(0, np.int64)
    if n < need:
        return RansacResult(None, empty, f"{n} candidates, fewer than the {need} inliers required")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    mask, count = _consensus(model, src, dst, params, rng, xp)
    if mask is None:
        return RansacResult(
            None,
            empty,
            f"no model with >= {need} inliers within {params.max_epsilon:g} and inlier ratio > "
            f"{params.min_inlier_ratio:g} (best hypothesis: {count} of {n})",
        )
    inliers = np.flatnonzero(np.asarray(_host(mask)))
    kept, fitted = trim(model, src, dst, inliers, params.max_trust, xp)
    if kept.size < need:
        return RansacResult(None, empty, f"{kept.size} inliers left after trimming at {params.max_trust:g}x median")
    return RansacResult(fitted, kept)
