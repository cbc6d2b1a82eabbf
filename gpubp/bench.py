"""Measuring training speed against scikit-learn and PyTorch, and against the matmul limit.

Used by ``gpubp bench`` (a quick run on the user's machine) and ``benchmarks/bench_cpu.py`` (the
full run that writes results). Every comparison first checks that the libraries learn the same
problem from the same initial weights, then times whole epochs in paired, alternating runs and
reports medians, so that a shared, noisy machine affects all libraries alike.

Its requirements are the optional extra ``gpubp[bench]`` (threadpoolctl, imported when the
machine is described); PyTorch is compared when it is installed. :func:`train_flops` is the one
FLOP count of MLP training that every benchmark divides by.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import statistics
import time
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from .version import __version__
from .mlp import MLP
from .train import fit

LIBRARIES = ("gpubp", "sklearn", "torch")
EXTRA = ("threadpoolctl",)  # the modules of the [bench] extra (pyproject.toml)


def extra_missing() -> str | None:
    """None when the [bench] extra is installed; else the one line that says what to install."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return f"gpubp bench needs: pip install 'gpubp[bench]' (missing: {', '.join(missing)})"


def matmul_flops(n: int, k: int, m: int) -> float:
    """Floating-point operations of an (n, k) @ (k, m) product: n m sums of k products."""
    return 2.0 * n * k * m


def train_flops(sizes, rows: int) -> float:
    """Floating-point operations of the matrix products of training an MLP on ``rows`` samples.

    ``sizes`` = [n0, n1, ..., nL]: the widths of the input, hidden and output layers. Each layer's
    forward product a @ W and its weight gradient a.T @ delta (BP4) count, and its backward
    product delta @ W.T (BP2) except in the first layer (no delta for the input): in all
    6 rows sum(n_in n_out) - 2 rows n0 n1, however the rows are split into batches. Element-wise
    work (activations, softmax, the update) is not counted. ``rows``: the batch size for one
    step, the number of samples for one epoch.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1 or rows < 0:
        raise ValueError(f"train_flops needs at least two layer widths, all >= 1, and rows >= 0; "
                         f"got sizes={sizes}, rows={rows}")
    total = 0.0
    for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        total += matmul_flops(rows, n_in, n_out) + matmul_flops(n_in, rows, n_out)  # a @ W, a.T @ delta
        if layer > 0:
            total += matmul_flops(rows, n_out, n_in)  # delta @ W.T
    return total


@dataclass
class Case:
    """One benchmark configuration."""

    sizes: tuple[int, ...]
    batch_size: int
    dtype: str
    optimizer: str  # "momentum" (SGD, momentum 0.9) or "adam"

    @property
    def label(self) -> str:
        return f"{'-'.join(map(str, self.sizes))} b{self.batch_size} {self.dtype} {self.optimizer}"


def machine_info() -> dict:
    """CPU model, cores, BLAS libraries and versions of everything involved, and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import sklearn
    import threadpoolctl

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
        "numpy": np.__version__, "sklearn": sklearn.__version__, "gpubp": __version__,
        "blas": sorted({f"{i['internal_api']} {i.get('version')} {i.get('architecture') or ''} "
                        f"({i['num_threads']} threads)".replace("  ", " ")
                        for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}),
    }
    torch = _torch()
    info["torch"] = torch.__version__ if torch else None
    return info


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def matmul_rate(dtype: str, n: int = 2048, repeat: int = 5) -> float:
    """Measured GFLOP/s of an n x n by n x n NumPy matrix product (median of repeat)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)).astype(dtype), rng.normal(size=(n, n)).astype(dtype)
    a @ b
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return matmul_flops(n, n, n) / statistics.median(times) / 1e9


class Runner:
    """Trains one epoch of a Case with each library from the same initial weights."""

    def __init__(self, case: Case, X: np.ndarray, y: np.ndarray, lr: float | None = None):
        self.case, self.y = case, y
        self.X = np.ascontiguousarray(X, dtype=case.dtype)
        self.lr = lr or (1e-3 if case.optimizer == "adam" else 0.01)
        self.init = MLP(list(case.sizes), "relu", "cpu", case.dtype, seed=0).get_params()
        self.torch = _torch()

    def available(self) -> tuple[str, ...]:
        return tuple(lib for lib in LIBRARIES if lib != "torch" or self.torch is not None)

    def gpubp(self, epochs: int = 1) -> MLP:
        return self.gpubp_fit(epochs)[0]

    def gpubp_fit(self, epochs: int = 1) -> tuple[MLP, object]:
        """(the trained network, fit's History) of ``epochs`` epochs from the shared start."""
        net = MLP(list(self.case.sizes), "relu", "cpu", self.case.dtype, seed=0)
        net.set_params(self.init)
        history = fit(net, self.X, self.y, epochs=epochs, batch_size=self.case.batch_size,
                      optimizer=self.case.optimizer, lr=self.lr, momentum=0.9, seed=0)
        return net, history

    def sklearn(self, epochs: int = 1):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        L = len(self.case.sizes) - 1
        clf = MLPClassifier(self.case.sizes[1:-1], solver="sgd" if self.case.optimizer == "momentum" else "adam",
                            alpha=0.0, batch_size=self.case.batch_size, learning_rate_init=self.lr, momentum=0.9,
                            nesterovs_momentum=False, max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1,
                            random_state=0, warm_start=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)  # the one-row-per-class batch is small
            one_of_each = np.unique(self.y, return_index=True)[1]
            clf.partial_fit(self.X[one_of_each], self.y[one_of_each], classes=np.arange(self.case.sizes[-1]))
            clf.coefs_ = [p.copy() for p in self.init[:L]]
            clf.intercepts_ = [p.copy() for p in self.init[L:]]
            clf.fit(self.X, self.y)
        return clf

    def torch_model(self, epochs: int = 1):
        torch = self.torch
        dtype = getattr(torch, self.case.dtype)
        L = len(self.case.sizes) - 1
        layers = []
        for W, b in zip(self.init[:L], self.init[L:]):
            lin = torch.nn.Linear(*W.shape, dtype=dtype)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            layers += [lin, torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers[:-1])
        opt = (torch.optim.Adam(model.parameters(), lr=self.lr) if self.case.optimizer == "adam"
               else torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9))
        X, y = torch.from_numpy(self.X), torch.from_numpy(self.y.astype(np.int64))
        generator = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            order = torch.randperm(len(X), generator=generator)
            for start in range(0, len(X), self.case.batch_size):
                idx = order[start : start + self.case.batch_size]
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
                opt.step()
        return model

    def products(self, matmul=np.matmul) -> None:
        """One epoch of the matrix products alone, at the case's shapes: for every batch, each
        layer's forward a @ W, its dW = a.T @ delta and (past the first layer) delta @ W.T. Their
        time is the floor for any implementation that does these products with this BLAS (on small
        networks the floor is itself noisy and can exceed a whole epoch's median)."""
        n, batch = len(self.X), self.case.batch_size
        W, hidden = self._product_operands()
        for start in range(0, n, batch):
            rows = min(batch, n - start)
            a = [self.X[start : start + rows]] + [h[:rows] for h in hidden]
            for l in reversed(range(len(W))):
                delta = matmul(a[l], W[l])  # (rows, sizes[l+1]); stands in for the output's delta too
                matmul(a[l].T, delta)
                if l > 0:
                    matmul(delta, W[l].T)

    def _product_operands(self):
        """Random weights and hidden activations of the case's shapes, made once."""
        if not hasattr(self, "_operands"):
            sizes, dtype = self.case.sizes, self.case.dtype
            rng = np.random.default_rng(0)
            W = [rng.normal(size=(a, b)).astype(dtype) for a, b in zip(sizes[:-1], sizes[1:])]
            hidden = [rng.normal(size=(self.case.batch_size, s)).astype(dtype) for s in sizes[1:-1]]
            self._operands = W, hidden
        return self._operands

    def run(self, library: str) -> float:
        """Seconds for one epoch with ``library`` (or "products": the matrix products alone)."""
        train = {"gpubp": self.gpubp, "sklearn": self.sklearn, "torch": self.torch_model,
                 "products": self.products}[library]
        t0 = time.perf_counter()
        train()
        return time.perf_counter() - t0

    def accuracies(self, X_test, y_test, epochs: int = 2) -> dict:
        """Test accuracy of each library after a short training from the shared start."""
        X_test = np.asarray(X_test, dtype=self.case.dtype)
        result = {"gpubp": self.gpubp(epochs).score(X_test, y_test),
                  "sklearn": float(self.sklearn(epochs).score(X_test, y_test))}
        if self.torch is not None:
            model = self.torch_model(epochs)
            with self.torch.no_grad():
                logits = model(self.torch.from_numpy(X_test))
            result["torch"] = float((logits.argmax(1).numpy() == y_test).mean())
        return result


def time_case(case: Case, X, y, X_test, y_test, pairs: int, rates: dict) -> dict:
    """Agreement check, then paired alternating epoch timings for one case."""
    runner = Runner(case, X, y)
    libraries = runner.available()
    accuracy = runner.accuracies(X_test, y_test)
    chance = 1.0 / case.sizes[-1]
    agree = all(a > 2 * chance for a in accuracy.values()) and max(accuracy.values()) - min(accuracy.values()) < 0.1
    times = {lib: [] for lib in libraries}
    floor = []
    if agree:
        for pair in range(pairs):
            for lib in (libraries if pair % 2 == 0 else tuple(reversed(libraries))):
                times[lib].append(runner.run(lib))
            floor.append(runner.run("products"))
    flops = train_flops(case.sizes, len(X))
    row = {**asdict(case), "label": case.label, "accuracy": accuracy, "agree": agree, "seconds": times,
           "products_seconds": floor}
    if agree:
        medians = {lib: statistics.median(t) for lib, t in times.items()}
        row["median_seconds"] = medians
        row["ratio_to_gpubp"] = {lib: medians[lib] / medians["gpubp"] for lib in libraries}
        row["gflops"] = {lib: flops / medians[lib] / 1e9 for lib in libraries}
        row["pct_of_matmul"] = {lib: 100 * row["gflops"][lib] / rates[case.dtype] for lib in libraries}
        # the epoch's matrix products alone, at its shapes: the floor for any library on this BLAS
        row["products_median_seconds"] = statistics.median(floor)
        row["pct_of_products"] = {lib: 100 * row["products_median_seconds"] / medians[lib] for lib in libraries}
    return row


def format_rows(rows: list[dict]) -> str:
    """Plain-text table of time_case results."""
    lines = [f"{'case':<36} {'library':<8} {'epoch s':>8} {'x gpubp':>8} {'GFLOP/s':>8} {'% matmul':>8} "
             f"{'% prod':>7} {'acc':>6}"]
    for row in rows:
        if not row["agree"]:
            lines.append(f"{row['label']:<36} accuracies disagree, not timed: {row['accuracy']}")
            continue
        for lib in row["median_seconds"]:
            lines.append(f"{row['label']:<36} {lib:<8} {row['median_seconds'][lib]:>8.3f} "
                         f"{row['ratio_to_gpubp'][lib]:>8.2f} {row['gflops'][lib]:>8.1f} "
                         f"{row['pct_of_matmul'][lib]:>8.0f} {row['pct_of_products'][lib]:>7.0f} "
                         f"{row['accuracy'][lib]:>6.3f}")
    return "\n".join(lines)
