"""BigStitcher's split image loaders: each new view is a box of an original view.

``split.imgloader``, ``split.multiresolutionimgloader`` and
``split.viewerimgloader`` (multiview-reconstruction ``XmlIoSplit*ImgLoader``)
share one layout::

    <ImageLoader format="split.viewerimgloader">
      <ImageLoader format="bdv.n5" ...> ... </ImageLoader>   the wrapped (original) loader
      <SequenceDescription> ... </SequenceDescription>       the original ViewSetups, Timepoints, MissingViews
      <SetupIds>
        <SetupIdDefinition>
          <NewId>3</NewId> <OldId>1</OldId>
          <min>0 0 32</min> <max>63 63 79</max>              inclusive box in the original view's
        </SetupIdDefinition>                                 full-resolution local pixels (x y z)
      </SetupIds>
    </ImageLoader>

A new view ``(t, NewId)`` is view ``(t, OldId)`` of the wrapped loader cropped
to ``min .. max``. Level ``L`` (integer factors ``f``, xyz) is the crop
``min / f .. (max + 1) / f`` of the original level ``L``, which is the same
pixels as the full-resolution crop downsampled, *only when* ``f`` divides
``min`` and ``max + 1`` (or ``max`` is the original's last pixel, where the
crop runs to the level's end). The loader therefore exposes the levels from
full resolution up to the first level where this does not hold; the others are
left out, never approximated. ``rhapso-gpu split`` places every box on
multiples of all the pyramid factors, so no level is lost there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io._loader_common import LoadedLevel
from rhapso_gpu.io.spimdata import SpimData, ViewId
from rhapso_gpu.io.spimdata_xml import parse_spimdata

FORMATS = ("split.imgloader", "split.multiresolutionimgloader", "split.viewerimgloader")

Opener = Callable[[SpimData, ViewId, "dict[str, Any] | None"], list[LoadedLevel]]


def read_setup_ids(spim: SpimData) -> dict[int, tuple[int, np.ndarray, np.ndarray]]:
    """The ``<SetupIds>`` of a split loader: new setup -> (old setup, min_xyz, max_xyz).

    ``min_xyz`` and ``max_xyz`` are int64 arrays, inclusive, in the original
    view's full-resolution local pixels.
    """
    where = f"{spim.location or 'dataset.xml'}: ImageLoader {spim.image_format}"
    block = spim.image_loader.find("SetupIds")
    if block is None:
        raise UserError(f"{where}: no <SetupIds>")
    out = {}
    for el in block.findall("SetupIdDefinition"):
        try:
            new, old = int(el.findtext("NewId", "")), int(el.findtext("OldId", ""))
            lo = np.array([int(v) for v in el.findtext("min", "").split()], dtype=np.int64)
            hi = np.array([int(v) for v in el.findtext("max", "").split()], dtype=np.int64)
        except ValueError:
            raise UserError(f"{where}: <SetupIdDefinition> needs integer <NewId>, <OldId>, <min> and <max>") from None
        if lo.shape != (3,) or hi.shape != (3,) or np.any(hi < lo) or np.any(lo < 0):
            raise UserError(f"{where}: new setup {new}: box {lo.tolist()} .. {hi.tolist()} is not a 3-D box")
        out[new] = (old, lo, hi)
    return out


def wrapped_spimdata(spim: SpimData) -> SpimData:
    """The original dataset the split loader wraps: its loader, ViewSetups and time points.

    It shares ``spim``'s BasePath and location, so relative image paths
    resolve as in the split XML. It has no registrations.
    """
    where = f"{spim.location or 'dataset.xml'}: ImageLoader {spim.image_format}"
    inner_loader = spim.image_loader.find("ImageLoader")
    sequence = spim.image_loader.find("SequenceDescription")
    if inner_loader is None or sequence is None:
        raise UserError(f"{where}: expected a wrapped <ImageLoader> and the original <SequenceDescription>")
    root = ET.Element("SpimData", {"version": spim.version})
    base = ET.SubElement(root, "BasePath", {"type": spim.base_path_type})
    base.text = spim.base_path
    seq = ET.SubElement(root, "SequenceDescription")
    seq.append(inner_loader)
    seq.extend(child for child in sequence if child.tag != "ImageLoader")
    ET.SubElement(root, "ViewRegistrations")
    inner = parse_spimdata(ET.tostring(root), source=f"{where} (wrapped dataset)")
    inner.location = spim.location
    return inner


def opener(loaders: dict[str, Opener]) -> Opener:
    """The split loader's ``open_levels``, reading the wrapped loader through ``loaders`` (format -> opener)."""

    def open_levels(spim: SpimData, view: ViewId, storage_options: dict[str, Any] | None) -> list[LoadedLevel]:
        """The pyramid of ``view``, level 0 first (see :func:`rhapso_gpu.io.images.open_view_levels`)."""
        setups = read_setup_ids(spim)
        if view.setup not in setups:
            raise UserError(f"{spim.location or 'dataset.xml'}: {view}: setup {view.setup} is not in <SetupIds>")
        old_setup, lo, hi = setups[view.setup]
        inner = wrapped_spimdata(spim)
        old_view = ViewId(view.timepoint, old_setup)
        fmt = inner.image_format
        if fmt not in loaders:
            raise UserError(f"{spim.location}: wrapped image loader format '{fmt}' is not supported")
        if old_setup not in inner.setups:
            raise UserError(f"{spim.location}: {view}: old setup {old_setup} is not among the wrapped ViewSetups")
        levels = loaders[fmt](inner, old_view, storage_options)
        full_zyx = np.array(levels[0].data_zyx.shape, dtype=np.int64)
        size_xyz = full_zyx[::-1]
        if np.any(hi >= size_xyz):
            raise UserError(
                f"{view}: box {lo.tolist()} .. {hi.tolist()} (x y z) exceeds {old_view} of size {size_xyz.tolist()}"
            )
        out = []
        for level in levels:
            f = np.asarray(level.factors_xyz, dtype=np.float64)
            fi = np.rint(f).astype(np.int64)
            ends = hi + 1
            exact = (
                np.all(np.abs(f - fi) < 1e-9)
                and np.all(lo % fi == 0)
                and np.all((ends % fi == 0) | (ends == size_xyz))
            )
            if not exact:
                break
            start = lo // fi
            shape_xyz = np.array(level.data_zyx.shape[::-1], dtype=np.int64)
            stop = np.where(ends == size_xyz, shape_xyz, ends // fi)
            region = tuple(slice(int(a), int(b)) for a, b in zip(start[::-1], stop[::-1]))
            box = ", ".join(f"{r.start}:{r.stop}" for r in region)
            out.append(LoadedLevel(level.data_zyx[region], level.factors_xyz, f"{level.location} [{box}] (z, y, x)"))
        return out

    return open_levels
