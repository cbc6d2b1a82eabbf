"""The one mini-batch loop under :func:`gpubp.fit` and the scikit-learn estimators.

:class:`Engine` owns what every trainer does the same way: the epochs and their batches (from a
:mod:`gpubp.batches` feed), the step (loss and flat gradient, the data-parallel all-reduce, the
L2 term, optional clipping, the optimizer's update), the epoch's loss summed on the host once per
epoch (no step waits for the host), divergence found from those losses and the parameters,
out-of-memory turned into :class:`DeviceMemoryError` with a batch size that fits, the progress
bar, and stop signals honoured after a whole step. Where a run stands is :class:`Progress`,
which a checkpoint stores.

What differs between the faces is a :class:`Plan` passed in: the row order of each epoch, the
learning rate of each step (gpubp's constant/cosine with warm-up, scikit-learn's constant,
invscaling and adaptive), what ends an epoch (validation, records, the stopping rule,
checkpoints, callbacks), what a stop signal does (``gpubp.fit``: checkpoint and raise), and what
divergence raises.

Data parallel (``comm`` with R > 1 ranks): rank r trains its share of each global batch of B rows
(total weight W: B, or the batch's summed sample weights). Its mean gradient over its share (of
weight W_r) times W_r / W, summed over the ranks by one all-reduce, is the global batch's mean
gradient. The L2 term would be added by every rank, so it is left out there and added once after
the sum, with n = W. The steps' losses are summed over the ranks once per epoch, and a signal
to any rank stops every rank after the same step.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from .backend import memory_failure, to_numpy
from .communicator import Communicator, SingleProcess
from .cuda_graph import GraphedGradient, check_graphable
from .errors import DeviceMemoryError
from .interrupt import StopFlag, catch_stop_signals
from .mlp import MLP
from .optim import OptimizerState, clip_by_global_norm


@dataclass
class Progress:
    """Where a run stands; with the parameters and optimizer state, what a checkpoint needs."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    position: int = 0  # rows of the current epoch already trained (0 between epochs)
    loss_sum: float = 0.0  # their summed loss (each step's mean loss times its rows)
    epoch_seconds: float = 0.0  # time spent in the current epoch before a stop
    weightless: int = 0  # rows of the current epoch in batches whose weights are all 0 (no step)
    order: np.ndarray | None = None  # current epoch's row order (host), None between epochs

    SCALARS = ("epoch", "step", "position", "loss_sum", "epoch_seconds", "weightless")


class Plan(Protocol):
    """The policies a face of the engine passes in (see the module docstring)."""

    epochs: int  # the last epoch to train

    def order(self, epoch: int) -> np.ndarray:
        """The row order (host int array (n,)) of ``epoch``, drawn when it starts."""

    def rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based, counted over the run)."""

    def end_epoch(self, epoch: int, train_loss: float, started: float) -> bool:
        """After ``epoch`` (its mean training loss; ``time.perf_counter()`` at its start):
        validate, record, report, decide; True stops training."""

    def interrupted(self, signum: int, epoch: int) -> None:
        """A stop signal arrived (Progress holds the partial epoch); raises to stop."""

    def diverged(self, epoch: int, step: int, what: str) -> Exception | None:
        """The exception to raise when ``what`` ("the loss" or "a parameter") became NaN or
        infinite at ``step`` of ``epoch``; None to carry on."""


class Engine:
    """Trains ``net`` in place with ``optimizer`` over the batches of a feed.

    Parameters
    ----------
    net : MLP
    optimizer : gpubp.SGD or gpubp.Adam
        The update rule; its state is ``opt_state`` (fresh zeros unless ``opt_state`` is given).
    comm : Communicator, optional
        Data-parallel ranks (one process when None).
    clip_norm : float, optional
        Scale each step's gradient to a global L2 norm of at most this.
    loss_scale : float
        Factor on the data part of each step's reported loss (scikit-learn's squared loss
        averages over the outputs, its gradient does not); the gradient is not scaled.
    opt_state : gpubp.optim.OptimizerState, optional
        The optimizer's state to go on from (a resumed run, a partial_fit); fresh when None.
    cuda_graph : bool
        Each step's forward and backward pass replayed from a CUDA graph
        (:class:`gpubp.cuda_graph.GraphedGradient`; cuda, float32/float64, one process).
    graphs : GraphedGradient, optional
        With cuda_graph, the graphs an earlier run captured for ``net`` (``engine.graphed``; a
        partial_fit's previous call), replayed again; new ones when None.
    """

    def __init__(self, net: MLP, optimizer, comm: Communicator | None = None, clip_norm: float | None = None,
                 loss_scale: float = 1.0, opt_state: OptimizerState | None = None, cuda_graph: bool = False,
                 graphs: GraphedGradient | None = None):
        self.net, self.optimizer, self.clip_norm, self.loss_scale = net, optimizer, clip_norm, loss_scale
        self.opt_state = opt_state if opt_state is not None else optimizer.init(net.flat_params)
        self.comm = comm if comm is not None else SingleProcess()
        self.parallel = self.comm.size > 1  # False: the one-process loop, no collective at all
        if cuda_graph:
            check_graphable(net, self.parallel)
            if graphs is not None and graphs.net is not net:
                raise ValueError("graphs were captured for another network: pass graphs=None to capture anew")
        self.graphed = (graphs or GraphedGradient(net)) if cuda_graph else None
        self.progress = Progress()
        self._l2: list = []  # data parallel with L2: the epoch's L2 loss terms, one per step (0-d)

    # ------------------------------------------------------------------ the loop

    def run(self, feed, plan: Plan, bar: bool = False, signals: bool = True) -> None:
        """Train the epochs after ``progress.epoch`` up to ``plan.epochs`` (or until the plan
        stops), resuming inside an epoch when ``progress.position`` says so. ``bar``: a progress
        bar over each epoch's batches; ``signals``: SIGINT/SIGTERM stop after a whole step and
        call ``plan.interrupted`` (main thread only)."""
        with (catch_stop_signals() if signals else contextlib.nullcontext(StopFlag())) as stop, feed, \
                (self.graphed.running() if self.graphed else contextlib.nullcontext()):
            for epoch in range(self.progress.epoch + 1, plan.epochs + 1):
                if self._epoch(feed, plan, epoch, stop, bar):
                    break

    def _epoch(self, feed, plan: Plan, epoch: int, stop: StopFlag, bar: bool) -> bool:
        """One epoch (or the rest of one); returns plan.end_epoch's verdict."""
        state = self.progress
        started = time.perf_counter() - state.epoch_seconds
        if state.position == 0:
            state.order, state.loss_sum, state.weightless = plan.order(epoch), 0.0, 0
        losses, rows = [], []  # each step's loss (0-d, on the device) and its row count
        self._l2 = []
        steps = math.ceil(feed.n / feed.batch_size)
        progress_bar = tqdm(total=steps, initial=state.position // feed.batch_size, desc=f"epoch {epoch}",
                            leave=False, disable=not bar)
        for batch in feed.epoch(state.order, state.position):
            losses.append(self.step(batch, plan.rate(state.step), feed.batch_size))
            rows.append(batch.size)
            state.weightless += 0 if batch.weight else batch.size
            state.step += 1
            state.position = batch.start + batch.size
            progress_bar.update()
            signum = stop.signum
            if self.parallel:  # a signal to any rank stops every rank after this step
                signum = self.comm.allreduce_scalar(signum or 0, "max") or None
            if signum is not None:
                progress_bar.close()
                state.loss_sum = self._loss_sum(plan, epoch, losses, rows)
                state.epoch_seconds = time.perf_counter() - started
                plan.interrupted(signum, epoch)
        progress_bar.close()
        # the mean over the rows that took part: a batch that weighs nothing took no step
        train_loss = self._loss_sum(plan, epoch, losses, rows) / (feed.n - state.weightless)
        state.epoch, state.position, state.order, state.loss_sum, state.epoch_seconds = epoch, 0, None, 0.0, 0.0
        state.weightless = 0
        return plan.end_epoch(epoch, train_loss, started)

    # ------------------------------------------------------------------ the step

    def step(self, batch, lr: float, batch_size: int):
        """One optimizer step on a :class:`gpubp.batches.Batch`; returns its loss (0-d, on the
        device). Running out of memory raises DeviceMemoryError (``batch_size``: the run's)."""
        try:
            return self._update(batch, lr)
        except Exception as exc:
            memory = memory_failure(exc)
            if memory is None:
                raise
            failure = str(exc)
        # out of the handler, the traceback and the failed step's arrays are gone: release them,
        # then measure what is free (measured inside, the advice would count them as used)
        self.net.backend.release_memory()
        raise DeviceMemoryError(self._memory_advice(failure, batch_size, memory))

    def _update(self, batch, lr: float):
        """Loss and gradient of a batch's rows, clipped if asked, and the optimizer's update."""
        net = self.net
        if not batch.weight:  # every row of the batch weighs 0: no step
            batch.arrays()  # a streamed feed expects every batch taken
            if self.parallel and net.alpha:
                self._l2.append(net.xp.zeros((), net.dtype))
            return net.xp.zeros((), net.dtype)
        # the L2 penalty's gradient added by the update's kernel (clipping needs it in the gradient first)
        fold = self.clip_norm is None and self.optimizer.folds_l2
        if self.parallel:
            loss, g, l2 = self._global_gradient(batch, fold)
        else:  # a graphed step gathers its batch straight into the graph's buffers
            arrays = self.graphed.inputs(batch) if self.graphed else batch.arrays()
            loss, g, l2 = batch_loss_and_grad(net, *arrays, self.loss_scale, self.graphed, fold)
        if self.clip_norm is not None:
            clip_by_global_norm(net.xp, [g], self.clip_norm)
        self.optimizer.update(net.flat_params, g, self.opt_state, lr, *l2)  # every parameter in one pass
        return loss

    def _global_gradient(self, batch, fold_l2: bool):
        """Data parallel: the global batch's mean gradient on every rank (one all-reduce), this
        rank's part of the mean loss (0-d, summed over the ranks at the epoch's end), and the L2
        penalty's (factor, weights) for the update to fold in, as batch_loss_and_grad's."""
        net, xp = self.net, self.net.xp
        X, y, w = batch.arrays()  # also for an empty share: a streamed feed expects every batch taken
        if batch.share:  # W_r > 0
            loss, g = net.flat_loss_and_grad(X, y, w, l2=False)
            scale = net.dtype.type(batch.share)  # W_r / W
            g *= scale
            loss = loss * (scale * net.dtype.type(self.loss_scale))
        else:  # no rows (fewer than ranks), or none that weighs: this rank adds nothing, but takes part
            loss, g = xp.zeros((), net.dtype), xp.zeros(net.flat_params.shape, net.dtype)
        self.comm.allreduce_sum(g)
        if not net.alpha:
            return loss, g, NO_L2
        c = net.l2_scale(batch.weight)
        self._l2.append(net.l2_loss(c) if fold_l2 else net.add_l2(g, c))
        return loss, g, (c, net.n_weights) if fold_l2 else NO_L2

    # ------------------------------------------------------------------ losses and failures

    def _loss_sum(self, plan: Plan, epoch: int, losses: list, rows: list) -> float:
        """The epoch's summed loss so far: progress.loss_sum plus each step's loss times its rows,
        added in float64 on the host in step order, so a resumed epoch sums exactly as an
        uninterrupted one. The steps' losses come over in one transfer; a non-finite one, or a
        non-finite parameter, goes to ``plan.diverged``."""
        xp = self.net.xp
        if self.parallel and losses:  # every rank has taken the same steps: sum their shares
            shares = self.comm.allreduce_sum(xp.stack(losses))
            values = to_numpy(shares + xp.stack(self._l2) if self._l2 else shares).tolist()
        else:
            values = to_numpy(xp.stack(losses)).tolist() if losses else []
        self._check_finite(plan, epoch, values)
        total = self.progress.loss_sum
        for value, count in zip(values, rows):
            total += value * count
        return total

    def _check_finite(self, plan: Plan, epoch: int, losses: list) -> None:
        """Ask the plan what to raise when a step's loss (host floats, the epoch's so far) went
        non-finite, naming the first such step, and then when a parameter did."""
        first = self.progress.step - len(losses) + 1  # the step of losses[0]
        bad = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
        error = None if bad is None else plan.diverged(epoch, first + bad, "the loss")
        if error is None and not bool(self.net.xp.isfinite(self.net.flat_params).all()):
            error = plan.diverged(epoch, self.progress.step, "a parameter")
        if error is not None:
            raise error

    def _memory_advice(self, failure: str, batch_size: int, memory: str) -> str:
        """What DeviceMemoryError says: the size asked (from the allocator's message ``failure``),
        the memory free now and a batch size that should fit (``memory``: backend.memory_failure's)."""
        net, backend, state = self.net, self.net.backend, self.progress
        if memory == "pinned":  # cudaHostAlloc: the streamed batches' page-locked buffers
            return (f"out of pinned (page-locked) host memory in epoch {state.epoch + 1} (step {state.step + 1}) "
                    f"at batch size {batch_size}, for the streamed batches' buffers; batch size "
                    f"{max(batch_size // 2, 1)} needs half of it (or free host memory)")
        free = backend.free_memory()
        asked = re.search(r"allocat(?:e|ing) ([0-9][0-9.,]*(?: ?[KMGT]i?B| bytes)?)", failure)
        per_row = net.compute_dtype.itemsize * sum(net.sizes) * 3  # activations, deltas, temporaries (bfloat16: 2 B)
        fixed = net.dtype.itemsize * net.n_params * 4  # parameters, gradients, optimizer state
        fits = int((0.8 * free - fixed) // per_row) if free else 0
        suggestion = 2 ** int(math.log2(min(max(fits, 1), max(batch_size // 2, 1))))
        free_text = f"{free / 2**30:.2f} GiB free" if free is not None else "free memory unknown"
        return (f"out of {backend.name} memory in epoch {state.epoch + 1} "
                f"(step {state.step + 1}) at batch size {batch_size}: the allocation asked for "
                f"{asked.group(1) if asked else 'more than was free'}, with {free_text}; "
                f"batch size {suggestion} should fit (or use a smaller network)")


NO_L2 = (0.0, 0)  # the optimizer's (l2, n_weights) when there is no L2 term to fold in


def batch_loss_and_grad(net: MLP, X, y, w=None, loss_scale: float = 1.0, graphed=None, fold_l2: bool = False):
    """Mean loss (0-d) and flat gradient (n_params,) of one batch in one process, the L2 term
    included (n = the rows, or the summed weights): X (m, d), y (m,) or (m, k), w (m,) or None,
    all on the device. ``loss_scale`` multiplies the data part of the loss only. ``graphed``: a
    GraphedGradient that replays the data part. Returns (loss, g, l2): with ``fold_l2`` and an
    L2 penalty, g lacks the penalty's gradient and l2 = (alpha / n, n_weights), for the
    optimizer's update to add it in its pass over the parameters; else l2 = NO_L2."""
    loss, g = net.flat_loss_and_grad(X, y, w, l2=False) if graphed is None else graphed(X, y, w)
    if loss_scale != 1.0:
        loss = loss * net.dtype.type(loss_scale)
    if not net.alpha:
        return loss, g, NO_L2
    c = net.l2_scale(X.shape[0] if w is None else w.sum())
    if not fold_l2:
        return loss + net.add_l2(g, c), g, NO_L2
    return loss + net.l2_loss(c), g, (c, net.n_weights)
