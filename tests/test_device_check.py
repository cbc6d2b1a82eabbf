"""benchmarks/device_check.py (with the stages, timings and summary.md it runs from
device_stages.py, kernel_timings.py, step_timings.py and device_report.py) and bench_gpu.py
without a GPU: the refusal, the stage runner (a stage that raises, one that hangs), the files
written, no temporary folder left behind, the summary's tables and the byte counts behind the
kernel targets."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks import device_check as dc
from benchmarks import device_report, device_stages, kernel_timings, step_timings
from gpubp import kernels
from gpubp.backend import cuda_status

from . import fake_cupy
from .conftest import REPO

SCRIPT = REPO / "benchmarks" / "device_check.py"
NO_GPU = pytest.mark.skipif(cuda_status().usable, reason="a GPU is usable here")


@NO_GPU
def test_without_a_gpu_it_writes_why_to_out_and_exits_3(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OUT": str(tmp_path)})
    assert result.returncode == 3
    assert "no usable GPU" in result.stdout and "nothing was measured" in result.stdout
    assert os.listdir(tmp_path) == ["env.json"]
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["usable"] is False and env["reason"] == cuda_status().reason


FAKE_STAGES = '''
import sys, time
sys.path.insert(0, {repo!r})
from benchmarks import device_check as dc

def first(save):
    return {{"verdict": "first ran"}}

def boom(save):
    save({{"verdict": "half done"}})
    raise RuntimeError("planted failure")

def hang(save):
    save({{"verdict": "saved before the hang"}})
    time.sleep(60)

def last(save):
    return {{"verdict": "last ran", "failures": []}}

STAGES = {{"first": (first, 30), "boom": (boom, 30), "hang": (hang, 6), "last": (last, 30)}}

if __name__ == "__main__":
    sys.exit(dc.main(stages=STAGES, script=__file__))
'''


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """The runner over four injected stages (one raises, one hangs past its 6 s budget, long
    enough for the stage to save its first result on a loaded machine)."""
    tmp_path = tmp_path_factory.mktemp("fake_run")
    script = tmp_path / "fake_stages.py"
    script.write_text(FAKE_STAGES.format(repo=str(REPO)))
    spec = importlib.util.spec_from_file_location("fake_stages", script)
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    out, scratch = tmp_path / "out", tmp_path / "tmp"  # the runner's temporary folder goes under scratch
    scratch.mkdir()
    t0 = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tempfile, "tempdir", str(scratch))
        report = dc.run_stages(fake.STAGES, script, out)
    return report, out, time.monotonic() - t0


def test_the_runner_removes_its_temporary_folder(fake_run):
    _, out, _ = fake_run
    assert os.listdir(out.parent / "tmp") == []


def test_a_stage_that_raises_is_recorded_and_the_next_stages_run(fake_run):
    report, out, _ = fake_run
    assert [s["status"] for s in report["stages"].values()] == ["passed", "error", "timed out", "passed"]
    boom = report["stages"]["boom"]
    assert boom["detail"] == "RuntimeError: planted failure"
    assert 'raise RuntimeError("planted failure")' in boom["traceback"] and "in boom" in boom["traceback"]
    assert report["sections"]["boom"] == {"verdict": "half done"}  # what it saved before raising
    assert report["sections"]["last"]["verdict"] == "last ran"
    assert dc.exit_status(report) == 1
    saved = json.loads((out / "boom.json").read_text())
    assert saved["status"] == "error" and saved["result"] == {"verdict": "half done"}


def test_a_stage_that_hangs_is_killed_at_its_budget_and_the_next_stages_run(fake_run):
    report, out, seconds = fake_run
    hang = report["stages"]["hang"]
    assert hang["detail"] == "timed out after 6 s (the results saved before are kept)"
    assert 6 <= hang["seconds"] < 20 and seconds < 40
    assert report["sections"]["hang"] == {"verdict": "saved before the hang"}
    assert json.loads((out / "hang.json").read_text())["status"] == "timed out"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Device check: card unknown (no preflight), ")
    assert "## hang: timed out: timed out after 6 s (the results saved before are kept)" in summary
    assert "## boom: error: RuntimeError: planted failure" in summary
    assert "| last | 30 |" in summary and summary.rstrip().endswith("last ran")


def test_at_most_eight_files_are_written(fake_run):
    _, out, _ = fake_run
    assert sorted(os.listdir(out)) == ["boom.json", "first.json", "hang.json", "last.json", "summary.md"]
    # the real stages: one file each, pytest's JUnit XML and summary.md
    assert len(dc.STAGES) + 2 <= dc.MAX_OUT_FILES
    assert {dc.stage_file(name) for name in dc.STAGES} == {"env.json", "parity.json", "tests.json",
                                                         "timings.json", "estimator.json", "precision.json"}


def test_the_budgets_fit_a_six_minute_run():
    assert sum(budget for _, budget in dc.STAGES.values()) <= 360
    assert sum(budget for _, budget in dc.STAGES.values()) + dc.PROBE_S <= 420  # the probe's child first
    assert device_stages.PYTEST_LIMIT_S + 10 <= dc.STAGES["tests"][1]


def full_report():
    """A report as the runner leaves it when the timings stage timed out after its kernel table."""
    passed = {"status": "passed", "seconds": 8.2, "budget_s": 40}
    return {
        "date": "2026-11-27 10:00 UTC",
        "stages": {"preflight": passed, "parity": {"status": "failed", "seconds": 20.5, "budget_s": 75,
                              "detail": "model relu: loss, all dW and db float32: worst 3.00e-04 > 1e-04"},
                   "tests": {"status": "failed", "seconds": 41.0, "budget_s": 100, "detail": "pytest exit status 1"},
                   "timings": {"status": "timed out", "seconds": 95.0, "budget_s": 95,
                               "detail": "timed out after 95 s (the results saved before are kept)", "output": "..."},
                   "estimator": {**passed, "seconds": 30.1, "budget_s": 50}},
        "sections": {
            "preflight": {"gpu": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.1, "compute_capability": "9.0",
                          "driver": "580.65", "driver_cuda": "13.0", "runtime_cuda": "13.0", "nvrtc": "13.0",
                          "cupy": "14.2.0", "numpy": "2.3.0", "sklearn": "1.7.0", "torch": "2.11.0",
                          "python": "3.12.3", "cupy_tf32": "unset", "torch_matmul_fp32_precision": "none",
                          "torch_conv_fp32_precision": "none", "probe": {"float32": True, "float16": True},
                          "verdict": "NVIDIA H100 80GB HBM3; probe kernel ran"},
            "parity": device_stages.parity_section([fake_check("bias_activation relu [contiguous]", 2e-8, True),
                                         fake_check("model relu: loss, all dW and db", 3e-4, False)]),
            "tests": {"passed": 11, "failed": 1, "skipped": 0, "failed_tests": ["tests/test_gpu.py::test_x: boom"],
                      "running": None, "exit_status": 1, "per_test_timeout": "40 s per test (pytest-timeout)",
                      "seconds": 41.0, "verdict": "11 passed, 1 failed, 0 skipped"},
            "timings": device_stages.timings_summary({"copy": {"ms": 0.05, "gbs": 2600.0}, "kernels": [
                {"kernel": "backprop_delta relu", "ms": 0.08, "gbs": 2516.6, "pct_copy": 96.8, "chain_ms": 0.1,
                 "speedup": 1.25, "bytes": [12, 14],
                 "speedup_target": kernel_timings.speedup_target("backprop_delta relu"),
                 "rel_error": 0.0, "agree": True, "missed": [], "met": True},
                {"kernel": "softmax_minus_y", "ms": 0.12, "gbs": 1230.0, "pct_copy": 47.3, "chain_ms": 0.4,
                 "speedup": 3.33, "bytes": [8.8, 65.6],
                 "speedup_target": kernel_timings.speedup_target("softmax_minus_y"),
                 "rel_error": 2e-7, "agree": True, "missed": ["bandwidth", "speed-up"], "met": False}]}),
            "estimator": {"loss_curve_rel_error": 2e-6, "agree": True, "gpubp_cuda_s": 1.5, "sklearn_cpu_s": 30.0,
                          "cpu_cores": 16, "speedup": 20.0, "target": ">= 10.0x", "met": True,
                          "verdict": "20.0x scikit-learn (target >= 10.0x: met)"},
        },
    }


def fake_check(check, worst, passed):
    from gpubp.parity import CheckResult

    return CheckResult(check, "float32", worst, 1e-4 if check.startswith("model") else 1e-5, passed)


def test_summary_renders_every_table_with_verdicts():
    lines = device_report.markdown(full_report()).splitlines()
    assert lines[0] == "# Device check: NVIDIA H100 80GB HBM3, 2026-11-27 10:00 UTC"
    for row in [
        "| preflight | 40 | 8.2 | passed | NVIDIA H100 80GB HBM3; probe kernel ran |",
        "| parity | 75 | 20.5 | failed | model relu: loss, all dW and db float32: worst 3.00e-04 > 1e-04 |",
        "| tests | 100 | 41.0 | failed | pytest exit status 1 |",
        "| timings | 95 | 95.0 | timed out | timed out after 95 s (the results saved before are kept) |",
        "| estimator | 50 | 30.1 | passed | 20.0x scikit-learn (target >= 10.0x: met) |",
        "| bias_activation relu [contiguous] | float32 | 2.00e-08 | 1e-05 | yes |",
        "| model relu: loss, all dW and db | float32 | 3.00e-04 | 1e-04 | NO |",
        "- failed: tests/test_gpu.py::test_x: boom",
        "| backprop_delta relu | 0.080 | 2517 | 97 | 0.100 | 1.25x | 12 / 14 | >= 0.93x | 0.0e+00 | yes |",
        "| softmax_minus_y | 0.120 | 1230 | 47 | 0.400 | 3.33x | 8.8 / 65.6 | >= 5.96x | 2.0e-07 "
        "| NO: bandwidth, speed-up |",
        "## timings: timed out: timed out after 95 s (the results saved before are kept)",
    ]:
        assert row in lines, row
    assert lines.count("not measured") == 2  # the fmad and step tables the timeout cut off
    text = "\n".join(lines)
    assert "TF32: CUPY_TF32 unset; torch matmul fp32_precision none, cudnn conv fp32_precision none" in text
    assert "Probe kernel: float32 ok, float16 ok" in text
    assert "gpubp cuda 1.50 s, scikit-learn on 16 CPU cores 30.00 s: 20.0x (target >= 10.0x: met)" in text


def test_timing_tables_render_steps_and_the_fmad_cost():
    lines = device_report.timings_lines({
        "fmad": [{"kernel": "gpubp_adam", "options": "--fmad=false", "gpubp_ms": 0.21, "fmad_ms": 0.2, "ratio": 1.05},
                 {"kernel": "gpubp_new", "skipped": "no arguments known for this kernel"}],
        "steps": [{"case": "784-512-512-10 b256", "gpubp_ms": 0.3, "torch_ms": 0.25, "ratio": 1.2, "gpubp_tflops": 1.1,
                   "max_rel_error": 1e-6, "agree": True, "target": "<= 1.0x torch eager", "met": False,
                   "gpubp_kernels": 20, "launch_budget": 21, "torch_kernels": 25},
                  {"case": "784-512-512-10 b4096", "gpubp_ms": 0.5, "torch_ms": 0.5, "ratio": 1.0, "gpubp_tflops": 9.0,
                   "max_rel_error": 1e-6, "agree": True, "target": "<= 1.0x torch eager", "met": True},
                  {"case": "4096-4096-4096-10 b4096", "max_rel_error": 0.2, "agree": False}]})
    for row in ["| gpubp_adam | --fmad=false | 0.210 | 0.200 | 1.05 |",
                "| gpubp_new | skipped: no arguments known for this kernel | | | |",
                "| 784-512-512-10 b256 | 0.300 | 0.250 | 1.20x | 1.1 | 1.0e-06 | <= 1.0x torch eager | NO | 20 / 21 / 25 |",
                "| 784-512-512-10 b4096 | 0.500 | 0.500 | 1.00x | 9.0 | 1.0e-06 | <= 1.0x torch eager | yes | not counted |",
                "| 4096-4096-4096-10 b4096 | not timed: gpubp and PyTorch disagree | | | | 2.0e-01 | | NO |"]:
        assert row in lines, row
    disagree = {"steps": [{"case": "c", "max_rel_error": 0.2, "agree": False}]}
    assert device_stages.timings_summary(disagree)["failures"] == [
        "c: gpubp and PyTorch disagree (2.0e-01)"]


def fake_profiled_torch(events):
    """A stand-in for the parts of torch that step_timings.kernel_times uses: a profiler whose one
    profile holds ``events`` ((device type, name, start us, end us)), and no-op synchronization."""
    from contextlib import contextmanager

    def event(device, name, start, end):
        return SimpleNamespace(device_type=device, name=name,
                               time_range=SimpleNamespace(elapsed_us=lambda: end - start))

    @contextmanager
    def profile(activities):
        assert activities == ["cuda activity"]
        yield SimpleNamespace(events=lambda: [event(*e) for e in events])

    return SimpleNamespace(profiler=SimpleNamespace(profile=profile, ProfilerActivity=SimpleNamespace(CUDA="cuda activity")),
                           cuda=SimpleNamespace(synchronize=lambda: None),
                           autograd=SimpleNamespace(DeviceType=SimpleNamespace(CUDA="cuda", CPU="cpu")))


def test_every_step_case_is_timed_before_any_is_profiled(monkeypatch):
    # a profile leaves CUPTI attached and slows the process's later launches: profiling each case
    # right after its timing weighed on every later case's times
    events, saved = [], []
    torch = SimpleNamespace(backends=SimpleNamespace(cuda=SimpleNamespace(matmul=SimpleNamespace()),
                                                     cudnn=SimpleNamespace()))
    monkeypatch.setitem(sys.modules, "torch", torch)

    def step_case(cp, torch, sizes, batch, precision):
        events.append(("time", precision, torch.backends.cuda.matmul.fp32_precision))
        agree = batch != 4096 or precision != "tf32"  # one case disagrees: timed, never profiled
        return {"case": f"{sizes} {batch} {precision}", "agree": agree}, (("gpubp", precision), ("torch", precision)) if agree else None

    def kernels_per_step(torch, step):
        events.append(("profile", step[1], torch.backends.cuda.matmul.fp32_precision))
        return [["k", 1.0]]

    monkeypatch.setattr(step_timings, "step_case", step_case)
    monkeypatch.setattr(step_timings, "kernels_per_step", kernels_per_step)
    rows = step_timings.step_timings(None, lambda rows: saved.append(len(rows)))
    kinds = [e[0] for e in events]
    assert kinds.index("profile") == kinds.count("time") == len(rows) and "time" not in kinds[kinds.index("profile"):]
    assert all(e[2] == ("tf32" if e[1] == "tf32" else "ieee") for e in events)  # each profiled in its own precision
    assert [r.get("gpubp_kernels") for r in rows if not r["agree"]] == [None] * 3  # the three tf32 cases at b4096
    assert all(r["gpubp_kernels"] == r["torch_kernels"] == 1 for r in rows if r["agree"])
    assert saved[:len(rows)] == list(range(1, len(rows) + 1)) and torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_step_kernels_keep_their_card_time_and_the_report_names_the_heaviest():
    calls = []
    torch = fake_profiled_torch([("cpu", "aten::mm", 0.0, 90.0), ("cuda", "nvjet_gemm" + "x" * 90, 10.0, 60.0),
                                 ("cuda", "Memcpy DtoD", 60.0, 61.0), ("cuda", "gpubp_bias_relu", 61.0, 73.0),
                                 ("cuda", "nvjet_gemm" + "x" * 90, 72.0, 102.0)])
    launches = step_timings.kernels_per_step(torch, lambda: calls.append(1))
    assert calls == [1, 1]  # once to warm up, once profiled
    assert launches == [["nvjet_gemm" + "x" * 70, 50.0], ["gpubp_bias_relu", 12.0], ["nvjet_gemm" + "x" * 70, 30.0]]
    assert step_timings.count(launches) == 3 and step_timings.busy_ms(launches) == pytest.approx(0.092)
    row = {"case": "8192-8192-10 b4096 bfloat16", "gpubp_ms": 0.2, "torch_ms": 0.25, "ratio": 0.8, "gpubp_tflops": 1.0,
           "max_rel_error": 1e-3, "agree": True, "target": "<= 1.0x torch eager", "met": True, "gpubp_kernels": 3,
           "launch_budget": 15, "torch_kernels": 4, "gpubp_kernel_us": launches, "gpubp_busy_ms": 0.092,
           "torch_busy_ms": 0.12}
    lines = device_report.step_lines([row])
    assert ("- 8192-8192-10 b4096 bfloat16: kernels busy 0.092 of 0.200 ms (PyTorch 0.120 of 0.250 ms); heaviest: "
            f"{'nvjet_gemm' + 'x' * 70} 0.080 ms, gpubp_bias_relu 0.012 ms") in lines
    broken = step_timings.kernels_per_step(fake_profiled_torch([("cuda", "k", 0.0, None)]), lambda: None)
    assert broken.startswith("TypeError") and step_timings.busy_ms(broken) is None  # the timings stand without it
    assert not any("busy" in line for line in device_report.step_lines([{**row, "gpubp_kernel_us": broken,
                                                                          "gpubp_busy_ms": None}]))


def test_speedup_targets_follow_from_the_bytes():
    assert kernel_timings.BYTES["backprop_delta relu"] == (12, 14)  # read a and g, write g | a > 0; g * mask
    assert kernel_timings.speedup_target("backprop_delta relu") == pytest.approx(0.8 * 14 / 12)  # 0.93x, not 2x
    assert kernel_timings.BYTES["sgd_momentum_update nesterov"] == (20, 60)
    assert kernel_timings.speedup_target("sgd_momentum_update nesterov") == pytest.approx(2.4)
    assert kernel_timings.BYTES["adam_update"] == (28, 112)
    assert kernel_timings.speedup_target("adam_update") == pytest.approx(3.2)
    assert kernel_timings.speedup_target("bias_activation identity") == pytest.approx(0.8)  # the chain is the kernel


# ------------------------------------------------------------------ the chain bytes, traced


class Traced(np.ndarray):
    """An ndarray that adds to ``moved`` the bytes each operation on it reads and writes: every
    distinct input array once, every output once, index arrays of advanced indexing included."""

    moved = [0]

    @classmethod
    def count(cls, reads, writes):
        distinct = {(a.__array_interface__["data"][0], a.nbytes): a.nbytes for a in reads if isinstance(a, np.ndarray)}
        cls.moved[0] += sum(distinct.values()) + sum(np.asarray(w).nbytes for w in writes)

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        plain = [np.asarray(x) if isinstance(x, np.ndarray) else x for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(np.asarray(o) for o in out)
        result = getattr(ufunc, method)(*plain, **kwargs)
        Traced.count(plain, kwargs["out"] if out is not None else [result])
        if out is not None:
            return out[0]
        return result.view(Traced) if isinstance(result, np.ndarray) else result

    def __array_function__(self, func, types, args, kwargs):
        if func is np.empty_like:  # allocates, moves nothing
            return super().__array_function__(func, types, args, kwargs)
        assert func is np.where, f"gpubp.ops calls numpy.{func.__name__}, which this tracer does not count"
        plain = [np.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        result = np.where(*plain, **kwargs)
        Traced.count(plain, [result])
        return result.view(Traced)

    def argmax(self, *args, **kwargs):  # a method, not a ufunc: counted here
        result = np.asarray(self).argmax(*args, **kwargs)
        Traced.count([np.asarray(self)], [result])
        return result

    def __getitem__(self, key):
        result = super().__getitem__(key)
        if advanced(key):
            Traced.count(index_arrays(key) + [result], [result])
        return result

    def __setitem__(self, key, value):
        written = super().__getitem__(key)  # the elements that are overwritten
        Traced.count((index_arrays(key) if advanced(key) else []) + [value], [written])
        super().__setitem__(key, value)


def index_arrays(key) -> list:
    return [k for k in (key if isinstance(key, tuple) else (key,)) if isinstance(k, np.ndarray) and k.ndim > 0]


def advanced(key) -> bool:
    return bool(index_arrays(key))


class TracedNumpy:
    """numpy as the twins in gpubp.ops see it, with arange counted (it writes its result)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def arange(*args, **kwargs):
        result = np.arange(*args, **kwargs).view(Traced)
        Traced.count([], [result])
        return result


def traced_arrays(n):
    arr = kernel_timings.timing_arrays(np, n)
    for name, value in vars(arr).items():
        if isinstance(value, np.ndarray):
            setattr(arr, name, value.view(Traced))
    arr.a = {k: v.view(Traced) for k, v in arr.a.items()}
    return arr


def test_chain_bytes_are_what_the_numpy_twins_move():
    """Every chain call run on traced arrays moves the bytes per element the table says."""
    n = 2**20
    names = list(kernel_timings.timing_calls(TracedNumpy(), kernels, traced_arrays(1024)))
    assert sorted(names) == sorted(kernel_timings.BYTES)
    for name in names:
        arr = traced_arrays(n)
        _, chain = kernel_timings.timing_calls(TracedNumpy(), kernels, arr)[name]
        Traced.moved[0] = 0
        elements = chain().size
        assert Traced.moved[0] / elements == pytest.approx(kernel_timings.BYTES[name][1], abs=0.01), name


def test_the_tracer_counts_temporaries():
    a, g = (np.ones(1000, np.float32).view(Traced) for _ in range(2))
    Traced.moved[0] = 0
    g * (a > 0)  # a > 0: 4 + 1; the product: 4 + 1 + 4
    assert Traced.moved[0] == 14 * 1000


# ------------------------------------------------------------------ stages' pieces that need no GPU


def test_fmad_arguments_bind_to_every_elementwise_kernel():
    """The arguments the fmad timing passes fit each spec as CuPy binds them (tests/fake_cupy.py)."""
    arr = kernel_timings.timing_arrays(np, 2**14)
    for name, spec in kernels.ELEMENTWISE_SPECS.items():
        args = kernel_timings.fmad_arguments(name, arr)
        assert args is not None, f"no fmad arguments for {name}"
        params = fake_cupy.parse_params(spec.in_params, True) + fake_cupy.parse_params(spec.out_params, False)
        assert len(args) == len(params), name
        fake_cupy.decide_types(params, args)  # raises on a dtype that CuPy would refuse


PYTEST_OUTPUT = """tests/test_gpu.py::test_a PASSED                                     [ 25%]
tests/test_gpu.py::test_b[a @ b] FAILED                             [ 50%]
tests/test_gpu.py::test_c[float32] SKIPPED (no reason)               [ 75%]
tests/test_kernels_gpu.py::test_d PASSED                             [ 80%]
tests/test_kernels_gpu.py::test_d ERROR                              [ 80%]
=========================== short test summary info ============================
FAILED tests/test_gpu.py::test_b[a @ b] - AssertionError: worst element (3,)
ERROR tests/test_kernels_gpu.py::test_d - RuntimeError: teardown
tests/test_kernels_gpu.py::test_e[a.T @ b] """


def test_pytest_output_gives_counts_failures_and_the_test_left_running():
    parsed = device_stages.parse_pytest(PYTEST_OUTPUT)
    assert (parsed["passed"], parsed["failed"], parsed["skipped"]) == (1, 2, 1)
    assert parsed["failed_tests"] == ["tests/test_gpu.py::test_b[a @ b]: AssertionError: worst element (3,)",
                                      "tests/test_kernels_gpu.py::test_d: RuntimeError: teardown"]
    assert parsed["running"] == "tests/test_kernels_gpu.py::test_e[a.T @ b]"  # (ids with spaces: products' shapes)
    assert device_stages.parse_pytest(PYTEST_OUTPUT.rsplit("\n", 1)[0])["running"] is None
    assert device_stages.parse_pytest(PYTEST_OUTPUT.splitlines()[1])["running"] is None  # a test that ended


def test_gpu_tests_fail_on_a_timeout_an_exit_status_or_when_all_were_skipped():
    parsed = {**device_stages.parse_pytest(PYTEST_OUTPUT), "verdict": "1 passed, 2 failed, 1 skipped"}
    assert device_stages.pytest_failures(parsed, None) == [
        f"pytest stopped after {device_stages.PYTEST_LIMIT_S} s while running tests/test_kernels_gpu.py::test_e[a.T @ b] "
        "(1 passed, 2 failed, 1 skipped)"]
    assert device_stages.pytest_failures(parsed, 1)[0] == "pytest exit status 1 (1 passed, 2 failed, 1 skipped)"
    assert device_stages.pytest_failures(parsed, 1)[1:] == parsed["failed_tests"]
    skipped = {"passed": 0, "failed": 0, "skipped": 27, "verdict": "0 passed, 0 failed, 27 skipped"}
    assert device_stages.pytest_failures(skipped, 0) == ["every GPU test was skipped (0 passed, 0 failed, 27 skipped); "
                                              "the tail says why"]
    assert device_stages.pytest_failures({**skipped, "passed": 1}, 0) == []


def test_pytest_gets_a_per_test_timeout_only_where_the_plugin_is(tmp_path):
    with_plugin, note = device_stages.pytest_command(tmp_path / "j.xml", True)
    assert with_plugin[-1] == f"--timeout={device_stages.PER_TEST_TIMEOUT_S}" and "pytest-timeout" in note
    without, note = device_stages.pytest_command(tmp_path / "j.xml", False)
    assert not any(a.startswith("--timeout") for a in without)
    assert note == (f"none per test (pytest-timeout is not installed); {device_stages.PYTEST_LIMIT_S} s "
                    "for the whole run")
    assert without[without.index("gpu and not slow") - 1] == "-m" and f"--junitxml={tmp_path / 'j.xml'}" in without


def test_children_run_without_cupy_tf32(monkeypatch, tmp_path):
    monkeypatch.setenv("CUPY_TF32", "1")
    env = dc.child_env(tmp_path)
    assert "CUPY_TF32" not in env and env["OUT"] == str(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)


# ------------------------------------------------------------------ bench_gpu.py


def load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@NO_GPU
def test_gpu_benchmark_without_a_gpu_measures_nothing():
    script = REPO / "benchmarks" / "bench_gpu.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "nothing was measured" in result.stdout


def test_gpu_benchmark_markdown_marks_the_one_compiled_case_and_the_problems():
    bench = load_bench_gpu()
    row = {"case": "784-512-512-10 b256", "mode": "fp32", "max_rel_error": 1e-6, "agree": True,
           "ms": {"gpubp": 0.3, "torch eager": 0.25, "torch.compile": 0.2, "torch CUDA graph": 0.1},
           "tflops": {"gpubp": 2.0}, "fraction_of_ceiling": 0.04, "ratio_to_eager": 1.2,
           "target": "<= 1.5x eager", "met": True}
    other = {**{k: v for k, v in row.items() if k != "met"}, "case": "784-512-512-10 b1024", "target": "",
             "ms": {"gpubp": 0.5, "torch eager": 0.5, "torch CUDA graph": 0.3}, "ratio_to_eager": 1.0}
    report = {"gpu": "NVIDIA H200 (139.8 GiB)", "date": "today", "cupy": "14.2", "torch": "2.11", "numpy": "2.3",
              "compile_case": "784-512-512-10 b256",
              "rows": [row, other,
                       {"case": "4096-4096-4096-10 b4096", "mode": "fp32", "problem": "timed out after 90 s"}]}
    lines = bench.markdown(report).splitlines()
    for expected in [
        "| 784-512-512-10 b256 | fp32 | 0.300 | 0.250 | 0.200 | 0.100 | 1.20 | 2.0 | 4% | <= 1.5x eager | yes |",
        "| 784-512-512-10 b1024 | fp32 | 0.500 | 0.500 | - | 0.300 | 1.00 | 2.0 | 4% |  |  |",
        "| 4096-4096-4096-10 b4096 | fp32 | timed out after 90 s | | | | | | | | |",
    ]:
        assert expected in lines, expected


def test_gpu_benchmark_stops_starting_cases_past_its_overall_limit(monkeypatch, tmp_path):
    bench = load_bench_gpu()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = bench.run_all(bench.COMPILE_CASE, case_timeout=90, overall=0)
    assert len(rows) == 2 * len(bench.CASES)
    assert {r["problem"] for r in rows} == {"not run: the overall 0 s were spent"}
    assert os.listdir(tmp_path) == []  # its temporary folder removed


def test_gpu_benchmark_compiles_one_case_and_runs_each_case_in_a_child_under_its_limit(monkeypatch):
    bench = load_bench_gpu()
    calls = []

    def timed_out(cmd, budget, result, env):
        calls.append((cmd, budget, env.get("CUPY_TF32")))
        return {"status": "timed out", "detail": f"timed out after {budget} s", "seconds": budget}, None

    monkeypatch.setattr(bench.runner, "run_isolated", timed_out)
    rows = bench.run_all(bench.COMPILE_CASE, case_timeout=90, overall=10_000)
    compiled = [(cmd, budget) for cmd, budget, _ in calls if "--with-compile" in cmd]
    assert len(compiled) == 1 and compiled[0][1] == bench.COMPILE_TIMEOUT_S
    assert compiled[0][0][compiled[0][0].index("--mode") + 1] == "fp32"
    assert sorted(budget for _, budget, _ in calls) == [90] * (len(calls) - 1) + [bench.COMPILE_TIMEOUT_S]
    assert [tf32 for cmd, _, tf32 in calls] == [None] * len(bench.CASES) + ["1"] * len(bench.CASES)
    assert rows[0] == {"case": "784-512-512-10 b256", "mode": "fp32",
                       "problem": f"timed out after {bench.COMPILE_TIMEOUT_S} s"}
    calls.clear()
    bench.run_all("none", 90, 10_000)
    assert len(calls) == 2 * len(bench.CASES) and not any("--with-compile" in cmd for cmd, _, _ in calls)
    for script in sorted((REPO / "benchmarks").glob("*.py")):  # the legacy flags conflict on torch >= 2.9
        assert not re.search(r"allow_tf32\s*=", script.read_text()), script


def test_results_md_renders_the_newest_device_check(tmp_path):
    from benchmarks.results_md import render, write_results

    write_results("device_check-2026-11-27-NVIDIA-H100", full_report(), "unused", folders=[tmp_path])
    text = render(tmp_path, tmp_path / "RESULTS.md").read_text()
    assert "## GPU (device_check-2026-11-27-NVIDIA-H100.json)" in text
    assert "| estimator | 50 | 30.1 | passed | 20.0x scikit-learn (target >= 10.0x: met) |" in text


def _stage_file(folder, name, status, result):
    folder.mkdir(exist_ok=True)
    data = {"stage": name, "budget_s": 10, "seconds": 1.0, "status": status, "result": result}
    (folder / dc.stage_file(name)).write_text(json.dumps(data))


def test_collect_rebuilds_the_report_and_a_rerun_replaces_its_stages(tmp_path):
    """What comes back from $OUT is one file per stage; --collect joins the runs of a lease."""
    first, rerun = tmp_path / "run1", tmp_path / "run2"
    for folder, date in ((first, "2026-11-26 15:58 UTC"), (rerun, "2026-11-26 16:01 UTC")):
        _stage_file(folder, "preflight", "passed", {"gpu": "Card X", "date": date, "verdict": "ok"})
    _stage_file(first, "parity", "passed", {"verdict": "104/104"})
    _stage_file(first, "tests", "failed", {"verdict": "1 failed"})
    _stage_file(rerun, "tests", "passed", {"verdict": "28 passed"})
    report = dc.collect([first, rerun])
    assert report["date"] == "2026-11-26 15:58 UTC"
    assert report["sections"]["tests"]["verdict"] == "28 passed"
    assert report["sections"]["parity"]["verdict"] == "104/104"
    assert report["stages"]["tests"]["run"] == "run2, after the preflight of 2026-11-26 16:01 UTC"
    assert report["stages"]["parity"]["run"].startswith("run1, ")
    assert dc.exit_status(report) == 0
    assert dc.exit_status(dc.collect([first])) == 1
    assert device_report.stage_rows(report)[0].endswith("| run |")


def test_the_runner_probes_the_card_in_a_child_under_a_time_limit(monkeypatch, tmp_path):
    # the runner probed in its own process, unguarded: a hang there hung the whole command
    # with nothing in $OUT; now it is a reason, written to env.json, exit status 3
    monkeypatch.setattr(dc, "PROBE_S", 2)
    monkeypatch.setattr(dc, "PROBE", "import time; time.sleep(60)")
    monkeypatch.setenv("OUT", str(tmp_path))
    assert dc.main([]) == 3
    reason = json.loads((tmp_path / "env.json").read_text())["reason"]
    assert reason == "gpubp's CUDA probe did not finish in 2 s (a hang in the driver, NVRTC or cuBLAS)"
    monkeypatch.setattr(dc, "PROBE", "raise SystemExit('the driver said no')")
    assert dc.probe_in_child(os.environ.copy()) == (False, "gpubp's CUDA probe failed (exit status 1): the driver said no")
    monkeypatch.setattr(dc, "PROBE", """print('gpubp-probe: [true, "usable"]', flush=True); import sys; """
                                     """sys.stderr.write('Exception ignored in: <teardown>')""")
    assert dc.probe_in_child(os.environ.copy()) == (True, "usable")  # whatever comes after its line


def test_collect_refuses_a_preflight_that_saved_nothing(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"stage": "preflight", "status": "error", "result": None}))
    with pytest.raises(SystemExit, match="not a preflight that found a GPU"):
        dc.collect([tmp_path])


def test_collect_refuses_a_run_that_found_no_gpu(tmp_path):
    (tmp_path / "env.json").write_text(json.dumps({"usable": False, "reason": "no CuPy"}))
    with pytest.raises(SystemExit, match="not a preflight that found a GPU"):
        dc.collect([tmp_path])
