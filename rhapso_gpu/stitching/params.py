"""Parameters of ``rhapso-gpu stitch`` (YAML keys and ``--set`` names; BigStitcher's defaults where it has one)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class StitchParams(BaseModel):
    """Intensity-based pairwise stitching ("Calculate pairwise shifts", phase correlation).

    Units: ``downsampling`` is in full-resolution pixels of each view (x, y, z);
    ``max_shift`` and ``min_overlap`` are in **world** units (isotropic pixels,
    the coordinates the registrations map to).
    """

    model_config = ConfigDict(extra="forbid")

    downsampling: tuple[int, int, int] = Field(
        (2, 2, 1), description="sample the overlaps every (x, y, z) full-resolution pixels (BigStitcher: 2, 2, 1)"
    )
    max_shift: float = Field(
        20.0, ge=0, description="largest shift searched per axis (world px): the largest error between two neighbours"
    )
    peaks: int = Field(5, ge=1, description="phase-correlation peaks checked by cross-correlation (BigStitcher: 5)")
    subpixel: bool = Field(True, description="refine the shift to sub-pixel precision")
    min_r: float = Field(0.7, ge=-1.0, le=1.0, description="reject pairs whose best cross-correlation r is lower")
    neighbours: Literal["faces", "all"] = Field(
        "faces",
        description="stitch pairs whose overlap spans a quarter of the views along two axes (faces), or every "
        "overlapping pair (all, BigStitcher's choice); corner-only overlaps correlate ambiguously",
    )
    min_overlap: float = Field(
        1.0, ge=0,
        description="only shifts where the views still overlap by this much along every axis (world px); thin "
        "true overlaps (stage errors near the overlap width) still fix the other two axes well",
    )
