"""Time the CPU emulation of ``downsample_mean.cu`` against its NumPy twin.

Both run in this process on the same volume (default: 256^3 uint16, axis order
z, y, x, factors 2, 2, 2); the script prints both timings and their ratio. The
emulation runs the CUDA threads one after another in one CPU thread, so the ratio
says how the C++ build of the kernel logic compares with vectorised NumPy on this
CPU; it says nothing about GPU speed. Not a test: nothing is asserted about time.

Usage: ``.venv/bin/python bench/bench_downsample.py [--size 256] [--factors 2 2 2] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from cpu_fallback.kernels import downsample_mean as twin
from rhapso_gpu.backend.kernels import cpu_emulation
from rhapso_gpu.backend.kernels.downsample import run_downsample_mean


def best_time(fn, repeat: int) -> float:
    """Shortest wall time of ``repeat`` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="edge length of the cubic volume, voxels")
    parser.add_argument("--factors", type=int, nargs=3, default=[2, 2, 2], metavar=("FZ", "FY", "FX"))
    parser.add_argument("--repeat", type=int, default=5, help="runs per implementation; the best is kept")
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    volume = rng.integers(0, 65536, (args.size,) * 3, dtype=np.uint16)
    factors = tuple(args.factors)

    def emulated():
        return run_downsample_mean(volume, factors, launch=cpu_emulation.launch, xp=np)

    start = time.perf_counter()
    reference = emulated()  # first call compiles (or loads the cached build)
    build = time.perf_counter() - start
    if not np.array_equal(reference, twin(volume, factors)):
        raise SystemExit("emulated kernel and NumPy twin disagree; not timing")

    t_twin = best_time(lambda: twin(volume, factors), args.repeat)
    t_emul = best_time(emulated, args.repeat)
    print(f"volume {volume.shape} {volume.dtype}, factors {factors}, best of {args.repeat}")
    print(f"  NumPy twin        {t_twin * 1e3:9.1f} ms")
    print(f"  emulated C++ .cu  {t_emul * 1e3:9.1f} ms   (first call incl. g++ build or cache load: {build:.2f} s)")
    print(f"  ratio emulated / NumPy = {t_emul / t_twin:.2f}")


if __name__ == "__main__":
    main()
