"""Parameters of ``rhapso-gpu match`` (YAML keys and ``--set`` names; BigStitcher-Spark defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rhapso_gpu.matching.grouping import GROUPABLE
from rhapso_gpu.matching.icp import IcpParams
from rhapso_gpu.matching.pairwise import DescriptorParams
from rhapso_gpu.matching.ransac import RansacParams
from rhapso_gpu.models import TransformModel


class MatchParams(BaseModel):
    """Interest-point matching.

    Units: every distance (``max_epsilon``, ``search_radius``,
    ``icp_max_distance``, ``overlap_margin``, ``merge_distance``) is in
    **world** units, the coordinates that the views' registrations map to.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    labels: list[str] = Field(["beads"], min_length=1, description="interest-point labels to match (each with itself)")
    match_across_labels: bool = Field(False, description="also match every label with every other label")
    method: Literal["fast-rotation", "fast-translation", "precise-translation", "offset-consensus", "icp"] = Field(
        "fast-rotation",
        description="descriptor method; offset-consensus (no descriptors: sparse points, thin overlaps); "
        "or icp (nearest neighbours from the current registration)",
    )
    model: Literal["translation", "rigid", "affine"] = Field("affine", description="transformation model")
    regularizer: Literal["none", "identity", "translation", "rigid", "affine"] = Field(
        "rigid", description="model the fit is regularised towards"
    )
    lam: float = Field(0.1, alias="lambda", ge=0.0, le=1.0, description="regularisation weight lambda")
    num_neighbors: int = Field(3, ge=2, le=10, description="neighbours per descriptor (fast-rotation: always 3)")
    redundancy: int = Field(1, ge=0, le=5, description="extra neighbours (more descriptors per point)")
    significance: float = Field(3.0, ge=1.0, description="ratio test: best * significance <= second best")
    search_radius: float | None = Field(
        None,
        gt=0,
        description="only pair points closer than this (world units); offset-consensus: the largest expected "
        "misregistration (default 20)",
    )
    iterations: int = Field(10_000, ge=1, description="RANSAC hypotheses")
    max_epsilon: float = Field(5.0, gt=0, description="RANSAC inlier distance (world units)")
    min_inlier_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="RANSAC minimum inlier ratio")
    min_inliers: int = Field(12, ge=1, description="fewest inliers of an accepted pair")
    fallback: Literal["offset-consensus", "none"] = Field(
        "offset-consensus",
        description="when a descriptor method fails a pair, try offset-consensus on the same points (sparse points, "
        "thin overlaps: too few points with the same neighbours in both views for any descriptor)",
    )
    guided: bool = Field(
        True, description="after RANSAC, add every mutual nearest neighbour pair the model explains (ICP from it)"
    )
    icp_max_distance: float = Field(5.0, gt=0, description="icp: assignment distance (world units)")
    icp_iterations: int = Field(200, ge=1, description="icp: most iterations")
    icp_use_ransac: bool = Field(False, description="icp: RANSAC in every iteration")
    pairs: Literal["overlapping", "all"] = Field("overlapping", description="views whose boxes overlap, or all pairs")
    timepoints: Literal["individually", "reference", "all"] = Field(
        "individually", description="pair views of the same time point, each with a reference one, or all"
    )
    reference_timepoint: int | None = Field(None, description="for timepoints: reference (default: the first)")
    overlap_only: bool = Field(True, description="use only points inside the pair's overlap (plus overlap_margin)")
    overlap_margin: float = Field(10.0, ge=0.0, description="margin around the overlap box (world units)")
    group_tiles: bool = Field(False, description="match views that differ only in tile as one (pooled points)")
    group_channels: bool = Field(False, description="match views that differ only in channel as one")
    group_illuminations: bool = Field(False, description="match views that differ only in illumination as one")
    merge_distance: float = Field(
        5.0, ge=0.0, description="grouping: a point removes other views' points of its group within this (world units)"
    )
    seed: int = Field(0, description="RANSAC seed; equal seeds give identical results")

    def grouped(self) -> set[str]:
        """Setup attributes grouped over (``tile``, ``channel``, ``illumination``); empty: no grouping."""
        return {attr for name, attr in GROUPABLE.items() if getattr(self, f"group_{name}")}

    def transform_model(self) -> TransformModel:
        """The model to fit."""
        return TransformModel(self.model, self.regularizer, self.lam)

    def descriptor(self) -> DescriptorParams:
        """Descriptor parameters (not used by ``icp``)."""
        return DescriptorParams(self.method, self.num_neighbors, self.redundancy, self.significance, self.search_radius)

    def ransac(self) -> RansacParams:
        """RANSAC parameters; for ``icp``, unless given, BigStitcher's 200 iterations at epsilon 2.5."""
        icp_default = self.method == "icp"
        iterations = 200 if icp_default and "iterations" not in self.model_fields_set else self.iterations
        epsilon = 2.5 if icp_default and "max_epsilon" not in self.model_fields_set else self.max_epsilon
        return RansacParams(iterations, epsilon, self.min_inlier_ratio, self.min_inliers)

    def icp(self) -> IcpParams:
        """ICP parameters."""
        return IcpParams(self.icp_max_distance, self.icp_iterations, self.icp_use_ransac)
