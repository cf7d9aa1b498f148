"""CPU throughput of DoG detection, full pipeline, against Rhapso's own detection functions.

All numbers are measured in this run on the same volumes: a synth ``beads``
dataset of ``--tiles`` views of ``--tile-size`` voxels (uint16, zarr), detected
at full resolution (dsxy = dsz = 1) with the same sigma, threshold,
min/max intensity and median radius for both programs.

* rhapso-gpu: ``detect_interest_points`` (read from zarr, normalise, optional
  median background, DoG, extrema, localisation, merge), NumPy backend, on
  ``threads`` clusters and on ``local`` clusters (worker processes, the CLI
  default), each with 1 and 2 workers, and the processes / threads ratios of
  throughput and of CPU seconds per run (this process plus the workers; 1.0:
  worker processes cost nothing extra).
* Rhapso (optional, ``--rhapso-python``, e.g. a venv with ``pip install
  Rhapso``): ``Rhapso.detection.difference_of_gaussian.DifferenceOfGaussian.run``
  on each whole view (one chunk, its fastest case), timed in a separate
  process including reading the same zarr arrays (zarr-python) and its own
  median filter (``scipy.ndimage.median_filter`` over (2r+1) x (2r+1) x 1).
* The background estimate alone: rhapso-gpu's separable sampled median against
  ``scipy.ndimage.median_filter`` with the full XY window, on one view.

Throughput = voxels of all views / wall time, best of ``--repeat`` runs. The
machine's other load shows in the numbers; run it on an idle machine. Not a
test: nothing is asserted.

Usage: ``.venv/bin/python bench/bench_detection.py [--tile-size 256x256x64] [--median 10]
[--rhapso-python /tmp/rhapso-venv/bin/python]``
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rhapso_gpu.backend import get_backend
from rhapso_gpu.detection import DetectParams, detect_interest_points
from rhapso_gpu.detection.background import median_background
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import SynthParams, generate_dataset

RHAPSO_SCRIPT = """
import json, sys, time
import numpy as np
from Rhapso.detection.difference_of_gaussian import DifferenceOfGaussian
import zarr
args = json.loads(sys.argv[1])
best = None
for _ in range(args["repeat"]):
    start = time.perf_counter()
    points = 0
    for path in args["views"]:
        volume_zyx = np.asarray(zarr.open_array(path, mode="r")[...]).reshape(args["shape_zyx"])
        volume_xyz = volume_zyx.transpose(2, 1, 0)  # Rhapso's chunks are (x, y, z): its median window is XY
        dog = DifferenceOfGaussian(args["min"], args["max"], args["sigma"], args["threshold"], args["median"],
                                   np.eye(4))
        points += len(dog.run(volume_xyz, 0, (0, 0, 0))["interest_points"])
    seconds = time.perf_counter() - start
    best = seconds if best is None else min(best, seconds)
print(json.dumps({"seconds": best, "points": points}))
"""


def _cpu_seconds() -> float:
    """CPU seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cluster_cpu_seconds(cluster) -> float:
    """CPU seconds used so far by this process and the cluster's worker processes (also used by bench_fusion)."""
    workers = cluster.client.run(_cpu_seconds) if cluster.client is not None else {}
    return _cpu_seconds() + sum(workers.values())


def _ours(spim, params, spec: str, workers: int, repeat: int) -> tuple[float, int, float]:
    """Best wall time of ``repeat`` runs (after a warm-up run: imports, numba caches), the point count, and
    the CPU seconds per run of this process and the workers (less sensitive to other load than wall time)."""
    with open_cluster(spec, n_workers=workers) as cluster:
        detect_interest_points(spim, params, cluster, "numpy")
        times = []
        cpu = cluster_cpu_seconds(cluster)
        for _ in range(repeat):
            start = time.perf_counter()
            result = detect_interest_points(spim, params, cluster, "numpy")
            times.append(time.perf_counter() - start)
        cpu = (cluster_cpu_seconds(cluster) - cpu) / repeat
    return min(times), sum(len(v.loc_xyz) for v in result.views.values()), cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", default="2x1x1", help="tile grid (x, y, z)")
    parser.add_argument("--tile-size", default="256x256x64", help="tile size (x, y, z), voxels")
    parser.add_argument("--sigma", type=float, default=1.8)
    parser.add_argument("--threshold", type=float, default=0.03)
    parser.add_argument("--median", type=int, nargs="+", default=[0, 10], help="median radii to run")
    parser.add_argument("--rhapso-python", default=None, help="python of an environment with Rhapso installed")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept "
                        "(Rhapso with a median filter: one run)")
    args = parser.parse_args(argv)

    tiles = tuple(int(v) for v in args.tiles.split("x"))
    size = tuple(int(v) for v in args.tile_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        with open_cluster("threads", n_workers=2) as cluster:
            generate_dataset(tmp, SynthParams(content="beads", tiles=tiles, tile_size=size, seed=1), cluster, "numpy")
        spim = load_spimdata(str(Path(tmp) / "dataset.xml"))
        views = spim.view_ids()
        volumes = [open_view_levels(spim, v)[0].data_zyx.compute() for v in views]
        n_voxels = sum(v.size for v in volumes)
        low, high = (float(np.percentile(np.concatenate([v.ravel() for v in volumes]), p)) for p in (0.1, 99.99))
        print(f"{len(views)} views of {args.tile_size} (x y z) voxels = {n_voxels / 1e6:.1f} M voxels, "
              f"sigma {args.sigma}, threshold {args.threshold}, min/max {low:g}/{high:g}, dsxy = dsz = 1")
        paths = [str(Path(tmp) / "dataset.ome.zarr" / f"s{v.setup}-t{v.timepoint}.zarr" / "0") for v in views]

        for radius in args.median:
            params = DetectParams(dsxy=1, dsz=1, sigma=args.sigma, threshold=args.threshold, min_intensity=low,
                                  max_intensity=high, median_filter=radius, combine_distance=0.0)
            print(f"\nmedian_filter = {radius}")
            t0, n0, c0 = _ours(spim, params, "threads", 1, args.repeat)
            t0b, n0b, c0b = _ours(spim, params, "threads", 2, args.repeat)
            t1, n1, c1 = _ours(spim, params, "local", 1, args.repeat)
            t2, n2, c2 = _ours(spim, params, "local", 2, args.repeat)
            print(f"  rhapso-gpu, 1 thread            {t0:7.2f} s  {n_voxels / t0 / 1e6:7.2f} M voxels/s  ({n0} points)"
                  f"  CPU {c0:.2f} s/run")
            print(f"  rhapso-gpu, 2 threads           {t0b:7.2f} s  {n_voxels / t0b / 1e6:7.2f} M voxels/s  ({n0b} points)"
                  f"  CPU {c0b:.2f} s/run   2 vs 1 workers: {t0 / t0b:.2f}x")
            print(f"  rhapso-gpu, 1 worker process    {t1:7.2f} s  {n_voxels / t1 / 1e6:7.2f} M voxels/s  ({n1} points)"
                  f"  CPU {c1:.2f} s/run")
            print(f"  rhapso-gpu, 2 worker processes  {t2:7.2f} s  {n_voxels / t2 / 1e6:7.2f} M voxels/s  ({n2} points)"
                  f"  CPU {c2:.2f} s/run   2 vs 1 workers: {t1 / t2:.2f}x")
            print(f"  2 worker processes / 2 threads: throughput {t0b / t2:.2f}, CPU per run {c2 / c0b:.2f} "
                  f"(1 process / 1 thread: {t0 / t1:.2f}, {c1 / c0:.2f})")
            if args.rhapso_python:
                job = {"views": paths, "min": low, "max": high, "sigma": args.sigma, "threshold": args.threshold,
                       "median": radius, "shape_zyx": list(volumes[0].shape),
                       "repeat": args.repeat if radius == 0 else 1}
                proc = subprocess.run([args.rhapso_python, "-c", RHAPSO_SCRIPT, json.dumps(job)],
                                      capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    print(f"  Rhapso failed: {proc.stderr.strip().splitlines()[-1]}")
                    continue
                rh = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"  Rhapso 0.4.x (1 process)        {rh['seconds']:7.2f} s  "
                      f"{n_voxels / rh['seconds'] / 1e6:7.2f} M voxels/s  ({rh['points']} points)")
                print(f"  throughput ratio rhapso-gpu / Rhapso: {rh['seconds'] / t0:.1f}x (1 thread), "
                      f"{rh['seconds'] / t0b:.1f}x (2 threads), {rh['seconds'] / t2:.1f}x (2 worker processes)")
            if radius > 0:
                image = volumes[0].astype(np.float32)
                start = time.perf_counter()
                median_background(get_backend("numpy"), image, radius)
                ours = time.perf_counter() - start
                start = time.perf_counter()
                ndi.median_filter(image, size=(1, 2 * radius + 1, 2 * radius + 1), mode="reflect")
                full = time.perf_counter() - start
                print(f"  background of one view: separable sampled median {ours:.2f} s, "
                      f"full {2 * radius + 1}x{2 * radius + 1} median {full:.2f} s ({full / ours:.0f}x)")


if __name__ == "__main__":
    main()
