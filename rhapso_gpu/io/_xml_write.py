"""Serialise a :class:`~rhapso_gpu.io.spimdata.SpimData` to the bytes of a BigStitcher ``dataset.xml``.

Sections are written in the document's original order; kept elements are
written back verbatim; numbers are formatted as BigStitcher (Java) writes them.
Public entry points are re-exported by :mod:`rhapso_gpu.io.spimdata_xml`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal

import numpy as np

from rhapso_gpu.io.spimdata import SpimData, ViewTransform


def format_number(value: float) -> str:
    """Format a number as Java's ``Double.toString`` does (BigStitcher's writer).

    Integers are written plainly. Floats use the shortest digits that read
    back to the same double, in plain notation for 1e-3 <= |v| < 1e7 and as
    ``d.dddE±n`` otherwise (``1.0``, ``0.5``, ``6.123233995736766E-17``).
    """
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    if not np.isfinite(v):
        return "NaN" if np.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if v == 0.0:
        return "-0.0" if np.signbit(v) else "0.0"
    _sign, digits, exponent = Decimal(repr(abs(v))).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exponent  # position of the decimal point in ``text``
    prefix = "-" if v < 0 else ""
    if 1e-3 <= abs(v) < 1e7:
        if point <= 0:
            return f"{prefix}0.{'0' * -point}{text}"
        if point >= len(text):
            return f"{prefix}{text}{'0' * (point - len(text))}.0"
        return f"{prefix}{text[:point]}.{text[point:]}"
    mantissa = text[0] + "." + (text[1:] or "0")
    return f"{prefix}{mantissa}E{point - 1}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = text
    return el


def _join(values) -> str:
    return " ".join(format_number(v) for v in values)


def spimdata_to_xml(spim: SpimData) -> bytes:
    """Serialise a :class:`SpimData` to the bytes of a ``dataset.xml``."""
    root = ET.Element("SpimData", {"version": spim.version})
    writers = {
        "BasePath": _write_base_path,
        "SequenceDescription": _write_sequence,
        "ViewRegistrations": _write_registrations,
        "ViewInterestPoints": _write_interest_points,
        "BoundingBoxes": _write_bounding_boxes,
        "StitchingResults": _write_stitching_results,
        # read documents keep these verbatim (as elements); new documents get them empty
        "PointSpreadFunctions": lambda root, _: _sub(root, "PointSpreadFunctions"),
        "IntensityAdjustments": lambda root, _: _sub(root, "IntensityAdjustments"),
    }
    layout = list(spim.layout)
    # Sections the model holds that the layout lacks go at their canonical place.
    for section in ("BasePath", "SequenceDescription", "ViewRegistrations"):
        if section not in layout:
            layout.insert(min(len(layout), ("BasePath", "SequenceDescription", "ViewRegistrations").index(section)), section)
    for section, items in (
        ("ViewInterestPoints", spim.interest_points),
        ("BoundingBoxes", spim.bounding_boxes),
        ("StitchingResults", spim.stitching_results),
    ):
        if items and section not in layout:
            layout.append(section)
    for item in layout:
        if isinstance(item, str):
            writers[item](root, spim)
        else:
            root.append(item)
    ET.indent(root, space="  ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n").encode("utf-8")


def _write_base_path(root: ET.Element, spim: SpimData) -> None:
    _sub(root, "BasePath", spim.base_path, type=spim.base_path_type)


def _write_sequence(root: ET.Element, spim: SpimData) -> None:
    seq = _sub(root, "SequenceDescription")
    seq.append(spim.image_loader)
    setups = _sub(seq, "ViewSetups")
    for s in spim.setups.values():
        el = _sub(setups, "ViewSetup")
        _sub(el, "id", str(s.id))
        if s.name is not None:
            _sub(el, "name", s.name)
        if s.size_xyz is not None:
            _sub(el, "size", _join(s.size_xyz))
        if s.voxel_size is not None:
            vs = _sub(el, "voxelSize")
            _sub(vs, "unit", s.voxel_size.unit)
            _sub(vs, "size", _join(float(v) for v in s.voxel_size.size_xyz))
        if s.attributes:
            attrs = _sub(el, "attributes")
            for name, value in s.attributes.items():
                _sub(attrs, name, str(value))
        el.extend(s.extra)
    for definition in spim.attribute_definitions:
        block = _sub(setups, "Attributes", name=definition.name)
        for ent in definition.entities:
            e = _sub(block, definition.entity_tag)
            _sub(e, "id", str(ent.id))
            if ent.name is not None:
                _sub(e, "name", ent.name)
            e.extend(ent.fields)
    setups.extend(spim.view_setups_extra)
    tp = spim.timepoints
    tel = _sub(seq, "Timepoints", type=tp.kind)
    if tp.kind == "range":
        _sub(tel, "first", str(min(tp.ids)))
        _sub(tel, "last", str(max(tp.ids)))
    elif tp.kind == "list":
        names = tp.names if len(tp.names) == len(tp.ids) else [str(i) for i in tp.ids]
        for tid, name in zip(tp.ids, names):
            t = _sub(tel, "Timepoint")
            _sub(t, "id", str(tid))
            if name is not None:
                _sub(t, "name", name)
    else:
        _sub(tel, "integerpattern", tp.pattern if tp.pattern is not None else ",".join(map(str, tp.ids)))
    if spim.missing_views_present or spim.missing_views:
        mv = _sub(seq, "MissingViews")
        for v in spim.missing_views:
            _sub(mv, "MissingView", timepoint=str(v.timepoint), setup=str(v.setup))
    seq.extend(spim.sequence_extra)


def _write_registrations(root: ET.Element, spim: SpimData) -> None:
    regs = _sub(root, "ViewRegistrations")
    for view, transforms in spim.registrations.items():
        reg = _sub(regs, "ViewRegistration", timepoint=str(view.timepoint), setup=str(view.setup))
        if not transforms:  # BigStitcher writes an empty list as one identity
            transforms = [ViewTransform.from_matrix("", np.eye(4))]
        for t in transforms:
            if t.raw is not None:
                reg.append(t.raw)
                continue
            vt = _sub(reg, "ViewTransform", type="affine")
            _sub(vt, "Name", t.name)
            _sub(vt, "affine", _join(float(v) for v in np.asarray(t.affine).ravel()))


def _write_interest_points(root: ET.Element, spim: SpimData) -> None:
    ip = _sub(root, "ViewInterestPoints")
    for ref in sorted(spim.interest_points, key=lambda r: (r.view.timepoint, r.view.setup, r.label)):
        _sub(
            ip,
            "ViewInterestPointsFile",
            ref.path,
            timepoint=str(ref.view.timepoint),
            setup=str(ref.view.setup),
            label=ref.label,
            params=ref.params,
        )


def _write_bounding_boxes(root: ET.Element, spim: SpimData) -> None:
    bb = _sub(root, "BoundingBoxes")
    for box in spim.bounding_boxes:
        el = _sub(bb, "BoundingBoxDefinition", name=box.name)
        _sub(el, "min", _join(box.min_xyz))
        _sub(el, "max", _join(box.max_xyz))
        el.extend(box.extra)


def _write_stitching_results(root: ET.Element, spim: SpimData) -> None:
    sr = _sub(root, "StitchingResults")
    for r in spim.stitching_results:
        el = _sub(
            sr,
            "PairwiseResult",
            view_setup_a=",".join(map(str, r.setups_a)),
            view_setup_b=",".join(map(str, r.setups_b)),
            tp_a=",".join(map(str, r.timepoints_a)),
            tp_b=",".join(map(str, r.timepoints_b)),
        )
        _sub(el, "shift", _join(float(v) for v in np.asarray(r.shift).ravel()))
        _sub(el, "correlation", format_number(float(r.correlation)))
        _sub(el, "hash", format_number(float(r.hash)))
        if r.overlap_box is not None:
            _sub(el, "overlap_boundingbox", _join(float(v) for v in r.overlap_box))
        el.extend(r.extra)
