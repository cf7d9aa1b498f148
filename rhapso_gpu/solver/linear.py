"""Direct sparse solves of the global optimisation (translation, rigid; the shared sparse machinery).

The error of tile models ``M_i`` (3x4, xyz) over all links is

    E(M) = sum_links sum_matches w |M_a h_a - M_b h_b|^2 = sum_r x_r^T K x_r

with ``x_r`` the r-th rows of all models stacked (4 per tile) and ``K`` the
block-sparse matrix with diagonal blocks ``D_i = sum S_ii`` and off-diagonal
blocks ``-S_ij`` (see :class:`~rhapso_gpu.solver.graph.LinkMoments`).

mpicbg's ``TileConfiguration`` fits each tile in turn to its neighbours'
current positions until nothing changes. Its fixed point is what is solved here
directly:

* translation, affine: the fixed point minimises ``E`` (block-coordinate
  stationarity is global stationarity of a convex quadratic); one sparse solve.
* rigid: a stationary point of ``E`` over rotations and translations; Newton
  (Gauss-Newton where Newton's step does not descend) on ``E`` with rotations
  about each tile's centre, a sparse solve per step.
* regularised affine, ``M_i = (1 - lambda) Aff_i(M) + lambda Reg_i(M)``:
  Gauss-Newton on that equation, see :mod:`rhapso_gpu.solver.affine`.

The per-tile fits are those of :mod:`rhapso_gpu.models`, applied to six virtual
point pairs per tile that have exactly the tile's weighted moments.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from rhapso_gpu.models import FITS
from rhapso_gpu.solver.graph import LinkMoments

IDENTITY = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)


@dataclass
class SolveStats:
    """How a solve went: outer iterations and the last change of the models (world units)."""

    iterations: int
    change: float
    converged: bool


def _block_matrix(n_tiles, link_a, link_b, moments: LinkMoments, off_scale: float = 1.0, diag: bool = True):
    """The 4n x 4n sparse matrix with blocks ``D_i`` (if ``diag``) and ``-off_scale * S_ij``."""
    idx = np.arange(4)
    rows, cols, vals = [], [], []

    def add(ti, tj, blocks):
        rows.append((4 * ti[:, None, None] + idx[None, :, None]).repeat(4, axis=2).ravel())
        cols.append((4 * tj[:, None, None] + idx[None, None, :]).repeat(4, axis=1).ravel())
        vals.append(blocks.ravel())

    if diag:
        add(link_a, link_a, moments.s_aa)
        add(link_b, link_b, moments.s_bb)
    add(link_a, link_b, -off_scale * moments.s_ab)
    add(link_b, link_a, -off_scale * np.swapaxes(moments.s_ab, 1, 2))
    n = 4 * n_tiles
    if not rows:
        return sp.csr_matrix((n, n))
    return sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)).tocsr()


def _tile_diagonal(n_tiles, link_a, link_b, moments: LinkMoments) -> np.ndarray:
    """``D_i = sum S_ii`` per tile, (n, 4, 4)."""
    d = np.zeros((n_tiles, 4, 4))
    np.add.at(d, link_a, moments.s_aa)
    np.add.at(d, link_b, moments.s_bb)
    return d


DIRECT_MAX = 20_000
"""Largest system factorised by sparse LU; larger ones go to preconditioned conjugate gradients.

Fill-in of a 3-D grid's factor grows faster than the unknowns: the 60,000
unknowns of a rigid step of 10,000 tiles take minutes and gigabytes to factorise,
and even the affine's 40,000 solve slower per step by LU (4 s to factorise,
0.16 s per solve) than by conjugate gradients started from the last step.
"""
CG_RTOL = 1e-12
"""Relative residual at which conjugate gradients stop."""
CG_TRY_MAXITER = 2_000
"""Most conjugate-gradient iterations of a solve that may fail (Newton's step of a rigid solve, possibly indefinite).

Conjugate gradients stop at once at a direction of negative curvature (the matrix is not positive definite)."""


def _splu(a: sp.spmatrix):
    """Sparse LU in symmetric mode (minimum-degree ordering of ``A + A^T``, diagonal pivots)."""
    return spla.splu(a.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})


def factorize(a: sp.spmatrix, block: int, coarse: sp.spmatrix | None = None, exact_fallback: bool = True,
              rtol: float = CG_RTOL, direct_max: int | None = None):
    """A solver of the sparse symmetric positive definite system ``a``, prepared once for many right sides.

    Up to ``direct_max`` (default :data:`DIRECT_MAX`) unknowns: one sparse LU factorisation. Beyond:
    conjugate gradients to ``rtol``, started from ``x0``, preconditioned
    with the inverse ``block`` x ``block`` diagonal blocks (one tile each) plus,
    if given, the exact solve on the span of the columns of ``coarse`` (n, k)
    (two-level additive Schwarz: the diagonal blocks damp local errors, the
    coarse space the smooth ones that make plain block-Jacobi need thousands
    of iterations on large grids).

    Parameters
    ----------
    exact_fallback : bool
        Where conjugate gradients do not converge (within ``20 n`` iterations,
        or meet a direction of negative curvature), solve by the exact
        factorisation, however slow; if false, stop after
        :data:`CG_TRY_MAXITER` iterations, or at the first direction of
        negative curvature (``a`` is not positive definite), and raise ``RuntimeError``.
    rtol : float
        Relative residual at which conjugate gradients stop (an inexact Newton
        step needs less than the default :data:`CG_RTOL`).
    direct_max : int, optional
        Largest system solved by LU (the fill-in of a factor grows with the
        unknowns per tile: 12 per tile are solved faster iteratively from a few
        hundred tiles on).

    Returns
    -------
    solve : callable
        ``solve(b, x0=None)`` for ``b`` of shape ``(n,)`` or ``(n, k)``.
    """
    n = a.shape[0]
    if n == 0:
        return lambda b, x0=None: np.zeros_like(b)
    if n <= (DIRECT_MAX if direct_max is None else direct_max):
        lu = _splu(a)
        return lambda b, x0=None: lu.solve(b)
    a = a.tocsr()
    coo = a.tocoo()
    same = coo.row // block == coo.col // block
    blocks = np.zeros((n // block, block, block))
    blocks[coo.row[same] // block, coo.row[same] % block, coo.col[same] % block] = coo.data[same]
    inv = np.linalg.inv(blocks)
    jacobi = sp.bsr_matrix((inv, np.arange(n // block), np.arange(n // block + 1)), shape=(n, n)).tocsr()
    if coarse is None:
        precond = jacobi.__matmul__
    else:
        coarse = sp.csr_matrix(coarse)
        coarse_t = coarse.T.tocsr()
        coarse_lu = _splu(coarse_t @ (a @ coarse))
        precond = lambda r: jacobi @ r + coarse @ coarse_lu.solve(coarse_t @ r)
    maxiter = 20 * n if exact_fallback else CG_TRY_MAXITER

    def solve(b, x0=None):
        columns = b.reshape(n, -1)
        start = np.zeros_like(columns) if x0 is None else x0.reshape(n, -1)
        out = np.empty_like(columns)
        for j in range(columns.shape[1]):
            out[:, j], converged = _pcg(a, columns[:, j], start[:, j], precond, maxiter, rtol)
            if not converged and not exact_fallback:
                raise RuntimeError("conjugate gradients did not converge")
            if not converged:
                out[:, j] = _splu(a).solve(columns[:, j])
        return out.reshape(b.shape)

    return solve


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """``x . y`` without BLAS, whose threads cost more to wake than a 10^5-vector dot product takes."""
    return float(np.einsum("i,i->", x, y))


def _pcg(a: sp.csr_matrix, b: np.ndarray, x0: np.ndarray, precond, maxiter: int,
         rtol: float = CG_RTOL) -> tuple[np.ndarray, bool]:
    """Preconditioned conjugate gradients from ``x0`` until ``|b - a x| <= rtol |b|``: ``(x, converged)``.

    A direction ``p`` with ``p . a p <= 0`` proves ``a`` is not positive definite:
    the iteration stops there, not converged.
    """
    x = x0.copy()
    r = b - a @ x
    target = rtol * np.sqrt(_dot(b, b))
    z = precond(r)
    p = z.copy()
    rz = _dot(r, z)
    for _ in range(maxiter):
        if np.sqrt(_dot(r, r)) <= target:
            return x, True
        ap = a @ p
        curvature = _dot(p, ap)
        if not curvature > 0:  # negative curvature (or NaN): not positive definite
            return x, False
        alpha = rz / curvature
        x += alpha * p
        r -= alpha * ap
        z = precond(r)
        rz, rz_old = _dot(r, z), rz
        p = z + (rz / rz_old) * p
    return x, bool(np.sqrt(_dot(r, r)) <= target)


def _sparse_solve(a: sp.spmatrix, b: np.ndarray, block: int, x0: np.ndarray | None = None) -> np.ndarray:
    """Solve the sparse symmetric positive definite system ``a x = b`` once (see :func:`factorize`)."""
    return factorize(a, block)(b, x0)


def _free_index(free: np.ndarray, dof: int) -> np.ndarray:
    return (dof * np.flatnonzero(free)[:, None] + np.arange(dof)).ravel()


def tile_fit_moments(n_tiles, link_a, link_b, moments: LinkMoments, models: np.ndarray, use=None):
    """Each tile's weighted moments towards its neighbours' current positions.

    Returns
    -------
    d : ndarray (n, 4, 4)
        ``sum w h h^T`` of the tile's own points.
    c : ndarray (n, 4, 3)
        ``sum w h q^T`` with ``q = M_j h_j`` the partner's current position.
    """
    use = np.ones(len(link_a), bool) if use is None else use
    la, lb = link_a[use], link_b[use]
    s_aa, s_bb, s_ab = moments.s_aa[use], moments.s_bb[use], moments.s_ab[use]
    d = np.zeros((n_tiles, 4, 4))
    np.add.at(d, la, s_aa)
    np.add.at(d, lb, s_bb)
    c = np.zeros((n_tiles, 4, 3))
    np.add.at(c, la, s_ab @ np.swapaxes(models[lb], 1, 2))
    np.add.at(c, lb, np.swapaxes(s_ab, 1, 2) @ np.swapaxes(models[la], 1, 2))
    return d, c


def virtual_points(d: np.ndarray, c: np.ndarray):
    """Six weighted point pairs per tile with exactly the moments ``d`` and ``c``.

    The translation, rigid and affine least-squares fits depend on matches only
    through ``sum w``, ``sum w p``, ``sum w q``, ``sum w p p^T`` and
    ``sum w p q^T``; the points ``p_mean +- s_k u_k`` (``u_k``, ``s_k`` from the
    eigen-decomposition of the weighted covariance) with targets
    ``q_mean +- d_k`` reproduce all of them.

    Returns
    -------
    src, dst : ndarray (n, 6, 3)
    weights : ndarray (n, 6)
    """
    w = d[:, 3, 3]
    safe = np.where(w > 0, w, 1.0)
    p_mean = d[:, :3, 3] / safe[:, None]
    q_mean = c[:, 3, :] / safe[:, None]
    cov = d[:, :3, :3] - safe[:, None, None] * p_mean[:, :, None] * p_mean[:, None, :]
    cross = c[:, :3, :] - safe[:, None, None] * p_mean[:, :, None] * q_mean[:, None, :]
    lam, u = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, 1, 2)))
    s = np.sqrt(np.clip(3.0 * lam / safe[:, None], 0.0, None))  # (n, 3)
    proj = np.einsum("nik,nij->nkj", u, cross)  # u_k^T cross, (n, 3 k, 3)
    tiny = s <= 1e-12 * (1.0 + np.abs(p_mean).max(axis=1, keepdims=True))
    dk = np.where(tiny[:, :, None], 0.0, 3.0 / (safe[:, None, None] * np.where(tiny, 1.0, s)[:, :, None]) * proj)
    offs = np.swapaxes(u, 1, 2) * s[:, :, None]  # (n, k, 3): s_k u_k
    src = np.concatenate([p_mean[:, None] + offs, p_mean[:, None] - offs], axis=1)
    dst = np.concatenate([q_mean[:, None] + dk, q_mean[:, None] - dk], axis=1)
    weights = np.repeat((w / 6.0)[:, None], 6, axis=1)
    return src, dst, weights


def fit_tiles(kind: str, d: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Fit one model kind (``models.FITS``) per tile from its moments; NaN where undetermined."""
    src, dst, w = virtual_points(d, c)
    return FITS[kind](src, dst, w)


class _LinearSolver:
    """``K X = rhs`` for the free tiles' rows (4 per tile), fixed tiles moved to the right side; ``K`` prepared once."""

    def __init__(self, k: sp.csr_matrix, free: np.ndarray):
        self.free = free
        self.fi, self.xi = _free_index(free, 4), _free_index(~free, 4)
        k_free = k[self.fi]
        self.coupling = k_free[:, self.xi]
        self.solve_free = factorize(k_free[:, self.fi], 4)

    def __call__(self, rhs: np.ndarray, models: np.ndarray) -> np.ndarray:
        n = len(self.free)
        x_all = np.swapaxes(models, 1, 2).reshape(4 * n, 3).copy()
        b = rhs[self.fi] - self.coupling @ x_all[self.xi]
        x_all[self.fi] = self.solve_free(b, x_all[self.fi])
        return np.swapaxes(x_all.reshape(n, 4, 3), 1, 2)


def solve_translation(n_tiles, link_a, link_b, moments: LinkMoments, fixed: np.ndarray, models: np.ndarray):
    """Translations minimising ``E`` with the linear parts of ``models`` held (identity in practice)."""
    free = ~fixed
    # E over translations t: a weighted graph Laplacian, L t = r; only the (3,3) entries (sum w) couple.
    wl = moments.s_ab[:, 3, 3]
    lap = sp.coo_matrix(
        (np.concatenate([wl, wl, -wl, -wl]),
         (np.concatenate([link_a, link_b, link_a, link_b]), np.concatenate([link_a, link_b, link_b, link_a]))),
        shape=(n_tiles, n_tiles),
    ).tocsr()
    # sum over links of w (A_b p_b - A_a p_a), per tile (with sign)
    ya = np.einsum("lij,lj->li", models[link_a, :, :3], moments.s_ab[:, :3, 3])  # sum w A_a p_a
    yb = np.einsum("lij,lj->li", models[link_b, :, :3], moments.s_ab[:, 3, :3])  # sum w A_b p_b
    rhs = np.zeros((n_tiles, 3))
    np.add.at(rhs, link_a, yb - ya)
    np.add.at(rhs, link_b, ya - yb)
    t = models[:, :, 3].copy()
    fi, xi = np.flatnonzero(free), np.flatnonzero(fixed)
    b = rhs[fi] - lap[fi][:, xi] @ t[xi]
    t[fi] = _sparse_solve(lap[fi][:, fi], b, 1, t[fi])
    out = models.copy()
    out[:, :, 3] = t
    return out, SolveStats(1, 0.0, True)


def tile_extent(n_tiles, link_a, link_b, moments: LinkMoments) -> float:
    """Largest spread of a tile's matched points, ``2 sqrt(trace cov)`` (world units): the size tolerances refer to."""
    d = _tile_diagonal(n_tiles, link_a, link_b, moments)
    w = np.maximum(d[:, 3, 3], 1e-300)
    mean = d[:, :3, 3] / w[:, None]
    var = np.trace(d[:, :3, :3], axis1=1, axis2=2) / w - (mean**2).sum(axis=1)
    return float(2.0 * np.sqrt(np.clip(var, 0.0, None)).max(initial=1.0))


def model_change(new: np.ndarray, old: np.ndarray, extent: float) -> float:
    """Largest displacement between two model sets of a point within ``extent`` of the origin."""
    diff = new - old
    return float((np.abs(diff[:, :, 3]).sum(axis=1) + extent * np.abs(diff[:, :, :3]).sum(axis=(1, 2))).max(initial=0))


def _skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``[v]x`` of vectors ``(..., 3)``."""
    z = np.zeros(v.shape[:-1])
    return np.stack([
        np.stack([z, -v[..., 2], v[..., 1]], -1),
        np.stack([v[..., 2], z, -v[..., 0]], -1),
        np.stack([-v[..., 1], v[..., 0], z], -1),
    ], -2)


def _rotation(omega: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation matrices ``exp([omega]x)`` of rotation vectors ``(n, 3)`` (radians)."""
    theta = np.linalg.norm(omega, axis=1)
    k = _skew(omega)
    small = theta < 1e-12
    th = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(th) / th)
    b = np.where(small, 0.5, (1 - np.cos(th)) / th**2)
    return np.eye(3) + a[:, None, None] * k + b[:, None, None] * (k @ k)


def solve_rigid(n_tiles, link_a, link_b, moments: LinkMoments, fixed: np.ndarray, models: np.ndarray,
                centers: np.ndarray, max_iterations: int = 100, tolerance: float = 1e-6, extent: float = 1.0):
    """Rigid models at a stationary point of ``E``: Newton from ``models``.

    Each step perturbs tile ``i`` as ``y -> y + omega_i x (y - c_i) + delta_i``
    (``c_i`` its centre, world units), minimises the second-order expansion of
    ``E`` over the 6 parameters of every free tile (one sparse solve; the
    Gauss-Newton matrix plus the rotations' curvature, or plus its positive
    part where that step would not descend), then applies the exact rotation
    ``exp([omega]x)`` so models stay rigid. A step that would raise ``E`` is
    halved. Beyond :data:`DIRECT_MAX` unknowns the solves are conjugate
    gradients with a coarse space of the rigid motions of blocks of tiles.
    """
    free = ~fixed
    kmat = _block_matrix(n_tiles, link_a, link_b, moments)
    q = sp.kron(kmat, sp.identity(3), format="csr")  # index 12 i + 3 c + r: entry (r, c) of M_i
    fi = np.flatnonzero(free)
    coarse = _rigid_coarse_space(centers, fi, link_a, link_b) if 6 * fi.size > DIRECT_MAX else None
    energy = _energy(q, models)
    change = np.inf
    for it in range(1, max_iterations + 1):
        if fi.size == 0:
            return models, SolveStats(0, 0.0, True)
        basis = _rigid_basis(models[fi], centers[fi])  # (f, 12, 6)
        rows = (12 * fi[:, None, None] + np.arange(12)[None, :, None]).repeat(6, axis=2)
        cols = (6 * np.arange(fi.size)[:, None, None] + np.arange(6)[None, None, :]).repeat(12, axis=1)
        b = sp.csr_matrix((basis.ravel(), (rows.ravel(), cols.ravel())), shape=(12 * n_tiles, 6 * fi.size))
        m = _vec(models)
        qb = q @ b
        normal = (b.T @ qb).tocsr()
        # a tiny Levenberg term fixes the rotation of a tile held by one or two matches (minimum-norm step)
        normal = normal + sp.diags(1e-12 * normal.diagonal().max(initial=1.0) * np.ones(normal.shape[0]))
        rhs = -(qb.T @ m)
        qm = q @ m
        curvature = partial(_rotation_curvature, models[fi], centers[fi], qm.reshape(-1, 12)[fi])
        theta = _descent_step(normal, curvature, rhs, coarse)
        step = 1.0
        while True:
            new = _apply_rigid_step(models, fi, step * theta.reshape(-1, 6), centers)
            new_energy = _energy(q, new)
            if new_energy <= energy:
                break
            step *= 0.5
            if step < 1e-4:  # no descent left along a descent direction: stationary to rounding
                return models, SolveStats(it, 0.0, True)
        change = model_change(new, models, extent)
        models, energy = new, new_energy
        if change <= tolerance:
            return models, SolveStats(it, change, True)
    return models, SolveStats(max_iterations, change, False)


def _descent_step(normal: sp.csr_matrix, curvature, rhs: np.ndarray, coarse) -> np.ndarray:
    """Newton's step (``normal + curvature()``) where it is a descent direction, else that of its clipped matrix.

    Far from the optimum Newton's matrix may be indefinite (conjugate gradients
    stop at its first direction of negative curvature); its step is kept only
    if it solves and points downhill (``rhs . theta > 0``, ``rhs`` minus half
    the gradient). Else the rotations' curvature is clipped to positive
    semi-definite (``curvature(clip=True)``): ``normal`` plus that is positive
    definite, so its step descends (Gauss-Newton's, ``normal`` alone, is the
    last resort should rounding spoil it). Near the optimum the unclipped
    matrix is used: it converges quadratically, the clipped one only linearly.
    """
    try:
        theta = factorize(normal + curvature(), 6, coarse, exact_fallback=False)(rhs)
        if np.isfinite(theta).all() and rhs @ theta > 0:
            return theta
    except RuntimeError:
        pass
    theta = factorize(normal + curvature(clip=True), 6, coarse)(rhs)
    if np.isfinite(theta).all() and rhs @ theta > 0:
        return theta
    return factorize(normal, 6, coarse)(rhs)


def coarse_blocks(centers: np.ndarray, free: np.ndarray, link_a: np.ndarray, link_b: np.ndarray):
    """Bin the free tiles into blocks for a coarse space: ``(block of every free tile (f,), block means (b, 3))``.

    Cubes of three times the median distance between linked tiles' centres
    (about 27 tiles of a 3-D grid), numbered deterministically.

    Parameters
    ----------
    centers : ndarray (n_tiles, 3)
        Centres of all tiles (world units).
    free : ndarray of int (f,)
        The free tiles.
    link_a, link_b : ndarray of int (L,)
        Links; they set the size of the cubes.
    """
    cell = 3.0 * max(float(np.median(np.linalg.norm(centers[link_a] - centers[link_b], axis=1))), 1e-9)
    c = centers[free]
    _, block = np.unique(np.floor((c - c.min(axis=0)) / cell).astype(np.int64), axis=0, return_inverse=True)
    block = block.ravel()
    n_blocks = int(block.max()) + 1
    mean = np.zeros((n_blocks, 3))
    np.add.at(mean, block, c)
    mean /= np.bincount(block, minlength=n_blocks)[:, None]
    return block, mean


def block_prolongation(per_tile: np.ndarray, block: np.ndarray, n_blocks: int) -> sp.csr_matrix:
    """Sparse ``(k f, m n_blocks)`` map from ``m`` parameters per block to ``k`` per free tile (``per_tile`` (f, k, m))."""
    f, k, m = per_tile.shape
    rows = (k * np.arange(f)[:, None, None] + np.arange(k)[None, :, None]).repeat(m, axis=2)
    cols = (m * block[:, None, None] + np.arange(m)[None, None, :]).repeat(k, axis=1)
    return sp.csr_matrix((per_tile.ravel(), (rows.ravel(), cols.ravel())), shape=(k * f, m * n_blocks))


def _rigid_coarse_space(centers: np.ndarray, free: np.ndarray, link_a: np.ndarray, link_b: np.ndarray):
    """Rigid motions of blocks of tiles (:func:`coarse_blocks`), as steps of the free tiles' parameters, (6 f, 6 b).

    A block's motion ``(Omega, Delta)`` about its mean centre ``C`` moves tile
    ``i`` by ``omega_i = Omega``, ``delta_i = Delta + Omega x (c_i - C)``.
    """
    block, mean = coarse_blocks(centers, free, link_a, link_b)
    p = np.zeros((len(free), 6, 6))
    p[:, :3, :3] = np.eye(3)
    p[:, 3:, 3:] = np.eye(3)
    p[:, 3:, :3] = -_skew(centers[free] - mean[block])  # Omega x v = -[v]x Omega
    return block_prolongation(p, block, len(mean))


def _rotation_curvature(models: np.ndarray, centers: np.ndarray, gradient: np.ndarray,
                        clip: bool = False) -> sp.csr_matrix:
    """The second-order term of ``E`` in the rotations, per tile (``clip``: clipped to semi-definite), (6f, 6f).

    Along ``omega``, ``d^2 exp([omega]x) = [omega]x^2 = omega omega^T - |omega|^2 I``, so
    ``m^T Q d^2 m = omega^T H omega`` with ``H = sym(S G^T) - tr(G^T S) I``
    (``S = [A | t - c]``, ``G`` the tile's rows of ``Q m`` as 3x4). Added to the
    Gauss-Newton matrix it gives Newton's, which converges quadratically where
    wrong links leave large residuals; clipping its negative eigenvalues to 0
    makes Newton's matrix positive definite, so its step a descent direction.
    """
    f = len(models)
    shifted = models.copy()
    shifted[:, :, 3] -= centers
    g = np.swapaxes(gradient.reshape(f, 4, 3), 1, 2)  # index 3 c + r -> (r, c)
    sg = shifted @ np.swapaxes(g, 1, 2)
    h = 0.5 * (sg + np.swapaxes(sg, 1, 2)) - np.trace(sg, axis1=1, axis2=2)[:, None, None] * np.eye(3)
    if clip:
        lam, u = np.linalg.eigh(h)
        h = (u * np.clip(lam, 0.0, None)[:, None, :]) @ np.swapaxes(u, 1, 2)
    blocks = np.zeros((f, 6, 6))
    blocks[:, :3, :3] = h
    return sp.bsr_matrix((blocks, np.arange(f), np.arange(f + 1)), shape=(6 * f, 6 * f)).tocsr()


def _vec(models: np.ndarray) -> np.ndarray:
    """Stack models (n, 3, 4) as index ``12 i + 3 c + r``."""
    return np.swapaxes(models, 1, 2).reshape(-1)


def _energy(q: sp.csr_matrix, models: np.ndarray) -> float:
    m = _vec(models)
    return float(m @ (q @ m))


def _rigid_basis(models: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Derivatives (f, 12, 6) of the vectorised models by (omega, delta) at zero."""
    f = len(models)
    shifted = models.copy()
    shifted[:, :, 3] -= centers
    basis = np.zeros((f, 3, 4, 6))
    for k in range(3):
        e = np.zeros(3)
        e[k] = 1.0
        basis[:, :, :, k] = _skew(e) @ shifted  # d M / d omega_k = [e_k]x [A | t - c]
        basis[:, k, 3, 3 + k] = 1.0
    return np.swapaxes(basis, 1, 2).reshape(f, 12, 6)


def _apply_rigid_step(models: np.ndarray, fi: np.ndarray, theta: np.ndarray, centers: np.ndarray) -> np.ndarray:
    new = models.copy()
    rot = _rotation(theta[:, :3])
    c = centers[fi]
    new[fi, :, :3] = rot @ models[fi, :, :3]
    new[fi, :, 3] = np.einsum("nij,nj->ni", rot, models[fi, :, 3] - c) + c + theta[:, 3:]
    return new
