"""Mini-batch training: shuffling, validation, early stopping, callbacks, progress, history,
checkpoints, resuming, and stopping cleanly on a signal, divergence or lack of memory.

``fit(net, X, y, ...)`` checks its settings once (:class:`TrainConfig`) and hands them to a
:class:`Trainer`. The training set is moved to the device once when it fits and batches are
gathered by index there; otherwise (or with ``stream=True``, or for a memory-mapped X) batches
are gathered on the host and streamed (:mod:`gpubp.batches`). Each epoch draws a permutation from
a seeded host generator. Arrays stay in the network's dtype throughout.

Everything that decides what the next step computes -- parameters, optimizer state, step count,
the shuffling generator's state and the current epoch's row order -- is in the checkpoint, so a
resumed run ends with exactly the parameters of an uninterrupted one (bitwise, on the CPU).

Data parallel (``comm`` with more than one rank, :mod:`gpubp.distributed`): every rank holds the
whole data set, the same parameters (rank 0's, broadcast at the start) and the same shuffling
generator (rank 0's), so the same global order each epoch. ``batch_size`` is the global batch;
rank r trains its contiguous share of it (:func:`gpubp.batches.share`). A rank's mean gradient
over its b_r rows is scaled by b_r / B and the flat gradients are summed by one
``comm.allreduce_sum`` per step, which gives the global batch's mean gradient; the L2 term is
left out of the ranks' gradients and added once, after the sum, with n = B. The steps' losses are
summed over the ranks once per epoch. Validation is split over the ranks and its sums reduced;
stopping (early stopping, divergence, callbacks, a signal on any rank) is decided from reduced
figures, so every rank stops at the same step. Only rank 0 prints and writes checkpoints, and a
checkpoint holds only the global run state: it resumes under any number of ranks.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn.model_selection import train_test_split
from tqdm.auto import tqdm

from .version import __version__
from .backend import is_out_of_memory, to_numpy
from .batches import batch_feed, share
from .communicator import Communicator, SingleProcess, reduce_in_rank_order
from .config import TrainConfig
from .checkpoint import Checkpoint, data_fingerprint, read_checkpoint, write_checkpoint
from .errors import DeviceMemoryError, DivergenceError
from .interrupt import TrainingInterrupted, catch_stop_signals
from .mlp import MLP
from .rows import HostRows, check_rows, fingerprint
from .rows import train_test_split as split_rows
from .optim import clip_by_global_norm, make_optimizer, optimizer_from_state
from .schedules import Schedule
from .validation import check_X, check_y

Callback = Callable[[int, dict], "bool | None"]
# Settings a resumed run may change; all others must equal the checkpoint's.
_CHANGEABLE_ON_RESUME = ("epochs", "verbose", "checkpoint", "checkpoint_every", "stream")


def model_block(net: MLP) -> dict:
    """The network's settings as a checkpoint records them (and a resume must match)."""
    return {"sizes": net.sizes, "activation": net.activation, "dtype": net.dtype.name, "alpha": net.alpha,
            "tf32": net.tf32}


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
    ranks: int = 1  # processes that trained it together (data-parallel), in the latest run

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunState:
    """Where a run stands; with the parameters and optimizer state, all a checkpoint needs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    position: int = 0  # rows of the current epoch already trained (0 between epochs)
    loss_sum: float = 0.0  # their summed loss
    epoch_seconds: float = 0.0  # time spent in the current epoch before a stop
    rng_state: dict | None = None  # shuffling generator, after drawing the current order
    split_seed: int = 0  # seed of the validation split
    best_score: float = math.inf
    waited: int = 0  # epochs without improvement
    order: np.ndarray | None = None  # current epoch's row order (host), None between epochs
    best_params: list | None = None  # best epoch's parameters (device), for restore_best

    SCALARS = ("epoch", "step", "position", "loss_sum", "epoch_seconds", "rng_state", "split_seed",
               "best_score", "waited")


def fit(net: MLP, X, y, *, validation_data=None, callbacks: tuple[Callback, ...] = (), resume=None,
        checkpoint_extra: dict | None = None, comm: Communicator | None = None, **settings) -> History:
    """Train ``net`` in place by mini-batch gradient descent and return its history.

    Parameters
    ----------
    net : MLP
    X : array (n, sizes[0]), numpy.memmap or gpubp.rows.HostRows
        Training inputs (host or device arrays). A memory-mapped array (``np.load(path,
        mmap_mode="r")``) or HostRows is never read whole: it is checked chunk by chunk and
        batches are read from it as they are needed (streamed, as with ``stream=True``).
    y : integer array (n,)
        Class indices in 0..sizes[-1]-1.
    validation_data : (X_val, y_val), optional
        Held-out set scored after every epoch; overrides ``validation_fraction``.
    callbacks : sequence of callables ``cb(epoch, logs) -> bool | None``
        Called after every epoch with ``logs`` holding that epoch's ``train_loss``, ``val_loss``,
        ``val_accuracy``, ``lr`` and ``seconds``; returning True stops training.
    resume : path, optional
        A checkpoint to continue from. The network, data and settings must be the ones it was
        written with (``epochs``, ``verbose`` and the checkpoint settings may change); the
        parameters, optimizer state and history continue from it.
    checkpoint_extra : dict, optional
        JSON-able values stored in each checkpoint's ``meta["extra"]``.
    comm : gpubp.distributed.Communicator, optional
        Train data-parallel over its ranks (``gpubp.distributed.world()`` under ``mpirun``):
        every rank calls ``fit`` with the same network, data and settings; ``batch_size`` is the
        global batch, split over the ranks; the result equals one process's up to rounding, and
        every rank ends with the same parameters. Only rank 0 prints and writes checkpoints.
        None (or a one-rank communicator) trains in this process alone.
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
    clip_norm : float, optional
        Scale the gradients so that their global L2 norm is at most this.
    checkpoint : path, optional
        Checkpoint file, written when training is interrupted by SIGINT/SIGTERM and, with
        ``checkpoint_every``, every that many epochs and after the last one.
    checkpoint_every : int, optional
    verbose : {0, 1, 2}, default 0
        1 prints a line per epoch, 2 adds a progress bar over each epoch's batches.
    stream : bool, default False
        Keep the training set on the host and stream batches to the device (gathered into pinned
        buffers, copied on a side stream while the previous step computes), as is done anyway
        when it does not fit in half the free device memory. The results are bitwise the same.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        For bad settings or data, or a checkpoint that does not match (the message says which).
    gpubp.DataError
        For an unreadable, corrupted or foreign checkpoint.
    DivergenceError
        When a training loss or a parameter becomes NaN or infinite (names the epoch and step).
    DeviceMemoryError
        When a step does not fit in memory (suggests a batch size that would).
    TrainingInterrupted
        On SIGINT or SIGTERM, after the current step and the checkpoint.
    """
    config = TrainConfig(**settings)
    trainer = Trainer(net, config, callbacks, checkpoint_extra, comm)
    return trainer.run(X, y, validation_data, resume)


class Trainer:
    """Runs the epochs of one :class:`TrainConfig` on one network."""

    def __init__(self, net: MLP, config: TrainConfig, callbacks: tuple[Callback, ...] = (),
                 checkpoint_extra: dict | None = None, comm: Communicator | None = None):
        if not isinstance(net, MLP):
            raise ValueError(f"net must be a gpubp.MLP, got {type(net).__name__}")
        if net.output != "softmax":
            raise ValueError(f"fit trains softmax classifiers; a network with a {net.output!r} output "
                             "is trained by gpubp.MLPClassifier or gpubp.MLPRegressor")
        for cb in callbacks:
            if not callable(cb):
                raise ValueError(f"callbacks must be callables cb(epoch, logs), got {cb!r}")
        if comm is not None and not isinstance(comm, Communicator):
            raise ValueError(f"comm must be a gpubp.distributed communicator, got {comm!r}")
        self.comm = comm if comm is not None else SingleProcess()
        self.parallel = self.comm.size > 1  # False: the one-process loop, no collective at all
        self._l2: list = []  # data parallel with L2: the epoch's L2 loss terms, one per step (0-d)
        self._n_val = 0  # data parallel: rows of the whole validation set
        self.net = net
        self.config = config
        self.callbacks = tuple(callbacks)
        self.extra = dict(checkpoint_extra or {})
        self.optimizer = (
            make_optimizer(config.optimizer, config.momentum)
            if isinstance(config.optimizer, str)
            else config.optimizer
        )
        self.state = RunState()
        self.history = History(device=net.backend.device, ranks=self.comm.size)
        self.last_checkpoint: str | None = None
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ setting up

    def _split(self, X, y, validation_data, split_seed: int):
        """Training and validation arrays on the host, checked; validation may be None."""
        net = self.net
        if isinstance(X, np.memmap):
            X = HostRows(X, name=str(X.filename))
        X = check_rows(X, net.sizes[0]) if isinstance(X, HostRows) else check_X(X, net.sizes[0])
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
        splitter = split_rows if isinstance(X, HostRows) else train_test_split
        try:
            X, Xv, y, yv = splitter(
                X, y, test_size=self.config.validation_fraction, stratify=y, random_state=split_seed
            )
        except ValueError as exc:
            raise ValueError(f"cannot hold out validation_fraction={self.config.validation_fraction}: {exc}") from None
        return X, y, (Xv, yv)

    def _check_resumable(self, checkpoint: Checkpoint) -> None:
        net, meta = self.net, checkpoint.meta
        if "config" not in meta:
            raise ValueError(f"{checkpoint.path} is not a training checkpoint (a saved estimator?)")
        mine, theirs = model_block(net), {"tf32": False, **meta["model"]}  # tf32 recorded since it exists
        if theirs != mine:
            raise ValueError(f"{checkpoint.path} holds the network {theirs}, not {mine}")
        now = self.config.as_dict()
        changed = [f"{k}={meta['config'].get(k)!r} there, {now[k]!r} here" for k in now
                   if k not in _CHANGEABLE_ON_RESUME and meta["config"].get(k) != now[k]]
        if changed:
            raise ValueError(f"resuming {checkpoint.path} needs its training settings: " + "; ".join(changed))
        if self.config.epochs < meta["state"]["epoch"]:
            raise ValueError(f"{checkpoint.path} has trained {meta['state']['epoch']} epochs, "
                             f"more than epochs={self.config.epochs}")

    def _restore(self, checkpoint: Checkpoint) -> None:
        net, meta = self.net, checkpoint.meta
        net.set_params(checkpoint.params)
        self.optimizer = optimizer_from_state(meta["optimizer"])
        self.optimizer.load_state(checkpoint.prefixed("opt_"), [net.flat_params])
        self.state = RunState(**{k: meta["state"][k] for k in RunState.SCALARS})
        self.state.order = checkpoint.arrays.get("order")
        best = checkpoint.prefixed("best_")
        if best:
            self.state.best_params = [net.backend.asarray(best[str(i)], net.dtype) for i in range(len(best))]
        self.history = History(**{**meta["history"], "device": net.backend.device, "ranks": self.comm.size})
        self.last_checkpoint = str(checkpoint.path)

    def run(self, X, y, validation_data=None, resume=None) -> History:
        """Train for the configured epochs (or until stopped) and return the history."""
        net, cfg, backend = self.net, self.config, self.net.backend
        checkpoint = read_checkpoint(resume) if resume is not None else None
        if checkpoint is not None:
            self._check_resumable(checkpoint)
        rng = np.random.default_rng(cfg.seed)
        if self.parallel:  # rank 0's generator (and so split and orders) on every rank, also for seed=None
            rng.bit_generator.state = self.comm.bcast_object(rng.bit_generator.state)
        split_seed = checkpoint.meta["state"]["split_seed"] if checkpoint else int(rng.integers(2**31))
        X, y, validation = self._split(X, y, validation_data, split_seed)
        if not isinstance(X, HostRows):  # a HostRows is read batch by batch, converted then
            X = np.ascontiguousarray(X, dtype=net.dtype)
        if cfg.checkpoint is not None or checkpoint is not None or self.parallel:
            self._fingerprint = (fingerprint(X, y, net.dtype) if isinstance(X, HostRows)
                                 else data_fingerprint(X, y))
        if checkpoint is not None:
            if checkpoint.meta["data"] != self._fingerprint:
                raise ValueError(f"the training data differ from those {checkpoint.path} was trained on")
            self._restore(checkpoint)
        else:
            self.state = RunState(rng_state=rng.bit_generator.state, split_seed=split_seed)
        part = (self.comm.rank, self.comm.size)
        if self.parallel:
            self._start_together(checkpoint)
            if validation is not None:  # each rank scores its share; the sums are reduced
                lo, hi = share(validation[1].shape[0], part)
                self._n_val = validation[1].shape[0]
                validation = (validation[0][lo:hi], validation[1][lo:hi])
        feed = batch_feed(backend, X, y, cfg.batch_size, net.dtype, cfg.stream, part)
        if validation is not None and backend.fits(validation[0].nbytes):
            validation = (backend.asarray(validation[0], net.dtype), backend.asarray(validation[1]))
        with catch_stop_signals() as stop, feed:
            self._epochs(feed, validation, stop)
        history, best = self.history, self.state.best_params
        if best is not None and history.best_epoch != history.epochs:
            net.set_params(best)
        return history

    def _start_together(self, checkpoint) -> None:
        """Check that every rank has rank 0's settings, network and data; give every rank rank 0's
        parameters (a network built with seed=None differs from rank to rank)."""
        net = self.net
        config = {k: v for k, v in self.config.as_dict().items() if k != "verbose"}  # only rank 0 prints
        self.comm.check_same({"config": config, "sizes": list(net.sizes), "activation": net.activation,
                              "dtype": net.dtype.name, "alpha": net.alpha, "backend": net.backend.name,
                              "data": self._fingerprint, "resume": checkpoint is not None,
                              "split_seed": self.state.split_seed})
        if checkpoint is None:
            net.set_params(self.comm.bcast_object([net.backend.to_host(p) for p in net.params]))

    # ------------------------------------------------------------------ the loop

    def _epochs(self, feed, validation, stop) -> None:
        cfg, state = self.config, self.state
        n = feed.n
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        schedule = Schedule(cfg.lr, cfg.epochs * steps_per_epoch, cfg.schedule,
                            cfg.warmup_epochs * steps_per_epoch)
        rng = np.random.default_rng()
        rng.bit_generator.state = state.rng_state
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter() - state.epoch_seconds
            if state.position == 0:
                state.order = rng.permutation(n) if cfg.shuffle else np.arange(n)
                state.rng_state = rng.bit_generator.state
                state.loss_sum = 0.0
            losses, rows = [], []  # each step's loss (0-d, on the device) and its row count
            self._l2 = []
            bar = tqdm(total=steps_per_epoch, initial=state.position // cfg.batch_size,
                       desc=f"epoch {epoch}", leave=False, disable=cfg.verbose < 2 or self.comm.rank != 0)
            for batch in feed.epoch(state.order, state.position):
                loss = self._step(batch, schedule(state.step), epoch)
                losses.append(loss)
                rows.append(batch.size)
                state.step += 1
                state.position = batch.start + batch.size
                bar.update()
                signum = stop.signum
                if self.parallel:  # a signal to any rank stops every rank after this step
                    signum = self.comm.allreduce_scalar(signum or 0, "max") or None
                if signum is not None:
                    bar.close()
                    self._interrupt(signum, epoch, losses, rows, t0)
            bar.close()
            logs = {"train_loss": self._loss_sum(epoch, losses, rows) / n, "val_loss": None, "val_accuracy": None,
                    "lr": schedule(max(state.step - 1, 0))}
            if validation is not None:
                logs["val_loss"], logs["val_accuracy"] = self._validate(validation)
            logs["seconds"] = time.perf_counter() - t0
            state.epoch, state.position, state.order, state.loss_sum, state.epoch_seconds = epoch, 0, None, 0.0, 0.0
            self._record(logs)
            if cfg.verbose and self.comm.rank == 0:
                tqdm.write(_epoch_line(epoch, cfg.epochs, logs))
            halt = self._early_stopping(epoch, logs)
            asked = any([bool(cb(epoch, dict(logs))) for cb in self.callbacks])  # call every one
            if self.parallel:  # every rank, callbacks or not: a collective is never skipped by one rank
                asked = self.comm.allreduce_scalar(asked, "any")
            halt = asked or halt
            if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or halt or epoch == cfg.epochs):
                self.save(cfg.checkpoint)
            if halt:
                break

    def _step(self, batch, lr: float, epoch: int):
        """One optimizer step on a :class:`gpubp.batches.Batch`; returns its loss (0-d, on the device)."""
        try:
            return self._update(batch, lr)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            failure = str(exc)
        # out of the handler, the traceback and the failed step's arrays are gone: release them,
        # then measure what is free (measured inside, the advice would count them as used)
        self.net.backend.release_memory()
        raise DeviceMemoryError(self._memory_advice(failure, epoch))

    def _update(self, batch, lr: float):
        """Loss and gradients of a batch's rows, clipped if asked, and the optimizer's update."""
        net = self.net
        if self.parallel:
            loss, g = self._global_gradient(batch)
        else:
            loss, g = net.flat_loss_and_grad(*batch.arrays())
        if self.config.clip_norm is not None:
            clip_by_global_norm(net.xp, [g], self.config.clip_norm)
        self.optimizer.step([net.flat_params], [g], lr)  # every parameter in one pass
        return loss

    def _global_gradient(self, batch):
        """Data parallel: the global batch's mean gradient on every rank (one all-reduce), and this
        rank's share of the mean loss (0-d, summed over the ranks at the epoch's end).

        Rank r's mean over its b_r rows, times b_r / B, summed over the ranks, is the mean over
        the B rows. The L2 term ``alpha / n * W`` would be added by every rank (with n = b_r), so
        it is left out of the ranks' gradients and added once after the sum, with n = B."""
        net, xp = self.net, self.net.xp
        arrays = batch.arrays()  # also for an empty share: a streamed feed expects every batch taken
        if batch.rows:
            loss, g = net.flat_loss_and_grad(*arrays, l2=False)
            scale = net.dtype.type(batch.rows / batch.size)
            g *= scale
            loss = loss * scale
        else:  # fewer rows than ranks: this rank adds nothing, but takes part in the sum
            loss, g = xp.zeros((), net.dtype), xp.zeros(net.flat_params.shape, net.dtype)
        self.comm.allreduce_sum(g)
        if net.alpha:
            self._l2.append(net.add_l2(g, batch.size))
        return loss, g

    def _validate(self, validation) -> tuple[float, float]:
        """Validation loss and accuracy; data parallel, each rank scores its share and the sums
        are reduced in rank order (the same figures on every rank)."""
        if not self.parallel:
            return self.net._evaluate(*validation, batch_size=4096)
        m = validation[1].shape[0]
        loss, hits = (0.0, 0)
        if m:
            loss, accuracy = self.net._evaluate(*validation, batch_size=4096)
            loss, hits = loss * m, round(accuracy * m)
        pairs = self.comm.allgather_object((loss, hits))
        total = reduce_in_rank_order([p[0] for p in pairs], "sum")
        return total / self._n_val, reduce_in_rank_order([p[1] for p in pairs], "sum") / self._n_val

    def _early_stopping(self, epoch: int, logs: dict) -> bool:
        """Track the best epoch; True when patience has run out."""
        cfg, state, history = self.config, self.state, self.history
        monitored = logs["val_loss"] if logs["val_loss"] is not None else logs["train_loss"]
        if monitored < state.best_score - cfg.min_delta:
            state.best_score, state.waited, history.best_epoch = monitored, 0, epoch
            if cfg.patience is not None and cfg.restore_best:
                state.best_params = self.net.get_params()
        else:
            state.waited += 1
        if cfg.patience is not None and state.waited >= cfg.patience:
            history.stopped_early = True
        return history.stopped_early

    def _record(self, logs: dict) -> None:
        history = self.history
        history.train_loss.append(logs["train_loss"])
        history.lr.append(logs["lr"])
        history.seconds.append(logs["seconds"])
        if logs["val_loss"] is not None:
            history.val_loss.append(logs["val_loss"])
            history.val_accuracy.append(logs["val_accuracy"])

    # ------------------------------------------------------------------ stopping

    def _loss_sum(self, epoch: int, losses: list, rows: list) -> float:
        """The epoch's summed loss so far: state.loss_sum plus each step's loss times its rows,
        added in float64 on the host in step order, so a resumed epoch sums exactly as an
        uninterrupted one. The steps' losses come over in one transfer (no step waits for the
        host); a non-finite one raises DivergenceError (:meth:`_check_finite`)."""
        if self.parallel and losses:  # every rank has taken the same steps: sum their shares
            shares = self.comm.allreduce_sum(self.net.xp.stack(losses))
            values = to_numpy(shares + self.net.xp.stack(self._l2) if self._l2 else shares).tolist()
        else:
            values = to_numpy(self.net.xp.stack(losses)).tolist() if losses else []
        self._check_finite(epoch, values)
        total = self.state.loss_sum
        for value, count in zip(values, rows):
            total += value * count
        return total

    def _check_finite(self, epoch: int, losses: list) -> None:
        """DivergenceError naming the first step whose loss (host floats, the epoch's so far) or
        whose parameters went non-finite."""
        bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
        if bad is None and bool(self.net.xp.isfinite(self.net.flat_params).all()):
            return
        step = self.state.step - len(losses) + (bad if bad is not None else len(losses) - 1) + 1
        what = "the loss" if bad is not None else "a parameter"
        kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint
                else "no checkpoint was written")
        raise DivergenceError(
            f"training diverged in epoch {epoch} at step {step}: {what} became NaN or infinite; "
            f"{kept}; try a lower learning rate than {self.config.lr:g}"
            + ("" if self.config.clip_norm else " or gradient clipping (clip_norm)")
        )

    def _interrupt(self, signum: int, epoch: int, losses: list, rows: list, t0: float) -> None:
        self.state.loss_sum = self._loss_sum(epoch, losses, rows)
        self.state.epoch_seconds = time.perf_counter() - t0
        if self.config.checkpoint is not None:
            self.save(self.config.checkpoint)
        raise TrainingInterrupted(signum, self.config.checkpoint, epoch, self.state.step)

    def _memory_advice(self, failure: str, epoch: int) -> str:
        """What DeviceMemoryError says: the size asked (from the allocator's message ``failure``),
        the memory free now and a batch size that should fit."""
        net, bs, backend = self.net, self.config.batch_size, self.net.backend
        free = backend.free_memory()
        asked = re.search(r"allocat(?:e|ing) ([0-9][0-9.,]*(?: ?[KMGT]i?B| bytes)?)", failure)
        per_row = net.dtype.itemsize * sum(net.sizes) * 3  # activations, deltas, temporaries
        fixed = net.dtype.itemsize * net.n_params * 4  # parameters, gradients, optimizer state
        fits = int((0.8 * free - fixed) // per_row) if free else 0
        suggestion = 2 ** int(math.log2(min(max(fits, 1), max(bs // 2, 1))))
        free_text = f"{free / 2**30:.2f} GiB free" if free is not None else "free memory unknown"
        return (f"out of {backend.name} memory in epoch {self.state.epoch + 1} "
                f"(step {self.state.step + 1}) at batch size {bs}: the allocation asked for "
                f"{asked.group(1) if asked else 'more than was free'}, with {free_text}; "
                f"batch size {suggestion} should fit (or use a smaller network)")

    # ------------------------------------------------------------------ checkpoints

    def save(self, path) -> Path:
        """Write the run's checkpoint to ``path`` (atomically); data parallel, rank 0 writes it and
        every rank returns once it is written."""
        path = Path(path)
        if self.comm.rank == 0:
            write_checkpoint(path, *self._checkpoint_contents())
        if self.parallel:
            self.comm.barrier()
        self.last_checkpoint = str(path)
        return path

    def _checkpoint_contents(self) -> tuple[dict, dict]:
        """The checkpoint's meta and host arrays: the global run state only, whatever the ranks."""
        net, state = self.net, self.state
        settings, opt_arrays = self.optimizer.state()
        meta = {
            "model": model_block(net),
            "optimizer": settings,
            "config": self.config.as_dict(),
            "state": {k: getattr(state, k) for k in RunState.SCALARS},
            "history": self.history.as_dict(),
            "data": self._fingerprint,
            "extra": self.extra,
            "gpubp_version": __version__,
        }
        host = net.backend.to_host
        arrays = {f"param_{i}": host(p) for i, p in enumerate(net.params)}
        arrays.update({f"opt_{k}": host(v) for k, v in opt_arrays.items()})
        arrays.update({f"best_{i}": host(p) for i, p in enumerate(state.best_params or [])})
        if state.position:
            arrays["order"] = np.asarray(state.order)
        return meta, arrays


def _epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    """'epoch  3/20  train_loss 0.1234  val_loss 0.1500  val_acc 0.9583  lr 1.0e-03  0.050s'."""
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}", f"train_loss {logs['train_loss']:.4f}"]
    if logs["val_loss"] is not None:
        parts += [f"val_loss {logs['val_loss']:.4f}", f"val_acc {logs['val_accuracy']:.4f}"]
    parts += [f"lr {logs['lr']:.1e}", f"{logs['seconds']:.3f}s"]
    return "  ".join(parts)
