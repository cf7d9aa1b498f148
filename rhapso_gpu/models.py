"""3-D transform models and their exact least-squares fits, batched over many point sets.

Every fit takes source and target points of shape ``(..., n, 3)`` (xyz, any
consistent unit, usually world pixels), optional non-negative weights
``(..., n)``, and returns affines of shape ``(..., 3, 4)`` (``[A | t]``, so
``target ≈ A @ source + t``) for every leading batch index at once. The array
module is an argument (``xp=numpy`` or ``cupy``), so the same code fits 10,000
RANSAC hypotheses on the CPU or on a GPU and serves the global solver.

The models are those of mpicbg as used by BigStitcher:

* ``translation`` (1 match): weighted mean offset.
* ``rigid`` (3 matches): weighted least-squares rotation + translation
  (Kabsch/Horn; the SVD form, identical optimum to Horn's quaternion method).
* ``affine`` (4 matches): weighted linear least squares of the 12 coefficients.
* ``identity`` (0 matches): only as a regulariser.
* A regularised model (mpicbg ``InterpolatedAffineModel3D``): the main and the
  regulariser model are fitted to the same matches and their coefficients are
  blended, ``(1 - lambda) * main + lambda * regulariser``.

A point set that does not determine the model (all points coplanar for the
affine, zero total weight) yields NaN coefficients, so a batch never raises on
a degenerate sample; NaN models score no inliers.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

KINDS = ("translation", "rigid", "affine")
"""Main model kinds."""

REGULARIZERS = ("none", "identity", "translation", "rigid", "affine")
"""Regulariser kinds (``none``: no regularisation)."""

MIN_MATCHES = {"identity": 0, "translation": 1, "rigid": 3, "affine": 4}
"""Fewest point matches that determine each model (mpicbg ``getMinNumMatches``)."""


def _weights(src, w, xp):
    if w is None:
        return xp.ones(src.shape[:-1], dtype=src.dtype)
    return xp.asarray(w, dtype=src.dtype)


def _centroids(src, dst, w, xp):
    """Weighted centroids ``(..., 3)`` of source and target, and the total weight ``(...)``."""
    total = w.sum(axis=-1)
    safe = xp.where(total > 0, total, xp.nan)
    pc = (w[..., None] * src).sum(axis=-2) / safe[..., None]
    qc = (w[..., None] * dst).sum(axis=-2) / safe[..., None]
    return pc, qc, total


def _assemble(a, t, xp):
    return xp.concatenate([a, t[..., :, None]], axis=-1)


def fit_translation(src, dst, weights=None, xp: ModuleType = np):
    """Weighted least-squares translation, ``(..., 3, 4)`` with the identity as linear part."""
    src, dst = xp.asarray(src, dtype=xp.float64), xp.asarray(dst, dtype=xp.float64)
    w = _weights(src, weights, xp)
    pc, qc, _ = _centroids(src, dst, w, xp)
    eye = xp.broadcast_to(xp.eye(3), pc.shape[:-1] + (3, 3))
    return _assemble(eye, qc - pc, xp)


def fit_rigid(src, dst, weights=None, xp: ModuleType = np):
    """Weighted least-squares rigid transform (proper rotation + translation), ``(..., 3, 4)``.

    Notes
    -----
    Maximises ``sum w (q - qc) . R (p - pc)`` with the SVD of the 3x3
    cross-covariance; a reflection is turned into the nearest rotation by
    flipping the axis of the smallest singular value.
    """
    src, dst = xp.asarray(src, dtype=xp.float64), xp.asarray(dst, dtype=xp.float64)
    w = _weights(src, weights, xp)
    pc, qc, _ = _centroids(src, dst, w, xp)
    p = src - pc[..., None, :]
    q = dst - qc[..., None, :]
    h = xp.einsum("...n,...ni,...nj->...ij", w, p, q)  # sum w p q^T
    h = xp.where(xp.isfinite(h), h, 0.0)
    u, _, vt = xp.linalg.svd(h)
    v = xp.swapaxes(vt, -1, -2)
    ut = xp.swapaxes(u, -1, -2)
    d = xp.sign(xp.linalg.det(v @ ut))
    d = xp.where(d == 0, 1.0, d)
    flip = xp.ones(d.shape + (3,), dtype=xp.float64)
    flip[..., 2] = d
    r = (v * flip[..., None, :]) @ ut
    t = qc - xp.einsum("...ij,...j->...i", r, pc)
    return _assemble(r, t, xp)


def _inverse3(m, xp):
    """Batched 3x3 inverse via the adjugate; NaN where the matrix is (numerically) singular."""
    a, b, c = m[..., 0, :], m[..., 1, :], m[..., 2, :]
    bc, ca, ab = xp.cross(b, c), xp.cross(c, a), xp.cross(a, b)
    det = (a * bc).sum(axis=-1)
    scale = (m * m).sum(axis=(-2, -1)) ** 1.5  # ||m||_F^3, the size of a well-conditioned det
    ok = xp.abs(det) > 1e-12 * scale
    inv = xp.stack([bc, ca, ab], axis=-1) / xp.where(ok, det, xp.nan)[..., None, None]
    return inv


def fit_affine(src, dst, weights=None, xp: ModuleType = np):
    """Weighted linear least-squares affine, ``(..., 3, 4)``; NaN when the sources are coplanar."""
    src, dst = xp.asarray(src, dtype=xp.float64), xp.asarray(dst, dtype=xp.float64)
    w = _weights(src, weights, xp)
    pc, qc, _ = _centroids(src, dst, w, xp)
    p = src - pc[..., None, :]
    q = dst - qc[..., None, :]
    cpp = xp.einsum("...n,...ni,...nj->...ij", w, p, p)
    cqp = xp.einsum("...n,...ni,...nj->...ij", w, q, p)
    a = cqp @ _inverse3(cpp, xp)
    t = qc - xp.einsum("...ij,...j->...i", a, pc)
    return _assemble(a, t, xp)


def fit_identity(src, dst, weights=None, xp: ModuleType = np):
    """The identity for every batch index, ``(..., 3, 4)`` (a regulariser)."""
    shape = xp.asarray(src).shape[:-2]
    eye = xp.concatenate([xp.eye(3), xp.zeros((3, 1))], axis=-1)
    return xp.broadcast_to(eye, shape + (3, 4)).copy()


FITS = {"identity": fit_identity, "translation": fit_translation, "rigid": fit_rigid, "affine": fit_affine}


def transform_points(models, points_xyz, xp: ModuleType = np):
    """Apply affines ``(..., 3, 4)`` to points ``(..., n, 3)`` (broadcasting), giving ``(..., n, 3)``."""
    models = xp.asarray(models)
    return xp.matmul(points_xyz, xp.swapaxes(models[..., :3], -1, -2)) + models[..., None, :, 3]


@dataclass(frozen=True)
class TransformModel:
    """A model to fit: a main kind, optionally regularised towards a second kind.

    Parameters
    ----------
    kind : str
        ``translation``, ``rigid`` or ``affine``.
    regularizer : str
        ``none``, ``identity``, ``translation``, ``rigid`` or ``affine``
        (BigStitcher's default for affine is ``rigid``).
    lam : float
        Weight of the regulariser in ``[0, 1]`` (BigStitcher's ``lambda``, default 0.1).
    """

    kind: str = "affine"
    regularizer: str = "rigid"
    lam: float = 0.1

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer {self.regularizer!r}: expected one of {', '.join(REGULARIZERS)}")
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError(f"lambda {self.lam}: expected a value in [0, 1]")

    @property
    def regularized(self) -> bool:
        """True when a regulariser is blended in (``regularizer`` not ``none`` and ``lam > 0``)."""
        return self.regularizer != "none" and self.lam > 0

    @property
    def min_matches(self) -> int:
        """Fewest matches that determine the model (the larger of main and regulariser)."""
        n = MIN_MATCHES[self.kind]
        return max(n, MIN_MATCHES[self.regularizer]) if self.regularized else n

    def fit(self, src, dst, weights=None, xp: ModuleType = np):
        """Fit to matches ``src -> dst`` (``(..., n, 3)`` each), giving affines ``(..., 3, 4)``."""
        main = FITS[self.kind](src, dst, weights, xp)
        if not self.regularized:
            return main
        reg = FITS[self.regularizer](src, dst, weights, xp)
        return (1.0 - self.lam) * main + self.lam * reg

    def describe(self) -> str:
        """Short text such as ``affine (rigid-regularised, lambda 0.1)``."""
        if not self.regularized:
            return self.kind
        return f"{self.kind} ({self.regularizer}-regularised, lambda {self.lam:g})"
