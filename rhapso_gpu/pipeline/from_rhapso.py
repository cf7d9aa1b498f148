"""Convert parameter files of the original Rhapso (AllenNeuralDynamics/Rhapso) into a pipeline file.

Rhapso's parameter files are flat YAML mappings (see the Rhapso reference,
section "Param YAML files"): detection keys, matching and solver keys with a
stage suffix ``_rigid`` / ``_affine`` / ``_split_affine``, split keys, and a
separate fusion file. Both key sets are understood: Rhapso 0.4.5's
(``run_type``, ``model_min_inliers_*``, ``ransac_sample_size_*``,
``relative_threshold_*``) and the older names of the repository's YAML files
(``detection_run_type``, ``model_min_matches_*``, unsuffixed thresholds).

Every key is either mapped onto a stage parameter or reported as not
applicable with the reason; unknown keys are reported too. Nothing is dropped
silently.

Differences the mapping cannot remove (they are in the notes of the keys):
Rhapso writes a new XML per stage, rhapso-gpu updates one XML in place (with
backups); Rhapso's solver relaxes with damping (mpicbg) and removes single
matches by MAD, rhapso-gpu solves directly and removes whole wrong links as
BigStitcher does; image locations and formats come from the XML's image loader.

Relative paths: Rhapso passes the locations in its files to ``open`` and zarr
as they are, so a relative one is relative to the working directory Rhapso runs
in (its scripts open their parameter file by a path relative to it, too). A
pipeline file resolves its ``xml`` against the pipeline file's folder and stage
outputs against the XML's folder, so relative local paths are rewritten to point
at the same place from there; absolute paths and URLs (``s3://``) are kept.

Two Rhapso keys that set the same stage parameter (``model_min_matches_rigid``
and ``model_min_inliers_rigid``, or ``relative_threshold`` and
``relative_threshold_rigid``) must agree: with different values it is unclear
which one the file's Rhapso version read, so the conversion stops with an error
naming both keys rather than letting one of them win silently.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from rhapso_gpu.errors import UserError
from rhapso_gpu.io import storage

SUFFIXES = ("split_affine", "rigid", "affine")  # split_affine before affine: the longer suffix wins

_IN_PLACE = "rhapso-gpu updates one XML in place (backups ~1..~5) instead of writing a new XML per stage"
_LOADER = "image locations and formats come from the XML's <ImageLoader>"
_N5 = "interest points and matches are stored in <BasePath>/interestpoints.n5 as BigStitcher does"
_CLUSTER = "where work runs is the --cluster option (dask), not a parameter"
_RELAX = ("a convergence setting of Rhapso's iterative (mpicbg) relaxation; rhapso-gpu solves with direct sparse "
          "least squares")
_EVAL = "an input of Rhapso's evaluation scripts; use a qc stage (ground truth) or `rhapso-gpu evaluate`"
_UNUSED = "read but unused by Rhapso 0.4.5"
_NEUROGLANCER = "a setting of Rhapso's Neuroglancer link generator (not part of rhapso-gpu)"

DETECT_SAME = ("dsxy", "dsz", "min_intensity", "max_intensity", "sigma", "threshold", "median_filter",
               "combine_distance", "max_spots", "overlap_only")
NOT_APPLICABLE = {
    "file_type": _LOADER, "input_type": _LOADER, "image_file_prefix": _LOADER, "zarr_input_prefix": _LOADER,
    "xml_output_file_path": _IN_PLACE, "xml_file_path_split": _IN_PLACE,
    "n5_output_file_prefix": _N5, "n5_matching_output_path": _N5, "n5_input_path": _N5, "n5_path_split": _N5,
    "chunks_per_bound": "detection blocks are set by detect.block_size (downsampled pixels), not by bisection",
    "run_type": _CLUSTER, "detection_run_type": _CLUSTER,
    "min_matches": "rhapso-gpu has no greedy pre-alignment: the direct solve needs no minimum per link",
    "damp": _RELAX, "max_iterations": _RELAX, "max_allowed_error": _RELAX, "max_plateauwidth": _RELAX,
    "alignment_base": _EVAL, "downsample_xyz": _EVAL,
    "intensity_range": _UNUSED + " (fusion); set fuse.min_intensity/max_intensity and data_type to scale",
    "block_scale": _UNUSED + " (fusion); rhapso-gpu's fuse.block_scale is derived from block_size",
    "target_block_size_mb": _UNUSED + " (fusion)",
    "multiscale_chunk_size": "pyramid levels keep the fused container's chunks",
    "voxel_size": "the pyramid reads the voxel size from the fused container's OME-NGFF metadata",
    "base_level": "the pyramid always starts from level 0 of the fused container",
    "compressor_cname": "rhapso-gpu writes with zarr's default compressor",
    "compressor_clevel": "rhapso-gpu writes with zarr's default compressor",
    "compressor_shuffle": "rhapso-gpu writes with zarr's default compressor",
    "zarr_paths": _NEUROGLANCER, "json_upload_path": _NEUROGLANCER, "vmin": _NEUROGLANCER, "vmax": _NEUROGLANCER,
}
NOT_APPLICABLE_PER_STAGE = {
    "xml_file_path_matching": _IN_PLACE, "xml_file_path_solver": _IN_PLACE, "xml_file_path_output": _IN_PLACE,
    "num_neighbors": _UNUSED + " (matching); rhapso-gpu's num_neighbors is set from num_required_neighbors",
    "redundancy": _UNUSED + " (matching)",
    "ransac_sample_size": "RANSAC samples the model's minimal number of points (BigStitcher), not a parameter",
    "max_cleanup_rounds": "Rhapso's per-match MAD clean-up; rhapso-gpu removes whole wrong links "
                          "(relative/absolute_threshold) as BigStitcher does",
    "pre_xml_path": _EVAL, "post_xml_path": _EVAL, "solver_history_path": _EVAL, "split_xml_path": _EVAL,
}
MATCH_KEYS = {"significance": "significance", "search_radius": "search_radius",
              "num_required_neighbors": "num_neighbors", "model_min_inliers": "min_inliers",
              "model_min_matches": "min_inliers", "inlier_threshold": "max_epsilon",
              "min_inlier_ratio": "min_inlier_ratio", "num_iterations": "iterations",
              "regularization_weight_matching": "lambda"}
SOLVE_KEYS = {"relative_threshold": "relative_threshold", "absolute_threshold": "absolute_threshold",
              "regularization_weight_solver": "lambda"}
SPLIT_SAME = ("point_density", "min_points", "max_points", "error", "exclude_radius", "target_image_size",
              "target_overlap")
FUSIONS = {"avg_blend": "avg-blend", "max_blend": "max", "lowest_view_wins": "lowest-view-wins"}
UNKNOWN = "unknown: not a Rhapso 0.3-0.4.5 parameter known to this converter; not converted"
SPLIT_WEIGHT = 0.03  # Rhapso's hard-coded weight of matches between splitPoints (solver/model_and_tile_setup.py)
CONFLICT_HINTS = {"min_inliers": "Rhapso 0.4.5 reads model_min_inliers_*, older versions model_min_matches_*"}
MOVED = "relative path rewritten: Rhapso reads it from the working directory, rhapso-gpu from the XML's folder"


@dataclass
class Conversion:
    """The result of :func:`convert_rhapso`.

    Attributes
    ----------
    pipeline : dict
        The pipeline mapping (validate with :func:`~rhapso_gpu.pipeline.parse_pipeline`).
    notes : list of (key, value, outcome)
        One per Rhapso key: ``outcome`` is ``"-> stage.param"`` (with any
        caveat) or ``"not applicable: reason"`` or ``"unknown: ..."``.
    """

    pipeline: dict[str, Any]
    notes: list[tuple[str, Any, str]] = field(default_factory=list)


class _Builder:
    """Collects the stages and the notes; knows which file each Rhapso key came from.

    Parameters
    ----------
    sources : dict
        Rhapso key -> the file it was read from (for messages).
    fallback : str
        What to name in messages for a key missing from ``sources``.
    outputs : str
        The folder rhapso-gpu resolves relative stage outputs against (the XML's).
    """

    def __init__(self, sources: dict[str, str], fallback: str, outputs: str) -> None:
        self.stages: dict[str, dict[str, Any]] = {}
        self.notes: list[tuple[str, Any, str]] = []
        self.sources, self.fallback, self.outputs = sources, fallback, outputs
        self.origin: dict[tuple[str, str], tuple[str, Any]] = {}  # (stage, param) -> the Rhapso key and value

    def where(self, key: str) -> str:
        """The file ``key`` came from."""
        return self.sources.get(key, self.fallback)

    def error(self, key: str, value: Any, expected: str) -> UserError:
        """A one-line error naming the file, the key, its value and what was expected."""
        return UserError(f"{self.where(key)}: {key} {value!r}: expected {expected}")

    def stage(self, name: str, kind: str) -> dict[str, Any]:
        return self.stages.setdefault(name, {"stage": kind, "name": name, "params": {}})

    def set(self, key: str, value: Any, name: str, kind: str, param: str, converted: Any = None,
            caveat: str = "") -> None:
        converted = value if converted is None else converted
        self._claim(key, value, name, param, converted)
        self.stage(name, kind)["params"][param] = converted
        self.notes.append((key, value, f"-> {name}.{param}" + (f" ({caveat})" if caveat else "")))

    def _claim(self, key: str, value: Any, name: str, param: str, converted: Any) -> None:
        """Record that ``key`` sets ``name.param``; another key setting it differently is an error."""
        other, other_value = self.origin.setdefault((name, param), (key, value))
        if other == key or self.stages[name]["params"].get(param) == converted:
            return
        elsewhere = "" if self.where(other) == self.where(key) else f" in {self.where(other)}"
        hint = f" ({CONFLICT_HINTS[param]})" if param in CONFLICT_HINTS else ""
        raise UserError(f"{self.where(key)}: {key} {value!r} conflicts with {other} {other_value!r}{elsewhere}: "
                        f"both set {name}.{param}; keep one of them{hint}")

    def output(self, key: str, value: Any, name: str, kind: str, caveat: str = "") -> None:
        """``value`` becomes the stage's output, as seen from the XML's folder."""
        location = self.path(key, value, self.outputs)
        self.stage(name, kind)["output"] = location
        caveats = [c for c in (caveat, f"{MOVED}: {location}" if location != value else "") if c]
        self.notes.append((key, value, f"-> {name}.output" + "".join(f" ({c})" for c in caveats)))

    def skip(self, key: str, value: Any, reason: str) -> None:
        self.notes.append((key, value, f"not applicable: {reason}"))

    def path(self, key: str, value: Any, folder: str) -> str:
        """A location of the Rhapso file as seen from ``folder`` (see :func:`seen_from`)."""
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, value, "a path or URL")
        return seen_from(value, folder)


def seen_from(location: str, folder: str) -> str:
    """A location relative to the working directory (as Rhapso reads it), written for use from ``folder``.

    Parameters
    ----------
    location : str
        A path or URL from a Rhapso file (or the command line).
    folder : str
        The folder the location will be resolved against (local path or URL).

    Returns
    -------
    str
        Absolute paths and URLs as given; a relative local path as the path from
        ``folder`` to it, or as an absolute path when ``folder`` is a URL.
    """
    if storage.is_absolute(location) or "://" in location:
        return location
    target = os.path.abspath(location)
    if storage.is_remote(folder):
        return target
    try:
        return os.path.relpath(target, os.path.abspath(os.path.expanduser(folder)))
    except ValueError:  # another drive (Windows)
        return target


def _split_suffix(key: str) -> tuple[str, str | None]:
    for suffix in SUFFIXES:
        if key.endswith("_" + suffix):
            return key[: -len(suffix) - 1], suffix
    return key, None


def _fixed_view(b: _Builder, key: str, value: Any) -> str | None:
    """``"timepoint: 0, setup: 3"`` -> ``"0,3"``; None for Rhapso's 'no fixed tile' values."""
    if value in (None, False, "", "None"):
        return None
    found = re.fullmatch(r"\s*timepoint:\s*(\d+)\s*,\s*setup:\s*(\d+)\s*", str(value))
    if not found:
        raise b.error(key, value, "'timepoint: T, setup: S' as Rhapso writes it")
    return f"{found[1]},{found[2]}"


def _model(b: _Builder, key: str, value: Any) -> str:
    """The rhapso-gpu model of a ``match_type_*`` / ``run_type_solver_*`` value."""
    model = {"rigid": "rigid", "affine": "affine", "split-affine": "affine"}.get(str(value))
    if model is None:
        raise b.error(key, value, "rigid, affine or split-affine")
    return model


def _positive_ints(value: Any, length: int) -> bool:
    """True for a list of ``length`` positive whole numbers."""
    return (isinstance(value, (list, tuple)) and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _xyz(b: _Builder, key: str, value: Any) -> list[int]:
    """A block size: three positive whole numbers, x y z."""
    if not _positive_ints(value, 3):
        raise b.error(key, value, "a list of 3 positive whole numbers (x y z), e.g. [128, 128, 128]")
    return list(value)


def _factors(b: _Builder, value: Any) -> list[list[int]]:
    """Rhapso's ``scale_factor`` (one [z, y, x] per level) as rhapso-gpu's x y z factors."""
    if not isinstance(value, list) or not value or not all(_positive_ints(f, 3) for f in value):
        raise b.error("scale_factor", value, "a list of [z, y, x] factors (positive whole numbers), one per "
                                             "level, e.g. [[1, 2, 2], [2, 2, 2]]")
    return [list(f)[::-1] for f in value]


def _stage_key(b: _Builder, key: str, value: Any, base: str, suffix: str) -> bool:
    """Matching and solver keys with a stage suffix; True when handled."""
    match, solve = f"match_{suffix}", f"solve_{suffix}"
    if base in NOT_APPLICABLE_PER_STAGE:
        b.skip(key, value, NOT_APPLICABLE_PER_STAGE[base])
    elif base == "match_type":
        b.set(key, value, match, "match", "model", _model(b, key, value),
              "split-affine matches with an affine model" if value == "split-affine" else "")
        b.set(key, value, match, "match", "method", "fast-translation",
              "Rhapso's descriptor is translation invariant (relative vectors to the nearest neighbours)")
    elif base in MATCH_KEYS:
        b.set(key, value, match, "match", MATCH_KEYS[base],
              caveat="regularised towards rigid, (1 - lambda) affine + lambda rigid, as in Rhapso"
              if base == "regularization_weight_matching" else "")
    elif base == "run_type_solver":
        b.set(key, value, solve, "solve", "model", _model(b, key, value))
    elif base in SOLVE_KEYS:
        caveat = ("BigStitcher's link removal (the values keep their meaning there), not Rhapso's per-match MAD"
                  if base.endswith("threshold") else "regularised towards rigid")
        b.set(key, value, solve, "solve", SOLVE_KEYS[base], caveat=caveat)
    elif base == "fixed_tile":
        _fixed(b, key, value, [solve])
    elif base == "metrics_output_path":
        b.output(key, value, solve, "solve", "rhapso-gpu's solve report: per-link residuals")
    else:
        return False
    return True


def _fixed(b: _Builder, key: str, value: Any, stages: list[str]) -> None:
    view = _fixed_view(b, key, value)
    if view is None:
        b.skip(key, value, "no fixed tile given; rhapso-gpu fixes the first view of every time point "
                           "(Rhapso fixes a random one)")
        return
    for name in stages:
        b.set(key, value, name, "solve", "fixed_views", [view])


def _fusion_key(b: _Builder, key: str, value: Any, values: dict[str, Any]) -> bool:
    """Fusion and pyramid keys; True when handled."""
    if key == "output_path":
        b.output(key, value, "fuse", "fuse")
    elif key == "overlap_strategy":
        if not isinstance(value, str) or value not in FUSIONS:
            raise b.error(key, value, f"one of {', '.join(FUSIONS)}")
        b.set(key, value, "fuse", "fuse", "fusion", FUSIONS[value],
              "rhapso-gpu's avg-blend ramp is BigStitcher's cosine, Rhapso's is linear" if value == "avg_blend"
              else "")
    elif key == "output_block_size":
        b.set(key, value, "fuse", "fuse", "chunk_size", _xyz(b, key, value), "output chunk, x y z")
    elif key == "block_size":
        _block_size(b, key, value, values)
    elif key == "output_zarr_version":
        if isinstance(value, bool) or value not in (2, 3, "2", "3"):
            raise b.error(key, value, "2 or 3 (the zarr format of the fused output)")
        b.set(key, value, "fuse", "fuse", "ngff_version", "0.5" if int(value) == 3 else "0.4")
    elif key == "multiscale_zarr_path":
        if value == values.get("output_path"):
            b.notes.append((key, value, "-> multiscale (the pyramid goes into the fused container)"))
        else:
            b.skip(key, value, "rhapso-gpu writes the pyramid into the fused container (fuse.output), not a copy")
        b.stage("multiscale", "multiscale")
    elif key == "scale_factor":
        b.set(key, value, "multiscale", "multiscale", "factors", _factors(b, value),
              "Rhapso lists z y x, rhapso-gpu x y z")
    elif key == "n_lvls":
        if "scale_factor" in values:
            levels = len(_factors(b, values["scale_factor"]))
            b.notes.append((key, value, f"-> multiscale (implied by scale_factor: {levels} levels above level 0)"))
        else:
            b.set(key, value, "multiscale", "multiscale", "levels")
    else:
        return False
    return True


def _block_size(b: _Builder, key: str, value: Any, values: dict[str, Any]) -> None:
    """Rhapso's fusion task size becomes fuse.block_scale when it is whole output chunks."""
    block = _xyz(b, key, value)
    chunk = _xyz(b, "output_block_size", values["output_block_size"]) if "output_block_size" in values \
        else [128, 128, 128]
    if any(v % c for v, c in zip(block, chunk)):
        b.skip(key, value, f"not a multiple of the output chunk {chunk}; rhapso-gpu's tasks are whole "
                           "chunks (fuse.block_scale), Rhapso's may race on partial chunks")
    else:
        b.set(key, value, "fuse", "fuse", "block_scale", [v // c for v, c in zip(block, chunk)],
              f"task = block_scale x chunk {chunk}")


def _convert_key(b: _Builder, key: str, value: Any, values: dict[str, Any]) -> None:
    base, suffix = _split_suffix(key)
    if suffix and _stage_key(b, key, value, base, suffix):
        return
    if key in NOT_APPLICABLE:
        b.skip(key, value, NOT_APPLICABLE[key])
    elif key in ("xml_file_path_detection", "aligned_xml_path") or base in ("xml_file_path_matching",
                                                                               "xml_file_path_solver"):
        b.skip(key, value, f"the pipeline's xml; {_IN_PLACE}")
    elif key in DETECT_SAME:
        caveat = {"max_spots": "per view, or shared by overlaps with overlap_only",
                  "threshold": "the same DoG threshold on intensities normalised to min/max_intensity"}.get(key, "")
        b.set(key, value, "detect", "detect", key, caveat=caveat)
        if key == "overlap_only" and value and "max_spots" in values:
            b.stage("detect", "detect")["params"]["max_spots_per_overlap"] = True
    elif key in ("relative_threshold", "absolute_threshold", "fixed_tile", "metrics_output_path"):
        solves = [s for s in SUFFIXES if f"run_type_solver_{s}" in values] or ["rigid", "affine"]
        if key == "fixed_tile":
            _fixed(b, key, value, [f"solve_{s}" for s in solves])
        elif key == "metrics_output_path":
            b.skip(key, value, "one path for all solves; each solve stage writes its report next to the XML "
                               "(set output per solve stage)")
        else:
            for s in solves:
                b.set(key, value, f"solve_{s}", "solve", key, caveat="BigStitcher's link removal")
    elif key == "xml_output_file_path_split":
        b.output(key, value, "split", "split", "the XML later stages work on")
    elif key in SPLIT_SAME:
        caveat = {"target_image_size": "x y z", "target_overlap": "x y z",
                  "exclude_radius": "Rhapso measures it to the other fake points, rhapso-gpu to the real "
                                    "interest points"}.get(key, "")
        b.set(key, value, "split", "split", key, caveat=caveat)
    elif _fusion_key(b, key, value, values):
        return
    else:
        b.notes.append((key, value, UNKNOWN))


ORDER = ("detect", "match_rigid", "solve_rigid", "match_affine", "solve_affine", "split", "match_split_affine",
         "solve_split_affine", "fuse", "multiscale")


INPUTS = ("xml_file_path_detection", *(f"xml_file_path_matching_{s}" for s in ("rigid", "affine")),
          *(f"xml_file_path_solver_{s}" for s in ("rigid", "affine")), "aligned_xml_path")


def convert_rhapso(values: dict[str, Any], xml: str | None = None, sources: dict[str, str] | None = None,
                   folder: str = ".") -> Conversion:
    """Convert a Rhapso parameter mapping (one file, or an alignment and a fusion file merged).

    Parameters
    ----------
    values : dict
        The Rhapso YAML, loaded (anchors and aliases resolved).
    xml : str, optional
        The XML the pipeline works on; default Rhapso's first input XML
        (``xml_file_path_detection``, then the matching, solver and fusion inputs).
    sources : dict, optional
        Rhapso key -> the file it was read from, named in error messages.
    folder : str, optional
        The folder of the pipeline file to be written (default the working
        directory). Relative local paths, which Rhapso (and ``xml``) take
        relative to the working directory, are rewritten to point at the same
        place from the pipeline: the XML from ``folder``, stage outputs from
        the XML's folder.

    Returns
    -------
    Conversion

    Raises
    ------
    UserError
        For a value of the wrong type or out of range, two keys that set one
        parameter differently, or no input XML: one line naming the file and
        the key.
    """
    sources = {str(k): v for k, v in (sources or {}).items()}
    fallback = ", ".join(dict.fromkeys(sources.values())) or "Rhapso parameters"
    b = _Builder(sources, fallback, ".")
    xml = _input_xml(values, xml, b)
    b.outputs = storage.parent(xml)
    for key, value in values.items():
        _convert_key(b, str(key), value, values)
    _complete(b)
    stages = []
    for name in ORDER:
        if name in b.stages:
            entry = b.stages[name]
            stages.append({k: v for k, v in entry.items() if not (k == "name" and v == entry["stage"])})
    return Conversion({"xml": seen_from(xml, folder), "stages": stages}, b.notes)


def _input_xml(values: dict[str, Any], xml: str | None, b: _Builder) -> str:
    """The XML to work on (relative to the working directory): ``xml``, else Rhapso's first input XML."""
    if xml:
        return xml
    key = next((k for k in INPUTS if values.get(k)), None)
    if key is None:
        raise UserError(f"{b.fallback}: no input XML in the Rhapso parameters (xml_file_path_detection or "
                        "aligned_xml_path); pass --xml")
    b.path(key, values[key], ".")  # a path or URL
    return values[key]


def _complete(b: _Builder) -> None:
    """What Rhapso implies without a key: models from the stage suffix, split-affine labels, the pyramid."""
    for suffix in SUFFIXES:  # a stage's model follows its suffix when match_type_* / run_type_solver_* are absent
        for name in (f"match_{suffix}", f"solve_{suffix}"):
            if name in b.stages:
                b.stages[name]["params"].setdefault("model", "rigid" if suffix == "rigid" else "affine")
        if f"match_{suffix}" in b.stages:
            b.stages[f"match_{suffix}"]["params"].setdefault("method", "fast-translation")
    if "split" in b.stages:
        # split-affine: real points are copied to the sub-views as '<label>_split', fake ones are 'splitPoints'
        label = b.stages.get("detect", {}).get("params", {}).get("label", "beads")
        if "match_split_affine" in b.stages:
            b.stages["match_split_affine"]["params"]["labels"] = [f"{label}_split"]
        if "solve_split_affine" in b.stages:
            params = b.stages["solve_split_affine"]["params"]
            params["labels"] = [f"{label}_split", "splitPoints"]
            params["label_weights"] = {"splitPoints": SPLIT_WEIGHT}
    if "fuse" in b.stages:
        b.stage("multiscale", "multiscale")
