"""scikit-learn's MLPClassifier and MLPRegressor, running on NumPy (CPU) or CuPy (GPU).

Change one import: ``from gpubp import MLPClassifier``. The constructor takes every parameter of
scikit-learn's classes (1.9) with the same names, defaults and meaning, plus ``device``
("auto" | "cpu" | "cuda"), ``dtype`` (None keeps scikit-learn's rule: float32 input stays
float32, anything else becomes float64; "float32" or "float64" casts the input; "bfloat16" runs
the products in bfloat16 over float32 parameters, see :mod:`gpubp.bfloat16`) and ``tf32`` (False;
True runs the products of float32 training and prediction in TF32, see :class:`gpubp.MLP`).
Prediction follows the current dtype, tf32 and device. Fitted attributes are NumPy arrays whatever
the device.

The arithmetic is scikit-learn's: the initial weights and biases come from the same
``check_random_state(random_state)`` stream with the same Glorot bounds, the validation split,
the batch order (``sklearn.utils.shuffle`` of the sample indices, ``gen_batches``), the update
formulas of SGD (constant, invscaling, adaptive; momentum, Nesterov) and Adam, the stopping
rules and warnings are the same, so on the CPU in float64 ``loss_curve_`` matches scikit-learn's.
The forward and backward passes are gpubp's (BP1-BP4 in :mod:`gpubp.mlp`), with the CUDA kernels
on a GPU. With solver="lbfgs", scipy's L-BFGS-B runs on the host: each function evaluation sends
the parameters to the device and brings the gradient back, so lbfgs gains less from a GPU.

Parameters are checked by scikit-learn's own checker on its constraints (the same
InvalidParameterError, a ValueError and a TypeError, in the same words), sample weights by its
rules (negative weights allowed), and labels keep their type in ``classes_``, ``predict`` and
messages. Deliberate differences from scikit-learn 1.9: ``loss="poisson"`` refuses negative
targets (scikit-learn trains on them and reports a NaN loss), and MLPRegressor offers
``partial_fit`` only for sgd and adam, like MLPClassifier and scikit-learn's documentation
(scikit-learn's MLPRegressor also shows it for lbfgs). Not yet the same: scikit-learn clips the
probabilities in its log loss to [eps, 1 - eps], gpubp does not, so ``loss_curve_`` differs once a
prediction is confidently wrong (the gradients agree; n_iter_ and the adaptive rate, which follow
the loss, may then differ).

Beyond scikit-learn: ``fit(..., validation_data=(X_val, y_val))`` and ``validation_loss_curve_``,
``class_weight`` for the classifier, a progress bar with ``verbose >= 2``, batched prediction,
and :meth:`save` / :func:`load_estimator` (no pickle) so a model fitted on a GPU predicts on a
CPU-only machine. Pickling works too and holds host arrays only. ``checkpoint``,
``checkpoint_every`` and ``resume`` make ``fit`` write and resume fit checkpoints
(:mod:`gpubp.estimator_checkpoint`).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.metrics import accuracy_score, r2_score
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target, unique_labels
from sklearn.utils.validation import column_or_1d, validate_data

from .container import read
from .errors import DataError
from .estimator_base import BaseMLP
from .estimator_params import PARAMETER_CONSTRAINTS

def load_estimator(path, device="auto"):
    """An MLPClassifier or MLPRegressor written by ``save``, ready to predict on ``device``.

    Raises
    ------
    DataError
        When the file is missing, corrupted, not a saved estimator (a model file or a
        checkpoint: the message says how to load it), of a newer format, or of an unknown class.
    """
    checkpoint = read(path, "estimator")
    meta = checkpoint.meta
    kinds = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}
    if meta.get("estimator") not in kinds:
        raise DataError(f"{path}: a saved estimator of class {meta.get('estimator')!r}; this gpubp loads "
                        f"{' and '.join(kinds)}")
    params = dict(meta["params"])
    if isinstance(params["hidden_layer_sizes"], list):
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    estimator = kinds[meta["estimator"]](**{**params, "device": device})
    arrays, params = checkpoint.arrays, checkpoint.params
    L = len(params) // 2
    estimator.coefs_, estimator.intercepts_ = params[:L], params[L:]
    for key, value in meta["fitted"].items():
        setattr(estimator, key, value)
    if "feature_names_in" in arrays:
        estimator.feature_names_in_ = arrays["feature_names_in"].astype(object)
    if "classes" in arrays:
        classes = arrays["classes"].astype(object) if meta["classes_are_objects"] else arrays["classes"]
        binarizer = LabelBinarizer()
        if meta["label_type"].startswith("multilabel"):
            binarizer.fit(np.eye(len(classes), dtype=int))
        else:
            binarizer.fit(classes)
        estimator._label_binarizer, estimator.classes_ = binarizer, binarizer.classes_
    return estimator

class MLPClassifier(ClassifierMixin, BaseMLP):
    """scikit-learn's MLPClassifier on NumPy or CuPy; see the module docstring.

    Parameters are scikit-learn's (hidden_layer_sizes ... max_fun) plus:

    device : {"auto", "cpu", "cuda"}, default "auto"
    dtype : {None, "float32", "float64", "bfloat16"}, default None
        The arithmetic of fit and predict. None: float32 input stays float32, other input becomes
        float64. "bfloat16": bfloat16 products and saved activations over float32 parameters,
        gradients and optimizer state (coefs_ are float32). X is cast to it; a value it cannot hold
        is a ValueError. predict runs in the current dtype and tf32, as on the current device:
        set_params(dtype=...) on a fitted estimator changes the arithmetic of predict at once, not
        coefs_, which keep the dtype of the last fit; None predicts in coefs_' dtype.
    class_weight : None, "balanced" or dict, default None
        Multiplies the sample weights by the weight of each sample's class.
    tf32 : bool, default False
        A gpubp extra: True computes every product of training and prediction in TF32 (inputs
        rounded to 10 mantissa bits, sums in float32): tensor cores on an Ampere or newer GPU,
        the same arithmetic modelled on the CPU (:func:`gpubp.precision.matmul_as_tf32`).
        About 3e-4 relative error per product. Needs float32: dtype="float32", or dtype=None
        with float32 X; a float64 fit raises ValueError.
    cuda_graph : bool, default False
        A gpubp extra: sgd and adam fits on device="cuda" replay each batch shape's forward and
        backward pass from a CUDA graph (:mod:`gpubp.cuda_graph`): the same results, far fewer
        launches on small networks. float32 or float64, one process; ValueError otherwise.
    """

    _parameter_constraints: dict = {**PARAMETER_CONSTRAINTS, "class_weight": [dict, StrOptions({"balanced"}), None]}

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000,
                 device="auto", dtype=None, class_weight=None, tf32=False, checkpoint=None, checkpoint_every=1,
                 resume=False, cuda_graph=False):
        self._store(locals())

    def _out_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                     f"previous call to fit. Previously got {self.classes_}, `y` has {classes}")
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")
        self._y_raw = y
        return X, self._label_binarizer.transform(y)

    def _sample_weight(self, sample_weight, n_samples, dtype):
        sample_weight = super()._sample_weight(sample_weight, n_samples, dtype)
        if self.class_weight is None:
            return sample_weight
        weights = compute_sample_weight(self.class_weight, self._y_raw).astype(dtype)
        return weights if sample_weight is None else weights * sample_weight

    def _targets(self, y):
        return self._label_binarizer.transform(y).astype(np.float64).reshape(len(y), -1)

    def fit(self, X, y, sample_weight=None, validation_data=None, comm=None):
        """Fit to X (n_samples, n_features) and labels y (n_samples,) or a label indicator matrix.

        validation_data : (X_val, y_val), optional
            Held-out data scored every epoch (``validation_loss_curve_``) and, with
            early_stopping=True, used instead of a split of X.
        comm : gpubp.distributed communicator, optional
            Fit data-parallel over its ranks (solver "sgd" or "adam"; every rank calls fit with
            the same data and settings): ``batch_size`` is the global batch, each rank trains its
            share and the gradients are summed; rank 0's random state seeds every rank, and every
            rank ends with the parameters one process would have, up to rounding.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False, validation_data=validation_data,
                         comm=comm)

    @available_if(lambda self: self._check_solver())
    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch over X, y; the first call needs ``classes`` (all labels that will appear)."""
        if getattr(self, "classes_", None) is None:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = unique_labels(classes)
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(self.classes_)
        elif classes is not None and not np.array_equal(self.classes_, unique_labels(classes)):
            # scikit-learn's message shows both as given, with repr
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                             f"was: {self.classes_!r}")
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Class labels (n_samples,) or a label indicator matrix for multilabel targets."""
        return self._predict(X)

    def _predict(self, X, net=None):
        out = self._forward(X, net)
        return self._label_binarizer.inverse_transform(out.ravel() if self.n_outputs_ == 1 else out)

    def predict_proba(self, X):
        """Probability of each class (n_samples, n_classes)."""
        out = self._forward(X)
        if self.n_outputs_ == 1:
            out = out.ravel()
            return np.vstack([1 - out, out]).T
        return out

    def predict_log_proba(self, X):
        """log of predict_proba."""
        return np.log(self.predict_proba(X))

    def _score(self, net, X, y, sample_weight):
        """Early stopping's validation score of ``net``, the network being trained."""
        return accuracy_score(y, self._predict(X, net), sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, BaseMLP):
    """scikit-learn's MLPRegressor on NumPy or CuPy; see the module docstring.

    loss : {"squared_error", "poisson"}, default "squared_error"
        Poisson uses an exp output and needs targets >= 0.
    Other parameters as scikit-learn's, plus device, dtype, tf32 (float32 only) and cuda_graph,
    gpubp extras, as for MLPClassifier.
    """

    _parameter_constraints: dict = {**PARAMETER_CONSTRAINTS, "loss": [StrOptions({"squared_error", "poisson"})]}

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001,
                 power_t=0.5, max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False,
                 validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_fun=15000, device="auto", dtype=None, tf32=False, checkpoint=None, checkpoint_every=1,
                 resume=False, cuda_graph=False):
        self._store(locals())

    def _out_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(self, X, y, accept_sparse=["csr", "csc"], multi_output=True, y_numeric=True,
                             dtype=(np.float64, np.float32), reset=reset)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        # Deliberately stricter than scikit-learn 1.9, which trains on and reports a NaN loss
        # (text targets fail later with a TypeError, as in scikit-learn).
        if self.loss == "poisson" and y.dtype.kind in "biuf" and (y < 0).any():
            raise ValueError("Some value(s) of y are negative which is not allowed for Poisson regression.")
        return X, y

    def _targets(self, y):
        return np.asarray(y, dtype=np.float64).reshape(len(y), -1)

    def fit(self, X, y, sample_weight=None, validation_data=None, comm=None):
        """Fit to X (n_samples, n_features) and targets y (n_samples,) or (n_samples, n_outputs).

        validation_data, comm
            As for MLPClassifier.fit.
        """
        return self._fit(X, y, sample_weight=sample_weight, incremental=False, validation_data=validation_data,
                         comm=comm)

    @available_if(lambda self: self._check_solver())
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over X, y."""
        return self._fit(X, y, sample_weight=sample_weight, incremental=True)

    def predict(self, X):
        """Predicted targets (n_samples,) or (n_samples, n_outputs)."""
        return self._predict(X)

    def _predict(self, X, net=None):
        out = self._forward(X, net)
        return out.ravel() if self.n_outputs_ == 1 else out

    def _score(self, net, X, y, sample_weight):
        """Early stopping's validation score of ``net``, the network being trained."""
        y_pred = self._predict(X, net)
        if not np.isfinite(y_pred).all():
            return np.nan
        return r2_score(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.target_tags.multi_output = True
        return tags
