"""The five stages of the device check (benchmarks/device_check.py runs each in a child process):
preflight, parity, the GPU tests, the timings (benchmarks/kernel_timings.py and step_timings.py)
and the estimator. Each takes ``save`` (to keep a partial section past a timeout or an error)
and returns its section: what it measured, its ``failures`` and a ``verdict``."""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.kernel_timings import N_ELEMENTS, fmad_timings, kernel_timings, timing_arrays
from benchmarks.step_timings import STEP_TARGET, step_timings
from benchmarks.timed_command import REPO, run_command, tail


PER_TEST_TIMEOUT_S = 40
PYTEST_LIMIT_S = 125  # inside the tests stage's 140 s
ESTIMATOR_SPEEDUP_TARGET = 10.0  # scikit-learn on the CPU / gpubp on cuda, issue 4
ESTIMATOR_RTOL = 1e-3  # loss curves, gpubp cuda against gpubp cpu, float32
ESTIMATOR_SETTINGS = dict(hidden_layer_sizes=(512, 512), max_iter=2, random_state=0)
ESTIMATOR_SAMPLES = 60000  # of 784 features (a test runs the stage on fewer)


# ------------------------------------------------------------------ stage 1: preflight


def preflight(save) -> dict:
    """Card, driver, CUDA, library versions, TF32 settings, and one tiny kernel compiled and run."""
    import cupy as cp

    env = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           **device_info(cp), "cupy": cp.__version__, "numpy": np.__version__, "python": platform.python_version(),
           "sklearn": _version("sklearn"), "pytest_timeout": importlib.util.find_spec("pytest_timeout") is not None,
           "cupy_tf32": os.environ.get("CUPY_TF32") or "unset"}
    env.update(torch_info())
    save(env)
    env["probe"] = probe_kernel(cp)
    env["failures"] = [f"probe kernel gave wrong {d} values" for d, ok in env["probe"].items() if ok is False]
    env["verdict"] = f"{env['gpu']}; probe kernel {'ran' if not env['failures'] else 'FAILED'}"
    return env


def device_info(cp) -> dict:
    """Card, memory, compute capability, driver, and the CUDA driver, runtime and NVRTC versions."""
    runtime = cp.cuda.runtime
    props = runtime.getDeviceProperties(runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def dotted(v):
        return f"{v // 1000}.{v % 1000 // 10}"

    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        driver = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "?"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        driver = "?"
    return {"gpu": name, "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "compute_capability": f"{props['major']}.{props['minor']}", "driver": driver,
            "driver_cuda": dotted(runtime.driverGetVersion()), "runtime_cuda": dotted(runtime.runtimeGetVersion()),
            "nvrtc": ".".join(map(str, cp.cuda.nvrtc.getVersion()))}


def _version(module: str) -> str:
    """A module's __version__, or why it does not import."""
    try:
        return __import__(module).__version__
    except Exception as exc:  # reported, not fatal: the stages that need it say so again
        return f"not importable ({type(exc).__name__}: {exc})"


def torch_info() -> dict:
    """PyTorch's version, CUDA build and float32 precision settings (the fp32_precision API)."""
    try:
        import torch
    except Exception as exc:
        return {"torch": f"not importable ({type(exc).__name__}: {exc})"}
    conv = getattr(torch.backends.cudnn, "conv", None)
    return {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "torch_matmul_fp32_precision": getattr(torch.backends.cuda.matmul, "fp32_precision", "absent"),
            "torch_conv_fp32_precision": getattr(conv, "fp32_precision", "absent")}


def probe_kernel(cp) -> dict:
    """y = x * x + x through a fresh ElementwiseKernel, float32 and float16 (cuda_fp16.h):
    proves NVRTC and the CUDA headers are found. dtype -> whether the values are right."""
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x * x + x", "gpubp_preflight_probe")
    found = {}
    for dtype in ("float32", "float16"):
        x = np.arange(8, dtype=dtype)
        found[dtype] = bool(np.array_equal(kernel(cp.asarray(x)).get(), x * x + x))
    return found


# ------------------------------------------------------------------ stage 2: parity


def parity_stage(save) -> dict:
    """gpubp.parity's kernel checks and model checks on cuda, float32 and float64: every row."""
    from gpubp import get_backend, parity

    gpu = get_backend("cuda")
    results = parity.kernel_checks(gpu, gpu.kernels)
    save(parity_section(results))
    return parity_section(results + parity.model_checks(get_backend("cpu"), get_backend("cuda")))


def parity_section(results) -> dict:
    """Rows (check, dtype, worst, rtol, passed), the failures and a verdict."""
    rows = [asdict(r) for r in results]
    failures = [f"{r['check']} {r['dtype']}: worst {r['worst']:.2e} > {r['rtol']:.0e}" for r in rows if not r["passed"]]
    return {"rows": rows, "failures": failures,
            "verdict": f"{len(rows) - len(failures)}/{len(rows)} checks within tolerance"}


# ------------------------------------------------------------------ stage 3: GPU tests


def pytest_command(junit: Path, timeout_plugin: bool) -> tuple[list[str], str]:
    """The pytest command for the GPU tests and a note on its per-test timeout."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu and not slow", "-v", "-rfEs", "-p", "no:cacheprovider",
           f"--junitxml={junit}", str(REPO / "tests")]
    if timeout_plugin:
        return cmd + [f"--timeout={PER_TEST_TIMEOUT_S}"], f"{PER_TEST_TIMEOUT_S} s per test (pytest-timeout)"
    return cmd, f"none per test (pytest-timeout is not installed); {PYTEST_LIMIT_S} s for the whole run"


def parse_pytest(output: str) -> dict:
    """Counts, failed tests (with pytest's one-line reason) and the test left running, from -v -rfEs output."""
    outcomes = {}
    for m in re.finditer(r"^(\S+::\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", output, re.M):
        if outcomes.get(m[1]) != "ERROR":  # a teardown error after a pass stays an error
            outcomes[m[1]] = m[2]
    reasons = dict(re.findall(r"^(?:FAILED|ERROR) (\S+::\S.*?)(?: - (.*))?$", output, re.M))  # (ids may hold spaces)
    counts = {k: sum(o in group for o in outcomes.values())
              for k, group in (("passed", ("PASSED", "XFAIL")), ("failed", ("FAILED", "ERROR", "XPASS")),
                               ("skipped", ("SKIPPED",)))}
    failed = [f"{t}: {reasons[t]}" if reasons.get(t) else t
              for t, o in outcomes.items() if o in ("FAILED", "ERROR", "XPASS")]
    last = output.rstrip("\n").splitlines()[-1:] or [""]
    started = re.fullmatch(r"\S+::\S.*?\s*", last[0]) and not re.search(r" (?:PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", last[0])
    running = last[0].strip() if started else None
    return {**counts, "failed_tests": failed, "running": running}


def junit_folder():
    """Where pytest writes its JUnit XML: $OUT, which comes back; else a temporary folder, removed after."""
    out = os.environ.get("OUT")
    return contextlib.nullcontext(out) if out else tempfile.TemporaryDirectory(prefix="gpubp-junit-")


def tests_stage(save) -> dict:
    """pytest -m "gpu and not slow" with a per-test timeout where possible and an overall limit."""
    timeout_plugin = importlib.util.find_spec("pytest_timeout") is not None
    with junit_folder() as folder:
        cmd, per_test = pytest_command(Path(folder) / "pytest-gpu.xml", timeout_plugin)
        t0 = time.monotonic()
        code, output = run_command(cmd, PYTEST_LIMIT_S)
        seconds = round(time.monotonic() - t0, 1)
    result = {**parse_pytest(output), "exit_status": code, "per_test_timeout": per_test, "seconds": seconds,
              "tail": tail(output, 20)}
    result["verdict"] = f"{result['passed']} passed, {result['failed']} failed, {result['skipped']} skipped"
    result["failures"] = pytest_failures(result, code)
    return result


def pytest_failures(result: dict, code: int | None) -> list[str]:
    """What makes the GPU tests a failure: a timeout, a non-zero exit status, or every test skipped."""
    if code is None:
        running = f" while running {result['running']}" if result["running"] else ""
        return [f"pytest stopped after {PYTEST_LIMIT_S} s{running} ({result['verdict']})"]
    if code != 0:
        return [f"pytest exit status {code} ({result['verdict']})"] + result["failed_tests"][:5]
    if result["skipped"] and not result["passed"]:  # pytest saw no GPU where this script saw one
        return [f"every GPU test was skipped ({result['verdict']}); the tail says why"]
    return []


# ------------------------------------------------------------------ stage 4: timings


def timings_stage(save) -> dict:
    """Kernels against a copy and their chains, the cost of --fmad=false, training steps."""
    import cupy as cp

    arr = timing_arrays(cp, N_ELEMENTS)
    result = kernel_timings(cp, arr)
    save(timings_summary(result))
    result["fmad"] = fmad_timings(cp, arr)
    save(timings_summary(result))
    del arr
    cp.get_default_memory_pool().free_all_blocks()
    result["steps"] = step_timings(cp, lambda rows: save(timings_summary({**result, "steps": rows})))
    return timings_summary(result)


def timings_summary(result: dict) -> dict:
    """result with its failures (disagreements) and a verdict."""
    kernels_rows, steps = result.get("kernels", []), [r for r in result.get("steps", []) if "ratio" in r]
    failures = [f"{r['kernel']}: kernel and chain disagree ({r['rel_error']:.1e})"
                for r in kernels_rows if not r["agree"]]
    failures += [f"{r['case']}: gpubp and PyTorch disagree ({r['max_rel_error']:.1e})"
                 for r in result.get("steps", []) if r.get("agree") is False]
    verdict = f"kernels: {sum(r['met'] for r in kernels_rows)}/{len(kernels_rows)} targets met"
    if steps:
        verdict += f"; steps: {sum(r['met'] for r in steps)}/{len(steps)} <= {STEP_TARGET}x PyTorch eager"
    return {**result, "failures": failures, "verdict": verdict}


# ------------------------------------------------------------------ stage 5: the estimator


def estimator_data() -> tuple[np.ndarray, np.ndarray]:
    """ESTIMATOR_SAMPLES synthetic 784-feature float32 samples of 10 classes (seeded)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, ESTIMATOR_SAMPLES)
    return (rng.normal(size=(10, 784))[y] + rng.normal(size=(ESTIMATOR_SAMPLES, 784))).astype(np.float32), y


def timed_fit(estimator, X, y) -> tuple[float, object]:
    """(seconds, fitted estimator)."""
    t0 = time.perf_counter()
    estimator.fit(X, y)
    return time.perf_counter() - t0, estimator


def estimator_stage(save) -> dict:
    """gpubp.MLPClassifier(device="cuda") against scikit-learn's MLPClassifier on the CPU cores,
    same settings, one fit each, after a small check fit: gpubp cuda against gpubp cpu."""
    import warnings

    import threadpoolctl
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier as SklearnMLPClassifier

    from gpubp import MLPClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    X, y = estimator_data()
    small = {**ESTIMATOR_SETTINGS, "hidden_layer_sizes": (64,)}
    curves = [MLPClassifier(device=d, **small).fit(X[:5000], y[:5000]).loss_curve_ for d in ("cpu", "cuda")]
    error = float(np.max(np.abs(np.subtract(curves[1], curves[0])) / np.abs(curves[0])))
    result = {"settings": {**ESTIMATOR_SETTINGS, "data": f"{ESTIMATOR_SAMPLES} x 784 float32, 10 classes"},
              "loss_curve_rel_error": error, "agree": error <= ESTIMATOR_RTOL}
    save(result)
    result["gpubp_cuda_s"], gpubp = timed_fit(MLPClassifier(device="cuda", **ESTIMATOR_SETTINGS), X, y)
    save(result)
    result["sklearn_cpu_s"], sklearn = timed_fit(SklearnMLPClassifier(**ESTIMATOR_SETTINGS), X, y)
    result.update(cpu_cores=os.cpu_count(), blas_threads=max((i["num_threads"] for i in threadpoolctl.threadpool_info()
                                                              if i["user_api"] == "blas"), default=None),
                  final_loss={"gpubp cuda": gpubp.loss_curve_[-1], "sklearn cpu": sklearn.loss_curve_[-1]},
                  speedup=result["sklearn_cpu_s"] / result["gpubp_cuda_s"], target=f">= {ESTIMATOR_SPEEDUP_TARGET}x")
    result["met"] = bool(result["agree"] and result["speedup"] >= ESTIMATOR_SPEEDUP_TARGET)
    result["failures"] = [] if result["agree"] else [f"loss curves of gpubp cuda and cpu differ by {error:.1e}"]
    result["verdict"] = (f"{result['speedup']:.1f}x scikit-learn (target {result['target']}: "
                         f"{'met' if result['met'] else 'NOT met'})")
    return result
