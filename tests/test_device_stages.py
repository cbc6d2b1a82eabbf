"""The device check's stages (benchmarks/device_stages.py, with kernel_timings.py and
step_timings.py) run whole on the CuPy stand-in, at small sizes, as the check's child runs them
(timed_command.run_child: every save written as JSON): each section holds what
device_report.py renders from it, and where the stand-in computes right there is no failure.
Then the stand-in's pieces these stages use, held to CuPy 14.2's behaviour.

Not reached here: PyTorch on CUDA. The timings stage runs with torch not importable, so
step_timings gives its "skipped" row; of a step case only its gpubp side (gpubp_sgd_step) runs
here, while step_case, torch_twin and step_errors run only on a card (kernels_per_step and
set_fp32_precision have fake-torch tests in tests/test_device_check.py). Nor the tests stage,
which runs pytest on the GPU tests (its parsing is tested there too). Times are the host's (the
stand-in's events), so no target is asserted."""

import json
import sys
from functools import partial

import numpy as np
import pytest

from benchmarks import device_report, device_stages, kernel_timings, step_timings
from benchmarks.timed_command import run_child
from gpubp import MLP, get_backend, kernels, parity
from gpubp.backend import to_numpy
from gpubp.kernel_set import OPERATIONS
from gpubp.optim import SGD

from .conftest import assert_close

# Elements of the timing arrays: 2 rows of 1024, 204 rows of 10 classes (the softmax kernel runs
# through tests/fake_cuda_threads.py, a host thread per CUDA thread: its rows cost)
SMALL = 2 * 1024


def run_stage(stage, tmp_path) -> dict:
    """The section ``stage(save)`` returns, as the device check's child writes it (a save or a
    section that JSON cannot hold is an error there); raises with the traceback on an error."""
    result = tmp_path / "section.json"
    code = run_child(stage, result)
    data = json.loads(result.read_text())
    assert code == 0 and "error" not in data, f"{data.get('error')}\n{data.get('traceback')}"
    return data["section"]


def rendered(name: str, section: dict) -> str:
    """summary.md's part for stage ``name``: its tables, which must render (device_report turns a
    renderer's error into a "not rendered" line, so a missing key would pass unseen on a card)."""
    status = {"status": "failed" if section.get("failures") else "passed", "seconds": 1.0, "budget_s": 30}
    report = {"date": "today", "stages": {name: status}, "sections": {name: section}}
    text = "\n".join(device_report.stage_lines(name, report))
    assert "not rendered" not in text, text
    return text


@pytest.fixture
def no_torch(monkeypatch):
    """``import torch`` raises ImportError, as where PyTorch is not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def test_preflight_reads_the_card_and_runs_the_probe_kernel(fake_cupy, no_torch, tmp_path):
    env = run_stage(device_stages.preflight, tmp_path)
    assert env["gpu"] == "gpubp CuPy stand-in (NumPy)" and env["gpu_memory_gib"] == 80.0
    assert (env["compute_capability"], env["driver_cuda"], env["runtime_cuda"], env["nvrtc"]) == (
        "9.0", "13.0", "13.0", "13.0")
    assert env["cupy"] == fake_cupy.__version__ and env["torch"].startswith("not importable (ModuleNotFoundError")
    assert env["probe"] == {"float32": True, "float16": True}  # both compiled (float16 through cupy/float16.cuh's twin)
    assert env["failures"] == [] and env["verdict"] == "gpubp CuPy stand-in (NumPy); probe kernel ran"
    text = rendered("preflight", env)
    assert "CUDA runtime 13.0, NVRTC 13.0; CuPy 14.0.0+gpubp.stand.in" in text
    assert "Probe kernel: float32 ok, float16 ok" in text


def test_the_probe_kernel_fails_on_a_wrong_value(fake_cupy, monkeypatch):
    """A probe that computes wrong in one dtype is a failure of the preflight, named by dtype."""
    real = fake_cupy.ElementwiseKernel

    class OffByOneInHalf(real):
        def __call__(self, x):
            y = real.__call__(self, x)
            return y + 1 if x.dtype == "float16" else y

    monkeypatch.setattr(fake_cupy, "ElementwiseKernel", OffByOneInHalf)
    assert device_stages.probe_kernel(fake_cupy) == {"float32": True, "float16": False}


def test_parity_stage_passes_every_check_on_the_stand_in(fake_cupy, monkeypatch, tmp_path):
    monkeypatch.setattr(parity, "N", 33)  # rows of the kernel checks' inputs (257 on the card)
    monkeypatch.setattr(parity, "model_checks", partial(parity.model_checks, steps=2))  # (20)
    section = run_stage(device_stages.parity_stage, tmp_path)
    rows = section["rows"]
    assert all(any(r["check"].startswith(operation) for r in rows) for operation in OPERATIONS)
    assert {r["check"] for r in rows if r["check"].startswith("model")} == {
        "model relu: loss, all dW and db", "model sigmoid: loss, all dW and db", "model tanh: loss, all dW and db",
        "model identity: loss, all dW and db", "model 2 momentum steps: parameters", "model 2 adam steps: parameters"}
    assert {r["dtype"] for r in rows} == {"float32", "float64"}
    assert section["failures"] == [], section["failures"]
    assert section["verdict"] == f"{len(rows)}/{len(rows)} checks within tolerance"
    assert rendered("parity", section).count("| yes |") == len(rows)


def test_timings_stage_times_every_kernel_and_skips_the_steps_without_torch(fake_cupy, no_torch, monkeypatch,
                                                                             tmp_path):
    monkeypatch.setattr(device_stages, "N_ELEMENTS", SMALL)
    monkeypatch.setattr(kernel_timings, "event_median_ms", partial(kernel_timings.event_median_ms, repeat=3, warmup=1))
    timings = run_stage(device_stages.timings_stage, tmp_path)
    assert timings["copy"]["ms"] > 0 and timings["copy"]["gbs"] > 0
    names = list(kernel_timings.timing_calls(fake_cupy, kernels.CUDA_KERNELS,
                                             kernel_timings.timing_arrays(fake_cupy, SMALL)))
    assert [r["kernel"] for r in timings["kernels"]] == names and sorted(names) == sorted(kernel_timings.BYTES)
    for row in timings["kernels"]:
        assert row["agree"] and row["rel_error"] < kernel_timings.AGREE_RTOL, row
        assert row["ms"] > 0 and row["chain_ms"] > 0 and row["bytes"] == list(kernel_timings.BYTES[row["kernel"]])
        assert row["met"] == (row["missed"] == []) and set(row["missed"]) <= {"bandwidth", "speed-up"}
    assert [r["kernel"] for r in timings["fmad"]] == list(kernels.ELEMENTWISE_SPECS)
    for row in timings["fmad"]:
        assert "skipped" not in row and row["options"] == "--fmad=false" and row["ratio"] > 0, row
    (steps,) = timings["steps"]
    assert steps["case"] == "all" and steps["skipped"].startswith("PyTorch not importable: ModuleNotFoundError")
    assert timings["failures"] == []
    met = sum(r["met"] for r in timings["kernels"])
    assert timings["verdict"] == f"kernels: {met}/{len(names)} targets met"  # no step timed: no step part
    text = rendered("timings", timings)
    assert f"| {names[0]} | {timings['kernels'][0]['ms']:.3f} |" in text
    assert "| gpubp_adam | --fmad=false |" in text and "| all | skipped: PyTorch not importable" in text


def test_estimator_stage_fits_both_and_agrees_with_the_cpu(fake_cupy, monkeypatch, tmp_path):
    monkeypatch.setattr(device_stages, "ESTIMATOR_SAMPLES", 600)
    monkeypatch.setattr(device_stages, "ESTIMATOR_SETTINGS", dict(hidden_layer_sizes=(16,), max_iter=2,
                                                                  random_state=0))
    estimator = run_stage(device_stages.estimator_stage, tmp_path)
    assert estimator["settings"]["data"] == "600 x 784 float32, 10 classes"
    assert estimator["agree"] and estimator["loss_curve_rel_error"] <= device_stages.ESTIMATOR_RTOL
    assert estimator["gpubp_cuda_s"] > 0 and estimator["sklearn_cpu_s"] > 0 and estimator["cpu_cores"] >= 1
    assert estimator["speedup"] == pytest.approx(estimator["sklearn_cpu_s"] / estimator["gpubp_cuda_s"])
    assert set(estimator["final_loss"]) == {"gpubp cuda", "sklearn cpu"}
    assert estimator["failures"] == [] and estimator["met"] == (estimator["speedup"] >= 10)
    assert "scikit-learn on" in rendered("estimator", estimator)


def test_the_timed_gpubp_step_is_an_sgd_step_without_a_host_sync(fake_cupy):
    """step_timings.gpubp_sgd_step (the gpubp side of a step case, which needs no PyTorch): two
    steps equal two of the same SGD on the CPU, and launch no host sync (the step timed against
    PyTorch's must not wait for the card)."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(64, 20)).astype(np.float32), rng.integers(0, 10, 64)
    cpu, cuda = (MLP([20, 16, 10], "relu", get_backend(d), "float32", seed=0) for d in ("cpu", "cuda"))
    step = step_timings.gpubp_sgd_step(cuda, fake_cupy.asarray(X), fake_cupy.asarray(y))
    syncs = fake_cupy.activity.syncs
    step()
    step()
    assert fake_cupy.activity.syncs == syncs
    opt = SGD(momentum=kernel_timings.MOMENTUM)
    state = opt.init(cpu.flat_params)
    for _ in range(2):
        opt.update(cpu.flat_params, cpu.flat_loss_and_grad(X, y)[1], state, step_timings.LR)
    assert_close(to_numpy(cuda.flat_params), cpu.flat_params, rtol=1e-5, atol=1e-7, what="parameters after 2 steps")
    assert not np.array_equal(cpu.flat_params, MLP([20, 16, 10], "relu", get_backend("cpu"), seed=0).flat_params)


# ------------------------------------------------------------------ the stand-in's pieces these stages use


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


def test_the_stand_ins_float16_converts_as_numpy_rounds(fake_cupy):
    """cupy/float16.cuh's twin, its conversions written in integer operations: every float16 goes
    to float and back unchanged, and floats round to float16 to nearest, ties to even, as NumPy's
    astype does: ties at every spacing, subnormals, overflow to inf, infinities and NaN."""
    cp = fake_cupy
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16)
    halves = halves[~np.isnan(halves)]
    to_float = cp.ElementwiseKernel("float16 h", "float32 f", "f = h", "half_to_float")
    to_half = cp.ElementwiseKernel("float32 f", "float16 h", "h = f", "float_to_half")
    as_float = to_float(cp.asarray(halves)).get()
    assert np.array_equal(as_float, halves.astype(np.float32))
    assert np.array_equal(to_half(cp.asarray(as_float)).get().view(np.uint16), halves.view(np.uint16))
    below_max = halves[np.abs(halves) < np.float16(65504)]  # each with a finite next float16 above it
    steps = np.nextafter(below_max, np.float16(np.inf)).astype(np.float32) - below_max.astype(np.float32)
    ties = below_max.astype(np.float32) + steps / 2  # halfway to the next float16 (exact in float32)
    rng = np.random.default_rng(0)
    floats = np.concatenate([ties, ties + steps / 4, ties - steps / 4, [65504, 65519.99, 65520, 1e9, -1e9, 1e-9, -0.0,
                             np.inf, -np.inf], rng.normal(scale=300, size=10000)]).astype(np.float32)
    got = to_half(cp.asarray(floats)).get()
    with np.errstate(over="ignore"):  # NumPy's cast of 65520 and above to inf, as it should
        expected = floats.astype(np.float16)
    assert np.array_equal(got.view(np.uint16), expected.view(np.uint16))
    assert np.isnan(to_half(cp.asarray(np.array([np.nan], np.float32))).get()).all()
