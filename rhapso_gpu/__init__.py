"""rhapso-gpu: register, align and fuse tiled 3-D light-sheet datasets.

Floors, bottom to top (imports only go down):

1. ``rhapso_gpu.io``: storage (local or s3://), BigStitcher XML, N5, OME-Zarr, TIFF.
2. ``rhapso_gpu.geometry``: affines, bounding boxes and overlaps of views.
3. ``rhapso_gpu.backend`` and ``cpu_fallback``: the array-module interface.
4. Stages: ``rhapso_gpu.synth``, ``rhapso_gpu.evaluation`` (detection, matching,
   solver, fusion, multiscale and split follow).
5. Orchestration: ``rhapso_gpu.scheduler``, ``rhapso_gpu.cli``.
"""

__version__ = "0.1.0"
