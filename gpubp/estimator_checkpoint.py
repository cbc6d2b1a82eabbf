"""Checkpoints of the estimators' stochastic fits, and fits that resume from one.

Three constructor arguments beyond scikit-learn's, off by default::

    MLPClassifier(solver="adam", max_iter=200, checkpoint="run.npz", checkpoint_every=5, resume=True)

- ``checkpoint`` (a path, default None): ``fit`` writes the fit's whole state there, atomically,
  after every ``checkpoint_every``-th iteration (epoch) and after the last one: the parameters,
  the optimizer's state, the learning rate, every fitted record (``n_iter_``, ``t_``,
  ``loss_curve_``, ``best_loss_``, ``validation_scores_``, ``best_validation_score_``, the
  no-improvement count), early stopping's best parameters, the random state, the last epoch's
  sample order, the early-stopping split (as row indices) and a fingerprint of the data.
- ``resume`` (default False): when True and the checkpoint file exists, ``fit`` continues the fit
  saved there instead of starting one, and ends exactly where the uninterrupted fit would have
  (same parameters, ``loss_curve_`` and ``n_iter_``); a fit that had already stopped (its stopping
  rule fired) is restored and not trained further. When the file does not exist, ``fit`` starts
  afresh, so one script serves the first launch and every relaunch of a preempted job. The data
  and every setting but those of :data:`CHANGEABLE` must be the checkpoint's (``max_iter`` may
  grow); otherwise ``fit`` raises ValueError naming what differs.

Resuming is for a fit that starts afresh (a new estimator, or ``warm_start=False``): a
warm-started call on a fitted estimator goes on from the estimator's own state and writes its own
checkpoints. Only ``fit`` with solver "sgd" or "adam" checkpoints: ``partial_fit`` (the caller owns the loop:
pickle the estimator or :meth:`save` it) and lbfgs (scipy's run cannot be resumed midway) refuse
a ``checkpoint``. Data parallel, rank 0 writes the file and every rank resumes from it (it must be
on a file system they share): rank 0 decides whether to resume, a rank that cannot read the file
stops every rank, and so does a write that fails on rank 0. A Ctrl-C or a kill leaves the last checkpoint whole; the resumed
fit redoes the iterations after it.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
from scipy import sparse

from .atomic_file import unwritable
from .backend import to_numpy
from .communicator import SingleProcess, failing_together
from .container import model_block, read, write
from .optim import restore_state
from .rows import HostRows, fingerprint

KIND = "estimator_checkpoint"
# Settings a resumed fit may change; every other one must equal the checkpoint's. random_state
# drew only what the checkpoint holds (initial weights, split, orders); dtype is compared as the
# network's (the model block), since None means float32 or float64 by the data.
CHANGEABLE = ("verbose", "max_iter", "warm_start", "device", "checkpoint", "checkpoint_every", "resume",
              "random_state", "dtype", "cuda_graph")
# Fitted records stored as they are (JSON) and restored on resume.
_RECORDS = ("n_iter_", "t_", "loss_", "best_loss_", "loss_curve_", "validation_loss_curve_", "validation_scores_",
            "best_validation_score_", "_no_improvement_count")


def json_params(estimator) -> dict:
    """The estimator's constructor arguments as JSON values, for its saved files: a RandomState
    object, a class_weight dict and a path become None, the hidden widths ints, a dtype its name."""
    params = dict(estimator.get_params())
    if not (params["random_state"] is None or isinstance(params["random_state"], numbers.Integral)):
        params["random_state"] = None  # a RandomState object cannot be stored without pickle
    sizes = params["hidden_layer_sizes"]
    params["hidden_layer_sizes"] = int(sizes) if isinstance(sizes, numbers.Integral) else [int(s) for s in sizes]
    if params["dtype"] is not None:
        params["dtype"] = np.dtype(params["dtype"]).name
    if isinstance(params.get("class_weight"), dict):
        params["class_weight"] = None  # keys may not be JSON; the weights are baked into the fit
    if params.get("checkpoint") is not None:
        params["checkpoint"] = str(params["checkpoint"])
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in params.items()}


def data_fingerprint(X, Y, sample_weight, validation_data) -> dict:
    """What a resumed fit must train on, by :func:`gpubp.rows.fingerprint`: ``{"training": ...}``
    for X (n, d) dense or sparse, the targets Y (n, k) and the weights (n,) or None, and
    ``"validation"`` for the pair ``validation_data`` (X_val, y_val) given to fit, or None."""
    digests = {"training": fingerprint(HostRows(X) if sparse.issparse(X) else X, Y, X.dtype, sample_weight),
               "validation": None}
    if validation_data is not None:
        Xv, yv = validation_data[0], np.asarray(validation_data[1])
        yv = yv.astype(str) if yv.dtype.hasobject else yv
        digests["validation"] = fingerprint(HostRows(Xv) if sparse.issparse(Xv) else np.asarray(Xv), yv, X.dtype)
    return digests


class FitCheckpoints:
    """Writing and resuming the estimators' fit checkpoints (a mixin of gpubp.estimator_base.BaseMLP)."""

    def _check_checkpointing(self, incremental: bool) -> None:
        """Refuse what cannot checkpoint, before anything is fitted."""
        if self.checkpoint is None:
            if self.resume:
                raise ValueError("resume=True needs checkpoint=<path of the checkpoint to resume>")
            return
        if incremental:
            raise ValueError("partial_fit does not write checkpoints (checkpoint is for fit): pickle the estimator "
                             "or save() it between partial_fit calls, or set checkpoint=None")
        if self.solver not in ("sgd", "adam"):
            raise ValueError(f"checkpoint needs solver 'sgd' or 'adam': scipy's {self.solver} run cannot be resumed "
                             "midway; set checkpoint=None")
        problem = unwritable(self.checkpoint)
        if problem is not None:
            raise ValueError(f"checkpoint={str(self.checkpoint)!r}: {problem}")

    def _read_resumable(self, net, digests: dict, fresh: bool, comm):
        """The checkpoint to resume (its Contents), checked against this fit, or None: resume off,
        a warm-started call on a fitted estimator (``fresh`` False: it goes on from its own state),
        or no file yet (rank 0's view, data parallel). A rank that fails the checks stops every rank."""
        exists = self.resume and fresh and Path(self.checkpoint).is_file()
        if comm is not None:
            exists = comm.bcast_object(exists)  # every rank resumes, or none: a rank without the file fails
        if not exists:
            return None
        with failing_together(comm or SingleProcess()):
            saved = read(self.checkpoint, KIND)
            meta = saved.meta
            _check_same(self.checkpoint, "settings", _comparable(meta["params"]), _comparable(json_params(self)))
            _check_same(self.checkpoint, "network", meta["model"], model_block(net))
            for part in ("training", "validation"):
                if meta["data"][part] != digests[part]:
                    raise ValueError(f"the {part} data differ from those {self.checkpoint} was fitted on")
            if meta["records"]["n_iter_"] > self.max_iter:
                raise ValueError(f"{self.checkpoint} has fitted {meta['records']['n_iter_']} iterations, more than "
                                 f"max_iter={self.max_iter}")
        return saved

    def _restore_fit(self, saved, net, plan) -> bool:
        """Put the state of checkpoint ``saved`` into this estimator, ``net`` and ``plan``; returns
        whether that fit had stopped."""
        meta, arrays = saved.meta, saved.arrays
        net.set_params(saved.params)
        self._opt_state = restore_state(self._optimizer, saved.prefixed("opt_"), meta["optimizer_t"], net.flat_params)
        self._lr.value = meta["learning_rate"]
        for name in _RECORDS:
            setattr(self, name, meta["records"][name])
        best = saved.prefixed("best_")
        if best:
            self._best_params = [net.backend.asarray(best[str(i)], net.dtype) for i in range(len(best))]
        self._best_is_live = not best
        self._random_state.set_state(("MT19937", arrays["rng_keys"], *meta["rng"]))
        plan.sample_idx = arrays["order"].astype(int)
        return bool(meta["finished"])

    def _write_fit_checkpoint(self, net, plan, finished: bool) -> None:
        """Write the fit's state after an iteration (rank 0 only; every rank returns once it is
        written, and every rank raises when it could not be)."""
        with failing_together(plan.comm or SingleProcess(), "writing a checkpoint"):
            if plan.comm is None or plan.comm.rank == 0:
                self._write_state(net, plan, finished)

    def _write_state(self, net, plan, finished: bool) -> None:
        """The file itself: meta (settings, records, scalars) and arrays (parameters, state)."""
        _, keys, *rng = self._random_state.get_state()
        meta = {"model": model_block(net), "estimator": type(self).__name__, "params": json_params(self),
                "data": plan.digests, "finished": bool(finished), "optimizer_t": self._opt_state.t,
                "learning_rate": float(self._lr.value), "rng": [int(rng[0]), int(rng[1]), float(rng[2])],
                "records": {name: jsonable(getattr(self, name)) for name in _RECORDS}}
        arrays = {f"param_{i}": to_numpy(p) for i, p in enumerate(net.params)}
        arrays.update({f"opt_{k}": to_numpy(v) for k, v in self._opt_state.arrays.items()})
        if self.early_stopping and not self._best_is_live:
            arrays.update({f"best_{i}": to_numpy(p) for i, p in enumerate(self._best_params)})
        arrays.update(rng_keys=keys, order=np.asarray(plan.sample_idx))
        if plan.split is not None:
            arrays.update(split_train=plan.split[0], split_val=plan.split[1])
        write(self.checkpoint, KIND, meta, arrays)


def _comparable(params: dict) -> dict:
    """Settings as a resumed fit compares them: those of CHANGEABLE left out, widths as a list."""
    params = {k: v for k, v in params.items() if k not in CHANGEABLE}
    sizes = params["hidden_layer_sizes"]
    params["hidden_layer_sizes"] = [sizes] if isinstance(sizes, int) else list(sizes)
    return params


def _check_same(path, what: str, theirs: dict, mine: dict) -> None:
    """ValueError naming each key of ``mine`` whose value differs from the checkpoint's."""
    changed = [f"{k}={theirs.get(k)!r} there, {v!r} here" for k, v in mine.items() if theirs.get(k) != v]
    if changed:
        raise ValueError(f"resuming {path} needs its {what}: " + "; ".join(changed))


def jsonable(value):
    """A fitted record as JSON: NumPy scalars and arrays as Python numbers and lists (inf kept)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
