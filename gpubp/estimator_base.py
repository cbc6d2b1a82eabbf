"""The shared machinery of gpubp.MLPClassifier and gpubp.MLPRegressor: parameters, scikit-learn's
initial stream, device placement, batched prediction, pickling and saving; the training itself
is in gpubp.estimator_fit. See gpubp.estimators."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, is_classifier
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .estimator_params import PARAMETER_CONSTRAINTS
from .backend import get_backend, to_numpy
from .bfloat16 import network_dtype, parameter_dtype
from .communicator import Communicator, SingleProcess, failing_together
from .container import block, write
from .mlp import MLP
from .optim import host_state
from .params import accepts
from .estimator_checkpoint import FitCheckpoints, json_params, jsonable
from .estimator_data import PREDICT_BATCH, cast_in_range, dense
from .estimator_fit import STOCHASTIC, StochasticFit
from .estimator_parallel import DataParallelFit

_ACTIVATION_NAMES = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}


class BaseMLP(StochasticFit, DataParallelFit, FitCheckpoints, BaseEstimator):
    """Shared fitting and prediction of MLPClassifier and MLPRegressor."""

    _parameter_constraints: dict = PARAMETER_CONSTRAINTS
    # An estimator that load_estimator made holds its best parameters as coefs_ (see _restore_best),
    # and no optimizer: a partial_fit starts one.
    _best_is_live = True
    _optimizer = _opt_state = None

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None, tf32=False, checkpoint=None, checkpoint_every=1, resume=False,
                 cuda_graph=False):
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
        if self.dtype is not None and not accepts("dtype", self.dtype):  # gpubp's rule, scikit-learn's words
            raise InvalidParameterError(f"The 'dtype' parameter of {type(self).__name__} must be None, 'float32', "
                                        f"'float64' or 'bfloat16'. Got {self.dtype!r} instead.")
        get_backend(self.device)  # unknown names and an unusable "cuda" fail here, with the reason
        if self.cuda_graph and self.solver not in STOCHASTIC:
            raise ValueError(f"cuda_graph=True replays the steps of the sgd and adam solvers; solver="
                             f"{self.solver!r} takes no such steps: leave cuda_graph off")
        return [int(s) for s in sizes]

    def _check_solver(self):
        if self.solver not in STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not "
                                 "stochastic.")
        return True

    # ------------------------------------------------------------------ fitting

    def _fit(self, X, y, sample_weight=None, incremental=False, validation_data=None, comm=None):
        if comm is not None and not isinstance(comm, Communicator):
            raise ValueError(f"comm must be a gpubp.distributed communicator, got {comm!r}")
        parallel = comm is not None and comm.size > 1
        with failing_together(comm if parallel else SingleProcess()):  # a rank that fails here stops them all
            X, Y, sample_weight, first_pass, hidden = self._prepare(X, y, sample_weight, incremental, parallel)
            if parallel:
                validation_data = self._check_shared_validation(X, sample_weight, validation_data)
        if parallel:
            self._start_together(comm, X, Y, sample_weight, validation_data)
        if first_pass:
            self._initialize([X.shape[1], *hidden, self.n_outputs_], X.dtype)
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        Y = _float_targets(self, Y, X.dtype)
        net = self._network(X.dtype)
        if self.solver in STOCHASTIC:
            self._fit_stochastic(net, X, Y, sample_weight, incremental, validation_data, comm if parallel else None,
                                 fresh=first_pass)
        else:
            self._fit_lbfgs(net, X, Y, sample_weight)
        self._sync_from(net)
        if not all(np.isfinite(w).all() for w in self.coefs_ + self.intercepts_):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain "
                             "large values and need to be preprocessed.")
        return self

    def _prepare(self, X, y, sample_weight, incremental: bool, parallel: bool):
        """The checks of a fit, done by each rank alone: (X, Y (n, n_outputs), weights, whether the
        parameters start afresh, the hidden widths); sets n_outputs_ and the random state."""
        hidden = self._check_params()
        if parallel and self.solver not in STOCHASTIC:
            raise ValueError(f"data-parallel fitting (comm) needs solver 'sgd' or 'adam', not {self.solver!r}")
        self._check_checkpointing(incremental)
        first_pass = not hasattr(self, "coefs_") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        if self.dtype is not None:  # bfloat16: float32 data and parameters
            X = cast_in_range(X, parameter_dtype(self.dtype), np.dtype(self.dtype))
        if self.tf32 and X.dtype != np.float32:
            raise ValueError(f"tf32=True needs float32 (TF32 rounds float32 inputs), but this fit runs in "
                             f"{X.dtype.name}: pass dtype='float32' or float32 X")
        sample_weight = self._sample_weight(sample_weight, X.shape[0], X.dtype)
        Y = y.reshape(-1, 1) if y.ndim == 1 else y
        self.n_outputs_ = Y.shape[1]
        self._random_state = check_random_state(self.random_state)
        return X, Y, sample_weight, first_pass, hidden

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
        cast = cast_in_range(sample_weight, dtype, dtype, "sample_weight")
        if np.all(cast == 0):
            raise ValueError(f"Sample weights must contain at least one non-zero number in {np.dtype(dtype).name}, "
                             "the dtype of this fit: every weight rounds to 0 there; scale them up")
        return cast

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
        self._net, self._graphs = None, None
        self._optimizer, self._opt_state = None, None
        self._lr = None
        self._best_params, self._best_is_live = None, False
        if self.solver in STOCHASTIC:
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
        """The MLP on the device holding coefs_ and intercepts_, made again when the activation,
        output, dtype, tf32 or device changed, or an array of coefs_ or intercepts_ was replaced
        (change them by assigning new arrays: an array changed in place may go unseen)."""
        dtype = network_dtype(self.dtype, dtype or self.coefs_[0].dtype)  # the dtype parameter, if set
        net, backend = getattr(self, "_net", None), get_backend(self.device)
        activation = _ACTIVATION_NAMES[self.activation]
        stale = (net is None or net.compute_dtype != dtype or net.backend is not backend or net.tf32 != bool(self.tf32)
                 or net.activation != activation or net.output != self.out_activation_)
        source = getattr(self, "_net_source", ())
        params = self.coefs_ + self.intercepts_
        if stale or len(source) != len(params) or any(a is not b for a, b in zip(source, params)):
            sizes = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
            net = MLP(sizes, activation, backend, dtype.name, alpha=float(self.alpha), output=self.out_activation_,
                      tf32=bool(self.tf32))
            net.set_params(params)
            self._net, self._net_source = net, tuple(params)
        net.alpha = float(self.alpha)
        return net

    def _sync_from(self, net) -> None:
        """Host copies of the device parameters in coefs_ and intercepts_."""
        L = len(net.weights)
        host = [to_numpy(p) for p in net.params]
        self.coefs_, self.intercepts_ = host[:L], host[L:]
        self._net_source = tuple(host)

    # ------------------------------------------------------------------ prediction

    def _forward(self, X, net=None):
        """Output-layer activations (n, n_outputs) on the host, computed in device batches: of the
        fitted network for X (n, n_features_in_) as given, or of ``net``, the network being
        trained (its parameters and dtype, not coefs_'), for rows the fit has already checked."""
        if net is None:
            check_is_fitted(self)
            X = validate_data(self, X, accept_sparse=["csr", "csc"], reset=False)
            net = self._network()
        out = np.empty((X.shape[0], self.n_outputs_), dtype=net.dtype)
        for batch in gen_batches(X.shape[0], PREDICT_BATCH):
            rows = cast_in_range(dense(X[batch]), net.dtype, net.compute_dtype, first_row=batch.start)
            out[batch] = to_numpy(net.predict_output(rows))
        return out

    # ------------------------------------------------------------------ persistence

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_net", None)
        state.pop("_net_source", None)
        state.pop("_graphs", None)  # CUDA graphs of the device network, captured again after loading
        if state.get("_opt_state") is not None:  # the optimizer itself holds only settings
            state["_opt_state"] = host_state(state["_opt_state"], to_numpy)
        if state.get("_best_is_live"):
            state["_best_params"] = None  # the parameters themselves, pickled as coefs_ and intercepts_
        elif state.get("_best_params") is not None:
            state["_best_params"] = [to_numpy(p) for p in state["_best_params"]]
        return state

    _FITTED = ("loss_", "best_loss_", "loss_curve_", "validation_loss_curve_", "validation_scores_",
               "best_validation_score_", "n_iter_", "t_", "n_features_in_", "n_layers_", "n_outputs_",
               "out_activation_", "_no_improvement_count")

    def save(self, path):
        """Write the fitted estimator to a .npz file (no pickle) that :func:`load_estimator` reads
        on any machine, with or without a GPU."""
        check_is_fitted(self)
        params = json_params(self)
        fitted = {k: jsonable(getattr(self, k)) for k in self._FITTED if hasattr(self, k)}
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
        sizes = [self.coefs_[0].shape[0]] + [c.shape[1] for c in self.coefs_]
        meta["model"] = block(sizes, _ACTIVATION_NAMES[self.activation], self.out_activation_, self.coefs_[0].dtype,
                              self.alpha, self.tf32)  # the device need not be usable here
        arrays.update({f"param_{i}": p for i, p in enumerate(self.coefs_ + self.intercepts_)})
        return write(path, "estimator", meta, arrays)


def _float_targets(owner, Y, dtype):
    """Targets (n, n_outputs) in the training dtype. Text targets are refused with a TypeError,
    where scikit-learn fails with one at its first arithmetic on them; a value the dtype cannot
    hold, with a ValueError naming it (estimator_data.cast_in_range)."""
    if Y.dtype.kind not in "biuf":
        raise TypeError(f"{type(owner).__name__} needs numeric targets; got y of dtype {Y.dtype}.")
    return cast_in_range(Y, dtype, dtype, "y")

