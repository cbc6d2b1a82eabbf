"""gpubp on NumPy against scikit-learn's MLPClassifier and PyTorch on the CPU.

    PYTHONPATH=. python benchmarks/bench_cpu.py [--quick] [--pairs 3]

Networks 784-100-10, 784-512-512-10 and 784-2048-2048-10; batch 256 and 1024; float32 and
float64; SGD with momentum 0.9 and Adam; the same initial weights in all three libraries. Each
case first trains every library for two epochs from that start and checks that all learn
(test accuracy well above chance, within 10 points of each other), then times epochs in paired,
alternating runs. Reported: median epoch time, ratio to gpubp, GFLOP/s from the FLOP count
(6 n sum(n_in n_out) - 2 n n0 n1 per epoch), the % of the float32/float64 matrix-multiply
rate measured on the same machine in the same run, and the % of the time that the epoch's matrix
products alone take at the case's shapes (timed in each pair beside the libraries): the floor
for any implementation on this BLAS, which also bounds what each target can reach.

Data: the MNIST test set in ../shared/data/mnist-t10k (8,000 to train, 2,000 to test) when
present, else synthetic 784-feature data. PyTorch is optional (`pip install torch`; a CPU build
is enough); without it its rows are left out.

Targets: for 784-512-512-10 at batch 256 in float32, gpubp's epoch <= 0.5x scikit-learn's and
<= 1.0x PyTorch's; >= 80% of the measured matmul rate on the 2048-wide network.
Writes benchmarks/results/cpu-DATE.json, plots, and benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_md import render  # noqa: E402
from gpubp import bench  # noqa: E402
from gpubp.data import load_dataset  # noqa: E402

MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
NETWORKS = [(784, 100, 10), (784, 512, 512, 10), (784, 2048, 2048, 10)]
RESULTS = REPO / "benchmarks" / "results"


def data():
    if MNIST.is_dir():
        d, _ = load_dataset(str(MNIST))
        X, y, source = d.X, d.y, "MNIST t10k (IDX)"
    else:
        rng = np.random.default_rng(0)
        y = rng.integers(0, 10, 10000)
        X = rng.normal(size=(10, 784))[y] + rng.normal(size=(10000, 784))
        source = "synthetic, 10 Gaussian classes"
    X = (X - X[:8000].mean(0)) / (X[:8000].std(0) + 1e-8)
    return X[:8000], y[:8000], X[8000:], y[8000:], source


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets, each with the measured value, whether it is met, and its limit: the
    value the matrix products alone reach (measured in the same pairs), which no implementation
    that does these products with this BLAS can beat."""
    found = []
    for row in rows:
        if not row.get("agree"):
            continue
        products, medians = row["products_median_seconds"], row["median_seconds"]
        if row["label"].startswith("784-512-512-10 b256 float32"):
            for lib, name, bound in (("sklearn", "scikit-learn", 0.5), ("torch", "PyTorch", 1.0)):
                if lib in medians:
                    value = medians["gpubp"] / medians[lib]
                    found.append({"target": f"{row['label']}: gpubp <= {bound}x {name}", "value": value,
                                  "met": value <= bound, "limit": products / medians[lib]})
        if row["sizes"][1] == 2048:
            pct = row["pct_of_matmul"]["gpubp"]
            found.append({"target": f"{row['label']}: gpubp >= 80% of matmul", "value": pct / 100,
                          "met": pct >= 80, "limit": pct / 100 * medians["gpubp"] / products})
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="float32 and batch 256 only")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    X, y, X_test, y_test, source = data()
    machine = bench.machine_info()
    rates = {"float32": bench.matmul_rate("float32"), "float64": bench.matmul_rate("float64")}
    print(f"{machine['cpu']}, {machine['cores']} cores, {', '.join(machine['blas'])}; matmul GFLOP/s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in rates.items()), flush=True)
    cases = [bench.Case(sizes, batch, dtype, optimizer)
             for sizes in NETWORKS
             for batch in ((256,) if args.quick else (256, 1024))
             for dtype in (("float32",) if args.quick else ("float32", "float64"))
             for optimizer in ("momentum", "adam")]
    rows = []
    for case in cases:
        rows.append(bench.time_case(case, X, y, X_test, y_test, args.pairs, rates))
        print(bench.format_rows(rows[-1:]).split("\n", 1)[1], flush=True)
    report = {"machine": machine, "matmul_gflops": rates, "pairs": args.pairs,
              "data": f"{source}: {len(X)} training and {len(X_test)} test samples, standardised",
              "rows": rows, "targets": targets(rows)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"cpu-{datetime.date.today():%Y-%m-%d}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    render(RESULTS, REPO / "benchmarks" / "RESULTS.md")
    for t in report["targets"]:
        print(f"{'met    ' if t['met'] else 'NOT met'}  {t['target']}: {t['value']:.2f} "
              f"(the products alone: {t['limit']:.2f})")
    print(f"wrote {path} and benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
