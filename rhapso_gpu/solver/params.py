"""Parameters of ``rhapso-gpu solve`` (YAML keys and ``--set`` names; BigStitcher-Spark defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rhapso_gpu.io.grouping import GROUPABLE
from rhapso_gpu.models import TransformModel
from rhapso_gpu.solver.global_opt import SolverSettings


class SolveParams(BaseModel):
    """Global optimisation.

    Units: thresholds and tolerances are in **world** units (isotropic pixels,
    the coordinates the registrations map to).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    links: Literal["interestpoints", "stitching"] = Field(
        "interestpoints",
        description="where the matches come from: interest-point correspondences, or the pairwise shifts of "
        "`rhapso-gpu stitch` (8 corners of each overlap box, BigStitcher's STITCHING source)",
    )
    labels: list[str] = Field(["beads"], min_length=1, description="interest-point labels whose matches are used")
    label_weights: dict[str, float] = Field(
        {}, description="weight per label (default 1.0); a match weighs the mean of its two labels' weights"
    )
    model: Literal["translation", "rigid", "affine"] = Field("affine", description="tile model")
    regularizer: Literal["none", "identity", "translation", "rigid"] = Field(
        "rigid", description="affine only: model the affine is regularised towards"
    )
    lam: float = Field(0.1, alias="lambda", ge=0.0, le=1.0, description="regularisation weight lambda")
    method: Literal["one-round", "one-round-iterative", "two-round", "two-round-iterative"] = Field(
        "two-round-iterative",
        description="iterative: remove wrong links; two-round: place tiles without matches by metadata overlaps",
    )
    relative_threshold: float = Field(3.5, gt=0, description="link removal: max tile error / mean tile error")
    absolute_threshold: float = Field(7.0, gt=0, description="link removal: mean tile error (world units)")
    batch_removal: bool = Field(
        False,
        description="remove, per solve, every link that is the worst within two links and above the thresholds "
        "(False: BigStitcher's one link per solve; True: a few solves for hundreds of wrong links)",
    )
    fixed_views: list[str] | None = Field(
        None, description="views held fixed, 'timepoint,setup' each (default: first view of every time point)"
    )
    max_iterations: int = Field(100, ge=1, description="most Newton / Gauss-Newton steps per solve (rigid, regularised affine)")
    tolerance: float = Field(1e-6, gt=0, description="stop when no tile moves more than this (world units)")
    select_model: bool = Field(
        False,
        description="affine only: keep the rigid solution unless the affine lowers the residuals significantly "
        "(F-test, p < select_p); the truth of most stage errors is rigid, and an affine fitted to noise is worse",
    )
    select_p: float = Field(0.01, gt=0, lt=1, description="significance level of select_model")
    timepoints: Literal["individually", "all"] = Field(
        "individually", description="solve every time point on its own (with its fixed view), or all together"
    )
    group_tiles: bool = Field(False, description="views that differ only in tile share one model")
    group_channels: bool = Field(False, description="views that differ only in channel share one model")
    group_illuminations: bool = Field(False, description="views that differ only in illumination share one model")

    @field_validator("fixed_views")
    @classmethod
    def _views(cls, value):
        for v in value or []:
            parts = str(v).split(",")
            if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
                raise ValueError(f"fixed view {v!r}: expected 'timepoint,setup'")
        return value

    def grouped(self) -> set[str]:
        """Setup attributes grouped over (``tile``, ``channel``, ``illumination``); empty: one model per view."""
        return {attr for name, attr in GROUPABLE.items() if getattr(self, f"group_{name}")}

    def transform_model(self) -> TransformModel:
        """The tile model; regularisation applies to the affine only."""
        if self.model != "affine":
            return TransformModel(self.model, "none", 0.0)
        return TransformModel("affine", self.regularizer, self.lam)

    def settings(self) -> SolverSettings:
        """Settings for :func:`~rhapso_gpu.solver.global_opt.optimize`."""
        return SolverSettings(
            self.transform_model(),
            link_removal=self.method.endswith("iterative"),
            two_round=self.method.startswith("two-round"),
            relative_threshold=self.relative_threshold,
            absolute_threshold=self.absolute_threshold,
            max_iterations=self.max_iterations,
            tolerance=self.tolerance,
            batch_removal=self.batch_removal,
        )
