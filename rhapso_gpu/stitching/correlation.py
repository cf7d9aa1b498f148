"""Phase correlation of two masked volumes on the same grid, checked by cross-correlation.

BigStitcher's pairwise shift: the phase-correlation matrix (PCM) proposes the
``peaks`` highest local maxima; each is checked by the Pearson correlation
``r`` of the overlapping parts of the two volumes at that shift; the best
``r`` wins and is refined to sub-pixel precision. The volumes are zero-padded
to the size of their full linear correlation, so a peak has one meaning
(no wrap-around interpretations to try). ``r`` for every shift comes from
masked normalised cross-correlation by FFT (Padfield 2012), so only pixels
inside both volumes count, whatever their shapes.

Arrays are **zyx** on the backend's device; shifts are returned **xyz** in
grid pixels. The shift ``t`` maps the moving volume onto the fixed one:
``fixed(x) ~ moving(x - t)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.fft import next_fast_len

_TINY = 1e-12


@dataclass(frozen=True)
class ShiftResult:
    """Outcome of :func:`phase_correlate`.

    Attributes
    ----------
    shift_xyz : ndarray, shape (3,) or None
        Sub-pixel shift (xyz, grid pixels) mapping moving onto fixed, or None
        when no candidate peak had enough overlap.
    r : float
        Pearson correlation of the overlapping parts at the best integer shift
        (the checked peak with the best ``r``, moved uphill in ``r`` to its local maximum).
    overlap : int
        Pixels inside both volumes at that shift.
    candidates : list of (tuple of int, float)
        Each checked peak: integer shift (xyz) and its ``r``, in PCM order.
    at_edge : bool
        The best shift lies on the edge of the shifts allowed (``max_shift``,
        ``min_extent``): ``r`` still grows outwards, so the true peak may lie
        outside and the shift is not a measurement.
    """

    shift_xyz: np.ndarray | None
    r: float
    overlap: int
    candidates: list[tuple[tuple[int, int, int], float]]
    at_edge: bool = False


def _correlate(xp, fa, fb, shape):
    """Linear cross-correlation ``c(t) = sum_x a(x) b(x - t)`` from real FFTs of a and b."""
    return xp.fft.irfftn(fa * xp.conj(fb), s=shape, axes=(0, 1, 2))


def masked_ncc(xp, fixed, fixed_mask, moving, moving_mask):
    """Pearson correlation of the overlapping parts for every integer shift, and the overlap sizes.

    Parameters
    ----------
    xp : module
        NumPy or CuPy.
    fixed, moving : array, zyx
        Volumes of any (possibly different) shapes.
    fixed_mask, moving_mask : array of bool, zyx
        Where each volume holds data.

    Returns
    -------
    r, count : array, zyx
        Over the padded shift grid (index ``i`` is shift ``i``, negative shifts wrap
        to the end): correlation and number of pixels inside both volumes.
    shape : tuple of int
        The padded grid shape (zyx).
    """
    shape = tuple(next_fast_len(int(a + b - 1), real=True) for a, b in zip(fixed.shape, moving.shape))
    ma, mb = fixed_mask.astype(xp.float64), moving_mask.astype(xp.float64)
    a = xp.where(fixed_mask, fixed - fixed[fixed_mask].mean(), 0.0).astype(xp.float64)
    b = xp.where(moving_mask, moving - moving[moving_mask].mean(), 0.0).astype(xp.float64)
    ffts = {name: xp.fft.rfftn(v, s=shape, axes=(0, 1, 2)) for name, v in
            (("ma", ma), ("mb", mb), ("a", a), ("b", b), ("aa", a * a), ("bb", b * b))}
    count = xp.rint(_correlate(xp, ffts["ma"], ffts["mb"], shape))
    n = xp.maximum(count, 1.0)
    sa = _correlate(xp, ffts["a"], ffts["mb"], shape)
    sb = _correlate(xp, ffts["ma"], ffts["b"], shape)
    var_a = _correlate(xp, ffts["aa"], ffts["mb"], shape) - sa * sa / n
    var_b = _correlate(xp, ffts["ma"], ffts["bb"], shape) - sb * sb / n
    cov = _correlate(xp, ffts["a"], ffts["b"], shape) - sa * sb / n
    denom = xp.sqrt(xp.maximum(var_a, 0.0) * xp.maximum(var_b, 0.0))
    r = xp.where((denom > _TINY * n) & (count > 0), cov / xp.maximum(denom, _TINY), 0.0)
    return xp.clip(r, -1.0, 1.0), count, shape


def phase_correlation_matrix(xp, fixed, fixed_mask, moving, moving_mask, shape):
    """The PCM over the padded shift grid: ``IFFT(F_a conj(F_b) / |F_a conj(F_b)|)`` of the mean-free masked volumes."""
    a = xp.where(fixed_mask, fixed - fixed[fixed_mask].mean(), 0.0)
    b = xp.where(moving_mask, moving - moving[moving_mask].mean(), 0.0)
    cross = xp.fft.rfftn(a, s=shape, axes=(0, 1, 2)) * xp.conj(xp.fft.rfftn(b, s=shape, axes=(0, 1, 2)))
    return xp.fft.irfftn(cross / xp.maximum(xp.abs(cross), _TINY), s=shape, axes=(0, 1, 2))


def _signed(index, shape):
    """Padded-grid index (zyx) -> signed shift (zyx)."""
    return tuple(int(i) - n if i > n // 2 else int(i) for i, n in zip(index, shape))


def _parabola_offset(minus: float, centre: float, plus: float) -> float:
    """Vertex of the parabola through (-1, minus), (0, centre), (1, plus), clamped to [-0.5, 0.5]."""
    curvature = minus - 2.0 * centre + plus
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / curvature, -0.5, 0.5))


def _signed_axis(xp, n):
    idx = xp.arange(n)
    return xp.where(idx > n // 2, idx - n, idx)


def _within(xp, shape, max_shift_xyz):
    """Shifts (padded grid, zyx) with ``|t| <= max_shift`` per axis (xyz given)."""
    ok = xp.ones(shape, dtype=bool)
    for axis, limit in enumerate(reversed(list(max_shift_xyz))):
        view = [1, 1, 1]
        view[axis] = shape[axis]
        ok = ok & (xp.abs(_signed_axis(xp, shape[axis])) <= float(limit)).reshape(view)
    return ok


def _extent_ok(backend, fixed_mask, moving_mask, shape, min_extent_xyz):
    """Shifts where the footprints of the two masks overlap by ``min_extent`` pixels along every axis.

    Per axis, the footprint is the mask projected on that axis; its overlap at
    shift ``t`` is the 1-D correlation of the two projections.
    """
    xp = backend.xp
    ok = xp.ones(shape, dtype=bool)
    for axis, need in enumerate(reversed(list(min_extent_xyz))):
        others = tuple(a for a in range(3) if a != axis)
        pa = backend.to_host(fixed_mask.any(axis=others)).astype(np.float64)
        pb = backend.to_host(moving_mask.any(axis=others)).astype(np.float64)
        n = shape[axis]
        extent = np.rint(np.fft.irfft(np.fft.rfft(pa, n) * np.conj(np.fft.rfft(pb, n)), n))
        view = [1, 1, 1]
        view[axis] = n
        ok = ok & backend.asarray(extent >= max(float(need), 1.0)).reshape(view)
    return ok


def _climb(r, allowed, start):
    """From ``start``, step to the best of the 26 neighbours while ``r`` grows (the PCM peak is only near the r peak)."""
    shape = r.shape
    steps = [np.array(d) - 1 for d in np.ndindex(3, 3, 3) if d != (1, 1, 1)]
    here = tuple(int(i) for i in start)
    while True:
        around = [tuple((np.array(here) + d) % shape) for d in steps]
        around = [p for p in around if allowed[p]]
        nxt = max(around, key=lambda p: r[p], default=here)
        if r[nxt] <= r[here]:
            return here
        here = nxt


def phase_correlate(
    backend,
    fixed,
    fixed_mask,
    moving,
    moving_mask,
    peaks: int = 5,
    max_shift_xyz=None,
    min_extent_xyz=(1, 1, 1),
    subpixel: bool = True,
) -> ShiftResult:
    """The shift that maps ``moving`` onto ``fixed`` (both on the same grid).

    Parameters
    ----------
    backend : rhapso_gpu.backend.Backend
        Array backend; ``fixed``/``moving`` and masks are converted to it.
    fixed, moving : array, zyx
        Volumes sampled on the same grid.
    fixed_mask, moving_mask : array of bool, zyx
        Where each volume holds data.
    peaks : int
        How many PCM maxima to check by cross-correlation (BigStitcher: 5).
    max_shift_xyz : sequence of float, optional
        Only shifts with ``|t| <= max_shift`` per axis (grid pixels) are considered.
    min_extent_xyz : sequence of int
        Only shifts where the volumes' footprints overlap by at least this many
        grid pixels along each axis (xyz).
    subpixel : bool
        Refine the best peak by a parabola through ``r`` at its neighbours, per axis.

    Returns
    -------
    ShiftResult
    """
    xp = backend.xp
    fixed, moving = backend.asarray(fixed, xp.float64), backend.asarray(moving, xp.float64)
    fixed_mask, moving_mask = backend.asarray(fixed_mask, bool), backend.asarray(moving_mask, bool)
    if not bool(fixed_mask.any()) or not bool(moving_mask.any()):
        return ShiftResult(None, 0.0, 0, [])
    r, count, shape = masked_ncc(xp, fixed, fixed_mask, moving, moving_mask)
    pcm = phase_correlation_matrix(xp, fixed, fixed_mask, moving, moving_mask, shape)
    allowed = (count > 0) & _extent_ok(backend, fixed_mask, moving_mask, shape, min_extent_xyz)
    if max_shift_xyz is not None:
        allowed &= _within(xp, shape, max_shift_xyz)
    local_max = pcm >= backend.ndimage.maximum_filter(pcm, size=3, mode="wrap")
    score = xp.where(allowed & local_max, pcm, -xp.inf)
    flat = backend.to_host(score).ravel()
    order = np.argsort(-flat, kind="stable")[: max(int(peaks), 1)]
    order = order[np.isfinite(flat[order])]
    if order.size == 0:
        return ShiftResult(None, 0.0, 0, [])
    r_host, count_host = backend.to_host(r), backend.to_host(count)
    candidates = []
    best = None
    for flat_index in order:
        index = np.unravel_index(int(flat_index), shape)
        value = float(r_host[index])
        candidates.append((tuple(reversed(_signed(index, shape))), value))
        if best is None or value > float(r_host[best]):
            best = index
    allowed_host = backend.to_host(allowed)
    best = _climb(r_host, allowed_host, best)
    shift_zyx = np.array(_signed(best, shape), dtype=np.float64)
    at_edge = False
    for axis in range(3):
        around = []
        for step in (-1, 0, 1):
            neighbour = list(best)
            neighbour[axis] = (neighbour[axis] + step) % shape[axis]
            around.append(float(r_host[tuple(neighbour)]) if allowed_host[tuple(neighbour)] else None)
        if None in around:
            at_edge = True
        elif subpixel:
            shift_zyx[axis] += _parabola_offset(*around)
    return ShiftResult(shift_zyx[::-1].copy(), float(r_host[best]), int(count_host[best]), candidates, at_edge)
