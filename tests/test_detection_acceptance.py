"""Acceptance of DoG detection on synth bead data: recall, precision, localisation error; determinism.

Truth: the true bead centres mapped into each view's full-resolution local
pixels with the TRUE pose (``inv(true_affine) @ world``).

* Recall counts the beads inside the processed region (at least two
  downsampled voxels from every border) that are **resolvable** at the
  downsampling: no other bead within ``max(5, 3.75 dsxy)`` world px (two
  beads 2.5 downsampled voxels apart merge into one DoG blob; synth places
  beads at least 5 world px apart, so at dsxy = 1 every bead counts).
* Precision counts detections that lie near any true bead (resolvable or not).
* A match is the nearest bead within ``max(2, 1.5 dsxy)`` full-resolution px;
  the RMS is over matched resolvable beads, in full-resolution pixels.
"""

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from rhapso_gpu.detection import DetectParams, detect_interest_points
from rhapso_gpu.geometry import apply_affine
from rhapso_gpu.io.ground_truth import load_ground_truth
from rhapso_gpu.io.spimdata_xml import load_spimdata
from rhapso_gpu.scheduler import open_cluster
from rhapso_gpu.synth.dataset import SynthParams, generate_dataset


@pytest.fixture(scope="module")
def beads(tmp_path_factory):
    out = tmp_path_factory.mktemp("beads")
    with open_cluster("synchronous") as cluster:
        generate_dataset(
            str(out), SynthParams(content="beads", tiles=(2, 1, 1), tile_size=(160, 160, 64), seed=1), cluster, "numpy"
        )
    return load_spimdata(str(out / "dataset.xml")), load_ground_truth(str(out / "ground_truth.json"))


def score(spim, truth, result):
    """Recall, precision, RMS (full-res px) and the number of true beads, over all views."""
    world = truth.beads_world_xyz
    nearest, _ = cKDTree(world).query(world, k=2)
    spacing = nearest[:, 1]
    found, correct, errors = [], [], []
    for view, points in result.views.items():
        local = apply_affine(np.linalg.inv(truth.true_affines[view]), world)
        size = np.asarray(spim.setups[view.setup].size_xyz)
        f = np.asarray(points.plan.factors_xyz)
        near = np.all((local >= -3) & (local <= size + 2), axis=1)
        inside = np.all((local >= 2 * f) & (local <= size - 1 - 2 * f), axis=1) & (spacing >= max(5, 3.75 * f[0]))
        tolerance = max(2.0, 1.5 * f[0])
        d, _ = cKDTree(local[near]).query(points.loc_xyz)
        correct.append(d < tolerance)
        d, _ = cKDTree(points.loc_xyz).query(local[inside])
        found.append(d < tolerance)
        errors.append(d[d < tolerance])
    found, correct, errors = (np.concatenate(a) for a in (found, correct, errors))
    return found.mean(), correct.mean(), float(np.sqrt(np.mean(errors**2))), len(found)


@pytest.mark.parametrize(
    "settings",
    [
        {"dsxy": 1, "dsz": 1},  # sigma 1.8 (default) for beads of sigma 1.8 x 1.8 x 1.0 px
        {"dsxy": 4, "dsz": 2, "sigma": 1.2},  # beads are about 0.5 downsampled px wide here
    ],
    ids=["ds1-1", "ds4-2"],
)
def test_recall_precision_and_rms_on_synth_beads(beads, settings):
    spim, truth = beads
    with open_cluster("threads", n_workers=2) as cluster:
        result = detect_interest_points(spim, DetectParams(**settings), cluster, "numpy")
    recall, precision, rms, n = score(spim, truth, result)
    print(f"{settings}: {n} true beads, recall {recall:.3f}, precision {precision:.3f}, RMS {rms:.3f} px")
    assert n > 100
    assert recall >= 0.95 and precision >= 0.95 and rms < 0.3


def test_same_points_in_the_same_order_for_any_workers_and_blocks(beads):
    spim, _ = beads
    params = DetectParams(dsxy=2, dsz=1, threshold=0.01, find="both", median_filter=2, block_size=(40, 48, 24))
    runs = []
    for spec, workers in [("synchronous", 1), ("threads", 2), ("threads", 1)]:
        with open_cluster(spec, n_workers=workers) as cluster:
            runs.append(detect_interest_points(spim, params, cluster, "numpy"))
    with open_cluster("threads", n_workers=2) as cluster:
        one_block = detect_interest_points(spim, params.model_copy(update={"block_size": (512, 512, 512)}), cluster)
    runs.append(one_block)
    first = runs[0]
    assert sum(len(v.loc_xyz) for v in first.views.values()) > 100
    assert first.views[spim.view_ids()[0]].n_blocks > 4 and one_block.views[spim.view_ids()[0]].n_blocks == 1
    for other in runs[1:]:
        for view, points in first.views.items():
            np.testing.assert_array_equal(other.views[view].loc_xyz, points.loc_xyz)
            np.testing.assert_array_equal(other.views[view].intensity, points.intensity)


def test_same_points_on_a_distributed_cluster(beads):
    spim, _ = beads
    params = DetectParams(dsxy=2, dsz=1, block_size=(40, 48, 24))
    with open_cluster("threads", n_workers=1) as cluster:
        local = detect_interest_points(spim, params, cluster)
    with open_cluster("local", n_workers=2) as cluster:
        distributed = detect_interest_points(spim, params, cluster)
    for view, points in local.views.items():
        np.testing.assert_array_equal(distributed.views[view].loc_xyz, points.loc_xyz)


def test_fixture_is_moderate_noise(beads):
    """The data are the synth defaults: Poisson noise on a background of 100 counts."""
    spim, truth = beads
    assert truth.params["noise"] is True and Path(spim.location).name == "dataset.xml"
