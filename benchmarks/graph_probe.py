"""gpubp.cuda_graph on a card: a training step replayed from a CUDA graph against the same step
run eagerly. It measures and reports; it asserts nothing (tests/test_cuda_graph.py does).

    PYTHONPATH=. python benchmarks/graph_probe.py        (about a minute; writes $OUT/graph_probe.json)

For each case: what CuPy says when ``cupy.matmul`` runs under capture (it refuses cuBLAS then,
cupy#6290, hence gpubp.cublas_direct); 10 steps (``flat_loss_and_grad`` and one SGD-momentum
update, as gpubp.fit runs them) eagerly and through :class:`gpubp.cuda_graph.GraphedGradient`
from the same start, their parameters compared; then the median CUDA-event time of a step each
way.

History. The first version (runs 3 and 4 of 2026-11-27, H100, results in
benchmarks/results/h100-2026-11-27-run4/graph_probe.json) captured the step with its own
ctypes sgemm before the library had one: CuPy's binding refused cupy.matmul and
cupy.cuda.cublas.sgemm alike under capture (its setStream raises); through libcublas directly
the step captured, replayed bitwise equal to the eager steps, and took 0.107 ms against 0.75 ms
eager on 784-512-512-10 b256 (PyTorch's own graph: 0.185 ms in benchmarks/bench_gpu.py), 0.53
against 0.92 ms at b4096, and 14.28 against 14.45 ms on 4096-4096-4096-10 b4096.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_timings import MOMENTUM, cupy_events, event_median_ms, rel_error  # noqa: E402

CASES = [([784, 512, 512, 10], 256), ([784, 512, 512, 10], 4096), ([4096, 4096, 4096, 10], 4096)]
STEPS = 10  # graphed steps compared with eager steps
LR = 1e-3


def training_step(net, loss_and_grad):
    """One step as gpubp.fit runs it (SGD with momentum over the flat parameters), the loss and
    gradient from ``loss_and_grad()``; returns it as a function."""
    from gpubp.optim import SGD

    opt = SGD(momentum=MOMENTUM)
    state = opt.init(net.flat_params)

    def step():
        _, g = loss_and_grad()
        opt.update(net.flat_params, g, state, LR)

    return step


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def matmul_under_capture(cp) -> str:
    """What CuPy does with cupy.matmul while a stream captures."""
    a = cp.ones((64, 64), np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            cp.matmul(a, a)
            outcome = "captured without an error"
        except Exception as exc:
            outcome = "refused: " + error_text(exc)
        finally:
            try:
                stream.end_capture()
            except Exception as exc:
                outcome += "; end_capture: " + error_text(exc)
    return outcome


def probe_case(cp, sizes: list[int], batch: int) -> dict:
    """Eager steps against gpubp.cuda_graph's graphed steps on one network: parameters after
    STEPS steps, then the median time of a step each way."""
    from gpubp import MLP
    from gpubp.cuda_graph import GraphedGradient

    row = {"case": f"{'-'.join(map(str, sizes))} b{batch}"}
    rng = np.random.default_rng(0)
    Xd = cp.asarray(rng.normal(size=(batch, sizes[0])).astype(np.float32))
    yd = cp.asarray(rng.integers(0, sizes[-1], batch))
    eager_net, graphed_net = (MLP(sizes, "relu", "cuda", "float32", seed=0) for _ in range(2))
    eager = training_step(eager_net, lambda: eager_net.flat_loss_and_grad(Xd, yd, l2=False))
    graphed_gradient = GraphedGradient(graphed_net)
    graphed = training_step(graphed_net, lambda: graphed_gradient(Xd, yd))
    repeat = 50 if batch <= 1024 else 20
    with graphed_gradient.running():
        for _ in range(STEPS):
            graphed()
    for _ in range(STEPS):
        eager()
    row["graph_vs_eager_params_rel_error_after_steps"] = [STEPS, rel_error(cp, graphed_net.flat_params, eager_net.flat_params)]
    row["bitwise_equal"] = bool((graphed_net.flat_params == eager_net.flat_params).all())
    row["eager_ms"] = event_median_ms(cupy_events(cp), eager, repeat=repeat)
    with graphed_gradient.running():
        row["graph_ms"] = event_median_ms(cupy_events(cp), graphed, repeat=repeat)
    row["speedup"] = row["eager_ms"] / row["graph_ms"]
    return row


def main() -> int:
    import cupy as cp

    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    report = {"cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
              "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cases": []}

    def save():
        print(json.dumps(report, indent=1), flush=True)
        if out is not None:
            (out / "graph_probe.json").write_text(json.dumps(report, indent=1))

    try:
        report["matmul_under_capture"] = matmul_under_capture(cp)
    except Exception as exc:
        report["matmul_under_capture"] = "probe failed: " + error_text(exc)
    save()
    for sizes, batch in CASES:
        try:
            report["cases"].append(probe_case(cp, sizes, batch))
        except Exception as exc:
            report["cases"].append({"case": f"{sizes} b{batch}", "error": error_text(exc),
                                    "traceback": traceback.format_exc()[-1500:]})
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
