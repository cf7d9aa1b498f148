"""``rhapso-gpu params from-rhapso FILE.yml``: turn a parameter file of the original Rhapso into a pipeline file."""

from __future__ import annotations

import argparse
import os

import yaml
from rich.console import Console
from rich.table import Table

from rhapso_gpu import __version__
from rhapso_gpu.cli._options import add_common
from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage
from rhapso_gpu.io.params import read_yaml


def add_parser(sub) -> None:
    p = sub.add_parser("params", help="parameter files: convert Rhapso parameter files into a pipeline file")
    commands = p.add_subparsers(dest="params_command", metavar="SUBCOMMAND", required=True)
    c = commands.add_parser(
        "from-rhapso",
        help="convert Rhapso parameter YAML (alignment and/or fusion) into a pipeline file for `rhapso-gpu run`",
        description="Convert one or more parameter files of the original Rhapso (an alignment file, a fusion file, "
        "or both) into one pipeline file. Every Rhapso key is reported: mapped onto a stage parameter, or not "
        "applicable with the reason. The result is validated before it is written.",
    )
    c.add_argument("files", nargs="+", metavar="FILE.yml", help="Rhapso parameter file(s) (local or URL)")
    c.add_argument("--out", metavar="PIPELINE.yml",
                   help="write the pipeline here (default: print it); not one of the inputs. Relative paths, "
                   "which Rhapso reads from the working directory, are rewritten to point at the same place "
                   "from this file")
    c.add_argument("--xml", help="the XML to process (default: Rhapso's first input XML)")
    add_common(c)
    c.set_defaults(run=run)


def read_rhapso(files: list[str], sources: dict | None = None) -> dict:
    """The merged mapping of Rhapso YAML files (a key given twice with different values is an error).

    Parameters
    ----------
    files : list of str
        Rhapso parameter files (local or URL).
    sources : dict, optional
        Filled with the file each key was read from (for messages).
    """
    merged: dict = {}
    sources = {} if sources is None else sources
    for location in files:
        values = read_yaml(location, "Rhapso parameter file")
        if not isinstance(values, dict):
            raise UserError(f"{location}: expected a mapping of Rhapso parameter names to values")
        for key, value in values.items():
            if key in merged and merged[key] != value:
                raise UserError(f"{location}: '{key}' is {value!r} here but {merged[key]!r} in an earlier file")
            merged[key] = value
            sources.setdefault(str(key), location)
    return merged


def _same_file(a: str, b: str) -> bool:
    """True when two locations name the same file (symbolic and hard links included)."""
    if storage.is_remote(a) or storage.is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    a, b = (os.path.realpath(os.path.expanduser(p)) for p in (a, b))
    return a == b or (os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b))


def refuse_inputs(out: str, inputs: list[str]) -> None:
    """Raise a :class:`UserError` when ``out`` is one of the ``inputs`` (inputs are never overwritten)."""
    for location in inputs:
        if _same_file(out, location):
            raise UserError(f"--out {out}: is the input {location}; inputs are never overwritten, "
                            "choose another --out")


def _inline(value) -> str:
    """A value as one line of YAML flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def render(pipeline: dict, notes: list, files: list[str]) -> str:
    """The pipeline as YAML, headed by one comment line per Rhapso key saying what became of it."""
    lines = [f"# Converted by `rhapso-gpu params from-rhapso` (rhapso-gpu {__version__}) from {', '.join(files)}.",
             "# Run it with `rhapso-gpu run THIS_FILE`. Every Rhapso key and what became of it:"]
    lines += [f"#   {key}: {_inline(value)} {outcome}" for key, value, outcome in notes]
    return "\n".join(lines) + "\n\n" + yaml.safe_dump(pipeline, sort_keys=False, default_flow_style=None, width=100)


def run(args: argparse.Namespace) -> int:
    # imported here: rhapso_gpu.pipeline builds on the single commands' modules of this package
    from rhapso_gpu.pipeline import parse_pipeline
    from rhapso_gpu.pipeline.from_rhapso import convert_rhapso

    if args.out:
        refuse_inputs(args.out, args.files)
    sources: dict = {}
    values = read_rhapso(args.files, sources)
    folder = storage.parent(args.out) if args.out else "."
    conversion = convert_rhapso(values, args.xml, sources, folder)
    text = render(conversion.pipeline, conversion.notes, args.files)
    pipeline = parse_pipeline(yaml.safe_load(text), f"pipeline converted from {', '.join(args.files)}", folder)
    if args.out:  # what we write must load, and must not replace the XML it works on
        refuse_inputs(args.out, [pipeline.xml])
    console = Console(highlight=False, quiet=args.quiet)
    if not args.out:
        print(text, end="")
        return 0
    storage.write_bytes_atomic(args.out, text.encode())
    table = Table(title=f"Rhapso keys -> {args.out}")
    table.add_column("Rhapso key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("outcome", overflow="fold")
    for key, value, outcome in conversion.notes:
        table.add_row(key, str(value), outcome)
    console.print(table)
    mapped = sum(o.startswith("->") for _, _, o in conversion.notes)
    console.print(f"{mapped} of {len(conversion.notes)} keys mapped; wrote {args.out} "
                  f"({len(conversion.pipeline['stages'])} stages)")
    return 0
