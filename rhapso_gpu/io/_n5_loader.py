"""The ``bdv.n5`` image loader: datasets ``setup{S}/timepoint{T}/s{L}`` in one N5 container.

Downsampling factors (x, y, z) come from the ``downsamplingFactors`` attribute
of group ``setup{S}`` (one entry per level), else from each ``s{L}`` dataset's
own attribute; a level-0 dataset without either has factors (1, 1, 1).
"""

from __future__ import annotations

from typing import Any

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import n5
from rhapso_gpu.io._loader_common import LoadedLevel, resolve_location
from rhapso_gpu.io.spimdata import SpimData, ViewId


def open_levels(spim: SpimData, view: ViewId, storage_options: dict[str, Any] | None) -> list[LoadedLevel]:
    """The pyramid of ``view``, level 0 first (see :func:`rhapso_gpu.io.images.open_view_levels`)."""
    n5_el = spim.image_loader.find("n5")
    if n5_el is None or not (n5_el.text or "").strip():
        raise UserError(f"{spim.location or 'dataset.xml'}: ImageLoader bdv.n5 has no <n5> container path")
    container = n5.N5Container(
        resolve_location(spim, n5_el.text.strip(), n5_el.get("type", "relative")), storage_options
    )
    setup_group = f"setup{view.setup}"
    try:
        setup_factors = container.read_attributes(setup_group).get("downsamplingFactors")
        n_levels = len(setup_factors) if setup_factors else _count_levels(container, view)
        levels = []
        for level in range(n_levels):
            path = f"{setup_group}/timepoint{view.timepoint}/s{level}"
            dataset = container.open_dataset(path)
            factors = (
                setup_factors[level] if setup_factors else container.read_attributes(path).get("downsamplingFactors")
            )
            if factors is None and level > 0:
                raise UserError(f"{dataset.location}: no downsamplingFactors attribute here or in {setup_group}")
            factors_xyz = tuple(float(f) for f in (factors or (1, 1, 1)))
            if len(factors_xyz) != 3:
                raise UserError(f"{dataset.location}: downsamplingFactors {factors} are not 3 numbers (x, y, z)")
            if dataset.ndim != 3:
                raise UserError(f"{dataset.location}: expected a 3-D dataset, found {dataset.ndim}-D")
            levels.append(LoadedLevel(n5.as_dask(dataset), factors_xyz, dataset.location))
    except UserError as err:
        raise UserError(f"{view}: {err}") from None
    return levels


def _count_levels(container: n5.N5Container, view: ViewId) -> int:
    """Number of consecutive ``s{L}`` datasets from ``s0`` (at least 1, so a missing s0 is reported)."""
    level = 1
    while container.exists(f"setup{view.setup}/timepoint{view.timepoint}/s{level}"):
        level += 1
    return level
