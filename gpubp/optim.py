"""Optimizers that update parameter arrays in place: SGD (momentum, Nesterov) and Adam.

Each ``step(params, grads, lr)`` takes the arrays themselves (``net.params``) and the matching
gradients (``dW + db``), and the learning rate for this step (a schedule may change it every
step). State arrays are made on the first step, on the parameters' device and in their dtype.
The update formulas are those of scikit-learn's ``_stochastic_optimizers``.
"""

from __future__ import annotations

import math

from .backend import backend_for


def _check_rate(value, name: str, low: float, high: float, high_open: bool) -> float:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and low <= value
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be a number in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def _zeros_like(p):
    """Zero array with p's shape, dtype and device."""
    z = p.copy()
    z[...] = 0
    return z


def check_lr(lr) -> float:
    """``lr`` if it is a finite number > 0, else a ValueError."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum.

    Velocity ``v = momentum * v - lr * g``; then ``p += v`` (classical) or
    ``p += momentum * v - lr * g`` (Nesterov, as in scikit-learn).

    Parameters
    ----------
    momentum : float in [0, 1)
    nesterov : bool
    """

    def __init__(self, momentum: float = 0.9, nesterov: bool = False):
        self.momentum = _check_rate(momentum, "momentum", 0.0, 1.0, high_open=True)
        if nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.nesterov = bool(nesterov)
        self.velocity: list | None = None

    def __repr__(self) -> str:
        return f"SGD(momentum={self.momentum}, nesterov={self.nesterov})"

    def step(self, params, grads, lr: float) -> None:
        """Update every array of ``params`` in place from the matching array of ``grads``."""
        if self.momentum == 0:
            for p, g in zip(params, grads):
                p -= lr * g
            return
        if self.velocity is None:
            self.velocity = [_zeros_like(p) for p in params]
        for p, g, v in zip(params, grads, self.velocity):
            b = backend_for(p)
            b.kernels.sgd_momentum_update(b.xp, p, g, v, lr, self.momentum, self.nesterov)


class Adam:
    """Adam (Kingma and Ba, 2015) with the bias correction folded into the step size.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.
    """

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.beta1 = _check_rate(beta1, "beta1", 0.0, 1.0, high_open=True)
        self.beta2 = _check_rate(beta2, "beta2", 0.0, 1.0, high_open=True)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}")
        self.eps = float(eps)
        self.t = 0
        self.m: list | None = None
        self.v: list | None = None

    def __repr__(self) -> str:
        return f"Adam(beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"

    def step(self, params, grads, lr: float) -> None:
        """Update every array of ``params`` in place from the matching array of ``grads``."""
        if self.m is None:
            self.m = [_zeros_like(p) for p in params]
            self.v = [_zeros_like(p) for p in params]
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v):
            b = backend_for(p)
            b.kernels.adam_update(b.xp, p, g, m, v, lr_t, b1, b2, self.eps)


OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05}


def make_optimizer(name: str, momentum: float = 0.9):
    """Optimizer for a name: "adam", "sgd" (no momentum), "momentum" or "nesterov"."""
    if name == "adam":
        return Adam()
    if name == "sgd":
        return SGD(momentum=0.0)
    if name == "momentum":
        return SGD(momentum=momentum)
    if name == "nesterov":
        return SGD(momentum=momentum, nesterov=True)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
