"""gpubp.host_kernels: the blocked optimizer updates of the CPU backend are bitwise their twins."""

import threading

import numpy as np
import pytest

from gpubp import host_kernels, ops


def _arrays(rng, shape, dtype, count):
    return [rng.normal(size=shape).astype(dtype) for _ in range(count)]


def _sizes(dtype):
    block = host_kernels.BLOCK_BYTES // np.dtype(dtype).itemsize
    return [(1,), (block - 1,), (block,), (block + 1,), (3, block // 2 + 7), (2048, 300)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_update_is_bitwise_its_twin_across_block_edges(dtype, nesterov):
    rng = np.random.default_rng(1)
    for shape in _sizes(dtype):
        p, g, v = _arrays(rng, shape, dtype, 3)
        p_before, v_before = p.copy(), v.copy()
        ref_p, ref_v = p.copy(), v.copy()
        ops.sgd_momentum_update(np, ref_p, g, ref_v, 0.05, 0.9, nesterov)
        host_kernels.sgd_momentum_update(np, p, g, v, 0.05, 0.9, nesterov)
        assert np.array_equal(p, ref_p) and np.array_equal(v, ref_v), shape
        # every element moved, so a kernel that skips a block (or the last partial one) fails
        assert np.all(p != p_before) and np.all(v != v_before), shape


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_adam_update_is_bitwise_its_twin_across_block_edges(dtype):
    rng = np.random.default_rng(2)
    for shape in _sizes(dtype):
        p, g, m, v = _arrays(rng, shape, dtype, 4)
        v = np.abs(v)
        ref = [p.copy(), m.copy(), v.copy()]
        ops.adam_update(np, ref[0], g, ref[1], ref[2], 2e-3, 0.9, 0.999, 1e-8)
        host_kernels.adam_update(np, p, g, m, v, 2e-3, 0.9, 0.999, 1e-8)
        for actual, expected in zip((p, m, v), ref):
            assert np.array_equal(actual, expected), shape


def test_non_contiguous_arrays_take_the_whole_array_path():
    rng = np.random.default_rng(3)
    p, m, v = _arrays(rng, (700, 500), "float32", 3)
    v = np.abs(v)
    g = rng.normal(size=(500, 700)).astype("float32").T  # a transposed view
    ref = [p.copy(), m.copy(), v.copy()]
    ops.adam_update(np, ref[0], g, ref[1], ref[2], 1e-3, 0.9, 0.999, 1e-8)
    host_kernels.adam_update(np, p, g, m, v, 1e-3, 0.9, 0.999, 1e-8)
    for actual, expected in zip((p, m, v), ref):
        assert np.array_equal(actual, expected)


def test_threads_updating_side_by_side_do_not_share_scratch():
    """Two models trained on two threads (a threaded grid search) each get their own result."""
    jobs = []
    for seed in range(2):
        p, g, m, v = _arrays(np.random.default_rng(seed), (host_kernels.BLOCK_BYTES,), "float32", 4)
        v = np.abs(v)
        ref = [p.copy(), m.copy(), v.copy()]
        for _ in range(20):
            ops.adam_update(np, ref[0], g, ref[1], ref[2], 1e-3, 0.9, 0.999, 1e-8)
        jobs.append(((p, g, m, v), ref))
    start = threading.Barrier(2)

    def work(arrays):
        start.wait()
        for _ in range(20):
            host_kernels.adam_update(np, *arrays, 1e-3, 0.9, 0.999, 1e-8)

    threads = [threading.Thread(target=work, args=(arrays,)) for arrays, _ in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (p, _g, m, v), ref in jobs:
        for actual, expected in zip((p, m, v), ref):
            assert np.array_equal(actual, expected)
