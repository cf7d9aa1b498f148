"""The split dataset: new ViewSetups, registrations and the ``split.*`` image loader.

Every sub-view is a box ``min .. max`` (inclusive, xyz, full-resolution local
pixels of its original view). Its registration is the original chain plus a
last (first-applied) ``Image Splitting`` translation by ``min``, so a sub-view
pixel ``p`` lands where original pixel ``min + p`` does: world positions are
unchanged. Setup ids are renumbered from 0 in original-setup order, as
BigStitcher does; each sub-view gets its own tile (``old tile * spread + k``).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.io.spimdata import AttributeDefinition, Entity, SpimData, ViewId, ViewSetup, ViewTransform
from rhapso_gpu.io.spimdata_xml import format_number, spimdata_to_xml

SPLIT_TRANSFORM_NAME = "Image Splitting"
_VIEWER_LOADERS = ("bdv.n5", "bdv.multimg.zarr", "bdv.hdf5")
"""Loaders that are bdv ``ViewerImgLoader``s: BigStitcher wraps them as ``split.viewerimgloader``."""


@dataclass(frozen=True)
class SubView:
    """One new setup: a box of an original setup.

    Attributes
    ----------
    setup : int
        New setup id.
    old_setup : int
    min_xyz, max_xyz : numpy.ndarray of int64
        Inclusive box in the original view's full-resolution local pixels (x, y, z).
    """

    setup: int
    old_setup: int
    min_xyz: np.ndarray
    max_xyz: np.ndarray

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Size in pixels (x, y, z)."""
        return tuple(int(v) for v in self.max_xyz - self.min_xyz + 1)


def split_loader_element(original: SpimData, subviews: list[SubView]) -> ET.Element:
    """The ``<ImageLoader format="split.*">`` wrapping the original loader (see ``rhapso_gpu.io._split_loader``)."""
    fmt = "split.viewerimgloader" if original.image_format in _VIEWER_LOADERS else "split.imgloader"
    el = ET.Element("ImageLoader", {"format": fmt})
    el.append(copy.deepcopy(original.image_loader))
    sequence = ET.fromstring(spimdata_to_xml(original)).find("SequenceDescription")
    sequence.remove(sequence.find("ImageLoader"))  # BigStitcher saves the old sequence without a loader
    el.append(sequence)
    ids = ET.SubElement(el, "SetupIds")
    for sv in subviews:
        d = ET.SubElement(ids, "SetupIdDefinition")
        for tag, text in (("NewId", sv.setup), ("OldId", sv.old_setup),
                          ("min", " ".join(map(str, sv.min_xyz.tolist()))),
                          ("max", " ".join(map(str, sv.max_xyz.tolist())))):
            ET.SubElement(d, tag).text = str(text)
    return el


def translation(min_xyz) -> np.ndarray:
    """3x4 affine translating local sub-view pixels to the original view's pixels (xyz)."""
    t = np.eye(4)[:3].copy()
    t[:, 3] = np.asarray(min_xyz, dtype=np.float64)
    return t


def build_split_spimdata(
    original: SpimData, boxes: dict[int, list[tuple[np.ndarray, np.ndarray]]]
) -> tuple[SpimData, list[SubView]]:
    """The split dataset (without interest points) and its sub-views.

    Parameters
    ----------
    original : SpimData
    boxes : dict
        Original setup id -> its sub-view boxes ``(min_xyz, max_xyz)``.

    Returns
    -------
    (SpimData, list of SubView)
        Same BasePath, time points, voxel sizes, bounding boxes and attributes
        (with one new tile per sub-view). Stitching results, point spread
        functions and intensity adjustments refer to the old setups and are
        written empty, as BigStitcher does.
    """
    spread = max(len(b) for b in boxes.values())
    subviews: list[SubView] = []
    setups: dict[int, ViewSetup] = {}
    tiles = AttributeDefinition("tile", "Tile")
    for old_id in sorted(original.setups):
        old = original.setups[old_id]
        old_tile = old.attributes.get("tile", old_id)
        old_entity = original.attribute_entity("tile", old_tile)
        location = old_entity.field_text("location") if old_entity is not None else None
        for k, (lo, hi) in enumerate(boxes[old_id]):
            sv = SubView(len(subviews), old_id, lo, hi)
            subviews.append(sv)
            tile_id = old_tile * spread + k
            setups[sv.setup] = ViewSetup(
                id=sv.setup, name=None, size_xyz=sv.size_xyz, voxel_size=copy.deepcopy(old.voxel_size),
                attributes={**old.attributes, "tile": tile_id}, extra=copy.deepcopy(old.extra),
            )
            fields = []
            if location is not None:  # stage position (physical units) of the sub-view's first pixel
                voxel = np.asarray(old.voxel_size.size_xyz if old.voxel_size else (1.0, 1.0, 1.0))
                loc = np.asarray([float(v) for v in location.split()]) + lo * voxel
                el = ET.Element("location")
                el.text = " ".join(format_number(float(v)) for v in loc)
                fields.append(el)
            tiles.entities.append(Entity(tile_id, str(tile_id), fields))
    definitions = [copy.deepcopy(d) for d in original.attribute_definitions if d.name != "tile"]
    definitions.append(tiles)
    old_to_new: dict[int, list[SubView]] = {}
    for sv in subviews:
        old_to_new.setdefault(sv.old_setup, []).append(sv)
    registrations = {}
    for view in sorted(original.registrations):
        for sv in old_to_new.get(view.setup, []):
            chain = copy.deepcopy(original.registrations[view])
            registrations[ViewId(view.timepoint, sv.setup)] = chain + [
                ViewTransform(SPLIT_TRANSFORM_NAME, translation(sv.min_xyz))
            ]
    # sections about the old setups are written empty
    emptied = ("PointSpreadFunctions", "IntensityAdjustments")
    layout = [item.tag if getattr(item, "tag", None) in emptied else item for item in original.layout]
    split = SpimData(
        base_path=original.base_path,
        base_path_type=original.base_path_type,
        version=original.version,
        image_loader=split_loader_element(original, subviews),
        setups=setups,
        attribute_definitions=definitions,
        timepoints=copy.deepcopy(original.timepoints),
        missing_views=[ViewId(m.timepoint, sv.setup) for m in original.missing_views
                       for sv in old_to_new.get(m.setup, [])],
        registrations=registrations,
        bounding_boxes=copy.deepcopy(original.bounding_boxes),
        layout=layout,
        sequence_extra=copy.deepcopy(original.sequence_extra),
        view_setups_extra=copy.deepcopy(original.view_setups_extra),
        missing_views_present=original.missing_views_present,
        location=original.location,
    )
    return split, subviews
