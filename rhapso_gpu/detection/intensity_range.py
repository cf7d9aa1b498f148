"""Default ``min_intensity`` / ``max_intensity``: robust percentiles of the data.

BigStitcher-Spark requires both values (each block would otherwise normalise
differently); Rhapso has no default. rhapso-gpu takes them from the data once
for the whole run, so every block and every view is normalised the same way:
the 0.1th and 99.99th percentiles of the voxels of each view's **coarsest**
pyramid level (cheap to read), pooled over the views. Percentiles ignore the
few hot pixels a plain min/max would pick up.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

LOW_PERCENTILE = 0.1
HIGH_PERCENTILE = 99.99


def _percentiles(*blocks) -> np.ndarray:
    values = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in blocks])
    return np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])


def robust_range(coarse_levels: list[da.Array], cluster) -> tuple[float, float]:
    """``(min, max)`` intensity from the pooled percentiles of the given (coarsest) levels.

    Parameters
    ----------
    coarse_levels : list of dask.array.Array
        One lazy (z, y, x) volume per view.
    cluster
        Where to compute (``rhapso_gpu.scheduler.Cluster``).

    Returns
    -------
    min_intensity, max_intensity : float
        ``max > min`` (widened by one intensity unit when the data are flat).
    """
    (low, high), = cluster.compute(dask.delayed(_percentiles)(*coarse_levels))
    if not high > low:
        high = low + 1.0
    return float(low), float(high)
