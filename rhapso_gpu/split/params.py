"""Parameters of ``rhapso-gpu split`` (YAML keys and ``--set`` names; BigStitcher/Rhapso defaults)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SplitParams(BaseModel):
    """Splitting views into overlapping sub-views (BigStitcher ``SplittingTools``).

    Units: sizes, overlaps, radii and errors are in **full-resolution local
    pixels** of the original views, axis order **xyz**.
    """

    model_config = ConfigDict(extra="forbid")

    target_image_size: tuple[int, int, int] = Field(
        (7000, 7000, 4000), description="sub-view size (x, y, z) in pixels, rounded up to a multiple of the step"
    )
    target_overlap: tuple[int, int, int] = Field(
        (128, 128, 128), description="overlap of neighbouring sub-views (x, y, z) in pixels, rounded up to the step"
    )
    disable_optimization: bool = Field(
        False, description="True: exactly target_image_size; False: BigStitcher's balancing of the last sub-view"
    )
    add_fake_points: bool = Field(True, description="add corresponding fake points in sub-view overlaps")
    fake_label: str = Field("splitPoints", min_length=1, description="interest-point label of the fake points")
    point_density: float = Field(100.0, ge=0.0, description="fake points per 100x100x100 pixels of overlap")
    min_points: int = Field(20, ge=0, description="fewest fake points per overlap")
    max_points: int = Field(500, ge=0, description="most fake points per overlap")
    error: float = Field(0.5, ge=0.0, description="each copy of a fake point is moved by uniform +-error/2 per axis")
    exclude_radius: float = Field(
        0.0, ge=0.0, description="no fake point within this distance of a real interest point (0: no exclusion)"
    )
    seed: int = Field(23424459, ge=0, description="seed of the fake points (BigStitcher's)")

    @model_validator(mode="after")
    def _check(self):
        if min(self.target_image_size) < 1:
            raise ValueError(f"target_image_size must be positive, got {list(self.target_image_size)}")
        if min(self.target_overlap) < 0:
            raise ValueError(f"target_overlap must not be negative, got {list(self.target_overlap)}")
        if self.min_points > self.max_points:
            raise ValueError(f"min_points ({self.min_points}) is larger than max_points ({self.max_points})")
        return self
