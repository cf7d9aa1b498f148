"""The BigStitcher SpimData2 dataset model (what ``dataset.xml`` holds).

Conventions
-----------
* A view is ``ViewId(timepoint, setup)``.
* Sizes and voxel sizes are in **xyz** order, as in the XML.
* A :class:`ViewTransform` maps the view's **full-resolution local pixel**
  coordinates (xyz) towards **world** coordinates. The list of a registration is
  composed left to right, ``world = T[0] @ T[1] @ ... @ T[n-1] @ local``: the
  first listed transform is applied last.
* World units are "isotropic pixels": the smallest voxel dimension, as written
  by BigStitcher's ``calibration`` transform.

Parts of the document that rhapso-gpu does not interpret (the image loader's
contents, unknown elements, ``PointSpreadFunctions``, ``IntensityAdjustments``)
are kept as :class:`xml.etree.ElementTree.Element` and written back unchanged.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

# The top-level sections in the order BigStitcher writes them.
CANONICAL_SECTIONS = (
    "BasePath",
    "SequenceDescription",
    "ViewRegistrations",
    "ViewInterestPoints",
    "BoundingBoxes",
    "PointSpreadFunctions",
    "StitchingResults",
    "IntensityAdjustments",
)


class ViewId(NamedTuple):
    """One view: a view setup at a time point."""

    timepoint: int
    setup: int

    def __str__(self) -> str:
        return f"tp{self.timepoint}/setup{self.setup}"


@dataclass
class ViewTransform:
    """One affine of a view registration.

    Attributes
    ----------
    name : str
        The ``<Name>`` text, e.g. ``calibration``.
    affine : numpy.ndarray
        3x4 row-packed affine (xyz), float64.
    raw : Element, optional
        The original element when ``type`` is not ``affine`` (kept verbatim).
    """

    name: str
    affine: np.ndarray
    raw: ET.Element | None = None

    @property
    def matrix(self) -> np.ndarray:
        """The 4x4 homogeneous matrix (xyz)."""
        m = np.eye(4)
        m[:3, :] = self.affine
        return m

    @classmethod
    def from_matrix(cls, name: str, matrix: np.ndarray) -> ViewTransform:
        """Build from a 3x4 or 4x4 matrix (xyz)."""
        m = np.asarray(matrix, dtype=np.float64)
        return cls(name=name, affine=m[:3, :4].copy())


@dataclass
class VoxelSize:
    """Voxel size of a view setup: ``unit`` (e.g. ``µm``) and size in xyz."""

    unit: str
    size_xyz: tuple[float, float, float]


@dataclass
class ViewSetup:
    """A ``<ViewSetup>``: id, name, size (xyz, full-resolution pixels), voxel size, attribute ids."""

    id: int
    name: str | None = None
    size_xyz: tuple[int, int, int] | None = None
    voxel_size: VoxelSize | None = None
    attributes: dict[str, int] = field(default_factory=dict)
    extra: list[ET.Element] = field(default_factory=list)


@dataclass
class Entity:
    """An attribute value such as ``<Tile>``: id, name and any further fields.

    ``fields`` keeps elements like ``<location>``, ``<axis>`` and ``<degrees>``
    verbatim, in document order.
    """

    id: int
    name: str | None = None
    fields: list[ET.Element] = field(default_factory=list)

    def field_text(self, tag: str) -> str | None:
        """Text of the first field named ``tag``, or None."""
        for el in self.fields:
            if el.tag == tag:
                return (el.text or "").strip()
        return None


@dataclass
class AttributeDefinition:
    """An ``<Attributes name="tile">`` block: the attribute name, its entity tag and values."""

    name: str
    entity_tag: str
    entities: list[Entity] = field(default_factory=list)


@dataclass
class Timepoints:
    """``<Timepoints>`` in one of its three forms.

    Attributes
    ----------
    kind : {'range', 'list', 'pattern'}
    ids : list of int
    names : list of str or None
        Names (``list`` form; None where the document gives none).
    pattern : str, optional
        The ``integerpattern`` text (``pattern`` form).
    """

    kind: str
    ids: list[int]
    names: list[str | None] = field(default_factory=list)
    pattern: str | None = None


@dataclass
class InterestPointsRef:
    """A ``<ViewInterestPointsFile>``: where a view's points of one label are stored."""

    view: ViewId
    label: str
    params: str
    path: str


@dataclass
class BoundingBox:
    """A named box in world coordinates; ``min_xyz``/``max_xyz`` are inclusive integers."""

    name: str
    min_xyz: tuple[int, int, int]
    max_xyz: tuple[int, int, int]
    extra: list[ET.Element] = field(default_factory=list)


@dataclass
class PairwiseResult:
    """A ``<PairwiseResult>`` of intensity-based stitching.

    ``shift`` is a 3x4 affine (or a 3-vector for the legacy translation form);
    groups of views are listed as setups and timepoints of equal length.
    """

    setups_a: list[int]
    setups_b: list[int]
    timepoints_a: list[int]
    timepoints_b: list[int]
    shift: np.ndarray
    correlation: float
    hash: float
    overlap_box: tuple[float, ...] | None = None
    extra: list[ET.Element] = field(default_factory=list)


@dataclass
class SpimData:
    """A BigStitcher dataset.

    Attributes
    ----------
    base_path : str
        The ``<BasePath>`` text; resolve with :meth:`base_location`.
    base_path_type : {'relative', 'absolute'}
    image_loader : Element
        The ``<ImageLoader>`` element, kept verbatim (see ``rhapso_gpu.io.images``).
    setups : dict of int to ViewSetup
        In document order.
    registrations : dict of ViewId to list of ViewTransform
        First listed transform is applied last.
    location : str, optional
        Where the document was read from (local path or URL); relative paths
        resolve against its folder.
    """

    base_path: str = "."
    base_path_type: str = "relative"
    version: str = "0.2"
    image_loader: ET.Element = field(default_factory=lambda: ET.Element("ImageLoader"))
    setups: dict[int, ViewSetup] = field(default_factory=dict)
    attribute_definitions: list[AttributeDefinition] = field(default_factory=list)
    timepoints: Timepoints = field(default_factory=lambda: Timepoints("range", [0]))
    missing_views: list[ViewId] = field(default_factory=list)
    registrations: dict[ViewId, list[ViewTransform]] = field(default_factory=dict)
    interest_points: list[InterestPointsRef] = field(default_factory=list)
    bounding_boxes: list[BoundingBox] = field(default_factory=list)
    stitching_results: list[PairwiseResult] = field(default_factory=list)
    # Everything else, kept verbatim: top-level sections in document order
    # (a str names a section built from the fields above), unknown children of
    # <SpimData>, <SequenceDescription> and <ViewSetups>.
    layout: list[str | ET.Element] = field(default_factory=lambda: list(CANONICAL_SECTIONS))
    sequence_extra: list[ET.Element] = field(default_factory=list)
    view_setups_extra: list[ET.Element] = field(default_factory=list)
    missing_views_present: bool = True
    location: str | None = None

    @property
    def image_format(self) -> str:
        """The image loader's ``format`` attribute."""
        return self.image_loader.get("format", "")

    def view_ids(self) -> list[ViewId]:
        """All present views (time points x setups, minus missing views), sorted."""
        missing = set(self.missing_views)
        return [
            ViewId(t, s)
            for t in sorted(self.timepoints.ids)
            for s in sorted(self.setups)
            if ViewId(t, s) not in missing
        ]

    def setup(self, view: ViewId | int) -> ViewSetup:
        """The setup of a view (or of a setup id)."""
        sid = view.setup if isinstance(view, ViewId) else int(view)
        return self.setups[sid]

    def attribute_entity(self, attribute: str, entity_id: int) -> Entity | None:
        """The entity (e.g. a ``Tile``) with this id, or None."""
        for definition in self.attribute_definitions:
            if definition.name == attribute:
                for entity in definition.entities:
                    if entity.id == entity_id:
                        return entity
        return None

    def base_location(self) -> str:
        """The resolved BasePath: a local path or URL that relative paths start from."""
        from rhapso_gpu.io import storage

        if self.base_path_type == "absolute" or storage.is_absolute(self.base_path):
            return self.base_path
        folder = storage.parent(self.location) if self.location else "."
        joined = storage.join(folder, self.base_path)
        return joined if storage.is_remote(joined) else os.path.normpath(joined)

    def resolve(self, path: str, path_type: str = "relative") -> str:
        """Resolve a path element of the document against the BasePath."""
        from rhapso_gpu.io import storage

        if path_type == "absolute" or storage.is_absolute(path):
            return path
        return storage.join(self.base_location(), path)
