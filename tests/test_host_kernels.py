"""gpubp.host_kernels and gpubp.host_build: the CPU backend's compiled kernels (optimizer updates,
ReLU's bias + activation, BP2 with BP3, softmax-minus-y) give their NumPy twins' results bit for bit, and where they
cannot be built the twins run, and gpubp info says why."""

import contextlib
import ctypes
import math
import os
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from gpubp import host_build, host_kernels, kernels, ops

# lengths around the compiler's vector widths (4 and 8 floats, 2 and 4 doubles) and a large one
SHAPES = [(1,), (3,), (7,), (8,), (9,), (17,), (3, 11), (2048, 300)]


@pytest.fixture
def built():
    """The compiled library; skips (saying why) where this machine has no C compiler."""
    if host_build.compiler() is None:
        pytest.skip("no C compiler on this machine: the CPU backend runs the NumPy twins")
    library, how = host_build.compiled_kernels()
    assert library is not None, how  # a compiler that cannot build the kernels is a failure
    return library


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """compiled_kernels() forgotten before and after the test, its cache in tmp_path."""
    monkeypatch.setenv("GPUBP_CACHE_DIR", str(tmp_path / "cache"))
    host_build.compiled_kernels.cache_clear()
    yield tmp_path / "cache"
    host_build.compiled_kernels.cache_clear()


@contextlib.contextmanager
def compiled_only(name: str):
    """Inside the block, ops.<name> (the twin) raises: what host_kernels computes there, the C
    kernel computed (a dispatcher that fell back to the twin would compare the twin with itself)."""
    twin = getattr(ops, name)

    def refused(*args, **kwargs):
        raise AssertionError(f"the twin {name} ran where the compiled kernel should have")

    setattr(ops, name, refused)
    try:
        yield
    finally:
        setattr(ops, name, twin)


def same_bits(actual, expected) -> bool:
    """Equal bit for bit, signs of zeros included, and NaN where ``expected`` has NaN (the sign of a
    NaN is left free: C keeps another operand's than NumPy where two NaNs meet)."""
    nan = np.isnan(expected)
    unsigned = f"u{expected.dtype.itemsize}"
    return bool(np.array_equal(nan, np.isnan(actual))
                and np.array_equal(actual[~nan].view(unsigned), expected[~nan].view(unsigned)))


def _arrays(rng, shape, dtype, count):
    """count arrays of normals whose magnitudes span 2^-30 .. 2^30: products that round."""
    return [(rng.normal(size=shape) * 2.0 ** rng.integers(-30, 30, size=shape)).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("nesterov", [False, True])
def test_the_compiled_momentum_update_is_bitwise_its_twin(built, dtype, nesterov):
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        p, g, v = _arrays(rng, shape, dtype, 3)
        p_before, v_before = p.copy(), v.copy()
        ref_p, ref_v = p.copy(), v.copy()
        ops.sgd_momentum_update(np, ref_p, g, ref_v, 0.05, 0.9, nesterov)
        with compiled_only("sgd_momentum_update"):
            host_kernels.sgd_momentum_update(np, p, g, v, 0.05, 0.9, nesterov)
        assert np.array_equal(p, ref_p) and np.array_equal(v, ref_v), shape
        assert np.all(v != v_before), shape  # every element moved: a loop that stops short fails
        assert np.mean(p != p_before) > 0.5, shape  # (p + v rounds back to p where |v| << |p|)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_compiled_adam_update_is_bitwise_its_twin(built, dtype):
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        p, g, m, v = _arrays(rng, shape, dtype, 4)
        v = np.abs(v)
        ref = [p.copy(), m.copy(), v.copy()]
        for step in range(3):  # lr_t as Adam.update computes it (a Python float): not a round number
            lr_t = 1e-3 * math.sqrt(1 - 0.999 ** (step + 1)) / (1 - 0.9 ** (step + 1))
            ops.adam_update(np, ref[0], g, ref[1], ref[2], lr_t, 0.9, 0.999, 1e-8)
            with compiled_only("adam_update"):
                host_kernels.adam_update(np, p, g, m, v, lr_t, 0.9, 0.999, 1e-8)
        for actual, expected in zip((p, m, v), ref):
            assert np.array_equal(actual, expected), shape


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
def test_the_compiled_updates_fold_the_l2_gradient_in_as_the_twins_do(built, dtype, optimizer):
    """g + l2 p on the first n_weights parameters (l2 a number or a 0-d array, as alpha over a
    sum of sample weights is; n_weights past the end: all of them, as the twin's slice): the twins'
    bits, g left as it was."""
    rng = np.random.default_rng(29)
    for size, n_weights, l2 in [(9, 4, 0.25), (2048 * 3, 5000, np.array(1e-3, dtype)), (10, 10, 0.5), (7, 9, 0.5)]:
        p, g, m, v = _arrays(rng, (size,), dtype, 4)
        v, g_before = np.abs(v), g.copy()
        expected, actual = [p.copy(), m.copy(), v.copy()], [p, m, v]
        for arrays, module in ((expected, ops), (actual, host_kernels)):
            context = compiled_only if module is host_kernels else contextlib.nullcontext
            with context(f"{'adam' if optimizer == 'adam' else 'sgd_momentum'}_update"):
                if optimizer == "adam":
                    module.adam_update(np, arrays[0], g, arrays[1], arrays[2], 1e-3, 0.9, 0.999, 1e-8, l2, n_weights)
                else:
                    module.sgd_momentum_update(np, arrays[0], g, arrays[1], 0.05, 0.9, optimizer == "nesterov", l2,
                                               n_weights)
        assert all(same_bits(a, e) for a, e in zip(actual, expected)), (size, n_weights)
        assert g.tobytes() == g_before.tobytes()


SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 5e-324, 1.0, -1.0]


def _with_specials(x):
    """x with NaN, infinities, signed zeros and subnormals in its first elements."""
    flat = x.reshape(-1)
    flat[: len(SPECIAL)] = np.array(SPECIAL[: flat.size], dtype=x.dtype)
    return x


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_compiled_bias_relu_gives_the_twins_result(built, dtype):
    """z + b, then max(., 0) keeping NaN: equal to the twin everywhere, NaN where it has NaN
    (a zero's sign may differ: NumPy's maximum gives -0 or +0 by version; no sum sees it)."""
    rng = np.random.default_rng(5)
    for rows, width in [(1, 1), (3, 7), (5, 17), (256, 512)]:
        z = _with_specials(_arrays(rng, (rows, width), dtype, 1)[0])
        b = _with_specials(_arrays(rng, (width,), dtype, 1)[0])
        expected = ops.bias_activation(np, z.copy(), b, "relu")
        with compiled_only("bias_activation"):
            out = host_kernels.bias_activation(np, z, b, "relu")
        assert out is z and np.array_equal(z, expected, equal_nan=True), (rows, width)
    assert np.mean(z > 0) > 0.3 and np.mean(z == 0) > 0.3  # the large case had both sides of the kink


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "identity"])
def test_the_compiled_backprop_delta_and_its_bias_gradient_are_bitwise_the_twins(built, dtype, name):
    """g * f'(a) and db = its column sums, in one pass: the twin's bits, the sign of every zero of db
    included (NumPy adds row 0 to +0), NaN where the twin has NaN; without db, db is not touched."""
    rng = np.random.default_rng(9)
    for rows, width in [(1, 2), (2, 3), (3, 7), (5, 17), (300, 9), (256, 512)]:
        g = _with_specials(_arrays(rng, (rows, width), dtype, 1)[0])
        a = _with_specials(ops.activate(np, rng.normal(size=(rows, width)).astype(dtype), name))
        g[:, -1], a[:, -1] = -1.0, 0.0  # a column of -0 deltas (relu), of -0 * ... sums
        expected_db = np.empty(width, dtype)
        with np.errstate(invalid="ignore"):  # the twin's NaN * 0 and inf * 0
            expected = ops.backprop_delta(np, g.copy(), a, name, expected_db)
        db = np.full(width, 7.0, dtype)
        with compiled_only("backprop_delta"):
            out = host_kernels.backprop_delta(np, g, a, name, db)
        assert out is g and same_bits(g, expected) and same_bits(db, expected_db), (rows, width)
        g2 = _arrays(rng, (rows, width), dtype, 1)[0]
        expected = ops.backprop_delta(np, g2.copy(), a, name)
        with compiled_only("backprop_delta"):
            host_kernels.backprop_delta(np, g2, a, name)
        assert same_bits(g2, expected), (rows, width)
    assert np.isfinite(db).mean() > 0.9 and np.unique(db).size > width // 2  # the large case: real sums


def test_a_one_wide_bias_gradient_goes_to_the_twin(built):
    """NumPy sums a (n, 1) column pairwise, not row after row: the twin computes it."""
    rng = np.random.default_rng(11)
    g, a = _arrays(rng, (1000, 1), "float32", 2)
    expected_db = np.empty(1, np.float32)
    expected = ops.backprop_delta(np, g.copy(), a, "relu", expected_db)
    db = np.empty(1, np.float32)
    host_kernels.backprop_delta(np, g, a, "relu", db)
    assert np.array_equal(g, expected) and db.tobytes() == expected_db.tobytes()


def test_a_bias_gradient_over_g_itself_goes_to_the_twin(built):
    """db a view of g (no caller in gpubp does this): the twin sums the rows as they were before the
    sum overwrites one; the C loop, which zeroes db first, would not."""
    rng = np.random.default_rng(13)
    g, a = _arrays(rng, (6, 5), "float64", 2)
    expected = g.copy()
    ops.backprop_delta(np, expected, a, "relu", expected[0])
    host_kernels.backprop_delta(np, g, a, "relu", g[0])
    assert same_bits(g, expected)


def _softmax_bits(actual, expected) -> bool:
    """(delta, loss) pairs equal as same_bits has it, the loss of the same type (a NumPy scalar)."""
    return (same_bits(actual[0], expected[0]) and type(actual[1]) is type(expected[1])
            and same_bits(np.asarray(actual[1]), np.asarray(expected[1])))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_compiled_softmax_minus_y_is_bitwise_its_twin(built, dtype):
    """delta and the loss, with and without the output bias and sample weights, over row lengths
    around NumPy's pairwise sum's eight running sums and 128-value blocks (its recursion at 8192
    classes), batches past 8192 rows (NumPy's loss sum in blocks, on some versions)."""
    rng = np.random.default_rng(17)
    shapes = [(1, 2), (2, 3), (7, 7), (9, 8), (5, 9), (256, 10), (3, 17), (4, 128), (4, 136), (33, 129), (3, 256),
              (4, 300), (2, 1000), (2, 8192), (9000, 3)]
    for rows, classes in shapes:
        # logits of spread 0.1 where rows are wide: terms of one size, so that every order of the
        # pairwise sum gives other bits (large logits leave a few terms that decide the sum)
        z = (rng.normal(size=(rows, classes)) * (0.1 if classes > 100 else rng.choice([0.1, 3.0, 30.0]))).astype(dtype)
        b, y = rng.normal(size=classes).astype(dtype), rng.integers(0, classes, rows)
        for w in (None, rng.random(rows).astype(dtype)):
            for bias in (None, b):
                expected = ops.softmax_minus_y(np, z, y, w, bias)
                with compiled_only("softmax_minus_y"):
                    actual = host_kernels.softmax_minus_y(np, z, y, w, bias)
                assert _softmax_bits(actual, expected), (rows, classes, w is None, bias is None)
    assert 0 < float(actual[1]) < np.log(classes) + 5  # a real loss, not a constant


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_compiled_softmax_minus_y_keeps_the_twins_special_values(built, dtype):
    """Rows with NaN, infinities, signed zeros, tied maxima and logits near the largest float:
    the twin's deltas and loss, NaN where it has NaN."""
    big = np.finfo(dtype).max / 2
    z = np.array([[np.nan, 1.0, 2.0], [1.0, np.nan, np.inf], [np.inf, 1.0, -np.inf], [-np.inf, -np.inf, 0.0],
                  [-0.0, 0.0, -0.0], [3.0, 3.0, 1.0], [big, -big, big], [1.0, 2.0, 3.0]], dtype)
    y = np.array([0, 1, 2, 2, 1, 1, 0, 2])
    for rows in (slice(None), slice(3, 8), slice(4, 8)):  # the finite rows alone give a finite loss
        with np.errstate(all="ignore"):
            expected = ops.softmax_minus_y(np, z[rows], y[rows])
            with compiled_only("softmax_minus_y"):
                actual = host_kernels.softmax_minus_y(np, z[rows], y[rows])
        assert _softmax_bits(actual, expected), rows
    assert np.isfinite(actual[1]) and np.isnan(host_kernels.softmax_minus_y(np, z, y)[1])


def test_a_label_out_of_range_meets_the_twins_indexing(built):
    """The C pass checks every label: one past the classes raises NumPy's IndexError as the twin
    does, a negative one counts from the end as the twin's indexing does (gpubp checks labels
    before they get here; no read or write lands outside z or delta)."""
    rng = np.random.default_rng(19)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    with pytest.raises(IndexError):
        host_kernels.softmax_minus_y(np, z, np.array([0, 1, 2, 3, 4, 0]))
    negative = np.array([0, 1, -1, 3, 2, 0])
    assert _softmax_bits(host_kernels.softmax_minus_y(np, z, negative), ops.softmax_minus_y(np, z, negative))


def test_softmax_arrays_the_loop_cannot_take_go_to_the_twin(built):
    """int32 labels, a transposed z, more than 8192 classes and float16 run the twin, and give its
    result, and so do sample weights of another length than the rows (C would read past them: the
    twin broadcasts one weight, refuses three); an empty batch raises the twin's error (gpubp takes
    no step on one)."""
    rng = np.random.default_rng(23)
    z = rng.normal(size=(5, 9000)).astype(np.float32)
    y = rng.integers(0, 4, 5)
    cases = [(z[:, :4], y.astype(np.int32)), (z[:, :4].copy().T.copy().T, y), (z, y), (z[:, :4].astype(np.float16), y)]
    for logits, labels in cases:
        assert _softmax_bits(host_kernels.softmax_minus_y(np, logits, labels), ops.softmax_minus_y(np, logits, labels))
    with pytest.raises(ZeroDivisionError):  # the twin's 1 / n
        ops.softmax_minus_y(np, z[:0], y[:0])
    with pytest.raises(ZeroDivisionError):
        host_kernels.softmax_minus_y(np, z[:0], y[:0])
    narrow, short = z[:, :4].copy(), np.ones(3, np.float32)  # (a contiguous z, which C would take)
    with pytest.raises(ValueError, match="broadcast"):
        ops.softmax_minus_y(np, narrow, y, short)
    with pytest.raises(ValueError, match="broadcast"):
        host_kernels.softmax_minus_y(np, narrow, y, short)
    one = np.full(1, 2.0, np.float32)  # the twin broadcasts a single weight over the rows
    assert _softmax_bits(host_kernels.softmax_minus_y(np, narrow, y, one), ops.softmax_minus_y(np, narrow, y, one))


def test_the_other_activations_and_shapes_run_the_twins(built):
    """tanh, sigmoid, identity, bfloat16 and a strided z go to the twin, and give its result."""
    import ml_dtypes

    rng = np.random.default_rng(7)
    z, b = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)
    for name in ("tanh", "sigmoid", "identity"):
        assert np.array_equal(host_kernels.bias_activation(np, z.copy(), b, name), ops.bias_activation(np, z.copy(), b, name))
    narrow = z.astype(ml_dtypes.bfloat16)
    assert np.array_equal(host_kernels.bias_activation(np, narrow.copy(), b, "relu").astype(np.float32),
                          ops.bias_activation(np, narrow.copy(), b, "relu").astype(np.float32))
    wide = rng.normal(size=(6, 10)).astype(np.float32)
    strided, twin, between = wide[:, ::2], wide.copy()[:, ::2], wide[:, 1::2].copy()
    host_kernels.bias_activation(np, strided, b, "relu")
    assert np.array_equal(strided, ops.bias_activation(np, twin, b, "relu"))
    assert np.array_equal(wide[:, 1::2], between)  # the columns between left alone (not read as contiguous)


def test_arrays_the_loop_cannot_take_go_to_the_twin(built):
    """A transposed view, mixed dtypes or float16: the twin's result, not a misread buffer."""
    rng = np.random.default_rng(3)
    p, m, v = _arrays(rng, (700, 500), "float32", 3)
    v = np.abs(v)
    g = rng.normal(size=(500, 700)).astype("float32").T  # a transposed view
    ref = [p.copy(), m.copy(), v.copy()]
    ops.adam_update(np, ref[0], g, ref[1], ref[2], 1e-3, 0.9, 0.999, 1e-8)
    host_kernels.adam_update(np, p, g, m, v, 1e-3, 0.9, 0.999, 1e-8)
    for actual, expected in zip((p, m, v), ref):
        assert np.array_equal(actual, expected)
    p16, g64, v16 = np.ones(5, np.float16), np.full(5, 0.5), np.zeros(5, np.float16)
    host_kernels.sgd_momentum_update(np, p16, g64.astype(np.float16), v16, 0.5, 0.9, False)
    assert np.array_equal(p16, np.full(5, 0.75, np.float16))


def test_threads_updating_side_by_side_each_get_their_own_result(built):
    """Two models trained on two threads (a threaded grid search; ctypes lets go of the GIL)."""
    jobs = []
    for seed in range(2):
        p, g, m, v = _arrays(np.random.default_rng(seed), (300_000,), "float32", 4)
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


def test_the_library_is_built_once_into_the_cache_and_named_by_its_source(built, fresh_build):
    library, how = host_build.compiled_kernels()
    assert library is not None and f"cached in {fresh_build}" in how
    (built_file,) = fresh_build.iterdir()
    assert built_file.name.startswith("host_kernels-") and built_file.suffix == ".so"
    stamp = built_file.stat().st_mtime_ns
    host_build.compiled_kernels.cache_clear()
    assert host_build.compiled_kernels()[0] is not None
    assert [f.name for f in fresh_build.iterdir()] == [built_file.name] and built_file.stat().st_mtime_ns == stamp
    assert host_build.describe().startswith("CPU kernels (optimizer updates, ReLU, BP2, softmax): C, compiled with ")


def test_without_a_compiler_the_twins_run_and_info_says_why(monkeypatch, fresh_build):
    monkeypatch.setattr(host_build, "compiler", lambda: None)
    assert host_build.compiled_kernels() == (None, "no C compiler (set CC, or install cc, gcc or clang)")
    assert host_build.describe() == "CPU kernels (optimizer updates, ReLU, BP2, softmax): NumPy twins: no C compiler (set CC, or install cc, gcc or clang)"
    rng = np.random.default_rng(4)
    p, g, v = _arrays(rng, (9, 5), "float64", 3)
    ref_p, ref_v = p.copy(), v.copy()
    ops.sgd_momentum_update(np, ref_p, g, ref_v, 0.1, 0.5, True)
    host_kernels.sgd_momentum_update(np, p, g, v, 0.1, 0.5, True)
    assert np.array_equal(p, ref_p) and np.array_equal(v, ref_v)


def test_the_environment_can_ask_for_the_twins(monkeypatch, fresh_build):
    monkeypatch.setenv("GPUBP_HOST_KERNELS", "numpy")
    assert host_build.compiled_kernels() == (None, "GPUBP_HOST_KERNELS=numpy")
    assert list(fresh_build.parent.iterdir()) == []  # nothing built: the cache folder was never made


def test_a_compiler_that_fails_leaves_no_partial_library_and_is_named(monkeypatch, fresh_build, tmp_path):
    """A failed build (here a "compiler" that writes half a file and fails) is reported with the
    compiler's message, and nothing is left in the cache that a later run could load."""
    broken = tmp_path / "brokencc"
    broken.write_text('#!/bin/sh\nfor a; do out=$a; done\necho half > "$out"\necho "error: no space" >&2\nexit 1\n')
    # (the last argument is the output file: the script writes half of it there)
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    library, why = host_build.compiled_kernels()
    assert library is None and why.startswith(f"could not build or load host_kernels.c with {broken}: ")
    assert "error: no space" in why
    assert list(fresh_build.iterdir()) == []


def test_a_compiler_that_refuses_march_native_builds_the_portable_kernels(built, monkeypatch, fresh_build, tmp_path):
    """A compiler without -march=native (older clang on arm64) still gives compiled kernels, built
    without it, and says so; their results are the twins'; and the refusal is remembered in the
    cache, so the next process asks the compiler once, not twice."""
    real, log = host_build.compiler(), tmp_path / "calls"
    picky = tmp_path / "pickycc"
    picky.write_text(f'#!/bin/sh\necho "$*" >> {log}\n'
                     f'for a; do [ "$a" = -march=native ] && {{ echo "unsupported: $a" >&2; exit 1; }}; done\n'
                     f'exec {real} "$@"\n')
    picky.chmod(0o755)
    monkeypatch.setenv("CC", str(picky))
    monkeypatch.setattr(host_build, "instruction_sets", lambda: "flags\t: avx2\n")
    library, how = host_build.compiled_kernels()
    assert library is not None and how.startswith(f"compiled with {picky} (-O3 ") and "-march=native" not in how
    assert sorted(f.suffix for f in fresh_build.iterdir()) == [".refused", ".so"]  # the portable library alone
    assert "unsupported: -march=native" in next(fresh_build.glob("*.refused")).read_text()
    assert len(log.read_text().splitlines()) == 2
    host_build.compiled_kernels.cache_clear()  # the next process: the portable library from the cache
    assert host_build.compiled_kernels()[1] == how
    assert len(log.read_text().splitlines()) == 2
    rng = np.random.default_rng(12)
    g, a = _arrays(rng, (33, 20), "float32", 2)
    expected_db = np.empty(20, np.float32)
    expected = ops.backprop_delta(np, g.copy(), a, "relu", expected_db)
    db = np.empty(20, np.float32)
    assert library.backprop_delta_float32(g.ctypes.data, a.ctypes.data, db.ctypes.data, 33, 20, 1) is None
    assert np.array_equal(g, expected) and np.array_equal(db, expected_db)


def test_the_build_is_tuned_where_the_cpu_is_known_and_portable_elsewhere(built, monkeypatch, fresh_build):
    """On Linux the library is built for this CPU's instruction sets (where the compiler takes
    -march=native), and its cache name changes with them; without /proc/cpuinfo (macOS) it is
    built portable, under a name that no CPU's tuned library can take."""
    cc = host_build.compiler()
    takes_native = subprocess.run([cc, "-march=native", "-x", "c", "-E", "-", "-o", os.devnull], input="",
                                  capture_output=True, text=True).returncode == 0
    if host_build.instruction_sets() is None or not takes_native:
        pytest.skip("this machine's CPU flags are unreadable or its compiler refuses -march=native")
    assert "-march=native" in host_build.compiled_kernels()[1]
    tuned = {f.name for f in fresh_build.iterdir()}
    host_build.compiled_kernels.cache_clear()
    monkeypatch.setattr(host_build, "instruction_sets", lambda: "flags\t: some other CPU\n")
    assert "-march=native" in host_build.compiled_kernels()[1]
    other = {f.name for f in fresh_build.iterdir()} - tuned
    assert len(other) == 1  # another CPU: another library
    host_build.compiled_kernels.cache_clear()
    monkeypatch.setattr(host_build, "instruction_sets", lambda: None)
    library, how = host_build.compiled_kernels()
    assert library is not None and "-march=native" not in how
    assert len({f.name for f in fresh_build.iterdir()} - tuned - other) == 1


def test_a_cache_that_cannot_be_written_leaves_the_twins_running(built, monkeypatch, fresh_build, tmp_path):
    """A cache folder that cannot be made (here: a file stands where it should be) is reported,
    and training goes on with the twins."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("GPUBP_CACHE_DIR", str(tmp_path / "file" / "cache"))
    library, why = host_build.compiled_kernels()
    assert library is None and why.startswith("could not build or load host_kernels.c with ")
    p, g, v = _arrays(np.random.default_rng(8), (4, 3), "float32", 3)
    ref_p, ref_v = p.copy(), v.copy()
    ops.sgd_momentum_update(np, ref_p, g, ref_v, 0.1, 0.9, False)
    host_kernels.sgd_momentum_update(np, p, g, v, 0.1, 0.9, False)
    assert np.array_equal(p, ref_p) and np.array_equal(v, ref_v)


def test_builds_racing_for_one_cache_file_each_leave_a_whole_library(built, fresh_build):
    """Ranks of a job starting at once on a fresh machine all build the same file: each writes its
    own temporary file and renames it over the target, so every load finds a whole library."""
    source = kernels.source_dir() / host_build.SOURCE
    target = fresh_build / "host_kernels-race.so"
    errors = []

    def build():
        try:
            host_build.build(host_build.compiler(), source, target)
            ctypes.CDLL(str(target)).adam_float32  # loads, and has its symbols
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and [f.name for f in fresh_build.iterdir()] == [target.name]


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUBP_CACHE_DIR", str(tmp_path / "a"))
    assert host_build.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("GPUBP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert host_build.cache_dir() == tmp_path / "xdg" / "gpubp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert host_build.cache_dir() == Path.home() / ".cache" / "gpubp"
