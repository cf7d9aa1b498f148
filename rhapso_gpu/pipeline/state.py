"""The run state of a pipeline: one record per stage, and snapshots of the XML states they produced.

The state lives next to the pipeline's XML, in ``<xml>.pipeline/``:

``state.json``
    ``{"stages": {name: record}}``. A record holds the stage's kind, its
    parameters, the package version, the *input token* (a SHA-256 over all of
    these plus the SHA-256 of the XML the stage read and the token of the
    stage before it), the XML it wrote and that XML's SHA-256, its status
    (``started`` or ``done``), its outputs, seconds and result line.
``xml/<sha256>.xml``
    Every XML state a stage read or wrote, by content hash, so that a rerun
    can put the XML back into the state a skipped stage left it in (a stage
    that edits the XML in place, such as solve, is then never applied twice).

All writes are atomic (:func:`rhapso_gpu.io.storage.write_bytes_atomic`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from rhapso_gpu import __version__
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage

STATE_SUFFIX = ".pipeline"


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def token(values: dict[str, Any]) -> str:
    """Hex SHA-256 of a JSON-serialisable mapping (keys sorted, so equal mappings give equal tokens)."""
    return sha256(json.dumps(values, sort_keys=True, default=str).encode())


def input_token(kind: str, params: dict[str, Any], xml: str, xml_sha: str, previous: str | None,
                extra: dict[str, Any] | None = None) -> str:
    """The fingerprint of everything a stage's result depends on.

    Parameters
    ----------
    kind : str
        The stage kind.
    params : dict
        Its parameters (``model_dump(mode="json")``).
    xml, xml_sha : str
        The XML it reads and the SHA-256 of its bytes.
    previous : str or None
        The input token of the stage before it (so a stage is stale when
        anything upstream ran again, e.g. new interest points with the same XML).
    extra : dict, optional
        Other inputs and outputs (e.g. the fused container's location).
    """
    return token({"kind": kind, "params": params, "version": __version__, "xml": xml, "xml_sha": xml_sha,
                  "previous": previous, **(extra or {})})


@dataclass
class RunState:
    """The records of one XML's pipeline runs (see the module docstring)."""

    folder: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def open(cls, xml: str) -> RunState:
        """Read the state next to ``xml`` (empty when there is none yet)."""
        folder = xml + STATE_SUFFIX
        location = storage.join(folder, "state.json")
        if not storage.exists(location):
            return cls(folder)
        try:
            stages = json.loads(storage.read_bytes(location, what="pipeline state"))["stages"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{location}: unreadable pipeline state; delete it to rerun every stage") from None
        return cls(folder, stages)

    def save(self) -> None:
        storage.write_bytes_atomic(storage.join(self.folder, "state.json"),
                                   json.dumps({"stages": self.stages}, indent=1, sort_keys=True).encode())

    def record(self, name: str, **values: Any) -> None:
        """Replace the record of stage ``name`` and save the state."""
        self.stages[name] = {**values, "version": __version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.save()

    def snapshot(self, data: bytes) -> str:
        """Keep an XML state (by content hash); returns its SHA-256."""
        digest = sha256(data)
        location = self._snapshot_location(digest)
        if not storage.exists(location):
            storage.write_bytes_atomic(location, data)
        return digest

    def has_snapshot(self, digest: str) -> bool:
        return storage.exists(self._snapshot_location(digest))

    def read_snapshot(self, digest: str) -> bytes:
        return storage.read_bytes(self._snapshot_location(digest), what="pipeline XML snapshot")

    def _snapshot_location(self, digest: str) -> str:
        return storage.join(self.folder, "xml", digest + ".xml")
