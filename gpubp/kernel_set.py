"""The kernel set: every array operation of a training step and of a prediction, as one contract.

The network (gpubp.mlp) and the optimizers (gpubp.optim) never call these operations directly;
they call ``backend.kernels.<operation>``, and ``backend.kernels`` is one of three
interchangeable implementations of :class:`KernelSet`:

- ``gpubp.ops.TWIN_KERNELS``: the NumPy twins, plain array calls that run on numpy or cupy;
  the reference that every other implementation is checked against;
- ``gpubp.host_kernels.CPU_KERNELS``: the twins, with the optimizer updates compiled from C
  (the "cpu" backend's set);
- ``gpubp.kernels.CUDA_KERNELS``: hand-written CUDA kernels, and the twins run by cupy for the
  operations that have no kernel of their own (the "cuda" backend's set).

Every operation takes the array module ``xp`` (numpy or cupy) first. Rows are samples: ``z`` and
``a`` are (n, width), labels ``y`` are (n,) integers in 0..C-1, checked on the host by the caller
(a CUDA kernel does not bounds-check). gpubp.parity checks each operation of :data:`OPERATIONS`
against its twin; :func:`check_kernel_set` says what an object lacks to be a kernel set.
"""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable


@runtime_checkable
class KernelSet(Protocol):
    """The operations a kernel set provides, with their signatures; see gpubp.ops for the math."""

    def bias_activation(self, xp, z, b, name: str):
        """a = f(z + b) of a hidden layer, written over z and returned. z: (n, width), the product
        a[l-1] @ W[l]; b: (width,); name: one of gpubp.ops.ACTIVATIONS."""

    def backprop_delta(self, xp, g, a, name: str, db=None):
        """BP2's elementwise half: g * f'(z) with f' from the saved a = f(z), written over
        g = delta[l+1] @ W[l+1].T and returned; with db, BP3 of that layer too: db = the column
        sums of the result. g, a: (n, width); db: (width,) of g's dtype, or None."""

    def softmax_minus_y(self, xp, z, y, sample_weight=None, b=None):
        """BP1 and the loss of a softmax output: (delta (n, C), loss 0-d) with
        delta = (softmax(z + b) - Y) * scale, scale 1/n or w_i / sum(w). z: (n, C), not modified;
        y: (n,) int labels; sample_weight: (n,) or None; b: (C,) or None."""

    def output_minus_y(self, xp, z, Y, output: str, sample_weight=None):
        """BP1 and the loss of a logistic, identity or exp output: (delta (n, k), loss 0-d) with
        delta = (f(z) - Y) * scale. z, Y: (n, k), z not modified; sample_weight: (n,) or None."""

    def output_activation(self, xp, z, output: str):
        """a[L] = f(z[L]) (n, k) of any output layer of gpubp.ops.OUTPUTS; z may be overwritten."""

    def cross_entropy(self, xp, z, y):
        """Mean cross-entropy (0-d) of logits z (n, C) and labels y (n,): the evaluation loss."""

    def sgd_momentum_update(self, xp, p, g, v, lr: float, momentum: float, nesterov: bool, l2=0.0,
                            n_weights: int = 0) -> None:
        """In place: v = momentum v - lr g; p += v (or p += momentum v - lr g, Nesterov).
        p, g, v: arrays of one shape and dtype; g is not changed. With n_weights > 0 the L2
        penalty's gradient is folded in: g[:n_weights] is read as g + l2 * p (p, g, v flat, the
        weights first; l2 = alpha / n, a number or a 0-d array of p's dtype)."""

    def adam_update(self, xp, p, g, m, v, lr_t: float, beta1: float, beta2: float, eps: float, l2=0.0,
                    n_weights: int = 0) -> None:
        """In place: Adam's m, v and p updates with the bias-corrected step size lr_t.
        p, g, m, v: arrays of one shape and dtype; l2 and n_weights as in sgd_momentum_update."""


OPERATIONS = tuple(name for name, member in vars(KernelSet).items()
                   if inspect.isfunction(member) and not name.startswith("_"))
"""The names of the operations of :class:`KernelSet`, in the order they are declared."""


def _signature_problem(name: str, implementation) -> str | None:
    """Why ``implementation`` cannot stand for the operation ``name``, or None when it can: it
    must be callable with the contract's parameters, in order, by name; extra ones need defaults.
    (A wrapper keeps the signature of what it wraps through functools.wraps.)"""
    if not callable(implementation):
        return f"{name} is not callable"
    try:
        given = list(inspect.signature(implementation).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return None
    wanted = list(inspect.signature(getattr(KernelSet, name)).parameters.values())[1:]  # without self
    names = [p.name for p in given[:len(wanted)]]
    if names != [p.name for p in wanted]:
        return f"{name} takes ({', '.join(p.name for p in given)}), not ({', '.join(p.name for p in wanted)})"
    extra = [p.name for p in given[len(wanted):] if p.default is inspect.Parameter.empty]
    optional = [p.name for p, q in zip(given, wanted) if q.default is not inspect.Parameter.empty
                and p.default is inspect.Parameter.empty]
    if extra or optional:
        return f"{name} requires {', '.join(extra + optional)}, which the contract leaves out"
    return None


def kernel_set_problems(kernels) -> list[str]:
    """What ``kernels`` lacks to be a :class:`KernelSet`: one line per operation that is missing
    or has another signature; empty when it is complete."""
    problems = []
    for name in OPERATIONS:
        implementation = getattr(kernels, name, None)
        if implementation is None:
            problems.append(f"{name} is missing")
            continue
        problem = _signature_problem(name, implementation)
        if problem:
            problems.append(problem)
    return problems


def check_kernel_set(kernels) -> KernelSet:
    """``kernels`` if it implements every operation of :class:`KernelSet`, else a ValueError
    naming each missing or mismatched operation."""
    problems = kernel_set_problems(kernels)
    if problems:
        raise ValueError(f"{kernels!r} is not a complete kernel set: {'; '.join(problems)}; "
                         f"a kernel set implements {', '.join(OPERATIONS)} (gpubp.kernel_set.KernelSet)")
    return kernels
