"""Read and write BigStitcher ``dataset.xml`` (SpimData2, version 0.2).

:func:`load_spimdata` and :func:`save_spimdata` are the public pair. Reading
keeps every element rhapso-gpu does not interpret, so a read followed by a
write gives an equivalent document. Saving is atomic and keeps rolling backups
``dataset.xml~1`` .. ``~5``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from decimal import Decimal
from typing import Any

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.spimdata import (
    AttributeDefinition,
    BoundingBox,
    Entity,
    InterestPointsRef,
    PairwiseResult,
    SpimData,
    Timepoints,
    ViewId,
    ViewSetup,
    ViewTransform,
    VoxelSize,
)

_SEQUENCE_KNOWN = ("ImageLoader", "ViewSetups", "Timepoints", "MissingViews")


class _Ctx:
    """Where we are in the document, for error messages."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, problem: str) -> UserError:
        return UserError(f"{self.source}: {where}: {problem}")


# ---------------------------------------------------------------------------
# reading


def load_spimdata(location: str, storage_options: dict[str, Any] | None = None) -> SpimData:
    """Read a ``dataset.xml`` from a local path or URL.

    Parameters
    ----------
    location : str
        Path or URL of the XML.
    storage_options : dict, optional
        fsspec options for remote locations.

    Returns
    -------
    SpimData
        With ``location`` set, so relative paths resolve against its folder.

    Raises
    ------
    UserError
        When the file is missing or is not a valid BigStitcher document.
    """
    data = storage.read_bytes(location, storage_options, what="dataset XML")
    spim = parse_spimdata(data, source=str(location))
    spim.location = str(location)
    return spim


def parse_spimdata(data: bytes | str, source: str = "<xml>") -> SpimData:
    """Parse the text of a ``dataset.xml`` (see :func:`load_spimdata`)."""
    ctx = _Ctx(source)
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True))
    try:
        root = ET.fromstring(data, parser=parser)
    except ET.ParseError as e:
        line, col = e.position
        raise UserError(f"{source}: not well-formed XML at line {line}, column {col}") from None
    if root.tag != "SpimData":
        raise ctx.fail(f"<{root.tag}>", "expected <SpimData> as the root element")

    spim = SpimData(version=root.get("version", "0.2"), layout=[])
    for child in root:
        tag = child.tag
        if tag == "BasePath":
            spim.base_path = (child.text or ".").strip()
            spim.base_path_type = child.get("type", "relative")
        elif tag == "SequenceDescription":
            _read_sequence(child, spim, ctx)
        elif tag == "ViewRegistrations":
            spim.registrations = _read_registrations(child, ctx)
        elif tag == "ViewInterestPoints":
            spim.interest_points = _read_interest_points(child, ctx)
        elif tag == "BoundingBoxes":
            spim.bounding_boxes = _read_bounding_boxes(child, ctx)
        elif tag == "StitchingResults":
            spim.stitching_results = _read_stitching_results(child, ctx)
        else:  # PointSpreadFunctions, IntensityAdjustments, unknown: verbatim
            spim.layout.append(child)
            continue
        spim.layout.append(tag)
    for required in ("SequenceDescription", "ViewRegistrations"):
        if required not in spim.layout:
            raise ctx.fail("<SpimData>", f"missing required <{required}>")
    return spim


def _text(el: ET.Element | None) -> str:
    return (el.text or "").strip() if el is not None else ""


def _numbers(ctx: _Ctx, el: ET.Element, where: str, count: int | None, kind=float) -> list:
    text = _text(el)
    try:
        values = [kind(v) for v in text.split()]
    except ValueError:
        raise ctx.fail(where, f"<{el.tag}> must hold numbers, got '{text}'") from None
    if count is not None and len(values) != count:
        raise ctx.fail(where, f"<{el.tag}> must hold {count} numbers, got {len(values)} ('{text}')")
    return values


def _int_attr(ctx: _Ctx, el: ET.Element, name: str, where: str) -> int:
    value = el.get(name)
    if value is None:
        raise ctx.fail(where, f"missing attribute {name}=")
    try:
        return int(value)
    except ValueError:
        raise ctx.fail(where, f"attribute {name}='{value}' is not an integer") from None


def _int_child(ctx: _Ctx, el: ET.Element, tag: str, where: str) -> int:
    child = el.find(tag)
    if child is None:
        raise ctx.fail(where, f"missing <{tag}>")
    try:
        return int(_text(child))
    except ValueError:
        raise ctx.fail(where, f"<{tag}> '{_text(child)}' is not an integer") from None


def _read_sequence(el: ET.Element, spim: SpimData, ctx: _Ctx) -> None:
    loader = el.find("ImageLoader")
    if loader is None:
        raise ctx.fail("<SequenceDescription>", "missing <ImageLoader>")
    spim.image_loader = loader
    setups_el = el.find("ViewSetups")
    if setups_el is None:
        raise ctx.fail("<SequenceDescription>", "missing <ViewSetups>")
    _read_view_setups(setups_el, spim, ctx)
    tp_el = el.find("Timepoints")
    if tp_el is None:
        raise ctx.fail("<SequenceDescription>", "missing <Timepoints>")
    spim.timepoints = _read_timepoints(tp_el, ctx)
    mv = el.find("MissingViews")
    spim.missing_views_present = mv is not None
    spim.missing_views = []
    if mv is not None:
        for m in mv.findall("MissingView"):
            where = "<MissingView>"
            spim.missing_views.append(
                ViewId(_int_attr(ctx, m, "timepoint", where), _int_attr(ctx, m, "setup", where))
            )
    spim.sequence_extra = [c for c in el if c.tag not in _SEQUENCE_KNOWN]


def _read_view_setups(el: ET.Element, spim: SpimData, ctx: _Ctx) -> None:
    spim.setups = {}
    spim.attribute_definitions = []
    spim.view_setups_extra = []
    for child in el:
        if child.tag == "ViewSetup":
            setup = _read_view_setup(child, ctx)
            if setup.id in spim.setups:
                raise ctx.fail(f"<ViewSetup> id={setup.id}", "duplicate setup id")
            spim.setups[setup.id] = setup
        elif child.tag == "Attributes":
            name = child.get("name")
            if not name:
                raise ctx.fail("<Attributes>", "missing attribute name=")
            definition = AttributeDefinition(name=name, entity_tag=name.capitalize())
            for ent in child:
                if not isinstance(ent.tag, str):
                    continue
                definition.entity_tag = ent.tag
                where = f'<Attributes name="{name}"> <{ent.tag}>'
                definition.entities.append(
                    Entity(
                        id=_int_child(ctx, ent, "id", where),
                        name=_text(ent.find("name")) if ent.find("name") is not None else None,
                        fields=[c for c in ent if c.tag not in ("id", "name")],
                    )
                )
            spim.attribute_definitions.append(definition)
        else:
            spim.view_setups_extra.append(child)


def _read_view_setup(el: ET.Element, ctx: _Ctx) -> ViewSetup:
    sid = _int_child(ctx, el, "id", "<ViewSetup>")
    where = f"<ViewSetup> id={sid}"
    setup = ViewSetup(id=sid)
    known = {"id"}
    if el.find("name") is not None:
        setup.name = _text(el.find("name"))
        known.add("name")
    if el.find("size") is not None:
        sx, sy, sz = _numbers(ctx, el.find("size"), where, 3, int)
        if min(sx, sy, sz) <= 0:
            raise ctx.fail(where, f"<size> must be positive, got '{_text(el.find('size'))}'")
        setup.size_xyz = (sx, sy, sz)
        known.add("size")
    vs = el.find("voxelSize")
    if vs is not None:
        size_el = vs.find("size")
        if size_el is None:
            raise ctx.fail(where, "<voxelSize> has no <size>")
        vx, vy, vz = _numbers(ctx, size_el, where, 3)
        setup.voxel_size = VoxelSize(unit=_text(vs.find("unit")), size_xyz=(vx, vy, vz))
        known.add("voxelSize")
    attrs = el.find("attributes")
    if attrs is not None:
        for a in attrs:
            if not isinstance(a.tag, str):
                continue
            try:
                setup.attributes[a.tag] = int(_text(a))
            except ValueError:
                raise ctx.fail(where, f"<attributes><{a.tag}> '{_text(a)}' is not an integer") from None
        known.add("attributes")
    setup.extra = [c for c in el if c.tag not in known]
    return setup


def parse_integer_pattern(pattern: str) -> list[int]:
    """Expand a BigStitcher integer pattern such as ``0-9``, ``1,3,5`` or ``0-10:2``."""
    ids: list[int] = []
    for item in pattern.replace(" ", "").split(","):
        if not item:
            continue
        step = 1
        if ":" in item:
            item, step_text = item.split(":", 1)
            step = int(step_text)
        if "-" in item[1:]:
            cut = item.index("-", 1)
            first, last = int(item[:cut]), int(item[cut + 1 :])
            ids.extend(range(first, last + 1, step))
        else:
            ids.append(int(item))
    return ids


def _read_timepoints(el: ET.Element, ctx: _Ctx) -> Timepoints:
    kind = el.get("type", "")
    where = f'<Timepoints type="{kind}">'
    if kind == "range":
        first, last = _int_child(ctx, el, "first", where), _int_child(ctx, el, "last", where)
        ids = list(range(first, last + 1))
        return Timepoints("range", ids, [str(i) for i in ids])
    if kind == "list":
        ids, names = [], []
        for tp in el.findall("Timepoint"):
            tid = _int_child(ctx, tp, "id", where)
            ids.append(tid)
            names.append(_text(tp.find("name")) if tp.find("name") is not None else None)
        return Timepoints("list", ids, names)
    if kind == "pattern":
        pattern = _text(el.find("integerpattern"))
        try:
            ids = parse_integer_pattern(pattern)
        except ValueError:
            raise ctx.fail(where, f"cannot read integer pattern '{pattern}'") from None
        return Timepoints("pattern", ids, [str(i) for i in ids], pattern=pattern)
    raise ctx.fail("<Timepoints>", f"unknown type='{kind}' (expected range, list or pattern)")


def _read_registrations(el: ET.Element, ctx: _Ctx) -> dict[ViewId, list[ViewTransform]]:
    out: dict[ViewId, list[ViewTransform]] = {}
    for reg in el.findall("ViewRegistration"):
        where = "<ViewRegistration>"
        view = ViewId(_int_attr(ctx, reg, "timepoint", where), _int_attr(ctx, reg, "setup", where))
        where = f'<ViewRegistration timepoint="{view.timepoint}" setup="{view.setup}">'
        transforms = []
        for vt in reg.findall("ViewTransform"):
            name = _text(vt.find("Name"))
            if vt.get("type", "affine") == "affine":
                aff = vt.find("affine")
                if aff is None:
                    raise ctx.fail(where, f"<ViewTransform> '{name}' has no <affine>")
                values = _numbers(ctx, aff, f"{where} <ViewTransform> '{name}'", 12)
                transforms.append(ViewTransform(name, np.array(values, dtype=np.float64).reshape(3, 4)))
            else:
                transforms.append(ViewTransform(name, np.full((3, 4), np.nan), raw=vt))
        out[view] = transforms
    return out


def _read_interest_points(el: ET.Element, ctx: _Ctx) -> list[InterestPointsRef]:
    refs = []
    for f in el.findall("ViewInterestPointsFile"):
        where = "<ViewInterestPointsFile>"
        refs.append(
            InterestPointsRef(
                view=ViewId(_int_attr(ctx, f, "timepoint", where), _int_attr(ctx, f, "setup", where)),
                label=f.get("label", ""),
                params=f.get("params", ""),
                path=_text(f),
            )
        )
    return refs


def _read_bounding_boxes(el: ET.Element, ctx: _Ctx) -> list[BoundingBox]:
    boxes = []
    for b in el.findall("BoundingBoxDefinition"):
        name = b.get("name", "")
        where = f'<BoundingBoxDefinition name="{name}">'
        for tag in ("min", "max"):
            if b.find(tag) is None:
                raise ctx.fail(where, f"missing <{tag}>")
        lo = tuple(_numbers(ctx, b.find("min"), where, 3, int))
        hi = tuple(_numbers(ctx, b.find("max"), where, 3, int))
        boxes.append(BoundingBox(name, lo, hi, extra=[c for c in b if c.tag not in ("min", "max")]))
    return boxes


def _int_list(ctx: _Ctx, el: ET.Element, name: str, where: str) -> list[int]:
    text = el.get(name, "")
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ctx.fail(where, f"attribute {name}='{text}' must be a comma-separated list of integers") from None


def _read_stitching_results(el: ET.Element, ctx: _Ctx) -> list[PairwiseResult]:
    results = []
    known = ("shift", "correlation", "hash", "overlap_boundingbox")
    for r in el.findall("PairwiseResult"):
        where = "<PairwiseResult>"
        shift_el = r.find("shift")
        if shift_el is None:
            raise ctx.fail(where, "missing <shift>")
        shift = np.array(_numbers(ctx, shift_el, where, None), dtype=np.float64)
        if shift.size == 12:
            shift = shift.reshape(3, 4)
        elif shift.size != 3:
            raise ctx.fail(where, f"<shift> must hold 12 or 3 numbers, got {shift.size}")
        ob = r.find("overlap_boundingbox")
        results.append(
            PairwiseResult(
                setups_a=_int_list(ctx, r, "view_setup_a", where),
                setups_b=_int_list(ctx, r, "view_setup_b", where),
                timepoints_a=_int_list(ctx, r, "tp_a", where),
                timepoints_b=_int_list(ctx, r, "tp_b", where),
                shift=shift,
                correlation=_numbers(ctx, r.find("correlation"), where, 1)[0] if r.find("correlation") is not None else 0.0,
                hash=_numbers(ctx, r.find("hash"), where, 1)[0] if r.find("hash") is not None else 0.0,
                overlap_box=tuple(_numbers(ctx, ob, where, 6)) if ob is not None else None,
                extra=[c for c in r if c.tag not in known],
            )
        )
    return results


# ---------------------------------------------------------------------------
# writing


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


def save_spimdata(
    spim: SpimData, location: str | None = None, storage_options: dict[str, Any] | None = None
) -> str:
    """Write the dataset atomically, keeping backups ``~1`` .. ``~5`` of what it replaces.

    Parameters
    ----------
    spim : SpimData
    location : str, optional
        Where to write; defaults to ``spim.location``.

    Returns
    -------
    str
        The location written.
    """
    target = location or spim.location
    if target is None:
        raise UserError("no location given to save the dataset XML")
    data = spimdata_to_xml(spim)
    storage.write_with_backups(target, data, storage_options)
    spim.location = str(target)
    return str(target)
