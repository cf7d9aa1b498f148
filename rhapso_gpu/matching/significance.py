"""Are a pair's matches more than chance? A Poisson test of their residuals against the point density.

Two unrelated point clouds always "match" somewhere: under any offset, about
``density * 4/3 pi eps^3`` points of B lie within ``eps`` of each point of A, so
a consensus search with a small ``min_inliers`` and no inlier-ratio bound
(offset-consensus, guided matching) finds tens of matches in clouds that share
nothing. Genuine matches differ in two ways: there are more of them than the
density explains, and their residuals are at the localisation noise, far
inside ``eps``. The test counts, for a few radii ``t`` (``eps``, ``eps/2``,
``eps/4``, ``eps/8``), the matches with a residual below ``t`` and compares
that count with the number expected by chance,
``mu_t = sum_i min(1, c_i (t / R)^3)``, where ``c_i`` is the number of B points
within ``R = 3 eps`` of the mapped A point ``i`` (a local density, so clustered
content is judged by its own clusters). The pair passes when the Poisson tail
``P(X >= k_t; mu_t)`` at the best radius, times the number of radii tried, is
below :data:`MAX_CHANCE_P`.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import poisson

MAX_CHANCE_P = 1e-6
"""Largest probability that unrelated clouds give the matches (the offset search tries many offsets)."""

RADIUS_FRACTIONS = (1.0, 0.5, 0.25, 0.125)
"""Residual radii tried, as fractions of ``max_epsilon``."""

DENSITY_RADIUS = 3.0
"""Radius of the local density estimate, in units of ``max_epsilon``."""


def chance_log10_p(mapped_a_xyz, points_b_xyz, residuals, max_epsilon: float) -> float:
    """log10 of the probability that unrelated point clouds give matches as many and as close as these.

    Parameters
    ----------
    mapped_a_xyz : ndarray (N, 3)
        Every point of A that could have matched, mapped into B's space by the pair's model (world units).
    points_b_xyz : ndarray (M, 3)
        Every point of B that could have matched (world units).
    residuals : ndarray (K,)
        Distances between the K matched points of B and their mapped partners in A (world units).
    max_epsilon : float
        Largest residual a match may have (world units).

    Returns
    -------
    float
        ``log10`` of the Bonferroni-corrected Poisson tail at the most telling radius (0 when nothing is
        significant); compare with ``log10(MAX_CHANCE_P)``.
    """
    residuals = np.asarray(residuals, dtype=np.float64)
    points_b_xyz = np.asarray(points_b_xyz, dtype=np.float64)
    if residuals.size == 0 or points_b_xyz.shape[0] == 0:
        return 0.0
    radius = DENSITY_RADIUS * max_epsilon
    near = cKDTree(points_b_xyz).query_ball_point(np.asarray(mapped_a_xyz, dtype=np.float64), radius,
                                                  return_length=True)
    best = 0.0
    for fraction in RADIUS_FRACTIONS:
        k = int((residuals < fraction * max_epsilon).sum())
        mu = float(np.minimum(near * (fraction / DENSITY_RADIUS) ** 3, 1.0).sum())
        if k > 0:
            best = min(best, float(poisson.logsf(k - 1, mu)) / math.log(10))
    return min(0.0, best + math.log10(len(RADIUS_FRACTIONS)))


def chance_reason(mapped_a_xyz, points_b_xyz, residuals, max_epsilon: float) -> str | None:
    """Why matches are refused as chance (see :func:`chance_log10_p` for the arguments), or None if they are not."""
    log10_p = chance_log10_p(mapped_a_xyz, points_b_xyz, residuals, max_epsilon)
    if log10_p <= math.log10(MAX_CHANCE_P):
        return None
    return (f"{np.size(residuals)} matches, no more and no closer than unrelated points at this density give by "
            f"chance (p = {10**log10_p:.0e})")
