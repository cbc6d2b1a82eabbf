"""``gpubp train``: resume from a checkpoint, check the outputs, load and split the data, train
with :func:`gpubp.fit` (on one process or every rank of an MPI job), report and save."""

from __future__ import annotations

import itertools
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .atomic_file import unwritable
from .backend import cuda_status, get_backend
from .checkpoint import read_checkpoint
from .cli_parser import DEFAULT_CHECKPOINT, UsageError, WriteError, report
from .data import fitted_scaler, load_dataset, split, standardize
from .errors import DivergenceError
from .interrupt import TrainingInterrupted
from .mlp import MLP
from .rows import HostRows
from .train import fit
from .train_data import HoldOutError

# Options a resumed run takes from its checkpoint, with the name each has there (--hidden: the
# model's inner sizes; --tf32: the model's, where the checkpoint records it).
_FROM_CHECKPOINT_CONFIG = {"optimizer": "optimizer", "lr": "lr", "momentum": "momentum",
                           "schedule": "schedule", "warmup_epochs": "warmup_epochs",
                           "batch_size": "batch_size", "val_fraction": "validation_fraction",
                           "patience": "patience", "seed": "seed", "clip_norm": "clip_norm"}
_FROM_CHECKPOINT_MODEL = ("activation", "dtype", "alpha")
_FROM_CHECKPOINT_EXTRA = ("dataset", "test_fraction")


def _data_set_id(spec: str) -> str:
    """How a checkpoint names the data set ``spec``: digits, else the file's or folder's absolute path."""
    return spec if spec == "digits" else str(Path(spec).resolve())


def _as_option(option: str, value) -> str:
    """``value`` as the command line gives it: "--hidden 256,128", "--tf32", "no --patience"."""
    if value is None or value is False:
        return f"no {option}"
    if value is True:
        return option
    return f"{option} {','.join(map(str, value)) if isinstance(value, list) else value}"


def _apply_checkpoint(args) -> None:
    """Fill args from the checkpoint named by --resume; refuse an option given on the command line
    with another value than the checkpoint's (given with the same value, it is accepted)."""
    meta = read_checkpoint(args.resume).meta
    if not all(key in meta["extra"] for key in _FROM_CHECKPOINT_EXTRA):
        raise UsageError(f"gpubp train: {args.resume} was not written by gpubp train; "
                          "resume it with gpubp.fit(..., resume=PATH)")
    held = {name: meta["config"][key] for name, key in _FROM_CHECKPOINT_CONFIG.items()}
    held.update({name: meta["model"][name] for name in _FROM_CHECKPOINT_MODEL}, hidden=meta["model"]["sizes"][1:-1])
    held.update({name: meta["extra"][name] for name in _FROM_CHECKPOINT_EXTRA})
    if "tf32" in meta["model"]:  # a checkpoint that records it; otherwise --tf32 is taken as given
        held["tf32"] = bool(meta["model"]["tf32"])
    for name, value in held.items():
        given = getattr(args, name)
        if name in args.given and (_data_set_id(given) if name == "dataset" else given) != value:
            option = "--" + name.replace("_", "-")
            raise UsageError(f"gpubp train: {option} cannot be changed when resuming: {args.resume} holds "
                             f"{_as_option(option, value)}, given {_as_option(option, given)}")
        setattr(args, name, value)
    if "input_mean" in meta["extra"]:  # the run's own standardization: its data and fingerprint again
        args.scaler = fitted_scaler(meta["extra"]["input_mean"], meta["extra"]["input_scale"])
    if "epochs" not in args.given:
        args.epochs = meta["config"]["epochs"]
    if args.checkpoint is None:
        args.checkpoint = args.resume


def _check_outputs(args) -> None:
    """Fail before training when an output cannot be written, or would replace another output or
    a file the run reads (--dataset, --resume; a resumed run writes its checkpoint where it read it)."""
    outputs = [(option, Path(path)) for option, path in (
        ("--out", args.out), ("--plot", args.plot),
        ("--checkpoint", args.checkpoint if "checkpoint" in args.given else None)) if path is not None]
    inputs = [(option, Path(path)) for option, path in (
        ("--dataset", None if args.dataset == "digits" else args.dataset), ("--resume", args.resume))
        if path is not None]
    for i, (option, path) in enumerate(outputs):
        _check_writable(option, path)
        for other, other_path in outputs[:i]:
            _check_distinct(other, other_path, option, path)
    for option, path in outputs:
        for other, other_path in inputs:
            if (option, other) != ("--checkpoint", "--resume"):
                _check_distinct(option, path, other, other_path)
    if args.plot is not None:
        from .plotting import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as exc:
            raise UsageError(f"gpubp train: --plot: {exc}") from None


def _check_writable(option: str, path: Path) -> None:
    """Refuse a path no file can be written at (gpubp.atomic_file.unwritable: a folder there, its
    folder missing or a file, or a folder that takes no new file)."""
    problem = unwritable(path)
    if problem is not None:
        raise UsageError(f"gpubp train: {option} {path}: {problem}")


def _check_distinct(option: str, path: Path, other: str, other_path: Path) -> None:
    """Refuse two options that name one file (compared as absolute paths, links followed)."""
    if path.resolve() == other_path.resolve():
        raise UsageError(f"gpubp train: {option} and {other} name the same file ({path}): give each its own path")


def _interruption_checkpoint() -> Path:
    """Where a run without --checkpoint writes the checkpoint an interruption leaves:
    gpubp-checkpoint.npz in the current folder, or the first free gpubp-checkpoint-N.npz
    (N = 2, 3, ...) when that name is taken, an earlier interrupted run's checkpoint not replaced."""
    default = Path(DEFAULT_CHECKPOINT)
    names = itertools.chain([default], (default.with_stem(f"{default.stem}-{n}") for n in itertools.count(2)))
    return next(path for path in names if not os.path.lexists(path))


@contextmanager
def _writing(what: str, path):
    """An OSError in the block (a full disk, a folder removed) as a WriteError naming ``what``,
    ``path`` and the OS's reason; one that names another file (the data, read) says that file."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename).resolve() != Path(path).resolve():
            raise WriteError(f"gpubp train: {exc.filename}: {exc.strerror or exc}") from None
        raise WriteError(f"gpubp train: cannot write {what} to {path}: {exc.strerror or exc}") from None


def train(args) -> int:
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
        status = report(exc) if comm.size > 1 else None
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
        raise UsageError(f"gpubp train: --tf32 needs --dtype float32 (TF32 rounds float32 inputs), got {args.dtype}")
    _check_outputs(args)
    backend = get_backend(args.device)
    note = "" if backend.name == "cuda" or args.device != "auto" else f"  [no GPU: {cuda_status().reason}]"
    say(f"device: {backend.device}{note}", flush=True)
    if comm is not None:
        say(f"distributed: {comm.size} rank(s), {type(comm).__name__}; global batch {args.batch_size}", flush=True)

    train_set, test_set = load_dataset(args.dataset, (0, 1) if comm is None else (comm.rank, comm.size))
    split_here = test_set is None  # then the training set is what --test-fraction leaves
    if split_here:
        if args.test_fraction == 0:
            raise UsageError("gpubp train: --test-fraction must be > 0 when the data set has no test part")
        train_set, test_set = split(train_set, args.test_fraction, seed=args.seed)
    scaler, (train_set, test_set) = standardize(train_set, test_set, comm=comm, scaler=vars(args).get("scaler"))
    mapped = " (memory-mapped: training and test batches are read from the file)" if isinstance(train_set.X, HostRows) \
        else ""
    say(f"data: {args.dataset}: {len(train_set)} train / {len(test_set)} test samples, "
          f"{train_set.X.shape[1]} features, {train_set.n_classes} classes{mapped}", flush=True)

    sizes = [train_set.X.shape[1], *args.hidden, train_set.n_classes]
    net = MLP(sizes, args.activation, backend, args.dtype, seed=args.seed, alpha=args.alpha, tf32=args.tf32)
    say(f"model: {'-'.join(map(str, sizes))} {args.activation}, {args.dtype}{' tf32' if args.tf32 else ''}, "
          f"{net.n_params:,} parameters; {args.optimizer}, {args.epochs} epochs of batch {args.batch_size}",
          flush=True)
    verbose = 0 if args.quiet or not lead else (2 if sys.stderr.isatty() else 1)
    checkpoint_every = args.checkpoint_every or (1 if args.checkpoint is not None else None)
    if args.resume is not None:
        say(f"resuming: {args.resume}", flush=True)
    checkpoint = args.checkpoint or _interruption_checkpoint()
    with _held_out_in_options_words(args, split_here), _writing("the checkpoint", checkpoint):
        history = fit(
            net, train_set.X, train_set.y, epochs=args.epochs, batch_size=args.batch_size,
            optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, schedule=args.schedule,
            warmup_epochs=args.warmup_epochs, validation_fraction=args.val_fraction,
            patience=args.patience, seed=args.seed, clip_norm=args.clip_norm, verbose=verbose,
            checkpoint=str(checkpoint), checkpoint_every=checkpoint_every,
            resume=args.resume, stream=args.stream, cuda_graph=args.cuda_graph,
            checkpoint_extra={"dataset": _data_set_id(args.dataset), "test_fraction": args.test_fraction,
                              "input_mean": scaler.mean_.tolist(), "input_scale": scaler.scale_.tolist()},
            comm=comm,
        )
    if lead:
        _report_run(args, net, history, test_set, scaler, train_set.classes)
    return 0


@contextmanager
def _held_out_in_options_words(args, split_here: bool):
    """fit's refusal to hold out validation_fraction, said with the options the user set."""
    try:
        yield
    except HoldOutError as exc:
        left = f" that --test-fraction {args.test_fraction} leaves" if split_here else ""
        raise UsageError(f"gpubp train: cannot hold out --val-fraction {args.val_fraction} of the {exc.n} training "
                         f"samples{left}: {exc.detail}; choose another "
                         + ("--test-fraction or " if split_here else "") + "--val-fraction, or set --val-fraction 0"
                         ) from None


def _report_run(args, net, history, test_set, scaler, classes) -> None:
    """Rank 0's end of the command: the test figures, and the model and plot when asked."""
    test_loss, test_acc = net.evaluate(test_set.X, test_set.y)
    print(f"trained {history.epochs} epochs in {sum(history.seconds):.1f}s"
          + (f" on {history.ranks} ranks" if history.ranks > 1 else "")
          + (f" (stopped early, best epoch {history.best_epoch})" if history.stopped_early else ""))
    print(f"test loss: {test_loss:.4f}")
    print(f"test accuracy: {test_acc:.4f}")
    if args.out is not None:
        from .saving import save_model

        with _writing("the model", args.out):
            save_model(net, args.out, extra={"classes": classes, "input_mean": scaler.mean_,
                                             "input_scale": scaler.scale_})
        print(f"saved model: {args.out}")
    if args.plot is not None:
        from .plotting import plot_history

        with _writing("the plot", args.plot):
            plot_history(history, args.plot, title=f"{args.dataset}: {'-'.join(map(str, net.sizes))}")
        print(f"saved plot: {args.plot}")
