"""scikit-learn's own estimator checks on gpubp's estimators (CPU)."""

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import check_sample_weight_equivalence_on_dense_data, parametrize_with_checks

from gpubp import MLPClassifier, MLPRegressor

# The instances scikit-learn's own test suite checks its MLPs with (max_iter=100 keeps the run
# short), and the lbfgs classifier it uses for the sample-weight check.
ESTIMATORS = [
    MLPClassifier(max_iter=100, device="cpu"),
    MLPRegressor(max_iter=100, device="cpu"),
    MLPClassifier(solver="lbfgs", max_iter=100, device="cpu"),
]


@pytest.mark.slow
@parametrize_with_checks(ESTIMATORS)
def test_sklearn_compatible_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_regressor_sample_weights_equal_repetitions():
    """scikit-learn checks its MLPRegressor's sample weights with these settings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_sample_weight_equivalence_on_dense_data(
            "MLPRegressor", MLPRegressor(solver="sgd", tol=1e-2, random_state=42, max_iter=100, device="cpu"))
