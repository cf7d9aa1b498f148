"""BigStitcher's Difference-of-Gaussian contract, written once against the array backend.

Everything here works on **downsampled** pixels, axis order (z, y, x), and on
normalised intensities ``(v - min) / (max - min)`` (float32). Constants and
formulas follow multiview-reconstruction ``DoGImgLib2`` and imglib2 ``Gauss3``
(BigStitcher reference, section 3.1):

* ``k = 2^(1/4)``, image sigma 0.5, ``sigma1 = sqrt(s^2 - 0.25)``,
  ``sigma2 = sqrt((k s)^2 - 0.25)``, the same on every axis;
* Gauss3 kernels: half size ``max(2, int(3 sigma + 0.5) + 1)``,
  ``exp(-x^2 / 2 sigma^2)`` with ImageJ's quadratic tail smoothing, normalised;
  boundary "mirror double" (SciPy ``reflect``); separable passes z, y, x in
  float32 (the ``gauss3`` kernel, :mod:`cpu_fallback.gauss3`);
* ``DoG = (G_sigma2 - G_sigma1) / (k - 1)``: a bright blob is a DoG minimum;
* extrema and sub-pixel localisation by the fused ``dog_peaks`` kernel
  (:mod:`cpu_fallback.dog_peaks` states that part of the contract).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.backend import Backend

K = 2.0 ** 0.25
"""Scale step between the two Gaussians (4 steps per octave)."""
K_MIN1_INV = 1.0 / (K - 1.0)
"""DoG normalisation ``1 / (k - 1)``, about 5.2852."""
IMAGE_SIGMA = 0.5
"""Sigma assumed already present in the image (hard-coded in DoGImgLib2)."""
MAX_MOVES = 10
"""Maximum base moves of the sub-pixel localisation."""
MOVE_TOLERANCE = 0.01
"""Growth of the move tolerance ``0.5 + moves * 0.01`` per move."""


def dog_sigmas(sigma: float) -> tuple[float, float]:
    """The two Gaussian sigmas (downsampled pixels) of a DoG of scale ``sigma``.

    Parameters
    ----------
    sigma : float
        Detection sigma in downsampled pixels; must exceed the image sigma 0.5.

    Returns
    -------
    sigma1, sigma2 : float
        ``sqrt(sigma^2 - 0.25)`` and ``sqrt((k sigma)^2 - 0.25)``; for 1.8: 1.7292, 2.0814.
    """
    return math.sqrt(sigma**2 - IMAGE_SIGMA**2), math.sqrt((K * sigma) ** 2 - IMAGE_SIGMA**2)


def half_kernel(sigma: float) -> np.ndarray:
    """imglib2 ``Gauss3`` half kernel (centre first), float64, summing to 1 over the full kernel.

    Size ``max(2, int(3 sigma + 0.5) + 1)``; the tail beyond the point where a
    parabola ``slope * (L - x)^2`` touches the Gaussian is replaced by that
    parabola (ImageJ's edge smoothing), then the kernel is normalised.
    """
    size = max(2, int(3.0 * sigma + 0.5) + 1)
    x = np.arange(size, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2.0 * sigma**2))
    kernel[0] = 1.0
    length = size
    slope = np.finfo(np.float64).max
    r = length
    while r > length // 2:
        r -= 1
        a = kernel[r] / float(length - r) ** 2
        if a < slope:
            slope = a
        else:
            r += 1
            break
    for i in range(r + 1, length):
        kernel[i] = slope * float(length - i) ** 2
    total = 2.0 * (0.5 * kernel[0] + kernel[1:].sum())
    return kernel / total


def full_kernel(sigma: float) -> np.ndarray:
    """The symmetric Gauss3 kernel (length ``2 * size - 1``), float64."""
    h = half_kernel(sigma)
    return np.concatenate([h[:0:-1], h])


def kernel_radius(sigma: float) -> int:
    """Reach of the Gauss3 kernel of ``sigma`` in pixels (half size - 1)."""
    return len(half_kernel(sigma)) - 1


def dog_halo(sigma: float) -> int:
    """Context (downsampled pixels) a block needs on each side for exact DoG peaks in its core.

    The DoG must be exact wherever localisation can look: the core plus
    ``MAX_MOVES`` moves plus one neighbour; each of those values needs the
    image within the larger Gaussian's radius.
    """
    return kernel_radius(dog_sigmas(sigma)[1]) + MAX_MOVES + 1


def gauss3(backend: Backend, image_zyx, sigma: float):
    """Separable Gauss3 blur of a float32 volume, mirror-double boundary, float32 arithmetic (``gauss3`` kernel)."""
    return backend.kernel("gauss3")(image_zyx, half_kernel(sigma))


def difference_of_gaussian(backend: Backend, image_zyx, sigma: float):
    """``(G_sigma2 - G_sigma1) / (k - 1)`` of a normalised float32 volume (z, y, x), float32."""
    s1, s2 = dog_sigmas(sigma)
    g1 = gauss3(backend, image_zyx, s1)
    g2 = gauss3(backend, image_zyx, s2)
    g2 -= g1
    g2 *= backend.xp.float32(K_MIN1_INV)
    return g2


@dataclass
class BlockPeaks:
    """Peaks found in one block, in the block array's voxel coordinates.

    Attributes
    ----------
    start_index : array of int64, shape (N,)
        Flat C-order index (in the block array) of each peak's initial extremum.
    kind : array of int8, shape (N,)
        +1 image maximum (DoG minimum), -1 image minimum.
    position_zyx : array of float64, shape (N, 3)
        Refined sub-pixel position (global voxels ``array voxel + origin``, z, y, x).
    value : array of float64, shape (N,)
        Refined DoG value.
    initial_value : array of float32, shape (N,)
        DoG value at the initial extremum (the ``threshold / 3`` pre-test).
    """

    start_index: object
    kind: object
    position_zyx: object
    value: object
    initial_value: object


def find_peaks(
    backend: Backend,
    dog_zyx,
    core_zyx: tuple[slice, slice, slice],
    valid_lo_zyx,
    valid_hi_zyx,
    threshold: float,
    find_max: bool = True,
    find_min: bool = False,
    origin_zyx=(0, 0, 0),
) -> BlockPeaks:
    """Extrema of the DoG whose initial voxel lies in ``core_zyx``, localised to sub-pixel precision.

    Candidates are the core voxels with ``|dog| >= threshold / 3`` (a float32
    pre-test slightly below that bound; the kernel applies the exact test),
    found on the device; the fused ``dog_peaks`` kernel then tests the 26
    neighbours and localises, so nothing returns to the host in between.

    Parameters
    ----------
    backend : Backend
    dog_zyx : array
        DoG volume (float32, C-contiguous) on the backend's device.
    core_zyx : tuple of slice
        Step-1 slices: peaks are reported only for initial extrema inside.
    valid_lo_zyx, valid_hi_zyx : sequence of int
        Inclusive box (array voxels) every base position must stay in: the
        image shrunk by one voxel, in array coordinates.
    threshold : float
    find_max, find_min : bool
    origin_zyx : sequence of int
        Global voxel of the array's ``[0, 0, 0]``: positions are reported as
        ``(array voxel + origin) + offset``, identical bits for every block.

    Returns
    -------
    BlockPeaks
        Arrays on the backend's device, in C order of the initial voxel;
        ``position_zyx`` in global voxels.
    """
    xp = backend.xp
    ny, nx = dog_zyx.shape[1], dog_zyx.shape[2]
    pre = np.float32(threshold / 3.0) * np.float32(1.0 - 1e-6)
    zz, yy, xx = xp.nonzero(xp.abs(dog_zyx[core_zyx]) >= pre)
    cz, cy, cx = (s.start for s in core_zyx)
    index = ((zz.astype(xp.int64) + cz) * ny + (yy + cy)) * nx + (xx + cx)
    kind, position, value = backend.kernel("dog_peaks")(
        dog_zyx, index, valid_lo_zyx, valid_hi_zyx, threshold, find_max, find_min, MAX_MOVES, MOVE_TOLERANCE,
        origin_zyx,
    )
    keep = kind != 0
    start = index[keep]
    return BlockPeaks(start, kind[keep], position[keep], value[keep], dog_zyx.ravel()[start])
