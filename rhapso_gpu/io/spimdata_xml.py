"""Read and write BigStitcher ``dataset.xml`` (SpimData2, version 0.2).

:func:`load_spimdata` and :func:`save_spimdata` are the public pair. Reading
keeps every element rhapso-gpu does not interpret, so a read followed by a
write gives an equivalent document. Saving is atomic and keeps rolling backups
``dataset.xml~1`` .. ``~5``. Parsing lives in :mod:`rhapso_gpu.io._xml_read`,
serialising in :mod:`rhapso_gpu.io._xml_write`.
"""

from __future__ import annotations

from typing import Any

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io._xml_read import parse_integer_pattern, parse_spimdata
from rhapso_gpu.io._xml_write import format_number, spimdata_to_xml
from rhapso_gpu.io.spimdata import SpimData

__all__ = [
    "format_number",
    "load_spimdata",
    "parse_integer_pattern",
    "parse_spimdata",
    "save_spimdata",
    "spimdata_to_xml",
]


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
