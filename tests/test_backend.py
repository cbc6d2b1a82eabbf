"""Backend choice, aliases, and clear errors when CUDA cannot be used."""

import sys
import types

import numpy as np
import pytest

import gpubp.backend as backend_module
from gpubp.backend import cuda_status, get_backend, to_numpy
from gpubp.errors import BackendUnavailableError

from .conftest import STAND_IN


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


class _Device(np.ndarray):
    """A host array standing in for a device array in the probe: it has CuPy's .get()."""

    def get(self):
        return np.array(self)


def _cupy_that_runs(elementwise_kernel):
    """A fake cupy with one device on which the probe's kernel is ``elementwise_kernel``."""
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda i: {"name": b"Fake GPU", "totalGlobalMem": 80 * 2**30})
    return types.SimpleNamespace(
        __version__="99.0", cuda=types.SimpleNamespace(runtime=runtime), float32=np.float32,
        arange=lambda n, dtype: np.arange(n, dtype=dtype).view(_Device),
        empty_like=lambda x: np.empty_like(x), ElementwiseKernel=elementwise_kernel)


def test_cuda_is_usable_only_when_a_kernel_and_a_product_run(monkeypatch, fresh_probe):
    from . import fake_cupy

    monkeypatch.setitem(sys.modules, "cupy", _cupy_that_runs(fake_cupy.ElementwiseKernel))
    status = cuda_status()
    assert status.usable and status.devices == ("Fake GPU (80.0 GiB)",), status.reason


def test_cuda_whose_compiler_is_missing_is_refused_with_the_reason(monkeypatch, fresh_probe):
    def no_nvrtc(*args, **kwargs):
        raise RuntimeError("CuPy failed to load libnvrtc.so.13: cannot open shared object file\nmore")

    monkeypatch.setitem(sys.modules, "cupy", _cupy_that_runs(no_nvrtc))
    status = cuda_status()
    assert not status.usable and status.devices == ("Fake GPU (80.0 GiB)",)
    assert "sees 1 CUDA device(s) but cannot run work there (RuntimeError: CuPy failed to load libnvrtc" in status.reason
    assert "more" not in status.reason and "cupy-cuda13x[ctk]" in status.reason
    assert get_backend("auto").name == "cpu"


def test_cuda_giving_wrong_results_is_refused(monkeypatch, fresh_probe):
    from . import fake_cupy

    def copies_instead(*args, **kwargs):
        return fake_cupy.ElementwiseKernel("T x", "T y", "y = x", "wrong_probe")

    monkeypatch.setitem(sys.modules, "cupy", _cupy_that_runs(copies_instead))
    status = cuda_status()
    assert not status.usable and "wrong results from the probe" in status.reason


def _cuda_backend_on(xp):
    return backend_module.Backend("cuda", xp, "fake device", backend_module.CUDA_KERNELS)


@pytest.mark.parametrize("limit, expected_gib", [(0, 11), (6, 2)])
def test_free_device_memory_counts_the_pool_and_its_limit(limit, expected_gib):
    """Free = the driver's free memory + the pool's cached blocks, capped by a pool limit."""
    GiB = 2**30
    pool = types.SimpleNamespace(free_bytes=lambda: 1 * GiB, total_bytes=lambda: 5 * GiB,
                                 get_limit=lambda: limit * GiB)
    xp = types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(
        memGetInfo=lambda: (10 * GiB, 80 * GiB))), get_default_memory_pool=lambda: pool)
    assert _cuda_backend_on(xp).free_memory() == expected_gib * GiB


def test_host_data_goes_to_the_device_without_cupy_asarray():
    """cupy.asarray stages host data in pinned memory that CuPy's pool keeps for good: the
    backend allocates on the device and copies from the host array itself (ndarray.set)."""
    copies = []

    class DeviceArray:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, np.dtype(dtype)

        def set(self, host):
            assert host.shape == self.shape and host.dtype == self.dtype and host.flags.c_contiguous
            copies.append(host.copy())

    def no_asarray(*args, **kwargs):
        raise AssertionError("host data went through cupy.asarray")

    xp = types.SimpleNamespace(empty=lambda shape, dtype: DeviceArray(shape, dtype), asarray=no_asarray)
    cuda = _cuda_backend_on(xp)
    strided = np.arange(12.0).reshape(3, 4)[:, ::2]
    for host, dtype, expected in ((strided, np.float32, strided), (3, None, np.array(3)),
                                  ([[1, 2]], np.float64, np.array([[1.0, 2.0]]))):
        device = cuda.asarray(host, dtype)
        assert device.shape == np.shape(expected) and (dtype is None or device.dtype == dtype)
        np.testing.assert_array_equal(copies[-1], expected)


@pytest.mark.parametrize("device", ["cpu", STAND_IN])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_norm_is_blas_nrm2_in_chunks_of_a_32_bit_count(dtype, monkeypatch, request, device):
    """Backend.norm: the Euclidean norm, a 0-d value of x's dtype on x's device, whatever x's
    shape; past the chunk (nrm2's 32-bit n) the norm of the chunks' norms, which is the same norm."""
    if device == "cuda":
        request.getfixturevalue("fake_cupy")
    backend = get_backend(device)
    x = backend.asarray(np.random.default_rng(0).normal(size=(37, 11)).astype(dtype))
    whole = backend.norm(x)
    assert whole.dtype == np.dtype(dtype) and whole.shape == () and backend_module.backend_for(whole) is backend
    assert float(whole) == pytest.approx(float(np.linalg.norm(to_numpy(x).astype(np.float64))), rel=1e-6)
    monkeypatch.setattr(backend_module, "_NORM_CHUNK", 50)  # 407 values: 9 chunks
    assert float(backend.norm(x)) == pytest.approx(float(whole), rel=1e-6)


def test_the_norm_of_a_strided_view_is_its_own(fake_cupy):
    """cupy.cublas.nrm2 reads its x with stride 1 (CuPy passes incx=1), so a strided view must be
    made contiguous first; the stand-in refuses a strided x, as a card would silently misread it."""
    host = np.arange(1.0, 21.0, dtype=np.float32)
    cuda = get_backend("cuda")
    view = cuda.asarray(host)[::2]
    assert float(cuda.norm(view)) == pytest.approx(float(np.linalg.norm(host[::2])), rel=1e-6)
    with pytest.raises(NotImplementedError, match="strided"):
        sys.modules["cupy.cublas"].nrm2(view)
