"""Parameters of ``rhapso-gpu fuse`` (the same names in YAML, ``--set key=value`` and options)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cpu_fallback.fusion import FUSION_TYPES

FusionType = Literal[FUSION_TYPES]  # the kernel's fusion types, in its order

OUTPUT_MAX = {"uint8": 255.0, "uint16": 65535.0}


class FuseParams(BaseModel):
    """What to fuse and how. Sizes are in output voxels, xyz order."""

    model_config = ConfigDict(extra="forbid")

    fusion: FusionType = Field("avg-blend", description="fusion type")
    data_type: Literal["uint8", "uint16", "float32"] = Field("float32", description="output voxel type")
    min_intensity: float | None = Field(None, description="input value mapped to 0 (uint8/uint16; default 0)")
    max_intensity: float | None = Field(
        None, description="input value mapped to the type's maximum (uint8/uint16; default 255 or 65535)"
    )
    bounding_box: str | None = Field(None, description="name of an XML <BoundingBox> (default: all selected views)")
    preserve_anisotropy: bool = Field(False, description="keep the z spacing of the input (output z step > 1)")
    anisotropy_factor: float | None = Field(
        None, gt=0, description="z step in world pixels with preserve_anisotropy (default: mean over views)"
    )
    downsampling: int = Field(1, ge=1, description="output voxel = this many world pixels per axis")
    blending_range: float = Field(40.0, ge=0, description="cosine ramp width in output pixels (avg-blend)")
    blending_border: float = Field(0.0, ge=0, description="ignored margin at view edges in output pixels")
    chunk_size: tuple[int, int, int] = Field((128, 128, 128), description="output chunk (x, y, z) in voxels")
    block_scale: tuple[int, int, int] = Field((2, 2, 1), description="chunks (or shards) per task (x, y, z)")
    ngff_version: Literal["0.4", "0.5"] = Field("0.4", description="OME-NGFF 0.4 (zarr v2) or 0.5 (zarr v3)")
    shard_chunks: tuple[int, int, int] | None = Field(
        None, description="NGFF 0.5 only: chunks per shard (x, y, z); default no sharding"
    )
    timepoints: list[int] | None = Field(None, description="time points to fuse (default all)")
    channels: list[int] | None = Field(None, description="channel ids to fuse, one output channel each (default all)")
    illuminations: list[int] | None = Field(None, description="illumination ids to include (default all)")
    tiles: list[int] | None = Field(None, description="tile ids to include (default all)")
    angles: list[int] | None = Field(None, description="angle ids to include (default all)")

    @model_validator(mode="after")
    def _check(self) -> FuseParams:
        if min(self.chunk_size) < 1 or min(self.block_scale) < 1:
            raise ValueError("chunk_size and block_scale must be positive")
        if self.shard_chunks is not None and (min(self.shard_chunks) < 1 or self.ngff_version != "0.5"):
            raise ValueError("shard_chunks must be positive and needs ngff_version 0.5 (zarr v3)")
        if self.data_type != "float32":
            lo, hi = self.intensity_range()
            if not hi > lo:
                raise ValueError(f"max_intensity ({hi}) must be greater than min_intensity ({lo})")
        return self

    def intensity_range(self) -> tuple[float, float]:
        """``(min, max)`` input values mapped to 0 and the output type's maximum."""
        lo = 0.0 if self.min_intensity is None else float(self.min_intensity)
        hi = OUTPUT_MAX.get(self.data_type, 1.0) if self.max_intensity is None else float(self.max_intensity)
        return lo, hi
