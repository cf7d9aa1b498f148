"""Output voxels per second of CPU fusion for 2 and 4 overlapping views, against Rhapso's fusion.

Builds, in a temporary folder, one dataset per view count: N uint16 views
(default 300 x 300 x 160 px, xyz) translated by a few pixels and rotated by
up to 1 degree, written as OME-Zarr (zstd, 64 x 128 x 128 chunks). The fused
region is a box every view covers (default 256 x 256 x 128 output voxels), so
each output voxel sees all N views; it is cut into 128^3 blocks. For each
block, the same work is timed: read the overlapping input pixels from the zarr
files and fuse with avg-blend onto the same output grid.

* rhapso-gpu: :func:`rhapso_gpu.fusion.sources.block_read`, the task's read
  (:meth:`rhapso_gpu.io.images.PyramidLevel.read_region_zyx`) and the CPU twin
  of ``fuse_block`` (numba), plus the peak traced memory of one block.
* Rhapso 0.4.5 (``--rhapso-python``, a Python with ``pip install Rhapso`` in a
  separate venv): ``Rhapso.affine_fusion.fuse_cell.FuseCell.render_fused_block``
  with the same inverse transforms and blending bounds (b0..b3), in a subprocess.
* The CUDA kernel compiled for the CPU (one thread, serial over GPU threads),
  for reference only; it says nothing about GPU speed.
* The whole task path, :func:`rhapso_gpu.fusion.run.fuse_dataset` of the 4-view
  dataset (float32, 128^3 blocks, written to OME-Zarr) on 2 threads and on 2
  local worker processes (the CLI default), best of ``--repeat`` runs after a
  warm-up run, and the processes / threads ratios of throughput and of CPU
  seconds per run.

The per-block comparison runs on one thread: the numba loops and Rhapso's NumPy/SciPy are serial,
zarr's chunk decoding is held to one worker (``threading.max_workers``,
``--decode-threads``, default 1, the same for both) and OMP/BLAS pools to one thread. Passes alternate between the two (ours, then
Rhapso's, ``--repeat`` times) so both see the same machine load; the medians
are reported, with the load average before and after.

All numbers come from this run, on this CPU. Not a test: nothing is asserted.

Usage: ``.venv/bin/python bench/bench_fusion.py [--rhapso-python /tmp/rhapso-venv/bin/python]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench_detection import cluster_cpu_seconds  # this folder is on the path when run as a script

from cpu_fallback.fusion import fuse_block
from rhapso_gpu.backend.kernels import cpu_emulation
from rhapso_gpu.backend.kernels.fusion import run_fuse_block
from rhapso_gpu.fusion.grid import blocks, make_grid
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.fusion.sources import block_read, view_source
from rhapso_gpu.io.image_writers import image_loader_element, write_view_levels
from rhapso_gpu.io.images import open_view_levels
from rhapso_gpu.io.spimdata import SpimData, Timepoints, ViewId, ViewSetup, ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.scheduler import open_cluster

BLOCK = 128
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}

RHAPSO_DRIVER = r"""
import json, sys, time
import numpy as np
from Rhapso.affine_fusion.fuse_cell import FuseCell
job = json.load(open(sys.argv[1]))
views = {int(k): v for k, v in job["views"].items()}
instructions = {k: {"inv_t": np.asarray(v["inv_t"]), **{b: np.asarray(v[b], np.float32) for b in ("b0", "b1", "b2", "b3")}}
                for k, v in views.items()}
transforms = {k: {"path": v["path"]} for k, v in views.items()}

def render(block):
    used = {k: None for k in block["views"]}
    cell = FuseCell(instructions, used, transforms, None, None, None, None, "avg_blend")
    cell.render_fused_block(instructions, used, block["min_xyz"], block["max_xyz"])

render(job["blocks"][0])  # warm-up, as for rhapso-gpu
total = 0.0
for block in job["blocks"]:
    start = time.perf_counter()
    render(block)
    total += time.perf_counter() - start
print(json.dumps({"seconds": total}))
"""


def rotation(rng, max_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def make_views(folder: Path, n_views: int, size_xyz, seed: int) -> SpimData:
    """N views around the same region, each rotated about its centre and shifted by a few pixels."""
    rng = np.random.default_rng(seed)
    spim = SpimData(timepoints=Timepoints("range", [0], ["0"]))
    views = [ViewId(0, i) for i in range(n_views)]
    spim.image_loader = image_loader_element("zarr", views)
    centre = (np.asarray(size_xyz) - 1) / 2
    for view in views:
        image = rng.integers(100, 4000, tuple(size_xyz[::-1]), dtype=np.uint16)
        write_view_levels("zarr", str(folder), view, [image], [(1, 1, 1)], (1.0, 1.0, 1.0), chunks_zyx=(64, 128, 128))
        spim.setups[view.setup] = ViewSetup(
            view.setup, f"view{view.setup}", tuple(size_xyz), None, {"tile": view.setup}
        )
        m = np.eye(4)
        m[:3, :3] = rotation(rng, 1.0)
        m[:3, 3] = centre - m[:3, :3] @ centre + rng.uniform(-3, 3, 3)
        spim.registrations[view] = [ViewTransform.from_matrix("pose", m)]
    save_spimdata(spim, str(folder / "dataset.xml"))
    return load_spimdata(str(folder / "dataset.xml"))


def plan(spim: SpimData, out_xyz, size_xyz):
    """Sources and per-block reads for the centred output box ``out_xyz`` every view covers."""
    lo = (np.asarray(size_xyz) - np.asarray(out_xyz)) // 2
    grid = make_grid(lo, lo + np.asarray(out_xyz) - 1)
    sources = {
        v: view_source(spim, v, open_view_levels(spim, v), grid.output_to_world, 40.0, 0.0) for v in spim.view_ids()
    }
    jobs = []
    for block in blocks(grid.shape_zyx, (BLOCK,) * 3):
        start, stop = block.start_zyx[::-1], block.stop_zyx[::-1]
        reads = [r for v in spim.view_ids() if (r := block_read(sources[v], start, stop)) is not None]
        jobs.append((block, reads))
    return grid, sources, jobs


def fuse_one(block, reads):
    regions = [r.read() for r in reads]
    return fuse_block(block.shape_zyx, "avg-blend", [r.fusion_view(g) for r, g in zip(reads, regions)])


def pass_ours(jobs) -> float:
    """Seconds of one pass reading and fusing every block (CPU twin, avg-blend)."""
    start = time.perf_counter()
    for block, reads in jobs:
        fuse_one(block, reads)
    return time.perf_counter() - start


def peak_ours(jobs) -> int:
    """Peak traced bytes (tracemalloc) of reading and fusing one block."""
    tracemalloc.start()
    fuse_one(*jobs[0])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def time_emulated(jobs) -> float:
    block, reads = jobs[0]
    regions = [r.read() for r in reads]
    views = [r.fusion_view(g) for r, g in zip(reads, regions)]
    run_fuse_block(block.shape_zyx, "avg-blend", views, launch=cpu_emulation.launch, xp=np)  # build or load
    start = time.perf_counter()
    run_fuse_block(block.shape_zyx, "avg-blend", views, launch=cpu_emulation.launch, xp=np)
    return (time.perf_counter() - start) / np.prod(block.shape_zyx)


def rhapso_job(folder: Path, sources, jobs) -> Path:
    """Write the driver and its job (same transforms, blending bounds and blocks) into ``folder``."""
    views = {}
    for v, src in sources.items():
        lo, hi, blend = src.support_lo_xyz, src.support_hi_xyz, src.blend_xyz
        views[v.setup] = {
            "path": str(folder / "dataset.ome.zarr" / f"s{v.setup}-t0.zarr"),
            "inv_t": src.output_to_level.tolist(),
            "b0": lo.tolist(),
            "b1": (lo + blend).tolist(),
            "b2": (hi - blend).tolist(),
            "b3": hi.tolist(),
        }
    job = {
        "views": views,
        "blocks": [
            {
                "min_xyz": list(b.start_zyx[::-1]),
                "max_xyz": [s - 1 for s in b.stop_zyx[::-1]],
                "views": [r.source.view.setup for r in reads],
            }
            for b, reads in jobs
        ],
    }
    (folder / "rhapso_job.json").write_text(json.dumps(job))
    (folder / "rhapso_driver.py").write_text(RHAPSO_DRIVER)
    return folder


def pass_rhapso(python: str, folder: Path, decode_threads: int) -> float:
    """Seconds of one pass of Rhapso over every block (after one warm-up block), in a one-thread subprocess
    whose zarr decodes with ``decode_threads`` workers."""
    proc = subprocess.run(
        [python, str(folder / "rhapso_driver.py"), str(folder / "rhapso_job.json")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **ONE_THREAD, "ZARR_THREADING__MAX_WORKERS": str(decode_threads)},
    )
    if proc.returncode != 0:
        raise SystemExit(f"Rhapso run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]


def fuse_on_clusters(spim: SpimData, folder: Path, repeat: int) -> dict[str, tuple[float, float]]:
    """Per cluster (2 threads, 2 local worker processes): output voxels/s of ``fuse_dataset`` (best run after a
    warm-up) and CPU seconds per run (this process and the workers). Also ``"same"``: identical volumes."""
    params = FuseParams(chunk_size=(BLOCK,) * 3, block_scale=(1, 1, 1))
    rates, volumes = {}, {}
    for spec in ("threads", "local"):
        location = str(folder / f"fused-{spec}.ome.zarr")
        with open_cluster(spec, n_workers=2, progress=False) as cluster:
            fuse_dataset(spim, location, params, cluster, "numpy", overwrite=True)
            times, cpu = [], cluster_cpu_seconds(cluster)
            for _ in range(repeat):
                start = time.perf_counter()
                result = fuse_dataset(spim, location, params, cluster, "numpy", overwrite=True)
                times.append(time.perf_counter() - start)
            cpu = (cluster_cpu_seconds(cluster) - cpu) / repeat
        rates[spec] = (int(np.prod(result.shape_tczyx)) / min(times), cpu)
        volumes[spec] = zarr.open_array(f"{location}/0", mode="r")[...]
    rates["same"] = np.array_equal(volumes["threads"], volumes["local"])
    return rates


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[300, 300, 160], metavar=("X", "Y", "Z"))
    parser.add_argument("--out", type=int, nargs=3, default=[256, 256, 128], metavar=("X", "Y", "Z"))
    parser.add_argument("--rhapso-python", help="python of a venv with Rhapso installed (skipped when not given)")
    parser.add_argument("--repeat", type=int, default=5, help="alternating passes over all blocks; medians are kept")
    parser.add_argument(
        "--decode-threads", type=int, default=1, help="zarr decoding workers (threading.max_workers), for both"
    )
    args = parser.parse_args(argv)
    zarr.config.set({"threading.max_workers": args.decode_threads})  # Rhapso's subprocess gets the same

    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (2, 4):
            folder = Path(tmp) / f"views{n}"
            folder.mkdir()
            spim = make_views(folder, n, args.size, seed=n)
            grid, sources, jobs = plan(spim, args.out, args.size)
            assert all(len(reads) == n for _, reads in jobs)
            n_out = int(np.prod(grid.shape_zyx))
            if args.rhapso_python:
                rhapso_job(folder, sources, jobs)
            fuse_one(*jobs[0])  # numba compiles (or loads its cache) on the first call
            ours, theirs = [], []
            for _ in range(args.repeat):
                ours.append(pass_ours(jobs))
                if args.rhapso_python:
                    theirs.append(pass_rhapso(args.rhapso_python, folder, args.decode_threads))
            row = {
                "voxels": n_out,
                "ours": n_out / statistics.median(ours),
                "ours_range": (n_out / max(ours), n_out / min(ours)),
                "peak_mb": peak_ours(jobs) / 2**20,
                "emulated": 1.0 / time_emulated(jobs),
            }
            if theirs:
                row["rhapso"] = n_out / statistics.median(theirs)
                row["rhapso_range"] = (n_out / max(theirs), n_out / min(theirs))
                row["ratios"] = sorted(t / o for o, t in zip(ours, theirs))
            if n == 4:
                row["clusters"] = fuse_on_clusters(spim, folder, args.repeat)
            results[n] = row
    load_after = os.getloadavg()

    print(
        f"avg-blend, {args.out[0]}x{args.out[1]}x{args.out[2]} output voxels (xyz) in {BLOCK}^3 blocks, "
        f"views {args.size[0]}x{args.size[1]}x{args.size[2]} uint16 (zarr, zstd), read + fuse, one thread each "
        f"(zarr decoding: {args.decode_threads} worker(s) each), median of {args.repeat} alternating passes"
    )
    print(
        f"  load average (1, 5, 15 min) before {', '.join(f'{v:.2f}' for v in load_before)}, "
        f"after {', '.join(f'{v:.2f}' for v in load_after)}; {os.cpu_count()} CPUs"
    )
    for n, row in results.items():
        lo, hi = (v / 1e6 for v in row["ours_range"])
        print(
            f"  {n} views: rhapso-gpu (CPU twin) {row['ours'] / 1e6:6.2f} Mvoxel/s (passes {lo:.2f}-{hi:.2f}), "
            f"peak {row['peak_mb']:.0f} MB per {BLOCK}^3 block; .cu emulated on CPU {row['emulated'] / 1e6:.2f} Mvoxel/s"
        )
        if "rhapso" in row:
            lo, hi = (v / 1e6 for v in row["rhapso_range"])
            ratios = ", ".join(f"{r:.2f}" for r in row["ratios"])
            print(f"           Rhapso 0.4.5          {row['rhapso'] / 1e6:6.2f} Mvoxel/s (passes {lo:.2f}-{hi:.2f})")
            print(
                f"           ratio rhapso-gpu / Rhapso: {row['ours'] / row['rhapso']:.2f}x "
                f"(medians; per alternating pass pair: {ratios}); target >= 3x"
            )
    print(f"  4 views / 2 views throughput (rhapso-gpu): {results[4]['ours'] / results[2]['ours']:.2f}")
    (threads, threads_cpu), (local, local_cpu) = results[4]["clusters"]["threads"], results[4]["clusters"]["local"]
    print(
        f"  fuse_dataset, 4 views, {BLOCK}^3 block tasks: 2 threads {threads / 1e6:.2f} Mvoxel/s "
        f"(CPU {threads_cpu:.2f} s/run), 2 worker processes {local / 1e6:.2f} Mvoxel/s (CPU {local_cpu:.2f} s/run)"
    )
    print(
        f"  2 worker processes / 2 threads: throughput {local / threads:.2f}, CPU per run {local_cpu / threads_cpu:.2f} "
        f"(identical output: {results[4]['clusters']['same']})"
    )
    if "rhapso" in results[2]:
        print(f"  4 views / 2 views throughput (Rhapso):     {results[4]['rhapso'] / results[2]['rhapso']:.2f}")
    else:
        print("  Rhapso not run (pass --rhapso-python PATH to a venv with `pip install Rhapso`)")


if __name__ == "__main__":
    main()
