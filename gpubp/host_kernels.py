"""The CPU backend's kernel set, :data:`CPU_KERNELS`: the NumPy twins of :mod:`gpubp.ops`, with the
optimizer updates run block by block.

An optimizer update is a dozen NumPy operations. Over a whole 2048x2048 parameter, each operation
streams its arrays through main memory again. Here the parameters are cut into blocks of
``BLOCK_BYTES`` per array, so that a block's intermediate results stay in the core's cache and
only p, g and the state arrays cross memory once. Each element goes through the same operations
as in the twin, so the results are bitwise the twins' (tests/test_host_kernels.py).

The updates stay on the calling thread: next to OpenBLAS, whose threads keep spinning on the other
cores for a while after each product, a second thread measured no faster.
"""

from __future__ import annotations

import threading

import numpy as np

from . import ops

# per array per block; measured on a 2-core AMD EPYC (1 MB of L2 per core), Adam over the
# 784-2048-2048-10 network's 5.8M parameters in a training step: float32 10.6 ms whole, 8.2 ms in
# blocks of 256 KB (11.7 at 32 KB, 8.3 at 512 KB); float64 26.5 -> 17.9 ms
BLOCK_BYTES = 1 << 18

_local = threading.local()  # each thread's scratch blocks, by dtype (threads may train side by side)


def _scratch(dtype: np.dtype, size: int) -> tuple[np.ndarray, np.ndarray]:
    """This thread's two scratch blocks of ``dtype``, the first ``size`` elements of each."""
    blocks = getattr(_local, "blocks", None)
    if blocks is None:
        blocks = _local.blocks = {}
    pair = blocks.get(dtype)
    if pair is None or pair[0].size < size:
        pair = blocks[dtype] = (np.empty(size, dtype), np.empty(size, dtype))
    return pair[0][:size], pair[1][:size]


def _blocked(update, arrays: tuple[np.ndarray, ...], *args) -> None:
    """``update(np, *arrays, *args, scratch)`` applied block by block to the flattened arrays.
    Arrays that are not all C-contiguous, or not of one shape and dtype, get one whole-array
    call instead."""
    p = arrays[0]
    if not all(a.flags.c_contiguous and a.shape == p.shape and a.dtype == p.dtype for a in arrays):
        update(np, *arrays, *args)
        return
    flat = [a.reshape(-1) for a in arrays]
    n, block = p.size, max(1, BLOCK_BYTES // p.itemsize)
    scratch = _scratch(p.dtype, min(n, block))
    for start in range(0, n, block):
        stop = min(start + block, n)
        update(np, *(f[start:stop] for f in flat), *args, (scratch[0][: stop - start], scratch[1][: stop - start]))


def sgd_momentum_update(xp, p, g, v, lr: float, momentum: float, nesterov: bool) -> None:
    """In place, blocked: v = momentum v - lr g; p += v (or the Nesterov step).

    p, g, v: NumPy arrays of one shape and dtype. Twin: ops.sgd_momentum_update (bitwise equal).
    """
    _blocked(ops.sgd_momentum_update, (p, g, v), lr, momentum, nesterov)


def adam_update(xp, p, g, m, v, lr_t: float, beta1: float, beta2: float, eps: float) -> None:
    """In place, blocked: Adam's m, v and p updates with the bias-corrected step size lr_t.

    p, g, m, v: NumPy arrays of one shape and dtype. Twin: ops.adam_update (bitwise equal).
    """
    _blocked(ops.adam_update, (p, g, m, v), lr_t, beta1, beta2, eps)


class CpuKernels:
    """The "cpu" backend's kernel set (gpubp.kernel_set.KernelSet): the twins of gpubp.ops as they
    are, but for the optimizer updates, which run block by block here (bitwise the twins')."""

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
