"""Border localisation (rhapso_gpu.detection.border): Gaussian refits of peaks cut by the image border."""

import numpy as np
import pytest

from rhapso_gpu.backend import get_backend, gpu_available
from rhapso_gpu.detection.blocks import BlockTask, detect_block
from rhapso_gpu.detection.border import near_border, refine_border_peaks
from rhapso_gpu.detection.downsampling import DownsamplePlan

GPU_OK, GPU_REASON = gpu_available()
SHAPE = (20, 40, 40)
SIGMA = (1.0, 1.3, 1.3)
"""Bead width (voxels, z, y, x)."""


def beads_image(centres_zyx, shape=SHAPE, sigma=SIGMA, background=0.05):
    """Noise-free Gaussian beads (peak 1) sampled at voxel centres, float32 (z, y, x)."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    image = np.full(shape, background)
    for c in centres_zyx:
        image += np.exp(-0.5 * (((grid - np.asarray(c)) / np.asarray(sigma)) ** 2).sum(axis=-1))
    return image.astype(np.float32)


def test_refit_finds_centres_of_beads_cut_by_the_border():
    centres = np.array([[0.3, 20.2, 19.6], [1.4, 8.3, 30.1], [18.8, 30.4, 10.7], [10.2, 38.9, 20.3], [10.0, 20.0, 20.0]])
    image = beads_image(centres)
    start = np.rint(centres) + 0.25  # whatever the quadratic fit said, within a voxel
    position, keep = refine_border_peaks(np, image, start, (0, 0, 0), SHAPE)
    assert keep.all()
    border = np.asarray(near_border(centres, SHAPE))
    assert border.tolist() == [True, True, True, True, False]
    np.testing.assert_allclose(position[border], centres[border], atol=0.01)
    np.testing.assert_array_equal(position[~border], start[~border])  # inside: BigStitcher's localisation stays


def test_refit_drops_beads_centred_outside_and_keeps_unfittable_peaks():
    image = beads_image([[-0.9, 20.0, 20.0]])
    position, keep = refine_border_peaks(np, image, np.array([[0.4, 20.0, 20.0]]), (0, 0, 0), SHAPE)
    assert not keep[0]  # the bead's centre lies outside this image: another view localises it
    flat = np.full(SHAPE, 0.1, np.float32)
    start = np.array([[1.2, 20.0, 20.0]])
    position, keep = refine_border_peaks(np, flat, start, (0, 0, 0), SHAPE)
    assert keep[0] and np.array_equal(position, start)  # no bead to fit: the quadratic position is kept


def test_block_detection_near_the_border_is_unbiased():
    """The DoG's mirror boundary pulls beads near the border off (here by 0.15 and 0.55 voxels); the refit does not."""
    centres = np.array([[1.6, 15.3, 12.6], [9.7, 2.0, 20.4], [10.3, 20.5, 37.5], [10.3, 20.5, 10.0]])
    image = beads_image(centres) * 1000.0
    plan = DownsamplePlan(0, (1, 1, 1), (0, 0, 0), SHAPE, SHAPE)
    full = ((0, 0, 0), SHAPE)
    task = BlockTask(*full, *full, *full, plan, 1.8, 0.01, True, False, 0.0, 1000.0)
    found = detect_block(image, task)["position_zyx"]
    errors = np.linalg.norm(found[:, None, :] - centres[None, :, :], axis=-1)
    assert set(errors.argmin(axis=1).tolist()) == {0, 1, 2, 3}  # every bead, nothing else
    assert errors.min(axis=1).max() < 0.02, errors.min(axis=1)


@pytest.mark.skipif(not GPU_OK, reason=f"no usable CUDA GPU: {GPU_REASON}")
def test_refit_is_the_same_on_the_gpu():
    backend = get_backend("cupy")
    centres = np.array([[0.3, 20.2, 19.6], [1.4, 8.3, 30.1]])
    image = beads_image(centres)
    start = np.rint(centres)
    expected, _ = refine_border_peaks(np, image, start, (0, 0, 0), SHAPE)
    got, _ = refine_border_peaks(backend.xp, backend.asarray(image), backend.asarray(start), (0, 0, 0), SHAPE)
    np.testing.assert_allclose(backend.to_host(got), expected, atol=1e-6)
