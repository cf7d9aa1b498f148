"""The downsample_mean kernel: NumPy twin by hand, CUDA source emulated on the CPU vs the twin."""

import itertools
import shutil
import sys
import types
import zlib
from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest

from cpu_fallback.kernels import DOWNSAMPLE_MEAN_DTYPES
from cpu_fallback.kernels import downsample_mean as twin
from rhapso_gpu.backend import cupy_backend, downsample_mean
from rhapso_gpu.backend.kernels import cpu_emulation
from rhapso_gpu.backend.kernels.downsample import SPEC_BY_DTYPE, launch_config, run_downsample_mean
from rhapso_gpu.backend.kernels.spec import KernelSpec, Param, all_specs
from rhapso_gpu.errors import UserError

needs_gxx = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ not on PATH: CUDA kernels not emulated on the CPU"
)


def emulated(volume, factors, **launch_geometry):
    """The .cu kernel compiled as C++ and run over its whole launch grid."""
    return run_downsample_mean(volume, factors, launch=cpu_emulation.launch, xp=np, **launch_geometry)


def random_volume(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.uniform(-1000, 1000, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, shape, endpoint=True, dtype=dtype)


# --- NumPy twin against hand-computed values ---------------------------------------------------


def test_twin_rounds_half_up_uint16():
    # Four 2x2x2 blocks along x with sums 4, 11, 13, 20: means 0.5, 1.375, 1.625, 2.5.
    v = np.zeros((2, 2, 8), np.uint16)
    v[0, 0, 0:2] = [4, 0]
    v[0, 0, 2:4] = [5, 6]
    v[1, 1, 4:6] = [6, 7]
    v[:, :, 6:8] = [[[2, 3], [2, 3]], [[2, 3], [2, 3]]]
    out = twin(v, (2, 2, 2))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[[1, 1, 2, 3]]])


def test_twin_drops_trailing_remainder():
    z, y, x = np.meshgrid(np.arange(3), np.arange(5), np.arange(4), indexing="ij")
    v = (100 * z + 10 * y + x).astype(np.uint16)  # shape (3, 5, 4)
    out = twin(v, (2, 2, 3))
    # blocks z 0-1, y 0-1 | 2-3, x 0-2: mean = 100 * 0.5 + 10 * (2j + 0.5) + 1
    assert out.shape == (1, 2, 1)
    np.testing.assert_array_equal(out[:, :, 0], [[56, 76]])
    np.testing.assert_array_equal(twin(v.astype(np.float32), (2, 2, 3))[:, :, 0], [[56.0, 76.0]])


def test_twin_negative_ties_round_up():
    v = np.array([[[-3, -2, -3, -4, 32767, 32767, -32768, -32767]]], np.int16)
    np.testing.assert_array_equal(twin(v, (1, 1, 2)), [[[-2, -3, 32767, -32767]]])


def test_twin_float_stays_float():
    v = np.array([[[1.0, 2.0, 0.25, 0.5]]], np.float32)
    out = twin(v, (1, 1, 2))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[1.5, 0.375]]])


def test_twin_saturated_uint8_and_identity():
    v = np.full((4, 4, 4), 255, np.uint8)
    np.testing.assert_array_equal(twin(v, (4, 4, 4)), [[[255]]])
    r = random_volume(np.random.default_rng(1), (3, 4, 5), np.uint16)
    np.testing.assert_array_equal(twin(r, (1, 1, 1)), r)


# --- the shared contract ---------------------------------------------------------------------

BAD_REQUESTS = [
    ((4, 4), np.uint16, (2, 2, 2), "expected a 3-D"),
    ((4, 4, 4), np.float64, (2, 2, 2), "voxel type float64 is not supported"),
    ((4, 4, 4), np.uint16, (2, 2), "expected 3 factors"),
    ((4, 4, 4), np.uint16, (2, 0, 2), "factor on axis y must be >= 1"),
    ((4, 4, 4), np.uint16, (2.0, 2, 2), "factor on axis z must be an integer"),
    ((4, 4, 4), np.uint16, (2, 2, True), "factor on axis x must be an integer"),
    ((4, 3, 4), np.uint16, (2, 4, 2), "factor 4 on axis y exceeds the volume size 3"),
]


@pytest.mark.parametrize("impl", [twin, pytest.param(emulated, marks=needs_gxx)], ids=["twin", "emulated"])
@pytest.mark.parametrize("shape, dtype, factors, message", BAD_REQUESTS)
def test_both_implementations_reject_the_same_inputs(impl, shape, dtype, factors, message):
    with pytest.raises(UserError, match=message) as err:
        impl(np.zeros(shape, dtype), factors)
    assert str(err.value).startswith("downsample_mean: ") and "\n" not in str(err.value)


def test_specs_cover_the_contract():
    assert set(SPEC_BY_DTYPE) == set(DOWNSAMPLE_MEAN_DTYPES)
    kernels = resources.files("rhapso_gpu.backend.kernels")
    for spec in all_specs():
        assert kernels.joinpath(spec.source).is_file()
        assert spec.params[0].is_pointer and spec.params[0].is_const


def test_launch_config():
    assert launch_config(1000) == ((4, 1, 1), (256, 1, 1))
    assert launch_config(10**12) == ((1 << 16, 1, 1), (256, 1, 1))
    assert launch_config(7, threads_per_block=7) == ((1, 1, 1), (7, 1, 1))


# --- the CUDA source, emulated on the CPU, against the twin ------------------------------------

SHAPES = [(1, 1, 1), (7, 9, 11), (16, 16, 16), (33, 20, 47)]
FACTORS = [(1, 1, 1), (2, 2, 2), (3, 2, 5), (1, 4, 2), (7, 9, 11)]
CASES = [
    (shape, factors)
    for shape, factors in itertools.product(SHAPES, FACTORS)
    if all(f <= n for f, n in zip(factors, shape))
]


@needs_gxx
@pytest.mark.parametrize("dtype", [d.name for d in DOWNSAMPLE_MEAN_DTYPES])
@pytest.mark.parametrize("shape, factors", CASES, ids=[f"{s}-{f}" for s, f in CASES])
def test_emulated_kernel_matches_twin(shape, factors, dtype):
    v = random_volume(np.random.default_rng(zlib.crc32(repr((shape, factors, dtype)).encode())), shape, dtype)
    got, want = emulated(v, factors), twin(v, factors)
    assert got.shape == want.shape == tuple(n // f for n, f in zip(shape, factors))
    assert got.dtype == want.dtype == v.dtype
    if v.dtype.kind == "f":  # same float32 sum, different order: at most n * eps * max|v| apart
        atol = np.prod(factors) * np.finfo(np.float32).eps * float(np.abs(v).max())
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)
    else:  # integer block sums below 2**24 are exact in float32: bit-identical
        np.testing.assert_array_equal(got, want)


@needs_gxx
def test_emulated_ties_round_half_up():
    v = np.arange(256, dtype=np.uint8).reshape(4, 8, 8)  # every pair along x averages to k + 0.5
    out = emulated(v, (1, 1, 2))
    np.testing.assert_array_equal(out, twin(v, (1, 1, 2)))
    np.testing.assert_array_equal(out.ravel(), np.arange(1, 256, 2))


@needs_gxx
@pytest.mark.parametrize("threads_per_block, max_blocks", [(32, 3), (7, 1), (1, 5)])
def test_grid_stride_loop_covers_every_output(threads_per_block, max_blocks):
    v = random_volume(np.random.default_rng(5), (9, 10, 11), np.uint16)
    out = emulated(v, (2, 3, 2), threads_per_block=threads_per_block, max_blocks=max_blocks)
    np.testing.assert_array_equal(out, twin(v, (2, 3, 2)))


@needs_gxx
def test_non_contiguous_input():
    v = random_volume(np.random.default_rng(6), (12, 10, 14), np.int16)
    view = v.transpose(0, 2, 1)[::-1, 1:, :]
    np.testing.assert_array_equal(emulated(view, (2, 3, 2)), twin(view, (2, 3, 2)))


@needs_gxx
def test_emulator_checks_arguments():
    spec = SPEC_BY_DTYPE[np.dtype(np.uint16)]
    src = np.zeros((2, 2, 2), np.uint16)
    dst = np.zeros((1, 1, 1), np.uint16)
    geometry = (2, 2, 1, 1, 1, 2, 2, 2)
    with pytest.raises(TypeError, match="expected 10 arguments"):
        cpu_emulation.launch(spec, (1, 1, 1), (1, 1, 1), (src, dst))
    with pytest.raises(TypeError, match="dst must be a C-contiguous uint16 array"):
        cpu_emulation.launch(spec, (1, 1, 1), (1, 1, 1), (src, dst.astype(np.float32), *geometry))
    dst.flags.writeable = False
    with pytest.raises(ValueError, match="dst is written by the kernel but is read-only"):
        cpu_emulation.launch(spec, (1, 1, 1), (1, 1, 1), (src, dst, *geometry))
    with pytest.raises(OverflowError):
        cpu_emulation.launch(spec, (1, 1, 1), (1, 1, 1), (src, dst, *geometry[:-1], 2**40))


@needs_gxx
def test_emulator_rejects_a_spec_that_differs_from_the_source():
    good = SPEC_BY_DTYPE[np.dtype(np.float32)]
    wrong = KernelSpec(good.source, good.name, good.params[:-1] + (Param("long long", "fx"),))
    with pytest.raises(RuntimeError, match="the signature of downsample_mean_f32 differs from its KernelSpec"):
        cpu_emulation.build_library(good.source, (wrong,))


def test_emulator_without_gxx_says_so(monkeypatch):
    monkeypatch.setenv("PATH", "")
    monkeypatch.setattr(cpu_emulation, "_LIBRARIES", {})
    with pytest.raises(cpu_emulation.EmulatorUnavailable, match=r"^CPU emulation of CUDA kernels needs g\+\+ on PATH"):
        emulated(np.zeros((2, 2, 2), np.uint8), (2, 2, 2))


def test_spec_rejects_unmarshallable_c_type():
    with pytest.raises(ValueError, match="no launcher can marshal C type 'size_t'"):
        Param("size_t", "n")


# --- the CuPy path ---------------------------------------------------------------------------


def test_public_function_dispatches_on_array_type(backend):
    v = random_volume(np.random.default_rng(7), (8, 6, 10), np.uint16)
    out = downsample_mean(backend.asarray(v), (2, 3, 2))
    assert type(out) is type(backend.asarray(v))
    np.testing.assert_array_equal(backend.to_host(out), twin(v, (2, 3, 2)))


def test_public_function_with_named_backend():
    v = random_volume(np.random.default_rng(8), (4, 4, 4), np.float32)
    np.testing.assert_array_equal(downsample_mean(v, (2, 2, 2), backend="numpy"), twin(v, (2, 2, 2)))


@needs_gxx
def test_cupy_launcher_wiring_with_a_cupy_stub(monkeypatch):
    """The CuPy launcher's own logic, with CuPy replaced by a stub whose RawModule runs the CPU emulation.

    Covers what differs from the emulated path: the RawModule source and options,
    the per-device module cache and the marshalled argument types. Says nothing
    about a real GPU.
    """
    modules, calls, device = [], [], SimpleNamespace(id=0)

    class StubRawModule:
        def __init__(self, code, options):
            self.code, self.options = code, options
            modules.append(self)

        def get_function(self, name):
            spec = next(s for s in all_specs() if s.name == name)

            def kernel(grid, block, args):
                calls.append((name, grid, block, [type(a) for a in args]))
                cpu_emulation.launch(spec, grid, block, args)

            return kernel

    stub = types.ModuleType("cupy")
    stub.RawModule = StubRawModule
    stub.cuda = SimpleNamespace(Device=lambda: device)
    stub.asarray, stub.ascontiguousarray, stub.empty = np.asarray, np.ascontiguousarray, np.empty
    monkeypatch.setitem(sys.modules, "cupy", stub)
    monkeypatch.setattr(cupy_backend, "_MODULES", {})

    v = random_volume(np.random.default_rng(9), (6, 8, 10), np.uint16)
    np.testing.assert_array_equal(cupy_backend.downsample_mean(v, (2, 2, 2)), twin(v, (2, 2, 2)))
    cupy_backend.downsample_mean(v, (3, 4, 5))
    device.id = 1
    cupy_backend.downsample_mean(v, (2, 2, 2))

    source = resources.files("rhapso_gpu.backend.kernels").joinpath("downsample_mean.cu").read_text()
    assert len(modules) == 2  # one per device, reused across launches
    assert all(m.code == source and m.options == ("-std=c++17",) for m in modules)
    name, grid, block, arg_types = calls[0]
    assert (name, grid, block) == ("downsample_mean_u16", (1, 1, 1), (256, 1, 1))
    assert arg_types == [np.ndarray, np.ndarray] + [np.int64] * 5 + [np.int32] * 3
