"""Mini-batch training: shuffling, validation, early stopping, callbacks, progress and history.

``fit(net, X, y, ...)`` checks its settings once (:class:`TrainConfig`) and hands them to a
:class:`Trainer`. The training set is moved to the device once when it fits (else batches are
sent from the host); each epoch draws a permutation from a seeded host generator, and batches are
gathered by index on the device. Arrays stay in the network's dtype throughout.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from .errors import DivergenceError
from .mlp import MLP
from .optim import DEFAULT_LR, OPTIMIZERS, SGD, Adam, check_lr, make_optimizer
from .schedules import SCHEDULES, Schedule
from .validation import check_positive_int, check_X, check_y

Callback = Callable[[int, dict], "bool | None"]


@dataclass
class TrainConfig:
    """Training settings, checked once on creation (see :func:`fit` for their meaning)."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str | SGD | Adam = "adam"
    lr: float | None = None
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_epochs: int = 0
    validation_fraction: float = 0.0
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    shuffle: bool = True
    seed: int | None = None
    verbose: int = 0

    def __post_init__(self):
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        if isinstance(self.optimizer, str):
            if self.optimizer not in OPTIMIZERS:
                raise ValueError(
                    f"unknown optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"
                )
        elif not isinstance(self.optimizer, (SGD, Adam)):
            raise ValueError(f"optimizer must be a name or an SGD/Adam instance, got {self.optimizer!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer_name]
        self.lr = check_lr(self.lr)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        check_positive_int(self.warmup_epochs, "warmup_epochs", minimum=0)
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        vf = self.validation_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {vf!r}")
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        if not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {self.min_delta!r}")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {self.verbose!r}")

    @property
    def optimizer_name(self) -> str:
        if isinstance(self.optimizer, str):
            return self.optimizer
        if isinstance(self.optimizer, Adam):
            return "adam"
        if self.optimizer.nesterov:
            return "nesterov"
        return "momentum" if self.optimizer.momentum else "sgd"


@dataclass
class History:
    """Per-epoch record of a run. Lists have one entry per completed epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    device: str = ""

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict:
        return asdict(self)


def fit(net: MLP, X, y, *, validation_data=None, callbacks: tuple[Callback, ...] = (), **settings) -> History:
    """Train ``net`` in place by mini-batch gradient descent and return its history.

    Parameters
    ----------
    net : MLP
    X : array (n, sizes[0])
        Training inputs (host or device arrays).
    y : integer array (n,)
        Class indices in 0..sizes[-1]-1.
    validation_data : (X_val, y_val), optional
        Held-out set scored after every epoch; overrides ``validation_fraction``.
    callbacks : sequence of callables ``cb(epoch, logs) -> bool | None``
        Called after every epoch with ``logs`` holding that epoch's ``train_loss``, ``val_loss``,
        ``val_accuracy``, ``lr`` and ``seconds``; returning True stops training.
    epochs : int, default 20
    batch_size : int, default 64
        The last batch of an epoch may be smaller.
    optimizer : {"adam", "sgd", "momentum", "nesterov"} or SGD or Adam instance, default "adam"
    lr : float, optional
        Peak learning rate; defaults to 1e-3 for Adam, 0.1 for plain SGD, 0.05 with momentum.
    momentum : float, default 0.9
        For "momentum" and "nesterov" given by name.
    schedule : {"constant", "cosine"}, default "constant"
        Cosine decays from ``lr`` to 0 over the run.
    warmup_epochs : int, default 0
        Epochs of linear learning-rate warm-up (either schedule).
    validation_fraction : float in [0, 1), default 0
        Share of (X, y) held out, stratified by class, when ``validation_data`` is not given.
    patience : int, optional
        Early stopping: stop after this many epochs without an improvement of more than
        ``min_delta`` in validation loss (training loss when there is no validation set).
    min_delta : float, default 0
    restore_best : bool, default True
        With early stopping, put back the parameters of the best epoch at the end.
    shuffle : bool, default True
    seed : int, optional
        Seeds the shuffling and the validation split.
    verbose : {0, 1, 2}, default 0
        1 prints a line per epoch, 2 adds a progress bar over each epoch's batches.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        For bad settings or data (the message names which).
    DivergenceError
        When the training loss becomes NaN or infinite.
    """
    config = TrainConfig(**settings)
    return Trainer(net, config, callbacks).run(X, y, validation_data)


class Trainer:
    """Runs the epochs of one :class:`TrainConfig` on one network."""

    def __init__(self, net: MLP, config: TrainConfig, callbacks: tuple[Callback, ...] = ()):
        if not isinstance(net, MLP):
            raise ValueError(f"net must be a gpubp.MLP, got {type(net).__name__}")
        for cb in callbacks:
            if not callable(cb):
                raise ValueError(f"callbacks must be callables cb(epoch, logs), got {cb!r}")
        self.net = net
        self.config = config
        self.callbacks = tuple(callbacks)
        self.optimizer = (
            make_optimizer(config.optimizer, config.momentum)
            if isinstance(config.optimizer, str)
            else config.optimizer
        )
        self.rng = np.random.default_rng(config.seed)

    def _split(self, X, y, validation_data):
        """Training and validation arrays on the host, checked; validation may be None."""
        net = self.net
        X = check_X(X, net.sizes[0])
        y = check_y(y, X.shape[0], net.n_classes)
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            Xv = check_X(validation_data[0], net.sizes[0], name="X_val")
            yv = check_y(validation_data[1], Xv.shape[0], net.n_classes, name="y_val")
            return X, y, (Xv, yv)
        if self.config.validation_fraction == 0:
            return X, y, None
        counts = np.bincount(y)
        if counts[counts > 0].min() < 2:
            raise ValueError(
                "validation_fraction needs at least 2 samples of every class for a stratified "
                f"split; class counts are {counts.tolist()}"
            )
        try:
            X, Xv, y, yv = train_test_split(
                X, y, test_size=self.config.validation_fraction, stratify=y,
                random_state=int(self.rng.integers(2**31)),
            )
        except ValueError as exc:
            raise ValueError(f"cannot hold out validation_fraction={self.config.validation_fraction}: {exc}") from None
        return X, y, (Xv, yv)

    def run(self, X, y, validation_data=None) -> History:
        """Train for the configured epochs (or until stopped) and return the history."""
        net, cfg, backend = self.net, self.config, self.net.backend
        X, y, validation = self._split(X, y, validation_data)
        X = np.ascontiguousarray(X, dtype=net.dtype)
        n = X.shape[0]
        on_device = backend.fits(X.nbytes)
        if on_device:
            X, y = backend.asarray(X), backend.asarray(y)
        if validation is not None and backend.fits(validation[0].nbytes):
            validation = (backend.asarray(validation[0], net.dtype), backend.asarray(validation[1]))
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        schedule = Schedule(cfg.lr, cfg.epochs * steps_per_epoch, cfg.schedule,
                            cfg.warmup_epochs * steps_per_epoch)
        history = History(device=backend.device)
        best_score, best_params, waited, step = math.inf, None, 0, 0

        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            order = self.rng.permutation(n) if cfg.shuffle else np.arange(n)
            if on_device:
                order = backend.asarray(order)
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", leave=False,
                       disable=cfg.verbose < 2)
            loss_sum = 0.0
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                Xb, yb = backend.asarray(X[idx]), backend.asarray(y[idx])
                loss, dW, db = net._loss_and_grads(Xb, yb)
                lr = schedule(step)
                self.optimizer.step(net.params, dW + db, lr)
                loss_sum = loss_sum + loss * yb.shape[0]
                step += 1
                bar.update()
            bar.close()
            train_loss = float(loss_sum) / n
            if not math.isfinite(train_loss):
                raise DivergenceError(
                    f"training diverged in epoch {epoch}: the mean training loss is {train_loss}; "
                    f"try a lower learning rate than {cfg.lr:g}"
                )
            logs = {"train_loss": train_loss, "val_loss": None, "val_accuracy": None, "lr": lr}
            if validation is not None:
                logs["val_loss"], logs["val_accuracy"] = net._evaluate(*validation, batch_size=4096)
            logs["seconds"] = time.perf_counter() - t0
            self._record(history, logs)
            if cfg.verbose:
                tqdm.write(_epoch_line(epoch, cfg.epochs, logs))

            monitored = logs["val_loss"] if validation is not None else train_loss
            if monitored < best_score - cfg.min_delta:
                best_score, waited, history.best_epoch = monitored, 0, epoch
                if cfg.patience is not None and cfg.restore_best:
                    best_params = net.get_params()
            else:
                waited += 1
            stop = any([bool(cb(epoch, dict(logs))) for cb in self.callbacks])  # call every one
            if cfg.patience is not None and waited >= cfg.patience:
                history.stopped_early = stop = True
            if stop:
                break
        if best_params is not None and history.best_epoch != history.epochs:
            net.set_params(best_params)
        return history

    @staticmethod
    def _record(history: History, logs: dict) -> None:
        history.train_loss.append(logs["train_loss"])
        history.lr.append(logs["lr"])
        history.seconds.append(logs["seconds"])
        if logs["val_loss"] is not None:
            history.val_loss.append(logs["val_loss"])
            history.val_accuracy.append(logs["val_accuracy"])


def _epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    """'epoch  3/20  train_loss 0.1234  val_loss 0.1500  val_acc 0.9583  lr 1.0e-03  0.05s'."""
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}", f"train_loss {logs['train_loss']:.4f}"]
    if logs["val_loss"] is not None:
        parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_accuracy']:.4f}"]
    parts += [f"lr {logs['lr']:.1e}", f"{logs['seconds']:.3f}s"]
    return "  ".join(parts)
