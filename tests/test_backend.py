"""Backend choice, aliases, and clear errors when CUDA cannot be used."""

import sys
import types

import numpy as np
import pytest

import gpubp.backend as backend_module
from gpubp.backend import cuda_status, get_backend, to_numpy
from gpubp.errors import BackendUnavailableError


@pytest.fixture
def fresh_probe():
    """Forget the cached CUDA probe before and after the test."""
    cuda_status.cache_clear()
    backend_module._cuda_backend.cache_clear()
    yield
    cuda_status.cache_clear()
    backend_module._cuda_backend.cache_clear()


@pytest.mark.parametrize("name", ["cpu", "numpy", "CPU"])
def test_cpu_names(name):
    b = get_backend(name)
    assert b.name == "cpu" and b.xp is np
    assert "NumPy" in b.device


def test_unknown_device_name():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        get_backend("tpu")


def test_cupy_missing(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes "import cupy" raise ImportError
    status = cuda_status()
    assert not status.usable and "CuPy is not installed" in status.reason
    with pytest.raises(BackendUnavailableError, match="not usable: CuPy is not installed"):
        get_backend("cuda")
    assert get_backend("auto").name == "cpu"


def _fake_cupy(device_count):
    def count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count

    runtime = types.SimpleNamespace(getDeviceCount=count)
    return types.SimpleNamespace(__version__="99.0", cuda=types.SimpleNamespace(runtime=runtime))


def test_cupy_without_driver(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(RuntimeError("CUDA driver not found")))
    status = cuda_status()
    assert not status.usable
    assert "CuPy 99.0 imported but CUDA is unusable" in status.reason
    assert "CUDA driver not found" in status.reason
    with pytest.raises(BackendUnavailableError, match="CUDA driver not found"):
        get_backend("cupy")
    assert get_backend("auto").name == "cpu"


def test_cupy_without_devices(monkeypatch, fresh_probe):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(0))
    with pytest.raises(BackendUnavailableError, match="no CUDA device is visible"):
        get_backend("gpu")


def test_cupy_import_crash(monkeypatch, fresh_probe):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "cupy":
            raise OSError("libcudart.so.12: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    status = cuda_status()
    assert not status.usable and "CuPy failed to import: OSError: libcudart" in status.reason


def test_to_numpy_and_transfers():
    b = get_backend("cpu")
    a = b.asarray([[1, 2]], dtype=np.float32)
    assert a.dtype == np.float32
    assert isinstance(b.to_host(a), np.ndarray)
    np.testing.assert_array_equal(to_numpy([1, 2]), np.array([1, 2]))
    assert b.fits(10**15)  # host memory is never refused up front
