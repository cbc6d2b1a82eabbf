"""gpubp.precision: round_to_tf32 on hand-worked bit patterns and against an independent float64
reference, the TF32 product model, and tf32_products on a CuPy stand-in that records every
cuBLAS math-mode call and every change of CuPy's compute type; the device-check stage's helpers
(benchmarks/precision_stage.py) on NumPy; one GPU test of the real switch."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from gpubp import precision
from gpubp.precision import (CUBLAS_TF32_TENSOR_OP_MATH, TF32_TYPICAL_REL_ERROR, TF32_UNIT_ROUNDOFF, check_tf32,
                             matmul_as_tf32, round_to_tf32, tf32_products)


def f32(*bits):
    """float32 array from bit patterns."""
    return np.array(bits, dtype=np.uint32).view(np.float32)


def bits_of(x):
    return np.asarray(x, dtype=np.float32).view(np.uint32)


# ------------------------------------------------------------------ round_to_tf32: hand-worked cases

# input bits -> expected bits; TF32 keeps the top 10 of float32's 23 mantissa bits (the low 13 go)
CASES = {
    "one": (0x3F800000, 0x3F800000),
    "one plus a TF32 ulp (2**-10) is kept": (0x3F802000, 0x3F802000),
    "1 + 2**-11: a tie, kept part even: down": (0x3F801000, 0x3F800000),
    "1 + 3 * 2**-11: a tie, kept part odd: up to even": (0x3F803000, 0x3F804000),
    "just above a tie: up": (0x3F801001, 0x3F802000),
    "just below a tie: down": (0x3F800FFF, 0x3F800000),
    "tie at the top of the binade carries into the exponent: 2.0": (0x3FFFF000, 0x40000000),
    "negative tie, kept part odd: away from zero to even": (0xBF803000, 0xBF804000),
    "largest TF32 value is kept": (0x7F7FE000, 0x7F7FE000),
    "just below the overflow tie: largest TF32": (0x7F7FEFFF, 0x7F7FE000),
    "the overflow tie (2 - 2**-11) * 2**127: inf": (0x7F7FF000, 0x7F800000),
    "largest float32: inf": (0x7F7FFFFF, 0x7F800000),
    "minus largest float32: -inf": (0xFF7FFFFF, 0xFF800000),
    "smallest subnormal 2**-149: 0": (0x00000001, 0x00000000),
    "minus smallest subnormal: -0.0": (0x80000001, 0x80000000),
    "subnormal tie, kept part even (0): 0": (0x00001000, 0x00000000),
    "subnormal tie, kept part odd: up to 2 * 2**-136": (0x00003000, 0x00004000),
    "subnormal above a tie: up": (0x00001001, 0x00002000),
    "a TF32 subnormal is kept": (0x00002000, 0x00002000),
    "largest subnormal: smallest normal 2**-126": (0x007FFFFF, 0x00800000),
    "zero": (0x00000000, 0x00000000),
    "minus zero": (0x80000000, 0x80000000),
    "inf": (0x7F800000, 0x7F800000),
    "-inf": (0xFF800000, 0xFF800000),
}


@pytest.mark.parametrize("name", list(CASES))
def test_round_to_tf32_hand_worked(name):
    given, expected = CASES[name]
    got = bits_of(round_to_tf32(f32(given)))[0]
    assert got == expected, f"{name}: 0x{given:08X} -> 0x{got:08X}, expected 0x{expected:08X}"


def test_round_to_tf32_all_cases_at_once_keep_shape_and_layout():
    given = f32(*[g for g, _ in CASES.values()]).reshape(4, 6)
    expected = f32(*[e for _, e in CASES.values()]).reshape(4, 6)
    np.testing.assert_array_equal(bits_of(round_to_tf32(given.T)), bits_of(expected.T))  # a strided view
    assert round_to_tf32(np.float32(1 + 3 * 2**-11)).shape == ()


@pytest.mark.parametrize("nan_bits", [0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7F801FFF])
def test_nan_stays_nan_with_its_payload(nan_bits):
    # 0x7F800001 would become inf under the plain bit trick (its payload is all in the low 13 bits)
    assert bits_of(round_to_tf32(f32(nan_bits)))[0] == nan_bits


def test_round_to_tf32_refuses_other_dtypes():
    with pytest.raises(TypeError, match="float32"):
        round_to_tf32(np.ones(3))


# ------------------------------------------------------------------ round_to_tf32: properties


def reference_tf32(x):
    """Independent model: the nearest multiple of the TF32 quantum of x's binade, ties to even
    (np.round), in float64; overflow to inf. x float32 without NaN."""
    a = np.abs(x.astype(np.float64))
    _, e = np.frexp(a)  # a = m * 2**e, m in [0.5, 1): the binade's exponent is e - 1
    quantum = np.ldexp(1.0, np.maximum(e - 1, -126) - 10)
    r = np.round(a / quantum) * quantum  # a / quantum is exact: a power-of-two division
    r = np.where(np.isinf(a), np.inf, np.where(r >= 2.0**128, np.inf, r))
    return np.copysign(r, x.astype(np.float64)).astype(np.float32)


def random_float32(rng, n):
    """n float32 values with uniformly random bit patterns (every binade, subnormals, inf), no NaN."""
    x = rng.integers(0, 2**32, n, dtype=np.uint32).view(np.float32)
    return x[~np.isnan(x)]


def test_round_to_tf32_matches_an_independent_reference(rng):
    x = random_float32(rng, 1_000_000)
    x = np.concatenate([x, f32(*[g for g, _ in CASES.values()])])
    np.testing.assert_array_equal(bits_of(round_to_tf32(x)), bits_of(reference_tf32(x)))


def test_round_to_tf32_is_idempotent_and_clears_the_low_bits(rng):
    once = round_to_tf32(random_float32(rng, 200_000))
    np.testing.assert_array_equal(bits_of(round_to_tf32(once)), bits_of(once))
    finite = once[np.isfinite(once)]
    assert np.all(bits_of(finite) & 0x1FFF == 0)


def test_rounding_error_is_at_most_half_a_tf32_ulp(rng):
    x = (rng.standard_normal(500_000) * np.exp(rng.uniform(-40, 40, 500_000))).astype(np.float32)
    err = np.abs(round_to_tf32(x).astype(np.float64) - x) / np.abs(x.astype(np.float64))
    assert err.max() <= TF32_UNIT_ROUNDOFF
    assert err.max() > 0.9 * TF32_UNIT_ROUNDOFF  # the bound is reached, not loose


# ------------------------------------------------------------------ the product model


@pytest.mark.parametrize("k", [64, 1024])
def test_tf32_product_error_is_near_the_documented_value(rng, k):
    a = rng.standard_normal((256, k)).astype(np.float32)
    b = rng.standard_normal((k, 192)).astype(np.float32)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    err = np.linalg.norm(matmul_as_tf32(a, b) - exact) / np.linalg.norm(exact)
    assert 0.8 * TF32_TYPICAL_REL_ERROR < err < 1.2 * TF32_TYPICAL_REL_ERROR
    assert np.linalg.norm(a @ b - exact) / np.linalg.norm(exact) < 1e-6  # IEEE float32, for contrast


def test_tf32_product_of_tf32_values_is_the_float32_product(rng):
    a = round_to_tf32(rng.standard_normal((32, 16)).astype(np.float32))
    b = round_to_tf32(rng.standard_normal((16, 8)).astype(np.float32))
    np.testing.assert_array_equal(matmul_as_tf32(a, b), a @ b)


def test_check_tf32():
    assert check_tf32(True, "float32") is True and check_tf32(False, np.float64) is False
    with pytest.raises(ValueError, match="float32"):
        check_tf32(True, "float64")
    with pytest.raises(TypeError, match="True or False"):
        check_tf32("yes", "float32")


# ------------------------------------------------------------------ tf32_products on a CuPy stand-in

DEFAULT, TF32 = 1, 7  # CuPy's COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32


class FakeCupy:
    """The parts of CuPy 14 that tf32_products touches: cupy.cuda.cublas.get/setMathMode,
    cupy.cuda.device.get_cublas_handle (one handle per thread and device), get_compute_capability,
    cupy._core.get/set_compute_type and _routines_linalg.COMPUTE_TYPE_TF32. Records every call."""

    def __init__(self, capability="90", mode=0, fail_set_mode=False):
        self.calls, self.modes, self.compute = [], {}, DEFAULT
        self.device_id, self.initial_mode, self.fail_set_mode = 0, mode, fail_set_mode
        self._threads = threading.local()
        self._lock = threading.Lock()
        self.cuda = SimpleNamespace(
            cublas=SimpleNamespace(getMathMode=self._get_mode, setMathMode=self._set_mode),
            device=SimpleNamespace(get_cublas_handle=self._handle, get_compute_capability=lambda: capability),
            runtime=SimpleNamespace(is_hip=False))
        self._core = SimpleNamespace(get_compute_type=self._get_compute, set_compute_type=self._set_compute,
                                     _routines_linalg=SimpleNamespace(COMPUTE_TYPE_TF32=TF32))

    def _record(self, *call):
        with self._lock:
            self.calls.append(call)

    def _handle(self):
        if not hasattr(self._threads, "index"):
            with self._lock:
                self._threads.index = len({c[1] // 100 for c in self.calls if c[0] == "handle"})
        handle = 100 * (self._threads.index + 1) + self.device_id  # per thread, per device
        self._record("handle", handle)
        return handle

    def _get_mode(self, handle):
        self._record("getMathMode", handle)
        return self.modes.get(handle, self.initial_mode)

    def _set_mode(self, handle, mode):
        self._record("setMathMode", handle, mode)
        if self.fail_set_mode:
            raise RuntimeError("CUBLAS_STATUS_INVALID_VALUE")
        self.modes[handle] = mode

    def _get_compute(self, dtype):
        assert np.dtype(dtype) == np.float32
        return self.compute

    def _set_compute(self, dtype, value):
        assert np.dtype(dtype) == np.float32
        self._record("set_compute_type", value)
        self.compute = value

    def mode(self, handle=100):
        return self.modes.get(handle, self.initial_mode)


def test_tf32_products_turns_both_switches_and_restores_them():
    cp = FakeCupy()
    with tf32_products(cp, True) as on:
        assert on is True
        assert cp.compute == TF32 and cp.mode() == CUBLAS_TF32_TENSOR_OP_MATH
    assert cp.compute == DEFAULT and cp.mode() == 0
    assert [c for c in cp.calls if c[0] != "handle"] == [
        ("set_compute_type", TF32), ("getMathMode", 100), ("setMathMode", 100, 3), ("setMathMode", 100, 0),
        ("set_compute_type", DEFAULT)]
    assert precision._holds == {}


def test_the_reduced_precision_reduction_flag_found_on_the_handle_is_kept():
    cp = FakeCupy(mode=16)  # CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION
    with tf32_products(cp, True):
        assert cp.mode() == 3 | 16
    assert cp.mode() == 16


def test_both_switches_are_restored_when_the_block_raises():
    cp = FakeCupy()
    with pytest.raises(ZeroDivisionError):
        with tf32_products(cp, True):
            1 / 0
    assert cp.compute == DEFAULT and cp.mode() == 0 and precision._holds == {}


def test_a_failure_to_set_the_math_mode_undoes_the_compute_type():
    cp = FakeCupy(fail_set_mode=True)
    with pytest.raises(RuntimeError, match="INVALID_VALUE"):
        with tf32_products(cp, True):
            pass
    assert cp.compute == DEFAULT and precision._holds == {}


def test_nested_blocks_keep_tf32_until_the_outer_one_leaves():
    cp = FakeCupy()
    with tf32_products(cp, True):
        with tf32_products(cp, True):
            pass
        assert cp.compute == TF32 and cp.mode() == 3
        with tf32_products(cp, False) as on:  # an IEEE network called inside changes nothing
            assert on is False
        assert cp.compute == TF32 and cp.mode() == 3
    assert cp.compute == DEFAULT and cp.mode() == 0
    assert [c[1] for c in cp.calls if c[0] == "set_compute_type"] == [TF32, DEFAULT]  # once each way


def test_disabled_numpy_and_pre_ampere_cards_change_nothing():
    for cp, enabled in ((FakeCupy(), False), (FakeCupy(capability="75"), True)):
        with tf32_products(cp, enabled) as on:
            assert on is False
        assert cp.calls == []
    with tf32_products(np, True) as on:
        assert on is False


def test_the_math_mode_is_restored_on_the_handle_of_entry_when_the_device_changes_inside():
    cp = FakeCupy()
    with tf32_products(cp, True):
        cp.device_id = 1  # cupy.cuda.Device(1).use() inside the block
    assert cp.mode(100) == 0 and 101 not in cp.modes


def test_threads_share_the_compute_type_until_the_last_one_leaves_and_keep_their_own_handles():
    cp = FakeCupy()
    entered, first_left, states = threading.Barrier(2), threading.Event(), {}

    def first():
        with tf32_products(cp, True):
            entered.wait()
        first_left.set()

    def second():
        with tf32_products(cp, True):
            entered.wait()
            first_left.wait(5)
            states["after the first left"] = (cp.compute, cp.mode(100), cp.mode(200))

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert states["after the first left"][0] == TF32  # still held for the second thread
    assert sorted(states["after the first left"][1:]) == [0, 3]  # the first thread's handle is back
    assert cp.compute == DEFAULT and cp.mode(100) == 0 and cp.mode(200) == 0 and precision._holds == {}


# ------------------------------------------------------------------ on a real GPU


@pytest.mark.gpu
def test_tf32_products_on_the_gpu():
    import cupy as cp

    if not precision.tf32_supported(cp):
        pytest.skip("the current device has no TF32 (compute capability < 8.0)")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1024, 1024)).astype(np.float32) for _ in range(2))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    da, db = cp.asarray(a), cp.asarray(b)

    def error(c, ref=exact):
        return float(np.linalg.norm(cp.asnumpy(c) - ref) / np.linalg.norm(exact))

    mode = cp.cuda.cublas.getMathMode(cp.cuda.device.get_cublas_handle())
    compute = cp._core.get_compute_type(np.float32)
    assert error(da @ db) < 1e-5
    with tf32_products(cp, True):
        tf32 = da @ db
        backward = (da.T @ db, da @ db.T)  # the shapes of BP4 and BP2
    assert 0.5 * TF32_TYPICAL_REL_ERROR < error(tf32) < 2 * TF32_TYPICAL_REL_ERROR
    assert error(tf32, matmul_as_tf32(a, b).astype(np.float64)) < 2e-5  # the CPU model of TF32
    assert error(backward[0], matmul_as_tf32(a.T, b).astype(np.float64)) < 2e-5
    assert error(backward[1], matmul_as_tf32(a, b.T).astype(np.float64)) < 2e-5
    assert error(da @ db) < 1e-5
    assert cp.cuda.cublas.getMathMode(cp.cuda.device.get_cublas_handle()) == mode
    assert cp._core.get_compute_type(np.float32) == compute


# ------------------------------------------------------------------ the device-check stage's helpers, on NumPy


def test_stage_helpers_identify_each_rounding_rule():
    from benchmarks import precision_stage as ps

    x = ps.rounding_inputs((64, 32))
    assert np.mean((x.view(np.uint32) & 0x1FFF) == 0x1000) >= 0.25  # the planted ties
    for name, rounded in ps.rounding_models(x).items():
        found = ps.rounding_agreement(x, rounded)
        assert found["rule"] == name and found["shares"][name] == 1.0
        assert all(share < 0.9 for other, share in found["shares"].items() if other != name), found


def stage_rows(ps, rng):
    """The stage's rows for NumPy products: IEEE, the CPU model of TF32, and two mislabelled ones."""
    a, b = (rng.standard_normal((128, 128)).astype(np.float32) for _ in range(2))
    exact = a.astype(np.float64) @ b.astype(np.float64)

    def error(c):
        return ps.rel_error(np, c, exact)

    def timer(fn):
        return 0.5  # ms

    runs = {"ieee": lambda: a @ b, "tf32": lambda: matmul_as_tf32(a, b)}
    return [ps.measure(f"{label} run, {expect} expected", expect, runs[label], error, timer, 2.0 * 128**3)
            for label, expect in (("ieee", "ieee"), ("tf32", "tf32"), ("ieee", "tf32"), ("tf32", "ieee"),
                                  ("tf32", "report"))]


def test_stage_rows_and_failures(rng):
    from benchmarks import precision_stage as ps

    rows = stage_rows(ps, rng)
    assert [r["as_expected"] for r in rows] == [True, True, False, False, True]
    assert [r["tf32_engaged"] for r in rows] == [False, True, False, True, True]
    assert rows[0]["tflops"] == pytest.approx(ps.tflops(128, 128, 128, 0.5))
    assert ps.tflops(1, 1, 1, 2e-9) == pytest.approx(1.0)
    failures = ps.row_failures(rows)
    assert len(failures) == 2
    assert "TF32 did not engage" in failures[0] and "not IEEE float32" in failures[1]


def test_stage_section_failures_and_verdict(rng):
    from benchmarks import precision_stage as ps

    ieee, tf32 = stage_rows(ps, rng)[:2]
    x = ps.rounding_inputs((16, 16))
    good = {"rows": [{**ieee, "name": "cupy ieee"}, {**tf32, "name": "cupy tf32_products"},
                     {**ieee, "name": "cupy ieee after the block"}],
            "state": {"before": {"math_mode": 0, "compute_type": 1}, "after": {"math_mode": 0, "compute_type": 1}},
            "model": {"rel_error": 1e-6}, "rounding": ps.rounding_agreement(x, round_to_tf32(x)),
            "torch": {"rows": [{**ieee, "name": "torch ieee"}, {**tf32, "name": "torch tf32"}]}}
    found = ps.summary(good)
    assert found["failures"] == []
    assert found["verdict"].startswith("tf32_products 1.0x IEEE") and "nearest even" in found["verdict"]
    assert "PyTorch tf32" in found["verdict"]
    bad = {**good, "state": {**good["state"], "after halves": {"math_mode": 3, "compute_type": 1}},
           "model": {"rel_error": 3e-4}, "rounding": ps.rounding_agreement(x, ps.rounding_models(x)["truncation"])}
    failures = ps.summary(bad)["failures"]
    assert len(failures) == 3
    assert "after halves" in failures[0] and "CPU model" in failures[1] and "not nearest even" in failures[2]
    assert ps.summary({"rows": []})["verdict"] == "nothing measured"


@pytest.mark.skipif(__import__("gpubp").cuda_status().usable, reason="a GPU is usable here")
def test_stage_alone_without_a_gpu_says_so(capsys):
    from benchmarks import precision_stage as ps

    assert ps.main([]) == 3
    assert "no usable GPU" in capsys.readouterr().out


class DeviceArray(np.ndarray):
    """A NumPy array with the methods the stage calls on CuPy and PyTorch arrays."""

    def get(self):
        return np.asarray(self)

    def cuda(self):
        return self

    def double(self):
        return self.astype(np.float64)

    def bfloat16(self):
        return self.astype(__import__("ml_dtypes").bfloat16)

    def cpu(self):
        return self

    def numpy(self):
        return np.asarray(self)


class FakeEvent:
    """cupy.cuda.Event / torch.cuda.Event(enable_timing=True) on the host clock."""

    def __init__(self, enable_timing=True):
        self.t = None

    def record(self):
        self.t = __import__("time").perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, end):
        return (end.t - self.t) * 1e3


def on_device(a):
    return np.array(a).view(DeviceArray)


def fake_stage_modules():
    """A CuPy (FakeCupy's switches, NumPy arrays) and a PyTorch with what precision_stage uses."""
    cp = FakeCupy()
    cp.cuda.Event, cp.cuda.get_elapsed_time = FakeEvent, lambda start, end: start.elapsed_time(end)
    cp.float32, cp.float64, cp.linalg, cp.asarray = np.float32, np.float64, np.linalg, on_device
    cp.eye = lambda n, dtype: on_device(np.eye(n, dtype=dtype))
    cp.get_default_memory_pool = lambda: SimpleNamespace(free_all_blocks=lambda: None)
    matmul = SimpleNamespace(fp32_precision="none")
    torch = SimpleNamespace(__version__="2.11-fake", backends=SimpleNamespace(cuda=SimpleNamespace(matmul=matmul)),
                            from_numpy=on_device, linalg=np.linalg,
                            eye=lambda n, device: on_device(np.eye(n, dtype=np.float32)),
                            cuda=SimpleNamespace(Event=FakeEvent, empty_cache=lambda: None))
    return cp, torch


def test_the_whole_stage_runs_on_stand_ins(monkeypatch):
    """Every line of precision_stage on NumPy-backed CuPy and PyTorch stand-ins (small sizes): the
    rows, state and sections it writes; the stand-ins do not round to TF32, so the TF32 rows fail
    as "did not engage" and the rounding rule found is "not rounded"."""
    import sys

    from benchmarks import precision_stage as ps

    cp, torch = fake_stage_modules()
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "torch", torch)
    for name, value in (("SIZE", 96), ("MODEL_ROWS", 32), ("ROUNDING_SHAPE", (64, 16)), ("REPEAT", 2)):
        monkeypatch.setattr(ps, name, value)
    saved = []
    result = ps.precision_stage(saved.append)
    assert len(saved) >= 8 and saved[-1]["rows"] == result["rows"][:len(saved[-1]["rows"])]
    assert [r["name"] for r in result["rows"]] == [
        "cupy ieee", "cupy tf32_products", "cupy tf32_products a.T @ b (BP4, BP2 shapes)",
        "cupy tf32_products a @ b.T (BP4, BP2 shapes)", "cupy ieee after the block", "cupy compute type only",
        "cupy math mode only", "cupy bfloat16 a @ b", "cupy bfloat16 a.T @ b", "cupy bfloat16 a @ b.T"]
    assert all(r["rel_error"] < 1e-6 and r["ms"] >= 0 for r in result["rows"] if "bfloat16" not in r["name"])
    assert all(r["as_expected"] for r in result["rows"] if "bfloat16" in r["name"])  # ml_dtypes rounds them
    assert result["bfloat16_model"]["elements_differing"] > 0  # NumPy's bfloat16 matmul does not round its output
    before = {"math_mode": 0, "compute_type": DEFAULT}
    assert result["state"] == {"before": before, "after": before, "after halves": before}
    assert result["model"]["rel_error"] > 1e-4  # IEEE products against the TF32 model
    assert result["rounding"]["rule"] == "not rounded (IEEE)"
    assert [r["name"] for r in result["torch"]["rows"]] == ["torch ieee", "torch tf32", "torch bfloat16"]
    assert torch.backends.cuda.matmul.fp32_precision == "none"  # restored
    assert result["torch"]["rounding"]["rule"] == "not rounded (IEEE)"
    assert sum("TF32 did not engage" in f for f in result["failures"]) == 3
    assert any("CPU model" in f for f in result["failures"])
    assert result["verdict"].startswith("tf32_products")
    switched = [c for c in cp.calls if c[0] in ("setMathMode", "set_compute_type")]
    assert ("setMathMode", 100, CUBLAS_TF32_TENSOR_OP_MATH) in switched and switched[-1][-1] in (0, DEFAULT)
