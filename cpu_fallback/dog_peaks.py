"""NumPy twin of ``dog_peaks.cu``: DoG extrema test plus quadratic sub-pixel localisation.

The contract (stated once here and in the ``.cu`` header) is BigStitcher's
peak finding and localisation (multiview-reconstruction ``DoGImgLib2`` with
imglib2 ``LocalExtrema`` and ``SubpixelLocalization``):

* a candidate is a DoG minimum (an image **maximum**, kind ``+1``) when
  ``find_max`` is set, ``dog <= -threshold / 3`` and no 26-neighbour is
  smaller; a DoG maximum (image **minimum**, kind ``-1``) when ``find_min`` is
  set, ``dog >= threshold / 3`` and no 26-neighbour is larger (non-strict);
* Newton steps ``offset = -H^-1 g`` from central differences in double
  precision, moving the base voxel by one along every axis whose
  ``|offset| > 0.5 + moves * move_tolerance``, at most ``max_moves`` moves;
  a base outside ``[lo, hi]`` or no convergence rejects the peak;
* the refined value ``dog(base) + g . offset / 2`` must satisfy
  ``|value| > threshold``.

Everything is vectorised over candidates (no Python loop per peak); the
per-candidate arithmetic is written in the same order as the CUDA kernel, so
both give the same bits on IEEE hardware without fused multiply-add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError

BATCH = 1 << 18
"""Candidates processed together, bounding the temporary (BATCH, 27) gather."""


@dataclass(frozen=True)
class PeakRequest:
    """A checked :func:`dog_peaks` request.

    Attributes
    ----------
    shape : tuple of int
        DoG volume shape (z, y, x) in voxels.
    lo_zyx, hi_zyx : tuple of int
        Inclusive box of allowed base positions (array voxel coordinates, z, y, x).
    threshold : float
        DoG threshold (normalised intensity units).
    find_max, find_min : bool
        Report image maxima (DoG minima) and/or image minima (DoG maxima).
    max_moves : int
        Maximum number of base moves during localisation.
    move_tolerance : float
        Growth of the move tolerance per move (BigStitcher: 0.01).
    origin_zyx : tuple of int
        Integer added to the base before the sub-pixel offset in the reported position.
    """

    shape: tuple[int, int, int]
    lo_zyx: tuple[int, int, int]
    hi_zyx: tuple[int, int, int]
    threshold: float
    find_max: bool
    find_min: bool
    max_moves: int
    move_tolerance: float
    origin_zyx: tuple[int, int, int]


def plan_dog_peaks(
    shape, dtype, lo_zyx, hi_zyx, threshold, find_max, find_min, max_moves, move_tolerance, origin_zyx=(0, 0, 0)
) -> PeakRequest:
    """Check a :func:`dog_peaks` request (shared by the twin and the CUDA wrapper).

    The box ``[lo, hi]`` is clipped to the array shrunk by one voxel, so every
    26-neighbour access stays inside the array.

    Raises
    ------
    UserError
        For a volume that is not 3-D float32, a negative threshold or move count.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise UserError(f"dog_peaks: expected a 3-D (z, y, x) volume, got shape {shape}")
    if np.dtype(dtype) != np.float32:
        raise UserError(f"dog_peaks: the DoG volume must be float32, got {np.dtype(dtype).name}")
    if not threshold >= 0:
        raise UserError(f"dog_peaks: threshold must be >= 0, got {threshold}")
    if int(max_moves) < 0:
        raise UserError(f"dog_peaks: max_moves must be >= 0, got {max_moves}")
    lo = tuple(max(1, int(v)) for v in lo_zyx)
    hi = tuple(min(n - 2, int(v)) for n, v in zip(shape, hi_zyx))
    origin = tuple(int(v) for v in origin_zyx)
    if len(origin) != 3:
        raise UserError(f"dog_peaks: origin must have 3 values (z, y, x), got {origin_zyx}")
    return PeakRequest(
        shape, lo, hi, float(threshold), bool(find_max), bool(find_min), int(max_moves), float(move_tolerance), origin
    )


_FACES = np.array([4, 10, 12, 14, 16, 22])
"""Positions of the 6 face neighbours in the 27-neighbourhood of :func:`_neighbour_offsets`."""


def _neighbour_offsets(ny: int, nx: int) -> np.ndarray:
    dz, dy, dx = np.meshgrid([-1, 0, 1], [-1, 0, 1], [-1, 0, 1], indexing="ij")
    return ((dz * ny + dy) * nx + dx).ravel().astype(np.int64)


def _unravel(index: np.ndarray, ny: int, nx: int) -> np.ndarray:
    return np.stack([index // (nx * ny), (index // nx) % ny, index % nx], axis=1)


def _inside(pos: np.ndarray, lo, hi) -> np.ndarray:
    return np.all((pos >= np.asarray(lo)) & (pos <= np.asarray(hi)), axis=1)


def _fit(flat: np.ndarray, base: np.ndarray, ny: int, nx: int):
    """Gradient-Newton fit at integer bases (M, 3): value a0, gradient g (M, 3), offset (M, 3)."""
    z, y, x = base[:, 0], base[:, 1], base[:, 2]

    def at(dz, dy, dx):
        return flat[((z + dz) * ny + (y + dy)) * nx + (x + dx)].astype(np.float64)

    a0 = at(0, 0, 0)
    zp, zm, yp, ym, xp, xm = at(1, 0, 0), at(-1, 0, 0), at(0, 1, 0), at(0, -1, 0), at(0, 0, 1), at(0, 0, -1)
    gz, gy, gx = (zp - zm) * 0.5, (yp - ym) * 0.5, (xp - xm) * 0.5
    hzz = (zp - 2.0 * a0) + zm
    hyy = (yp - 2.0 * a0) + ym
    hxx = (xp - 2.0 * a0) + xm
    hzy = (((at(1, 1, 0) - at(-1, 1, 0)) - at(1, -1, 0)) + at(-1, -1, 0)) * 0.25
    hzx = (((at(1, 0, 1) - at(-1, 0, 1)) - at(1, 0, -1)) + at(-1, 0, -1)) * 0.25
    hyx = (((at(0, 1, 1) - at(0, -1, 1)) - at(0, 1, -1)) + at(0, -1, -1)) * 0.25
    c00 = hyy * hxx - hyx * hyx
    c01 = hzx * hyx - hzy * hxx
    c02 = hzy * hyx - hzx * hyy
    c11 = hzz * hxx - hzx * hzx
    c12 = hzy * hzx - hzz * hyx
    c22 = hzz * hyy - hzy * hzy
    det = (hzz * c00 + hzy * c01) + hzx * c02
    singular = det == 0.0
    safe = np.where(singular, 1.0, det)
    oz = np.where(singular, 0.0, -((c00 * gz + c01 * gy) + c02 * gx) / safe)
    oy = np.where(singular, 0.0, -((c01 * gz + c11 * gy) + c12 * gx) / safe)
    ox = np.where(singular, 0.0, -((c02 * gz + c12 * gy) + c22 * gx) / safe)
    refined = a0 + 0.5 * ((gz * oz + gy * oy) + gx * ox)
    return refined, np.stack([oz, oy, ox], axis=1)


def _batch(flat, cand, req: PeakRequest, offsets):
    _, ny, nx = req.shape
    n = len(cand)
    kind = np.zeros(n, np.int8)
    position = np.zeros((n, 3), np.float64)
    value = np.zeros(n, np.float64)
    base = _unravel(cand, ny, nx)
    ok = _inside(base, req.lo_zyx, req.hi_zyx)
    rows = np.flatnonzero(ok)
    third = req.threshold / 3.0
    centre = flat[cand[rows]]
    wide = centre.astype(np.float64)
    rows = rows[(req.find_max & (wide <= -third)) | (req.find_min & (wide >= third))]
    # the 6 face neighbours first (cheap, rejects most candidates), then all 26: the same decision
    for neighbour_offsets in (offsets[_FACES], offsets):
        centre = flat[cand[rows]]
        neighbours = flat[cand[rows][:, None] + neighbour_offsets[None, :]]
        wide = centre.astype(np.float64)
        is_min = (req.find_max & (wide <= -third)) & ~np.any(neighbours < centre[:, None], axis=1)
        is_max = (req.find_min & (wide >= third)) & ~np.any(neighbours > centre[:, None], axis=1)
        keep = is_min | is_max
        rows, is_min = rows[keep], is_min[keep]
    sign = np.where(is_min, 1, -1).astype(np.int8)
    current = base[rows]
    for moves in range(req.max_moves + 1):
        inside = _inside(current, req.lo_zyx, req.hi_zyx)
        rows, sign, current = rows[inside], sign[inside], current[inside]
        if len(rows) == 0:
            break
        refined, offset = _fit(flat, current, ny, nx)
        tolerance = 0.5 + moves * req.move_tolerance
        over = np.abs(offset) > tolerance
        moved = np.any(over, axis=1)
        done = ~moved
        accept = done & (np.abs(refined) > req.threshold)
        r = rows[accept]
        kind[r] = sign[accept]
        position[r] = (current[accept] + np.asarray(req.origin_zyx)).astype(np.float64) + offset[accept]
        value[r] = refined[accept]
        step = np.where(over, np.where(offset > 0.0, 1, -1), 0)
        rows, sign, current = rows[moved], sign[moved], (current + step)[moved]
    return kind, position, value


def dog_peaks(
    dog_zyx: np.ndarray,
    candidates: np.ndarray,
    lo_zyx,
    hi_zyx,
    threshold: float,
    find_max: bool = True,
    find_min: bool = False,
    max_moves: int = 10,
    move_tolerance: float = 0.01,
    origin_zyx=(0, 0, 0),
):
    """Test candidates for DoG extrema and localise them (NumPy twin of ``dog_peaks.cu``).

    Parameters
    ----------
    dog_zyx : numpy.ndarray
        DoG volume, float32, axis order (z, y, x).
    candidates : numpy.ndarray
        Flat C-order indices (int64) of the voxels to test.
    lo_zyx, hi_zyx : sequence of int
        Inclusive box (array voxel coordinates, z, y, x) that every base position
        must stay in; clipped to the array shrunk by one voxel.
    threshold : float
        Final ``|value| > threshold``; candidates need ``|dog| >= threshold / 3``.
    find_max, find_min : bool
        Report image maxima (DoG minima, kind +1) and/or image minima (kind -1).
    max_moves : int
        Maximum base moves (BigStitcher: 10).
    move_tolerance : float
        Move tolerance growth per move (BigStitcher: 0.01).
    origin_zyx : sequence of int
        Integer origin added to the base voxel before the sub-pixel offset, so
        that blocks of one image report identical global positions.

    Returns
    -------
    kind : numpy.ndarray of int8, shape (N,)
        +1 image maximum, -1 image minimum, 0 rejected.
    position_zyx : numpy.ndarray of float64, shape (N, 3)
        Sub-pixel position ``(base + origin) + offset`` (z, y, x); 0 where rejected.
    value : numpy.ndarray of float64, shape (N,)
        Refined DoG value; 0 where rejected.
    """
    req = plan_dog_peaks(
        dog_zyx.shape,
        dog_zyx.dtype,
        lo_zyx,
        hi_zyx,
        threshold,
        find_max,
        find_min,
        max_moves,
        move_tolerance,
        origin_zyx,
    )
    flat = np.ascontiguousarray(dog_zyx).ravel()
    cand = np.asarray(candidates, dtype=np.int64).ravel()
    offsets = _neighbour_offsets(req.shape[1], req.shape[2])
    parts = [_batch(flat, cand[i : i + BATCH], req, offsets) for i in range(0, len(cand), BATCH)]
    if not parts:
        return np.zeros(0, np.int8), np.zeros((0, 3), np.float64), np.zeros(0, np.float64)
    kinds, positions, values = zip(*parts)
    return np.concatenate(kinds), np.concatenate(positions), np.concatenate(values)
