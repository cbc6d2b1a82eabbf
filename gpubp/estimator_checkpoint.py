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

Only ``fit`` with solver "sgd" or "adam" checkpoints: ``partial_fit`` (the caller owns the loop:
pickle the estimator or :meth:`save` it) and lbfgs (scipy's run cannot be resumed midway) refuse
a ``checkpoint``. Data parallel, rank 0 writes the file and every rank resumes from it (it must be
on a file system they share). A Ctrl-C or a kill leaves the last checkpoint whole; the resumed
fit redoes the iterations after it.
"""

from __future__ import annotations

import numbers
from pathlib import Path

import numpy as np
from scipy import sparse

from .backend import to_numpy
from .communicator import SingleProcess, failing_together
from .container import model_block, read, write
from .optim import restore_state
from .rows import HostRows, fingerprint

KIND = "estimator_checkpoint"
# Settings a resumed fit may change; every other one must equal the checkpoint's.
CHANGEABLE = ("verbose", "max_iter", "warm_start", "device", "checkpoint", "checkpoint_every", "resume")
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


def data_fingerprint(X, Y, sample_weight, validation) -> str:
    """What a resumed fit must train on: X (n, d) dense or sparse, Y (n, k), weights and the
    validation pair (X_val, y_val, w_val) or None, by :func:`gpubp.rows.fingerprint`."""
    digest = fingerprint(HostRows(X) if sparse.issparse(X) else X, Y, X.dtype, sample_weight)
    if validation is None:
        return digest
    Xv, yv = validation[0], np.asarray(validation[1])
    yv = yv.astype(str) if yv.dtype.hasobject else yv
    return digest + "|val:" + fingerprint(HostRows(Xv) if sparse.issparse(Xv) else Xv, yv, X.dtype, validation[2])


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
        if not Path(self.checkpoint).parent.is_dir():
            raise ValueError(f"checkpoint={str(self.checkpoint)!r}: folder {Path(self.checkpoint).parent} does not exist")

    def _read_resumable(self, net, digest: str, comm):
        """The checkpoint to resume (its Contents), checked against this fit, or None (resume off, or
        no file yet). Data parallel, a rank that fails the checks stops every rank."""
        if not self.resume or not Path(self.checkpoint).is_file():
            return None
        with failing_together(comm or SingleProcess()):
            saved = read(self.checkpoint, KIND)
            meta, mine = saved.meta, json_params(self)
            changed = [f"{k}={meta['params'].get(k)!r} there, {v!r} here" for k, v in mine.items()
                       if k not in CHANGEABLE and meta["params"].get(k) != v]
            if changed:
                raise ValueError(f"resuming {self.checkpoint} needs its settings: " + "; ".join(changed))
            if meta["model"] != model_block(net):  # the same settings, other data: features or outputs
                raise ValueError(f"{self.checkpoint} holds the network {meta['model']}, not {model_block(net)}")
            if meta["data"] != digest:
                raise ValueError(f"the training data differ from those {self.checkpoint} was fitted on")
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
        """Write the fit's state after an iteration (rank 0 only; every rank returns once it is written)."""
        if plan.comm is None or plan.comm.rank == 0:
            _, keys, *rng = self._random_state.get_state()
            meta = {"model": model_block(net), "estimator": type(self).__name__, "params": json_params(self),
                    "data": plan.digest, "finished": bool(finished), "optimizer_t": self._opt_state.t,
                    "learning_rate": float(self._lr.value), "rng": [int(rng[0]), int(rng[1]), float(rng[2])],
                    "records": {name: jsonable(getattr(self, name)) for name in _RECORDS}}
            arrays = {f"param_{i}": to_numpy(p) for i, p in enumerate(net.params)}
            arrays.update({f"opt_{k}": to_numpy(v) for k, v in self._opt_state.arrays.items()})
            if not self._best_is_live:
                arrays.update({f"best_{i}": to_numpy(p) for i, p in enumerate(self._best_params)})
            arrays.update(rng_keys=keys, order=np.asarray(plan.sample_idx))
            if plan.split is not None:
                arrays.update(split_train=plan.split[0], split_val=plan.split[1])
            write(self.checkpoint, KIND, meta, arrays)
        if plan.comm is not None:
            plan.comm.barrier()


def jsonable(value):
    """A fitted record as JSON: NumPy scalars and arrays as Python numbers and lists (inf kept)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value
