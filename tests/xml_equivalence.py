"""What "an equivalent BigStitcher document" means, for round-trip tests.

Two documents are equivalent when they have the same elements with the same
attributes and values. Numbers compare as numbers (``1.0E-4`` == ``0.0001``),
white space does not count, and siblings keep their order among those with the
same tag (the order of ViewTransforms matters; BigStitcher reads children by
tag, so the order of differently named siblings does not).
"""

import xml.etree.ElementTree as ET


def _value(text):
    tokens = (text or "").split()
    try:
        return ("numbers", tuple(float(t) for t in tokens))
    except ValueError:
        return ("text", " ".join(tokens))


def canonical(el):
    children = [c for c in el if isinstance(c.tag, str)]
    by_tag = {}
    for c in children:
        by_tag.setdefault(c.tag, []).append(canonical(c))
    return (el.tag, tuple(sorted(el.attrib.items())), _value(el.text), tuple(sorted(by_tag.items())))


def first_difference(a, b, path=""):
    """A readable description of the first difference between two elements, or None."""
    here = f"{path}/{a.tag}"
    if a.tag != b.tag:
        return f"{here}: tag {a.tag} != {b.tag}"
    if a.attrib != b.attrib:
        return f"{here}: attributes {a.attrib} != {b.attrib}"
    if _value(a.text) != _value(b.text):
        return f"{here}: value {a.text!r} != {b.text!r}"
    ca = [c for c in a if isinstance(c.tag, str)]
    cb = [c for c in b if isinstance(c.tag, str)]
    tags_a = sorted(c.tag for c in ca)
    tags_b = sorted(c.tag for c in cb)
    if tags_a != tags_b:
        return f"{here}: children {tags_a} != {tags_b}"
    for tag in dict.fromkeys(tags_a):
        for x, y in zip([c for c in ca if c.tag == tag], [c for c in cb if c.tag == tag]):
            d = first_difference(x, y, here)
            if d:
                return d
    return None


def assert_equivalent(xml_a: bytes, xml_b: bytes):
    a, b = ET.fromstring(xml_a), ET.fromstring(xml_b)
    diff = first_difference(a, b)
    assert diff is None, diff
    assert canonical(a) == canonical(b)
