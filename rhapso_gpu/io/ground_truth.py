"""``ground_truth.json``: the true poses (and beads) of a synthetic dataset.

Written by ``rhapso-gpu synth``, read by ``rhapso-gpu evaluate``. All
coordinates are **world xyz** in isotropic pixels (the smallest voxel
dimension, as in the dataset's registrations); affines are 3x4 row-packed and
map a view's full-resolution local pixels to world, exactly like a composed
BigStitcher ViewRegistration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.spimdata import ViewId

FORMAT = "rhapso-gpu ground truth"
VERSION = 1


@dataclass
class GroundTruth:
    """True local-to-world affines per view, true bead positions and the generator's parameters.

    Attributes
    ----------
    true_affines : dict of ViewId to ndarray
        4x4 affines, full-resolution local pixel (xyz) to world (xyz).
    nominal_affines : dict of ViewId to ndarray
        The 4x4 affines written to ``dataset.xml`` (what the stage reported).
    beads_world_xyz : ndarray
        (N, 3) true bead centres in world coordinates.
    params : dict
        The parameters the dataset was generated with.
    """

    true_affines: dict[ViewId, np.ndarray]
    nominal_affines: dict[ViewId, np.ndarray] = field(default_factory=dict)
    beads_world_xyz: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    params: dict[str, Any] = field(default_factory=dict)


def _row_packed(m: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(m, dtype=np.float64)[:3, :4].ravel()]


def _matrix(values, where: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.size != 12:
        raise UserError(f"{where}: an affine must have 12 row-packed values, got {a.size}")
    m = np.eye(4)
    m[:3, :] = a.reshape(3, 4)
    return m


def ground_truth_to_json(truth: GroundTruth) -> bytes:
    """Serialise to JSON bytes (sorted views, row-packed affines)."""
    views = []
    for view in sorted(truth.true_affines):
        entry: dict[str, Any] = {
            "timepoint": view.timepoint,
            "setup": view.setup,
            "true_affine": _row_packed(truth.true_affines[view]),
        }
        if view in truth.nominal_affines:
            entry["nominal_affine"] = _row_packed(truth.nominal_affines[view])
        views.append(entry)
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "world_units": "isotropic pixels (the smallest voxel dimension)",
        "affine_convention": "3x4 row-packed, full-resolution local pixel xyz -> world xyz",
        "params": truth.params,
        "views": views,
        "beads_world_xyz": np.asarray(truth.beads_world_xyz, dtype=np.float64).round(6).tolist(),
    }
    return json.dumps(doc, indent=1).encode("utf-8")


def save_ground_truth(truth: GroundTruth, location: str, storage_options: dict | None = None) -> None:
    """Write ``ground_truth.json`` atomically."""
    storage.write_bytes_atomic(location, ground_truth_to_json(truth), storage_options)


def load_ground_truth(location: str, storage_options: dict | None = None) -> GroundTruth:
    """Read a ``ground_truth.json`` written by ``rhapso-gpu synth``.

    Raises
    ------
    UserError
        When the file is missing, is not JSON or is not a ground-truth file.
    """
    data = storage.read_bytes(location, storage_options, what="ground-truth file")
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{location}: not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{location}: not a rhapso-gpu ground-truth file (no \"format\": \"{FORMAT}\")")
    truth = GroundTruth(true_affines={}, params=doc.get("params", {}))
    for i, entry in enumerate(doc.get("views", [])):
        where = f"{location}: views[{i}]"
        try:
            view = ViewId(int(entry["timepoint"]), int(entry["setup"]))
            truth.true_affines[view] = _matrix(entry["true_affine"], where)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: needs timepoint, setup and true_affine") from None
        if "nominal_affine" in entry:
            truth.nominal_affines[view] = _matrix(entry["nominal_affine"], where)
    beads = np.asarray(doc.get("beads_world_xyz", []), dtype=np.float64)
    truth.beads_world_xyz = beads.reshape(-1, 3)
    return truth
