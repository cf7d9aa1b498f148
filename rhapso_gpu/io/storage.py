"""Local and remote (``s3://``) storage through fsspec.

Every path in rhapso-gpu is a *location*: a local path or an fsspec URL. This
module is the one place that turns locations into file systems, joins them,
and writes files atomically.

S3 credentials follow the usual AWS chain (environment, profile, instance
role). Set ``RHAPSO_S3_ANON=1`` to read public buckets without credentials, and
``AWS_ENDPOINT_URL`` to talk to an S3-compatible server. S3 requests that fail
for a transient reason (connection refused or reset, throttling, 5xx) are
retried with exponential backoff (botocore's ``standard`` mode, up to
``RHAPSO_S3_MAX_ATTEMPTS`` attempts, default :data:`S3_MAX_ATTEMPTS`), so a
short outage does not end a long run.

Local atomic writes keep the permissions of the file they replace; a new file
gets ``0o666 & ~umask``, as ``open()`` would give it (not ``mkstemp``'s 0600),
so other users (Fiji run by a colleague) can read what rhapso-gpu wrote.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
import tempfile
from typing import Any

import fsspec
from fsspec.core import split_protocol

from rhapso_gpu.errors import UserError

S3_MAX_ATTEMPTS = 10
"""Attempts per S3 request, the first included (one request to a closed port gave up after 78 s)."""

N_BACKUPS = 5
"""Rolling backups kept by :func:`write_with_backups` (``~1`` newest .. ``~5``), as BigStitcher does."""


def is_remote(location: str) -> bool:
    """True when ``location`` names a remote store (it has a protocol other than ``file``)."""
    protocol, _ = split_protocol(str(location))
    return protocol not in (None, "file", "local")


def default_storage_options(location: str) -> dict[str, Any]:
    """Storage options for ``location`` taken from the environment (``RHAPSO_S3_ANON``, ``RHAPSO_S3_MAX_ATTEMPTS``)."""
    protocol, _ = split_protocol(str(location))
    options: dict[str, Any] = {}
    if protocol not in ("s3", "s3a"):
        return options
    if os.environ.get("RHAPSO_S3_ANON", "").lower() in ("1", "true", "yes"):
        options["anon"] = True
    text = os.environ.get("RHAPSO_S3_MAX_ATTEMPTS", str(S3_MAX_ATTEMPTS))
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"RHAPSO_S3_MAX_ATTEMPTS '{text}': expected a whole number of attempts, at least 1")
    options["config_kwargs"] = {"retries": {"mode": "standard", "max_attempts": int(text)}}
    return options


def get_fs(location: str, storage_options: dict[str, Any] | None = None):
    """Return ``(filesystem, path)`` for a location.

    Parameters
    ----------
    location : str
        Local path or fsspec URL such as ``s3://bucket/key``.
    storage_options : dict, optional
        Passed to the fsspec file system (for example ``anon`` or
        ``client_kwargs={"endpoint_url": ...}``). Defaults come from
        :func:`default_storage_options`.
    """
    location = str(location)
    options = default_storage_options(location) if storage_options is None else storage_options
    if is_remote(location):
        fs, path = fsspec.core.url_to_fs(location, **options)
        return fs, path
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(location))


def join(base: str, *parts: str) -> str:
    """Join path parts to a local path or URL, keeping the protocol of ``base``."""
    base = str(base)
    if is_remote(base):
        protocol, rest = split_protocol(base)
        return f"{protocol}://" + posixpath.join(rest, *parts)
    return os.path.join(base, *parts)


def parent(location: str) -> str:
    """The folder that holds ``location`` (a local path or a URL)."""
    location = str(location)
    if is_remote(location):
        protocol, rest = split_protocol(location)
        return f"{protocol}://" + posixpath.dirname(rest.rstrip("/"))
    return os.path.dirname(os.path.abspath(os.path.expanduser(location)))


def is_absolute(path: str) -> bool:
    """True for absolute local paths and for URLs."""
    return is_remote(path) or os.path.isabs(os.path.expanduser(path))


def read_bytes(location: str, storage_options: dict[str, Any] | None = None, what: str = "file") -> bytes:
    """Read a whole file.

    A missing or unreadable local file (also one under a regular file, such as
    ``ds/dataset.xml/x``), or a remote store still unreachable after retries,
    is a :class:`UserError` naming ``location``.
    """
    fs, path = get_fs(location, storage_options)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{location}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{location}: is a folder, expected a {what}") from None
    except PermissionError:
        raise UserError(f"{location}: permission denied reading the {what}") from None
    except NotADirectoryError as err:
        if is_remote(location):
            raise UserError(f"{location}: cannot read the {what}: {type(err).__name__}: {err}") from err
        above = _file_above(path)
        detail = f"{above} is a file, not a folder" if above else "a part of the path is not a folder"
        raise UserError(f"{location}: {what} not found ({detail})") from None
    except Exception as err:
        if not is_remote(location):
            if isinstance(err, OSError):
                raise UserError(f"{location}: cannot read the {what} ({err.strerror or err})") from None
            raise
        raise UserError(f"{location}: cannot read the {what}: {type(err).__name__}: {err}") from err


def exists(location: str, storage_options: dict[str, Any] | None = None) -> bool:
    """True when a file or folder exists at ``location``."""
    fs, path = get_fs(location, storage_options)
    return fs.exists(path)


def write_bytes_atomic(
    location: str, data: bytes, storage_options: dict[str, Any] | None = None, durable: bool = True
) -> None:
    """Write ``data`` so that readers see either the old or the new file, never half of one.

    Local files are written to a temporary file in the same folder and renamed
    over the target; with ``durable`` the data is flushed to disk first, so it
    also survives a power cut (documents; chunk writes may skip it for speed).
    An S3 PUT is atomic by itself.
    """
    fs, path = get_fs(location, storage_options)
    if is_remote(location):
        try:
            fs.pipe_file(path, data)
        except Exception as err:  # unreachable after the retries (S3_MAX_ATTEMPTS) or refused
            raise UserError(f"{location}: cannot write it: {type(err).__name__}: {err}") from err
        return
    _write_local_atomic(location, path, data, durable, _mode_for(path))


def _write_local_atomic(location: str, path: str, data: bytes, durable: bool, mode: int) -> None:
    """Write ``data`` to a temporary file next to ``path``, give it ``mode`` and rename it over ``path``.

    A parent that is a file, a target that is a folder or a permission denied
    is a :class:`UserError` naming ``location``; other :class:`OSError` (a full
    disk) propagate.
    """
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    except _PATH_ERRORS as err:
        raise _write_error(location, path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)  # mkstemp made it 0600, and a rename keeps the mode
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, _PATH_ERRORS):
            raise _write_error(location, path, err) from None
        raise


_PATH_ERRORS = (NotADirectoryError, FileExistsError, IsADirectoryError, PermissionError)
"""Local write errors that are the path's fault, not the machine's."""


def _write_error(location: str, path: str, err: OSError) -> UserError:
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        above = _file_above(path)
        if above:
            return UserError(f"{location}: cannot write it ({above} is a file, not a folder)")
    if isinstance(err, PermissionError):
        return UserError(f"{location}: permission denied writing it")
    if isinstance(err, IsADirectoryError) or os.path.isdir(path):
        return UserError(f"{location}: cannot write it (is a folder)")
    return UserError(f"{location}: cannot write it ({err.strerror or err})")


def check_folder(location: str, what: str = "output folder") -> None:
    """Raise a :class:`UserError` when local ``location`` is, or lies under, a regular file (remote: no check)."""
    if is_remote(location):
        return
    path = os.path.abspath(os.path.expanduser(location))
    above = path if os.path.lexists(path) and not os.path.isdir(path) else _file_above(path)
    if above:
        raise UserError(f"{location}: cannot be the {what}: {above} is a file, not a folder")


def _file_above(path: str) -> str | None:
    """The nearest parent of local ``path`` that exists and is not a folder, if any."""
    folder = os.path.dirname(path)
    while folder and folder != os.path.dirname(folder):
        if os.path.lexists(folder) and not os.path.isdir(folder):
            return folder
        folder = os.path.dirname(folder)
    return None


@functools.cache
def process_umask() -> int:
    """This process's umask, read once (from ``/proc/self/status`` where it is, else by setting and restoring it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def _mode_for(path: str, like: str | None = None) -> int:
    """Permissions for a local file written at ``path``.

    Those of ``like`` (default: ``path`` itself) when it exists, else
    ``0o666 & ~umask``, the mode ``open()`` gives a new file.
    """
    try:
        return stat.S_IMODE(os.stat(like or path).st_mode) & 0o777
    except OSError:
        return 0o666 & ~process_umask()


def write_with_backups(
    location: str, data: bytes, storage_options: dict[str, Any] | None = None, n_backups: int = N_BACKUPS
) -> None:
    """Atomically replace ``location`` and keep rolling backups ``location~1`` .. ``~n``.

    ``~1`` is the version just replaced, ``~n`` the oldest. The new content is
    fully written before any backup is rotated, so a failure part way leaves
    the old file in place.
    """
    fs, path = get_fs(location, storage_options)
    if not fs.exists(path):
        write_bytes_atomic(location, data, storage_options)
        return
    # Stage the new content first: nothing is rotated if this fails.
    # Locally the new file and the ~1 backup get the permissions of the file they replace.
    staged = path + ".new"
    if is_remote(location):
        fs.pipe_file(staged, data)
    else:
        _write_local_atomic(location + ".new", staged, data, True, _mode_for(staged, like=path))
    for i in range(n_backups - 1, 0, -1):
        older, newer = f"{path}~{i}", f"{path}~{i + 1}"
        if fs.exists(older):
            _move(fs, older, newer, remote=is_remote(location))
    _copy(fs, path, f"{path}~1", remote=is_remote(location), location=f"{location}~1")
    _move(fs, staged, path, remote=is_remote(location))


def _move(fs, src: str, dst: str, remote: bool) -> None:
    if remote:
        fs.mv(src, dst)
    else:
        os.replace(src, dst)


def _copy(fs, src: str, dst: str, remote: bool, location: str) -> None:
    if remote:
        fs.copy(src, dst)
    else:
        _write_local_atomic(location, dst, fs.cat_file(src), True, _mode_for(dst, like=src))
