"""Multiscale pyramids of OME-Zarr volumes: block-mean levels, written block by block.

See :func:`~rhapso_gpu.multiscale.pyramid.build_pyramid`.
"""
