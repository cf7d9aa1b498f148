"""Grouping of views (BigStitcher's ``--groupTiles/--groupChannels/--groupIllums``).

Views of one time point that differ only in the grouped setup attributes form
one group: matching pools their points, the solver gives them one model. The
``group_tiles`` / ``group_channels`` / ``group_illuminations`` parameters of
``match`` and ``solve`` name the attributes (see :data:`GROUPABLE`).
"""

from __future__ import annotations

from rhapso_gpu.io.spimdata import SpimData, ViewId

GROUPABLE = {"tiles": "tile", "channels": "channel", "illuminations": "illumination"}
"""Grouping parameter suffix (``group_<suffix>``) -> view setup attribute."""

Group = tuple[ViewId, ...]
"""Sorted views treated as one."""


def view_groups(spim: SpimData, views: list[ViewId], grouped: set[str]) -> list[Group]:
    """Partition views into groups that agree in every attribute except the grouped ones.

    Parameters
    ----------
    spim : SpimData
    views : list of ViewId
    grouped : set of str
        Setup attributes to group over (``tile``, ``channel``, ``illumination``);
        empty: every view is its own group.

    Returns
    -------
    list of Group
        Each group sorted, groups sorted by their first view. Views of
        different time points are never grouped.
    """
    if not grouped:
        return [(v,) for v in sorted(views)]
    groups: dict[tuple, list[ViewId]] = {}
    for v in sorted(views):
        kept = tuple(sorted((k, val) for k, val in spim.setup(v).attributes.items() if k not in grouped))
        groups.setdefault((v.timepoint, kept), []).append(v)
    return sorted(tuple(g) for g in groups.values())
