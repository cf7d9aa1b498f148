"""Options shared by the subcommands, so every stage spells them the same way."""

from __future__ import annotations

import argparse

from rich.console import Console

from rhapso_gpu.errors import UserError


def add_common(parser: argparse.ArgumentParser) -> None:
    """``-v``, ``--quiet`` and ``--debug``, on every subcommand."""
    group = parser.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log messages")
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    group.add_argument("--debug", action="store_true", help="show the traceback of user errors")


def output_console(args: argparse.Namespace, **options) -> Console:
    """The console a command prints its tables and results on: silent with ``-q`` (warnings go to the log)."""
    return Console(highlight=False, quiet=getattr(args, "quiet", False), **options)


def add_compute(parser: argparse.ArgumentParser) -> None:
    """``--backend``, ``--cluster``, ``--workers``, ``--memory-limit``: on every subcommand that computes."""
    group = parser.add_argument_group("compute")
    group.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default="auto",
        help="array backend: cupy only where a CUDA GPU is usable (auto, the default), else numpy",
    )
    group.add_argument(
        "--cluster",
        default="local",
        metavar="SPEC",
        help="where dask work runs: synchronous, threads, local (default: worker processes), "
        "local-cuda (one worker per GPU) or tcp://HOST:PORT (an existing scheduler)",
    )
    group.add_argument("--workers", type=int, default=None, metavar="N", help="local worker processes (default: cores)")
    group.add_argument("--memory-limit", default=None, metavar="SIZE", help="memory per local worker, e.g. 4GB")


def parse_triple(text: str, name: str, kind=float) -> tuple:
    """Parse ``AxBxC`` (or ``A,B,C``) into three numbers in xyz order; a single number is repeated."""
    parts = text.replace(",", "x").lower().split("x")
    try:
        values = tuple(kind(p) for p in parts)
    except ValueError:
        raise UserError(f"{name} '{text}': expected three {kind.__name__}s like 3x3x1") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise UserError(f"{name} '{text}': expected three values (x, y, z) like 3x3x1")
    return values
