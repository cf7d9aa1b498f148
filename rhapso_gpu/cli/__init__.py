"""The ``rhapso-gpu`` command: one subcommand per pipeline stage.

A :class:`~rhapso_gpu.errors.UserError` ends the command with a one-line
message on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import sys

from rhapso_gpu import __version__
from rhapso_gpu.cli import (
    align,
    demo,
    detect,
    evaluate,
    fuse,
    info,
    match,
    multiscale,
    params,
    run,
    solve,
    split,
    stitch,
    synth,
)
from rhapso_gpu.errors import UserError

COMMANDS = (synth, info, evaluate, demo, detect, fuse, multiscale, stitch, match, solve, align, split, run, params)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="rhapso-gpu",
        description="Register, align and fuse tiled 3-D light-sheet datasets (BigStitcher-compatible).",
    )
    parser.add_argument("--version", action="version", version=f"rhapso-gpu {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def _setup_logging(verbosity: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname).1s %(message)s"))
    root = logging.getLogger("rhapso_gpu")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    for noisy in ("distributed", "bokeh", "tornado", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if verbosity == 0:  # asyncio's reports on zarr's and s3fs's own I/O tasks after a retried request: -v shows them
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _drop_abandoned_coroutine_reports() -> None:
    """After a failed run, stay silent about I/O coroutines its other tasks left pending.

    When one block fails (say S3 is unreachable), the I/O that other blocks had
    in flight in zarr's and fsspec's event loops is destroyed at interpreter
    exit, and Python reports each ("Exception ignored in: <coroutine ...>" with
    a traceback), burying the one-line error. Other unraisable reports still
    show; asyncio's own reports are quiet unless ``-v`` (:func:`_setup_logging`).
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not inspect.iscoroutine(unraisable.object):
            previous(unraisable)

    sys.unraisablehook = hook


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", False))
    try:
        return int(args.run(args) or 0)
    except UserError as e:
        if getattr(args, "debug", False):
            raise
        print(f"rhapso-gpu {args.command}: error: {e}", file=sys.stderr)
        _drop_abandoned_coroutine_reports()
        return 2
    except KeyboardInterrupt:
        print(f"rhapso-gpu {args.command}: interrupted", file=sys.stderr)
        return 130
