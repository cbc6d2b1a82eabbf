"""Optimizers that update parameter arrays in place: SGD (momentum, Nesterov) and Adam.

Each ``step(params, grads, lr)`` takes a list of parameter arrays (the trainers pass
``[net.flat_params]``, so one pass updates every parameter), the matching gradients, and the
learning rate for this step (a schedule may change it every step). State arrays are made on the first step, on the parameters' device and in their dtype.
The update formulas are those of scikit-learn's ``_stochastic_optimizers``.
"""

from __future__ import annotations

import math

from .backend import backend_for
from .params import check, check_all


def _zeros_like(p):
    """Zero array with p's shape, dtype and device."""
    z = p.copy()
    z[...] = 0
    return z


def check_lr(lr) -> float:
    """``lr`` as a float if it is in (0, inf), else gpubp.params.ParameterError (a ValueError)."""
    return check("lr", lr)


class SGD:
    """Stochastic gradient descent with optional (Nesterov) momentum.

    Velocity ``v = momentum * v - lr * g``; then ``p += v`` (classical) or
    ``p += momentum * v - lr * g`` (Nesterov, as in scikit-learn).

    Parameters
    ----------
    momentum : float in [0, 1]
    nesterov : bool
    """

    def __init__(self, momentum: float = 0.9, nesterov: bool = False):
        self.momentum = check("momentum", momentum)  # scikit-learn's [0, 1]
        self.nesterov = check("nesterov", nesterov)
        if self.nesterov and self.momentum == 0:
            raise ValueError("nesterov=True needs momentum > 0")
        self.velocity: list | None = None

    def __repr__(self) -> str:
        return f"SGD(momentum={self.momentum}, nesterov={self.nesterov})"

    def state(self) -> tuple[dict, dict]:
        """(settings and step count, state arrays by name) for a checkpoint."""
        arrays = {f"velocity_{i}": v for i, v in enumerate(self.velocity or [])}
        return {"name": "sgd", "momentum": self.momentum, "nesterov": self.nesterov}, arrays

    def load_state(self, arrays: dict, params) -> None:
        """Restore the arrays of :meth:`state` next to ``params`` (same device and dtype)."""
        self.velocity = _restore(arrays, "velocity", params)

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
        settings = check_all({"beta1": beta1, "beta2": beta2, "eps": eps})
        self.beta1, self.beta2, self.eps = settings["beta1"], settings["beta2"], settings["eps"]
        self.t = 0
        self.m: list | None = None
        self.v: list | None = None

    def __repr__(self) -> str:
        return f"Adam(beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"

    def state(self) -> tuple[dict, dict]:
        """(settings and step count, state arrays by name) for a checkpoint."""
        arrays = {f"m_{i}": m for i, m in enumerate(self.m or [])}
        arrays.update({f"v_{i}": v for i, v in enumerate(self.v or [])})
        return {"name": "adam", "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps, "t": self.t}, arrays

    def load_state(self, arrays: dict, params) -> None:
        """Restore the arrays of :meth:`state` next to ``params`` (same device and dtype)."""
        self.m = _restore(arrays, "m", params)
        self.v = _restore(arrays, "v", params)

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


def _restore(arrays: dict, prefix: str, params) -> list | None:
    """State arrays prefix_0.. moved next to params, or None when the optimizer had not stepped.

    State kept one array per layer (checkpoints and estimators saved before the parameters
    became one flat buffer) is joined in order when ``params`` is that one buffer: the flat
    layout is the layers' arrays raveled one after the other."""
    found = []
    while f"{prefix}_{len(found)}" in arrays:
        found.append(arrays[f"{prefix}_{len(found)}"])
    if not found:
        return None
    if len(params) == 1 and params[0].ndim == 1 and len(found) > 1:
        size, backend = sum(a.size for a in found), backend_for(params[0])
        if size != params[0].size:
            raise ValueError(f"optimizer state has {len(found)} '{prefix}' arrays of {size} values in all "
                             f"for {params[0].size} parameters")
        found = [backend.xp.concatenate([backend.asarray(a).ravel() for a in found])]
    if len(found) != len(params):
        raise ValueError(f"optimizer state has {len(found)} '{prefix}' arrays for {len(params)} parameters")
    restored = []
    for p, a in zip(params, found):
        if tuple(a.shape) != p.shape:
            raise ValueError(f"optimizer state '{prefix}' of shape {a.shape} does not fit a parameter of shape {p.shape}")
        r = _zeros_like(p)
        r[...] = backend_for(p).asarray(a, p.dtype)
        restored.append(r)
    return restored


def optimizer_from_state(settings: dict):
    """A fresh SGD or Adam with the settings (and Adam's step count) of :meth:`state`."""
    if settings.get("name") == "sgd":
        return SGD(settings["momentum"], settings["nesterov"])
    if settings.get("name") == "adam":
        opt = Adam(settings["beta1"], settings["beta2"], settings["eps"])
        opt.t = int(settings["t"])
        return opt
    raise ValueError(f"unknown optimizer state {settings!r}")


def clip_by_global_norm(xp, grads, max_norm: float):
    """Scale all gradients in place by min(1, max_norm / ||grads||), the norm over all of them.

    Returns the norm before clipping (a 0-d array on the gradients' device; no host sync).
    """
    norm = xp.sqrt(sum(xp.vdot(g, g) for g in grads))
    factor = xp.minimum(1, max_norm / (norm + 1e-12))
    for g in grads:
        g *= factor
    return norm


DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1, "momentum": 0.05, "nesterov": 0.05}


def make_optimizer(name: str, momentum: float = 0.9):
    """Optimizer for a name: "adam", "sgd" (no momentum), "momentum" or "nesterov" (an SGD or Adam
    object is returned as it is; anything else raises gpubp.params.ParameterError)."""
    if name == "adam":
        return Adam()
    if name == "sgd":
        return SGD(momentum=0.0)
    if name == "momentum":
        return SGD(momentum=momentum)
    if name == "nesterov":
        return SGD(momentum=momentum, nesterov=True)
    return check("optimizer", name)
