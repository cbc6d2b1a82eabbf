"""One command for a lent GPU machine, in stages that each survive the others' failures.

    PYTHONPATH=. python benchmarks/device_check.py                  (a few minutes, at most 6)
    PYTHONPATH=. python benchmarks/device_check.py --only timings   (preflight, then one stage again)

A lease is 15 minutes of device time, starts included, and only what is under $OUT comes back
(at most 8 files). So every stage runs in its own child process (this script with ``--stage
NAME``) under a time budget; a stage that hangs (a CUDA deadlock, a stuck compile) is killed with
its process group and recorded as "timed out after N s", a stage that raises is recorded with
its error and the end of its traceback, and the next stage runs either way. As soon as a stage
ends, its file and summary.md are written to $OUT (and the whole report to benchmarks/results/),
so a stop at any moment keeps everything measured before it.

stage (budget)    file in $OUT     what
preflight (40 s)  env.json         card, driver, CUDA driver and runtime, NVRTC, CuPy, NumPy,
                                   scikit-learn, torch; the TF32 settings of both libraries; one
                                   tiny ElementwiseKernel compiled and run (float32 and float16)
parity (80 s)     parity.json      every kernel against its NumPy twin and the model against the
                                   CPU, float32 and float64 (gpubp.parity): every row
tests (90 s)      tests.json,      pytest -m "gpu and not slow": 40 s per test where pytest-timeout
                  pytest-gpu.xml   is installed, 75 s for the whole run; counts, failed tests
timings (90 s)    timings.json     kernels against a copy and against their plain CuPy chains; the
                                   cost of --fmad=false; a training step against PyTorch eager
estimator (60 s)  estimator.json   gpubp.MLPClassifier on cuda against scikit-learn's on the CPU
                  summary.md       all of it, rewritten after every stage

The budgets are estimates (nothing here has run on a GPU yet) and add up to 360 s, inside the 7
minutes a command is given. Each child pays a few seconds of imports and CUDA start-up. CuPy
compiles every kernel once per dtype on a fresh machine: parity pays for most of that (80 s
allows for about a hundred compiles) and the disk cache serves the later stages. The GPU tests
are 27 small ones. The kernel timings are ~800 calls of well under a millisecond and ten
compiles; the training steps take seconds, PyTorch's import included. scikit-learn's fit
(60,000 x 784, 2 epochs, (512, 512)) took 51 s on 2 slow cores here, so about 10 s on 16.
A stage that saves as it goes (all but tests) keeps what it saved past a timeout or an error.

Timings are medians of CUDA-event times. The CuPy children run with CUPY_TF32 removed from the
environment and PyTorch with ``fp32_precision = "ieee"``: float32 is IEEE float32 on both sides.
Targets are reported, never asserted. Exit status: 3 without a usable GPU (env.json says why),
1 when a stage failed (parity, a GPU test, an agreement check), raised or timed out, 0 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_md import RESULTS, write_results  # noqa: E402

MAX_OUT_FILES = 8  # what the device machine sends back
PER_TEST_TIMEOUT_S = 40
PYTEST_LIMIT_S = 75  # inside the tests stage's 90 s
N_ELEMENTS = 16 * 2**20
BANDWIDTH_TARGET = 0.70  # of the copy bandwidth, counting the bytes a kernel must move
SPEEDUP_MARGIN = 0.8  # speed-up target = margin x chain bytes / kernel bytes
AGREE_RTOL = 1e-5  # kernel against chain, float32, norm-relative
STEP_RTOL = 1e-4  # gpubp against PyTorch, loss and every gradient, norm-relative
STEP_TARGET = 1.0  # gpubp step time / PyTorch eager step time
STEP_CASES = [([784, 512, 512, 10], 256), ([784, 512, 512, 10], 4096), ([4096, 4096, 4096, 10], 4096)]
LR, MOMENTUM = 1e-3, 0.9
ESTIMATOR_SPEEDUP_TARGET = 10.0  # scikit-learn on the CPU / gpubp on cuda, issue 4
ESTIMATOR_RTOL = 1e-3  # loss curves, gpubp cuda against gpubp cpu, float32
ESTIMATOR_SETTINGS = dict(hidden_layer_sizes=(512, 512), max_iter=2, random_state=0)

# Bytes per element of the main array (float32 4, bool 1; int64 labels, one per row of C = 10
# classes, 0.8) that each kernel must move (each input read once, each output written once) and
# that its plain chain moves (every operation of its NumPy twin in gpubp/ops.py, temporaries
# included; an array used twice in one operation is read once). The bias (one value per column
# of 1024) counts 0. tests/test_device_check.py traces the twins to check the chain column.
BYTES = {
    # read z, write a over z | z += b (8); maximum(z, 0, out=z) (8)
    "bias_activation relu": (8, 16),
    # | z += b (8); abs (8); negate (8); exp (8); z >= 0 (4 + 1); where(z >= 0, 1, e) (1 + 4 + 4);
    #   1 + e (8); divide (12); z[...] = result (8)
    "bias_activation sigmoid": (8, 74),
    # | z += b (8); tanh(z, out=z) (8)
    "bias_activation tanh": (8, 16),
    # | z += b (8); the identity is no operation
    "bias_activation identity": (8, 8),
    # read a and g, write g | a > 0 (4 + 1); multiply(g, mask, out=g) (4 + 1 + 4)
    "backprop_delta relu": (12, 14),
    # | 1 - a (8); a * t (12); g *= t (12)
    "backprop_delta sigmoid": (12, 32),
    # | a * a (8); 1 - t (8); g *= t (12)
    "backprop_delta tanh": (12, 28),
    # read z and labels, write delta | arange (0.8); row max (4.4); z - zmax (8.4); exp (8);
    #   row sum (4.4); log, + zmax, z[rows, y], subtract (5.6); * scale, sum (1.2); delta /= s (8.4);
    #   delta[rows, y] -= 1 (5.6); delta *= scale (8).
    #   This kernel reads z three times (row max, row sum, then the elementwise pass), about 20
    #   bytes: by design it meets neither target; the _rows kernel below is the one-pass version.
    "softmax_minus_y": (8.8, 54.8),
    # the same, in one pass per row
    "softmax_minus_y_rows": (8.8, 54.8),
    # read p, g, v, write p, v | lr g (8); v *= mu (8); v -= s1 (12); mu v (8); s2 -= s1 (12); p += s2 (12)
    "sgd_momentum_update nesterov": (20, 60),
    # read p, g, m, v, write p, m, v | m *= b1 (8); (1-b1) g (8); m += (12); v *= b2 (8); g g (8);
    #   *= 1-b2 (8); v += (12); lr m (8); sqrt v (8); += eps (8); /= (12); p -= (12)
    "adam_update": (28, 112),
}


def speedup_target(name: str) -> float:
    """Least speed-up over the plain chain that the bytes allow: margin x chain bytes / kernel bytes."""
    kernel_bytes, chain_bytes = BYTES[name]
    return SPEEDUP_MARGIN * chain_bytes / kernel_bytes


# ------------------------------------------------------------------ running children


def write_json(path: Path, data) -> None:
    """Write data as JSON atomically (a reader never sees half a file); NumPy scalars as numbers."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
    os.replace(tmp, path)


def _plain(value):
    """JSON for what json cannot write itself: NumPy scalars and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def tail(text: str, lines: int = 15) -> str:
    """The last lines of text."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_command(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run cmd in a new process group, output to a file; past ``timeout`` kill the whole group.

    Returns the exit status (None when it timed out) and the output.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # stuck in the driver: left behind, the next stage goes on
                pass
        log.seek(0)
        return code, log.read().decode(errors="replace")


def run_child(fn, result: Path) -> int:
    """Child side: section = fn(save), written to ``result``; fn may save(partial) as it goes.

    An exception is written there too, with the last saved section and the traceback's end.
    """
    saved = {}

    def save(section: dict) -> None:
        saved["section"] = section
        write_json(result, {"section": section})

    try:
        section = fn(save)
    except Exception as exc:  # recorded for the parent, which goes on with the next stage
        write_json(result, {"section": saved.get("section"), "error": f"{type(exc).__name__}: {exc}"[:500],
                            "traceback": tail(traceback.format_exc())})
        return 1
    save(section)
    return 0


def run_isolated(cmd: list[str], budget: float, result: Path, env: dict | None = None) -> tuple[dict, dict | None]:
    """Parent side: run a child that writes ``result`` (run_child) within ``budget`` seconds.

    Returns its status (status: passed, failed, error or timed out; seconds; budget_s; detail) and
    its section (what it saved last, also after a timeout), or None.
    """
    result.unlink(missing_ok=True)
    t0 = time.monotonic()
    code, output = run_command(cmd, budget, env)
    status = {"budget_s": budget, "seconds": round(time.monotonic() - t0, 1)}
    saved = json.loads(result.read_text()) if result.is_file() else {}
    section = saved.get("section")
    if code is None:
        kept = " (the results saved before are kept)" if section else ""
        status.update(status="timed out", detail=f"timed out after {budget} s{kept}", output=tail(output))
    elif "error" in saved:
        status.update(status="error", detail=saved["error"], traceback=saved["traceback"])
    elif code != 0 or section is None:
        status.update(status="error", detail=f"exit status {code} without a result", output=tail(output))
    elif section.get("failures"):
        status.update(status="failed", detail="; ".join(section["failures"])[:300])
    else:
        status["status"] = "passed"
    return status, section


def child_env(out: Path | None) -> dict:
    """The environment of every stage: the checkout importable, $OUT as given, CUPY_TF32 removed."""
    env = {k: v for k, v in os.environ.items() if k != "CUPY_TF32"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if out is not None:
        env["OUT"] = str(out)
    return env


def stage_file(name: str) -> str:
    """Name of a stage's file in $OUT."""
    return "env.json" if name == "preflight" else f"{name}.json"


def run_stages(stages: dict, script: Path, out: Path | None, results: Path | None = None) -> dict:
    """Run each stage of ``stages`` (name -> (function, budget s)) as ``script --stage NAME``.

    After each stage its file and summary.md go to ``out`` and the whole report to ``results``.
    """
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "stages": {}, "sections": {}}
    scratch = Path(tempfile.mkdtemp(prefix="gpubp-check-"))
    env = child_env(out)
    for name, (_, budget) in stages.items():
        cmd = [sys.executable, str(script), "--stage", name, "--result", str(scratch / f"{name}.json")]
        status, section = run_isolated(cmd, budget, scratch / f"{name}.json", env)
        report["stages"][name] = status
        if section is not None:
            report["sections"][name] = section
        publish(report, name, out, results)
        print(f"[{name}] {status['status']} in {status['seconds']} s: "
              f"{status.get('detail') or (section or {}).get('verdict', '')}", flush=True)
    return report


def publish(report: dict, name: str, out: Path | None, results: Path | None) -> None:
    """Write stage ``name``'s file and summary.md to ``out``, and the report to ``results``."""
    text = markdown(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / stage_file(name), {"stage": name, **report["stages"][name],
                                            "result": report["sections"].get(name)})
        (out / "summary.md").write_text(text)
    if results is not None:
        card = re.sub(r"[^A-Za-z0-9]+", "-", report["sections"].get("preflight", {}).get("gpu", "unknown card"))
        write_results(f"device_check-{report['date'][:10]}-{card.strip('-')}", report, text, folders=[results])


def exit_status(report: dict) -> int:
    """0 when every stage passed, else 1."""
    return 0 if all(s["status"] == "passed" for s in report["stages"].values()) else 1


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
    from gpubp import get_backend, kernels, parity

    results = parity.kernel_checks(get_backend("cuda"), kernels)
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
    reasons = dict(re.findall(r"^(?:FAILED|ERROR) (\S+::\S+?)(?: - (.*))?$", output, re.M))
    counts = {k: sum(o in group for o in outcomes.values())
              for k, group in (("passed", ("PASSED", "XFAIL")), ("failed", ("FAILED", "ERROR", "XPASS")),
                               ("skipped", ("SKIPPED",)))}
    failed = [f"{t}: {reasons[t]}" if reasons.get(t) else t
              for t, o in outcomes.items() if o in ("FAILED", "ERROR", "XPASS")]
    last = output.rstrip("\n").splitlines()[-1:] or [""]
    running = last[0].strip() if re.fullmatch(r"\S+::\S+\s*", last[0]) else None
    return {**counts, "failed_tests": failed, "running": running}


def tests_stage(save) -> dict:
    """pytest -m "gpu and not slow" with a per-test timeout where possible and an overall limit."""
    folder = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.mkdtemp())
    cmd, per_test = pytest_command(folder / "pytest-gpu.xml", importlib.util.find_spec("pytest_timeout") is not None)
    t0 = time.monotonic()
    code, output = run_command(cmd, PYTEST_LIMIT_S)
    result = {**parse_pytest(output), "exit_status": code, "per_test_timeout": per_test,
              "seconds": round(time.monotonic() - t0, 1), "tail": tail(output, 20)}
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
    result["steps"] = step_timings(cp)
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


def timing_arrays(xp, n: int, seed: int = 0) -> SimpleNamespace:
    """Seeded float32 arrays for the kernel timings (n elements each), with the originals of those
    the calls overwrite (``orig``) and the extra arguments of the softmax ElementwiseKernel."""
    rng = xp.random.default_rng(seed)
    f32, width, C = xp.float32, 1024, 10

    def normal(shape, scale=1.0):
        return rng.standard_normal(shape, dtype=f32) * f32(scale)

    orig = {"z": normal((n // width, width), 3), "g": normal((n // width, width)), "p": normal(n),
            "m": normal(n), "v": xp.abs(normal(n))}
    arr = SimpleNamespace(orig=orig, b=normal(width), gp=normal(n), logits=normal((n // C, C), 4),
                          labels=rng.integers(0, C, n // C), **{k: v.copy() for k, v in orig.items()})
    arr.a = {act: twins().activate(xp, orig["z"].copy(), act) for act in ("relu", "sigmoid", "tanh")}
    arr.zmax = arr.logits.max(axis=1, keepdims=True)  # (n / C, 1)
    arr.sumexp = xp.exp(arr.logits - arr.zmax).sum(axis=1, keepdims=True)  # (n / C, 1)
    arr.delta, arr.loss_rows = xp.empty_like(arr.logits), xp.zeros(n // C, dtype=f32)
    return arr


def twins():
    """gpubp.ops, the NumPy twins, imported when first needed: the runner and a stage's child
    import only what they use (gpubp brings scikit-learn)."""
    from gpubp import ops

    return ops


def restore(xp, arr: SimpleNamespace) -> None:
    """Put the original values back into the arrays the calls overwrite."""
    for name, original in arr.orig.items():
        xp.copyto(getattr(arr, name), original)


def timing_calls(xp, kern, arr: SimpleNamespace) -> dict:
    """Name -> (kernel call, plain chain call) for every timed kernel; each returns the array to
    compare. ``kern`` is gpubp.kernels; the chains are its NumPy twins run with ``xp``."""
    ops = twins()
    calls = {}
    for act in ops.ACTIVATIONS:
        calls[f"bias_activation {act}"] = (partial(kern.bias_activation, xp, arr.z, arr.b, act),
                                           partial(ops.bias_activation, xp, arr.z, arr.b, act))
        if act != "identity":
            calls[f"backprop_delta {act}"] = (partial(kern.backprop_delta, xp, arr.g, arr.a[act], act),
                                              partial(ops.backprop_delta, xp, arr.g, arr.a[act], act))
    for fn in ("softmax_minus_y", "softmax_minus_y_rows"):
        calls[fn] = (lambda fn=fn: getattr(kern, fn)(xp, arr.logits, arr.labels)[0],
                     lambda: ops.softmax_minus_y(xp, arr.logits, arr.labels)[0])
    sgd = (arr.p, arr.gp, arr.v, 0.01, MOMENTUM, True)
    calls["sgd_momentum_update nesterov"] = (lambda: (kern.sgd_momentum_update(xp, *sgd), arr.p)[1],
                                             lambda: (ops.sgd_momentum_update(xp, *sgd), arr.p)[1])
    adam = (arr.p, arr.gp, arr.m, arr.v, 1e-3, 0.9, 0.999, 1e-8)
    calls["adam_update"] = (lambda: (kern.adam_update(xp, *adam), arr.p)[1],
                            lambda: (ops.adam_update(xp, *adam), arr.p)[1])
    return calls


def cupy_events(cp):
    """(new timing event, elapsed ms between two events) for CuPy's current stream."""
    return cp.cuda.Event, cp.cuda.get_elapsed_time


def torch_events(torch):
    """(new timing event, elapsed ms between two events) for PyTorch's current stream."""
    return partial(torch.cuda.Event, enable_timing=True), lambda start, end: start.elapsed_time(end)


def event_median_ms(events, fn, setup=None, repeat: int = 30, warmup: int = 3) -> float:
    """Median CUDA-event time of fn() in ms, events from cupy_events or torch_events; setup()
    runs before each call, outside the events."""
    new_event, elapsed = events
    times = []
    for k in range(warmup + repeat):
        if setup is not None:
            setup()
        start, end = new_event(), new_event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        if k >= warmup:
            times.append(elapsed(start, end))
    return statistics.median(times)


def rel_error(xp, actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a, e = actual.astype(xp.float64), expected.astype(xp.float64)
    return float(xp.linalg.norm(a - e) / max(float(xp.linalg.norm(e)), 1e-300))


def kernel_timings(cp, arr: SimpleNamespace) -> dict:
    """The copy bandwidth, then every kernel against it and against its plain chain."""
    from gpubp import kernels

    src, dst = arr.orig["p"], arr.p
    copy_ms = event_median_ms(cupy_events(cp), lambda: dst.data.copy_from_device_async(src.data, src.nbytes))
    copy = {"ms": copy_ms, "gbs": 2 * src.nbytes / copy_ms / 1e6}
    rows = [kernel_row(cp, name, calls, arr, copy["gbs"]) for name, calls in timing_calls(cp, kernels, arr).items()]
    return {"copy": copy, "kernels": rows}


def kernel_row(cp, name: str, calls, arr: SimpleNamespace, copy_gbs: float) -> dict:
    """Agreement of kernel and chain from the same inputs, then both times and the two targets."""
    kernel_call, chain_call = calls
    setup = partial(restore, cp, arr)
    setup()
    from_kernel = kernel_call().copy()
    setup()
    error = rel_error(cp, from_kernel, chain_call())
    kernel_ms, chain_ms = (event_median_ms(cupy_events(cp), call, setup) for call in (kernel_call, chain_call))
    kernel_bytes, chain_bytes = BYTES[name]
    gbs = kernel_bytes * from_kernel.size / kernel_ms / 1e6
    row = {"kernel": name, "ms": kernel_ms, "gbs": gbs, "pct_copy": 100 * gbs / copy_gbs, "chain_ms": chain_ms,
           "speedup": chain_ms / kernel_ms, "bytes": [kernel_bytes, chain_bytes],
           "speedup_target": speedup_target(name), "rel_error": error, "agree": error < AGREE_RTOL}
    checks = (("disagree", row["agree"]), ("bandwidth", row["pct_copy"] >= 100 * BANDWIDTH_TARGET),
              ("speed-up", row["speedup"] >= row["speedup_target"]))
    row["missed"] = [what for what, ok in checks if not ok]
    row["met"] = not row["missed"]
    return row


def fmad_arguments(name: str, arr: SimpleNamespace):
    """Arguments (inputs, then outputs) of the ElementwiseKernel ``name`` of
    kernels.ELEMENTWISE_SPECS over the timing arrays, as gpubp.kernels passes them; None if unknown."""
    f32 = np.float32
    if name.startswith("gpubp_bias_"):
        return arr.z, arr.b, arr.z
    if name.startswith("gpubp_backprop_delta_"):
        return arr.a[name.removeprefix("gpubp_backprop_delta_")], arr.g
    if name == "gpubp_softmax_minus_y":
        rows, C = arr.logits.shape
        return (arr.logits, arr.zmax, arr.sumexp, arr.labels.reshape(rows, 1), f32(1 / rows), np.int64(C),
                arr.delta, arr.loss_rows)
    if name == "gpubp_sgd_momentum":
        return arr.gp, f32(0.01), f32(MOMENTUM), True, arr.p, arr.v
    if name == "gpubp_adam":
        return arr.gp, f32(1e-3), f32(0.9), f32(0.1), f32(0.999), f32(1e-3), f32(1e-8), arr.p, arr.m, arr.v
    return None


def fmad_timings(cp, arr: SimpleNamespace) -> list[dict]:
    """Each ElementwiseKernel built as gpubp.kernels builds it (its COMPILE_OPTIONS, --fmad=false)
    and built the plain way (NVRTC's default --fmad=true), same arguments: time ratio."""
    from gpubp import kernels

    options = tuple(getattr(kernels, "COMPILE_OPTIONS", ()))
    preamble = kernels.read_source("gpubp_math.cuh")
    rows = []
    for name, spec in kernels.ELEMENTWISE_SPECS.items():
        args = fmad_arguments(name, arr)
        if args is None:
            rows.append({"kernel": name, "skipped": "no arguments known for this kernel"})
            continue
        built = {"gpubp": cp.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name,
                                               preamble=preamble, options=options),
                 "fmad": cp.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name + "_fmad",
                                              preamble=preamble)}
        ms = {k: event_median_ms(cupy_events(cp), partial(kernel, *args), partial(restore, cp, arr))
              for k, kernel in built.items()}
        rows.append({"kernel": name, "options": " ".join(options) or "none", "gpubp_ms": ms["gpubp"],
                     "fmad_ms": ms["fmad"], "ratio": ms["gpubp"] / ms["fmad"]})
    return rows


def step_timings(cp) -> list[dict]:
    """A training step (forward, backward, SGD-momentum) of each STEP_CASES, gpubp against PyTorch eager."""
    try:
        import torch
    except Exception as exc:
        return [{"case": "all", "skipped": f"PyTorch not importable: {type(exc).__name__}: {exc}"}]
    set_fp32_precision(torch, "ieee")
    return [step_case(cp, torch, sizes, batch) for sizes, batch in STEP_CASES]


def set_fp32_precision(torch, value: str) -> None:
    """PyTorch's float32 matmul and convolution precision, "ieee" or "tf32", through the
    fp32_precision settings (torch >= 2.9 refuses to mix them with the legacy allow_tf32 flags)."""
    torch.backends.cuda.matmul.fp32_precision = value
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = value


def torch_twin(torch, net, cp):
    """A torch.nn.Sequential on the GPU with the weights and biases of the gpubp MLP ``net`` (relu)."""
    layers = []
    for W, b in zip(net.weights, net.biases, strict=True):
        linear = torch.nn.Linear(*W.shape).cuda()
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(cp.asnumpy(W).T.copy()))
            linear.bias.copy_(torch.as_tensor(cp.asnumpy(b)))
        layers += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def step_case(cp, torch, sizes: list[int], batch: int) -> dict:
    """Loss and gradients compared first, then the median CUDA-event time of a step on each side.

    The gpubp step calls the public ``net.loss_and_grads``, which validates its arguments: it
    checks that X is finite (one pass over X and a host synchronization) and checks the labels on
    the host, then copies them to the device. PyTorch's step does neither, so at small batches the
    ratio includes that cost; a training loop that calls loss_and_grads pays it too.
    """
    from gpubp import MLP, get_backend
    from gpubp.bench import Case
    from gpubp.optim import SGD

    label = f"{'-'.join(map(str, sizes))} b{batch}"
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch)
    net = MLP(sizes, "relu", get_backend("cuda"), "float32", seed=0)
    model = torch_twin(torch, net, cp)
    Xd, Xt, yt = cp.asarray(X), torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")
    errors = step_errors(cp, torch, net, model, Xd, y, Xt, yt)
    row = {"case": label, "max_rel_error": max(errors), "agree": max(errors) < STEP_RTOL}
    if not row["agree"]:
        return row
    opt, torch_opt = SGD(momentum=MOMENTUM), torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def gpubp_step():
        _, dW, db = net.loss_and_grads(Xd, y)
        opt.step(net.params, dW + db, LR)

    def torch_step():
        torch_opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        torch_opt.step()

    repeat = 50 if batch <= 1024 else 20
    gpubp_ms = event_median_ms(cupy_events(cp), gpubp_step, repeat=repeat)
    torch_ms = event_median_ms(torch_events(torch), torch_step, repeat=repeat)
    flops = Case(tuple(sizes), batch, "float32", "momentum").flops_per_epoch(batch)
    row.update(gpubp_ms=gpubp_ms, torch_ms=torch_ms, ratio=gpubp_ms / torch_ms, gpubp_tflops=flops / gpubp_ms / 1e9,
               target=f"<= {STEP_TARGET}x torch eager", met=gpubp_ms / torch_ms <= STEP_TARGET)
    return row


def step_errors(cp, torch, net, model, Xd, y, Xt, yt) -> list[float]:
    """Relative errors of the loss and of every dW and db, gpubp against PyTorch, from one batch."""
    loss, dW, db = net.loss_and_grads(Xd, y)
    torch_loss = torch.nn.functional.cross_entropy(model(Xt), yt)
    torch_loss.backward()
    errors = [abs(float(loss) - torch_loss.item()) / abs(torch_loss.item())]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for linear, gW, gb in zip(linears, dW, db, strict=True):
        errors.append(rel_error(np, cp.asnumpy(gW), linear.weight.grad.T.cpu().numpy()))
        errors.append(rel_error(np, cp.asnumpy(gb), linear.bias.grad.cpu().numpy()))
    model.zero_grad(set_to_none=True)
    return errors


# ------------------------------------------------------------------ stage 5: the estimator


def estimator_data() -> tuple[np.ndarray, np.ndarray]:
    """60,000 synthetic 784-feature float32 samples of 10 classes (seeded)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 60000)
    return (rng.normal(size=(10, 784))[y] + rng.normal(size=(60000, 784))).astype(np.float32), y


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
    result = {"settings": {**ESTIMATOR_SETTINGS, "data": "60000 x 784 float32, 10 classes"},
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


# name -> (function(save) -> section, budget in seconds); estimates, see the module docstring
STAGES = {"preflight": (preflight, 40), "parity": (parity_stage, 80), "tests": (tests_stage, 90),
          "timings": (timings_stage, 90), "estimator": (estimator_stage, 60)}


# ------------------------------------------------------------------ summary.md


def yes(flag) -> str:
    """A verdict cell: yes or NO."""
    return "yes" if flag else "NO"


def stage_rows(report: dict) -> list[str]:
    """The table of stages: budget, time, status, and the verdict or what went wrong."""
    lines = ["| stage | budget s | seconds | status | verdict |", "|---|---:|---:|---|---|"]
    for name, s in report["stages"].items():
        verdict = s.get("detail") or report["sections"].get(name, {}).get("verdict", "")
        lines.append(f"| {name} | {s['budget_s']} | {s['seconds']} | {s['status']} | {verdict} |")
    return lines


def env_lines(e: dict) -> list[str]:
    """Card, versions, TF32 settings and the probe kernel, from env.json."""
    return [f"{e['gpu']} ({e['gpu_memory_gib']} GiB, compute capability {e['compute_capability']}); driver "
            f"{e['driver']} (CUDA {e['driver_cuda']}), CUDA runtime {e['runtime_cuda']}, NVRTC {e['nvrtc']}; "
            f"CuPy {e['cupy']}, NumPy {e['numpy']}, scikit-learn {e['sklearn']}, PyTorch {e.get('torch')}, "
            f"Python {e['python']}.",
            "",
            f"TF32: CUPY_TF32 {e['cupy_tf32']}; torch matmul fp32_precision "
            f"{e.get('torch_matmul_fp32_precision', '?')}, cudnn conv fp32_precision "
            f"{e.get('torch_conv_fp32_precision', '?')} (at import; the timings set both to ieee). "
            f"Probe kernel: " + ", ".join(f"{d} {'ok' if ok else 'WRONG'}" for d, ok in e.get("probe", {}).items())]


def parity_lines(p: dict) -> list[str]:
    """Every parity check: check, dtype, worst error, tolerance, passed."""
    lines = ["| check | dtype | worst | rtol | passed |", "|---|---|---:|---:|---|"]
    return lines + [f"| {r['check']} | {r['dtype']} | {r['worst']:.2e} | {r['rtol']:.0e} | {yes(r['passed'])} |"
                    for r in p["rows"]]


def tests_lines(t: dict) -> list[str]:
    """The GPU tests: counts, time, the timeout used, failed tests, a test left running."""
    lines = [f"`pytest -m \"gpu and not slow\"`: {t['verdict']} ({t['seconds']} s, exit status "
             f"{t['exit_status']}; timeout: {t['per_test_timeout']})."]
    lines += [f"- failed: {name}" for name in t["failed_tests"]]
    return lines + ([f"- still running when stopped: {t['running']}"] if t.get("running") else [])


def kernel_lines(k: dict) -> list[str]:
    """Each kernel against the copy and its chain, with both targets and the verdict."""
    c = k["copy"]
    lines = [f"float32, {N_ELEMENTS // 2**20}M elements, median of CUDA-event times. Device-to-device copy: "
             f"{c['ms']:.3f} ms, {c['gbs']:.0f} GB/s (read + write). GB/s counts the bytes a kernel must move; "
             f"targets: >= {BANDWIDTH_TARGET:.0%} of the copy, and a speed-up over the plain CuPy chain >= "
             f"{SPEEDUP_MARGIN} x chain bytes / kernel bytes.", "",
             "| kernel | ms | GB/s | % of copy | plain CuPy ms | speed-up | bytes kernel / chain | speed-up target "
             "| rel. error | met |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in k["kernels"]:
        met = "yes" if r["met"] else "NO: " + ", ".join(r["missed"])
        lines.append(f"| {r['kernel']} | {r['ms']:.3f} | {r['gbs']:.0f} | {r['pct_copy']:.0f} | {r['chain_ms']:.3f} | "
                     f"{r['speedup']:.2f}x | {r['bytes'][0]:g} / {r['bytes'][1]:g} | >= {r['speedup_target']:.2f}x | "
                     f"{r['rel_error']:.1e} | {met} |")
    return lines


def fmad_lines(rows: list[dict]) -> list[str]:
    """Each ElementwiseKernel as gpubp builds it against the --fmad=true build."""
    lines = ["Each ElementwiseKernel as gpubp builds it (options below) against the plain build (NVRTC's "
             "--fmad=true), same arguments.", "",
             "| kernel | options | gpubp ms | --fmad=true ms | ratio |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['kernel']} | skipped: {r['skipped']} | | | |")
        else:
            lines.append(f"| {r['kernel']} | {r['options']} | {r['gpubp_ms']:.3f} | {r['fmad_ms']:.3f} | "
                         f"{r['ratio']:.2f} |")
    return lines


def step_lines(rows: list[dict]) -> list[str]:
    """Training step times, gpubp against PyTorch eager, with the target."""
    lines = ["Forward, backward and SGD-momentum update, float32 IEEE on both sides, median of CUDA-event "
             "times; gpubp calls the public loss_and_grads (its argument checks synchronize once per step).", "",
             "| network, batch | gpubp ms | PyTorch eager ms | ratio | gpubp TFLOP/s | rel. error | target | met |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | skipped: {r['skipped']} | | | | | | |")
        elif "ratio" not in r:
            lines.append(f"| {r['case']} | not timed: gpubp and PyTorch disagree | | | | "
                         f"{r['max_rel_error']:.1e} | | NO |")
        else:
            lines.append(f"| {r['case']} | {r['gpubp_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f}x | "
                         f"{r['gpubp_tflops']:.1f} | {r['max_rel_error']:.1e} | {r['target']} | {yes(r['met'])} |")
    return lines


def timings_lines(t: dict) -> list[str]:
    """The three timing tables, or 'not measured' for each one a stop cut off."""
    lines = kernel_lines(t) if "kernels" in t else []
    for title, key, render in (("--fmad=false against --fmad=true", "fmad", fmad_lines),
                               ("Training step against PyTorch eager", "steps", step_lines)):
        lines += ["", f"### {title}", ""] + (render(t[key]) if key in t else ["not measured"])
    return lines


def estimator_lines(e: dict) -> list[str]:
    """The check fit's agreement and the two fit times with the speed-up target."""
    line = (f"Check fit (hidden (64,), 5,000 samples): gpubp cuda and cpu loss curves agree to "
            f"{e['loss_curve_rel_error']:.1e} (limit {ESTIMATOR_RTOL:.0e}): {yes(e['agree'])}.")
    if "sklearn_cpu_s" not in e:
        return [line]
    return [line, "", f"MLPClassifier(512, 512), 60,000 x 784 float32, 2 epochs, one fit each: gpubp cuda "
                      f"{e['gpubp_cuda_s']:.2f} s, scikit-learn on {e['cpu_cores']} CPU cores "
                      f"{e['sklearn_cpu_s']:.2f} s: "
                      f"{e['speedup']:.1f}x (target {e['target']}: {'met' if e['met'] else 'NOT met'})."]


RENDERERS = {"preflight": env_lines, "parity": parity_lines, "tests": tests_lines, "timings": timings_lines,
             "estimator": estimator_lines}


def stage_lines(name: str, report: dict) -> list[str]:
    """A stage's heading, what went wrong if anything, and its tables (what it saved, if anything)."""
    s, section = report["stages"][name], report["sections"].get(name)
    lines = [f"## {name}: {s['status']}" + (f": {s['detail']}" if s.get("detail") else ""), ""]
    if s.get("traceback") or s.get("output"):
        lines += ["```", s.get("traceback") or s["output"], "```", ""]
    if section is not None and name in RENDERERS:
        try:
            lines += RENDERERS[name](section)
        except Exception as exc:  # a section cut short lacks what a table needs: say so, lose nothing else
            lines.append(f"(not rendered: {type(exc).__name__}: {exc}; the stage's JSON file has what was saved)")
    elif section is not None:
        lines.append(section.get("verdict", ""))
    return lines


def markdown(report: dict) -> str:
    """summary.md: card, date, versions, the stage table, then each stage's tables."""
    env = report["sections"].get("preflight", {})
    lines = [f"# Device check: {env.get('gpu', 'card unknown (no preflight)')}, {report['date']}", ""]
    lines += stage_rows(report) + [""]
    for name in report["stages"]:
        lines += stage_lines(name, report) + [""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def no_gpu(reason: str, out: Path | None) -> int:
    """Write env.json with the reason (to $OUT when set), say so, exit status 3."""
    env = {"usable": False, "reason": reason, "python": platform.python_version(), "numpy": np.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "env.json", env)
    print(f"no usable GPU: {reason}; nothing was measured")
    return 3


def parse_args(argv, stages: dict) -> argparse.Namespace:
    """Command-line options; --stage and --result are the child's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated stages to run after preflight, of: {', '.join(stages)}")
    parser.add_argument("--stage", choices=list(stages), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(stages)
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}: expected some of {', '.join(stages)}")
    return args


def main(argv=None, stages: dict | None = None, script: str | Path | None = None) -> int:
    """Run the stages (or, with --stage, be one of them); ``stages`` and ``script`` let a test
    run other stages: name -> (function(save) -> dict, budget s), and the file that defines them."""
    stages = STAGES if stages is None else stages
    args = parse_args(argv, stages)
    if args.stage:
        return run_child(stages[args.stage][0], args.result)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    from gpubp.backend import cuda_status

    status = cuda_status()
    if not status.usable:
        return no_gpu(status.reason, out)
    chosen = {n: v for n, v in stages.items() if args.only is None or n == "preflight" or n in args.only}
    report = run_stages(chosen, Path(script or __file__), out, RESULTS)
    print("\n".join([""] + stage_rows(report)))
    print(f"\nfiles: {out if out else 'no $OUT'}; report: {RESULTS}")
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
