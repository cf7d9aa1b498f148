"""The pipeline file: the XML to process, where outputs go, and the ordered stages with their parameters.

A pipeline file is YAML::

    xml: dataset.xml            # relative to the pipeline file's folder, or an absolute path / s3:// URL
    output: results/            # folder for stage outputs with relative names (default: the XML's folder)
    stages:
      - stage: detect
        params: {dsxy: 1}
      - stage: match
        name: match_rigid       # needed when a stage kind appears more than once
        params: {method: offset-consensus, model: rigid}
      - stage: solve
        name: solve_rigid
        params: {model: rigid}
      - stage: fuse
        output: fused.ome.zarr
        params: {data_type: uint16}
      - stage: multiscale

Each stage's ``params`` are exactly the keys of that stage's command
(``--params``/``--set``): :class:`~rhapso_gpu.detection.DetectParams`, :class:`~rhapso_gpu.stitching.StitchParams`,
:class:`~rhapso_gpu.matching.params.MatchParams`,
:class:`~rhapso_gpu.solver.SolveParams`, :class:`~rhapso_gpu.split.SplitParams`,
:class:`~rhapso_gpu.fusion.params.FuseParams`, ``align``'s per-stage mapping,
and :class:`PyramidParams` / :class:`QCParams` below.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from rhapso_gpu.cli.align import STAGES as ALIGN_STAGES
from rhapso_gpu.cli.align import AlignParams
from rhapso_gpu.detection import DetectParams
from rhapso_gpu.errors import UserError
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.io import storage
from rhapso_gpu.io.params import read_yaml, validate_params
from rhapso_gpu.matching.params import MatchParams
from rhapso_gpu.solver import SolveParams
from rhapso_gpu.split import SplitParams
from rhapso_gpu.stitching import StitchParams

StageKind = Literal["detect", "stitch", "match", "solve", "split", "fuse", "multiscale", "qc", "align"]


class PyramidParams(BaseModel):
    """``multiscale`` stage parameters (the options of ``rhapso-gpu multiscale``)."""

    model_config = ConfigDict(extra="forbid")

    factors: list[tuple[int, int, int]] | None = Field(
        None, description="factors (x, y, z) of each level relative to the one below (default: automatic)")
    levels: int | None = Field(None, ge=1, description="levels including level 0 (default: automatic)")


class QCParams(BaseModel):
    """``qc`` stage parameters: registration error against a ground truth, and image checks."""

    model_config = ConfigDict(extra="forbid")

    truth: str | None = Field(None, description="ground_truth.json (relative to the pipeline file); "
                                                "without it only the images are checked")
    remove: Literal["affine", "rigid", "translation", "none"] = Field(
        "affine", description="global transform removed before measuring the error")
    max_rms: float | None = Field(None, gt=0, description="fail the stage above this RMS error (full-res px)")


PARAMS_MODELS: dict[str, type[BaseModel]] = {
    "detect": DetectParams, "stitch": StitchParams, "match": MatchParams, "solve": SolveParams, "split": SplitParams,
    "fuse": FuseParams, "multiscale": PyramidParams, "qc": QCParams, "align": AlignParams,
}


class StageSpec(BaseModel):
    """One entry of ``stages``.

    Attributes
    ----------
    stage : str
        The kind of stage.
    name : str
        Unique within the pipeline (default: ``stage``); names the stage in
        the summary and its record.
    params : dict
        The stage's parameters (validated against ``PARAMS_MODELS[stage]``).
    output : str, optional
        ``fuse``: the OME-Zarr container (default ``<name>.ome.zarr``);
        ``split``: the split XML that later stages work on (default
        ``<xml stem>.split.xml``); ``solve``: the JSON report (default next to
        the XML); ``qc``: a JSON report (default none). Relative to the
        pipeline's ``output`` folder.
    input : str, optional
        ``multiscale``: the container (default: the output of the last
        ``fuse`` before it).
    """

    model_config = ConfigDict(extra="forbid")

    stage: StageKind
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    input: str | None = None
    _model: BaseModel | None = PrivateAttr(None)

    @property
    def key(self) -> str:
        """The stage's name (``name`` or else ``stage``)."""
        return self.name or self.stage

    @property
    def parameters(self) -> BaseModel:
        """The validated parameters model."""
        assert self._model is not None, "validated by load_pipeline"
        return self._model


class Pipeline(BaseModel):
    """A validated pipeline file (see the module docstring).

    Attributes
    ----------
    xml : str
        The dataset.xml the stages work on (updated in place, backups ``~1..~5``),
        resolved against the pipeline file's folder.
    output : str
        Folder for stage outputs with relative names (resolved; default the XML's folder).
    stages : list of StageSpec
    source : str
        Where the pipeline was read from.
    """

    model_config = ConfigDict(extra="forbid")

    xml: str = Field(description="dataset.xml to process (updated in place, with backups)")
    output: str | None = Field(None, description="folder for stage outputs (default: the XML's folder)")
    stages: list[dict[str, Any]] = Field(min_length=1, description="ordered stages")
    _stages: list[StageSpec] = PrivateAttr(default_factory=list)
    _source: str = PrivateAttr("pipeline")

    @property
    def steps(self) -> list[StageSpec]:
        """The validated stages, in order."""
        return self._stages

    @property
    def source(self) -> str:
        return self._source

    def resolve_output(self, location: str) -> str:
        """A stage output location: absolute paths and URLs as given, others under ``output``."""
        return location if storage.is_absolute(location) else storage.join(self.output, location)


def _resolve(base_folder: str, location: str) -> str:
    if storage.is_absolute(location):
        return location
    joined = storage.join(base_folder, location)
    return joined if storage.is_remote(joined) else os.path.normpath(joined)


def parse_pipeline(values: dict[str, Any], source: str = "pipeline", base_folder: str = ".") -> Pipeline:
    """Validate a pipeline mapping (as read from YAML); relative paths resolve against ``base_folder``.

    Raises
    ------
    UserError
        Naming ``source``, the stage and the key, with a did-you-mean for
        misspelled keys.
    """
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping with keys xml, output, stages")
    pipeline = validate_params(Pipeline, values, source)
    pipeline._source = source
    pipeline.xml = _resolve(base_folder, pipeline.xml)
    pipeline.output = _resolve(base_folder, pipeline.output) if pipeline.output else storage.parent(pipeline.xml)
    seen: set[str] = set()
    for i, entry in enumerate(pipeline.stages):
        where = f"{source}: stages[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with keys stage, name, params, output, input")
        spec = validate_params(StageSpec, entry, where)
        if spec.key in seen:
            raise UserError(f"{where}: stage name '{spec.key}' is used twice; give each a unique 'name'")
        seen.add(spec.key)
        where = f"{where} ({spec.key}) params"
        if spec.stage == "align":
            model = validate_params(AlignParams, spec.params, where)
            for path in model.paths():  # validate every inner stage of every path now, not half way through
                for name in ALIGN_STAGES:
                    model.stage(name, where, path)
        else:
            model = validate_params(PARAMS_MODELS[spec.stage], spec.params, where)
        spec._model = model
        if spec.stage == "qc" and model.truth:
            model.truth = _resolve(base_folder, model.truth)
        if spec.input is not None and spec.stage != "multiscale":
            raise UserError(f"{source}: stages[{i}] ({spec.key}): 'input' only applies to multiscale")
        pipeline._stages.append(spec)
    return pipeline


def load_pipeline(path_or_url: str) -> Pipeline:
    """Read and validate a pipeline file (local path or URL).

    Parameters
    ----------
    path_or_url : str
        The YAML pipeline file; relative paths inside it resolve against its folder.

    Returns
    -------
    Pipeline

    Raises
    ------
    UserError
        For a missing file, invalid YAML, or an unknown or invalid key (one
        line naming the file, the stage and the key).
    """
    values = read_yaml(path_or_url, "pipeline file")
    return parse_pipeline(values or {}, path_or_url, storage.parent(path_or_url))
