"""One command for a GPU machine: versions, the GPU tests, kernel and training-step timings.

    PYTHONPATH=. python benchmarks/device_check.py        (from the source tree; about 3 minutes)

1. prints the card, driver, CUDA, CuPy and NumPy versions;
2. runs ``pytest -m gpu`` and records passed / failed / skipped;
3. times each custom kernel (16M elements) against a device-to-device copy of the same bytes
   (GB/s, % of copy) and against the chain of plain CuPy calls it replaces (its NumPy twin in
   gpubp.ops run with xp=cupy), after checking both give the same answer;
4. times one training step (forward, backward, SGD-momentum update) of 784-512-512-10 at batch
   256 and 4096 and of 4096-4096-4096-10 at batch 4096, gpubp on CuPy against PyTorch eager on
   the same card, same initial weights, float32 with TF32 off on both, after checking that the
   two give the same loss and gradients;
5. times gpubp.MLPClassifier((512, 512)) fitting 60,000 synthetic 784-feature samples (float32,
   2 epochs) on the cuda device against the same estimator on the CPU, after checking that both
   give the same loss curve;
6. writes JSON and a markdown table to $OUT (when set) and to benchmarks/results/.

Targets (H100/H200): every elementwise kernel >= 70% of copy bandwidth; the fused BP2 and
softmax-minus-y kernels >= 2x faster than the plain CuPy chains; a gpubp step <= 1.1x PyTorch
eager's time on the wide network and <= 1.5x on 784-512-512-10 at batch 256.
Timings are medians; kernel times come from CUDA events (cupyx.profiler.benchmark), step times
from the host clock around a device synchronize, the same way for both libraries.
Without a usable GPU it says why and exits with status 3.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_md import write_results  # noqa: E402
from gpubp import MLP, get_backend, kernels, ops  # noqa: E402
from gpubp.backend import cuda_status  # noqa: E402
from gpubp.optim import SGD  # noqa: E402

N_ELEMENTS = 16 * 2**20
ELEMENTWISE_TARGET = 0.70  # of copy bandwidth
FUSED_SPEEDUP_TARGET = 2.0  # over the plain CuPy chain
STEP_TARGETS = {"784-512-512-10 b256": 1.5, "4096-4096-4096-10 b4096": 1.1}
ESTIMATOR_SPEEDUP_TARGET = 10.0  # cuda over cpu, issue 4
SLOW_TESTS_SECONDS = 120
STEP_CASES = [([784, 512, 512, 10], 256), ([784, 512, 512, 10], 4096), ([4096, 4096, 4096, 10], 4096)]


def versions(cp) -> dict:
    """Card, driver, CUDA runtime, CuPy, NumPy and Python versions."""
    runtime = cp.cuda.runtime
    props = runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])

    def dotted(v):
        return f"{v // 1000}.{v % 1000 // 10}"

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "gpu": name,
        "gpu_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "driver_cuda": dotted(runtime.driverGetVersion()),
        "runtime_cuda": dotted(runtime.runtimeGetVersion()),
        "cupy": cp.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else "?"
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver"] = "?"
    return info


def run_gpu_tests(out_dir: Path, marker: str = "gpu and not slow", timeout: float | None = None) -> dict:
    """pytest -m MARKER; counts from its JUnit XML report (and the names of failed tests)."""
    report = out_dir / f"pytest-{marker.replace(' ', '-')}.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", marker, "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", str(REPO / "tests")]
    t0 = time.perf_counter()
    try:
        result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    except subprocess.TimeoutExpired:
        return {"marker": marker, "exit_status": None, "passed": 0, "failed": -1, "skipped": 0,
                "seconds": timeout, "tail": f"stopped after {timeout} s"}
    counts = {"marker": marker, "exit_status": result.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    try:
        suite = ET.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        total, failures, errors, skipped = (int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped"))
        counts.update(passed=total - failures - errors - skipped, failed=failures + errors, skipped=skipped)
        counts["failed_tests"] = _failures(suite)
    except (ET.ParseError, OSError, AttributeError) as exc:
        counts.update(passed=0, failed=-1, skipped=0, report_error=str(exc))
    counts["tail"] = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
    return counts


def _failures(suite) -> list[str]:
    """'test name: message' for each failed or erroring test case of a JUnit suite."""
    found = []
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        problem = problem if problem is not None else case.find("error")
        if problem is not None:
            found.append(f"{case.get('name')}: {problem.get('message', '')[:200]}")
    return found


def gpu_median_ms(cp, fn, repeat=50) -> float:
    """Median GPU time of fn() in milliseconds, from CUDA events."""
    from cupyx.profiler import benchmark

    return float(np.median(benchmark(fn, n_repeat=repeat, n_warmup=5).gpu_times[0]) * 1e3)


def max_rel_error(cp, actual, expected) -> float:
    a, e = cp.asnumpy(actual).astype(np.float64), cp.asnumpy(expected).astype(np.float64)
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-300))


def kernel_timings(cp) -> list[dict]:
    """Each kernel vs a copy of the same bytes and vs its twin run on CuPy (float32, 16M elements).

    Correctness first: from the same inputs, the kernel and the plain chain must agree (relative
    error < 1e-5). The in-place kernels are then timed on their own, repeated over one buffer.
    """
    rng = cp.random.default_rng(0)
    dtype, item = cp.float32, 4
    src = rng.standard_normal(N_ELEMENTS, dtype=dtype)
    dst = cp.empty_like(src)
    copy_ms = gpu_median_ms(cp, lambda: cp.copyto(dst, src))
    copy_gbs = 2 * N_ELEMENTS * item / copy_ms / 1e6
    rows = [{"kernel": "device-to-device copy", "ms": copy_ms, "gbs": copy_gbs, "pct_copy": 100.0}]

    width = 1024
    z0 = rng.standard_normal((N_ELEMENTS // width, width), dtype=dtype) * 3
    b = rng.standard_normal(width, dtype=dtype)
    g0 = rng.standard_normal(z0.shape, dtype=dtype)
    labels = rng.integers(0, 10, N_ELEMENTS // 10)
    logits = rng.standard_normal((N_ELEMENTS // 10, 10), dtype=dtype) * 4
    p0, m0, v0, gp = (rng.standard_normal(N_ELEMENTS, dtype=dtype) for _ in range(4))
    v0 = cp.abs(v0)
    z, g, p, m, v = (cp.empty_like(x) for x in (z0, g0, p0, m0, v0))

    def restore():
        for target, source in ((z, z0), (g, g0), (p, p0), (m, m0), (v, v0)):
            cp.copyto(target, source)

    # (name, bytes moved per element, fused target?, kernel call, plain chain call); each call
    # returns the array to compare
    cases = []
    for act in ops.ACTIVATIONS:
        cases.append((f"bias_activation {act}", 2, False,
                      lambda act=act: kernels.bias_activation(cp, z, b, act),
                      lambda act=act: ops.bias_activation(cp, z, b, act)))
        if act != "identity":
            a = ops.activate(cp, z0.copy(), act)
            cases.append((f"backprop_delta {act} (BP2)", 3, True,
                          lambda a=a, act=act: kernels.backprop_delta(cp, g, a, act),
                          lambda a=a, act=act: ops.backprop_delta(cp, g, a, act)))
    for fn in ("softmax_minus_y", "softmax_minus_y_rows"):
        cases.append((f"{fn} (BP1)", 2, True,
                      lambda fn=fn: getattr(kernels, fn)(cp, logits, labels)[0],
                      lambda: ops.softmax_minus_y(cp, logits, labels)[0]))
    cases.append(("sgd_momentum_update (Nesterov)", 5, False,
                  lambda: (kernels.sgd_momentum_update(cp, p, gp, v, 0.01, 0.9, True), p)[1],
                  lambda: (ops.sgd_momentum_update(cp, p, gp, v, 0.01, 0.9, True), p)[1]))
    cases.append(("adam_update", 7, False,
                  lambda: (kernels.adam_update(cp, p, gp, m, v, 1e-3, 0.9, 0.999, 1e-8), p)[1],
                  lambda: (ops.adam_update(cp, p, gp, m, v, 1e-3, 0.9, 0.999, 1e-8), p)[1]))

    for name, passes, fused_target, kernel_fn, chain_fn in cases:
        restore()
        from_kernel = kernel_fn().copy()
        restore()
        error = max_rel_error(cp, from_kernel, chain_fn())
        restore()
        kernel_ms = gpu_median_ms(cp, kernel_fn)
        restore()
        chain_ms = gpu_median_ms(cp, chain_fn)
        gbs = passes * N_ELEMENTS * item / kernel_ms / 1e6
        row = {"kernel": name, "ms": kernel_ms, "gbs": gbs, "pct_copy": 100 * gbs / copy_gbs,
               "chain_ms": chain_ms, "speedup": chain_ms / kernel_ms, "rel_error": error,
               "agree": error < 1e-5}
        checks = [] if name.startswith("softmax") else [row["pct_copy"] >= 100 * ELEMENTWISE_TARGET]
        targets = [] if name.startswith("softmax") else [f">= {ELEMENTWISE_TARGET:.0%} of copy"]
        if fused_target:
            checks.append(row["speedup"] >= FUSED_SPEEDUP_TARGET)
            targets.append(f">= {FUSED_SPEEDUP_TARGET}x plain CuPy")
        row["target"] = ", ".join(targets)
        row["met"] = bool(row["agree"] and all(checks))
        rows.append(row)
    return rows


def host_median_s(sync, fn, repeat) -> float:
    for _ in range(3):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_timings(cp) -> list[dict]:
    """One SGD-momentum training step, gpubp on CuPy vs PyTorch eager, float32, TF32 off."""
    try:
        import torch
    except ImportError as exc:
        return [{"case": "all", "skipped": f"PyTorch not importable: {exc}"}]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = get_backend("cuda")
    rows = []
    for sizes, batch in STEP_CASES:
        label = f"{'-'.join(map(str, sizes))} b{batch}"
        rng = np.random.default_rng(1)
        X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch)
        net = MLP(sizes, "relu", cuda, "float32", seed=0)
        layers = []
        for W, bias in zip(net.weights, net.biases):
            lin = torch.nn.Linear(W.shape[0], W.shape[1]).cuda()
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(cp.asnumpy(W).T))
                lin.bias.copy_(torch.as_tensor(cp.asnumpy(bias)))
            layers += [lin, torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        Xd, yd = cp.asarray(X), cp.asarray(y)
        Xt, yt = torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")

        # agreement before timing: loss and every gradient
        loss, dW, db = net.loss_and_grads(Xd, yd)
        torch_loss = torch.nn.functional.cross_entropy(model(Xt), yt)
        torch_loss.backward()
        linears = [layer for layer in model if isinstance(layer, torch.nn.Linear)]
        errors = [abs(float(loss) - torch_loss.item()) / abs(torch_loss.item())]
        for lin, gw, gb in zip(linears, dW, db):
            errors.append(max_rel_error(cp, gw, cp.asarray(lin.weight.grad.T.contiguous().cpu().numpy())))
            errors.append(max_rel_error(cp, gb, cp.asarray(lin.bias.grad.cpu().numpy())))
        agree = max(errors) < 1e-4

        opt = SGD(momentum=0.9)
        torch_opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

        def gpubp_step():
            _, dW, db = net._loss_and_grads(Xd, yd)
            opt.step(net.params, dW + db, 1e-3)

        def torch_step():
            torch_opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(Xt), yt).backward()
            torch_opt.step()

        repeat = 50 if batch <= 1024 else 20
        gpubp_s = host_median_s(cp.cuda.Device().synchronize, gpubp_step, repeat)
        torch_s = host_median_s(torch.cuda.synchronize, torch_step, repeat)
        flops = 6 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) - 2 * batch * sizes[0] * sizes[1]
        row = {"case": label, "gpubp_ms": gpubp_s * 1e3, "torch_ms": torch_s * 1e3,
               "ratio": gpubp_s / torch_s, "gpubp_tflops": flops / gpubp_s / 1e12,
               "max_rel_error": max(errors), "agree": agree}
        if label in STEP_TARGETS:
            row["target"] = f"<= {STEP_TARGETS[label]}x torch"
            row["met"] = bool(agree and row["ratio"] <= STEP_TARGETS[label])
        rows.append(row)
    return rows


def estimator_timings() -> dict:
    """MLPClassifier((512, 512)) on 60,000 x 784 float32 samples: cuda vs cpu fit time."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from gpubp import MLPClassifier

    warnings.simplefilter("ignore", ConvergenceWarning)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 60000)
    X = (rng.normal(size=(10, 784))[y] + rng.normal(size=(60000, 784))).astype(np.float32)
    settings = dict(hidden_layer_sizes=(512, 512), max_iter=2, random_state=0, tol=0.0, n_iter_no_change=5)
    check = [MLPClassifier(device=d, **{**settings, "hidden_layer_sizes": (64,)}).fit(X[:5000], y[:5000])
             for d in ("cpu", "cuda")]
    error = float(np.max(np.abs(np.array(check[1].loss_curve_) - check[0].loss_curve_) / np.array(check[0].loss_curve_)))
    times = {"cpu": [], "cuda": []}
    for _ in range(3):
        for device in ("cuda", "cpu"):
            t0 = time.perf_counter()
            MLPClassifier(device=device, **settings).fit(X, y)
            times[device].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    speedup = medians["cpu"] / medians["cuda"]
    return {"seconds": times, "median_seconds": medians, "speedup": speedup, "loss_curve_rel_error": error,
            "agree": error < 1e-3, "target": f">= {ESTIMATOR_SPEEDUP_TARGET}x",
            "met": bool(error < 1e-3 and speedup >= ESTIMATOR_SPEEDUP_TARGET)}


def _kernel_lines(rows) -> list[str]:
    lines = [f"## Kernels, float32, {N_ELEMENTS // 2**20}M elements (median of CUDA-event times)", "",
             "| kernel | ms | GB/s | % of copy | plain CuPy ms | speedup | rel. error | target | met |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "chain_ms" not in r:
            lines.append(f"| {r['kernel']} | {r['ms']:.3f} | {r['gbs']:.0f} | 100 | | | | | |")
            continue
        lines.append(f"| {r['kernel']} | {r['ms']:.3f} | {r['gbs']:.0f} | {r['pct_copy']:.0f} | "
                     f"{r['chain_ms']:.3f} | {r['speedup']:.2f}x | {r['rel_error']:.1e} | {r['target']} | "
                     f"{'yes' if r['met'] else 'NO'} |")
    return lines


def _step_lines(rows) -> list[str]:
    lines = ["## Training step, float32, TF32 off (median host time around a device sync)", "",
             "| network, batch | gpubp ms | PyTorch eager ms | ratio | gpubp TFLOP/s | rel. error | target | met |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| {r['case']} | {r['gpubp_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['gpubp_tflops']:.1f} | {r['max_rel_error']:.1e} | {r.get('target', '')} | "
                     f"{('yes' if r['met'] else 'NO') if 'met' in r else ''} |")
    return lines


def _estimator_lines(e) -> list[str]:
    return ["## MLPClassifier((512, 512)), 60,000 x 784 float32, 2 epochs (median of 3)", "",
            f"cuda {e['median_seconds']['cuda']:.2f} s, cpu {e['median_seconds']['cpu']:.2f} s: "
            f"{e['speedup']:.1f}x (target {e['target']}: {'met' if e['met'] else 'NOT met'}; "
            f"float32 loss curves agree to {e['loss_curve_rel_error']:.1e})"]


SECTIONS = {"kernels": _kernel_lines, "steps": _step_lines, "estimator": _estimator_lines}


def markdown(report: dict) -> str:
    v = report["versions"]
    t = report.get("gpu_tests", {})
    lines = [
        f"# Device check: {v['gpu']}, {v['date']}",
        "",
        f"Driver {v['driver']} (CUDA {v['driver_cuda']}), CUDA runtime {v['runtime_cuda']}, "
        f"CuPy {v['cupy']}, NumPy {v['numpy']}, Python {v['python']}.",
        "",
        f"`pytest -m \"{t.get('marker', 'gpu')}\"`: {t.get('passed')} passed, {t.get('failed')} failed, "
        f"{t.get('skipped')} skipped ({t.get('seconds')} s).",
    ]
    slow = report.get("gpu_slow_tests")
    if slow:
        lines += ["", f"`pytest -m \"{slow['marker']}\"` (scikit-learn's checks on cuda): {slow.get('passed')} "
                      f"passed, {slow.get('failed')} failed, {slow.get('skipped')} skipped ({slow.get('seconds')} s)."]
        lines += [f"- failed: {name}" for name in slow.get("failed_tests", [])]
    for name, render in SECTIONS.items():
        section = report.get(name)
        lines.append("")
        if section is None:
            lines.append(f"## {name}: not run")
        elif isinstance(section, dict) and "error" in section:
            lines.append(f"## {name}: failed: {section['error']}")
        else:
            lines += render(section)
    return "\n".join(lines) + "\n"


def _run_section(report: dict, name: str, measure) -> None:
    """report[name] = measure(), or the error it raised (so one failure loses no other section)."""
    try:
        report[name] = measure()
    except Exception as exc:  # recorded in the report, with the traceback's end printed
        report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        traceback.print_exc()


def main() -> int:
    status = cuda_status()
    if not status.usable:
        print(f"no usable GPU: {status.reason}; nothing was measured")
        return 3
    import cupy as cp

    scratch = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(tempfile.mkdtemp(prefix="gpubp-check-"))
    report = {"versions": versions(cp)}
    card = re.sub(r"[^A-Za-z0-9]+", "-", report["versions"]["gpu"]).strip("-")
    stem = f"device_check-{datetime.date.today():%Y-%m-%d}-{card}"
    print(json.dumps(report["versions"], indent=1), flush=True)
    report["gpu_tests"] = run_gpu_tests(scratch)
    print(report["gpu_tests"]["tail"], flush=True)
    for name, measure in (("kernels", lambda: kernel_timings(cp)), ("steps", lambda: step_timings(cp)),
                          ("estimator", estimator_timings)):
        _run_section(report, name, measure)
        write_results(stem, report, markdown(report))  # what is measured so far survives a timeout
    # last, in the time left: scikit-learn's estimator checks on the cuda device (many small fits)
    report["gpu_slow_tests"] = run_gpu_tests(scratch, "gpu and slow", timeout=SLOW_TESTS_SECONDS)
    write_results(stem, report, markdown(report))
    text = markdown(report)
    print(text)
    failed = report["gpu_tests"].get("failed") != 0 or any("error" in report[n] for n in SECTIONS
                                                            if isinstance(report[n], dict))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
