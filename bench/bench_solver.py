"""Global optimisation at scale: 100, 1,000 and 10,000 tiles on a 3-D grid, CPU only.

Every face-neighbour link holds ``--matches`` point matches (noise 0.3 px); a
fraction ``--bad`` of the links are wrong (their matches agree on an offset of
15-30 px). Each size is solved with the rigid and the regularised affine model
(two-round iterative, BigStitcher's STRICT link-removal thresholds 2.5x / 3.5 px;
the tiles' metadata boxes are given, so any group that round 1 leaves without the
fixed tile is placed by weak links; ``--isolated`` tiles lose all their links to
force that round), and the script prints time, peak traced memory (numpy arrays; the sparse LU
factors held inside SuperLU are not traced), removed links (how many of them
were the wrong ones), the Newton / Gauss-Newton steps of all solves and whether every
solve reached its tolerance, and the error of the result (largest distance between solved and true model at
any tile corner, world px; tile 0 is the fixed gauge; isolated tiles, placed by
their metadata alone, are left out),
then the scaling between sizes measured in the same run.

    .venv/bin/python bench/bench_solver.py                 # 100, 1000, 10000 tiles
    .venv/bin/python bench/bench_solver.py --sizes 100 1000
    .venv/bin/python bench/bench_solver.py --isolated 0.001   # and 0.1 % of the tiles placed by weak links
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from rhapso_gpu.models import TransformModel
from rhapso_gpu.solver import MatchGraph, SolverSettings, optimize
from rhapso_gpu.solver.linear import IDENTITY, _rotation

SPACING = np.array([100.0, 100.0, 60.0])
SIZE = np.array([120.0, 120.0, 72.0])


def grid_shape(n_tiles: int) -> tuple[int, int, int]:
    """A near-cubic grid (x, y, z) with about ``n_tiles`` tiles."""
    side = round(n_tiles ** (1 / 3))
    nz = max(1, side)
    ny = max(1, round((n_tiles / nz) ** 0.5))
    nx = max(1, round(n_tiles / (nz * ny)))
    return nx, ny, nz


def synthetic_graph(shape, matches: int, bad: float, seed: int = 0, isolated: float = 0.0):
    """Grid graph with true tile errors (small rigid motions), a fraction of wrong links and of tiles without links.

    Returns the graph, true models, wrong links, tile origins and isolated tiles (bool).
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    idx = np.arange(nx * ny * nz).reshape(nz, ny, nx)
    origins = np.stack([idx.ravel() % nx, (idx.ravel() // nx) % ny, idx.ravel() // (nx * ny)], 1) * SPACING
    n = len(origins)
    truth = np.repeat(IDENTITY[None], n, axis=0)
    truth[1:, :, :3] = _rotation(rng.normal(0, 0.005, (n - 1, 3)))
    truth[1:, :, 3] = rng.normal(0, 5, (n - 1, 3))
    pairs = np.concatenate([
        np.stack([idx[:, :, :-1].ravel(), idx[:, :, 1:].ravel()], 1),
        np.stack([idx[:, :-1, :].ravel(), idx[:, 1:, :].ravel()], 1),
        np.stack([idx[:-1, :, :].ravel(), idx[1:, :, :].ravel()], 1),
    ])
    alone = np.zeros(n, bool)
    if isolated > 0 and n > 1:
        alone[1 + rng.choice(n - 1, min(max(1, round(isolated * n)), n - 1), replace=False)] = True
        pairs = pairs[~(alone[pairs[:, 0]] | alone[pairs[:, 1]])]
    n_links = len(pairs)
    wrong = np.zeros(n_links, bool)
    wrong[rng.choice(n_links, round(bad * n_links), replace=False)] = True
    a, b = pairs[:, 0], pairs[:, 1]
    lo = np.maximum(origins[a], origins[b])
    hi = np.minimum(origins[a], origins[b]) + SIZE
    world = rng.uniform(lo[:, None], hi[:, None], (n_links, matches, 3))
    offset = np.where(wrong[:, None], rng.uniform(15, 30, (n_links, 1)) * _unit(rng, n_links), 0.0)

    def current(tiles, pts):
        inv = np.linalg.inv(truth[tiles, :, :3])
        return np.einsum("lij,lmj->lmi", inv, pts - truth[tiles, None, :, 3])

    pa = current(a, world) + rng.normal(0, 0.3, world.shape)
    pb = current(b, world + offset[:, None, :]) + rng.normal(0, 0.3, world.shape)
    graph = MatchGraph(
        n, a.astype(np.int64), b.astype(np.int64), np.arange(0, (n_links + 1) * matches, matches, dtype=np.int64),
        pa.reshape(-1, 3), pb.reshape(-1, 3), np.ones(n_links * matches),
    )
    return graph, truth, wrong, origins, alone


def _unit(rng, n):
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _error(models, truth, origins):
    """Largest distance (world px) between solved and true models at the 8 corners of every tile."""
    corners = origins[:, None, :] + np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * SIZE
    d = models - truth
    moved = np.einsum("nij,nkj->nki", d[:, :, :3], corners) + d[:, None, :, 3]
    return float(np.linalg.norm(moved, axis=2).max())


def run(n_tiles: int, matches: int, bad: float, model: TransformModel, isolated: float = 0.0):
    shape = grid_shape(n_tiles)
    graph, truth, wrong, origins, alone = synthetic_graph(shape, matches, bad, isolated=isolated)
    boxes = np.stack([origins, origins + SIZE], axis=1)  # metadata boxes (world) for the weak links of round 2
    fixed = np.zeros(graph.n_tiles, bool)
    fixed[0] = True
    settings = SolverSettings(model, relative_threshold=2.5, absolute_threshold=3.5, batch_removal=True)
    tracemalloc.start()
    start = time.perf_counter()
    opt = optimize(graph, fixed, settings, boxes)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    removed = np.flatnonzero(opt.removed)
    return {
        "tiles": graph.n_tiles, "grid": "x".join(map(str, shape)), "links": graph.n_links,
        "matches": len(graph.weights), "wrong": int(wrong.sum()), "model": model.describe(), "seconds": seconds,
        "peak_mb": peak / 1e6, "input_mb": (graph.points_a.nbytes * 2 + graph.weights.nbytes) / 1e6,
        "removed": len(removed), "removed_wrong": int(wrong[removed].sum()),
        "solves": len(opt.stats), "iterations": sum(st.iterations for _, st in opt.stats),
        "converged": all(st.converged for _, st in opt.stats),
        "error_px": _error(opt.models[~alone], truth[~alone], origins[~alone]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--matches", type=int, default=100, help="matches per link")
    parser.add_argument("--bad", type=float, default=0.01, help="fraction of wrong links")
    parser.add_argument("--models", nargs="+", default=["rigid", "affine"], choices=("rigid", "affine"),
                        help="rigid, and/or affine regularised with rigid (lambda 0.1)")
    parser.add_argument("--isolated", type=float, default=0.0,
                        help="fraction of tiles (never tile 0) without any link, placed by weak links in round 2")
    args = parser.parse_args()
    known = {"rigid": TransformModel("rigid", "none", 0.0), "affine": TransformModel("affine", "rigid", 0.1)}
    models = [known[m] for m in args.models]
    rows = [run(n, args.matches, args.bad, m, args.isolated) for m in models for n in args.sizes]
    cols = ("model", "tiles", "grid", "links", "matches", "wrong", "removed", "removed_wrong", "solves", "iterations",
            "converged", "seconds", "peak_mb", "input_mb", "error_px")
    print("  ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]!s:>14}" for c in cols))
    print("\nscaling (same run): time and peak memory per tile, relative to the smallest size")
    for m in models:
        sel = [r for r in rows if r["model"] == m.describe()]
        base = sel[0]
        for r in sel:
            print(f"  {m.describe():<40} {r['tiles']:>6} tiles: time x{r['seconds'] / base['seconds']:7.1f} "
                  f"(tiles x{r['tiles'] / base['tiles']:6.1f}), peak memory per tile "
                  f"{r['peak_mb'] * 1e3 / r['tiles']:7.1f} kB (x{(r['peak_mb'] / r['tiles']) / (base['peak_mb'] / base['tiles']):4.2f})")


if __name__ == "__main__":
    main()
