"""The solve report: per-link residuals after the solve, removed links, convergence, worst link and tile.

Distances are in world units (isotropic pixels), measured between the two
ends of every match under the solved models, so a tile that is off shows up in
its links' residuals (they are never averaged away into one number).
"""

from __future__ import annotations

import json

import numpy as np
from pydantic import BaseModel

from rhapso_gpu import __version__
from rhapso_gpu.io import storage
from rhapso_gpu.solver.dataset import DatasetSolve, transform_name
from rhapso_gpu.solver.global_opt import tile_errors


def _round(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def build_report(solved: DatasetSolve, params: BaseModel | None = None) -> dict:
    """The report as a JSON-ready dict (see the module docstring), headed by the package version and, when
    given, the solve's parameters (so the report says how it was made)."""
    opt, name = solved.optimum, solved.tile_name
    graph = opt.graph
    keep = ~opt.removed
    dist, link_err, tile_err = tile_errors(graph, opt.models, keep)
    links = []
    for lnk in range(graph.n_links):
        d = dist[graph.offsets[lnk]: graph.offsets[lnk + 1]]
        links.append({
            "a": name(graph.link_a[lnk]),
            "b": name(graph.link_b[lnk]),
            "matches": int(d.size),
            "mean": _round(link_err[lnk]),
            "rms": _round(np.sqrt(np.mean(d**2))),
            "max": _round(d.max()),
            "removed": bool(opt.removed[lnk]),
        })
    kept = [x for x, k in zip(links, keep, strict=True) if k]
    tiles = [
        {"view": name(i), "mean": _round(tile_err[i]), "links": int(((graph.link_a == i) | (graph.link_b == i))[keep].sum())}
        for i in range(len(solved.tiles))
    ]
    finite = [t for t in tiles if t["mean"] is not None]
    d_kept = dist[np.repeat(keep, np.diff(graph.offsets))]
    return {
        "version": __version__,
        "parameters": None if params is None else params.model_dump(mode="json", by_alias=True),
        "model": transform_name(solved.model),
        "views": len(solved.views),
        "fixed_views": [str(v) for v in solved.fixed],
        "groups": [[str(v) for v in members] for members in solved.tiles if len(members) > 1],
        "links": len(kept),
        "matches": int(d_kept.size),
        "rms": _round(np.sqrt(np.mean(d_kept**2))) if d_kept.size else None,
        "max": _round(d_kept.max()) if d_kept.size else None,
        "worst_link": max(kept, key=lambda x: x["max"], default=None),
        "worst_tile": max(finite, key=lambda t: t["mean"], default=None),
        "removed_links": [
            {"a": name(r.tile_a), "b": name(r.tile_b), "error": _round(r.error),
             "avg_tile_error": _round(r.avg_tile_error), "max_tile_error": _round(r.max_tile_error)}
            for r in opt.removals
        ],
        "model_selection": solved.selection,
        "placed_by_metadata": [str(v) for t in opt.placed_by_metadata for v in solved.tiles[t]],
        "unplaced": [str(v) for t in opt.unplaced for v in solved.tiles[t]],
        "weak_links": 0 if opt.weak is None else opt.weak.n_links,
        "convergence": [
            {"solve": name, "iterations": s.iterations, "last_change": _round(s.change), "converged": s.converged}
            for name, s in opt.stats
        ],
        "per_link": links,
        "per_tile": tiles,
    }


def report_location(xml: str, kind: str) -> str:
    """``dataset.solve-<kind>.json`` next to ``dataset.xml``."""
    stem = xml.removesuffix(".xml")
    return f"{stem}.solve-{kind}.json"


def write_report(report: dict, location: str) -> str:
    """Write the report (atomically) and return its location."""
    storage.write_bytes_atomic(location, json.dumps(report, indent=1).encode())
    return location
