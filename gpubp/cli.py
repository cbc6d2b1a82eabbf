"""The ``gpubp`` command: ``gpubp train``, ``gpubp info``, ``gpubp check`` and ``gpubp bench``.

Bad arguments or data end with one line on stderr and exit status 2, never a traceback. The
arguments are in gpubp.cli_parser (typed by gpubp.params), ``gpubp train`` in gpubp.cli_train.
"""

from __future__ import annotations

import platform
import sys

from .version import __version__
from .backend import cuda_status, get_backend
from .cli_parser import UsageError, build_parser, report
from .cli_train import train


def _info() -> int:
    import numpy
    import sklearn
    import tqdm

    print(f"gpubp {__version__}")
    print(f"python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"numpy {numpy.__version__}, scikit-learn {sklearn.__version__}, tqdm {tqdm.__version__}")
    status = cuda_status()
    print(f"cuda usable: {'yes' if status.usable else 'no'} ({status.reason})")
    for i, name in enumerate(status.devices):
        print(f"  cuda:{i} {name}")
    print(f"auto device: {get_backend('auto').device}")
    import ml_dtypes

    print("precision (--dtype, --tf32): float64; float32 (IEEE); float32 --tf32 (TF32 products on cards of "
          f"compute capability >= 8.0, modelled on the CPU); bfloat16 (products and saved activations, float32 "
          f"sums and parameters; ml_dtypes {ml_dtypes.__version__} emulates it on the CPU)")
    from . import cuda_graph, distributed, host_build

    print(host_build.describe())
    print(cuda_graph.describe())
    print(distributed.describe())
    return 0


def _check() -> int:
    from .parity import format_table, kernel_checks, model_checks

    status = cuda_status()
    if not status.usable:
        print(f"no usable GPU: {status.reason}")
        print("nothing was compared")
        return 3
    gpu, cpu = get_backend("cuda"), get_backend("cpu")
    print(f"comparing {gpu.device} with {cpu.device}", flush=True)
    results = kernel_checks(gpu, gpu.kernels) + model_checks(cpu, gpu)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _bench(args) -> int:
    import numpy as np

    from . import bench

    missing = bench.extra_missing()
    if missing:
        raise UsageError(missing)
    rng = np.random.default_rng(0)
    n = args.samples
    y = rng.integers(0, 10, n + 1000)
    X = rng.normal(size=(10, 784))[y] + 2 * rng.normal(size=(n + 1000, 784))
    machine = bench.machine_info()
    rates = {"float32": bench.matmul_rate("float32")}
    print(f"{machine['cpu']}, {machine['cores']} cores, {', '.join(machine['blas'])}; "
          f"torch {machine['torch'] or 'not installed'}; float32 matmul {rates['float32']:.0f} GFLOP/s", flush=True)
    print(f"{n} synthetic 784-feature samples; one epoch per run, median of {args.pairs} paired runs", flush=True)
    rows = [bench.time_case(bench.Case((784, 512, 512, 10), 256, "float32", optimizer), X[:n], y[:n], X[n:], y[n:],
                            args.pairs, rates)
            for optimizer in ("momentum", "adam")]
    print(bench.format_rows(rows))
    return 0 if all(row["agree"] for row in rows) else 1


def main(argv=None) -> int:
    """Entry point of the ``gpubp`` command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.command == "info":
            return _info()
        if args.command == "check":
            return _check()
        if args.command == "bench":
            return _bench(args)
        return train(args)
    except BaseException as exc:
        status = report(exc)
        if status is None:
            raise
        return status


if __name__ == "__main__":
    sys.exit(main())
