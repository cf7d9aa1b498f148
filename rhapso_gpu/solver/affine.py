"""The affine and the regularised affine solve: Newton's method on mpicbg's fixed-point equation.

mpicbg's ``InterpolatedAffineModel3D`` fits, per tile, the affine ``Aff_i`` and
the regulariser ``Reg_i`` (rigid, translation or identity) to the tile's matches
towards its neighbours' current positions and blends their coefficients;
``TileConfiguration`` repeats that until nothing moves. Its fixed point solves,
per free tile (``x_i`` the tile's model as 12 numbers, ``D_i`` its point
moments, ``c_i = sum_j S_ij x_j`` the moments towards the neighbours, see
:mod:`~rhapso_gpu.solver.linear`)::

    r_i(x) = D_i x_i - (1 - lambda) c_i - lambda D_i g_i(c_i) = 0,   g_i = Reg_i's fit

since ``Aff_i = D_i^-1 c_i``. The plain iteration converges slowly on large
grids (smooth deformations are held only by the weak regulariser); Newton's
method converges quadratically. The fit's derivative ``J_i = dg_i / dc_i`` is
symmetric (:func:`fit_jacobian`), so row ``i`` of the linearised equation
times ``((1 - lambda) D_i^-1 + lambda J_i)^-1 D_i^-1`` is a symmetric system::

    E_i dx_i - sum_j S_ij dx_j = -E_i D_i^-1 r_i,   E_i = ((1 - lambda) D_i^-1 + lambda J_i)^-1

solved sparse (:func:`~rhapso_gpu.solver.linear.factorize`: LU, or beyond
:data:`NEWTON_DIRECT_MAX` unknowns conjugate gradients to :data:`NEWTON_RTOL` with a
coarse space of one affine change per block of tiles). Where ``J_i`` exceeds
``D_i^-1`` the matrix may be indefinite; if conjugate gradients then fail,
the step is taken with ``J_i`` clipped (:func:`_clip`, ``E_i >= D_i``,
definite), shortened while it enlarges the refits' steps. The identity and
translation regularisers make the equation linear (one step, and one to see
nothing moves).

Tiles whose matches do not determine an affine follow the regulariser alone
(``x_i = g_i``), updated after every step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from rhapso_gpu.models import TransformModel
from rhapso_gpu.solver.graph import LinkMoments
from rhapso_gpu.solver.linear import (
    SolveStats,
    _block_matrix,
    _free_index,
    _LinearSolver,
    _skew,
    _tile_diagonal,
    _vec,
    block_prolongation,
    coarse_blocks,
    factorize,
    fit_tiles,
    model_change,
    tile_fit_moments,
)

NEWTON_RTOL = 1e-3
"""Relative residual of the conjugate-gradient solve of a Newton step (an inexact Newton step; the steps
shrink by at least this factor, and the last ones are tiny)."""
NEWTON_DIRECT_MAX = 2_000
"""Largest Newton system (12 unknowns per tile) solved by sparse LU; measured on the bench's 3-D grids,
conjugate gradients are already twice as fast at 300 tiles (3,500 unknowns) and six times at 1,000."""
MAX_HALVINGS = 20
"""Most halvings of a clipped step before it is taken as it is."""


def solve_affine(n_tiles, link_a, link_b, moments: LinkMoments, fixed: np.ndarray, models: np.ndarray,
                 model: TransformModel, max_iterations: int = 100, tolerance: float = 1e-6, extent: float = 1.0):
    """Affine or regularised affine models: the fixed point of ``M = (1 - lambda) Aff(M) + lambda Reg(M)``.

    Parameters
    ----------
    n_tiles : int
    link_a, link_b : ndarray of int (L,)
    moments : LinkMoments
    fixed : ndarray of bool (n_tiles,)
        Tiles that keep their model.
    models : ndarray (n_tiles, 3, 4)
        Start (world xyz -> corrected world xyz).
    model : TransformModel
        ``affine``; ``regularizer`` and ``lam`` as mpicbg's ``InterpolatedAffineModel3D``.
    max_iterations : int
        Most Newton steps.
    tolerance : float
        Stop when no tile's model moves a point within ``extent`` of the origin
        by more than this in a step (world units).
    extent : float
        Size of the region the tolerance refers to (world units).

    Returns
    -------
    models : ndarray (n_tiles, 3, 4)
    stats : SolveStats
    """
    lam = model.lam if model.regularized else 0.0
    reg_kind = model.regularizer if model.regularized else "rigid"
    free = ~np.asarray(fixed, bool)
    d = _tile_diagonal(n_tiles, link_a, link_b, moments)
    determined = affine_determined(d)
    follow = free & ~determined  # x_i = g_i
    unknown = free & determined
    if lam == 0.0 and not follow.any():  # a linear least-squares problem
        solver = _LinearSolver(_block_matrix(n_tiles, link_a, link_b, moments), free)
        return solver(np.zeros((4 * n_tiles, 3)), models), SolveStats(1, 0.0, True)
    if lam == 1.0:
        raise ValueError("lambda 1 is the regulariser alone: solve with the regulariser's model")
    ui = np.flatnonzero(unknown)
    d12 = np.einsum("nab,rs->narbs", d, np.eye(3)).reshape(n_tiles, 12, 12)  # D_i at index 3 c + r
    coupling = sp.kron(_block_matrix(n_tiles, link_a, link_b, moments, diag=False), sp.identity(3), format="csr")
    coupling = coupling[_free_index(unknown, 12)][:, _free_index(unknown, 12)]  # -S_ij blocks
    inv_d12 = np.linalg.inv(d12[ui])
    coarse = None  # for conjugate gradients (large systems): one affine change per block of tiles
    if ui.size:
        centers = d[:, :3, 3] / np.where(d[:, 3, 3] > 0, d[:, 3, 3], 1.0)[:, None]
        block, mean = coarse_blocks(centers, ui, link_a, link_b)
        coarse = block_prolongation(np.repeat(np.eye(12)[None], ui.size, axis=0), block, len(mean))

    def evaluate(current):
        """Residual (n, 12) of the fixed-point equation at ``current``, the moments ``c`` and the regulariser's fits."""
        _, c = tile_fit_moments(n_tiles, link_a, link_b, moments, current)
        g = fit_tiles(reg_kind, d, c)
        g = np.where(np.isfinite(g), g, current)
        x, gx = _vec(current).reshape(n_tiles, 12), _vec(g).reshape(n_tiles, 12)
        r = np.einsum("nab,nb->na", d12, x - lam * gx) - (1.0 - lam) * c.reshape(n_tiles, 12)
        return r, c, g

    def merit(r):
        """Sum of squares of the steps mpicbg's per-tile refits would take, ``D_i^-1 r_i``."""
        return float(((inv_d12 @ r[ui][:, :, None]) ** 2).sum())

    def newton_step(fit_jac, definite):
        """Newton's step (f, 3, 4): the linearised rows times ``(D_i^-1 W_i)^-1 = ((1 - lam) D_i^-1 + lam J_i)^-1``."""
        m = (1.0 - lam) * inv_d12 + lam * fit_jac
        e = np.linalg.inv(m)
        e = 0.5 * (e + np.swapaxes(e, 1, 2))
        rhs = -np.linalg.solve(m, inv_d12 @ r[ui][:, :, None])[:, :, 0]
        jac = sp.bsr_matrix((e, np.arange(ui.size), np.arange(ui.size + 1)), shape=coupling.shape).tocsr() + coupling
        solve = factorize(jac, 12, coarse, exact_fallback=definite, rtol=NEWTON_RTOL, direct_max=NEWTON_DIRECT_MAX)
        step = solve(rhs.ravel())
        if not np.isfinite(step).all():
            raise RuntimeError("Newton's step is not finite")
        return np.swapaxes(step.reshape(-1, 4, 3), 1, 2)

    x = models.copy()
    if follow.any():
        x[follow] = evaluate(x)[2][follow]
    r, c, g = evaluate(x)
    change = np.inf
    for it in range(1, max_iterations + 1):
        if ui.size == 0:
            return x, SolveStats(it, 0.0, True)
        fit_jac = fit_jacobian(reg_kind, d[ui], c[ui], g[ui])
        new = x.copy()
        try:  # Newton's full step: it converges quadratically where it may look worse on the way
            new[ui] += newton_step(fit_jac, False)
            new_r, new_c, new_g = evaluate(new)
        except RuntimeError:  # Newton's matrix is not positive definite here: clip the fits' curvature
            step, scale, before = newton_step(_clip(fit_jac, d[ui]), True), 1.0, merit(r)
            for _ in range(MAX_HALVINGS):  # and shorten the step while the refits' steps would grow
                new = x.copy()
                new[ui] += scale * step
                new_r, new_c, new_g = evaluate(new)
                if merit(new_r) <= before:
                    break
                scale *= 0.5
        if follow.any():
            new[follow] = new_g[follow]
            new_r, new_c, new_g = evaluate(new)
        change = model_change(new, x, extent)
        x, r, c, g = new, new_r, new_c, new_g
        if change <= tolerance:
            return x, SolveStats(it, change, True)
    return x, SolveStats(max_iterations, change, False)


def fit_jacobian(kind: str, d: np.ndarray, c: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Derivative of the regulariser's fit ``g_i`` by the moments ``c_i`` (index ``3 c + r``), (f, 12, 12).

    The fit maximises ``<G, c> - tr(G D G^T) / 2`` over models ``G`` of its kind,
    so its derivative is the Hessian of a convex function: symmetric, positive
    semi-definite. Identity: zero. Translation: ``dt = dc_t / w``. Rigid: with
    ``H^T = R P`` the polar decomposition of the centred cross-moments,
    ``dR = R [omega]x`` with ``(tr(P) I - P) omega = vee(R^T dH^T - dH R)``
    and ``dt = dq_c - dR p_c``. Where the affine fit is far from rigid this can
    exceed ``D^-1`` (the rigid fit is then more sensitive than the affine one)
    and Newton's matrix may be indefinite; :func:`_clip` makes it definite.

    Parameters
    ----------
    kind : str
        ``identity``, ``translation`` or ``rigid``.
    d : ndarray (f, 4, 4)
        The tiles' point moments.
    c : ndarray (f, 4, 3)
        Their moments towards the neighbours.
    g : ndarray (f, 3, 4)
        The regulariser's fits at ``c``.
    """
    f = len(d)
    jac = np.zeros((f, 12, 12))
    if kind == "identity":
        return jac
    w = d[:, 3, 3]
    dc = np.broadcast_to(np.eye(12).reshape(12, 4, 3), (f, 12, 4, 3))  # unit perturbations of c
    dq = dc[:, :, 3, :] / w[:, None, None]  # (f, 12, 3) change of the target centroid
    if kind == "translation":
        jac[:, :, 9:] = dq
        return jac
    pc = d[:, :3, 3] / w[:, None]
    qc = c[:, 3, :] / w[:, None]
    rot = g[:, :, :3]
    h = c[:, :3, :] - w[:, None, None] * pc[:, :, None] * qc[:, None, :]
    pol = np.swapaxes(rot, 1, 2) @ np.swapaxes(h, 1, 2)
    pol = 0.5 * (pol + np.swapaxes(pol, 1, 2))
    dh = dc[:, :, :3, :] - pc[:, None, :, None] * dc[:, :, 3, None, :]  # (f, 12, 3, 3)
    y = np.swapaxes(rot, 1, 2)[:, None] @ np.swapaxes(dh, 2, 3) - dh @ rot[:, None]
    vee = np.stack([y[..., 2, 1], y[..., 0, 2], y[..., 1, 0]], axis=-1)  # (f, 12, 3)
    lhs = np.trace(pol, axis1=1, axis2=2)[:, None, None] * np.eye(3) - pol
    ev, u = np.linalg.eigh(lhs)  # singular only for degenerate fits (points on a line): floored
    ev = np.maximum(ev, 1e-12 * np.abs(ev).max(axis=1, keepdims=True) + 1e-300)
    omega = np.einsum("fij,fj,fkj,fmk->fmi", u, 1.0 / ev, u, vee)
    drot = rot[:, None] @ _skew(omega)  # (f, 12, 3, 3)
    dt = dq - np.einsum("fkij,fj->fki", drot, pc)
    dg = np.concatenate([drot, dt[..., None]], axis=3)  # (f, 12, 3, 4)
    jac[:] = np.swapaxes(dg, 2, 3).reshape(f, 12, 12)  # row: perturbation of c, column: change of g
    jac = np.swapaxes(jac, 1, 2)
    return 0.5 * (jac + np.swapaxes(jac, 1, 2))


def _clip(jac: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``jac`` with ``D^(1/2) jac D^(1/2)``'s eigenvalues clipped to [0, 1] (``D = kron(d, I3)``, index 3 c + r).

    Then ``E_i >= D_i`` and Newton's matrix is at least the (definite) affine
    one; Gauss-Newton's tangent projection is such a ``J``.
    """
    f = len(d)
    chol = np.linalg.cholesky(np.einsum("nab,rs->narbs", d, np.eye(3)).reshape(f, 12, 12))
    scaled = np.swapaxes(chol, 1, 2) @ jac @ chol
    lam, u = np.linalg.eigh(0.5 * (scaled + np.swapaxes(scaled, 1, 2)))
    scaled = (u * np.clip(lam, 0.0, 1.0)[:, None, :]) @ np.swapaxes(u, 1, 2)
    inv = np.linalg.inv(chol)
    return np.swapaxes(inv, 1, 2) @ scaled @ inv


def affine_determined(d: np.ndarray, rel: float = 1e-8) -> np.ndarray:
    """Tiles whose matched points determine an affine: their weighted covariance has full rank, (n,) bool."""
    w = d[:, 3, 3]
    safe = np.where(w > 0, w, 1.0)
    mean = d[:, :3, 3] / safe[:, None]
    cov = d[:, :3, :3] / safe[:, None, None] - mean[:, :, None] * mean[:, None, :]
    ev = np.linalg.eigvalsh(0.5 * (cov + np.swapaxes(cov, 1, 2)))
    return (w > 0) & (ev[:, 0] > rel * np.maximum(ev[:, 2], 1e-300))
