"""Fusion of synthetic datasets with their TRUE registrations against the ground-truth specimen."""

import numpy as np
import pytest
import scipy.ndimage as ndi
import zarr

from rhapso_gpu.backend import get_backend
from rhapso_gpu.fusion.params import FuseParams
from rhapso_gpu.fusion.run import fuse_dataset
from rhapso_gpu.geometry import view_box_world
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.spimdata import ViewId, ViewTransform
from rhapso_gpu.io.spimdata_xml import load_spimdata, save_spimdata
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import SynthParams, _plans_and_specimen, generate_dataset
from rhapso_gpu.synth.specimen import render_region

PSF_SIGMA_XYZ = (1.0, 1.0, 0.7)  # render_tile's default, in tile pixels


def synth_with_truth(folder, params: SynthParams):
    """Generate a dataset and an XML holding the TRUE registrations; return it loaded."""
    with open_cluster("synchronous") as cluster:
        generate_dataset(str(folder), params, cluster, "numpy")
    spim = load_spimdata(str(folder / "dataset.xml"))
    truth = load_ground_truth(str(folder / "ground_truth.json"))
    for view in spim.registrations:
        spim.registrations[view] = [ViewTransform.from_matrix("truth", truth.true_affines[view])]
    save_spimdata(spim, str(folder / "true.xml"))
    return load_spimdata(str(folder / "true.xml"))


def fused(spim, location, **params):
    with open_cluster("threads", n_workers=2) as cluster:
        fuse_dataset(spim, str(location), FuseParams(chunk_size=(64, 64, 64), **params), cluster, "numpy")
    attrs = zarr.open_group(str(location), mode="r").attrs["rhapso-gpu"]
    return np.asarray(zarr.open_array(str(location / "0"), mode="r"))[0, 0], attrs


def ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_avg_blend_matches_the_blurred_specimen(tmp_path):
    params = SynthParams(tiles=(2, 2, 1), tile_size=(96, 96, 32), voxel_size=(1, 1, 2), rotation_error=1.0, seed=1)
    spim = synth_with_truth(tmp_path, params)
    volume, attrs = fused(spim, tmp_path / "fused.zarr")
    _, specimen, _ = _plans_and_specimen(params)
    origin = np.asarray(attrs["bounding_box_min_world_xyz"])
    truth = render_region(specimen, origin, volume.shape, get_backend("numpy"))
    # the tiles' PSF in world pixels: tile pixels are scaled by the calibration (1, 1, 2); rotations are 1 degree
    sigma_zyx = (PSF_SIGMA_XYZ[2] * 2, PSF_SIGMA_XYZ[1], PSF_SIGMA_XYZ[0])
    truth = ndi.gaussian_filter(truth, sigma_zyx, mode="constant", truncate=4.0)
    covered = ndi.binary_erosion(volume > 0, iterations=3)  # inside the views, away from the zero-weight rim
    assert covered.mean() > 0.6
    score = ncc(volume[covered], truth[covered])
    assert score >= 0.98, score


@pytest.fixture(scope="module")
def gain_pair(tmp_path_factory):
    """Two tiles along x; tile 1's images are 25% brighter (an illumination difference), TRUE registrations."""
    folder = tmp_path_factory.mktemp("seam")
    params = SynthParams(tiles=(2, 1, 1), tile_size=(96, 80, 24), voxel_size=(1, 1, 2), seed=2, levels=1)
    spim = synth_with_truth(folder, params)
    image = zarr.open_array(str(folder / "dataset.ome.zarr" / "s1-t0.zarr" / "0"), mode="r+")
    image[...] = np.rint(image[...] * 1.25).astype(np.uint16)
    return folder, spim


def edge_steps(volume, attrs, spim):
    """Intensity step across the two overlap borders along x, and the adjacent-plane steps elsewhere.

    Plane means over the y-z extent both tiles share; the step across a border is the difference of the
    two planes around it; elsewhere the same difference measures content and noise (the level to beat).
    """
    lo0, hi0 = view_box_world(spim, ViewId(0, 0))
    lo1, hi1 = view_box_world(spim, ViewId(0, 1))
    origin = np.asarray(attrs["bounding_box_min_world_xyz"])
    y0, z0 = (int(np.ceil(max(lo0[d], lo1[d]) - origin[d])) + 2 for d in (1, 2))
    y1, z1 = (int(np.floor(min(hi0[d], hi1[d]) - origin[d])) - 2 for d in (1, 2))
    profile = volume[z0:z1, y0:y1].mean(axis=(0, 1))
    steps = np.abs(np.diff(profile))
    borders = [int(np.floor(lo1[0] - origin[0])), int(np.floor(hi0[0] - origin[0]))]
    interior = np.ones(steps.size, bool)
    interior[:3] = interior[-3:] = False  # the outer rim of the volume has weight 0
    for b in borders:
        interior[b - 2 : b + 3] = False
    return steps[borders], steps[interior]


def test_avg_blend_has_no_seams_above_noise(gain_pair, tmp_path):
    _, spim = gain_pair
    volume, attrs = fused(spim, tmp_path / "blend.zarr", fusion="avg-blend")
    at_borders, elsewhere = edge_steps(volume, attrs, spim)
    noise = np.median(elsewhere)
    assert np.all(at_borders < 1.5 * noise), (at_borders, noise)
    # the measure does see seams: plain averaging steps by ~a tenth of the 25% gain at each border
    volume, attrs = fused(spim, tmp_path / "avg.zarr", fusion="avg")
    at_borders, elsewhere = edge_steps(volume, attrs, spim)
    assert np.all(at_borders > 4 * np.median(elsewhere)), (at_borders, np.median(elsewhere))
