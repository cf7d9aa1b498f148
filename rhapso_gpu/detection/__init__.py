"""Interest-point detection: BigStitcher's Difference-of-Gaussian, block-wise, on GPU or CPU.

Public API::

    from rhapso_gpu.detection import DetectParams, detect_interest_points, save_interest_points

    result = detect_interest_points(spim, DetectParams(dsxy=2, dsz=1), cluster, "numpy")
    save_interest_points(spim, result, params)   # interestpoints.n5 + <ViewInterestPointsFile>

Modules: :mod:`~.dog` (the DoG contract), :mod:`~.downsampling` (level choice,
2x steps, mapping to full resolution), :mod:`~.background` (median
background), :mod:`~.blocks` (blocks with halos, exact peak partition),
:mod:`~.border` (Gaussian refit of peaks near the image border),
:mod:`~.overlap`, :mod:`~.selection` (auto threshold, merging, limits),
:mod:`~.intensity_range` (robust min/max), :mod:`~.pipeline` (whole datasets).
"""

from rhapso_gpu.detection.params import DetectParams
from rhapso_gpu.detection.pipeline import DetectionResult, ViewPoints, detect_interest_points, save_interest_points

__all__ = ["DetectParams", "DetectionResult", "ViewPoints", "detect_interest_points", "save_interest_points"]
