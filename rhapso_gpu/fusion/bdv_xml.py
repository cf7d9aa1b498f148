"""A BigStitcher/BigDataViewer ``dataset.xml`` for a fused OME-Zarr volume, so Fiji (and rhapso-gpu) open it.

One ViewSetup per output channel, one time point per output time point. The
image loader is ``bdv.multimg.zarr`` 3.0 with one ``<zgroup>`` per (time point,
channel) pointing at the container root (``path="."``) and selecting the slice
of the 5-D arrays with ``indicies="c t"``. Each view's registration maps its
pixels to the world coordinates of the input dataset, so the fused volume
overlays the views it was made from.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

from rhapso_gpu.fusion.run import FusionPlan
from rhapso_gpu.io import storage
from rhapso_gpu.io.spimdata import (
    AttributeDefinition,
    Entity,
    SpimData,
    Timepoints,
    ViewId,
    ViewSetup,
    ViewTransform,
    VoxelSize,
)
from rhapso_gpu.io.spimdata_xml import save_spimdata


def _relative(container: str, xml_location: str) -> tuple[str, str]:
    """``(path, type)`` of the container as the XML should name it."""
    if storage.is_remote(container) or storage.is_remote(xml_location):
        return container, "absolute"
    return os.path.relpath(os.path.abspath(container), storage.parent(xml_location)), "relative"


def fused_spimdata(plan: FusionPlan, container: str, xml_location: str) -> SpimData:
    """The dataset describing the fused container ``container``, to be saved at ``xml_location``."""
    timepoints = sorted({(s.t_index, s.timepoint) for s in plan.slots})
    channels = sorted({(s.c_index, s.channel) for s in plan.slots})
    spim = SpimData(timepoints=Timepoints("list", [t for _, t in timepoints], [str(t) for _, t in timepoints]))
    loader = ET.Element("ImageLoader", {"format": "bdv.multimg.zarr", "version": "3.0"})
    path, path_type = _relative(container, xml_location)
    ET.SubElement(loader, "zarr", {"type": path_type}).text = path
    groups = ET.SubElement(loader, "zgroups")
    for s in plan.slots:
        attrs = {"setup": str(s.c_index), "tp": str(s.timepoint), "path": ".", "indicies": f"{s.c_index} {s.t_index}"}
        ET.SubElement(groups, "zgroup", attrs)
    spim.image_loader = loader
    size_xyz = tuple(int(n) for n in plan.grid.shape_zyx[::-1])
    to_world = ViewTransform.from_matrix("fused pixels to world", plan.grid.output_to_world)
    for c_index, channel in channels:
        spim.setups[c_index] = ViewSetup(
            id=c_index,
            name=f"fused_ch{channel}",
            size_xyz=size_xyz,
            voxel_size=VoxelSize(plan.unit, plan.voxel_size_xyz),
            attributes={"illumination": 0, "channel": channel, "tile": 0, "angle": 0},
        )
    present = {(s.timepoint, s.c_index) for s in plan.slots}
    for _, t in timepoints:
        for c_index, _ in channels:
            if (t, c_index) in present:
                spim.registrations[ViewId(t, c_index)] = [to_world]
            else:
                spim.missing_views.append(ViewId(t, c_index))
    spim.attribute_definitions = [
        AttributeDefinition("illumination", "Illumination", [Entity(0, "0")]),
        AttributeDefinition("channel", "Channel", [Entity(c, str(c)) for _, c in channels]),
        AttributeDefinition("tile", "Tile", [Entity(0, "fused")]),
        AttributeDefinition("angle", "Angle", [Entity(0, "0")]),
    ]
    return spim


def write_fused_xml(plan: FusionPlan, container: str, xml_location: str) -> str:
    """Write :func:`fused_spimdata` to ``xml_location`` (with backups of a file it replaces); return it."""
    return save_spimdata(fused_spimdata(plan, container, xml_location), xml_location)
