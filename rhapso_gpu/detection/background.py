"""Background subtraction before DoG: ``image - median`` over an XY window of radius ``r``.

Rhapso (``median_filter``) subtracts the median of a ``(2r+1) x (2r+1) x 1``
window, computed with ``scipy.ndimage.median_filter``; that filter takes most of
its detection time (about 25 s for 256 x 256 x 64 voxels at r = 10).

rhapso-gpu approximates that 2-D median by a **separable, sampled median**
(documented approximation, not the exact 2-D median):

1. along x, the median of ``min(2r + 1, 7)`` samples evenly spaced over
   ``[-r, r]`` (offsets ``round(linspace(-r, r, n))``);
2. along y, the same filter applied to the result of step 1.

For r <= 3 every offset is used, so it is the exact median of row medians.
The estimate is a smooth background, as needed for subtraction; a bead
(a few voxels wide) never holds the majority of a row's samples, so it does
not leak into the background for r >= 3. Boundaries are mirrored
(SciPy ``reflect``, BigStitcher's mirror-double).

Cost: two median-of-7 exchange networks per voxel (the ``sampled_median``
kernel) instead of a selection over ``(2r + 1)^2`` values: about 10-40 ms for
256 x 256 x 64 voxels on one CPU core, against about 20 s for SciPy's full
21 x 21 median (both measured by ``bench/bench_detection.py``).
"""

from __future__ import annotations

import numpy as np

from rhapso_gpu.backend import Backend

MAX_SAMPLES = 7
"""Samples per axis of the separable median."""


def sample_offsets(radius: int) -> np.ndarray:
    """Offsets (pixels) of the median samples along one axis for ``radius``."""
    n = min(2 * int(radius) + 1, MAX_SAMPLES)
    return np.unique(np.round(np.linspace(-radius, radius, n)).astype(np.int64))


def median_background(backend: Backend, image_zyx, radius: int):
    """Separable sampled median of a float32 volume (z, y, x) over an XY window of ``radius`` pixels.

    Runs the ``sampled_median`` kernel (:mod:`cpu_fallback.median`: numba
    exchange networks on the CPU, ``cupyx`` median filters on the GPU).
    """
    return backend.kernel("sampled_median")(image_zyx, sample_offsets(radius))


def subtract_background(backend: Backend, image_zyx, radius: int):
    """``image - median_background(image)`` (float32); ``radius = 0`` returns the image unchanged."""
    if radius <= 0:
        return image_zyx
    return image_zyx - median_background(backend, image_zyx, radius)
