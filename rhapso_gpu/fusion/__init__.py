"""Affine fusion of registered views into one OME-Zarr volume in world space.

* :mod:`~rhapso_gpu.fusion.params`: :class:`FuseParams` (YAML / ``--set`` names).
* :mod:`~rhapso_gpu.fusion.grid`: the output grid (bounding box, anisotropy,
  downsampling) and its blocks.
* :mod:`~rhapso_gpu.fusion.sources`: per view, the pyramid level to read, the
  blending geometry, and the crop each block needs.
* :mod:`~rhapso_gpu.fusion.run`: :func:`fuse_dataset`, one scheduler task per
  block, resumable.
* :mod:`~rhapso_gpu.fusion.bdv_xml`: a BigStitcher ``dataset.xml`` for the fused volume.

The per-block arithmetic is the ``fuse_block`` kernel (CUDA, with the CPU twin
:func:`cpu_fallback.fusion.fuse_block`). The pyramid is :mod:`rhapso_gpu.multiscale`
(``fuse --multiscale`` chains the two in the command line).
"""
