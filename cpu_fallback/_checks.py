"""Input checks shared by the CPU twins."""

from __future__ import annotations

import numpy as np

from rhapso_gpu.errors import UserError


def float32_volume(volume_zyx, kernel: str) -> np.ndarray:
    """``volume_zyx`` as a C-contiguous 3-D float32 (z, y, x) array, or a UserError naming ``kernel``."""
    volume = np.ascontiguousarray(volume_zyx)
    if volume.ndim != 3 or volume.dtype != np.float32:
        raise UserError(f"{kernel}: expected a 3-D float32 (z, y, x) volume, got {volume.dtype} {volume.shape}")
    return volume
