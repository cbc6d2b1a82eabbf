"""BP1-BP4 against central differences of the loss, in float64, for every activation."""

import numpy as np
import pytest

from gpubp import MLP
from gpubp.ops import ACTIVATIONS

H = 1e-6  # central-difference step


def numerical_grads(net, X, y):
    """d loss / d p for every parameter p, by (L(p + h) - L(p - h)) / 2h, one element at a time."""
    grads = []
    for p in net.params:
        g = np.empty_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + H
            up = float(net.loss_and_grads(X, y)[0])
            p[idx] = old - H
            down = float(net.loss_and_grads(X, y)[0])
            p[idx] = old
            g[idx] = (up - down) / (2 * H)
        grads.append(g)
    return grads


def relative_error(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("alpha", [0.0, 0.7])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backprop_matches_central_differences(activation, alpha, rng):
    net = MLP([5, 7, 6, 4], activation, backend="cpu", dtype="float64", seed=3, alpha=alpha)
    for b in net.biases:  # non-zero biases so BP3 is exercised with something to find
        b[...] = rng.normal(scale=0.5, size=b.shape)
    X = rng.normal(size=(9, 5))
    y = rng.integers(0, 4, size=9)
    _, dW, db = net.loss_and_grads(X, y)
    for l, (analytic, numeric) in enumerate(zip(dW + db, numerical_grads(net, X, y))):
        err = relative_error(analytic, numeric)
        assert err < 1e-6, f"{activation} alpha={alpha}: parameter {l} relative error {err:.2e}"


def test_gradient_check_detects_a_wrong_gradient(rng):
    """The check above can fail: a gradient off by 1e-4 in one element is caught."""
    net = MLP([4, 5, 3], "tanh", backend="cpu", dtype="float64", seed=0)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    _, dW, _ = net.loss_and_grads(X, y)
    numeric = numerical_grads(net, X, y)[0]
    wrong = dW[0].copy()
    wrong[1, 2] += 1e-4
    assert relative_error(dW[0], numeric) < 1e-6
    assert relative_error(wrong, numeric) > 1e-6


@pytest.mark.parametrize("output", ["logistic", "identity", "exp"])
def test_other_output_layers_match_central_differences(output, rng):
    net = MLP([5, 7, 3], "tanh", backend="cpu", dtype="float64", seed=3, alpha=0.4, output=output)
    X = rng.normal(size=(9, 5))
    Y = {"logistic": rng.integers(0, 2, (9, 3)), "identity": rng.normal(size=(9, 3)),
         "exp": rng.poisson(2.0, (9, 3))}[output].astype(float)
    w = rng.uniform(0.5, 2.0, 9)
    for weights in (None, w):
        _, dW, db = net.loss_and_grads(X, Y, weights)
        for p, grad in zip(net.params, dW + db):
            numeric = np.empty_like(p)
            for idx in np.ndindex(p.shape):
                old = p[idx]
                p[idx] = old + H
                up = float(net.loss_and_grads(X, Y, weights)[0])
                p[idx] = old - H
                down = float(net.loss_and_grads(X, Y, weights)[0])
                p[idx] = old
                numeric[idx] = (up - down) / (2 * H)
            assert relative_error(grad, numeric) < 1e-6, output
