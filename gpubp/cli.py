"""The ``gpubp`` command: ``gpubp train``, ``gpubp info``, ``gpubp check`` and ``gpubp bench``.

Bad arguments or data end with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from .version import __version__
from .backend import cuda_status, get_backend
from .data import load_dataset, split, standardize
from .checkpoint import read_checkpoint
from .errors import BackendUnavailableError, DataError, DeviceMemoryError, DivergenceError
from .interrupt import TrainingInterrupted
from .mlp import MLP
from .ops import ACTIVATIONS
from .optim import DEFAULT_LR, OPTIMIZERS
from .rows import HostRows
from .schedules import SCHEDULES
from .train import fit


DEFAULT_CHECKPOINT = "gpubp-checkpoint.npz"
# Options a resumed run takes from its checkpoint, with the name each has there.
_FROM_CHECKPOINT_CONFIG = {"optimizer": "optimizer", "lr": "lr", "momentum": "momentum",
                           "schedule": "schedule", "warmup_epochs": "warmup_epochs",
                           "batch_size": "batch_size", "val_fraction": "validation_fraction",
                           "patience": "patience", "seed": "seed", "clip_norm": "clip_norm"}
_FROM_CHECKPOINT_MODEL = ("hidden", "activation", "dtype", "alpha")
_FROM_CHECKPOINT_EXTRA = ("dataset", "test_fraction")


class _UsageError(Exception):
    """A bad command line; main() prints it as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{self.prog}: {message}")


def _hidden(text: str) -> list[int]:
    """'128' or '256,128' (or 'none' for no hidden layer) -> [widths]."""
    if text.strip().lower() in ("", "none"):
        return []
    try:
        widths = [int(part) for part in text.replace(" ", ",").split(",") if part]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 128 or 256,128, got {text!r}") from None
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be >= 1, got {text!r}")
    return widths


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpubp", description="Train multilayer perceptrons by backpropagation on CPU or GPU.")
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a network and report its test accuracy")
    train.add_argument("--dataset", default="digits",
                       help="digits (bundled with scikit-learn), an IDX folder, a folder with X.npy and y.npy "
                            "(memory-mapped, streamed), file.npz or file.csv")
    train.add_argument("--hidden", type=_hidden, default=[128], help="hidden widths, e.g. 256,128 (default 128)")
    train.add_argument("--activation", choices=ACTIVATIONS, default="relu")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    train.add_argument("--lr", type=_positive(float),
                       help="peak learning rate (default: " +
                            ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    train.add_argument("--momentum", type=float, default=0.9, help="for momentum and nesterov (default 0.9)")
    train.add_argument("--schedule", choices=SCHEDULES, default="constant")
    train.add_argument("--warmup-epochs", type=int, default=0)
    train.add_argument("--alpha", type=float, default=0.0, help="L2 penalty (default 0)")
    train.add_argument("--epochs", type=_positive(int), default=30)
    train.add_argument("--batch-size", type=_positive(int), default=32)
    train.add_argument("--val-fraction", type=_fraction, default=0.1,
                       help="share of the training part held out for validation (default 0.1)")
    train.add_argument("--patience", type=_positive(int),
                       help="stop after this many epochs without validation improvement")
    train.add_argument("--test-fraction", type=_fraction, default=0.2,
                       help="share held out for the test when the data set has no test part (default 0.2)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "numpy", "cupy", "gpu"))
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    train.add_argument("--tf32", action="store_true",
                       help="float32 products in TF32 (tensor cores on Ampere and newer GPUs; the same "
                            "rounding modelled on the CPU); needs --dtype float32")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--stream", action="store_true",
                       help="keep the training set on the host and stream batches to the device "
                            "(automatic when it does not fit, or is a folder of .npy files)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks an MPI launcher started (mpirun -n R gpubp train "
                            "--distributed ...): --batch-size is the global batch; rank 0 prints and writes")
    train.add_argument("--out", type=Path, help="save the trained model to this .npz file")
    train.add_argument("--plot", type=Path, help="write loss and accuracy curves to this PNG file")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    train.add_argument("--clip-norm", type=_positive(float), help="clip gradients to this global L2 norm")
    train.add_argument("--checkpoint", type=Path,
                       help=f"checkpoint file (default {DEFAULT_CHECKPOINT}, written only when interrupted)")
    train.add_argument("--checkpoint-every", type=_positive(int),
                       help="write the checkpoint every N epochs (default 1 with --checkpoint)")
    train.add_argument("--resume", type=Path,
                       help="continue the run saved in this checkpoint (data, model and settings come from it; "
                            "--epochs may raise the total)")

    sub.add_parser("info", help="versions, devices found, and whether CuPy/CUDA is usable")
    sub.add_parser("check", help="compare the GPU kernels and model with the CPU reference "
                                 "(exit 1 on a mismatch, 3 when no GPU is usable)")
    bench = sub.add_parser("bench", help="a quick CPU speed comparison with scikit-learn (and PyTorch if installed)")
    bench.add_argument("--pairs", type=_positive(int), default=3, help="paired runs per library (default 3)")
    bench.add_argument("--samples", type=_positive(int), default=4000, help="synthetic samples (default 4000)")
    return parser


def _apply_checkpoint(args) -> None:
    """Fill args from the checkpoint named by --resume; refuse options that would contradict it."""
    checkpoint = read_checkpoint(args.resume)
    defaults = vars(_parser().parse_args(["train"]))
    fixed = [*_FROM_CHECKPOINT_CONFIG, *_FROM_CHECKPOINT_MODEL, *_FROM_CHECKPOINT_EXTRA]
    given = [name for name in fixed if getattr(args, name) != defaults[name]]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise _UsageError(f"gpubp train: {option} cannot be changed when resuming: it comes from {args.resume}")
    meta = checkpoint.meta
    if not all(key in meta["extra"] for key in _FROM_CHECKPOINT_EXTRA):
        raise _UsageError(f"gpubp train: {args.resume} was not written by gpubp train; "
                          "resume it with gpubp.fit(..., resume=PATH)")
    for name, key in _FROM_CHECKPOINT_CONFIG.items():
        setattr(args, name, meta["config"][key])
    if "tf32" in meta["model"]:  # a checkpoint that records it; otherwise --tf32 is taken as given
        if args.tf32 != defaults["tf32"]:
            raise _UsageError(f"gpubp train: --tf32 cannot be changed when resuming: it comes from {args.resume}")
        args.tf32 = bool(meta["model"]["tf32"])
    args.hidden = meta["model"]["sizes"][1:-1]
    args.activation, args.dtype, args.alpha = (meta["model"][k] for k in ("activation", "dtype", "alpha"))
    for name in _FROM_CHECKPOINT_EXTRA:
        setattr(args, name, meta["extra"][name])
    if args.epochs == defaults["epochs"]:
        args.epochs = meta["config"]["epochs"]
    if args.checkpoint is None:
        args.checkpoint = args.resume


def _check_outputs(args) -> None:
    """Fail before training when an output cannot be written."""
    for option, path in (("--out", args.out), ("--plot", args.plot), ("--checkpoint", args.checkpoint)):
        if path is not None and not path.parent.is_dir():
            raise _UsageError(f"gpubp train: {option} {path}: folder {path.parent} does not exist")
    if args.plot is not None:
        from .plotting import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            raise _UsageError(f"gpubp train: --plot: {exc}") from None


def _train(args) -> int:
    """gpubp train, on one process or (--distributed) on every rank of an MPI job. A rank that
    fails alone (bad data on its node) ends the whole job with the error's exit status instead
    of leaving the others waiting; failures every rank meets together end each rank alike."""
    if not args.distributed:
        return _train_with(args, None)
    from .distributed import world

    comm = world(args.device)
    try:
        return _train_with(args, comm)
    except (TrainingInterrupted, DivergenceError):
        raise  # decided from all-reduced figures: every rank raises it at the same step
    except BaseException as exc:
        status = _report(exc) if comm.size > 1 else None
        if status is None:
            raise
        comm.abort(status)
        raise


def _train_with(args, comm) -> int:
    """The command's work; ``comm`` is the communicator of a --distributed run, else None."""
    lead = comm is None or comm.rank == 0  # the rank that prints and writes
    say = print if lead else (lambda *args, **kwargs: None)
    if args.resume is not None:
        _apply_checkpoint(args)
    if args.tf32 and args.dtype != "float32":
        raise _UsageError(f"gpubp train: --tf32 needs --dtype float32 (TF32 rounds float32 inputs), got {args.dtype}")
    _check_outputs(args)
    backend = get_backend(args.device)
    note = "" if backend.name == "cuda" or args.device != "auto" else f"  [no GPU: {cuda_status().reason}]"
    say(f"device: {backend.device}{note}", flush=True)
    if comm is not None:
        say(f"distributed: {comm.size} rank(s), {type(comm).__name__}; global batch {args.batch_size}", flush=True)

    train_set, test_set = load_dataset(args.dataset)
    if test_set is None:
        if args.test_fraction == 0:
            raise _UsageError("gpubp train: --test-fraction must be > 0 when the data set has no test part")
        train_set, test_set = split(train_set, args.test_fraction, seed=args.seed)
    scaler, (train_set, test_set) = standardize(train_set, test_set)
    mapped = " (memory-mapped: training batches are read from the file)" if isinstance(train_set.X, HostRows) \
        else ""
    say(f"data: {args.dataset}: {len(train_set)} train / {len(test_set)} test samples, "
          f"{train_set.X.shape[1]} features, {train_set.n_classes} classes{mapped}", flush=True)

    sizes = [train_set.X.shape[1], *args.hidden, train_set.n_classes]
    net = MLP(sizes, args.activation, backend, args.dtype, seed=args.seed, alpha=args.alpha, tf32=args.tf32)
    say(f"model: {'-'.join(map(str, sizes))} {args.activation}, {args.dtype}{' tf32' if args.tf32 else ''}, "
          f"{net.n_params:,} parameters; {args.optimizer}, {args.epochs} epochs of batch {args.batch_size}",
          flush=True)
    verbose = 0 if args.quiet or not lead else (2 if sys.stderr.isatty() else 1)
    dataset = args.dataset if args.dataset == "digits" else str(Path(args.dataset).resolve())
    checkpoint_every = args.checkpoint_every or (1 if args.checkpoint is not None else None)
    if args.resume is not None:
        say(f"resuming: {args.resume}", flush=True)
    history = fit(
        net, train_set.X, train_set.y, epochs=args.epochs, batch_size=args.batch_size,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, validation_fraction=args.val_fraction,
        patience=args.patience, seed=args.seed, clip_norm=args.clip_norm, verbose=verbose,
        checkpoint=str(args.checkpoint or DEFAULT_CHECKPOINT), checkpoint_every=checkpoint_every,
        resume=args.resume, stream=args.stream, checkpoint_extra={"dataset": dataset, "test_fraction": args.test_fraction},
        comm=comm,
    )
    if not lead:
        return 0
    test_loss, test_acc = net.evaluate(test_set.X, test_set.y)
    print(f"trained {history.epochs} epochs in {sum(history.seconds):.1f}s"
          + (f" on {history.ranks} ranks" if history.ranks > 1 else "")
          + (f" (stopped early, best epoch {history.best_epoch})" if history.stopped_early else ""))
    print(f"test loss: {test_loss:.4f}")
    print(f"test accuracy: {test_acc:.4f}")
    if args.out is not None:
        from .saving import save_model

        save_model(net, args.out, extra={"classes": train_set.classes, "input_mean": scaler.mean_,
                                         "input_scale": scaler.scale_})
        print(f"saved model: {args.out}")
    if args.plot is not None:
        from .plotting import plot_history

        plot_history(history, args.plot, title=f"{args.dataset}: {'-'.join(map(str, sizes))}")
        print(f"saved plot: {args.plot}")
    return 0


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
    from .distributed import describe

    print(describe())
    return 0


def _check() -> int:
    from . import kernels
    from .parity import format_table, kernel_checks, model_checks

    status = cuda_status()
    if not status.usable:
        print(f"no usable GPU: {status.reason}")
        print("nothing was compared")
        return 3
    gpu, cpu = get_backend("cuda"), get_backend("cpu")
    print(f"comparing {gpu.device} with {cpu.device}", flush=True)
    results = kernel_checks(gpu, kernels) + model_checks(cpu, gpu)
    print(format_table(results))
    failed = [r for r in results if not r.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def _bench(args) -> int:
    import numpy as np

    from . import bench

    missing = bench.extra_missing()
    if missing:
        raise _UsageError(missing)
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
        args = _parser().parse_args(argv)
        if args.command == "info":
            return _info()
        if args.command == "check":
            return _check()
        if args.command == "bench":
            return _bench(args)
        return _train(args)
    except BaseException as exc:
        status = _report(exc)
        if status is None:
            raise
        return status


def _report(exc: BaseException) -> int | None:
    """Print the one line an expected failure ends the command with; its exit status (None: not
    an expected failure, let it raise)."""
    if isinstance(exc, (_UsageError, DataError, BackendUnavailableError, ValueError)):
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if isinstance(exc, (DivergenceError, DeviceMemoryError)):
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if isinstance(exc, TrainingInterrupted):
        resume = f"; resume with: gpubp train --resume {exc.checkpoint}" if exc.checkpoint else ""
        print(f"{exc}{resume}", file=sys.stderr, flush=True)
        return exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return None


if __name__ == "__main__":
    sys.exit(main())
