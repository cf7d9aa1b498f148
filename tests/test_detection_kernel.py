"""The fused dog_peaks kernel: NumPy twin against known answers, CUDA source emulated on the CPU against the twin."""

import shutil
import sys
import types
import zlib
from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage as ndi

from cpu_fallback.dog_peaks import dog_peaks as twin
from cpu_fallback.gauss3 import gauss3
from cpu_fallback.median import sampled_median
from rhapso_gpu.backend import cupy_backend, get_backend
from rhapso_gpu.backend._registry import resolve_kernel
from rhapso_gpu.backend.kernels import cpu_emulation
from rhapso_gpu.backend.kernels.dog_peaks import SPEC, run_dog_peaks
from rhapso_gpu.detection.background import sample_offsets
from rhapso_gpu.detection.dog import full_kernel, half_kernel
from rhapso_gpu.errors import UserError

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not on PATH: CUDA kernels not emulated")


def emulated(*args, **kw):
    return run_dog_peaks(*args, launch=cpu_emulation.launch, xp=np, **kw)


def all_voxels(v):
    return np.arange(v.size, dtype=np.int64)


def paraboloid(shape, centre_zyx, curvature=(-0.2, -0.3, -0.25)):
    """A quadratic bump: the quadratic fit recovers its centre exactly."""
    grids = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    return sum(c * (g - x0) ** 2 for c, g, x0 in zip(curvature, grids, centre_zyx))


def test_quadratic_peak_is_found_exactly_with_moves():
    # minimum of -bump (a DoG minimum = bright spot) at a sub-pixel position 2 voxels from the start voxel
    centre = (6.3, 7.8, 5.45)
    dog = (-(paraboloid((13, 15, 12), centre, (-0.02, -0.02, -0.02)) + 1.0)).astype(np.float32)
    kind, pos, value = twin(dog, np.array([np.ravel_multi_index((6, 8, 5), dog.shape)]), (1, 1, 1), (11, 13, 10), 0.5)
    assert kind.tolist() == [1]
    np.testing.assert_allclose(pos[0], centre, atol=2e-5)  # float32 DoG values
    np.testing.assert_allclose(value, [-1.0], atol=1e-5)


def test_moves_follow_a_peak_away_from_the_start():
    centre = (6.0, 9.4, 5.0)
    dog = (-(paraboloid((13, 15, 12), centre, (-0.5, -0.01, -0.5)) + 1.0)).astype(np.float32)
    start = np.ravel_multi_index((6, 6, 5), dog.shape)  # not an extremum: the twin tests it and rejects
    assert twin(dog, [start], (1, 1, 1), (11, 13, 10), 0.5)[0].tolist() == [0]
    # the true extremum voxel is found and localised
    kind, pos, _ = twin(dog, all_voxels(dog), (1, 1, 1), (11, 13, 10), 0.5)
    assert (kind == 1).sum() == 1
    np.testing.assert_allclose(pos[kind == 1][0], centre, atol=1e-4)


def test_threshold_third_pretest_and_final_test():
    dog = np.zeros((5, 5, 5), np.float32)
    dog[2, 2, 2] = -0.25
    cand = [np.ravel_multi_index((2, 2, 2), dog.shape)]
    # refined value of a single-voxel dip: a0 + g.offset/2 with g = 0 -> -0.25
    assert twin(dog, cand, (1, 1, 1), (3, 3, 3), 0.24)[0].tolist() == [1]
    assert twin(dog, cand, (1, 1, 1), (3, 3, 3), 0.25)[0].tolist() == [0]  # |value| > t is strict
    assert twin(dog, cand, (1, 1, 1), (3, 3, 3), 0.24, find_max=False)[0].tolist() == [0]
    assert twin(-dog, cand, (1, 1, 1), (3, 3, 3), 0.24, find_max=False, find_min=True)[0].tolist() == [-1]
    dog[2, 2, 2] = -0.1  # below threshold / 3 = 0.125: not even a candidate, whatever the refined value
    assert twin(dog, cand, (1, 1, 1), (3, 3, 3), 0.375)[0].tolist() == [0]


def test_non_strict_neighbour_comparison_keeps_plateaus():
    dog = np.zeros((5, 5, 6), np.float32)
    dog[2, 2, 2:4] = -1.0  # two equal voxels: both are (non-strict) minima
    kind, pos, _ = twin(dog, all_voxels(dog), (1, 1, 1), (3, 3, 4), 0.1)
    assert (kind == 1).sum() == 2
    np.testing.assert_allclose(pos[kind == 1], [[2, 2, 2.5], [2, 2, 2.5]])  # both converge to the same point


def test_border_and_box_reject():
    dog = np.zeros((5, 5, 5), np.float32)
    dog[1, 2, 2] = -1.0
    cand = [np.ravel_multi_index((1, 2, 2), dog.shape)]
    assert twin(dog, cand, (1, 1, 1), (3, 3, 3), 0.1)[0].tolist() == [1]
    assert twin(dog, cand, (2, 1, 1), (3, 3, 3), 0.1)[0].tolist() == [0]
    assert twin(dog, [0, 10**9, -5], (0, 0, 0), (9, 9, 9), 0.1)[0].tolist() == [0, 0, 0]  # outside the array


def test_origin_shifts_positions_only():
    rng = np.random.default_rng(3)
    dog = ndi.gaussian_filter(rng.normal(size=(12, 14, 16)), 1.2).astype(np.float32)
    a = twin(dog, all_voxels(dog), (1, 1, 1), (10, 12, 14), 0.01, True, True)
    b = twin(dog, all_voxels(dog), (1, 1, 1), (10, 12, 14), 0.01, True, True, origin_zyx=(100, -7, 3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(b[1][a[0] != 0] - a[1][a[0] != 0], np.tile([100, -7, 3], ((a[0] != 0).sum(), 1)))


@pytest.mark.parametrize(
    "shape, dtype, message",
    [((4, 4), np.float32, "expected a 3-D"), ((4, 4, 4), np.float64, "must be float32")],
)
@pytest.mark.parametrize("impl", [twin, pytest.param(emulated, marks=needs_gxx)], ids=["twin", "emulated"])
def test_both_reject_the_same_inputs(impl, shape, dtype, message):
    with pytest.raises(UserError, match=message):
        impl(np.zeros(shape, dtype), [0], (1, 1, 1), (2, 2, 2), 0.1)


@needs_gxx
@pytest.mark.parametrize("seed", range(4))
def test_emulated_kernel_matches_twin_on_random_volumes(seed):
    rng = np.random.default_rng(zlib.crc32(b"dog_peaks") + seed)
    shape = tuple(int(n) for n in rng.integers(10, 24, 3))
    dog = ndi.gaussian_filter(rng.normal(size=shape), rng.uniform(0.7, 1.5)).astype(np.float32)
    t = float(dog.std() * rng.uniform(0.5, 2.0))
    cand = np.flatnonzero(np.abs(dog.ravel()) >= t / 3.0)
    lo, hi = tuple(int(v) for v in rng.integers(1, 3, 3)), tuple(n - int(rng.integers(2, 4)) for n in shape)
    origin = tuple(int(v) for v in rng.integers(-50, 50, 3))
    want = twin(dog, cand, lo, hi, t, True, True, origin_zyx=origin)
    got = emulated(dog, cand, lo, hi, t, True, True, origin_zyx=origin)
    assert (want[0] != 0).sum() > 0
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)  # same double arithmetic in the same order: identical bits


@needs_gxx
@pytest.mark.parametrize("threads_per_block, max_blocks", [(32, 2), (1, 3), (7, 1)])
def test_grid_stride_loop_covers_every_candidate(threads_per_block, max_blocks):
    rng = np.random.default_rng(11)
    dog = ndi.gaussian_filter(rng.normal(size=(10, 12, 14)), 1.0).astype(np.float32)
    cand = all_voxels(dog)
    got = emulated(dog, cand, (1, 1, 1), (8, 10, 12), 0.02, True, True, threads_per_block=threads_per_block,
                   max_blocks=max_blocks)
    for g, w in zip(got, twin(dog, cand, (1, 1, 1), (8, 10, 12), 0.02, True, True)):
        np.testing.assert_array_equal(g, w)


def test_spec_is_the_registered_kernel_signature():
    assert SPEC.source == "dog_peaks.cu" and SPEC.params[0].ctype == "const float*"
    assert get_backend("numpy").kernel("dog_peaks") is twin


def test_no_candidates():
    kind, pos, value = twin(np.zeros((4, 4, 4), np.float32), np.zeros(0, np.int64), (1, 1, 1), (2, 2, 2), 0.1)
    assert kind.shape == (0,) and pos.shape == (0, 3) and value.shape == (0,)


@needs_gxx
def test_cupy_implementation_wiring_with_a_cupy_stub(monkeypatch):
    """The registered CuPy implementation with CuPy replaced by a stub whose RawModule runs the CPU emulation.

    Covers the lazy import path, the RawModule source and the marshalled arguments; says nothing about a GPU.
    """
    modules = []

    class StubRawModule:
        def __init__(self, code, options):
            self.code = code
            modules.append(self)

        def get_function(self, name):
            assert name == SPEC.name
            return lambda grid, block, args: cpu_emulation.launch(SPEC, grid, block, args)

    stub = types.ModuleType("cupy")
    stub.RawModule = StubRawModule
    stub.cuda = SimpleNamespace(Device=lambda: SimpleNamespace(id=0))
    for name in ("asarray", "ascontiguousarray", "zeros", "int64", "int8", "float64"):
        setattr(stub, name, getattr(np, name))
    monkeypatch.setitem(sys.modules, "cupy", stub)
    monkeypatch.setattr(cupy_backend, "_MODULES", {})

    rng = np.random.default_rng(21)
    dog = ndi.gaussian_filter(rng.normal(size=(12, 13, 14)), 1.0).astype(np.float32)
    cand = all_voxels(dog)
    got = resolve_kernel("dog_peaks", "cupy")(dog, cand, (1, 1, 1), (10, 11, 12), 0.02, True, True, 10, 0.01, (1, 2, 3))
    want = twin(dog, cand, (1, 1, 1), (10, 11, 12), 0.02, True, True, 10, 0.01, (1, 2, 3))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    source = resources.files("rhapso_gpu.backend.kernels").joinpath("dog_peaks.cu").read_text()
    assert len(modules) == 1 and modules[0].code == source


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 4, 5), (2, 3, 14), (2, 3, 15), (20, 31, 17)])
@pytest.mark.parametrize("sigma", [0.4, 1.2, 2.0814, 4.0])
def test_gauss3_twin_is_scipy_reflect_correlation_to_float32_rounding(shape, sigma):
    """Mirror-double boundary (repeated for axes shorter than the kernel), passes z, y, x, float32 sums."""
    v = np.random.default_rng(zlib.crc32(repr((shape, sigma)).encode())).random(shape, dtype=np.float32)
    want = v
    for axis in range(3):
        want = ndi.correlate1d(want, full_kernel(sigma), axis=axis, mode="reflect", output=np.float32)
    got = gauss3(v, half_kernel(sigma))
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="gauss3: expected a 3-D float32"):
        gauss3(v.astype(np.float64), half_kernel(sigma))


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 4, 5), (2, 30, 17)])
@pytest.mark.parametrize("radius", [1, 2, 3, 10])
def test_sampled_median_twin_equals_scipy_median_filter(shape, radius):
    """A median picks one of its inputs: the networks give exactly SciPy's footprint median (reflect)."""
    v = np.random.default_rng(zlib.crc32(repr((shape, radius)).encode())).random(shape, dtype=np.float32)
    v[..., :2] = 0.5  # ties
    offsets = sample_offsets(radius)
    footprint = np.zeros(2 * radius + 1, bool)
    footprint[offsets + radius] = True
    want = ndi.median_filter(v, footprint=footprint.reshape(1, 1, -1), mode="reflect")
    want = ndi.median_filter(want, footprint=footprint.reshape(1, -1, 1), mode="reflect")
    np.testing.assert_array_equal(sampled_median(v, offsets), want)
    with pytest.raises(UserError, match="an odd number of offsets"):
        sampled_median(v, [0, 1])
