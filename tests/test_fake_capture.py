"""The CuPy stand-in's stream capture and FakeCublas (tests/fake_cupy_arrays.py, tests/fake_cublas.py)
hold gpubp.cuda_graph to CUDA's and CuPy's rules on the CPU: each rule here fails when the
stand-in stops enforcing it (the rules are numbered as in fake_cupy_arrays.py's docstring)."""

import contextlib

import numpy as np
import pytest

from gpubp import cublas_direct

from .fake_cublas import INVALID_VALUE, NOT_SUPPORTED, FakeCublas


def capture(cp, work, pool=None, reset=None):
    """(graph, what work() returned, the stream) of work() captured on a new non-blocking
    stream, warmed up once through ``pool`` (a new cupy.cuda.MemoryPool when None); ``reset()``
    runs between the warm-up and the capture."""
    stream, pool = cp.cuda.Stream(non_blocking=True), pool or cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:
        work()
        if reset is not None:
            reset()
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
    before = cp.activity.launches
    graph.launch(stream)
    assert cp.activity.launches - before == 1  # the graph's two kernels in one launch
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


SCALE = 'extern "C" __global__ void scale(double* x, long long n) { x[threadIdx.x] *= n; }\n'
OPERATIONS = {  # name -> work(cp, a, i): a (6,) float64 and i (3,) int64 device arrays; a new array or None
    "ufunc into a": lambda cp, a, i: (cp.multiply(a, 2, out=a), None)[1],
    "reduction": lambda cp, a, i: a.sum(axis=0),
    "argmax (int)": lambda cp, a, i: a.argmax(),
    "comparison (bool)": lambda cp, a, i: a > 2,
    "gather": lambda cp, a, i: a[i],
    "scatter": lambda cp, a, i: a.__setitem__(i, a[:3] * 10),
    "copy into a view": lambda cp, a, i: a.__setitem__(slice(3, None), a[:3]),
    "fill": lambda cp, a, i: a.fill(7.0),
    "fill from the device": lambda cp, a, i: a.fill(a[5]),
    "copy": lambda cp, a, i: a.copy(),
    "astype": lambda cp, a, i: a.astype(np.int32),
    "zeros": lambda cp, a, i: cp.zeros(4, np.float32),
    "ElementwiseKernel": lambda cp, a, i: cp.ElementwiseKernel("T x", "T y", "y = x * 2 + 1", "twice_plus_one")(
        a, cp.empty_like(a)),
    "ReductionKernel": lambda cp, a, i: cp.ReductionKernel("T x", "T y", "x * x", "a + b", "y = a", "0",
                                                           "sum_of_squares")(a),
    "RawKernel": lambda cp, a, i: cp.RawModule(code=SCALE).get_function("scale")((1,), (6,), (a, np.int64(3))),
}


@pytest.mark.parametrize("name", OPERATIONS)
def test_a_captured_operation_writes_nothing_until_launched(fake_cupy, name):
    """Rule 2: captured, each kind of operation leaves the memory that existed untouched and
    gives new outputs garbage (NaN, the most negative int, True); each launch then does what the
    eager operation does, reading a as it is at the launch."""
    cp, work = fake_cupy, OPERATIONS[name]
    start, i = np.arange(6.0) - 2, cp.asarray(np.array([5, 0, 2]))
    eager = cp.asarray(start)
    expected = work(cp, eager, i)
    a = cp.asarray(start)
    graph, new, stream = capture(cp, lambda: work(cp, a, i), reset=lambda: a.set(start))
    np.testing.assert_array_equal(a.get(), start)
    if new is not None:
        kind = new.dtype.kind
        poison = np.nan if kind == "f" else (np.iinfo(new.dtype).min if kind == "i" else True)
        np.testing.assert_array_equal(new.get(), np.full(new.shape, poison))
    for _ in range(2):  # the second launch starts from what the first wrote into a
        graph.launch(stream)
        np.testing.assert_array_equal(a.get(), eager.get())
        if new is not None:
            np.testing.assert_array_equal(new.get(), expected.get())
        expected = work(cp, eager, i)


def test_host_scalars_are_baked_in_at_capture(fake_cupy, monkeypatch):
    """Rule 5: a fill value and gemm's alpha read from host memory when captured, not at launch."""
    cp, lib = fake_cupy, FakeCublas(fake_cupy)
    monkeypatch.setattr(cublas_direct, "load_cublas", lambda: lib)
    cublas_direct.ensure_workspace()
    value, alpha = np.array(2.0), np.ones(1)
    monkeypatch.setitem(cublas_direct._SCALARS, np.dtype(np.float64), (alpha, np.zeros(1)))
    a, b = cp.zeros(3), cp.ones((2, 2))

    def work():
        a.fill(value)
        return cublas_direct.gemm(b, b)

    graph, c, stream = capture(cp, work)
    value[...], alpha[...] = 5.0, 10.0
    graph.launch(stream)
    assert a.get().tolist() == [2.0] * 3 and c.get().tolist() == [[2.0, 2.0]] * 2


def test_a_pool_serves_a_capture_only_from_what_it_cached_for_that_stream(fake_cupy):
    """Rule 6: a warm pool whose blocks are too small, or were cached on another stream, would
    need cudaMalloc: refused, and the capture invalidated."""
    cp = fake_cupy
    small, large = cp.ones(8), cp.ones(4096)
    stream, other, pool = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True), cp.cuda.MemoryPool()
    for warm_on, work in ((stream, lambda: large + 1), (other, lambda: small + 1)):
        with cp.cuda.using_allocator(pool.malloc):
            with stream:
                small + 1  # a 512-byte block cached on stream
            with other:
                small + 1
            with stream:
                stream.begin_capture()
                small + 1  # served from stream's cache
                with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
                    work() if warm_on is stream else (large + 1)
                with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureInvalidated"):
                    stream.end_capture()


def test_a_block_freed_while_capturing_serves_the_rest_of_the_capture(fake_cupy):
    """Rule 6: a temporary dropped under capture goes back to the stream's cache (merged with
    its free neighbours) and a later allocation of the same capture takes it, as in CuPy's
    arena: a warmed pool captures the step without growing."""
    cp = fake_cupy
    a, pool = cp.ones(1024), cp.cuda.MemoryPool()  # 8 KiB each

    def work():
        t = a * 2
        u = t[:] + 1  # the recorded operation reads t through a view
        del t
        v = u * 3  # takes t's block
        del u
        return v.sum()  # split from u's block, which merges again when the sum is freed

    work_graph, total = None, None
    with cp.cuda.using_allocator(pool.malloc):
        with cp.cuda.Stream(non_blocking=True) as stream:
            work()
            total = pool.total_bytes()
            stream.begin_capture()
            s = work()
            work_graph = stream.end_capture()
    assert pool.total_bytes() == total == 2 * 8192 and pool.used_bytes() == 512
    work_graph.launch(stream)
    assert s.get() == 9 * 1024
    with cp.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture()
        t = a * 2
        w, used = cp.reshape(t, (32, 32)), pool.used_bytes()
        del t
        assert pool.used_bytes() == used  # a view made by a cupy function keeps the block too
        del w
        assert pool.used_bytes() == used - 8192
        stream.end_capture()
    del s
    pool.free_all_blocks()
    assert pool.total_bytes() == 0


def test_a_memory_pool_keeps_its_blocks_per_stream(fake_cupy):
    """cupy.cuda.MemoryPool(): arrays made inside using_allocator(pool.malloc) come from it and go
    back to it; a block freed on one stream is not given to an allocation on another."""
    cp = fake_cupy
    pool, streams = cp.cuda.MemoryPool(), [cp.cuda.Stream(non_blocking=True) for _ in range(2)]
    default_used = cp.get_default_memory_pool().used_bytes()
    with cp.cuda.using_allocator(pool.malloc):
        with streams[0]:
            x = cp.ones(1000)
        assert pool.used_bytes() == pool.total_bytes() == 8192
        del x
        assert pool.used_bytes() == 0 and pool.total_bytes() == 8192
        with streams[1]:
            y = cp.ones(1000)  # not the block freed on streams[0]
        assert pool.total_bytes() == 2 * 8192
        with streams[0]:
            z = cp.ones(1000)  # the block freed on streams[0]
        assert pool.total_bytes() == 2 * 8192 and pool.used_bytes() == 2 * 8192
    assert cp.get_default_memory_pool().used_bytes() - default_used == 2 * 8192  # the card's use
    del y, z
    pool.free_all_blocks()
    assert pool.total_bytes() == 0


@pytest.mark.parametrize("mode", [None, "streamCaptureModeGlobal"])
def test_the_other_streams_run_as_before_while_one_captures(fake_cupy, mode):
    """Rule 8: work on another stream runs at once and is not in the graph. Rule 4: a host sync
    or a cudaMalloc on another stream is refused while a stream captures in global mode, and runs
    in relaxed mode (CuPy's default)."""
    cp = fake_cupy
    a = cp.ones(4)
    (a + 1).sum()  # the default pool caches the blocks used below
    stream = cp.cuda.Stream(non_blocking=True)
    stream.begin_capture(None if mode is None else getattr(cp.cuda.runtime, mode))
    b = a + 1  # on the null stream: runs now
    with contextlib.nullcontext() if mode is None else pytest.raises(
            cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
        assert float(b[0]) == 2
    with contextlib.nullcontext() if mode is None else pytest.raises(
            cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
        cp.ones(1 << 20)
    graph = stream.end_capture()
    a[...] = 5
    graph.launch(stream)
    assert b.get().tolist() == [2.0] * 4


def test_a_launch_runs_after_the_copies_queued_on_its_stream(fake_cupy):
    """Rule 7: launch(None) runs on the current stream, after what was queued on it."""
    cp = fake_cupy
    a = cp.zeros(4)
    graph, b, stream = capture(cp, lambda: a + 1)
    with stream:
        a.set(np.full(4, 3.0))  # queued on the non-blocking stream
        graph.launch()
    assert b.get().tolist() == [4.0] * 4


def test_data_ptr_is_the_address_of_the_first_element(fake_cupy):
    cp = fake_cupy
    a = cp.arange(12.0).reshape(3, 4)
    assert a[1:, 2:].data.ptr == a.data.ptr + (4 + 2) * 8 and a.T.data.ptr == a.data.ptr


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("product", ["matmul", "@", "dot", "cupy.dot"])
def test_cupy_products_are_refused_while_capturing(fake_cupy, product, dtype):
    """Rule 3: CuPy's cuBLAS routes raise CuPy's NotImplementedError under capture."""
    import ml_dtypes

    cp = fake_cupy
    a = cp.ones((4, 4), np.float32).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32)
    run = {"matmul": lambda: cp.matmul(a, a), "@": lambda: a @ a, "dot": lambda: a.dot(a),
           "cupy.dot": lambda: cp.dot(a, a)}[product]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="calling cuBLAS API during stream capture"):
            run()
        stream.end_capture()


SYNCS = ["float()", "int()", "bool()", "item()", "tolist()", "get()", "asnumpy", "nonzero", "synchronize",
         "event synchronize", "Device().synchronize", "runtime.deviceSynchronize"]
COPIES = ["cupy.asarray(host)", "set(host)", "device[index] = host"]


@pytest.mark.parametrize("what", SYNCS + COPIES + ["default pool", "cold pool"])
def test_what_cuda_refuses_while_capturing_raises_and_invalidates_the_capture(fake_cupy, what):
    """Rules 4-6: a host sync, a copy from pageable memory and a cudaMalloc (a pool with nothing
    cached for the stream) are refused under capture; so is the default pool (stricter than CUDA)."""
    cp = fake_cupy
    a, host = cp.ones(8, np.float32), np.ones(8, np.float32)
    stream, pool = cp.cuda.Stream(non_blocking=True), cp.cuda.MemoryPool()
    run = {"float()": lambda: float(a[0]), "int()": lambda: int(a[0]), "bool()": lambda: bool(a[0]),
           "item()": lambda: a[0].item(), "tolist()": a.tolist, "get()": a.get, "asnumpy": lambda: cp.asnumpy(a),
           "nonzero": a.nonzero, "synchronize": stream.synchronize, "event synchronize": lambda: stream.record().synchronize(),
           "Device().synchronize": lambda: cp.cuda.Device().synchronize(),
           "runtime.deviceSynchronize": cp.cuda.runtime.deviceSynchronize,
           "cupy.asarray(host)": lambda: cp.asarray(host), "set(host)": lambda: a.set(host),
           "device[index] = host": lambda: a.__setitem__([0, 1], host[:2]),
           "default pool": lambda: a + 1, "cold pool": lambda: a + 1}[what]
    with stream:
        if what != "cold pool":  # a warm pool: the refusal below is the one tested
            with contextlib.nullcontext() if what == "default pool" else cp.cuda.using_allocator(pool.malloc):
                a + 1
        stream.begin_capture()
        with contextlib.nullcontext() if what == "default pool" else cp.cuda.using_allocator(pool.malloc):
            with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureUnsupported"):
                run()
        with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureInvalidated"):
            stream.end_capture()


def test_only_a_non_blocking_stream_captures_and_only_once(fake_cupy):
    cp = fake_cupy
    with pytest.raises(RuntimeError, match="cannot capture on the default"):
        cp.cuda.Stream.null.begin_capture()
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="cudaErrorStreamCaptureImplicit"):
        cp.cuda.Stream().begin_capture()
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
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, ptr, *args[1:]) == INVALID_VALUE  # alpha in device memory
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 5, 4, *args) == INVALID_VALUE  # C runs past its buffer
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, *args[:-1], 3) == INVALID_VALUE  # ldc < m
    stream = cp.cuda.Stream(non_blocking=True)
    assert lib.cublasSetStream_v2(h, stream.ptr) == 0
    stream.begin_capture()
    assert lib.cublasSgemm_v2(h, 0, 0, 4, 4, 4, *args) == NOT_SUPPORTED  # no workspace set
    stream.end_capture()


def test_a_captured_gemm_runs_at_each_launch(cublas):
    cp, lib = cublas
    a, b = cp.asarray(np.eye(3, dtype=np.float32) * 2), cp.asarray(np.ones((3, 3), np.float32))
    cublas_direct.ensure_workspace()
    assert lib.cublasSetStream_v2(lib.handle, 0) == 0 and lib.workspace is None  # as an eager CuPy product leaves it
    graph, c, stream = capture(cp, lambda: cublas_direct.gemm(a, b))  # so gemm sets it after its SetStream
    assert lib.workspace[1] == cublas_direct.WORKSPACE_BYTES
    assert np.isnan(c.get()).all()
    graph.launch(stream)
    np.testing.assert_array_equal(c.get(), 2)
    b[...] = 3
    graph.launch(stream)
    np.testing.assert_array_equal(c.get(), 6)


def test_a_gemm_runs_on_the_null_stream_until_set_and_accumulates_with_beta(cublas):
    cp, lib = cublas
    a, c = cp.asarray(np.arange(4.0).reshape(2, 2)), cp.ones((2, 2))
    two = np.full(1, 2.0)
    before = cp.activity.launches
    # row-major c = 2 a @ a + 2 c, as column-major c.T = 2 a.T @ a.T + 2 c.T
    assert lib.cublasDgemm_v2(lib.handle, 0, 0, 2, 2, 2, two.ctypes.data, a.data.ptr, 2, a.data.ptr, 2,
                              two.ctypes.data, c.data.ptr, 2) == 0
    assert lib.stream == 0 and cp.activity.launches - before == 1
    A = np.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(c.get(), 2 * A @ A + 2)
