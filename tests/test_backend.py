"""Backend selection, caching, dispatch on array type, the kernel registry and logging."""

import logging
import subprocess
import sys
import types
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

import cpu_fallback
import cpu_fallback.kernels
from rhapso_gpu.backend import (
    Backend,
    _registry,
    _select,
    backend_for_array,
    get_backend,
    gpu_available,
    register_kernel,
    registered_kernels,
)
from rhapso_gpu.errors import UserError

ROOT = Path(__file__).parents[1]
GPU_OK, GPU_REASON = gpu_available()


@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail, as on a machine without CuPy."""
    monkeypatch.setitem(sys.modules, "cupy", None)


@pytest.fixture
def cupy_without_gpu(monkeypatch):
    """A CuPy that imports but reports no usable device, as on a machine without a driver."""
    fake = types.ModuleType("cupy")
    fake.is_available = lambda: False
    monkeypatch.setitem(sys.modules, "cupy", fake)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the kernel registry, so tests can register kernels freely."""
    monkeypatch.setattr(_registry, "_ENTRIES", dict(_registry._ENTRIES))
    return _registry


def test_auto_picks_cupy_only_when_available():
    assert get_backend("auto").name == ("cupy" if GPU_OK else "numpy")
    assert get_backend().name == get_backend("auto").name


@pytest.mark.parametrize(
    "fixture, reason", [("no_cupy", "cupy is not installed"), ("cupy_without_gpu", "cupy.is_available() is False")]
)
def test_gpu_available_reasons(request, fixture, reason):
    request.getfixturevalue(fixture)
    assert gpu_available() == (False, reason)
    assert get_backend("auto") is get_backend("numpy")


@pytest.mark.parametrize(
    "fixture, reason", [("no_cupy", "cupy is not installed"), ("cupy_without_gpu", "cupy.is_available() is False")]
)
def test_cupy_without_gpu_is_one_line_user_error(request, fixture, reason):
    request.getfixturevalue(fixture)
    with pytest.raises(UserError) as err:
        get_backend("cupy")
    assert str(err.value) == f"--backend cupy: no usable CUDA GPU ({reason})"


@pytest.mark.skipif(GPU_OK, reason="a CUDA GPU is usable here")
def test_cupy_on_this_machine_is_user_error():
    with pytest.raises(UserError, match=r"^--backend cupy: no usable CUDA GPU \(.+\)$") as err:
        get_backend("cupy")
    assert "\n" not in str(err.value)


def test_unknown_backend_name_is_user_error():
    with pytest.raises(UserError, match="^--backend 'opencl': choose one of auto, numpy, cupy$"):
        get_backend("opencl")


def test_backends_are_cached():
    assert get_backend("numpy") is get_backend("numpy")


def test_numpy_backend_pieces():
    b = get_backend("numpy")
    assert (b.name, b.xp, b.ndimage) == ("numpy", np, cpu_fallback.ndimage)
    a = np.arange(6, dtype=np.uint16)
    assert b.asarray(a) is a  # no copy on the host
    assert b.asarray(a, dtype=np.float32).dtype == np.float32
    assert b.to_host(a) is a


def test_round_trip_and_modules(backend):
    host = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    dev = backend.asarray(host)
    assert backend_for_array(dev) is backend
    smoothed = backend.ndimage.uniform_filter(dev.astype(backend.xp.float32), size=1)
    np.testing.assert_array_equal(backend.to_host(smoothed), host.astype(np.float32))
    assert isinstance(backend.to_host(dev), np.ndarray)


def test_backend_for_array_dispatches_on_type():
    numpy_backend = get_backend("numpy")
    assert backend_for_array(np.zeros(3)) is numpy_backend
    assert backend_for_array([1, 2, 3]) is numpy_backend
    assert backend_for_array(da.zeros((4, 4), chunks=2)) is numpy_backend


def test_backend_for_array_does_not_log(caplog):
    with caplog.at_level(logging.INFO, logger="rhapso_gpu"):
        backend_for_array(np.zeros(3))
    assert caplog.records == []


@pytest.fixture
def fresh_log(monkeypatch):
    """Forget which choices were already logged in this process."""
    monkeypatch.setattr(_select, "_LOGGED", set())


def test_chosen_backend_is_logged_once(caplog, fresh_log):
    with caplog.at_level(logging.INFO, logger="rhapso_gpu"):
        get_backend("numpy")
        get_backend("numpy")  # tasks ask again for every block: no second line
    [record] = caplog.records
    assert record.name == "rhapso_gpu" and record.levelno == logging.INFO
    assert record.getMessage() == "backend numpy on CPU (NumPy/SciPy) (--backend numpy)"


def test_auto_fallback_logs_reason(caplog, cupy_without_gpu, fresh_log):
    with caplog.at_level(logging.INFO, logger="rhapso_gpu"):
        get_backend("auto")
    assert [r.getMessage() for r in caplog.records] == [
        "backend numpy on CPU (NumPy/SciPy) (--backend auto: no usable CUDA GPU, cupy.is_available() is False)"
    ]


def test_numpy_selection_does_not_import_cupy():
    code = (
        "import sys; from rhapso_gpu.backend import get_backend, downsample_mean; import numpy as np;"
        "get_backend('numpy'); downsample_mean(np.ones((2, 2, 2), np.uint16), (2, 2, 2));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupyx') or m.endswith('cupy_backend')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_builtin_kernel_is_registered():
    assert "downsample_mean" in registered_kernels()
    assert get_backend("numpy").kernel("downsample_mean") is cpu_fallback.kernels.downsample_mean


def test_kernel_per_backend(backend):
    """Each backend resolves the built-in kernel to its own implementation."""
    impl = backend.kernel("downsample_mean")
    assert callable(impl)
    assert (impl is cpu_fallback.kernels.downsample_mean) == (backend.name == "numpy")


def test_register_and_resolve_lazily(registry):
    def twice(a):
        return a * 2

    register_kernel("twice", numpy=twice, cupy="rhapso_no_such_module_for_tests:twice")  # not imported yet
    assert get_backend("numpy").kernel("twice") is twice
    assert "twice" in registered_kernels()
    with pytest.raises(ModuleNotFoundError, match="rhapso_no_such_module_for_tests"):
        registry.resolve_kernel("twice", "cupy")


def test_import_path_is_resolved_once(registry):
    import math

    register_kernel("root", numpy=np.sqrt, cupy="math:sqrt")
    assert registry.resolve_kernel("root", "cupy") is math.sqrt
    assert registry._ENTRIES["root"].resolved == {"cupy": math.sqrt}


def test_reregistration(registry):
    register_kernel("ident", numpy=np.asarray, cupy="cupy:asarray")
    register_kernel("ident", numpy=np.asarray, cupy="cupy:asarray")  # same pair: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_kernel("ident", numpy=np.array, cupy="cupy:asarray")


@pytest.mark.parametrize(
    "cupy_impl, error",
    [
        ("cupy.asarray", ValueError),
        ("cupy:", ValueError),
        (":asarray", ValueError),
        ("cu-py:asarray", ValueError),
        (42, TypeError),
    ],
)
def test_malformed_cupy_implementation(registry, cupy_impl, error):
    with pytest.raises(error, match="cupy implementation"):
        register_kernel("bad", numpy=np.asarray, cupy=cupy_impl)
    assert "bad" not in registered_kernels()


def test_unknown_kernel():
    with pytest.raises(KeyError, match="no kernel named 'nope'; registered: .*downsample_mean"):
        get_backend("numpy").kernel("nope")


def test_backend_is_frozen():
    with pytest.raises(AttributeError):
        get_backend("numpy").name = "cupy"
    assert isinstance(get_backend("numpy"), Backend)
