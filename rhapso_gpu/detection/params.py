"""Parameters of ``rhapso-gpu detect`` (YAML keys and ``--set`` names; Rhapso's names where they agree)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _power_of_two(value: int) -> int:
    if value < 1 or value & (value - 1):
        raise ValueError("must be a power of two (1, 2, 4, ...)")
    return value


class DetectParams(BaseModel):
    """Difference-of-Gaussian interest-point detection.

    Units: ``sigma``, ``median_filter`` and ``block_size`` in **downsampled**
    pixels; ``combine_distance`` in **full-resolution** pixels; intensities in
    the image's own units; ``threshold`` in normalised units (DoG of
    ``(v - min_intensity) / (max_intensity - min_intensity)``).
    """

    model_config = ConfigDict(extra="forbid")

    label: str = Field("beads", min_length=1, description="interest-point label written to the XML and N5")
    dsxy: int = Field(2, description="downsampling in x and y (power of two)")
    dsz: int = Field(1, description="downsampling in z (power of two)")
    sigma: float = Field(1.8, gt=0.5, le=50.0, description="DoG sigma in downsampled pixels")
    threshold: float | Literal["auto"] = Field(
        0.03, description="DoG threshold (normalised intensity), or 'auto' to reach auto_points per view"
    )
    auto_points: int = Field(2000, ge=1, description="target points per view (or overlap) for threshold 'auto'")
    auto_per: Literal["view", "overlap"] = Field(
        "view", description="threshold 'auto' targets auto_points per view, or per overlap (needs overlap_only)"
    )
    auto_min_threshold: float = Field(
        0.001, gt=0.0, description="lowest threshold 'auto' may choose (normalised intensity)"
    )
    find: Literal["max", "min", "both"] = Field("max", description="image maxima (bright spots), minima or both")
    min_intensity: float | None = Field(None, description="intensity mapped to 0 (default: 0.1th percentile)")
    max_intensity: float | None = Field(None, description="intensity mapped to 1 (default: 99.99th percentile)")
    median_filter: int = Field(0, ge=0, le=100, description="background subtraction radius (0 = off)")
    combine_distance: float = Field(0.5, ge=0.0, description="merge points closer than this (full-res pixels)")
    max_spots: int = Field(-1, description="keep the N brightest points per view (<= 0: all)")
    max_spots_per_overlap: bool = Field(False, description="share max_spots among overlaps by their size")
    overlap_only: bool = Field(False, description="detect only where the view overlaps other views")
    block_size: tuple[int, int, int] = Field((256, 256, 128), description="block size (x, y, z), downsampled px")

    @field_validator("dsxy", "dsz")
    @classmethod
    def _check_power(cls, value: int) -> int:
        return _power_of_two(value)

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value):
        if value != "auto" and not value > 0:
            raise ValueError("must be > 0 or 'auto'")
        return value

    @field_validator("block_size")
    @classmethod
    def _check_block(cls, value):
        if min(value) < 4:
            raise ValueError("every block size must be >= 4")
        return value

    @property
    def find_max(self) -> bool:
        """Report image maxima (DoG minima)."""
        return self.find in ("max", "both")

    @property
    def find_min(self) -> bool:
        """Report image minima (DoG maxima)."""
        return self.find in ("min", "both")
