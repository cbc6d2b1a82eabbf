"""The CPU backend's kernel set, :data:`CPU_KERNELS`: the NumPy twins of :mod:`gpubp.ops`, with the
optimizer updates compiled.

An optimizer update is a dozen NumPy operations, each a pass over the parameters; here it is one
C loop (``kernels/host_updates.c``, built on first use by :mod:`gpubp.host_build`) that reads p, g
and the state once. Each element goes through the twin's operations in the twin's order and
precision, so the results are bitwise the twins' (tests/test_host_kernels.py) for the scalars the
optimizers pass, Python floats, which NumPy rounds to the arrays' dtype. Where the library
cannot be built (no C compiler), or the arrays are not contiguous float32 or float64 arrays of
one shape, the twins run instead.

The updates stay on the calling thread: next to OpenBLAS, whose threads keep spinning on the other
cores for a while after each product, a second thread measured no faster.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .host_build import compiled_updates


def _compiled(name: str, arrays: tuple[np.ndarray, ...]):
    """The compiled update ``name`` for ``arrays`` (p first), or None where the twin must run:
    no library, or arrays not all C-contiguous of p's shape and dtype (float32 or float64)."""
    p = arrays[0]
    if p.dtype not in (np.float32, np.float64) or not all(
            a.flags.c_contiguous and a.shape == p.shape and a.dtype == p.dtype for a in arrays):
        return None
    library, _ = compiled_updates()
    return None if library is None else getattr(library, f"{name}_{p.dtype.name}")


def sgd_momentum_update(xp, p, g, v, lr: float, momentum: float, nesterov: bool) -> None:
    """In place: v = momentum v - lr g; p += v (or the Nesterov step).

    p, g, v: NumPy arrays of one shape and dtype. Twin: ops.sgd_momentum_update (bitwise equal).
    """
    update = _compiled("sgd_momentum", (p, g, v))
    if update is None:
        ops.sgd_momentum_update(np, p, g, v, lr, momentum, nesterov)
    else:
        update(p.ctypes.data, g.ctypes.data, v.ctypes.data, p.size, lr, momentum, int(nesterov))


def adam_update(xp, p, g, m, v, lr_t: float, beta1: float, beta2: float, eps: float) -> None:
    """In place: Adam's m, v and p updates with the bias-corrected step size lr_t.

    p, g, m, v: NumPy arrays of one shape and dtype. Twin: ops.adam_update (bitwise equal; as
    there, 1 - beta is computed in double, then rounded to p's dtype).
    """
    update = _compiled("adam", (p, g, m, v))
    if update is None:
        ops.adam_update(np, p, g, m, v, lr_t, beta1, beta2, eps)
    else:
        update(p.ctypes.data, g.ctypes.data, m.ctypes.data, v.ctypes.data, p.size,
               lr_t, beta1, 1 - beta1, beta2, 1 - beta2, eps)


class CpuKernels:
    """The "cpu" backend's kernel set (gpubp.kernel_set.KernelSet): the twins of gpubp.ops as they
    are, but for the optimizer updates, compiled here (bitwise the twins')."""

    bias_activation = staticmethod(ops.bias_activation)
    backprop_delta = staticmethod(ops.backprop_delta)
    softmax_minus_y = staticmethod(ops.softmax_minus_y)
    output_minus_y = staticmethod(ops.output_minus_y)
    output_activation = staticmethod(ops.output_activation)
    cross_entropy = staticmethod(ops.cross_entropy)
    sgd_momentum_update = staticmethod(sgd_momentum_update)
    adam_update = staticmethod(adam_update)

    def __repr__(self) -> str:
        return "gpubp.host_kernels.CPU_KERNELS"


CPU_KERNELS = CpuKernels()
