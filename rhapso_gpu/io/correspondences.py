"""The ``correspondences`` group of ``interestpoints.n5``, exactly as BigStitcher stores it.

Layout (multiview-reconstruction ``InterestPointsN5``; reference section 2.1)::

    tpId_{tp}_viewSetupId_{setup}/{label}/correspondences/
        attributes.json   {"correspondences": "1.0.0", "idMap": {"0,1,beads": 0, ...}}
        data/             uint64  N5 dims [3, M]  block [1, 300000]  gzip

In NumPy C order ``data`` is (M, 3) with rows ``(idA, idB, key)``: ``idA`` a
point id of this view and label, ``idB`` a point id of the other view and
label that ``key`` names in ``idMap`` (``"tp,setup,label"`` -> key). An empty
list is the group with ``"idMap": {}`` and no ``data``. Correspondences are
stored symmetrically, in both views' lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.interestpoints import BLOCK_SIZE, CORRESPONDENCES_ATTRIBUTES, GZIP, label_path
from rhapso_gpu.io.n5 import N5Container
from rhapso_gpu.io.spimdata import ViewId

ViewLabel = tuple[ViewId, str]
"""A view and an interest-point label."""


@dataclass(frozen=True)
class PairCorrespondences:
    """Matched point ids between two views' labels (A -> B).

    Attributes
    ----------
    a, b : ViewLabel
        ``(ViewId, label)`` of both sides.
    ids_a, ids_b : numpy.ndarray of uint64, shape (M,)
        Row ``i`` matches point ``ids_a[i]`` of A with point ``ids_b[i]`` of B.
    """

    a: ViewLabel
    b: ViewLabel
    ids_a: np.ndarray
    ids_b: np.ndarray


def id_map_key(view: ViewId, label: str) -> str:
    """``"tp,setup,label"``: the ``idMap`` key of a view and label."""
    return f"{int(view.timepoint)},{int(view.setup)},{label}"


def _parse_key(text: str, where: str) -> ViewLabel:
    tp, sep1, rest = text.partition(",")
    setup, sep2, label = rest.partition(",")
    try:
        if not (sep1 and sep2):
            raise ValueError(text)
        return ViewId(int(tp), int(setup)), label
    except ValueError:
        raise UserError(f"{where}: idMap key '{text}' is not 'timepoint,setup,label'") from None


def _group(view: ViewId, label: str) -> str:
    return f"{label_path(view, label)}/correspondences"


def read_correspondences(
    location: str, view: ViewId, label: str, storage_options: dict | None = None
) -> dict[ViewLabel, tuple[np.ndarray, np.ndarray]]:
    """The correspondences of one view and label, per other view and label.

    Returns
    -------
    dict
        ``(other ViewId, other label) -> (ids_here, ids_other)`` (uint64 arrays);
        empty when the view has no correspondences group or an empty one.
    """
    container = N5Container(location, storage_options)
    group = _group(ViewId(*view), label)
    where = container.path(group)
    attrs = container.read_attributes(group)
    id_map = attrs.get("idMap") or {}
    if not isinstance(id_map, dict):
        raise UserError(f"{where}/attributes.json: 'idMap' is not an object")
    if not container.exists(f"{group}/data"):
        return {}
    data = container.open_dataset(f"{group}/data")
    if data.ndim != 2 or data.shape[1] != 3:
        raise UserError(f"{where}/data: expected N5 dimensions [3, M], got {list(reversed(data.shape))}")
    rows = data.read().astype(np.uint64)
    keys = {round(float(v)): _parse_key(k, f"{where}/attributes.json") for k, v in id_map.items()}
    out: dict[ViewLabel, tuple[np.ndarray, np.ndarray]] = {}
    for key in np.unique(rows[:, 2]):
        if int(key) not in keys:
            raise UserError(f"{where}/data: key {int(key)} is not in the idMap")
        sel = rows[:, 2] == key
        out[keys[int(key)]] = (rows[sel, 0].copy(), rows[sel, 1].copy())
    return out


def write_correspondences(
    location: str,
    view: ViewId,
    label: str,
    table: dict[ViewLabel, tuple[np.ndarray, np.ndarray]],
    storage_options: dict | None = None,
) -> None:
    """Replace the correspondences of one view and label.

    Parameters
    ----------
    table : dict
        ``(other ViewId, other label) -> (ids_here, ids_other)``; keys of
        ``idMap`` are numbered in sorted (timepoint, setup, label) order.
    """
    container = N5Container.create(location, storage_options)
    group = _group(ViewId(*view), label)
    data_location = container.path(f"{group}/data")
    fs, fs_path = storage.get_fs(data_location, storage_options)
    if fs.exists(fs_path):
        fs.rm(fs_path, recursive=True)
    entries = sorted(
        ((ViewId(*v), lab), ids) for (v, lab), ids in table.items() if np.asarray(ids[0]).size > 0
    )
    id_map = {id_map_key(v, lab): key for key, ((v, lab), _) in enumerate(entries)}
    container.write_attributes(group, {**CORRESPONDENCES_ATTRIBUTES, "idMap": id_map})
    if not entries:
        return
    rows = np.concatenate(
        [
            np.stack(
                [np.asarray(here, np.uint64), np.asarray(other, np.uint64), np.full(len(here), key, np.uint64)],
                axis=1,
            )
            for key, (_, (here, other)) in enumerate(entries)
        ]
    )
    container.create_dataset(f"{group}/data", rows.shape, (BLOCK_SIZE, 1), "uint64", GZIP).write(rows)


def store_matches(
    location: str,
    matches: Iterable[PairCorrespondences],
    replace: Iterable[ViewLabel],
    storage_options: dict | None = None,
) -> None:
    """Store pairwise matches symmetrically, replacing earlier correspondences among ``replace``.

    Every view/label in ``replace`` (the views and labels just matched) loses
    its stored correspondences to any other view/label in ``replace``, then
    receives the new ones; correspondences to other views or labels are kept.
    Each match is written to A's list as ``(idA, idB, key of B)`` and to B's
    list as ``(idB, idA, key of A)``.
    """
    replace = {(ViewId(*v), lab) for v, lab in replace}
    tables: dict[ViewLabel, dict[ViewLabel, list[tuple[np.ndarray, np.ndarray]]]] = {}
    for vl in sorted(replace):
        old = read_correspondences(location, vl[0], vl[1], storage_options)
        tables[vl] = {other: [ids] for other, ids in old.items() if other not in replace}
    for m in matches:
        a, b = (ViewId(*m.a[0]), m.a[1]), (ViewId(*m.b[0]), m.b[1])
        if a not in tables or b not in tables:
            raise ValueError(f"match {a} <-> {b} is outside the replaced views/labels")
        tables[a].setdefault(b, []).append((m.ids_a, m.ids_b))
        tables[b].setdefault(a, []).append((m.ids_b, m.ids_a))
    for vl, table in tables.items():
        merged = {
            other: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            for other, parts in table.items()
        }
        write_correspondences(location, vl[0], vl[1], merged, storage_options)
