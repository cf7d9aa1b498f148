"""Localisation of peaks near the image border: a Gaussian fitted to the voxels inside the image.

BigStitcher's DoG mirrors the image at its border, so a bead within a few
voxels of the border merges with its own mirror image and the quadratic
localisation of the DoG peak is pulled towards the border (on ``synth`` beads
at ``dsxy 2``: about 1.5 world px within one voxel of a border against 0.07 px
inside). Thin z-overlaps between tiles lie entirely within such border slabs.

:func:`refine_border_peaks` re-localises exactly those peaks: a 3-D Gaussian
(background, amplitude, centre and one width per axis) is fitted by
Levenberg-Marquardt to the normalised image in a ``(2 r + 1)^3`` window around
the peak, using only the voxels that exist in the image: nothing mirrored or
padded enters the fit. A bead whose fitted centre lies more than half a
voxel outside the image is dropped (the view that contains it localises it);
where the fit does not settle on a bead (no convergence, non-positive
amplitude, implausible width, e.g. beads narrower than a voxel), the
quadratic position is kept. All peaks are fitted at once as array operations of the
backend; each peak's result depends only on its own window, so blocks agree
with a whole-view pass.

Coordinates are downsampled voxels, axis order (z, y, x), voxel centres at integers.
"""

from __future__ import annotations

import itertools

import numpy as np

BORDER_RADIUS = 3
"""Peaks closer than this to a border (downsampled voxels) are refitted; also the fit window's half size."""
ITERATIONS = 40
"""Levenberg-Marquardt iterations."""
CONVERGED = 0.01
"""A fit has converged when one more Gauss-Newton step would move its centre less than this (voxels)."""
WIDTH_RANGE = (0.3, 4.0)
"""Accepted fitted Gaussian sigma per axis (downsampled voxels)."""
OUTSIDE = 0.5
"""Largest distance (voxels) a fitted centre may lie outside the image."""


def near_border(position_zyx, shape_zyx, radius: int = BORDER_RADIUS, xp=np):
    """Mask of positions (N, 3) closer than ``radius`` to the border of an image of ``shape_zyx`` (any axis)."""
    last = xp.asarray(np.asarray(shape_zyx, dtype=np.float64) - 1.0)
    return xp.any((position_zyx < radius) | (position_zyx > last - radius), axis=1)


def _evaluate(xp, theta, u):
    """Gaussian values (N, M) and Jacobian (N, M, 8) at window offsets ``u`` (M, 3) for parameters (N, 8)."""
    b, a = theta[:, 0:1], theta[:, 1:2]
    c, s = theta[:, None, 2:5], theta[:, None, 5:8]
    d = (u[None, :, :] - c) / s
    g = xp.exp(-0.5 * (d * d).sum(axis=-1))  # (N, M)
    value = b + a * g
    jac = xp.empty(g.shape + (8,), dtype=g.dtype)
    jac[..., 0] = 1.0
    jac[..., 1] = g
    ag = (a * g)[..., None]
    jac[..., 2:5] = ag * d / s  # d value / d centre
    jac[..., 5:8] = ag * d * d / s  # d value / d sigma
    return value, jac


def fit_gaussians(xp, values, weights, offsets_zyx, start):
    """Least-squares Gaussian fits of many windows at once (Levenberg-Marquardt).

    Parameters
    ----------
    xp : module
        Array module.
    values, weights : array (N, M)
        Window voxel values and 0/1 weights (0: voxel outside the image).
    offsets_zyx : array (M, 3)
        Window voxel coordinates relative to the window centre.
    start : array (N, 8)
        Initial ``(background, amplitude, cz, cy, cx, sz, sy, sx)``.

    Returns
    -------
    theta : array (N, 8)
        Fitted parameters.
    converged : array of bool (N,)
        A last undamped Gauss-Newton step would move the centre by less than :data:`CONVERGED`.
    """
    theta = start.copy()
    lam = xp.full(theta.shape[0], 1e-2)
    value, jac = _evaluate(xp, theta, offsets_zyx)
    res = (values - value) * weights
    cost = (res * res).sum(axis=1)
    eye = xp.eye(8)
    for _ in range(ITERATIONS):
        step = _step(xp, jac, weights, res, lam, eye)
        trial = theta + step
        t_value, t_jac = _evaluate(xp, trial, offsets_zyx)
        t_res = (values - t_value) * weights
        t_cost = (t_res * t_res).sum(axis=1)
        better = xp.isfinite(t_cost) & (t_cost < cost)
        theta = xp.where(better[:, None], trial, theta)
        res = xp.where(better[:, None], t_res, res)
        jac = xp.where(better[:, None, None], t_jac, jac)
        cost = xp.where(better, t_cost, cost)
        lam = xp.where(better, lam * 0.1, lam * 10.0)
    # at a minimum, the undamped Gauss-Newton step no longer moves the centre
    final = _step(xp, jac, weights, res, xp.zeros_like(lam), eye)
    return theta, xp.isfinite(final).all(axis=1) & (xp.abs(final[:, 2:5]).max(axis=1) < CONVERGED)


def _step(xp, jac, weights, res, lam, eye):
    """Levenberg-Marquardt steps (N, 8) with damping ``lam`` (N,) on the diagonal."""
    jw = jac * weights[..., None]
    h = xp.matmul(jw.transpose(0, 2, 1), jac)
    g = xp.matmul(jw.transpose(0, 2, 1), res[..., None])
    damped = h + lam[:, None, None] * (h * eye) + 1e-12 * eye
    return xp.linalg.solve(damped, g)[..., 0]


def refine_border_peaks(xp, image_zyx, position_zyx, origin_zyx, shape_zyx, radius: int = BORDER_RADIUS):
    """Re-localise the peaks near the image border with a Gaussian fit to in-image voxels.

    Parameters
    ----------
    xp : module
        Array module of ``image_zyx`` and ``position_zyx``.
    image_zyx : array
        The normalised (and background-subtracted) image the DoG was computed
        from; array voxel ``i`` is image voxel ``i + origin_zyx``.
    position_zyx : array (N, 3) of float64
        Peak positions in image voxels (global downsampled voxels).
    origin_zyx : sequence of int
        Image voxel of the array's ``[0, 0, 0]``.
    shape_zyx : sequence of int
        Shape of the whole image (the border that matters).
    radius : int
        Peaks closer than this to the border are refitted, in a window of ``2 radius + 1`` voxels per axis.

    Returns
    -------
    position_zyx : array (N, 3)
        Positions, refitted ones replaced.
    keep : array of bool (N,)
        False for border peaks whose fitted centre lies outside the image (see the module notes).
    """
    position = xp.asarray(position_zyx, dtype=xp.float64).copy()
    keep = xp.ones(position.shape[0], dtype=bool)
    rows = xp.nonzero(near_border(position, shape_zyx, radius, xp))[0]
    if int(rows.size) == 0:
        return position, keep
    origin = xp.asarray(np.asarray(origin_zyx, dtype=np.int64))
    shape = xp.asarray(np.asarray(shape_zyx, dtype=np.int64))
    array_shape = xp.asarray(np.asarray(image_zyx.shape, dtype=np.int64))
    offsets = np.array(list(itertools.product(range(-radius, radius + 1), repeat=3)), dtype=np.int64)
    u = xp.asarray(offsets.astype(np.float64))
    pos = position[rows]
    centre = xp.clip(xp.rint(pos).astype(xp.int64), 0, shape - 1)  # (K, 3) image voxel
    voxel = centre[:, None, :] + xp.asarray(offsets)[None, :, :]  # (K, M, 3)
    local = voxel - origin
    inside = xp.all((voxel >= 0) & (voxel < shape) & (local >= 0) & (local < array_shape), axis=-1)
    safe = xp.where(inside[..., None], local, 0)
    values = image_zyx[safe[..., 0], safe[..., 1], safe[..., 2]].astype(xp.float64)
    weights = inside.astype(xp.float64)
    low = xp.min(xp.where(inside, values, xp.inf), axis=1)
    peak = values[:, len(offsets) // 2]  # the centre voxel is always inside the image
    start = xp.concatenate(
        [low[:, None], (peak - low)[:, None], pos - centre, xp.ones((pos.shape[0], 3))], axis=1
    )
    theta, converged = fit_gaussians(xp, values, weights, u, start)
    fitted = centre + theta[:, 2:5]
    width = xp.abs(theta[:, 5:8])
    settled = (
        converged
        & (theta[:, 1] > 0)
        & xp.all((width >= WIDTH_RANGE[0]) & (width <= WIDTH_RANGE[1]), axis=1)
        & xp.all(xp.abs(theta[:, 2:5]) <= radius, axis=1)
    )
    outside = xp.any((fitted < -OUTSIDE) | (fitted > shape - 1 + OUTSIDE), axis=1)
    position[rows] = xp.where((settled & ~outside)[:, None], fitted, pos)
    keep[rows] = ~(settled & outside)
    return position, keep
