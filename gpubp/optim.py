"""Optimizers: SGD (momentum, Nesterov) and Adam, with their state held apart from them.

An optimizer object holds only its settings; the state its updates carry from step to step lives
in an :class:`OptimizerState` that the caller keeps::

    state = optimizer.init(net.flat_params)            # zeros shaped like the parameters
    optimizer.update(net.flat_params, grad, state, lr)  # params and state updated in place

so one optimizer object can train several networks or runs without their states mixing, and a
checkpoint stores the state as it is (:meth:`OptimizerState.arrays` and ``t``). The update
formulas are those of scikit-learn's ``_stochastic_optimizers``; the arithmetic is the backend's
kernel set (``sgd_momentum_update``, ``adam_update``), on the parameters' device and in their
dtype. ``update(..., lr, l2, net.n_weights)``, l2 = alpha / n, also adds the L2 penalty's
gradient l2 * W to the weights' gradient in the same pass (gpubp.engine's steps do, where no
clipping needs the whole gradient first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import ops
from .backend import backend_for
from .params import check, check_all


@dataclass
class OptimizerState:
    """What an optimizer's update reads and writes besides the parameters.

    Attributes
    ----------
    arrays : dict of name -> array
        Each shaped like the parameters, on their device and in their dtype: SGD with momentum
        has ``velocity``, Adam ``m`` and ``v``; plain SGD none.
    t : int
        Updates taken (Adam's bias correction uses it).
    """

    arrays: dict = field(default_factory=dict)
    t: int = 0


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

    def __repr__(self) -> str:
        return f"SGD(momentum={self.momentum}, nesterov={self.nesterov})"

    def settings(self) -> dict:
        """The settings by name, with ``"name": "sgd"`` (:func:`optimizer_from_settings` reads them)."""
        return {"name": "sgd", "momentum": self.momentum, "nesterov": self.nesterov}

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    @property
    def folds_l2(self) -> bool:
        """Whether :meth:`update` adds the L2 gradient inside its kernel's one pass (with momentum);
        plain SGD's update copies the gradient to add it, so trainers add it in place first."""
        return bool(self.momentum)

    def init(self, params) -> OptimizerState:
        """A fresh state for ``params`` (array, any shape): a zero velocity when there is momentum."""
        return OptimizerState({name: _zeros_like(params) for name in self.state_names})

    def update(self, params, grads, state: OptimizerState, lr: float, l2=0.0, n_weights: int = 0) -> None:
        """One step: ``params`` and ``state`` updated in place from ``grads`` (the shape of params),
        read with the L2 penalty's gradient ``l2 * params`` added to the first ``n_weights``
        (flat arrays, the weights first: gpubp.mlp's layout; ``grads`` is not changed). ``lr`` is
        taken as a Python float, which the kernels and their twins round to the parameters' dtype
        alike (a NumPy float64 would make the twins compute in float64)."""
        state.t += 1
        lr = float(lr)
        if not self.momentum:
            params -= lr * ops.l2_gradient(grads, params, l2, n_weights)
            return
        b = backend_for(params)
        b.kernels.sgd_momentum_update(b.xp, params, grads, state.arrays["velocity"], lr, self.momentum, self.nesterov,
                                      l2, n_weights)


class Adam:
    """Adam (Kingma and Ba, 2015) with the bias correction folded into the step size.

    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)``.
    """

    state_names = ("m", "v")
    folds_l2 = True  # (see SGD.folds_l2)

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        settings = check_all({"beta1": beta1, "beta2": beta2, "eps": eps})
        self.beta1, self.beta2, self.eps = settings["beta1"], settings["beta2"], settings["eps"]

    def __repr__(self) -> str:
        return f"Adam(beta1={self.beta1}, beta2={self.beta2}, eps={self.eps})"

    def settings(self) -> dict:
        """The settings by name, with ``"name": "adam"`` (:func:`optimizer_from_settings` reads them)."""
        return {"name": "adam", "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def init(self, params) -> OptimizerState:
        """A fresh state for ``params`` (array, any shape): zero moments ``m`` and ``v``."""
        return OptimizerState({name: _zeros_like(params) for name in self.state_names})

    def update(self, params, grads, state: OptimizerState, lr: float, l2=0.0, n_weights: int = 0) -> None:
        """One step: ``params`` and ``state`` updated in place from ``grads`` (the shape of params),
        with the L2 penalty's gradient folded in as in :meth:`SGD.update` (``lr`` as there)."""
        state.t += 1
        b1, b2 = self.beta1, self.beta2
        lr_t = float(lr) * math.sqrt(1 - b2**state.t) / (1 - b1**state.t)
        b = backend_for(params)
        b.kernels.adam_update(b.xp, params, grads, state.arrays["m"], state.arrays["v"], lr_t, b1, b2, self.eps,
                              l2, n_weights)


def optimizer_from_settings(settings: dict):
    """A fresh SGD or Adam from the settings of its :meth:`settings` (a checkpoint's)."""
    if settings.get("name") == "sgd":
        return SGD(settings["momentum"], settings["nesterov"])
    if settings.get("name") == "adam":
        return Adam(settings["beta1"], settings["beta2"], settings["eps"])
    raise ValueError(f"unknown optimizer settings {settings!r}")


def restore_state(optimizer, arrays: dict, t: int, params) -> OptimizerState:
    """The state of ``optimizer`` for ``params`` from stored host or device ``arrays`` by name,
    copied next to the parameters (their device and dtype), ``t`` updates taken.

    Accepted layouts of each state array ``name``: ``name`` itself (the parameters' shape);
    ``name_0`` alone (checkpoints of format 2 and 3); ``name_0, name_1, ...`` one per layer
    (format 1, before the parameters became one flat buffer), joined in order when ``params`` is
    flat. A name missing altogether means the optimizer had not stepped: zeros. Raises ValueError
    when the arrays do not fit the parameters."""
    state = optimizer.init(params)
    state.t = int(t)
    for name, target in state.arrays.items():
        found = _stored(arrays, name)
        if found is None:
            continue
        if params.ndim == 1 and len(found) > 1:
            size = sum(a.size for a in found)
            if size != params.size:
                raise ValueError(f"optimizer state has {len(found)} '{name}' arrays of {size} values in all "
                                 f"for {params.size} parameters")
            found = [backend_for(params).xp.concatenate([backend_for(params).asarray(a).ravel() for a in found])]
        if len(found) != 1 or tuple(found[0].shape) != params.shape:
            shapes = [tuple(a.shape) for a in found]
            raise ValueError(f"optimizer state '{name}' of shape(s) {shapes} does not fit parameters of shape "
                             f"{params.shape}")
        target[...] = backend_for(params).asarray(found[0], params.dtype)
    return state


def _stored(arrays: dict, name: str) -> list | None:
    """The stored arrays of state ``name``: [name], or [name_0, name_1, ...], or None."""
    if name in arrays:
        return [arrays[name]]
    found = []
    while f"{name}_{len(found)}" in arrays:
        found.append(arrays[f"{name}_{len(found)}"])
    return found or None


def host_state(state: OptimizerState, to_host) -> OptimizerState:
    """A copy of ``state`` with its arrays brought to the host by ``to_host`` (for a file or a pickle)."""
    return OptimizerState({name: to_host(a) for name, a in state.arrays.items()}, state.t)


def clip_by_global_norm(xp, grads, max_norm: float):
    """Scale all gradients in place by min(1, max_norm / ||grads||), the norm over all of them.

    The norm is BLAS's nrm2 (:meth:`gpubp.backend.Backend.norm`), which does not overflow: a
    float32 gradient of norm past 1.8e19 (its sum of squares overflows) is scaled to max_norm,
    not to zero. Returns the norm before clipping (a 0-d array on the gradients' device; no host
    sync). grads: a list of C-contiguous arrays of one dtype and device.
    """
    backend = backend_for(grads[0])
    norms = [backend.norm(g) for g in grads]
    norm = norms[0] if len(norms) == 1 else backend.norm(xp.stack(norms))
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
