"""gpubp.fit's CPU epoch against the same epoch's matrix products alone (gpubp issue 12's CPU
targets), with the CPU backend's compiled kernels (optimizer updates, ReLU, BP2, softmax) and with
the NumPy twins.

    PYTHONPATH=. python benchmarks/bench_cpu_step.py [--rounds 15]

784-512-512-10, batch 256, float32, on the MNIST test set in ../shared (8,000 rows to train; else
synthetic data of that size), one process. First each way of training runs one epoch from the
same weights and the compiled kernels and the twins must give equal parameters; then every
round times, in an order that rotates, one epoch of: the products alone (gpubp.bench.Runner),
fit with SGD-momentum and with Adam, each with the compiled kernels and with the twins
(GPUBP_HOST_KERNELS=numpy). Reported: medians of the epoch as fit times it (history.seconds) and
of the whole call (the epoch plus building the network, the data's checks and fit's set-up), each
over the products' median; and the median over the rounds of each round's epoch over that round's
products. The targets are judged on that last one, the ratios measured side by side: on a shared
machine the load moves from minute to minute, and within a round it weighs on both sides of the
ratio alike, while the ratio of the medians pairs an epoch of one minute with products of another.
Targets: <= 1.25x (momentum) and <= 1.45x (Adam). Writes benchmarks/results/cpu_step-DATE.json
and .md, and renders benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_cpu import data  # noqa: E402
from benchmarks.results_md import RESULTS, render, write_results  # noqa: E402
from gpubp import bench, host_build  # noqa: E402

TARGETS = {"momentum": 1.25, "adam": 1.45}
CASE = ((784, 512, 512, 10), 256, "float32")


def use_kernels(kind: str) -> str:
    """Switch the CPU backend's compiled kernels to ``kind`` ("compiled" or "numpy"); returns
    gpubp's description of what now runs."""
    if kind == "numpy":
        os.environ["GPUBP_HOST_KERNELS"] = "numpy"
    else:
        os.environ.pop("GPUBP_HOST_KERNELS", None)
    host_build.compiled_kernels.cache_clear()
    return host_build.describe()


def fit_one_epoch(runner: bench.Runner) -> tuple[float, float, list]:
    """One epoch of gpubp.fit from the runner's initial weights (runner.gpubp_fit): (seconds of the
    whole call, seconds of the epoch as fit reports it in history.seconds, the trained parameters).
    The call also holds the network's construction and fit's set-up: the data's checks, the state."""
    t0 = time.perf_counter()
    net, history = runner.gpubp_fit()
    return time.perf_counter() - t0, history.seconds[0], net.params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    X, y, _, _, source = data()
    sizes, batch, dtype = CASE
    runners = {opt: bench.Runner(bench.Case(sizes, batch, dtype, opt), X, y) for opt in TARGETS}
    described = {kind: use_kernels(kind) for kind in ("numpy", "compiled")}
    if "NumPy twins" in described["compiled"]:
        raise SystemExit(f"the compiled kernels are not available here: {described['compiled']}")

    for opt, runner in runners.items():  # correctness first: both ways train alike, bit for bit
        trained = {}
        for kind in ("numpy", "compiled"):
            use_kernels(kind)
            trained[kind] = [np.array(p) for p in fit_one_epoch(runner)[2]]
        if not all(np.array_equal(a, b) for a, b in zip(trained["numpy"], trained["compiled"])):
            raise SystemExit(f"{opt}: the compiled kernels trained other parameters than the NumPy twins")

    ways = [("products", None, None)] + [(f"{opt} {kind}", opt, kind) for opt in TARGETS for kind in ("compiled", "numpy")]
    times = {name: [] for name, _, _ in ways}
    calls = {name: [] for name, opt, _ in ways if opt is not None}
    for r in range(args.rounds):
        for name, opt, kind in ways[r % len(ways):] + ways[: r % len(ways)]:
            if opt is None:
                times[name].append(runners["momentum"].run("products"))
                continue
            use_kernels(kind)
            call, epoch, _ = fit_one_epoch(runners[opt])
            times[name].append(epoch)
            calls[name].append(call)
    use_kernels("compiled")

    medians = {name: statistics.median(t) for name, t in times.items()}
    ratios = {name: medians[name] / medians["products"] for name in medians if name != "products"}
    paired = {name: statistics.median(t / p for t, p in zip(times[name], times["products"])) for name in ratios}
    call_medians = {name: statistics.median(t) for name, t in calls.items()}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": bench.machine_info(), "data": source, "case": "784-512-512-10 b256 float32",
              "rounds": args.rounds, "kernels": described, "seconds": times, "median_seconds": medians,
              "epoch_over_products": ratios, "median_round_ratio": paired, "fit_call_seconds": calls,
              "fit_call_median_seconds": call_medians,
              "targets": {opt: {"limit": limit, "measured": paired[f"{opt} compiled"],
                                "met": paired[f"{opt} compiled"] <= limit} for opt, limit in TARGETS.items()}}
    machine = result["machine"]
    lines = [f"# CPU epoch over its products: {result['case']} ({result['date']})", "",
             f"{machine['cpu']}, {machine['cores']} cores; BLAS: {'; '.join(machine['blas'])}; NumPy {machine['numpy']}. "
             f"Data: {source}, {len(X)} training rows. Median of {args.rounds} rounds, one epoch each, the ways "
             f"rotating. {described['compiled']}.", "",
             "| way | median epoch s | median of the rounds' epoch / products | median epoch / median products "
             "| whole call s | / products |", "|---|---:|---:|---:|---:|---:|",
             f"| products alone | {medians['products']:.4f} | 1.00 | 1.00 | | |"]
    lines += [f"| fit, {name} kernels | {medians[name]:.4f} | {paired[name]:.3f} | {ratios[name]:.3f} "
              f"| {call_medians[name]:.4f} | {call_medians[name] / medians['products']:.2f} |" for name in ratios]
    lines += ["", *(f"- {opt}: {t['measured']:.3f}x the products, the median of the rounds' ratios (target <= "
                    f"{t['limit']}x: {'met' if t['met'] else 'NOT met'})" for opt, t in result["targets"].items())]
    written = write_results(f"cpu_step-{datetime.date.today().isoformat()}", result, "\n".join(lines) + "\n")
    render(RESULTS, REPO / "benchmarks" / "RESULTS.md")
    print("\n".join(lines))
    print(f"wrote {', '.join(map(str, written))} (and .md) and benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
