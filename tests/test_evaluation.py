"""registration_error measures alignment up to a global transform."""

import json

import numpy as np
import pytest

from rhapso_gpu.errors import UserError
from rhapso_gpu.evaluation.registration_error import registration_error
from rhapso_gpu.geometry import apply_affine
from rhapso_gpu.synth.tiles import plan_grid, translation_xyz


@pytest.fixture(scope="module")
def grid():
    plans = plan_grid(tiles_xyz=(3, 2, 1), tile_size_xyz=(64, 48, 20), rotation_error_deg=2.0, seed=5)
    truth = {p.view: p.true_xyz for p in plans}
    sizes = {p.view: p.size_xyz for p in plans}
    return truth, sizes


@pytest.mark.parametrize("remove", ["affine", "rigid", "translation", "none"])
def test_truth_against_itself_is_zero(grid, remove):
    truth, sizes = grid
    report = registration_error(truth, truth, sizes, remove=remove)
    assert report.rms < 1e-9 and report.max < 1e-9
    assert all(e.max < 1e-9 for e in report.per_view.values())
    np.testing.assert_allclose(report.global_xyz, np.eye(4), atol=1e-9)


def test_translation_pattern_is_recovered_after_removing_its_mean(grid):
    truth, sizes = grid
    views = sorted(truth)
    offsets = np.array([[2.0, 0, 0], [0, -1.0, 0], [0, 0, 3.0], [1.0, 1.0, 0], [-2.0, 0, 1.0], [0, 0, 0]])
    estimated = {v: translation_xyz(t) @ truth[v] for v, t in zip(views, offsets)}
    report = registration_error(estimated, truth, sizes, remove="translation", points_per_axis=4)
    # Same number of points per view: the removed translation is minus the mean offset.
    expected = np.linalg.norm(offsets - offsets.mean(axis=0), axis=1)
    np.testing.assert_allclose([report.per_view[v].rms for v in views], expected, atol=1e-9)
    np.testing.assert_allclose([report.per_view[v].max for v in views], expected, atol=1e-9)
    np.testing.assert_allclose(report.global_xyz[:3, 3], -offsets.mean(axis=0), atol=1e-9)
    assert report.rms == pytest.approx(np.sqrt(np.mean(expected**2)), abs=1e-9)
    assert report.max == pytest.approx(expected.max(), abs=1e-9)
    assert report.worst_view == views[int(np.argmax(expected))]
    assert report.points_per_view == 64
    # Without removal the raw offsets remain.
    raw = registration_error(estimated, truth, sizes, remove="none")
    np.testing.assert_allclose([raw.per_view[v].rms for v in views], np.linalg.norm(offsets, axis=1), atol=1e-9)
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["per_view"][2] == {
        "timepoint": 0,
        "setup": 2,
        "rms": pytest.approx(expected[2]),
        "max": pytest.approx(expected[2]),
    }
    assert doc["worst_view"] == {"timepoint": 0, "setup": int(np.argmax(expected))}


def test_a_global_transform_is_removed(grid):
    truth, sizes = grid
    views = sorted(truth)
    rng = np.random.default_rng(3)
    offsets = rng.normal(scale=1.5, size=(len(views), 3))
    estimated = {v: translation_xyz(t) @ truth[v] for v, t in zip(views, offsets)}
    base = registration_error(estimated, truth, sizes)
    assert base.rms > 0.5

    g_affine = np.eye(4)
    g_affine[:3, :3] += rng.uniform(-0.1, 0.1, size=(3, 3))
    g_affine[:3, 3] = [40.0, -25.0, 7.0]
    moved = {v: g_affine @ m for v, m in estimated.items()}
    again = registration_error(moved, truth, sizes, remove="affine")
    assert again.rms == pytest.approx(base.rms, rel=1e-9)
    assert again.max == pytest.approx(base.max, rel=1e-9)
    np.testing.assert_allclose(again.global_xyz @ g_affine, base.global_xyz, atol=1e-9)

    angle = np.deg2rad(20.0)
    g_rigid = translation_xyz([5.0, 3.0, -2.0])
    g_rigid[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    rigid_base = registration_error(estimated, truth, sizes, remove="rigid")
    rigid_moved = registration_error({v: g_rigid @ m for v, m in estimated.items()}, truth, sizes, remove="rigid")
    assert rigid_moved.rms == pytest.approx(rigid_base.rms, rel=1e-9)
    assert np.linalg.det(rigid_moved.global_xyz[:3, :3]) == pytest.approx(1.0)
    # A rigid removal cannot absorb a global shear (x += 0.2 y over a grid ~90 px high); affine can.
    shear = np.eye(4)
    shear[0, 1] = 0.2
    sheared = registration_error({v: shear @ m for v, m in estimated.items()}, truth, sizes, remove="rigid")
    assert sheared.rms > rigid_base.rms + 1.0
    sheared_affine = registration_error({v: shear @ m for v, m in estimated.items()}, truth, sizes)
    assert sheared_affine.rms == pytest.approx(base.rms, rel=1e-9)


def test_one_view_is_absorbed_by_the_global_transform(grid):
    truth, sizes = grid
    view = min(truth)
    wrong = translation_xyz([3.0, -4.0, 1.0]) @ truth[view]
    wrong[:3, :3] *= 1.05
    assert registration_error({view: wrong}, {view: truth[view]}, sizes).rms < 1e-9
    assert registration_error({view: wrong}, {view: truth[view]}, sizes, remove="none").rms > 1.0


def test_mismatched_views_and_bad_parameters_are_user_errors(grid):
    truth, sizes = grid
    partial = dict(list(truth.items())[:-1])
    with pytest.raises(UserError, match="tp0/setup5"):
        registration_error(partial, truth, sizes)
    with pytest.raises(UserError, match="remove"):
        registration_error(truth, truth, sizes, remove="similarity")


def test_sample_points_span_each_tile(grid):
    truth, sizes = grid
    view = min(truth)
    scale = np.eye(4)
    scale[0, 0] = 1.01  # 1% scale in x about local 0: the far corner x = size_x - 1 moves most
    estimated = {view: truth[view] @ scale}
    report = registration_error(estimated, {view: truth[view]}, sizes, remove="none", points_per_axis=2)
    corner = [[sizes[view][0] - 1, 0, 0]]
    far = apply_affine(estimated[view], corner) - apply_affine(truth[view], corner)
    assert report.max == pytest.approx(np.linalg.norm(far), rel=1e-9)
    assert report.max == pytest.approx(0.01 * (sizes[view][0] - 1), rel=1e-6)
