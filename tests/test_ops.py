"""The NumPy reference ops: activations, derivatives, softmax and the BP1 step."""

import numpy as np
import pytest

from gpubp import ops
from gpubp.ops import ACTIVATIONS

DTYPES = [np.float32, np.float64]


def derivative_from_z(z, name):
    """f'(z) by central differences of f itself (independent of the saved-activation formulas)."""
    h = 1e-6
    up = ops.activate(np, z + h, name)
    down = ops.activate(np, z - h, name)
    return (up - down) / (2 * h)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backprop_delta_uses_the_derivative_of_the_activation(name, rng):
    z = rng.normal(scale=2.0, size=(50, 7))
    z = z[np.abs(z) > 1e-3]  # keep away from the ReLU kink
    a = ops.activate(np, z.copy(), name)
    g = rng.normal(size=z.shape)
    delta = ops.backprop_delta(np, g.copy(), a, name)
    np.testing.assert_allclose(delta, g * derivative_from_z(z, name), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_is_stable_and_exact_at_the_extremes(dtype):
    z = np.array([-1000, -50, -1, 0, 1, 50, 1000], dtype=dtype)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # overflow, log(0) or NaN fails the test
        s = ops.sigmoid(np, z)
    assert s.dtype == dtype
    assert s[0] == 0 and s[-1] == 1 and s[3] == 0.5
    np.testing.assert_allclose(s[1:-1], 1 / (1 + np.exp(-z[1:-1].astype(np.float64))), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_minus_y_at_logits_of_plus_minus_1000(dtype):
    z = np.array([[1000, -1000], [-1000, 1000], [1000, 1000]], dtype=dtype)
    y = np.array([0, 0, 1])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        delta, loss = ops.softmax_minus_y(np, z, y)
    # row 0: p = [1, 0], loss 0; row 1: p = [0, 1], loss 2000; row 2: p = [1/2, 1/2], loss log 2
    assert float(loss) == pytest.approx((0 + 2000 + np.log(2)) / 3, rel=1e-6)
    # delta = (p - Y) / 3 with Y = [[1, 0], [1, 0], [0, 1]]
    expected = np.array([[0, 0], [-1, 1], [0.5, -0.5]]) / 3
    np.testing.assert_array_equal(delta, expected.astype(dtype))
    assert delta.dtype == dtype and np.asarray(loss).dtype == dtype


def test_softmax_minus_y_equals_the_definition(rng):
    z = rng.normal(scale=3, size=(8, 5))
    z_before = z.copy()
    y = rng.integers(0, 5, size=8)
    delta, loss = ops.softmax_minus_y(np, z, y)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    Y = np.eye(5)[y]
    np.testing.assert_allclose(delta, (p - Y) / 8, rtol=1e-12)
    assert float(loss) == pytest.approx(-np.mean(np.log(p[np.arange(8), y])), rel=1e-12)
    assert float(ops.cross_entropy(np, z, y)) == pytest.approx(float(loss), rel=1e-12)
    np.testing.assert_array_equal(z, z_before)  # softmax_minus_y and cross_entropy leave z alone
    np.testing.assert_allclose(ops.softmax(np, z.copy()), p, rtol=1e-12)


def test_bias_activation_adds_the_bias_then_activates_in_place(rng):
    z = rng.normal(size=(4, 3))
    b = rng.normal(size=3)
    expected = np.tanh(z + b)
    out = ops.bias_activation(np, z, b, "tanh")
    assert out is z
    np.testing.assert_allclose(out, expected, rtol=1e-15)


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError, match="unknown activation 'softplus'.*relu"):
        ops.check_activation("softplus")
