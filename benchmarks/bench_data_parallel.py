"""Data-parallel training on the CPU: 2 MPI ranks with one BLAS thread each against 1 process
with two BLAS threads, same network, data and global batch (issue 13's measurement).

    PYTHONPATH=. python benchmarks/bench_data_parallel.py [--samples 16384] [--epochs 3] [--pairs 3]

784-2048-2048-10, batch 1024, float32, SGD with momentum, synthetic data. Correctness first: the
two configurations must end their first epoch with the same training loss (float32, rtol 1e-4).
Then each pair runs both back to back (alternating which goes first) and the median epoch time of
each is reported, with the ratio. The machine is shared and noisy: compare the ratio, not the
seconds. Needs mpi4py and mpirun (pip install "gpubp[mpi]"). Writes JSON and markdown to
benchmarks/results/dp_cpu-DATE.*.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.results_md import write_results  # noqa: E402

SIZES = [784, 2048, 2048, 10]
BATCH = 1024
LOSS_RTOL = 1e-4  # float32 sums in two orders (the all-reduce adds the ranks' halves)


def worker(out: Path, samples: int, epochs: int) -> None:
    """One run of fit (every rank of an mpirun job, or one process): rank 0 writes its history."""
    import gpubp

    rng = np.random.default_rng(0)
    X = rng.normal(size=(samples, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], samples)
    comm = gpubp.distributed.world("cpu")
    net = gpubp.MLP(SIZES, "relu", "cpu", "float32", seed=0)
    history = gpubp.fit(net, X, y, epochs=epochs, batch_size=BATCH, optimizer="momentum", lr=0.01, seed=0,
                        comm=comm)
    if comm.rank == 0:
        out.write_text(json.dumps({"seconds": history.seconds, "train_loss": history.train_loss,
                                   "ranks": history.ranks}))


def run(config: str, samples: int, epochs: int) -> dict:
    """``config`` "1x2" (one process, 2 BLAS threads) or "2x1" (mpirun -n 2, 1 thread each)."""
    ranks, threads = (1, "2") if config == "1x2" else (2, "1")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "history.json"
        command = [sys.executable, __file__, "--worker", str(out), "--samples", str(samples), "--epochs", str(epochs)]
        if ranks > 1:
            mpirun = Path(sys.executable).with_name("mpirun")
            command = [str(mpirun if mpirun.exists() else "mpirun"), "-n", str(ranks), "--oversubscribe", *command]
        subprocess.run(command, env=env, check=True, timeout=1800, capture_output=True)
        return json.loads(out.read_text())


def markdown(report: dict) -> str:
    m = report["machine"]
    return "\n".join([
        f"# Data-parallel training on the CPU ({report['date']})", "",
        f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, NumPy {m['numpy']}. {report['network']}, batch "
        f"{report['batch']}, {report['samples']} samples, float32, SGD-momentum; median epoch of "
        f"{report['pairs']} paired runs of {report['epochs']} epochs (the first epoch of each run left out).", "",
        "| configuration | median epoch s | first-epoch loss |", "|---|---:|---:|",
        *[f"| {name} | {r['median_s']:.3f} | {r['first_loss']:.6f} |" for name, r in report["runs"].items()], "",
        f"2 ranks x 1 thread / 1 process x 2 threads: {report['ratio']:.2f} (losses agree: {report['agree']}).", ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker(args.worker, args.samples, args.epochs)
        return 0
    configs = ("1x2", "2x1")
    seconds = {c: [] for c in configs}
    first = {}
    for pair in range(args.pairs):
        for config in configs if pair % 2 == 0 else configs[::-1]:
            result = run(config, args.samples, args.epochs)
            seconds[config] += result["seconds"][1:]  # the first epoch pays start-up
            first[config] = result["train_loss"][0]
    agree = abs(first["2x1"] - first["1x2"]) <= LOSS_RTOL * abs(first["1x2"])
    runs = {"1 process x 2 BLAS threads": {"median_s": statistics.median(seconds["1x2"]), "first_loss": first["1x2"]},
            "2 ranks x 1 BLAS thread": {"median_s": statistics.median(seconds["2x1"]), "first_loss": first["2x1"]}}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = {"date": date, "network": "-".join(map(str, SIZES)), "batch": BATCH, "samples": args.samples,
              "epochs": args.epochs, "pairs": args.pairs, "runs": runs, "agree": agree,
              "ratio": runs["2 ranks x 1 BLAS thread"]["median_s"] / runs["1 process x 2 BLAS threads"]["median_s"],
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "python": platform.python_version(), "numpy": np.__version__}}
    text = markdown(report)
    write_results(f"dp_cpu-{date[:10]}", report, text)
    print(text)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
