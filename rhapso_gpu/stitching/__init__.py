"""Intensity-based pairwise stitching: phase correlation of view overlaps (BigStitcher's "pairwise shifts").

Public API::

    from rhapso_gpu.stitching import StitchParams, stitch_dataset, store_stitching_results

    results = stitch_dataset(spim, StitchParams(), cluster)   # one PairStitch per overlapping pair
    store_stitching_results(spim, results)                              # accepted ones as <StitchingResults>

Modules: :mod:`~.correlation` (phase correlation checked by masked
cross-correlation, on any backend), :mod:`~.sampling` (views resampled into
world-space grids), :mod:`~.pairwise` (pairs, datasets, XML results),
:mod:`~.params`.
"""

from rhapso_gpu.stitching.correlation import ShiftResult, phase_correlate
from rhapso_gpu.stitching.pairwise import PairStitch, stitch_dataset, stitch_pair, store_stitching_results
from rhapso_gpu.stitching.params import StitchParams

__all__ = ["PairStitch", "ShiftResult", "StitchParams", "phase_correlate", "stitch_dataset", "stitch_pair",
           "store_stitching_results"]
