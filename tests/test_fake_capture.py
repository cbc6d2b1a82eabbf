"""The CuPy stand-in's stream capture and FakeCublas (tests/fake_cupy_arrays.py, tests/fake_cublas.py)
hold gpubp.cuda_graph to CUDA's and CuPy's rules on the CPU: each rule here fails when the
stand-in stops enforcing it."""

import numpy as np
import pytest

from gpubp import cublas_direct

from .fake_cublas import INVALID_VALUE, NOT_SUPPORTED, FakeCublas


def capture(cp, work, pool=None):
    """(graph, what work() returned) of work() captured on a new non-blocking stream, warmed up
    once through ``pool`` (a new cupy.cuda.MemoryPool when None)."""
    stream, pool = cp.cuda.Stream(non_blocking=True), pool or cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:
        work()
        stream.begin_capture()
        result = work()
        graph = stream.end_capture()
    return graph, result, stream


def test_captured_work_runs_at_each_launch_and_not_before(fake_cupy):
    cp = fake_cupy
    a = cp.zeros(3, np.float64)
    graph, b, stream = capture(cp, lambda: cp.exp(a + 1))
    np.testing.assert_array_equal(a.get(), 0)  # the warm-up wrote nothing into a; the capture neither
    assert np.isnan(b.get()).all()  # a captured output holds garbage until the graph runs
    graph.launch(stream)
    np.testing.assert_allclose(b.get(), np.e)
    a[...] = 1  # inputs are read at launch time
    graph.launch(stream)
    np.testing.assert_allclose(b.get(), np.exp(2))


def test_captured_in_place_work_repeats_per_launch(fake_cupy):
    cp = fake_cupy
    a = cp.zeros(4, np.float32)

    def work():
        a.__iadd__(1)  # a += 1 through the ufunc's out=

    graph, _, stream = capture(cp, work)
    assert a.get().tolist() == [1] * 4  # the warm-up ran; the capture did not
    before = cp.activity.launches
    for _ in range(3):
        graph.launch(stream)
    assert a.get().tolist() == [4] * 4 and cp.activity.launches - before == 3  # one launch each


def test_a_captured_kernel_writes_its_outputs_at_launch(fake_cupy):
    from gpubp import kernels

    cp = fake_cupy
    z, b = cp.asarray(np.full((2, 3), -1.0, np.float32)), cp.asarray(np.array([2.0, 0.0, -2.0], np.float32))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        kernels.bias_activation(cp, z, b, "relu")  # in place: allocates nothing
        graph = stream.end_capture()
    np.testing.assert_array_equal(z.get(), -1)
    graph.launch(stream)
    np.testing.assert_array_equal(z.get(), [[1, 0, 0]] * 2)
    graph.launch(stream)
    np.testing.assert_array_equal(z.get(), [[3, 0, 0]] * 2)


@pytest.mark.parametrize("product", ["matmul", "@", "dot", "cupy.dot"])
def test_cupy_products_are_refused_while_capturing(fake_cupy, product):
    cp = fake_cupy
    a = cp.ones((4, 4), np.float32)
    run = {"matmul": lambda: cp.matmul(a, a), "@": lambda: a @ a, "dot": lambda: a.dot(a),
           "cupy.dot": lambda: cp.dot(a, a)}[product]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="calling cuBLAS API during stream capture"):
            run()
        stream.end_capture()


@pytest.mark.parametrize("what", ["float()", "get()", "synchronize", "cupy.asarray(host)", "set(host)",
                                  "default pool", "cold pool"])
def test_what_cuda_refuses_while_capturing_raises_and_invalidates_the_capture(fake_cupy, what):
    """A host sync, a copy from pageable memory and a cudaMalloc (a pool with nothing cached for
    the stream) are refused under capture; so is the default pool (stricter than CUDA)."""
    import contextlib

    cp = fake_cupy
    a, host = cp.ones(8, np.float32), np.ones(8, np.float32)
    stream, pool = cp.cuda.Stream(non_blocking=True), cp.cuda.MemoryPool()
    run = {"float()": lambda: float(a.sum()), "get()": a.get, "synchronize": stream.synchronize,
           "cupy.asarray(host)": lambda: cp.asarray(host), "set(host)": lambda: a.set(host),
           "default pool": lambda: a + 1, "cold pool": lambda: a + 1}[what]
    with stream:
        if what not in ("default pool", "cold pool"):
            with cp.cuda.using_allocator(pool.malloc):
                a + 1  # a warm pool: the refusal below is the one tested
        stream.begin_capture()
        with contextlib.nullcontext() if what == "default pool" else cp.cuda.using_allocator(pool.malloc):
            with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
                run()
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()


def test_only_a_non_blocking_stream_captures_and_only_once(fake_cupy):
    cp = fake_cupy
    for stream in (cp.cuda.Stream.null, cp.cuda.Stream()):
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureImplicit"):
            stream.begin_capture()
    stream = cp.cuda.Stream(non_blocking=True)
    stream.begin_capture()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="already capturing"):
        stream.begin_capture()
    assert stream.is_capturing()
    stream.end_capture()
    assert not stream.is_capturing()


# ------------------------------------------------------------------ FakeCublas


@pytest.fixture
def cublas(fake_cupy, monkeypatch):
    lib = FakeCublas(fake_cupy)
    monkeypatch.setattr(cublas_direct, "load_cublas", lambda: lib)
    return fake_cupy, lib


@pytest.mark.parametrize("layout", ["a @ b", "a.T @ b", "a @ b.T", "a.T @ b.T", "row slice"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_through_fake_cublas_equals_numpy(cublas, layout, dtype):
    """gpubp.cublas_direct.gemm's pointers, ops and leading dimensions, read by FakeCublas from
    the stand-in's memory, give the row-major product, into a new array and into a view."""
    cp, _ = cublas
    rng = np.random.default_rng(0)
    A, B, W = (rng.normal(size=s).astype(dtype) for s in [(5, 7), (7, 4), (5, 12)])
    a, b = {"a @ b": (A, B), "a.T @ b": (A.T.copy(), B), "a @ b.T": (A, B.T.copy()),
            "a.T @ b.T": (A.T.copy(), B.T.copy()), "row slice": (W[:, :7], B)}[layout]
    ad, bd = cp.asarray(a), cp.asarray(b)
    if layout == "row slice":
        ad = cp.asarray(W)[:, :7]
    ad, bd = (ad.T if "a.T" in layout else ad), (bd.T if "b.T" in layout else bd)
    expected = (a.T if "a.T" in layout else a) @ (b.T if "b.T" in layout else b)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cublas_direct.gemm(ad, bd).get(), expected, rtol=rtol)
    flat = cp.full(3 + 20 + 3, np.nan, dtype)
    out = flat[3:23].reshape(5, 4)
    assert cublas_direct.gemm(ad, bd, out=out) is out
    np.testing.assert_allclose(out.get(), expected, rtol=rtol)
    assert np.isnan(flat.get()[:3]).all() and np.isnan(flat.get()[23:]).all()


def test_fake_cublas_refuses_what_cublas_refuses(cublas):
    cp, lib = cublas
    a = cp.ones((4, 4), np.float32)
    one = np.ones(1, np.float32)
    ptr, h = a.data.ptr, lib.handle
    args = (one.ctypes.data, ptr, 4, ptr, 4, one.ctypes.data, ptr, 4)
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, *args) == 0
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, one.ctypes.data, ptr, 3, ptr, 4, one.ctypes.data, ptr, 4) == INVALID_VALUE
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 5, *args) == INVALID_VALUE  # reads past the buffer's end
    outside = np.ones(16, np.float32).ctypes.data  # host memory, no device buffer
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, one.ctypes.data, outside, 4, ptr, 4, one.ctypes.data, ptr, 4) == INVALID_VALUE
    assert lib.cublasSgemm_v2(h + 1, 0, 0, 4, 4, 4, *args) == INVALID_VALUE
    stream = cp.cuda.Stream(non_blocking=True)
    assert lib.cublasSetStream_v2(h, stream.ptr) == 0
    stream.begin_capture()
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, *args) == NOT_SUPPORTED  # no workspace set
    stream.end_capture()


def test_a_captured_gemm_runs_at_each_launch(cublas):
    cp, lib = cublas
    a, b = cp.asarray(np.eye(3, dtype=np.float32) * 2), cp.asarray(np.ones((3, 3), np.float32))
    cublas_direct.ensure_workspace(1 << 16)
    assert lib.workspace[1] == 1 << 16
    graph, c, stream = capture(cp, lambda: cublas_direct.gemm(a, b))
    assert np.isnan(c.get()).all()
    graph.launch(stream)
    np.testing.assert_array_equal(c.get(), 2)
    b[...] = 3
    graph.launch(stream)
    np.testing.assert_array_equal(c.get(), 6)
