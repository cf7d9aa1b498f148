"""Time batched RANSAC per pair against per-hypothesis loops (and Rhapso's RANSAC, if installed).

One pair: ``--candidates`` correspondence candidates (default 2,000; 30% wrong), a
known rigid transform with 0.3 px jitter, ``--iterations`` hypotheses (default
10,000), epsilon 5. Timed in this process, on the CPU:

* ``batched``: :func:`rhapso_gpu.matching.ransac.ransac` (hypotheses fitted and
  scored in batches as array operations, refinement, trimming).
* ``loop-numpy``: a loop over hypotheses, each fitted and scored with NumPy
  over all candidates (the straightforward vectorisation).
* ``loop-python``: a loop over hypotheses and, inside, over candidates, like
  Rhapso's ``ransac_matching.test``; timed on ``--loop-iterations`` hypotheses
  and scaled to ``--iterations``.
* ``rhapso``: Rhapso's own ``compute_ransac`` (0.4.5: refits every good
  hypothesis, per-candidate NumPy), run in ``--rhapso-python`` (a separate
  venv) on the same candidates when that interpreter exists; timed on
  ``--rhapso-iterations`` hypotheses and scaled.

Ratios are loop time / batched time. Not a test: nothing is asserted.

Usage: ``.venv/bin/python bench/bench_matching.py [--candidates 2000] [--iterations 10000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rhapso_gpu.matching.ransac import RansacParams, draw_samples, ransac
from rhapso_gpu.models import TransformModel, transform_points

EPSILON = 5.0


def candidates(n: int, seed: int = 0):
    """``n`` candidate pairs under a rigid transform (0.3 px jitter), 30% of them wrong."""
    rng = np.random.default_rng(seed)
    src = rng.uniform(0, 300, (n, 3))
    truth = np.c_[Rotation.from_rotvec([0.02, -0.01, 0.03]).as_matrix(), [4.0, -3.0, 2.0]]
    dst = transform_points(truth, src) + rng.normal(0, 0.3, src.shape)
    wrong = rng.random(n) < 0.3
    dst[wrong] = rng.uniform(0, 300, (wrong.sum(), 3))
    return src, dst


def loop_numpy(src, dst, model: TransformModel, iterations: int, seed: int = 0) -> int:
    """Best inlier count, one hypothesis at a time (NumPy over the candidates)."""
    samples = draw_samples(np.random.default_rng(seed), iterations, len(src), model.min_matches)
    best = 0
    for s in samples:
        m = model.fit(src[s], dst[s])
        r = np.linalg.norm(src @ m[:, :3].T + m[:, 3] - dst, axis=1)
        best = max(best, int((r < EPSILON).sum()))
    return best


def loop_python(src, dst, model: TransformModel, iterations: int, seed: int = 0) -> int:
    """Best inlier count, one hypothesis and one candidate at a time (Rhapso's structure)."""
    samples = draw_samples(np.random.default_rng(seed), iterations, len(src), model.min_matches)
    pairs = list(zip(src.tolist(), dst.tolist()))
    best = 0
    for s in samples:
        m = model.fit(src[s], dst[s]).tolist()
        count = 0
        for (x, y, z), (u, v, w) in pairs:
            px = m[0][0] * x + m[0][1] * y + m[0][2] * z + m[0][3] - u
            py = m[1][0] * x + m[1][1] * y + m[1][2] * z + m[1][3] - v
            pz = m[2][0] * x + m[2][1] * y + m[2][2] * z + m[2][3] - w
            if (px * px + py * py + pz * pz) ** 0.5 < EPSILON:
                count += 1
        best = max(best, count)
    return best


RHAPSO_DRIVER = r"""
import json, sys, time, numpy as np
from Rhapso.matching.ransac_matching import RansacMatching
data = np.load(sys.argv[1])
iterations, match_type, sample_size = int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
matcher = RansacMatching.__new__(RansacMatching)  # only the RANSAC attributes; no dataset needed
matcher.match_type, matcher.inlier_threshold, matcher.min_inlier_ratio = match_type, 5.0, 0.1
matcher.num_iterations, matcher.model_min_inliers, matcher.regularization_weight = iterations, 12, 0.1
matcher.ransac_sample_size = sample_size
candidates = [(i, a, "A", "beads", i, b, "B", "beads") for i, (a, b) in enumerate(zip(data["src"], data["dst"]))]
start = time.perf_counter()
inliers, model = matcher.compute_ransac(candidates)
print(json.dumps({"seconds": time.perf_counter() - start, "inliers": len(inliers)}))
"""


def run_rhapso(python: str, src, dst, iterations: int, model: TransformModel) -> tuple[float | None, str]:
    """Seconds of Rhapso's ``compute_ransac`` on the same candidates (own interpreter), and a note."""
    if model.kind == "translation":
        return None, "not run: Rhapso has no translation model"
    if not Path(python).exists():
        return None, f"not run: no interpreter at {python} (pip install Rhapso into a separate venv)"
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "c.npz", src=src, dst=dst)
        proc = subprocess.run(
            [python, "-c", RHAPSO_DRIVER, str(Path(tmp) / "c.npz"), str(iterations), model.kind,
             str(model.min_matches)],
            check=False, capture_output=True, text=True, timeout=3600,
        )
    if proc.returncode != 0:
        return None, "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1]
    out = json.loads(proc.stdout.splitlines()[-1])
    return out["seconds"], f"{out['inliers']} inliers"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--loop-iterations", type=int, default=200, help="hypotheses timed for loop-python")
    parser.add_argument("--model", choices=("translation", "rigid", "affine"), default="rigid")
    parser.add_argument("--repeat", type=int, default=3, help="runs of the batched RANSAC; the best is kept")
    parser.add_argument("--rhapso-iterations", type=int, default=20, help="hypotheses timed for Rhapso")
    parser.add_argument("--rhapso-python", default="/tmp/rhapso-venv/bin/python")
    args = parser.parse_args(argv)

    src, dst = candidates(args.candidates)
    model = TransformModel(args.model, "none")
    params = RansacParams(iterations=args.iterations, max_epsilon=EPSILON)
    times = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        result = ransac(src, dst, model, params, seed=0)
        times.append(time.perf_counter() - start)
    batched = min(times)

    start = time.perf_counter()
    loop_numpy(src, dst, model, args.iterations)
    numpy_loop = time.perf_counter() - start

    start = time.perf_counter()
    loop_python(src, dst, model, args.loop_iterations)
    python_loop = (time.perf_counter() - start) * args.iterations / args.loop_iterations

    print(f"RANSAC, {args.model} model, {args.candidates} candidates (30% wrong), {args.iterations} iterations, CPU")
    print(f"  batched       {batched:8.3f} s per pair   ({len(result.inliers)} inliers)")
    print(f"  loop-numpy    {numpy_loop:8.3f} s per pair   x{numpy_loop / batched:.0f}")
    print(f"  loop-python   {python_loop:8.3f} s per pair   x{python_loop / batched:.0f} "
          f"(scaled from {args.loop_iterations} iterations)")
    rhapso, note = run_rhapso(args.rhapso_python, src, dst, args.rhapso_iterations, model)
    if rhapso is None:
        print(f"  rhapso        {note}")
    else:
        rhapso *= args.iterations / args.rhapso_iterations
        print(f"  rhapso        {rhapso:8.3f} s per pair   x{rhapso / batched:.0f} "
              f"(Rhapso 0.4.5 compute_ransac, scaled from {args.rhapso_iterations} iterations; {note})")


if __name__ == "__main__":
    main()
