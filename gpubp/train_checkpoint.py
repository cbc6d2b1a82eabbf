"""The checkpoints of :func:`gpubp.fit`: what a run writes, and how a run resumes from one.

A checkpoint holds the parameters, the optimizer's state, the engine's :class:`Progress`, the
face's own run state (the shuffling generator, the validation split's seed, early stopping's
best score and patience), the best epoch's parameters, the history and the data's fingerprint,
so a resumed run ends exactly where an uninterrupted one would (one that early stopping ended
is not trained further). ``checkpoint_extra`` is checked when ``fit`` starts, not when written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .version import __version__
from .checkpoint import Checkpoint, write_checkpoint
from .communicator import failing_together
from .container import model_block
from .engine import Progress
from .history import History
from .optim import optimizer_from_settings, restore_state

# Settings a resumed run may change; all others must equal the checkpoint's.
_CHANGEABLE_ON_RESUME = ("epochs", "verbose", "checkpoint", "checkpoint_every", "stream", "cuda_graph")
# The face's own run state, stored in a checkpoint beside the engine's Progress.
_RUN_STATE = ("rng_state", "split_seed", "best_score", "waited")


def checked_extra(extra) -> dict:
    """``fit``'s ``checkpoint_extra`` as a checkpoint stores it (a dict that ``json.dumps``, as
    the checkpoint's writer calls it, takes); ValueError naming a key whose entry it cannot write."""
    if extra is None:
        return {}
    if not isinstance(extra, dict):
        raise ValueError(f"checkpoint_extra must be a dict of JSON-able values, got {type(extra).__name__}")
    for key, value in extra.items():
        try:
            json.dumps({key: value})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"checkpoint_extra[{key!r}] (of type {type(value).__name__}) cannot be stored in a "
                             f"checkpoint's JSON ({exc}): give numbers, strings, None, lists and dicts with "
                             "string keys (an array: arr.tolist(); a NumPy number: float(x))") from None
    return dict(extra)


class RunCheckpoints:
    """Saving and restoring a :class:`gpubp.train.Trainer`'s run (a mixin of it)."""

    def _check_resumable(self, checkpoint: Checkpoint) -> None:
        net, meta = self.net, checkpoint.meta
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

    def _finished(self, checkpoint: Checkpoint | None) -> bool:
        """Whether the resumed ``checkpoint`` holds a run that early stopping ended, which the
        uninterrupted run would not have trained further (said when verbose); a run a callback
        stopped goes on, as the run stopped by a signal does."""
        history = self.history
        if checkpoint is None or not history.stopped_early:
            return False
        if self.config.verbose and self.comm.rank == 0:
            tqdm.write(f"early stopping ended {checkpoint.path} after epoch {history.epochs} (best epoch "
                       f"{history.best_epoch}): nothing more to train")
        return True

    def save(self, path) -> Path:
        """Write the run's checkpoint to ``path`` (atomically); data parallel, rank 0 writes it and
        every rank returns once it is written."""
        path = Path(path)
        with failing_together(self.comm, "writing a checkpoint"):  # rank 0 failing to write stops every rank
            if self.comm.rank == 0:
                write_checkpoint(path, *self._checkpoint_contents())
        self.last_checkpoint = str(path)
        return path

    def _checkpoint_contents(self) -> tuple[dict, dict]:
        """The checkpoint's meta and host arrays: the global run state only, whatever the ranks."""
        net, progress = self.net, self.engine.progress
        settings = {**self.engine.optimizer.settings(), "t": self.engine.opt_state.t}
        state = {**{k: getattr(progress, k) for k in Progress.SCALARS}, **self.run_state}
        meta = {"model": model_block(net), "optimizer": settings, "config": self.config.as_dict(),
                "state": state, "history": self.history.as_dict(), "data": self._fingerprint,
                "extra": self.extra, "gpubp_version": __version__}
        host = net.backend.to_host
        arrays = {f"param_{i}": host(p) for i, p in enumerate(net.params)}
        arrays.update({f"opt_{k}": host(v) for k, v in self.engine.opt_state.arrays.items()})
        arrays.update({f"best_{i}": host(p) for i, p in enumerate(self.best_params or [])})
        if progress.position:
            arrays["order"] = np.asarray(progress.order)
        return meta, arrays

    def _restore(self, checkpoint: Checkpoint) -> None:
        net, meta = self.net, checkpoint.meta
        net.set_params(checkpoint.params)
        self.engine.optimizer = optimizer_from_settings(meta["optimizer"])
        self.engine.opt_state = restore_state(self.engine.optimizer, checkpoint.prefixed("opt_"),
                                              meta["optimizer"].get("t", 0), net.flat_params)  # SGD recorded no t before the state was explicit
        scalars = {"weightless": 0, **meta["state"]}  # weightless: recorded since sample weights exist
        self.engine.progress = Progress(**{k: scalars[k] for k in Progress.SCALARS},
                                        order=checkpoint.arrays.get("order"))
        self.run_state.update({k: meta["state"][k] for k in _RUN_STATE})
        best = checkpoint.prefixed("best_")
        if best:
            self.best_params = [net.backend.asarray(best[str(i)], net.dtype) for i in range(len(best))]
        self.history = History(**{**meta["history"], "device": net.backend.device, "ranks": self.comm.size})
        self.last_checkpoint = str(checkpoint.path)
