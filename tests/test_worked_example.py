"""One sample through a 2-2-2 ReLU network, every number worked out by hand."""

import math

import numpy as np
import pytest

from gpubp import MLP

# Input x = [1, 2], label y = 1.
# W1 = [[1, -1], [0.5, -1]], b1 = 0:  z1 = [1*1 + 2*0.5, 1*(-1) + 2*(-1)] = [2, -3]
# ReLU:                               a1 = [2, 0]
# W2 = [[1, -1], [0, 1]], b2 = 0:     z2 = [2*1 + 0*0, 2*(-1) + 0*1] = [2, -2]
# softmax: p = [e^2, e^-2] / (e^2 + e^-2) = [e^4, 1] / (e^4 + 1)
#   with d = e^4 / (e^4 + 1) = 0.98201379003790845:  p = [d, 1 - d]
# loss = -log p[1] = log(1 + e^4) = 4.0181499279178094
# BP1: delta2 = p - Y = [d, 1 - d - 1] = [d, -d]                 (n = 1)
# BP3: db2 = delta2 = [d, -d]
# BP4: dW2 = a1.T @ delta2 = [[2d, -2d], [0, 0]]
# BP2: delta2 @ W2.T = [d*1 + (-d)*(-1), d*0 + (-d)*1] = [2d, -d]; ReLU'(a1) = [1, 0]
#      delta1 = [2d, 0]
# BP3: db1 = [2d, 0]
# BP4: dW1 = x.T @ delta1 = [[1*2d, 0], [2*2d, 0]] = [[2d, 0], [4d, 0]]
D = 0.98201379003790845
LOSS = 4.0181499279178094
W1 = [[1.0, -1.0], [0.5, -1.0]]
W2 = [[1.0, -1.0], [0.0, 1.0]]


def worked_net(alpha=0.0):
    net = MLP([2, 2, 2], "relu", backend="cpu", dtype="float64", seed=0, alpha=alpha)
    net.set_params([np.array(W1), np.array(W2), np.zeros(2), np.zeros(2)])
    return net


def test_hand_worked_forward_and_backward():
    assert math.isclose(D, math.exp(4) / (math.exp(4) + 1), rel_tol=1e-15)
    net = worked_net()
    loss, dW, db = net.loss_and_grads(np.array([[1.0, 2.0]]), np.array([1]))
    assert float(loss) == pytest.approx(LOSS, rel=1e-12)
    np.testing.assert_allclose(dW[1], [[2 * D, -2 * D], [0, 0]], rtol=1e-12)
    np.testing.assert_allclose(db[1], [D, -D], rtol=1e-12)
    np.testing.assert_allclose(dW[0], [[2 * D, 0], [4 * D, 0]], rtol=1e-12)
    np.testing.assert_allclose(db[0], [2 * D, 0], rtol=1e-12)
    np.testing.assert_allclose(net.predict_proba(np.array([[1.0, 2.0]])), [[D, 1 - D]], rtol=1e-12)


def test_hand_worked_l2_term():
    # alpha = 0.5, n = 1: loss += 0.5 / 2 * (sum W1^2 + sum W2^2) = 0.25 * (3.25 + 3) = 1.5625
    # and each dW gains alpha / n * W = 0.5 * W.
    net = worked_net(alpha=0.5)
    loss, dW, db = net.loss_and_grads(np.array([[1.0, 2.0]]), np.array([1]))
    assert float(loss) == pytest.approx(LOSS + 1.5625, rel=1e-12)
    np.testing.assert_allclose(dW[0], np.array([[2 * D, 0], [4 * D, 0]]) + 0.5 * np.array(W1), rtol=1e-12)
    np.testing.assert_allclose(dW[1], np.array([[2 * D, -2 * D], [0, 0]]) + 0.5 * np.array(W2), rtol=1e-12)
    np.testing.assert_allclose(db[0], [2 * D, 0], rtol=1e-12)  # biases are not penalised
