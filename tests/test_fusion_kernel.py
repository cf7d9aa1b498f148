"""The fuse_block kernel: CPU twin against known answers and a NumPy statement, CUDA source emulated against the twin."""

import re
import shutil
import sys
import types
from dataclasses import replace
from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.ndimage

from cpu_fallback.fusion import (
    BLEND_LUT,
    FUSION_TYPES,
    PACKED_DTYPES,
    FusionView,
    fuse_block,
    packed_dtype,
    plan_fuse_block,
)
from rhapso_gpu.backend import get_backend
from rhapso_gpu.backend.kernels import cpu_emulation
from rhapso_gpu.backend.kernels.fusion import FUSE_BLOCK_SPEC, fuse_block_cupy, run_fuse_block
from rhapso_gpu.backend.kernels.spec import all_specs
from rhapso_gpu.errors import UserError

needs_gxx = pytest.mark.skipif(
    shutil.which("g++") is None, reason="g++ not on PATH: CUDA kernels not emulated on the CPU"
)


def emulated(shape, fusion, views, **geometry):
    return run_fuse_block(shape, fusion, views, launch=cpu_emulation.launch, xp=np, **geometry)


def fn(t):
    """BigStitcher's cosine ramp as it evaluates it: the 31-entry table, interpolated linearly."""
    return np.interp(np.asarray(t, float) * 30, np.arange(31), BLEND_LUT.astype(float))


def test_blend_table_is_the_cosine_ramp_and_matches_the_cuda_source():
    t = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(fn(t), (np.cos((1 - t) * np.pi) + 1) / 2, atol=7e-4)
    assert BLEND_LUT[0] == 0 and BLEND_LUT[15] == 0.5 and BLEND_LUT[30] == 1
    source = resources.files("rhapso_gpu.backend.kernels").joinpath("fuse_block.cu").read_text()
    table = re.search(r"fuse_blend_lut\[[^]]*\] = \{([^}]*)\}", source).group(1)
    values = np.array([float(v.strip().rstrip("f")) for v in table.split(",")], dtype=np.float32)
    np.testing.assert_array_equal(values, BLEND_LUT)


def translation_view(region, shift_xyz, blend_xyz=(0, 0, 0)):
    """A view whose region pixel = block voxel - shift, support = the whole region."""
    a = np.zeros((3, 4))
    a[:, :3] = np.eye(3)
    a[:, 3] = -np.asarray(shift_xyz, float)
    size_xyz = np.asarray(region.shape[::-1], float)
    return FusionView(region.astype(np.float32), a, np.zeros(3), size_xyz - 1, np.asarray(blend_xyz, float))


def two_constant_tiles(blend_x=0.0):
    """Tile A (value 100) covers x 0..9, tile B (value 300) x 6..15 of a 4 x 3 x 16 (z, y, x) block."""
    a = translation_view(np.full((4, 3, 10), 100.0), (0, 0, 0), (blend_x, 0, 0))
    b = translation_view(np.full((4, 3, 10), 300.0), (6, 0, 0), (blend_x, 0, 0))
    return [a, b]


EXPECTED_X = {  # along x: A alone 0..5, overlap 6..9, B alone 10..15
    "avg": [100] * 6 + [200] * 4 + [300] * 6,
    "max": [100] * 6 + [300] * 4 + [300] * 6,
    "lowest-view-wins": [100] * 6 + [100] * 4 + [300] * 6,
    "highest-view-wins": [100] * 6 + [300] * 4 + [300] * 6,
}


@pytest.mark.parametrize("fusion", sorted(EXPECTED_X))
def test_twin_two_constant_tiles(fusion):
    out = fuse_block((4, 3, 16), fusion, two_constant_tiles())
    np.testing.assert_array_equal(out, np.broadcast_to(np.asarray(EXPECTED_X[fusion], np.float32), (4, 3, 16)))


def test_twin_avg_blend_uses_cosine_weights():
    out = fuse_block((4, 3, 16), "avg-blend", two_constant_tiles(blend_x=5.0))[0, 0]
    x = np.arange(16.0)
    w_a = np.where(x <= 9, np.where(np.minimum(x, 9 - x) >= 5, 1, fn(np.clip(np.minimum(x, 9 - x) / 5, 0, 1))), 0)
    xb = x - 6
    w_b = np.where(xb >= 0, np.where(np.minimum(xb, 9 - xb) >= 5, 1, fn(np.clip(np.minimum(xb, 9 - xb) / 5, 0, 1))), 0)
    with np.errstate(invalid="ignore"):
        want = np.where(w_a + w_b > 0, (100 * w_a + 300 * w_b) / (w_a + w_b), 0)
    np.testing.assert_allclose(out, want, rtol=1e-5)
    assert out[0] == 0 and out[15] == 0  # the outermost pixels have weight fn(0) = 0
    assert np.all(np.diff(out[1:15]) >= -1e-4)  # a monotone ramp from 100 to 300 (float32 rounding), no step


def test_twin_closest_pixel_wins_picks_the_larger_weight():
    out = fuse_block((4, 3, 16), "closest-pixel-wins", two_constant_tiles(blend_x=5.0))[0, 0]
    # overlap x 6..9: A's distance to its edge is 9 - x, B's is x - 6; ties (none here) go to A
    np.testing.assert_array_equal(out[1:15], [100] * 7 + [300] * 7)
    assert out[0] == 0 and out[15] == 0  # weight 0 everywhere: nobody wins


def test_twin_trilinear_and_border_extension():
    z, y, x = np.meshgrid(np.arange(4.0), np.arange(5.0), np.arange(6.0), indexing="ij")
    ramp = (1 * x + 10 * y + 100 * z).astype(np.float32)
    a = np.zeros((3, 4))
    a[:, :3] = np.eye(3) * 0.5  # two output voxels per region pixel
    a[:, 3] = 0.25
    view = FusionView(ramp, a, np.zeros(3), np.array([5.0, 4.0, 3.0]), np.zeros(3))
    out = fuse_block((6, 8, 10), "avg", [view])
    zo, yo, xo = np.meshgrid(*(0.5 * np.arange(n) + 0.25 for n in (6, 8, 10)), indexing="ij")
    np.testing.assert_allclose(out, xo + 10 * yo + 100 * zo, rtol=1e-6)


def test_twin_uncovered_voxels_are_zero():
    view = translation_view(np.full((2, 2, 2), 7.0), (20, 20, 20))
    for fusion in FUSION_TYPES:
        assert not fuse_block((3, 3, 3), fusion, [view]).any()
    assert not fuse_block((3, 3, 3), "avg", []).any()


def test_contract_rejects_bad_requests():
    view = translation_view(np.ones((2, 2, 2)), (0, 0, 0))
    with pytest.raises(UserError, match="fusion type 'median' is not one of"):
        fuse_block((3, 3, 3), "median", [view])
    with pytest.raises(UserError, match="the block shape must be three positive sizes"):
        fuse_block((0, 3, 3), "avg", [view])
    bad = FusionView(np.ones((2, 2, 2)), view.block_to_region_xyz, view.support_lo_xyz, view.support_hi_xyz, [-1, 0, 0])
    with pytest.raises(UserError, match="blending widths must be finite and >= 0"):
        fuse_block((3, 3, 3), "avg-blend", [bad])


def test_backend_registry_runs_the_twin():
    out = get_backend("numpy").kernel("fuse_block")((4, 3, 16), "max", two_constant_tiles())
    np.testing.assert_array_equal(out[0, 0], EXPECTED_X["max"])


# --- the CUDA source, emulated on the CPU, against the twin ------------------------------------


def _rotation(rng, max_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def random_views(seed, n=3):
    """Rotated, scaled, overlapping views with blending ramps (no voxel sits exactly on a support edge)."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n):
        region = rng.uniform(0, 1000, tuple(rng.integers(6, 18, 3))).astype(np.float32)
        a = np.zeros((3, 4))
        a[:, :3] = _rotation(rng, 25) * rng.uniform(0.6, 1.4)
        a[:, 3] = rng.uniform(-4, 4, 3)
        size_xyz = np.asarray(region.shape[::-1], float)
        lo = rng.uniform(0, 1.5, 3)
        views.append(FusionView(region, a, lo, size_xyz - 1 - rng.uniform(0, 1.5, 3), rng.uniform(0, 6, 3)))
    return views


def reference_fuse(shape, fusion, views):
    """An independent vectorised NumPy/SciPy statement of the contract (slow; for tests only).

    Positions are evaluated with the same float32 expression, so coverage and winners match exactly;
    values come from scipy's trilinear interpolation in float64.
    """
    plan = plan_fuse_block(shape, fusion, views)
    zs, ys, xs = (np.arange(n, dtype=np.float32) for n in shape)
    out = np.zeros(shape, np.float32)
    norm = np.zeros(shape, np.float32)
    taken = np.zeros(shape, bool)
    best = np.zeros(shape, np.float32)
    order = range(plan.n_views - 1, -1, -1) if fusion == "highest-view-wins" else range(plan.n_views)
    for i in order:
        g = plan.geometry[i]
        a = g[:12].reshape(3, 4)
        inside = np.ones(shape, bool)
        weight = None
        for d in range(3):
            p = (a[d, 0] * xs)[None, None, :] + (a[d, 1] * ys)[None, :, None]
            p = (p + (a[d, 2] * zs)[:, None, None]) + a[d, 3]
            lo, hi, blend = g[12 + d], g[15 + d], g[18 + d]
            inside &= (p >= lo) & (p <= hi)
            if blend > 0:
                dist = np.minimum(p - lo, hi - p)
                w = np.where(dist >= blend, 1.0, fn(np.clip(dist / blend, 0, 1))).astype(np.float32)
            else:
                w = np.ones_like(p)
            weight = w if weight is None else weight * w
        weight = np.where(inside, weight, 0).astype(np.float32)
        a64 = a.astype(np.float64)
        values = scipy.ndimage.affine_transform(
            np.asarray(views[i].region_zyx, np.float32),
            a64[:, :3][::-1, ::-1],
            offset=a64[:, 3][::-1],
            output_shape=shape,
            order=1,
            mode="nearest",
            output=np.float32,
        )
        if fusion == "avg":
            out += np.where(inside, values, 0)
            norm += inside
        elif fusion == "avg-blend":
            out += weight * values
            norm += weight
        elif fusion == "max":
            out = np.where(inside, np.where(taken, np.maximum(out, values), values), out)
            taken |= inside
        elif fusion in ("lowest-view-wins", "highest-view-wins"):
            new = inside & ~taken
            out[new] = values[new]
            taken |= new
        else:
            new = weight > best
            out[new] = values[new]
            best[new] = weight[new]
    if fusion in ("avg", "avg-blend"):
        out = np.where(norm > 0, out / np.where(norm > 0, norm, 1), 0).astype(np.float32)
    return out


@pytest.mark.parametrize("fusion", FUSION_TYPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_twin_matches_an_independent_numpy_statement(fusion, seed):
    views = random_views(seed)
    shape = (9, 13, 15)
    got, want = fuse_block(shape, fusion, views), reference_fuse(shape, fusion, views)
    assert np.count_nonzero(want) > 0.3 * want.size
    np.testing.assert_array_equal(got != 0, want != 0)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)  # float32 vs float64 interpolation


@needs_gxx
@pytest.mark.parametrize("fusion", FUSION_TYPES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_emulated_kernel_matches_twin(fusion, seed):
    views = random_views(seed)
    shape = (9, 13, 15)
    got, want = emulated(shape, fusion, views), fuse_block(shape, fusion, views)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape == shape
    assert np.count_nonzero(want) > 0.3 * want.size
    # the same float32 arithmetic in the same order, compiled by g++ and by numba (LLVM)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)


@needs_gxx
@pytest.mark.parametrize("threads_per_block, max_blocks", [(32, 3), (7, 1), (1, 5)])
def test_emulated_grid_stride_loop_covers_every_voxel(threads_per_block, max_blocks):
    views = random_views(4)
    out = emulated((5, 6, 7), "avg-blend", views, threads_per_block=threads_per_block, max_blocks=max_blocks)
    np.testing.assert_allclose(out, fuse_block((5, 6, 7), "avg-blend", views), rtol=1e-6, atol=1e-4)


@needs_gxx
@pytest.mark.parametrize("fusion", sorted(EXPECTED_X))
def test_emulated_two_constant_tiles(fusion):
    out = emulated((4, 3, 16), fusion, two_constant_tiles())
    np.testing.assert_array_equal(out, np.broadcast_to(np.asarray(EXPECTED_X[fusion], np.float32), (4, 3, 16)))


@needs_gxx
def test_emulated_no_views_gives_zeros():
    assert not emulated((2, 3, 4), "avg", []).any()


def test_spec_is_declared_for_the_source():
    assert FUSE_BLOCK_SPEC in all_specs()
    assert [p.ctype for p in FUSE_BLOCK_SPEC.params[:4]] == [
        "const float*",
        "const long long*",
        "const float*",
        "float*",
    ]


@needs_gxx
def test_cupy_entry_point_with_a_cupy_stub(monkeypatch):
    """fuse_block_cupy's wiring (module, names, argument types) with CuPy replaced by the CPU emulation."""
    from rhapso_gpu.backend import cupy_backend

    calls = []

    class StubRawModule:
        def __init__(self, code, options):
            self.code = code

        def get_function(self, name):
            spec = next(s for s in all_specs() if s.name == name)

            def kernel(grid, block, args):
                calls.append((name, [type(a) for a in args]))
                cpu_emulation.launch(spec, grid, block, args)

            return kernel

    stub = types.ModuleType("cupy")
    stub.RawModule = StubRawModule
    stub.cuda = SimpleNamespace(Device=lambda: SimpleNamespace(id=0))
    stub.asarray, stub.empty, stub.float32 = np.asarray, np.empty, np.float32
    monkeypatch.setitem(sys.modules, "cupy", stub)
    monkeypatch.setattr(cupy_backend, "_MODULES", {})
    views = random_views(5)
    np.testing.assert_allclose(fuse_block_cupy((6, 7, 8), "avg", views), fuse_block((6, 7, 8), "avg", views), atol=1e-3)
    name, types_ = calls[0]
    assert name == "fuse_block_f32"
    assert types_ == [np.ndarray] * 4 + [np.int32] * 2 + [np.int64] * 3


@pytest.mark.parametrize("fusion", FUSION_TYPES)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float64])
def test_twin_reads_any_region_type_as_its_float32_copy(fusion, dtype):
    """Regions packed as they are (8/16-bit) or converted (others) fuse bit-identically to float32 copies."""
    views = random_views(4)
    typed = [replace(v, region_zyx=np.round(v.region_zyx / 8).astype(dtype)) for v in views]
    as_float32 = [replace(v, region_zyx=v.region_zyx.astype(np.float32)) for v in typed]
    want = fuse_block((9, 13, 15), fusion, as_float32)
    np.testing.assert_array_equal(fuse_block((9, 13, 15), fusion, typed), want)
    assert packed_dtype([v.region_zyx for v in typed]) == (dtype if dtype in PACKED_DTYPES else np.float32)


def test_packed_dtype_mixed_regions_become_float32():
    assert packed_dtype([np.zeros(2, np.uint16), np.zeros(2, np.uint8)]) == np.float32
    assert packed_dtype([np.zeros(2, np.uint16), np.zeros(2, np.uint16)]) == np.uint16


def test_twin_skips_views_that_miss_a_row_exactly():
    """A view covering only some rows (and only part of others) gives the same block as the NumPy statement."""
    region = np.arange(8 * 8 * 40, dtype=np.float32).reshape(8, 8, 40)
    a = np.array([[1.0, 0, 0, -3.0], [0.05, 1.0, 0, -2.0], [0, 0, 1.0, 0.5]])
    views = [FusionView(region, a, np.zeros(3), np.array([39.0, 5.0, 6.0]), np.array([4.0, 2.0, 0.0]))]
    for fusion in FUSION_TYPES:
        got, want = fuse_block((8, 10, 30), fusion, views), reference_fuse((8, 10, 30), fusion, views)
        np.testing.assert_array_equal(got != 0, want != 0)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3)
