"""The GPU kernels of one gpubp training step, by name, for the device check's step cases.

    PYTHONPATH=. python benchmarks/step_kernel_names.py     (on a GPU machine; about 10 s)

PyTorch's profiler (CUPTI) records every kernel of the process, CuPy's and cuBLAS's included, so
this shows which of a step's kernels gpubp launches and which a library call adds (cuBLAS runs
some products as a split-K product and a reduction kernel). The step is step_timings'.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.step_timings import STEP_CASES, gpubp_sgd_step, kernel_names  # noqa: E402


def main() -> None:
    import cupy as cp
    import torch

    from gpubp import MLP, get_backend

    for sizes, batch in STEP_CASES:
        rng = np.random.default_rng(1)
        X = cp.asarray(rng.normal(size=(batch, sizes[0])).astype(np.float32))
        y = cp.asarray(rng.integers(0, sizes[-1], batch))
        net = MLP(sizes, "relu", get_backend("cuda"), "float32", seed=0)
        names = kernel_names(torch, gpubp_sgd_step(net, X, y))
        print(f"{'-'.join(map(str, sizes))} b{batch}: {len(names)}")
        for name in names:
            print("   ", name[:110])


if __name__ == "__main__":
    main()
