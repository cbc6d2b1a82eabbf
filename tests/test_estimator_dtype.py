"""The estimators' dtype and tf32: a warm-started fit that changes them, what predict computes
in after set_params, and data the dtype cannot hold."""

import warnings

import numpy as np
import pytest
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning

from gpubp import MLPClassifier, MLPRegressor


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 6))
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)


def warm_started_scores(X, y, first: str, second: str, tf32: bool = False) -> list:
    """validation_scores_ of an early-stopping fit in ``second`` that warm-starts from one of 3
    iterations in ``first``."""
    clf = MLPClassifier((8,), max_iter=3, random_state=0, device="cpu", early_stopping=True, n_iter_no_change=100,
                        learning_rate_init=0.01, dtype=first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
        n_first = len(clf.validation_scores_)
        clf.set_params(warm_start=True, dtype=second, tf32=tf32, max_iter=15).fit(X, y)
    return clf.validation_scores_[n_first:]


@pytest.mark.parametrize("first, second, tf32", [("float64", "float32", False), ("float32", "float64", False),
                                                 ("bfloat16", "float64", False), ("float64", "float32", True)])
def test_a_warm_started_fit_in_another_dtype_scores_the_parameters_it_trains(data, first, second, tf32):
    """Early stopping scored the network made from coefs_ of the previous fit (their dtype, never
    updated): one constant score, and tf32=True refused it as float64."""
    X, y = data
    scores = warm_started_scores(X, y, first, second, tf32)
    same_dtype = warm_started_scores(X, y, second, second, tf32)
    assert len(set(scores)) > 3  # the score follows the training
    np.testing.assert_allclose(scores, same_dtype, atol=0.05)


def test_predict_follows_the_current_dtype_and_tf32(data):
    """float32 and float64 are honoured after set_params as bfloat16 and tf32 were; coefs_ keep
    the dtype of the fit; None predicts in coefs_' dtype."""
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = MLPClassifier((8,), max_iter=5, random_state=0, device="cpu", dtype="float64").fit(X, y)
    fitted = clf.predict_proba(X)
    float32 = clf.set_params(dtype="float32").predict_proba(X)
    assert float32.dtype == np.float32 and clf.coefs_[0].dtype == np.float64
    np.testing.assert_allclose(float32, fitted, atol=1e-5)
    tf32 = clf.set_params(tf32=True).predict_proba(X)  # refused as float64 before
    assert tf32.dtype == np.float32 and not np.array_equal(tf32, float32)
    bfloat16 = clf.set_params(dtype="bfloat16", tf32=False).predict_proba(X)
    assert bfloat16.dtype == np.float32 and not np.array_equal(bfloat16, float32)
    np.testing.assert_array_equal(clf.set_params(dtype=None).predict_proba(X), fitted)
    np.testing.assert_array_equal(clf.set_params(dtype="float64").predict_proba(X), fitted)


@pytest.mark.parametrize("dtype, value, data_dtype", [("float32", 1e39, np.float64), ("bfloat16", 1e39, np.float64),
                                                      ("bfloat16", 3.4e38, np.float32)])
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_a_value_the_dtype_cannot_hold_is_a_value_error_naming_it(data, dtype, value, data_dtype, Estimator):
    """Finite in X's dtype (scikit-learn's check passes it), infinite once cast: fit ended with
    'non-finite parameter weights' and predict returned NaN."""
    X, y = data
    X = X.astype(data_dtype)
    big = X.copy()
    big[5, 1] = value
    named = rf"X\[5, 1\] = {value:g} is outside {dtype}'s range"

    def new():
        return Estimator(hidden_layer_sizes=(8,), max_iter=2, random_state=0, device="cpu", dtype=dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for rows in (big, sparse.csr_matrix(big)):
            with pytest.raises(ValueError, match=named.replace("+", r"\+")):
                new().fit(rows, y)
        with pytest.raises(ValueError, match=r"X_val\[5, 1\] = "):
            new().fit(X, y, validation_data=(big, y))
        fitted = new().fit(X, y)
        wide = Estimator(hidden_layer_sizes=(8,), max_iter=2, random_state=0, device="cpu", dtype="float64")
        assert np.isfinite(wide.fit(big.astype(np.float64), y).loss_)  # float64 holds it
    for rows in (big, sparse.csc_matrix(big)):
        with pytest.raises(ValueError, match=named.replace("+", r"\+")):
            fitted.predict(rows)


def test_targets_and_weights_the_dtype_cannot_hold_are_value_errors_naming_them(data):
    """A regressor's targets and the sample weights are taken in the parameters' dtype: 1e39 or
    1e300 became inf in float32 and the fit diverged; weights of 1e-46 all became 0."""
    X, y = data
    target = y.astype(np.float64)
    target[5] = 1e39

    def new(Estimator):
        return Estimator(hidden_layer_sizes=(8,), max_iter=2, random_state=0, device="cpu", dtype="float32")

    with pytest.raises(ValueError, match=r"y\[5, 0\] = 1e\+39 is outside float32's range"):
        new(MLPRegressor).fit(X, target)
    weights = np.ones(len(y))
    weights[3] = 1e300
    for Estimator in (MLPClassifier, MLPRegressor):
        with pytest.raises(ValueError, match=r"sample_weight\[3\] = 1e\+300 is outside float32's range"):
            new(Estimator).fit(X, y, sample_weight=weights)
        with pytest.raises(ValueError, match=r"non-zero number in float32, the dtype of this fit: every weight rounds"):
            new(Estimator).fit(X, y, sample_weight=np.full(len(y), 1e-46))


def test_a_sparse_x_that_stores_no_value_fits_and_validates():
    """The range check reads a sparse X's stored values: none at all (an all-zero matrix) is in
    range (the check took the min of an empty array and raised)."""
    y = np.arange(20) % 2
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0, device="cpu", dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(sparse.csr_matrix((20, 3)), y, validation_data=(sparse.csr_matrix((6, 3)), np.arange(6) % 2))
    assert clf.predict(sparse.csr_matrix((4, 3))).shape == (4,)
