"""The CPU backend's kernel set, :data:`CPU_KERNELS`: the NumPy twins of :mod:`gpubp.ops`, with the
optimizer updates, ReLU's bias + activation, BP2 with BP3 and BP1's softmax-minus-y compiled.

An optimizer update is a dozen NumPy operations, each a pass over the parameters; here it is one
C loop (``kernels/host_kernels.c``, built on first use by :mod:`gpubp.host_build`) that reads p, g
and the state once; so is ReLU's z + b then max(., 0), and BP2's g * f'(a) with the bias gradient
of the same delta (the twin's two or three passes, and its mask cast to float); BP1's
softmax-minus-y is three C passes around NumPy's own exp and log. Each element goes
through the twin's operations in the twin's order and precision, so the results are the twins'
bit for bit, up to the sign of a zero or of a NaN (tests/test_host_kernels.py), for the scalars the
optimizers pass, Python floats, which NumPy rounds to the arrays' dtype. The other activations'
bias + activation stay the twins (their exp and tanh are NumPy's, which no C library matches bit
for bit). Where the library cannot be built (no C compiler), or the arrays are not contiguous
float32 or float64 arrays of the expected shapes, the twins run.

The kernels stay on the calling thread: next to OpenBLAS, whose threads keep spinning on the other
cores for a while after each product, the update on a second thread measured 6x slower (and an
OpenMP loop on both cores right after a product, 16x).
"""

from __future__ import annotations

import numpy as np

from . import ops
from .kernels import ACTIVATION_CODES
from .host_build import compiled_kernels


_SUFFIXES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}  # (dtype.name is slow)


def _kernel(name: str, first: np.ndarray, *others: np.ndarray):
    """The compiled kernel ``name`` for ``first``'s dtype, or None where the twin must run: no
    library, a dtype other than float32 and float64, or an array not C-contiguous of that dtype."""
    suffix = _SUFFIXES.get(first.dtype)
    if suffix is None or not first.flags.c_contiguous:
        return None
    for a in others:  # (a loop, not all() of a generator: this runs several times a step)
        if not (a.flags.c_contiguous and a.dtype == first.dtype):
            return None
    library, _ = compiled_kernels()
    return None if library is None else getattr(library, name + "_" + suffix)


def bias_activation(xp, z, b, name: str):
    """a = f(z + b), written over ``z`` (n, width); b (width,). Twin: ops.bias_activation."""
    kernel = _kernel("bias_relu", z, b) if name == "relu" and z.ndim == 2 and b.shape == z.shape[1:] else None
    if kernel is None:
        return ops.bias_activation(xp, z, b, name)
    kernel(z.ctypes.data, b.ctypes.data, z.shape[0], z.shape[1])
    return z


def backprop_delta(xp, g, a, name: str, db=None):
    """BP2 (and BP3 with db) in one pass: g * f'(a) written over g (n, width), db (width,) its
    column sums. Twin: ops.backprop_delta (a width of 1 goes there: NumPy sums that column pairwise)."""
    fits = g.ndim == 2 and a.shape == g.shape and g.shape[1] > 1 and (
        db is None or (db.shape == g.shape[1:] and not np.may_share_memory(db, g)))  # (the twin copies an overlap)
    kernel = _kernel("backprop_delta", g, a, *(() if db is None else (db,))) if fits else None
    if kernel is None or name not in ACTIVATION_CODES:
        return ops.backprop_delta(np, g, a, name, db)
    kernel(g.ctypes.data, a.ctypes.data, None if db is None else db.ctypes.data, g.shape[0], g.shape[1],
           ACTIVATION_CODES[name])
    return g


SOFTMAX_CLASSES = 8192  # the widest row whose sum NumPy adds in one pairwise sum on every version


def softmax_minus_y(xp, z, y, sample_weight=None, b=None):
    """BP1 and the mean loss: delta = (softmax(z + b) - Y) * scale (n, C) and a 0-d loss, from
    three C passes around NumPy's exp and log (the twin's sixteen NumPy calls, each slow on rows
    of a few classes). z (n, C), y int64 labels (n,), sample_weight (n,) or None, b (C,) or None.
    Twin: ops.softmax_minus_y, which also runs for other arrays (and for a label outside 0..C-1,
    so that it is treated as NumPy's indexing treats it)."""
    fits = (z.ndim == 2 and 0 < z.shape[0] and 0 < z.shape[1] <= SOFTMAX_CLASSES and y.shape == z.shape[:1]
            and y.dtype == np.int64 and y.flags.c_contiguous and (b is None or b.shape == z.shape[1:])
            and (sample_weight is None or sample_weight.shape == z.shape[:1]))  # (C reads w[r] for each row)
    shift = _kernel("softmax_shift", z, *(() if b is None else (b,))) if fits else None
    if shift is None:
        return ops.softmax_minus_y(np, z, y, sample_weight, b)
    (n, classes), library, suffix = z.shape, compiled_kernels()[0], _SUFFIXES[z.dtype]
    scale = ops.row_scale(n, z.dtype, sample_weight)  # 1/n, or (n, 1) contiguous w / sum(w)
    delta, picked, s = np.empty(z.shape, z.dtype), np.empty((2, n), z.dtype), np.empty((n, 1), z.dtype)
    y_at, delta_at, picked_at, s_at = y.ctypes.data, delta.ctypes.data, picked.ctypes.data, s.ctypes.data
    if shift(z.ctypes.data, None if b is None else b.ctypes.data, y_at, delta_at, picked_at, n, classes):
        return ops.softmax_minus_y(np, z, y, sample_weight, b)
    np.exp(delta, out=delta)  # delta and s fresh, as the twin's: NumPy's loops may depend on where they lie
    getattr(library, "softmax_row_sums_" + suffix)(delta_at, s_at, n, classes)
    row_loss = np.log(s)  # (n, 1)
    weighted = isinstance(scale, np.ndarray)
    getattr(library, "softmax_finish_" + suffix)(delta_at, s_at, row_loss.ctypes.data, picked_at, y_at,
                                                 scale.ctypes.data if weighted else None,
                                                 0 if weighted else float(scale), n, classes)
    return delta, row_loss.sum()


def _l2_scalar(l2, n_weights: int):
    """The L2 factor as the C loop takes it (a float; a 0-d array of p's dtype is read), or None
    where the twin must run: a negative n_weights (the twin's slice counts it from the end; past
    the end, both cover every parameter)."""
    return float(l2) if n_weights >= 0 else None


def sgd_momentum_update(xp, p, g, v, lr: float, momentum: float, nesterov: bool, l2=0.0,
                        n_weights: int = 0) -> None:
    """In place: v = momentum v - lr g; p += v (or the Nesterov step), g[:n_weights] read as
    g + l2 p (the L2 penalty's gradient; g is not changed).

    p, g, v: NumPy arrays of one shape and dtype. Twin: ops.sgd_momentum_update.
    """
    kernel = _kernel("sgd_momentum", p, g, v) if p.shape == g.shape == v.shape else None
    c = _l2_scalar(l2, n_weights)
    if kernel is None or c is None:
        ops.sgd_momentum_update(np, p, g, v, lr, momentum, nesterov, l2, n_weights)
    else:
        kernel(p.ctypes.data, g.ctypes.data, v.ctypes.data, p.size, lr, momentum, int(nesterov), c, n_weights)


def adam_update(xp, p, g, m, v, lr_t: float, beta1: float, beta2: float, eps: float, l2=0.0,
                n_weights: int = 0) -> None:
    """In place: Adam's m, v and p updates with the bias-corrected step size lr_t, g[:n_weights]
    read as g + l2 p (the L2 penalty's gradient; g is not changed).

    p, g, m, v: NumPy arrays of one shape and dtype. Twin: ops.adam_update (as there, 1 - beta
    is computed in double, then rounded to p's dtype).
    """
    kernel = _kernel("adam", p, g, m, v) if p.shape == g.shape == m.shape == v.shape else None
    c = _l2_scalar(l2, n_weights)
    if kernel is None or c is None:
        ops.adam_update(np, p, g, m, v, lr_t, beta1, beta2, eps, l2, n_weights)
    else:
        kernel(p.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data, p.size,
               lr_t, beta1, 1 - beta1, beta2, 1 - beta2, eps, c, n_weights)


class CpuKernels:
    """The "cpu" backend's kernel set (gpubp.kernel_set.KernelSet): the twins of gpubp.ops as they
    are, but for the optimizer updates, ReLU's bias + activation, BP2 with BP3 and BP1's
    softmax-minus-y, compiled here (the twins' results)."""

    bias_activation = staticmethod(bias_activation)
    backprop_delta = staticmethod(backprop_delta)
    softmax_minus_y = staticmethod(softmax_minus_y)
    output_minus_y = staticmethod(ops.output_minus_y)
    output_activation = staticmethod(ops.output_activation)
    cross_entropy = staticmethod(ops.cross_entropy)
    sgd_momentum_update = staticmethod(sgd_momentum_update)
    adam_update = staticmethod(adam_update)

    def __repr__(self) -> str:
        return "gpubp.host_kernels.CPU_KERNELS"


CPU_KERNELS = CpuKernels()
