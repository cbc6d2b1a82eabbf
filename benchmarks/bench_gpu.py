"""gpubp on CuPy against PyTorch eager, torch.compile and PyTorch with CUDA graphs, on one GPU.

    PYTHONPATH=. python benchmarks/bench_gpu.py            (a few minutes on an H100/H200)

Networks 784-512-512-10 (batch 256, 1024, 4096), 4096-4096-4096-10 and 8192-8192-10 (batch
4096); float32 with TF32 off, and TF32. One training step = forward, backward and an SGD-momentum
update, from the same initial weights in every library. Each case first checks that gpubp's
loss and gradients agree with PyTorch eager's (relative error < 1e-4 in float32, < 1e-2 in
TF32), then times steps with CUDA events (median), and reports samples/s, TFLOP/s and the
fraction of the matmul ceiling measured in the same run (an 8192^3 product in the same mode).
CuPy reads CUPY_TF32 when it is imported, so the TF32 half runs in a child process.

Targets (H100/H200): on the wide networks >= 70% of the measured float32 matmul ceiling and
within 1.1x of PyTorch eager; on 784-512-512-10 batch 256 within 1.5x of PyTorch eager.
Writes JSON and markdown to $OUT (when set) and benchmarks/results/gpu-DATE-CARD.*.
Without a usable GPU, or without PyTorch, it says why and exits with status 3.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_md import write_results  # noqa: E402
from gpubp import MLP, get_backend  # noqa: E402
from gpubp.backend import cuda_status  # noqa: E402
from gpubp.bench import Case  # noqa: E402
from gpubp.optim import SGD  # noqa: E402

CASES = [((784, 512, 512, 10), 256), ((784, 512, 512, 10), 1024), ((784, 512, 512, 10), 4096),
         ((4096, 4096, 4096, 10), 4096), ((8192, 8192, 10), 4096)]
LR, MOMENTUM = 1e-3, 0.9


def event_median_ms(torch, fn, repeat: int) -> float:
    """Median of per-call CUDA-event times (ms); works for CuPy work too, on the same default stream."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def matmul_ceiling_tflops(cp) -> float:
    from cupyx.profiler import benchmark

    n = 8192
    a, b = cp.random.standard_normal((n, n), dtype=cp.float32), cp.random.standard_normal((n, n), dtype=cp.float32)
    ms = float(np.median(benchmark(lambda: a @ b, n_repeat=20, n_warmup=3).gpu_times[0])) * 1e3
    return 2 * n**3 / ms / 1e9


def torch_model(torch, net, cp):
    layers = []
    for W, b in zip(net.weights, net.biases):
        lin = torch.nn.Linear(*W.shape).cuda()
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(cp.asnumpy(W).T.copy()))
            lin.bias.copy_(torch.as_tensor(cp.asnumpy(b)))
        layers += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def run_mode(mode: str) -> dict:
    """All cases in one precision mode ("fp32" or "tf32"), in this process."""
    import cupy as cp
    import torch

    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    tolerance = 1e-2 if mode == "tf32" else 1e-4
    cuda = get_backend("cuda")
    ceiling = matmul_ceiling_tflops(cp)
    rows = []
    for sizes, batch in CASES:
        case = Case(sizes, batch, "float32", "momentum")
        rng = np.random.default_rng(0)
        X = rng.normal(size=(batch, sizes[0])).astype(np.float32)
        y = rng.integers(0, sizes[-1], batch)
        net = MLP(list(sizes), "relu", cuda, "float32", seed=0)
        model = torch_model(torch, net, cp)
        Xd, yd = cp.asarray(X), cp.asarray(y)
        Xt, yt = torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")

        loss, dW, _ = net.loss_and_grads(Xd, yd)
        torch.nn.functional.cross_entropy(model(Xt), yt).backward()
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        errors = [float(cp.linalg.norm(g - cp.asarray(lin.weight.grad.T.contiguous())) / cp.linalg.norm(g))
                  for g, lin in zip(dW, linears)]
        agree = max(errors) < tolerance
        row = {"case": case.label.replace(" float32 momentum", ""), "mode": mode, "max_rel_error": max(errors),
               "agree": agree, "ceiling_tflops": ceiling}
        if not agree:
            rows.append(row)
            continue

        opt = SGD(momentum=MOMENTUM)

        def gpubp_step():
            _, dW, db = net._loss_and_grads(Xd, yd)
            opt.step(net.params, dW + db, LR)

        torch_opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

        def eager_step():
            torch_opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(model(Xt), yt).backward()
            torch_opt.step()

        compiled = torch.compile(model)

        def compiled_step():
            torch_opt.zero_grad(set_to_none=False)
            torch.nn.functional.cross_entropy(compiled(Xt), yt).backward()
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

        repeat = 100 if batch <= 1024 else 30
        times = {"gpubp": event_median_ms(torch, gpubp_step, repeat),
                 "torch eager": event_median_ms(torch, eager_step, repeat)}
        for name, make in (("torch.compile", lambda: compiled_step), ("torch CUDA graph", captured_step)):
            try:
                times[name] = event_median_ms(torch, make(), repeat)
            except Exception as exc:  # a PyTorch without Triton, or a capture it refuses
                times[name] = float("nan")
                row.setdefault("failed", {})[name] = f"{type(exc).__name__}: {exc}"[:300]
        flops = case.flops_per_epoch(batch)
        row.update(ms=times, samples_per_s={k: batch / (v / 1e3) for k, v in times.items()},
                   tflops={k: flops / (v / 1e3) / 1e12 for k, v in times.items()})
        row["fraction_of_ceiling"] = row["tflops"]["gpubp"] / ceiling
        row["ratio_to_eager"] = times["gpubp"] / times["torch eager"]
        wide = sizes[1] >= 4096
        if mode == "fp32" and (wide or (sizes[1] == 512 and batch == 256)):
            limit = 1.1 if wide else 1.5
            row["target"] = f"<= {limit}x eager" + (", >= 70% of ceiling" if wide else "")
            row["met"] = bool(row["ratio_to_eager"] <= limit and (not wide or row["fraction_of_ceiling"] >= 0.7))
        rows.append(row)
    return {"mode": mode, "rows": rows}


def markdown(report: dict) -> str:
    lines = [f"# GPU training step: {report['gpu']}, {report['date']}", "",
             f"CuPy {report['cupy']}, PyTorch {report['torch']}, NumPy {report['numpy']}. "
             "Median CUDA-event time of one step (forward, backward, SGD-momentum update).", "",
             "| case | mode | gpubp ms | eager ms | compile ms | graph ms | gpubp / eager | gpubp TFLOP/s | "
             "of ceiling | target | met |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for part in report["modes"]:
        for r in part["rows"]:
            if "ms" not in r:
                lines.append(f"| {r['case']} | {r['mode']} | disagree ({r['max_rel_error']:.1e}) | | | | | | | | |")
                continue
            t = r["ms"]
            lines.append(f"| {r['case']} | {r['mode']} | {t['gpubp']:.3f} | {t['torch eager']:.3f} | "
                         f"{t['torch.compile']:.3f} | {t['torch CUDA graph']:.3f} | {r['ratio_to_eager']:.2f} | "
                         f"{r['tflops']['gpubp']:.1f} | {r['fraction_of_ceiling']:.0%} | {r.get('target', '')} | "
                         f"{('yes' if r['met'] else 'NO') if 'met' in r else ''} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fp32", "tf32"), help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    status = cuda_status()
    if not status.usable:
        print(f"no usable GPU: {status.reason}; nothing was measured")
        return 3
    try:
        import torch
    except ImportError as exc:
        print(f"PyTorch is not importable ({exc}); nothing was measured")
        return 3
    if args.mode:
        print(json.dumps(run_mode(args.mode)))
        return 0
    import cupy as cp

    modes = [run_mode("fp32")]
    child = subprocess.run([sys.executable, __file__, "--mode", "tf32"], capture_output=True, text=True,
                           env={**os.environ, "CUPY_TF32": "1"})
    if child.returncode == 0:
        modes.append(json.loads(child.stdout.strip().splitlines()[-1]))
    else:
        print(f"the TF32 run failed:\n{child.stderr[-2000:]}")
    gpu = status.devices[cp.cuda.runtime.getDevice()]
    report = {"gpu": gpu, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "cupy": cp.__version__, "torch": torch.__version__, "numpy": np.__version__, "modes": modes}
    text = markdown(report)
    write_results(f"gpu-{datetime.date.today():%Y-%m-%d}-{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}",
                  report, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
