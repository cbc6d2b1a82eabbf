"""summary.md of the device check: the table of stages, then each stage's tables, rendered from
the report the runner keeps (benchmarks/device_check.py); benchmarks/results_md.py reuses it."""

from __future__ import annotations

from benchmarks.device_stages import ESTIMATOR_RTOL
from benchmarks.kernel_timings import BANDWIDTH_TARGET, N_ELEMENTS, SPEEDUP_MARGIN


def yes(flag) -> str:
    """A verdict cell: yes or NO."""
    return "yes" if flag else "NO"


def stage_rows(report: dict) -> list[str]:
    """The table of stages: budget, time, status, and the verdict or what went wrong."""
    runs = any("run" in s for s in report["stages"].values())  # a report collected from several runs
    lines = ["| stage | budget s | seconds | status | verdict |" + (" run |" if runs else ""),
             "|---|---:|---:|---|---|" + ("---|" if runs else "")]
    for name, s in report["stages"].items():
        verdict = s.get("detail") or report["sections"].get(name, {}).get("verdict", "")
        lines.append(f"| {name} | {s['budget_s']} | {s['seconds']} | {s['status']} | {verdict} |"
                     + (f" {s.get('run', '')} |" if runs else ""))
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
             "times; gpubp runs gpubp.fit's step (no host sync). Kernels: launched per step, counted by "
             "PyTorch's profiler; gpubp's budget is 6L + 3 for L layers.", "",
             "| network, batch | gpubp ms | PyTorch eager ms | ratio | gpubp TFLOP/s | rel. error | target | met "
             "| kernels gpubp / budget / PyTorch |",
             "|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['case']} | skipped: {r['skipped']} | | | | | | |")
        elif "ratio" not in r:
            lines.append(f"| {r['case']} | not timed: gpubp and PyTorch disagree | | | | "
                         f"{r['max_rel_error']:.1e} | | NO |")
        else:
            kernels = (f"{r.get('gpubp_kernels', '?')} / {r.get('launch_budget', '?')} / {r.get('torch_kernels', '?')}"
                       if "gpubp_kernels" in r else "not counted")
            lines.append(f"| {r['case']} | {r['gpubp_ms']:.3f} | {r['torch_ms']:.3f} | {r['ratio']:.2f}x | "
                         f"{r['gpubp_tflops']:.1f} | {r['max_rel_error']:.1e} | {r['target']} | {yes(r['met'])} "
                         f"| {kernels} |")
    return lines + kernel_time_lines(rows)


def kernel_time_lines(rows: list[dict], top: int = 5) -> list[str]:
    """Where each timed step spends the card's time: the kernels' summed time (busy) against the
    step's, and its ``top`` kernels by time, their launches summed by name."""
    lines = []
    for r in rows:
        launches = r.get("gpubp_kernel_us")
        if not isinstance(launches, list) or r.get("gpubp_busy_ms") is None:
            continue
        by_name: dict[str, float] = {}
        for name, us in launches:
            by_name[name] = by_name.get(name, 0.0) + us
        heaviest = sorted(by_name.items(), key=lambda item: -item[1])[:top]
        torch_busy = r.get("torch_busy_ms")
        lines.append(f"- {r['case']}: kernels busy {r['gpubp_busy_ms']:.3f} of {r['gpubp_ms']:.3f} ms"
                     + (f" (PyTorch {torch_busy:.3f} of {r['torch_ms']:.3f} ms)" if torch_busy is not None else "")
                     + "; heaviest: " + ", ".join(f"{name} {us / 1000:.3f} ms" for name, us in heaviest))
    return ["", "Kernel time per step (PyTorch's profiler, one profiled step):", ""] + lines if lines else []


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
