"""How gpubp.MLPClassifier and gpubp.MLPRegressor fit: scikit-learn's training algorithm (batch
order, SGD schedules and Adam, stopping rules, lbfgs) on gpubp's MLP.

The stochastic solvers run on the shared loop (:class:`gpubp.engine.Engine`) with scikit-learn's
policies (:class:`_SklearnEpochs`): each epoch's order is ``sklearn.utils.shuffle`` of the previous
one with the estimator's random state; the learning rate is constant through an epoch and changes
between epochs (invscaling) or when the loss stalls (adaptive); an epoch ends with scikit-learn's
records, messages and stopping rule (``tol``, ``n_iter_no_change``, early stopping on the
validation score); Ctrl-C ends training with scikit-learn's "Training interrupted by user."
warning, keeping the parameters. From the engine the estimators get the batches (resident, or
streamed when the data do not fit on the device or are sparse), out-of-memory reported as
:class:`gpubp.DeviceMemoryError` with a batch size that fits, and parameters that became NaN or
infinite found at the end of the epoch where it happened (scikit-learn finds them after the
last epoch; the error is its ValueError, naming the epoch and step).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import sparse
from sklearn.base import is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import gen_batches, shuffle
from sklearn.utils.validation import validate_data

from .backend import backend_for
from .batches import batch_feed
from .communicator import failing_together
from .bfloat16 import network_dtype
from .engine import Engine
from .estimator_checkpoint import data_fingerprint
from .estimator_data import PREDICT_BATCH, cast_in_range, check_batch_weights, dense, host_targets
from .estimator_lbfgs import LbfgsFit
from .optim import SGD, Adam, restore_state
from .rows import HostRows

STOCHASTIC = ("sgd", "adam")
NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and need to "
              "be preprocessed.")


class AgreedStop(KeyboardInterrupt):
    """A data-parallel fit's stop signal, agreed by every rank after the same step: fit ends as on
    scikit-learn's KeyboardInterrupt. Any other KeyboardInterrupt there is one rank's alone."""


class _LearningRate:
    """scikit-learn's learning-rate bookkeeping for SGD (constant, invscaling, adaptive) and Adam."""

    def __init__(self, solver: str, schedule: str, init: float, power_t: float):
        self.solver, self.schedule, self.init, self.power_t = solver, schedule, init, power_t
        self.value = init

    def iteration_ends(self, time_step: int) -> None:
        if self.solver == "sgd" and self.schedule == "invscaling":
            self.value = float(self.init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg: str, verbose) -> bool:
        """True to stop; adaptive SGD divides the rate by 5 instead while it is above 1e-6."""
        if self.solver != "sgd" or self.schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.value <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.value /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % self.value)
        return False


class _SklearnEpochs:
    """scikit-learn's policies for the engine (a :class:`gpubp.engine.Plan`)."""

    def __init__(self, estimator, net, n_samples: int, batch_size: int, sample_weight, incremental: bool,
                 validation, comm=None):
        self.comm = comm
        self.estimator, self.net, self.n_samples, self.batch_size = estimator, net, n_samples, batch_size
        self.sample_weight, self.incremental, self.validation = sample_weight, incremental, validation
        self.epochs = 1 if incremental else estimator.max_iter
        self.sample_idx = np.arange(n_samples, dtype=int)
        self.digests, self.split = None, None  # for a checkpoint: the data's fingerprints, the held-out split
        self.talks = comm is None or comm.rank == 0  # prints its messages and warnings

    def order(self, epoch: int) -> np.ndarray:
        est = self.estimator
        if est.shuffle:
            self.sample_idx = shuffle(self.sample_idx, random_state=est._random_state)
        check_batch_weights(self.sample_weight, self.sample_idx, self.batch_size)
        return self.sample_idx

    def rate(self, step: int) -> float:
        return self.estimator._lr.value

    def end_epoch(self, epoch: int, train_loss: float, started: float) -> bool:
        """scikit-learn's end of an iteration, then the checkpoint when one is due; data parallel,
        the ranks stop together."""
        halt = self._end_iteration(train_loss)
        if self.comm is not None:
            halt = self.comm.allreduce_scalar(halt, "any")
        est = self.estimator
        if est.checkpoint is not None and (halt or epoch % est.checkpoint_every == 0 or epoch == self.epochs):
            est._write_fit_checkpoint(self.net, self, finished=halt)
        return halt

    def _agreed(self, compute):
        """``compute()``; data parallel, rank 0's, given to every rank (cards that round differently must
        not decide apart); when it raises there, every rank raises (none is left waiting for it)."""
        if self.comm is None:
            return compute()
        with failing_together(self.comm, "scoring the validation set"):
            value = compute() if self.comm.rank == 0 else None
        return self.comm.bcast_object(value)

    def _end_iteration(self, train_loss: float) -> bool:
        """scikit-learn's end of an iteration: records, messages, stopping rule, warning."""
        est = self.estimator
        est.n_iter_ += 1
        est.loss_ = train_loss
        est.t_ += self.n_samples
        est.loss_curve_.append(est.loss_)
        verbose = est.verbose if self.talks else False  # data parallel, rank 0 alone prints and warns
        if verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        if self.validation is not None:
            est.validation_loss_curve_.append(self._agreed(lambda: est._validation_loss(self.net, *self.validation)))
        est._update_no_improvement_count(self.net, *(self.validation or (None, None, None)), verbose, self._agreed)
        est._lr.iteration_ends(est.t_)
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if est.early_stopping else "Training loss"
            msg = f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change:d} consecutive epochs."
            if est._lr.trigger_stopping(msg, verbose):
                return True
            est._no_improvement_count = 0
        if self.incremental:
            return True
        if est.n_iter_ == est.max_iter and self.talks:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({est.max_iter:d}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning)
        return False

    def interrupted(self, signum: int, epoch: int) -> None:  # data parallel only: the engine caught the signal
        raise AgreedStop  # every rank, after the same step

    def diverged(self, epoch: int, step: int, what: str) -> Exception | None:
        """scikit-learn's error for non-finite parameters, at once; a non-finite loss alone goes on."""
        if what == "the loss":
            return None
        return ValueError(f"{NON_FINITE} (They became NaN or infinite in iteration {epoch}, step {step}.)")


class StochasticFit(LbfgsFit):
    """The fitting half of the estimators (a mixin of gpubp.estimator_base.BaseMLP)."""

    def _fit_stochastic(self, net, X, Y, sample_weight, incremental, validation_data, comm=None, fresh=True):
        """The sgd and adam fit on the engine; ``fresh``: the parameters were drawn afresh for this
        call (a warm-started call on a fitted estimator does not resume a checkpoint)."""
        digests = None if self.checkpoint is None else data_fingerprint(X, Y, sample_weight, validation_data)
        saved = None if digests is None else self._read_resumable(net, digests, fresh, comm)
        self._start_optimizer(net, incremental)
        if self._best_is_live:
            self._best_params = net.params  # the network may have been made again (device, dtype)
        stored = None if saved is None or "split_train" not in saved.arrays else (
            saved.arrays["split_train"], saved.arrays["split_val"])
        X, Y, sample_weight, *validation, split = self._split_validation(X, Y, sample_weight, validation_data, stored)
        batch_size = self._batch_size(X.shape[0], comm is None or comm.rank == 0)
        rows = HostRows(X) if sparse.issparse(X) else np.asarray(X, dtype=net.dtype)  # sparse: densified per batch
        part = (0, 1) if comm is None else (comm.rank, comm.size)  # data parallel: this rank's share of each batch
        feed = batch_feed(net.backend, rows, host_targets(net, Y), batch_size, net.dtype, False, part, sample_weight,
                          net.compute_dtype)
        plan = _SklearnEpochs(self, net, X.shape[0], batch_size, sample_weight, incremental,
                              validation if validation[0] is not None else None, comm)
        plan.digests, plan.split = digests, split
        self.n_iter_ = 0
        finished = saved is not None and self._restore_fit(saved, net, plan)
        graphs = getattr(self, "_graphs", None)  # a partial_fit's graphs, replayed by the next call on this network
        engine = Engine(net, self._optimizer, comm, loss_scale=self._loss_scale(net), opt_state=self._opt_state,
                        cuda_graph=self.cuda_graph, graphs=graphs if graphs is not None and graphs.net is net else None)
        self._graphs = engine.graphed if incremental else None  # a fit's graphs and their memory go with it
        engine.progress.epoch = self.n_iter_  # resumed: the iterations already done
        try:  # data parallel, a signal stops every rank after the same step (the engine's agreement)
            if not finished:
                engine.run(feed, plan, bar=plan.talks and bool(self.verbose) and self.verbose >= 2,
                           signals=comm is not None)
        except KeyboardInterrupt as stop:
            if comm is not None and not isinstance(stop, AgreedStop):
                raise  # one rank's own (a second signal): caught, the others would wait for it for ever
            if plan.talks:
                warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            self._restore_best(net)

    def _make_optimizer(self):
        if self.solver == "adam":
            return Adam(self.beta_1, self.beta_2, self.epsilon)
        nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
        return SGD(self.momentum, nesterov)

    def _start_optimizer(self, net, incremental) -> None:
        """A fresh optimizer, state and learning rate; or for partial_fit the running ones, the
        state moved next to the network's parameters (it may come from a pickle, on the host, or
        from a fit on another device)."""
        if not incremental or self._optimizer is None:
            self._optimizer, self._opt_state = self._make_optimizer(), None
            self._lr = _LearningRate(self.solver, self.learning_rate, self.learning_rate_init, self.power_t)
        state, p = self._opt_state, net.flat_params
        if state is None:
            self._opt_state = self._optimizer.init(p)
        elif any(backend_for(a) is not net.backend or a.dtype != p.dtype for a in state.arrays.values()):
            self._opt_state = restore_state(self._optimizer, state.arrays, state.t, p)  # moved, not copied each call

    def _batch_size(self, n_samples: int, talks: bool = True) -> int:
        """scikit-learn's batch size: "auto" is min(200, n), a larger one is clipped with a warning
        (``talks``: this process warns; data parallel, rank 0 alone)."""
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples and talks:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n_samples))

    def _split_validation(self, X, Y, sample_weight, validation_data, stored=None):
        """(X, Y, sample_weight, X_val, y_val, w_val, split): the validation set given, or held out
        for early stopping as scikit-learn holds it out (``stored``: a resumed fit's split), or
        None three times; ``split`` is the held-out split as (training rows, validation rows)."""
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, accept_sparse=["csr", "csc"], dtype=(np.float64, np.float32), reset=False)
            Xv = cast_in_range(Xv, X.dtype, network_dtype(self.dtype, X.dtype), "X_val")
            return X, Y, sample_weight, Xv, np.asarray(yv), None, None
        if not self.early_stopping:
            return X, Y, sample_weight, None, None, None, None
        if self.validation_fraction == 0:  # scikit-learn fails here too, naming its test_size
            raise ValueError("validation_fraction=0.0 leaves no validation set for early_stopping=True; "
                             "give a fraction in (0, 1) or set early_stopping=False")
        if stored is None:  # the rows train_test_split(X, Y, ...) would pick, with the same draws
            stratify = Y if is_classifier(self) and self.n_outputs_ == 1 else None
            stored = train_test_split(np.arange(X.shape[0]), random_state=self._random_state,
                                      test_size=self.validation_fraction, stratify=stratify)
        train, val = stored
        if val.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        Xv, Yv, wv = X[val], Y[val], None if sample_weight is None else sample_weight[val]
        X, Y, sample_weight = X[train], Y[train], None if sample_weight is None else sample_weight[train]
        yv = self._label_binarizer.inverse_transform(Yv) if is_classifier(self) else Yv
        if not is_classifier(self) and self.n_outputs_ == 1:
            yv = yv.ravel()
        return X, Y, sample_weight, Xv, yv, wv, (train, val)

    def _restore_best(self, net) -> None:
        """End an early-stopping fit on the best parameters seen, as scikit-learn does.

        scikit-learn's coefs_ then *are* its saved best (the same arrays), so the best moves with
        further training: a warm-started fit that beats no earlier score ends on its last
        parameters. ``_best_is_live`` says so here, ``_best_params`` then being ``net.params``."""
        if not self._best_is_live:
            net.set_params(self._best_params)
        self._best_params, self._best_is_live = net.params, True

    def _update_no_improvement_count(self, net, Xv, yv, wv, verbose, agreed=lambda compute: compute()):
        if self.early_stopping:
            score = agreed(lambda: self._score(net, Xv, yv, wv))
            self.validation_scores_.append(score)
            if verbose:
                print("Validation score: %f" % score)
            if score < self.best_validation_score_ + self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_params, self._best_is_live = net.get_params(), False
        else:
            if self.loss_curve_[-1] > self.best_loss_ - self.tol:
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if self.loss_curve_[-1] < self.best_loss_:
                self.best_loss_ = self.loss_curve_[-1]

    def _validation_loss(self, net, Xv, yv, wv) -> float:
        """The loss of the validation set as the training loss is reported: the data part's mean
        over its rows (weighted by wv), taken chunk by chunk, plus the L2 term once, alpha / (2 n)
        ||W||^2 with n the rows (or their summed weight) of the whole set."""
        Yv = self._targets(yv)
        loss_sum, n = 0.0, 0.0
        for batch in gen_batches(Xv.shape[0], PREDICT_BATCH):
            Xb = net.backend.asarray(dense(Xv[batch]), net.dtype)
            Yb = net.backend.asarray(host_targets(net, Yv[batch]))
            wb = None if wv is None else net.backend.asarray(wv[batch], net.dtype)
            loss, _ = net.flat_loss_and_grad(Xb, Yb, wb, l2=False)
            weight = (batch.stop - batch.start) if wv is None else float(wv[batch].sum())
            loss_sum, n = loss_sum + float(loss) * weight, n + weight
        l2 = float(net.l2_loss(net.l2_scale(n))) if net.alpha else 0.0
        return loss_sum * self._loss_scale(net) / n + l2
