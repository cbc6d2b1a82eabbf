"""The ``gpubp`` command's arguments, and the one line a failure ends it with.

Every option that stands for a gpubp setting takes its type from the setting's row of
gpubp.params.SETTINGS (:class:`SettingType`), so ``gpubp train --lr -1`` ends with the sentence
``gpubp.fit(..., lr=-1)`` raises: ``error: gpubp train: argument --lr: lr must be a float in the
range (0.0, inf), got -1``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from .errors import BackendUnavailableError, DataError, DeviceMemoryError, DivergenceError, RankFailedError
from .interrupt import TrainingInterrupted
from .optim import DEFAULT_LR
from .params import SETTINGS, ParameterError, check, from_text
from .version import __version__

DEFAULT_CHECKPOINT = "gpubp-checkpoint.npz"
_NOT_GIVEN = object()  # an option's value while the command line has not set it


class UsageError(Exception):
    """A bad command line; :func:`report` prints it as one line and the command exits 2."""


class WriteError(Exception):
    """A file the command could not write, with the OS's reason (a full disk, say); :func:`report`
    prints it as one line and the command exits 1."""


def output_path(text: str) -> Path:
    """argparse ``type`` of a file the command writes: any path but the empty one (which Path
    reads as the current folder)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: name a file")
    return Path(text)


class _Parser(argparse.ArgumentParser):
    """A parser that raises UsageError and keeps ``settings``, {setting: option} for its options
    typed by a gpubp setting (and the top one ``commands``, {name: subparser}). The namespace it
    returns holds ``given``, the names of the options the command line set: an option given with
    its default value is in it, one left at its default is not."""

    def __init__(self, *args, **kwargs):
        self.options: list[argparse.Action] = []  # first: argparse's __init__ adds -h by add_argument
        super().__init__(*args, **kwargs)
        self.settings: dict[str, str] = {}
        self.commands: dict[str, _Parser] = {}

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        if isinstance(action.type, SettingType):
            self.settings[action.type.setting] = action.option_strings[0]
        if argparse.SUPPRESS not in (action.dest, action.default):  # not -h, --version: no value
            self.options.append(action)
        return action

    def parse_known_args(self, args=None, namespace=None):
        # argparse leaves an attribute the namespace already has as it is instead of setting the
        # default: what still holds _NOT_GIVEN after parsing was not on the command line
        namespace = argparse.Namespace() if namespace is None else namespace
        unset = [action for action in self.options if not hasattr(namespace, action.dest)]
        for action in unset:
            setattr(namespace, action.dest, _NOT_GIVEN)
        namespace, extras = super().parse_known_args(args, namespace)
        given = set(getattr(namespace, "given", ()))  # a subcommand's, copied onto its command's namespace
        for action in unset:
            if getattr(namespace, action.dest) is not _NOT_GIVEN:
                given.add(action.dest)
            elif isinstance(action.default, str) and action.type is not None:  # as argparse does
                setattr(namespace, action.dest, action.type(action.default))
            else:
                setattr(namespace, action.dest, action.default)
        namespace.given = frozenset(given)
        return namespace, extras

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


class SettingType:
    """argparse ``type`` for the gpubp setting ``setting``: the text read by gpubp.params.from_text,
    then checked by gpubp.params.check (its message, word for word, when the value is refused)."""

    def __init__(self, setting: str):
        self.setting = setting
        self.__name__ = setting  # argparse names a type by it

    def __call__(self, text: str):
        try:
            return check(self.setting, from_text(self.setting, text))
        except ParameterError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None


def _add(parser, option: str, setting: str, help: str | None = None, **kwargs) -> None:
    """An option typed by a setting of gpubp.params; its help is the table's description unless
    given, its metavar the choices when the setting is a set of names."""
    choices = getattr(SETTINGS[setting].constraints[0], "values", None)
    if choices is not None and "metavar" not in kwargs:
        kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
    default = kwargs.get("default")
    help = help or SETTINGS[setting].description + ("" if default is None else " (default %(default)s)")
    parser.add_argument(option, type=SettingType(setting), help=help, **kwargs)


def build_parser() -> _Parser:
    """The parser of ``gpubp train|info|check|bench``."""
    parser = _Parser(prog="gpubp", description="Train multilayer perceptrons by backpropagation on CPU or GPU.")
    parser.add_argument("--version", action="version", version=f"gpubp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a network and report its test accuracy")
    train.add_argument("--dataset", default="digits",
                       help="digits (bundled with scikit-learn), an IDX folder, a folder with X.npy and y.npy "
                            "(memory-mapped, streamed), file.npz or file.csv")
    _add(train, "--hidden", "hidden", default=[128], help="hidden widths, e.g. 256,128 (default 128)")
    _add(train, "--activation", "activation", default="relu")
    _add(train, "--optimizer", "optimizer", default="adam", help="update rule (default adam)")
    _add(train, "--lr", "lr", help="peak learning rate (default: " +
                                   ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    _add(train, "--momentum", "momentum", default=0.9, help="for momentum and nesterov (default 0.9)")
    _add(train, "--schedule", "schedule", default="constant")
    _add(train, "--warmup-epochs", "warmup_epochs", default=0)
    _add(train, "--alpha", "alpha", default=0.0, help="L2 penalty (default 0)")
    _add(train, "--epochs", "epochs", default=30)
    _add(train, "--batch-size", "batch_size", default=32)
    _add(train, "--val-fraction", "validation_fraction", default=0.1,
         help="share of the training part held out for validation (default 0.1)")
    _add(train, "--patience", "patience", help="stop after this many epochs without validation improvement")
    _add(train, "--test-fraction", "test_fraction", default=0.2,
         help="share held out for the test when the data set has no test part (default 0.2)")
    train.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "numpy", "cupy", "gpu"))
    _add(train, "--dtype", "dtype", default="float32", metavar="{float32,float64,bfloat16}")
    train.add_argument("--tf32", action="store_true",
                       help="float32 products in TF32 (tensor cores on Ampere and newer GPUs; the same "
                            "rounding modelled on the CPU); needs --dtype float32")
    _add(train, "--seed", "seed", default=0)
    train.add_argument("--stream", action="store_true",
                       help="keep the training set on the host and stream batches to the device "
                            "(automatic when it does not fit, or is a folder of .npy files)")
    train.add_argument("--cuda-graph", action="store_true",
                       help="replay each step's forward and backward pass from a CUDA graph (cuda device, "
                            "float32/float64, one process): far fewer launches on small networks")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel over the ranks an MPI launcher started (mpirun -n R gpubp train "
                            "--distributed ...): --batch-size is the global batch; rank 0 prints and writes")
    train.add_argument("--out", type=output_path, help="save the trained model to this .npz file")
    train.add_argument("--plot", type=output_path, help="write loss and accuracy curves to this PNG file")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _add(train, "--clip-norm", "clip_norm", help="clip gradients to this global L2 norm")
    _add(train, "--checkpoint", "checkpoint",
         help=f"checkpoint file (default {DEFAULT_CHECKPOINT} or, where taken, the first free -2, -3...; on interrupt)")
    _add(train, "--checkpoint-every", "checkpoint_every",
         help="write the checkpoint every N epochs (default 1 with --checkpoint)")
    train.add_argument("--resume", type=Path,
                       help="continue the run saved in this checkpoint (data, model and settings come from it; "
                            "--epochs may raise the total)")

    sub.add_parser("info", help="versions, devices found, and whether CuPy/CUDA is usable")
    sub.add_parser("check", help="compare the GPU kernels and model with the CPU reference "
                                 "(exit 1 on a mismatch, 3 when no GPU is usable)")
    bench = sub.add_parser("bench", help="a quick CPU speed comparison with scikit-learn (and PyTorch if installed)")
    _add(bench, "--pairs", "pairs", default=3, help="paired runs per library (default 3)")
    _add(bench, "--samples", "samples", default=4000, help="synthetic samples (default 4000)")
    parser.commands = dict(sub.choices)
    return parser


def report(exc: BaseException) -> int | None:
    """Print the one line an expected failure ends the command with; its exit status (None: not
    an expected failure, let it raise)."""
    if isinstance(exc, (UsageError, DataError, BackendUnavailableError, ValueError, RankFailedError)):
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if isinstance(exc, (DivergenceError, DeviceMemoryError, WriteError)):
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if isinstance(exc, TrainingInterrupted):
        resume = f"; resume with: gpubp train --resume {shlex.quote(str(exc.checkpoint))}" if exc.checkpoint else ""
        print(f"{exc}{resume}", file=sys.stderr, flush=True)
        return exc.exit_status
    if isinstance(exc, KeyboardInterrupt):
        print("interrupted", file=sys.stderr, flush=True)
        return 130
    return None
