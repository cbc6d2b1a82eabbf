"""The shared machinery of gpubp.MLPClassifier and gpubp.MLPRegressor: scikit-learn's training
algorithm (initial stream, batch order, SGD schedules and Adam, stopping rules, lbfgs) on gpubp's
MLP, device placement, batched prediction, pickling and saving. See gpubp.estimators."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import scipy.optimize
from scipy import sparse
from sklearn import get_config
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, gen_batches, shuffle
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_array, check_is_fitted, validate_data
from tqdm.auto import tqdm

from .estimator_params import PARAMETER_CONSTRAINTS
from .backend import backend_for, get_backend, to_numpy
from .container import model_block, write
from .mlp import MLP
from .optim import SGD, Adam, optimizer_from_state

_STOCHASTIC = ("sgd", "adam")
_ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_PREDICT_BATCH = 4096  # rows per device batch in predict


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


class BaseMLP(BaseEstimator):
    """Shared fitting and prediction of MLPClassifier and MLPRegressor."""

    _parameter_constraints: dict = PARAMETER_CONSTRAINTS
    # An estimator that load_estimator made holds its best parameters as coefs_ (see _restore_best).
    _best_is_live = True

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None, tf32=False):
        self._store(locals())

    def _store(self, arguments: dict) -> None:
        """Keep every constructor argument as the attribute of the same name (scikit-learn's rule:
        get_params reads them back by the constructor's signature)."""
        for name, value in arguments.items():
            if name != "self":
                setattr(self, name, value)

    # ------------------------------------------------------------------ parameters

    def _check_params(self) -> list[int]:
        """Check every setting once, as scikit-learn does at fit; returns the hidden widths.

        scikit-learn's own constraint checker runs on scikit-learn's constraints, so a bad value
        raises the same InvalidParameterError (a ValueError and a TypeError) with the same words."""
        if not get_config()["skip_parameter_validation"]:
            self._validate_params()
        sizes = self.hidden_layer_sizes
        sizes = list(sizes) if hasattr(sizes, "__iter__") else [sizes]
        if np.any(np.array(sizes) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {sizes}.")
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, (bool, np.bool_)) for s in sizes):
            # scikit-learn fails here too, with NumPy's TypeError when it makes the weights
            raise TypeError(f"hidden_layer_sizes must hold ints, got {self.hidden_layer_sizes!r}.")
        if self.dtype not in (None, "float32", "float64", np.float32, np.float64):
            raise InvalidParameterError(f"The 'dtype' parameter of {type(self).__name__} must be None, 'float32' "
                                        f"or 'float64'. Got {self.dtype!r} instead.")
        get_backend(self.device)  # unknown names and an unusable "cuda" fail here, with the reason
        return [int(s) for s in sizes]

    def _check_solver(self):
        if self.solver not in _STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not "
                                 "stochastic.")
        return True

    # ------------------------------------------------------------------ fitting

    def _fit(self, X, y, sample_weight=None, incremental=False, validation_data=None):
        hidden = self._check_params()
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if self.dtype is not None:
            X = X.astype(self.dtype)
        if self.tf32 and X.dtype != np.float32:
            raise ValueError(f"tf32=True needs float32 (TF32 rounds float32 inputs), but this fit runs in "
                             f"{X.dtype.name}: pass dtype='float32' or float32 X")
        n_samples, n_features = X.shape
        sample_weight = self._sample_weight(sample_weight, n_samples, X.dtype)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        self.n_outputs_ = Y.shape[1]
        layer_units = [n_features, *hidden, self.n_outputs_]
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(layer_units, X.dtype)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        Y = _float_targets(self, Y, X.dtype)
        net = self._network(X.dtype)
        if self.solver in _STOCHASTIC:
            self._fit_stochastic(net, X, Y, sample_weight, incremental, validation_data)
        else:
            self._fit_lbfgs(net, X, Y, sample_weight)
        self._sync_from(net)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")
        return self

    def _sample_weight(self, sample_weight, n_samples, dtype):
        """Sample weights (n_samples,) in dtype, or None, checked by scikit-learn's rules and in its
        words: a number or a 1-d array of finite numbers, not all zero (negative ones are allowed)."""
        if sample_weight is None:
            return None
        if isinstance(sample_weight, numbers.Number):
            sample_weight = np.full(n_samples, sample_weight)
        else:
            sample_weight = check_array(sample_weight, accept_sparse=False, ensure_2d=False,
                                        dtype=[np.float64, np.float32], order="C", input_name="sample_weight")
            if sample_weight.ndim != 1:
                raise ValueError(f"Sample weights must be 1D array or scalar, got {sample_weight.ndim}D array. "
                                 f"Expected either a scalar value or a 1D array of length {n_samples}.")
            if sample_weight.shape != (n_samples,):
                raise ValueError(f"sample_weight.shape == {sample_weight.shape}, expected {(n_samples,)}!")
        if np.all(sample_weight == 0):
            raise ValueError("Sample weights must contain at least one non-zero number.")
        return sample_weight.astype(dtype, copy=False)

    def _initialize(self, layer_units, dtype):
        """Fresh parameters from scikit-learn's stream and bounds, and empty training records."""
        self.n_iter_ = 0
        self.t_ = 0
        self.n_layers_ = len(layer_units)
        self.out_activation_ = self._out_activation()
        self.coefs_, self.intercepts_ = [], []
        factor = 2.0 if self.activation == "logistic" else 6.0
        for fan_in, fan_out in zip(layer_units[:-1], layer_units[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype, copy=False))
            self.intercepts_.append(self._random_state.uniform(-bound, bound, fan_out).astype(dtype, copy=False))
        self._net = None
        self._optimizer = None
        self._lr = None
        self._best_params, self._best_is_live = None, False
        if self.solver in _STOCHASTIC:
            self._best_params = [p.copy() for p in self.coefs_ + self.intercepts_]  # restored if never beaten
            self.loss_curve_ = []
            self.validation_loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _network(self, dtype=None):
        """The MLP on the device holding coefs_ and intercepts_ (made again when they changed)."""
        dtype = np.dtype(dtype or self.coefs_[0].dtype)
        net, backend = getattr(self, "_net", None), get_backend(self.device)
        stale = net is None or net.dtype != dtype or net.backend is not backend or net.tf32 != bool(self.tf32)
        if stale or getattr(self, "_net_source", None) is not self.coefs_:
            sizes = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            net = MLP(sizes, _ACTIVATION_NAMES[self.activation], backend, dtype.name, alpha=self.alpha,
                      output=self.out_activation_, tf32=bool(self.tf32))
            net.set_params(list(self.coefs_) + list(self.intercepts_))
            self._net, self._net_source = net, self.coefs_
        net.alpha = float(self.alpha)
        return net

    def _sync_from(self, net) -> None:
        """Host copies of the device parameters in coefs_ and intercepts_."""
        L = len(net.weights)
        host = [to_numpy(p) for p in net.params]
        self.coefs_, self.intercepts_ = host[:L], host[L:]
        self._net_source = self.coefs_

    def _batch_loss(self, net, Xb, Yb, wb):
        """Loss as scikit-learn reports it and the flat gradient (n_params,) as scikit-learn
        computes it, in the layout of net.flat_params (scikit-learn's packing: weights, then biases)."""
        loss, g = net.flat_loss_and_grad(Xb, Yb, wb)
        if net.output == "identity" and self.n_outputs_ > 1:
            # scikit-learn's squared loss averages over the outputs; its gradient does not
            n = Xb.shape[0] if wb is None else float(wb.sum())
            l2 = (self.alpha / (2 * n)) * sum(net.xp.vdot(W, W) for W in net.weights)
            loss = (loss - l2) / self.n_outputs_ + l2
        return loss, g

    def _make_optimizer(self):
        if self.solver == "adam":
            return Adam(self.beta_1, self.beta_2, self.epsilon)
        nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
        return SGD(self.momentum, nesterov)

    def _split_validation(self, X, Y, sample_weight, validation_data):
        if validation_data is not None:
            Xv, yv = validation_data
            Xv = validate_data(self, Xv, accept_sparse=["csr", "csc"], dtype=X.dtype, reset=False)
            return X, Y, sample_weight, Xv, np.asarray(yv), None
        if not self.early_stopping:
            return X, Y, sample_weight, None, None, None
        if self.validation_fraction == 0:  # scikit-learn fails here too, naming its test_size
            raise ValueError("validation_fraction=0.0 leaves no validation set for early_stopping=True; "
                             "give a fraction in (0, 1) or set early_stopping=False")
        stratify = Y if is_classifier(self) and self.n_outputs_ == 1 else None
        arrays = (X, Y) if sample_weight is None else (X, Y, sample_weight)
        parts = train_test_split(*arrays, random_state=self._random_state,
                                 test_size=self.validation_fraction, stratify=stratify)
        X, Xv, Y, Yv = parts[:4]
        sample_weight, wv = (parts[4], parts[5]) if sample_weight is not None else (None, None)
        if Xv.shape[0] < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             "your dataset.")
        yv = self._label_binarizer.inverse_transform(Yv) if is_classifier(self) else Yv
        if not is_classifier(self) and self.n_outputs_ == 1:
            yv = yv.ravel()
        return X, Y, sample_weight, Xv, yv, wv

    def _start_optimizer(self, net, incremental) -> None:
        """A fresh optimizer and schedule, or for partial_fit the running ones (also after a pickle
        or a change of device), holding state on the network's device."""
        saved = self.__dict__.pop("_optimizer_state", None)  # left by unpickling
        if incremental and self._optimizer is None and saved is not None:
            self._optimizer = optimizer_from_state(saved[0])
            self._optimizer.load_state(saved[1], [net.flat_params])
        if not incremental or self._optimizer is None:
            self._optimizer = self._make_optimizer()
            self._lr = _LearningRate(self.solver, self.learning_rate, self.learning_rate_init, self.power_t)
        state = self._optimizer.state()[1]
        if any(backend_for(a) is not net.backend for a in state.values()):  # device changed since the last fit
            self._optimizer.load_state(state, [net.flat_params])

    def _batch_size(self, n_samples: int) -> int:
        """scikit-learn's batch size: "auto" is min(200, n), a larger one is clipped with a warning."""
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped")
        return int(np.clip(self.batch_size, 1, n_samples))

    def _fit_stochastic(self, net, X, Y, sample_weight, incremental, validation_data):
        backend = net.backend
        self._start_optimizer(net, incremental)
        if self._best_is_live:
            self._best_params = net.params  # the network may have been made again (device, dtype)
        X, Y, sample_weight, Xv, yv, wv = self._split_validation(X, Y, sample_weight, validation_data)
        n_samples = X.shape[0]
        batch_size = self._batch_size(n_samples)
        on_device = not sparse.issparse(X) and backend.fits(X.nbytes)
        Xd = backend.asarray(X, net.dtype) if on_device else X
        Yd = _device_targets(net, Y)
        wd = None if sample_weight is None else backend.asarray(sample_weight, net.dtype)
        sample_idx = np.arange(n_samples, dtype=int)
        try:
            self.n_iter_ = 0
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffle(sample_idx, random_state=self._random_state)
                idx_dev = backend.asarray(sample_idx)
                _check_batch_weights(sample_weight, sample_idx, batch_size)
                accumulated = 0.0
                bar = tqdm(total=-(-n_samples // batch_size), leave=False, disable=not self.verbose or self.verbose < 2)
                for batch in gen_batches(n_samples, batch_size):
                    rows, rows_host = (idx_dev[batch], sample_idx[batch]) if self.shuffle else (batch, batch)
                    Xb = Xd[rows] if on_device else backend.asarray(_dense(X[rows_host]), net.dtype)
                    loss, g = self._batch_loss(net, Xb, Yd[rows], None if wd is None else wd[rows])
                    accumulated = accumulated + loss * (batch.stop - batch.start)
                    self._optimizer.step([net.flat_params], [g], self._lr.value)  # every parameter in one pass
                    bar.update()
                bar.close()
                self.n_iter_ += 1
                self.loss_ = float(accumulated) / n_samples
                self.t_ += n_samples
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print("Iteration %d, loss = %.8f" % (self.n_iter_, self.loss_))
                if Xv is not None:
                    self.validation_loss_curve_.append(self._validation_loss(net, Xv, yv, wv))
                self._update_no_improvement_count(net, Xv, yv, wv)
                self._lr.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    msg = (f"{what} did not improve more than tol={self.tol:f} for "
                           f"{self.n_iter_no_change:d} consecutive epochs.")
                    if self._lr.trigger_stopping(msg, self.verbose):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter:d}) reached and the "
                                  "optimization hasn't converged yet.", ConvergenceWarning)
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.")
        if self.early_stopping:
            self._restore_best(net)

    def _restore_best(self, net) -> None:
        """End an early-stopping fit on the best parameters seen, as scikit-learn does.

        scikit-learn's coefs_ then *are* its saved best (the same arrays), so the best moves with
        further training: a warm-started fit that beats no earlier score ends on its last
        parameters. ``_best_is_live`` says so here, ``_best_params`` then being ``net.params``."""
        if not self._best_is_live:
            net.set_params(self._best_params)
        self._best_params, self._best_is_live = net.params, True

    def _update_no_improvement_count(self, net, Xv, yv, wv):
        if self.early_stopping:
            score = self._score_net(net, Xv, yv, wv)
            self.validation_scores_.append(score)
            if self.verbose:
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
        Yv = self._targets(yv)
        loss_sum, n = 0.0, 0.0
        for batch in gen_batches(Xv.shape[0], _PREDICT_BATCH):
            Xb = net.backend.asarray(_dense(Xv[batch]), net.dtype)
            Yb = _device_targets(net, Yv[batch])
            wb = None if wv is None else net.backend.asarray(wv[batch], net.dtype)
            loss, _ = self._batch_loss(net, Xb, Yb, wb)
            weight = (batch.stop - batch.start) if wv is None else float(wv[batch].sum())
            loss_sum, n = loss_sum + float(loss) * weight, n + weight
        return loss_sum / n

    def _fit_lbfgs(self, net, X, Y, sample_weight):
        backend = net.backend
        Xd = backend.asarray(_dense(X), net.dtype)
        Yd = _device_targets(net, Y)
        wd = None if sample_weight is None else backend.asarray(sample_weight, net.dtype)
        _check_batch_weights(sample_weight, np.arange(X.shape[0]), X.shape[0])

        def unpack(packed):  # (n_params,) float64 in scikit-learn's packing, which is flat_params' layout
            net.flat_params[...] = backend.asarray(packed, net.dtype)

        def loss_and_grad(packed):
            unpack(packed)
            loss, g = self._batch_loss(net, Xd, Yd, wd)
            return float(loss), to_numpy(g).astype(np.float64)

        packed = np.concatenate([p.ravel() for p in self.coefs_ + self.intercepts_])
        result = scipy.optimize.minimize(loss_and_grad, packed, method="L-BFGS-B", jac=True,
                                         options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = min(result.nit, self.max_iter)
        if result.status != 0:
            warnings.warn(_lbfgs_warning(result, self.n_iter_, self.max_iter), ConvergenceWarning)
        self.loss_ = float(result.fun)
        unpack(result.x)

    # ------------------------------------------------------------------ prediction

    def _forward(self, X, check_input=True):
        """Output-layer activations (n, n_outputs) on the host, computed in device batches."""
        check_is_fitted(self)
        if check_input:
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
        net = self._network()
        out = np.empty((X.shape[0], self.n_outputs_), dtype=net.dtype)
        for batch in gen_batches(X.shape[0], _PREDICT_BATCH):
            out[batch] = to_numpy(net.predict_output(_dense(X[batch]).astype(net.dtype, copy=False)))
        return out

    def _score_net(self, net, X, y, sample_weight):
        self._net, self._net_source = net, self.coefs_  # score the parameters being trained
        return self._score(X, y, sample_weight)

    # ------------------------------------------------------------------ persistence

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_net", None)
        state.pop("_net_source", None)
        optimizer = state.pop("_optimizer", None)
        if optimizer is not None:
            settings, arrays = optimizer.state()
            state["_optimizer_state"] = (settings, {k: to_numpy(v) for k, v in arrays.items()})
        if state.get("_best_is_live"):
            state["_best_params"] = None  # the parameters themselves, pickled as coefs_ and intercepts_
        elif state.get("_best_params") is not None:
            state["_best_params"] = [to_numpy(p) for p in state["_best_params"]]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._optimizer = None  # rebuilt from _optimizer_state by the next partial_fit

    _FITTED = ("loss_", "best_loss_", "loss_curve_", "validation_loss_curve_", "validation_scores_",
               "best_validation_score_", "n_iter_", "t_", "n_features_in_", "n_layers_", "n_outputs_",
               "out_activation_", "_no_improvement_count")

    def save(self, path):
        """Write the fitted estimator to a .npz file (no pickle) that :func:`load_estimator` reads
        on any machine, with or without a GPU."""
        check_is_fitted(self)
        params = {k: v for k, v in self.get_params().items()}
        if not (params["random_state"] is None or isinstance(params["random_state"], numbers.Integral)):
            params["random_state"] = None  # a RandomState object cannot be stored without pickle
        sizes = params["hidden_layer_sizes"]
        params["hidden_layer_sizes"] = int(sizes) if isinstance(sizes, numbers.Integral) else [int(s) for s in sizes]
        if params["dtype"] is not None:
            params["dtype"] = np.dtype(params["dtype"]).name
        if "class_weight" in params and isinstance(params["class_weight"], dict):
            params["class_weight"] = None  # keys may not be JSON; the weights are baked into the fit
        fitted = {k: _jsonable(getattr(self, k)) for k in self._FITTED if hasattr(self, k)}
        meta = {"estimator": type(self).__name__, "params": params, "fitted": fitted}
        arrays = {}
        if hasattr(self, "feature_names_in_"):
            arrays["feature_names_in"] = self.feature_names_in_.astype(str)
        if is_classifier(self):
            if self.classes_.dtype == object and not all(isinstance(c, str) for c in self.classes_):
                raise ValueError("save needs classes that are numbers or strings")
            arrays["classes"] = self.classes_.astype(str) if self.classes_.dtype == object else self.classes_
            meta["label_type"] = self._label_binarizer.y_type_
            meta["classes_are_objects"] = bool(self.classes_.dtype == object)
        meta["model"] = model_block(self._network())
        arrays.update({f"param_{i}": p for i, p in enumerate(self.coefs_ + self.intercepts_)})
        return write(path, "estimator", meta, arrays)


def _float_targets(owner, Y, dtype):
    """Targets (n, n_outputs) in the training dtype. Text targets are refused with a TypeError,
    where scikit-learn fails with one at its first arithmetic on them."""
    if Y.dtype.kind not in "biuf":
        raise TypeError(f"{type(owner).__name__} needs numeric targets; got y of dtype {Y.dtype}.")
    return Y.astype(dtype, copy=False)


def _check_batch_weights(sample_weight, sample_idx, batch_size: int) -> None:
    """scikit-learn's ZeroDivisionError (from np.average) for a batch whose weights sum to zero,
    which negative weights allow; raised on the host before the arithmetic that would divide."""
    if sample_weight is not None:
        sums = np.add.reduceat(sample_weight[sample_idx], np.arange(0, len(sample_idx), batch_size))
        if not sums.all():
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")


def _lbfgs_warning(result, n_iter: int, max_iter: int) -> str:
    """scikit-learn's words when L-BFGS-B stops without converging (utils.optimize)."""
    msg = f"lbfgs failed to converge after {n_iter} iteration(s) (status={result.status}):\n{result.message}\n"
    if n_iter == max_iter:  # advice to raise max_iter only when the limit is what stopped it
        msg += f"\nIncrease the number of iterations to improve the convergence (max_iter={max_iter})."
    return msg + ("\nYou might also want to scale the data as shown in:\n"
                  "    https://scikit-learn.org/stable/modules/preprocessing.html")


def _device_targets(net, Y):
    """Targets on the device as the network takes them: class indices for a softmax output
    (from the one-hot rows), the (n, k) matrix otherwise."""
    if net.output == "softmax":
        return net.backend.asarray(np.asarray(Y).argmax(axis=1))
    return net.backend.asarray(Y, net.dtype)


def _dense(X):
    return X.toarray() if sparse.issparse(X) else X


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
