"""Transform models: exact least-squares fits, batched, weighted, degenerate input, regularisation."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from rhapso_gpu.models import MIN_MATCHES, TransformModel, fit_affine, fit_rigid, fit_translation, transform_points


def _random_affine(rng, kind):
    a = Rotation.from_rotvec(rng.normal(0, 0.5, 3)).as_matrix()
    if kind == "affine":
        a = a @ (np.eye(3) + rng.uniform(-0.2, 0.2, (3, 3)))
    if kind == "translation":
        a = np.eye(3)
    return np.concatenate([a, rng.uniform(-50, 50, (3, 1))], axis=1)


@pytest.mark.parametrize("kind", ["translation", "rigid", "affine"])
def test_exact_recovery_batched(kind):
    rng = np.random.default_rng(1)
    truth = np.stack([_random_affine(rng, kind) for _ in range(64)])  # (64, 3, 4)
    src = rng.uniform(0, 100, (64, 20, 3))
    dst = transform_points(truth, src)
    fitted = TransformModel(kind, "none").fit(src, dst)
    assert fitted.shape == (64, 3, 4)
    np.testing.assert_allclose(fitted, truth, atol=1e-9)


def _lstsq_affine(src, dst, w):
    """Reference: weighted least squares of the 12 coefficients with numpy.linalg.lstsq."""
    x = np.concatenate([src, np.ones((len(src), 1))], axis=1) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(x, dst * np.sqrt(w)[:, None], rcond=None)
    return coef.T


def _brute_rigid_cost(m, src, dst, w):
    return (w * ((transform_points(m, src) - dst) ** 2).sum(1)).sum()


def test_weighted_fits_are_least_squares_optima():
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 100, (30, 3))
    dst = transform_points(_random_affine(rng, "affine"), src) + rng.normal(0, 2, (30, 3))
    w = rng.uniform(0.1, 2.0, 30)
    np.testing.assert_allclose(fit_affine(src, dst, w), _lstsq_affine(src, dst, w), atol=1e-9)
    # translation: weighted mean offset
    t = fit_translation(src, dst, w)
    np.testing.assert_allclose(t[:, 3], (w[:, None] * (dst - src)).sum(0) / w.sum(), atol=1e-12)
    # rigid: a proper rotation, and no perturbation of it lowers the weighted cost
    r = fit_rigid(src, dst, w)
    assert np.isclose(np.linalg.det(r[:, :3]), 1.0) and np.allclose(r[:, :3] @ r[:, :3].T, np.eye(3))
    best = _brute_rigid_cost(r, src, dst, w)
    for _ in range(50):
        d = Rotation.from_rotvec(rng.normal(0, 1e-3, 3)).as_matrix()
        m = np.concatenate([d @ r[:, :3], (r[:, 3] + rng.normal(0, 1e-2, 3))[:, None]], axis=1)
        assert _brute_rigid_cost(m, src, dst, w) >= best


def test_zero_weights_ignore_points():
    rng = np.random.default_rng(3)
    truth = _random_affine(rng, "rigid")
    src = rng.uniform(0, 100, (40, 3))
    dst = transform_points(truth, src)
    dst[30:] += 100.0  # garbage, weight 0
    w = np.r_[np.ones(30), np.zeros(10)]
    for kind in ("translation", "rigid", "affine"):
        fitted = TransformModel(kind, "none").fit(src, dst, w)
        if kind != "translation":
            np.testing.assert_allclose(fitted, truth, atol=1e-9)


def test_rigid_never_reflects():
    rng = np.random.default_rng(4)
    src = rng.uniform(0, 10, (10, 3))
    dst = src * np.array([1, 1, -1])  # a mirror image: the best proper rotation, not the reflection
    r = fit_rigid(src, dst)
    assert np.isclose(np.linalg.det(r[:, :3]), 1.0)


def test_degenerate_samples_give_nan_not_errors():
    src = np.zeros((2, 4, 3))
    src[0] = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]]  # coplanar: affine undetermined
    src[1] = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    fitted = fit_affine(src, src + 1.0)
    assert np.isnan(fitted[0]).all()
    np.testing.assert_allclose(fitted[1], np.c_[np.eye(3), np.ones(3)], atol=1e-12)


def test_regularised_affine_blends_coefficients():
    rng = np.random.default_rng(5)
    src = rng.uniform(0, 100, (25, 3))
    dst = transform_points(_random_affine(rng, "affine"), src) + rng.normal(0, 1, (25, 3))
    model = TransformModel("affine", "rigid", 0.3)
    expected = 0.7 * fit_affine(src, dst) + 0.3 * fit_rigid(src, dst)
    np.testing.assert_allclose(model.fit(src, dst), expected, atol=1e-12)
    assert model.min_matches == 4
    assert TransformModel("rigid", "identity", 0.5).min_matches == MIN_MATCHES["rigid"]
    np.testing.assert_allclose(
        TransformModel("translation", "identity", 0.25).fit(src, src + 4.0), np.c_[np.eye(3), np.full(3, 3.0)]
    )
    with pytest.raises(ValueError):
        TransformModel("similarity")
