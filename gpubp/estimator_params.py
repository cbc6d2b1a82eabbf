"""The settings of gpubp.MLPClassifier and gpubp.MLPRegressor and their allowed values.

These are written in scikit-learn's constraint objects and checked by scikit-learn's own checker
(``BaseEstimator._validate_params``), not by gpubp.params, which judges every other setting of
gpubp. The estimators are a drop-in for scikit-learn's, and scikit-learn's estimator checks
(``check_param_validation``) require three things that only its private
``sklearn.utils._param_validation`` provides: ``_parameter_constraints`` must hold its constraint
objects (the check builds invalid values from them with ``make_constraint`` and
``generate_invalid_param_val``), a bad value must raise its ``InvalidParameterError`` class
itself (``pytest.raises(InvalidParameterError)``), and the message must be its own. A copy of
that class or those objects would fail the ``isinstance`` tests, so the private import stays.
The ranges gpubp shares with it (momentum, beta_1/beta1, epsilon/eps, alpha, validation_fraction,
batch_size, max_iter/epochs, learning_rate_init/lr) are the same in both tables over finite
numbers (tests/test_params.py), and gpubp.params writes its ranges in scikit-learn's words.
"""

from __future__ import annotations

import os
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, Options, StrOptions

# scikit-learn 1.9's BaseMultilayerPerceptron._parameter_constraints, in its order (the order of
# a StrOptions set shows in the messages), plus gpubp's device (checked by get_backend), dtype,
# tf32 (a bool; float32 only, checked at fit once the training dtype is known), the fit's
# checkpoint settings and cuda_graph.
PARAMETER_CONSTRAINTS = {
    "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
    "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
    "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
    "alpha": [Interval(Real, 0, None, closed="left")],
    "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
    "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
    "power_t": [Interval(Real, 0, None, closed="left")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    "shuffle": ["boolean"],
    "random_state": ["random_state"],
    "tol": [Interval(Real, 0, None, closed="left")],
    "verbose": ["verbose"],
    "warm_start": ["boolean"],
    "momentum": [Interval(Real, 0, 1, closed="both")],
    "nesterovs_momentum": ["boolean"],
    "early_stopping": ["boolean"],
    "validation_fraction": [Interval(Real, 0, 1, closed="left")],  # 0 is refused later, by the split
    "beta_1": [Interval(Real, 0, 1, closed="left")],
    "beta_2": [Interval(Real, 0, 1, closed="left")],
    "epsilon": [Interval(Real, 0, None, closed="neither")],
    "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), Options(Real, {np.inf})],
    "max_fun": [Interval(Integral, 1, None, closed="left")],
    "device": [str],
    "dtype": "no_validation",  # numpy types and names: checked in _check_params
    "tf32": ["boolean"],
    "checkpoint": [str, os.PathLike, None],  # gpubp.estimator_checkpoint
    "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
    "resume": ["boolean"],
    "cuda_graph": ["boolean"],  # gpubp.cuda_graph; its own rules checked at fit
}
