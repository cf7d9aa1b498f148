"""Stage parameters: validated pydantic models, from YAML files and command-line overrides.

Each stage declares one model (``extra="forbid"``); the YAML keys and the
command-line options have the same names (``tile_size`` in YAML is
``--tile-size`` on the command line). A mistyped key or value is a one-line
:class:`~rhapso_gpu.errors.UserError` that names the key and suggests the
nearest valid one.
"""

from __future__ import annotations

import difflib
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage

M = TypeVar("M", bound=BaseModel)


def _describe(model_cls: type[BaseModel], error: dict, source: str) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(error["loc"][-1]), list(model_cls.model_fields), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(model_cls.model_fields)}"
        return f"{source}: unknown parameter '{key}'{hint}"
    return f"{source}: parameter '{key}': {error['msg']} (got {error.get('input')!r})"


def validate_params(model_cls: type[M], values: dict[str, Any], source: str = "parameters",
                    key_sources: dict[str, str] | None = None) -> M:
    """Build ``model_cls`` from a dict, turning validation errors into one-line UserErrors.

    ``source`` names where the values came from in the message; ``key_sources`` overrides it per
    top-level key (e.g. the keys given on the command line over a parameter file).
    """
    try:
        return model_cls.model_validate(values)
    except ValidationError as e:
        errors = e.errors()
        # a misspelled required key is also "missing": name the misspelling, with its did-you-mean, first
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
        where = (key_sources or {}).get(str(first["loc"][0]) if first["loc"] else "", source)
        raise UserError(_describe(model_cls, first, where)) from None


def read_yaml(location: str, what: str) -> Any:
    """The parsed YAML document at ``location`` (local or URL); None for an empty file.

    Raises
    ------
    UserError
        For a missing file or invalid YAML (naming the file and the line).
    """
    try:
        return yaml.safe_load(storage.read_bytes(location, what=what))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{location}: not valid YAML{where}") from None


def load_params(
    model_cls: type[M], location: str | None = None, overrides: dict[str, Any] | None = None
) -> M:
    """Parameters from an optional YAML file, then command-line overrides.

    Parameters
    ----------
    model_cls : pydantic model class
    location : str, optional
        YAML file (local or URL) whose top level maps parameter names to values.
    overrides : dict, optional
        Values given on the command line (``--set`` and the options); they win over the file. A None value
        is kept, as YAML's ``null`` is (``--set max_intensity=null``): leave out the options not given.
    """
    values: dict[str, Any] = {}
    if location:
        loaded = read_yaml(location, "parameter file")
        if not isinstance(loaded, dict):
            raise UserError(f"{location}: expected a mapping of parameter names to values")
        values.update(loaded)
    values.update(overrides or {})
    return validate_params(model_cls, values, source=location or "command line",
                           key_sources=dict.fromkeys(overrides or {}, "command line"))


def parse_set_options(items: list[str] | None, option: str = "--set") -> dict[str, Any]:
    """Turn ``--set key=value`` options into a dict; values are read as YAML (``3``, ``true``, ``[1, 2]``)."""
    values: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{option} '{item}': expected key=value")
        try:
            values[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise UserError(f"{option} '{item}': the value is not valid YAML") from None
    return values
