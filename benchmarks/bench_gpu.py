"""gpubp on CuPy against PyTorch eager, PyTorch with CUDA graphs and (one case) torch.compile.

    PYTHONPATH=. python benchmarks/bench_gpu.py                          (a few minutes, at most 9)
    PYTHONPATH=. python benchmarks/bench_gpu.py --compile-case none      (no torch.compile at all)

Networks 784-512-512-10 (batch 256, 1024, 4096), 4096-4096-4096-10 and 8192-8192-10 (batch
4096); float32 IEEE (PyTorch ``fp32_precision = "ieee"``, CUPY_TF32 unset), then TF32 (both
set to TF32). One training step = forward, backward and an SGD-momentum update, from the same
initial weights in every library. Each case first checks that gpubp's loss and gradients agree
with PyTorch eager's (relative error < 1e-4 in float32, < 1e-2 in TF32), then times steps with
CUDA events (median), and reports samples/s, TFLOP/s and the fraction of the matmul ceiling
measured in the same process (an 8192^3 product in the same mode).

Every (mode, case) runs in its own child process with a time limit (90 s; 240 s for the case
that compiles), and the whole run stops starting cases after 540 s, so a hang costs one case.
torch.compile runs once per run, on one named case (``--compile-case``, float32 only): each
compile takes tens of seconds and would otherwise eat the lease. CuPy reads CUPY_TF32 when it is
imported, which a child per case also takes care of.

gpubp runs gpubp.fit's step (``flat_loss_and_grad`` and one update of the flat parameter
buffer, no host synchronization), as PyTorch's step has none (see step_timings.step_case).

Targets (H100/H200): on the wide networks >= 70% of the measured float32 matmul ceiling and
within 1.1x of PyTorch eager; on 784-512-512-10 batch 256 within 1.5x of PyTorch eager.
Writes JSON and markdown to $OUT (when set) and benchmarks/results/gpu-DATE-CARD.*.
Without a usable GPU, or without PyTorch, it says why and exits with status 3.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import timed_command as runner  # noqa: E402
from benchmarks.results_md import write_results  # noqa: E402
from benchmarks.kernel_timings import MOMENTUM, cupy_events, event_median_ms, torch_events  # noqa: E402
from benchmarks.step_timings import LR, gpubp_sgd_step, set_fp32_precision, step_errors, torch_twin  # noqa: E402

CASES = [((784, 512, 512, 10), 256), ((784, 512, 512, 10), 1024), ((784, 512, 512, 10), 4096),
         ((4096, 4096, 4096, 10), 4096), ((8192, 8192, 10), 4096)]
COMPILE_CASE = "784-512-512-10 b256"  # where small kernels dominate, so fusion could matter most
CASE_TIMEOUT_S, COMPILE_TIMEOUT_S, OVERALL_S = 90, 240, 540
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2}


def case_label(sizes, batch: int) -> str:
    """'784-512-512-10 b256'."""
    return f"{'-'.join(map(str, sizes))} b{batch}"


def matmul_ceiling_tflops(cp) -> float:
    """TFLOP/s of an 8192^3 float32 product in the current precision mode (median of 10)."""
    from gpubp.bench import matmul_flops

    n = 8192
    a, b = cp.random.standard_normal((n, n), dtype=cp.float32), cp.random.standard_normal((n, n), dtype=cp.float32)
    ms = event_median_ms(cupy_events(cp), lambda: a @ b, repeat=10)
    return matmul_flops(n, n, n) / ms / 1e9


def step_functions(torch, net, model, Xd, y, Xt, yt) -> dict:
    """Name -> a training step: gpubp, PyTorch eager, and a builder of the captured CUDA-graph step."""
    gpubp_step = gpubp_sgd_step(net, Xd, net.backend.asarray(y))
    torch_opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def eager_step(forward=model):
        torch_opt.zero_grad(set_to_none=False)  # a captured graph needs the gradient tensors kept
        torch.nn.functional.cross_entropy(forward(Xt), yt).backward()
        torch_opt.step()

    def captured_step():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                eager_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager_step()
        return graph.replay

    return {"gpubp": gpubp_step, "torch eager": eager_step, "captured": captured_step,
            "compiled": lambda: partial(eager_step, torch.compile(model))}


def run_case(mode: str, index: int, with_compile: bool, save) -> dict:
    """One case in one precision mode, in this (child) process: agreement, then the step times."""
    import cupy as cp
    import torch

    from gpubp import MLP, get_backend

    set_fp32_precision(torch, "tf32" if mode == "tf32" else "ieee")
    sizes, batch = CASES[index]
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch)
    net = MLP(list(sizes), "relu", get_backend("cuda"), "float32", seed=0)
    model = torch_twin(torch, net, cp)
    Xd, Xt, yt = cp.asarray(X), torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")
    errors = step_errors(cp, torch, net, model, Xd, y, Xt, yt)
    row = {"case": case_label(sizes, batch), "mode": mode, "max_rel_error": max(errors),
           "agree": max(errors) < TOLERANCE[mode], "ceiling_tflops": matmul_ceiling_tflops(cp)}
    if not row["agree"]:
        return row
    steps = step_functions(torch, net, model, Xd, y, Xt, yt)
    repeat = 100 if batch <= 1024 else 30
    times = {"gpubp": event_median_ms(cupy_events(cp), steps["gpubp"], repeat=repeat),
             "torch eager": event_median_ms(torch_events(torch), steps["torch eager"], repeat=repeat)}
    save({**row, "ms": times})
    for name, make in (("torch CUDA graph", steps["captured"]),) + ((("torch.compile", steps["compiled"]),)
                                                                  if with_compile else ()):
        try:
            times[name] = event_median_ms(torch_events(torch), make(), repeat=repeat)
        except Exception as exc:  # a PyTorch without Triton, or a capture it refuses
            row.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
    return rates(row, times, sizes, batch)


def rates(row: dict, times: dict, sizes, batch: int) -> dict:
    """row with the times, samples/s, TFLOP/s, fraction of the ceiling, and the target verdict."""
    from gpubp.bench import train_flops

    flops = train_flops(sizes, batch)  # one step
    row.update(ms=times, samples_per_s={k: batch / (v / 1e3) for k, v in times.items()},
               tflops={k: flops / v / 1e9 for k, v in times.items()})
    row["fraction_of_ceiling"] = row["tflops"]["gpubp"] / row["ceiling_tflops"]
    row["ratio_to_eager"] = times["gpubp"] / times["torch eager"]
    wide = sizes[1] >= 4096
    if row["mode"] == "fp32" and (wide or (sizes[1] == 512 and batch == 256)):
        limit = 1.1 if wide else 1.5
        row["target"] = f"<= {limit}x eager" + (", >= 70% of ceiling" if wide else "")
        row["met"] = bool(row["ratio_to_eager"] <= limit and (not wide or row["fraction_of_ceiling"] >= 0.7))
    return row


def run_all(compile_case: str, case_timeout: float, overall: float) -> list[dict]:
    """Every (mode, case) in a child process under its time limit, until the overall limit."""
    deadline, rows = time.monotonic() + overall, []
    with tempfile.TemporaryDirectory(prefix="gpubp-bench-", ignore_cleanup_errors=True) as scratch:
        for mode in ("fp32", "tf32"):
            env = {**runner.child_env(None), **({"CUPY_TF32": "1"} if mode == "tf32" else {})}
            for index, (sizes, batch) in enumerate(CASES):
                label = case_label(sizes, batch)
                with_compile = mode == "fp32" and label == compile_case
                budget = min(COMPILE_TIMEOUT_S if with_compile else case_timeout, deadline - time.monotonic())
                if budget < 10:
                    spent = f"not run: the overall {overall:.0f} s were spent"
                    rows.append({"case": label, "mode": mode, "problem": spent})
                    continue
                result = Path(scratch) / f"{mode}-{index}.json"
                cmd = [sys.executable, __file__, "--mode", mode, "--case", str(index), "--result", str(result)]
                cmd += ["--with-compile"] if with_compile else []
                status, section = runner.run_isolated(cmd, round(budget), result, env)
                row = section or {"case": label, "mode": mode}
                if status["status"] != "passed":
                    row["problem"] = status["detail"]
                rows.append(row)
                print(f"[{mode} {label}] {status['status']} in {status['seconds']} s", flush=True)
    return rows


def ms_cell(times: dict, name: str) -> str:
    """A time in ms, or '-' where the case did not time it."""
    return f"{times[name]:.3f}" if name in times else "-"


def markdown(report: dict) -> str:
    """The table of every (case, mode): times, ratio, TFLOP/s, fraction of the ceiling, target."""
    lines = [f"# GPU training step: {report['gpu']}, {report['date']}", "",
             f"CuPy {report['cupy']}, PyTorch {report['torch']}, NumPy {report['numpy']}. "
             "Median CUDA-event time of one step (forward, backward, SGD-momentum update); torch.compile "
             f"only on {report['compile_case']} (fp32).", "",
             "| case | mode | gpubp ms | eager ms | compile ms | graph ms | gpubp / eager | gpubp TFLOP/s | "
             "of ceiling | target | met |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in report["rows"]:
        if "tflops" not in r:
            why = r.get("problem") or f"disagree ({r['max_rel_error']:.1e})"
            lines.append(f"| {r['case']} | {r['mode']} | {why} | | | | | | | | |")
            continue
        t = r["ms"]
        lines.append(f"| {r['case']} | {r['mode']} | {t['gpubp']:.3f} | {t['torch eager']:.3f} | "
                     f"{ms_cell(t, 'torch.compile')} | {ms_cell(t, 'torch CUDA graph')} | {r['ratio_to_eager']:.2f} | "
                     f"{r['tflops']['gpubp']:.1f} | {r['fraction_of_ceiling']:.0%} | {r.get('target', '')} | "
                     f"{('yes' if r['met'] else 'NO') if 'met' in r else ''} |")
    return "\n".join(lines) + "\n"


def parse_args(argv) -> argparse.Namespace:
    """Command-line options; --mode, --case, --result and --with-compile are a child's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile-case", default=COMPILE_CASE,
                        help=f"the one case that also times torch.compile (default {COMPILE_CASE!r}; 'none': no case)")
    parser.add_argument("--case-timeout", type=float, default=CASE_TIMEOUT_S, help="seconds per case")
    parser.add_argument("--overall-timeout", type=float, default=OVERALL_S, help="seconds for the whole run")
    parser.add_argument("--mode", choices=("fp32", "tf32"), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--with-compile", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Run every case in its child process, then write and print the results."""
    args = parse_args(argv)
    if args.mode:
        return runner.run_child(partial(run_case, args.mode, args.case, args.with_compile), args.result)
    from gpubp.backend import cuda_status

    status = cuda_status()
    if not status.usable:
        print(f"no usable GPU: {status.reason}; nothing was measured")
        return 3
    try:
        import torch
    except ImportError as exc:
        print(f"PyTorch is not importable ({exc}); nothing was measured")
        return 3
    import cupy as cp

    rows = run_all(args.compile_case, args.case_timeout, args.overall_timeout)
    gpu = status.devices[cp.cuda.runtime.getDevice()]
    report = {"gpu": gpu, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cupy": cp.__version__, "torch": torch.__version__, "numpy": np.__version__,
              "compile_case": args.compile_case, "rows": rows}
    text = markdown(report)
    write_results(f"gpu-{datetime.date.today():%Y-%m-%d}-{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}",
                  report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
