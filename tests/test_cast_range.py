"""Data that are finite but do not fit the network's dtype: refused before the cast, naming the
value, where it is and the dtype, instead of turning into infinity (a DivergenceError blaming the
learning rate, NaN predictions, a bare ZeroDivisionError)."""

import ml_dtypes
import numpy as np
import pytest

from gpubp import MLP, fit
from gpubp.rows import HostRows
from gpubp.validation import check_X

F32_MAX = float(np.finfo(np.float32).max)
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


def data(n=60, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, 3, n)


def with_value(X, row, column, value, dtype=None):
    X = X.astype(dtype or X.dtype)
    X[row, column] = value
    return X


@pytest.mark.parametrize("net_dtype, X_dtype, value, dtype_name", [
    ("float32", np.float64, 1e39, "float32"),
    ("bfloat16", np.float32, 3.4e38, "bfloat16"),  # finite in float32; bfloat16 products round it to inf
    ("bfloat16", np.float64, -1e39, "bfloat16"),
])
def test_fit_predict_and_evaluate_refuse_a_value_outside_the_networks_dtype(net_dtype, X_dtype, value, dtype_name):
    X, y = data()
    X = with_value(X, 3, 2, value, X_dtype)
    message = rf"X\[3, 2\] = {value:.2g}".replace("+", r"\+") + rf"\S* is outside {dtype_name}'s range"
    net = MLP([4, 8, 3], backend="cpu", dtype=net_dtype, seed=0)
    with pytest.raises(ValueError, match=message):
        fit(net, X, y, epochs=1)
    with pytest.raises(ValueError, match=message):
        net.predict_proba(X)
    with pytest.raises(ValueError, match=message):
        net.evaluate(X, y)
    with pytest.raises(ValueError, match=message.replace("X", "X_val", 1)):
        fit(net, data()[0], y, epochs=1, validation_data=(X, y))


def test_a_value_at_the_dtypes_largest_finite_value_fits_and_one_above_does_not():
    X = with_value(data()[0], 0, 1, F32_MAX)
    assert check_X(X, dtype=np.float32) is X
    with pytest.raises(ValueError, match=r"X\[0, 1\] = .* is outside float32's range"):
        check_X(with_value(X, 0, 1, np.nextafter(F32_MAX, np.inf)), dtype=np.float32)
    assert check_X(with_value(X, 0, 1, BF16_MAX, np.float32), dtype=ml_dtypes.bfloat16) is not None
    assert check_X(with_value(X, 0, 1, 1e300), dtype=np.float64) is not None  # float64 holds it
    net = MLP([4, 8, 3], backend="cpu", dtype="float64", seed=0)
    assert np.isfinite(net.predict_proba(with_value(X, 0, 1, 1e39))).all()


def test_memory_mapped_rows_outside_the_dtype_are_refused_naming_the_file(tmp_path):
    X, y = data(n=300)
    np.save(tmp_path / "X.npy", with_value(X, 250, 1, 1e39))
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    message = rf"X\[250, 1\] = 1e\+39 \(in {tmp_path / 'X.npy'}\) is outside float32's range"
    net = MLP([4, 8, 3], backend="cpu", seed=0)
    with pytest.raises(ValueError, match=message):
        fit(net, mapped, y, epochs=1)
    with pytest.raises(ValueError, match=message):
        net.predict_proba(HostRows(mapped, name=str(tmp_path / "X.npy")), batch_size=64)


def test_regression_targets_outside_the_dtype_are_refused():
    X, _ = data()
    Y = with_value(np.zeros((60, 2)), 4, 1, -1e39)
    net = MLP([4, 8, 2], backend="cpu", seed=0, output="identity")
    for call in (lambda: fit(net, X, Y, epochs=1), lambda: net.evaluate(X, Y)):
        with pytest.raises(ValueError, match=r"y\[4, 1\] = -1e\+39 is outside float32's range"):
            call()


def test_sample_weights_that_overflow_or_all_round_to_zero_in_the_dtype_are_refused():
    X, y = data()
    net = MLP([4, 8, 3], backend="cpu", seed=0)
    weights = np.ones(60)
    weights[7] = 1e300
    with pytest.raises(ValueError, match=r"sample_weight\[7\] = 1e\+300 is outside float32's range"):
        fit(net, X, y, epochs=1, sample_weight=weights)
    with pytest.raises(ValueError, match=r"sample_weight sums to 0 in float32.*1e-46.*at least one sample needs a "
                                         "positive weight"):
        fit(net, X, y, epochs=1, sample_weight=np.full(60, 1e-46))
    fit(MLP([4, 8, 3], backend="cpu", dtype="float64", seed=0), X, y, epochs=1, sample_weight=np.full(60, 1e-46))
