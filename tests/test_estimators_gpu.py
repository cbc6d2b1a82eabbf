"""The estimators on the cuda device against the same estimators on the CPU (marker ``gpu``)."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_digits, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from gpubp import MLPClassifier, MLPRegressor, load_estimator

pytestmark = pytest.mark.gpu


def fit_pair(cls, X, y, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return cls(device="cpu", **params).fit(X, y), cls(device="cuda", **params).fit(X, y)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_classifier_on_the_gpu_matches_the_cpu(solver):
    X, y = load_digits(return_X_y=True)
    cpu, gpu = fit_pair(MLPClassifier, X / 16, y, hidden_layer_sizes=(32, 16), max_iter=5, random_state=0,
                        solver=solver)
    if solver != "lbfgs":
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-10)
    for p, q in zip(gpu.coefs_ + gpu.intercepts_, cpu.coefs_ + cpu.intercepts_):
        assert type(p) is np.ndarray
        np.testing.assert_allclose(p, q, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gpu.predict_proba(X / 16), cpu.predict_proba(X / 16), rtol=1e-8, atol=1e-12)


def test_a_bfloat16_classifier_on_the_gpu_follows_the_cpu():
    """dtype="bfloat16" on a card (bfloat16 set on the device, cublasGemmEx products, dW and BP3
    into float32) against the CPU's model of it: cuBLAS sums in its own order, so now and then a
    stored value lands one bfloat16 unit (2**-8) apart and five epochs carry it on: the loss
    curves within 1%, and the predictions on digits within 2 points of each other."""
    X, y = load_digits(return_X_y=True)
    cpu, gpu = fit_pair(MLPClassifier, X / 16, y, hidden_layer_sizes=(64, 32), max_iter=5, random_state=0,
                        dtype="bfloat16")
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-2)
    assert np.mean(gpu.predict(X / 16) == cpu.predict(X / 16)) >= 0.98


def test_regressor_float32_on_the_gpu_matches_the_cpu():
    X, y = make_regression(500, 8, noise=1.0, random_state=0)
    cpu, gpu = fit_pair(MLPRegressor, X.astype(np.float32), (y / 100).astype(np.float32),
                        hidden_layer_sizes=(16,), max_iter=5, random_state=0)
    assert gpu.coefs_[0].dtype == np.float32
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-4)


def test_fitted_on_the_gpu_predicts_on_the_cpu(tmp_path):
    X, y = load_digits(return_X_y=True)
    _, gpu = fit_pair(MLPClassifier, X / 16, y, hidden_layer_sizes=(16,), max_iter=3, random_state=0)
    loaded = load_estimator(gpu.save(tmp_path / "m.npz"), device="cpu")
    np.testing.assert_array_equal(loaded.predict(X / 16), gpu.predict(X / 16))


@pytest.mark.slow  # many small fits: the device check runs these last, in the time left
@parametrize_with_checks([MLPClassifier(max_iter=100, device="cuda"), MLPRegressor(max_iter=100, device="cuda")])
def test_sklearn_checks_on_the_gpu(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
