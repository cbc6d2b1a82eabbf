"""The CuPy stand-in's pieces that the device check's stages (benchmarks/device_stages.py,
kernel_timings.py) use, held to CuPy 14.2's behaviour."""

import numpy as np
import pytest


def test_device_copies_and_event_times_follow_cupy(fake_cupy):
    """MemoryPointer.copy_from_device_async and get_elapsed_time as CuPy 14.2 has them (memory.pyx,
    stream.pyx, runtime.pyx eventElapsedTime): bytes copied, a source that is no MemoryPointer
    refused, an elapsed time only between recorded timing events the host has waited for."""
    cp = fake_cupy
    a, b = cp.arange(8, dtype=cp.float32), cp.zeros(8, dtype=cp.float32)
    b.data.copy_from_device_async(a.data, 4 * 4)
    assert b.get().tolist() == [0, 1, 2, 3, 0, 0, 0, 0]
    with pytest.raises(TypeError, match="MemoryPointer"):
        b.data.copy_from_device_async(a, a.nbytes)
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorInvalidValue"):
        b.data.copy_from_device_async(a.data, 2 * a.nbytes)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorInvalidResourceHandle"):
        cp.cuda.get_elapsed_time(start, end)  # never recorded
    start.record()
    end.record()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorNotReady"):
        cp.cuda.get_elapsed_time(start, end)  # the host has not waited for the end event
    end.synchronize()
    ms = cp.cuda.get_elapsed_time(start, end)
    assert type(ms) is float and ms >= 0
    untimed = cp.cuda.Event(disable_timing=True)
    untimed.record()
    untimed.synchronize()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorInvalidResourceHandle"):
        cp.cuda.get_elapsed_time(start, untimed)


def test_random_norm_and_versions_follow_cupy(fake_cupy):
    cp = fake_cupy
    rng = cp.random.default_rng(0)
    x = rng.standard_normal((3, 4), dtype=cp.float32)
    assert isinstance(x, cp.ndarray) and x.dtype == cp.float32 and x.shape == (3, 4)
    with pytest.raises(TypeError, match="Unsupported dtype int64 for standard_normal"):
        rng.standard_normal(3, dtype=cp.int64)
    labels = rng.integers(0, 10, 50)
    assert isinstance(labels, cp.ndarray) and labels.dtype == cp.int64
    assert 0 <= int(labels.min()) <= int(labels.max()) < 10
    assert rng.integers(5).shape == ()  # a 0-d device array, as CuPy's, not a Python int
    with pytest.raises(ValueError, match="low >= high"):
        rng.integers(3, 3)
    norm = cp.linalg.norm(x)
    assert isinstance(norm, cp.ndarray) and norm.shape == () and norm.dtype == cp.float32
    assert float(norm) == pytest.approx(float((x.get().astype("float64") ** 2).sum() ** 0.5), rel=1e-6)
    assert cp.cuda.nvrtc.getVersion() == (13, 0) and isinstance(cp.cuda.runtime.driverGetVersion(), int)


def test_an_elementwise_kernel_called_with_its_inputs_makes_its_outputs(fake_cupy):
    """CuPy allocates the outputs (_kernel.pyx _get_out_args_with_params); float16 computes in float
    through cupy/float16.cuh's conversions and rounds once, at the assignment (NumPy's float16
    arithmetic rounds after each operation)."""
    cp = fake_cupy
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x * x + x", "probe_twin")
    x = np.random.default_rng(3).normal(size=4096).astype(np.float16)
    y = kernel(cp.asarray(x))
    assert isinstance(y, cp.ndarray) and y.dtype == np.float16 and y.shape == x.shape
    x32 = x.astype(np.float32)
    assert np.array_equal(y.get(), (x32 * x32 + x32).astype(np.float16))
    assert not np.array_equal(y.get(), x * x + x)  # (so the test tells one rounding from two)
    with pytest.raises(ValueError, match="Output array size is Undecided"):
        cp.ElementwiseKernel("T x", "raw T y", "y[i] = x", "raw_out")(cp.asarray(x))
