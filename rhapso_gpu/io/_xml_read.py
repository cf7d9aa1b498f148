"""Parse the text of a BigStitcher ``dataset.xml`` into a :class:`~rhapso_gpu.io.spimdata.SpimData`.

Every problem is a one-line :class:`~rhapso_gpu.errors.UserError` naming the
document and the element. Elements that are not interpreted are kept verbatim.
Public entry points are re-exported by :mod:`rhapso_gpu.io.spimdata_xml`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np

from rhapso_gpu.errors import UserError
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
