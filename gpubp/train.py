"""``gpubp.fit``: mini-batch training of a network (any output layer) with shuffling, validation,
early stopping, callbacks, progress, history, checkpoints (:mod:`gpubp.train_checkpoint`),
resuming, and stopping cleanly on a signal, divergence or lack of memory.

``fit`` checks its settings once (:class:`gpubp.config.TrainConfig`) and hands them to a
:class:`Trainer`, which runs the shared loop (:class:`gpubp.engine.Engine`) with this face's
policies: a seeded host generator draws each epoch's permutation, a :class:`Schedule` gives each
step's rate, early stopping watches the validation (or training) loss with ``patience`` and
``min_delta``, and a stop signal writes a checkpoint and raises :class:`TrainingInterrupted`.

Data parallel (``comm``, :mod:`gpubp.distributed`): every rank holds the whole data set, rank 0's parameters and
shuffling generator (broadcast at the start), so the same global order; the engine splits each global batch and
sums the gradients. Validation is split over the ranks and its sums reduced, so every rank stops at the same step.
Only rank 0 prints and writes checkpoints, which hold the global run state and resume under any number of ranks.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .batches import batch_feed, share
from .communicator import Communicator, SingleProcess, failing_together, reduce_in_rank_order
from .config import TrainConfig
from .checkpoint import read_checkpoint
from .engine import Engine
from .history import History, epoch_line
from .errors import DivergenceError
from .interrupt import TrainingInterrupted
from .mlp import MLP
from .data_parts import same_data
from .rows import HostRows
from .optim import make_optimizer
from .schedules import Schedule
from .train_checkpoint import RunCheckpoints, checked_extra
from .validation import check_callbacks
from .train_data import check_training_data, hold_out, rows_of

Callback = Callable[[int, dict], "bool | None"]


def fit(net: MLP, X, y, *, sample_weight=None, validation_data=None, callbacks: tuple[Callback, ...] = (),
        resume=None, checkpoint_extra: dict | None = None, comm: Communicator | None = None,
        **settings) -> History:
    """Train ``net`` in place by mini-batch gradient descent and return its history.

    Parameters
    ----------
    net : MLP
    X : array (n, sizes[0]), numpy.memmap or gpubp.rows.HostRows
        Training inputs (host or device arrays). A memory-mapped array (``np.load(path,
        mmap_mode="r")``) or HostRows is never read whole: it is checked chunk by chunk and
        batches are read from it as they are needed (streamed, as with ``stream=True``).
    y : integer array (n,), or array (n, sizes[-1])
        Class indices in 0..sizes[-1]-1 for a softmax output; for a logistic, identity or exp
        output, the targets (0/1 indicators, real values, counts >= 0). Validation then records
        the loss only (no accuracy) and the held-out rows are not stratified.
    sample_weight : array (n,), optional
        Non-negative weights, not all zero: each batch's loss and gradient become the weighted
        means ``sum(w_i l_i) / sum(w_i)`` over its rows and the L2 term uses n = sum(w_i)
        (scikit-learn's convention); held out with their rows by ``validation_fraction``. The
        validation loss and accuracy are not weighted.
    validation_data : (X_val, y_val), optional
        Held-out set scored after every epoch (a memory-mapped or HostRows X_val, and the rows
        ``validation_fraction`` holds out of one, batch by batch); overrides ``validation_fraction``.
    callbacks : sequence of callables ``cb(epoch, logs) -> bool | None``
        Called after every epoch with ``logs`` holding that epoch's ``train_loss``, ``val_loss``,
        ``val_accuracy``, ``lr`` and ``seconds``; returning True stops training.
    resume : path, optional
        A checkpoint to continue from, with its network, data and settings (``epochs``, ``verbose``
        and the checkpoint settings may change); a run early stopping ended is not trained further.
    checkpoint_extra : dict, optional
        JSON-able values stored in each checkpoint's ``meta["extra"]`` (else a ValueError at once).
    comm : gpubp.distributed.Communicator, optional
        Data-parallel over its ranks (``gpubp.distributed.world()`` under ``mpirun``): every rank
        calls ``fit`` alike; ``batch_size`` is the global batch; the result is one process's up to
        rounding, on every rank. None (or one rank): this process alone.
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
    restore_best : bool, default True: with early stopping, end on the best epoch's parameters
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
        Stream batches from the host through pinned double buffers, as when the set does not fit
        in half the free device memory (bitwise the same results).
    cuda_graph : bool, default False
        Replay each step's forward and backward pass from a CUDA graph, one launch instead of ~6
        per layer (cuda, float32/float64, one process; :mod:`gpubp.cuda_graph`).

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
    if comm is not None and not isinstance(comm, Communicator):
        raise ValueError(f"comm must be a gpubp.distributed communicator, got {comm!r}")
    with failing_together(comm or SingleProcess()):  # a bad setting on one rank stops every rank
        trainer = Trainer(net, TrainConfig(**settings), callbacks, checkpoint_extra, comm)
    return trainer.run(X, y, validation_data, resume, sample_weight)


class Trainer(RunCheckpoints):
    """Runs the epochs of one :class:`TrainConfig` on one network: the set-up, the policies the
    engine calls (:class:`gpubp.engine.Plan`) and the checkpoints."""

    def __init__(self, net: MLP, config: TrainConfig, callbacks: tuple[Callback, ...] = (),
                 checkpoint_extra: dict | None = None, comm: Communicator | None = None):
        if not isinstance(net, MLP):
            raise ValueError(f"net must be a gpubp.MLP, got {type(net).__name__}")
        callbacks = check_callbacks(callbacks)
        if comm is not None and not isinstance(comm, Communicator):
            raise ValueError(f"comm must be a gpubp.distributed communicator, got {comm!r}")
        optimizer = (make_optimizer(config.optimizer, config.momentum) if isinstance(config.optimizer, str)
                     else config.optimizer)
        self.engine = Engine(net, optimizer, comm, config.clip_norm, cuda_graph=config.cuda_graph)
        self.comm, self.parallel = self.engine.comm, self.engine.parallel
        self.net, self.config, self.callbacks = net, config, tuple(callbacks)
        self.extra = checked_extra(checkpoint_extra)
        self.epochs = config.epochs  # the Plan's last epoch
        self.run_state = {"rng_state": None, "split_seed": 0, "best_score": math.inf, "waited": 0}
        self.best_params: list | None = None  # best epoch's parameters (device), for restore_best
        self.history = History(device=net.backend.device, ranks=self.comm.size)
        self.last_checkpoint, self._fingerprint = None, None  # paths and fingerprints: str or None
        self._validation, self._n_val = None, 0  # data parallel: rows of the whole validation set
        self._schedule, self._rng, self._n_rows, self._started = None, None, 0, False

    # ------------------------------------------------------------------ setting up

    def run(self, X, y, validation_data=None, resume=None, sample_weight=None) -> History:
        """Train for the configured epochs (or until stopped) and return the history, once (a second call is a
        RuntimeError: fit again, or with resume=). Data parallel, a rank whose data, checkpoint or settings fail
        the checks makes every rank raise (the others a RankFailedError naming it) before any step."""
        if self._started:  # its state is a run's (a stopped one resumes from its checkpoint, resume=)
            raise RuntimeError("this Trainer has trained already; call gpubp.fit again, or with resume=checkpoint")
        net, cfg, backend = self.net, self.config, self.net.backend
        part, hashed = (self.comm.rank, self.comm.size), (cfg.checkpoint, resume) != (None, None) or self.parallel
        with failing_together(self.comm):
            checkpoint = read_checkpoint(resume) if resume is not None else None
            if checkpoint is not None:
                self._check_resumable(checkpoint)
            X, y, w, validation, mine = check_training_data(net, X, y, sample_weight, validation_data, part, hashed)
        self._fingerprint = mine.fingerprint(self.comm)  # each rank read its own rows; the same on every rank
        rng = np.random.default_rng(cfg.seed)
        if self.parallel:  # rank 0's generator (and so split and orders) on every rank, also for seed=None
            rng.bit_generator.state = self.comm.bcast_object(rng.bit_generator.state)
        split_seed = checkpoint.meta["state"]["split_seed"] if checkpoint else int(rng.integers(2**31))
        with failing_together(self.comm):
            if validation is None and cfg.validation_fraction:
                X, y, w, validation = hold_out(X, y, w, cfg.validation_fraction, split_seed)
            if not isinstance(X, HostRows):  # a HostRows is read batch by batch, converted then
                X = np.ascontiguousarray(X, dtype=net.dtype)
            w = None if w is None else w.astype(net.dtype)
            if checkpoint is not None:
                if not same_data(checkpoint.meta["data"], self._fingerprint, X, y, net.dtype, w):
                    raise ValueError(f"the training data differ from those {checkpoint.path} was trained on")
                self._restore(checkpoint)
            else:
                self.run_state.update(rng_state=rng.bit_generator.state, split_seed=split_seed)
        if self.parallel:
            self._start_together(checkpoint)
        if validation is not None:  # data parallel, each rank reads and scores its share; the sums are reduced
            self._n_val, (lo, hi) = validation[1].shape[0], share(validation[1].shape[0], part)
            validation = (rows_of(validation[0], lo, hi), validation[1][lo:hi])
        feed = batch_feed(backend, X, y, cfg.batch_size, net.dtype, cfg.stream, part, w, net.compute_dtype)
        if validation is not None and not isinstance(validation[0], HostRows) and backend.fits(validation[0].nbytes):
            validation = (backend.asarray(validation[0], net.dtype), backend.asarray(validation[1]))  # y's dtype kept
        self._validation, self._n_rows = validation, feed.n
        steps = math.ceil(feed.n / cfg.batch_size)  # per epoch
        self._schedule = Schedule(cfg.lr, cfg.epochs * steps, cfg.schedule, cfg.warmup_epochs * steps)
        self._rng = np.random.default_rng()
        self._rng.bit_generator.state = self.run_state["rng_state"]
        self._started = True  # (a run refused by the checks above may be run again)
        if not self._finished(checkpoint):
            self.engine.run(feed, self, bar=cfg.verbose >= 2 and self.comm.rank == 0)
        if self.best_params is not None and self.history.best_epoch != self.history.epochs:
            net.set_params(self.best_params)
        return self.history

    def _start_together(self, checkpoint) -> None:
        """Check that every rank has rank 0's settings, network and data; give every rank rank 0's
        parameters (a network built with seed=None differs from rank to rank)."""
        net = self.net
        config = {k: v for k, v in self.config.as_dict().items() if k != "verbose"}  # only rank 0 prints
        self.comm.check_same({"config": config, "sizes": list(net.sizes), "activation": net.activation,
                              "dtype": net.dtype.name, "alpha": net.alpha, "backend": net.backend.name,
                              "data": self._fingerprint, "resume": checkpoint is not None,
                              "split_seed": self.run_state["split_seed"]})
        if checkpoint is None:
            net.set_params(self.comm.bcast_object([net.backend.to_host(p) for p in net.params]))

    # ------------------------------------------------------------------ the policies (gpubp.engine.Plan)

    def order(self, epoch: int) -> np.ndarray:
        n = self._n_rows
        order = self._rng.permutation(n) if self.config.shuffle else np.arange(n)
        self.run_state["rng_state"] = self._rng.bit_generator.state
        return order

    def rate(self, step: int) -> float:
        return self._schedule(step)

    def end_epoch(self, epoch: int, train_loss: float, started: float) -> bool:
        cfg = self.config
        logs = {"train_loss": train_loss, "val_loss": None, "val_accuracy": None,
                "lr": self._schedule(max(self.engine.progress.step - 1, 0))}
        if self._validation is not None:
            logs["val_loss"], logs["val_accuracy"] = self._validate(self._validation)
        logs["seconds"] = time.perf_counter() - started
        self.history.record(logs)
        if cfg.verbose and self.comm.rank == 0:
            tqdm.write(epoch_line(epoch, cfg.epochs, logs))
        halt = self._early_stopping(epoch, logs)
        asked = any([bool(cb(epoch, dict(logs))) for cb in self.callbacks])  # call every one
        if self.parallel:  # every rank, callbacks or not: a collective is never skipped by one rank
            asked = self.comm.allreduce_scalar(asked, "any")
        halt = asked or halt
        if cfg.checkpoint_every and (epoch % cfg.checkpoint_every == 0 or halt or epoch == cfg.epochs):
            self.save(cfg.checkpoint)
        return halt

    def interrupted(self, signum: int, epoch: int) -> None:
        if self.config.checkpoint is not None:
            self.save(self.config.checkpoint)
        raise TrainingInterrupted(signum, self.config.checkpoint, epoch, self.engine.progress.step)

    def diverged(self, epoch: int, step: int, what: str) -> Exception:
        kept = f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else "no checkpoint was written"
        return DivergenceError(
            f"training diverged in epoch {epoch} at step {step}: {what} became NaN or infinite; "
            f"{kept}; try a lower learning rate than {self.config.lr:g}"
            + ("" if self.config.clip_norm else " or gradient clipping (clip_norm)"))

    def _validate(self, validation) -> tuple[float, float]:
        """Validation loss and accuracy; data parallel, each rank scores its share and the sums
        are reduced in rank order (the same figures on every rank)."""
        if not self.parallel:
            return self.net.evaluate(*validation, batch_size=4096, check=False)
        m, loss, hits = validation[1].shape[0], 0.0, 0
        if m:
            loss, accuracy = self.net.evaluate(*validation, batch_size=4096, check=False)
            loss, hits = loss * m, round((accuracy or 0.0) * m)
        pairs = self.comm.allgather_object((loss, hits))
        total = reduce_in_rank_order([p[0] for p in pairs], "sum")
        accuracy = reduce_in_rank_order([p[1] for p in pairs], "sum") / self._n_val
        return total / self._n_val, accuracy if self.net.output == "softmax" else None

    def _early_stopping(self, epoch: int, logs: dict) -> bool:
        """Track the best epoch; True when patience has run out."""
        cfg, state, history = self.config, self.run_state, self.history
        monitored = logs["val_loss"] if logs["val_loss"] is not None else logs["train_loss"]
        if monitored < state["best_score"] - cfg.min_delta:
            state["best_score"], state["waited"], history.best_epoch = monitored, 0, epoch
            if cfg.patience is not None and cfg.restore_best:
                self.best_params = self.net.get_params()
        else:
            state["waited"] += 1
        if cfg.patience is not None and state["waited"] >= cfg.patience:
            history.stopped_early = True
        return history.stopped_early
