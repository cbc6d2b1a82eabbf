"""The BP steps as hand-written CUDA kernels, built from the sources in kernels/ with CuPy, and
the "cuda" backend's kernel set, :data:`CUDA_KERNELS`.

Each kernel function here has the signature of its NumPy twin in :mod:`gpubp.ops` (same name)
and does in one pass over memory what the twin does in several:

- ``bias_activation``: z + b and the activation (ElementwiseKernel per activation);
- ``backprop_delta``: BP2's g * f'(a) with f' from the saved activation (ElementwiseKernel), and
  with ``db`` BP3's column sums of the result (CuPy's reduction, a second launch);
  both take bfloat16 z, g and a (a bfloat16 network's, gpubp.bfloat16): CuPy binds them to
  cupy/bfloat16.cuh's class, the math runs in float, and the result is rounded once when stored;
- ``softmax_minus_y``: BP1 and the loss, with the output layer's bias added on the way in, in
  one RawKernel launch (one warp per row) and a sum of the rows' losses;
- ``sgd_momentum_update`` and ``adam_update``: one pass over each parameter.

The operations of the kernel set with no kernel of their own (:data:`TWINS_RUN_BY_CUPY`: the
non-softmax output layers, the output activation, the evaluation loss) are the twins, run by
cupy's array calls.

The per-element math lives in ``kernels/gpubp_math.cuh`` as host+device functions, so the CPU
tests compile the same source with g++. Kernels are built once per name and memoized; cupy is
imported only when a kernel is first used, so this module imports on machines without it.
Labels must be checked on the host before they reach a kernel (the GPU does not bounds-check):
``MLP.loss_and_grads`` and ``fit`` do this.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from . import ops
from .ops import row_scale

ACTIVATION_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
_WARPS_PER_BLOCK = 8  # rows per block of softmax_minus_y

# NVRTC fuses a * b + c into one multiply-add by default (--fmad=true): it rounds once where NumPy
# rounds twice, so float32 results would drift from the twins by more than their tolerance
# (1 - a*a for a near 1, the momentum and Adam updates). The kernels are memory-bound (8 to 28
# bytes per element for a handful of flops), so separate multiplies and adds cost no time worth
# measuring; benchmarks/device_check.py times both builds to show it. CuPy adds -ftz=true itself:
# float32 denormals are flushed, so a float32 result below 1.2e-38 may read 0 on the GPU.
COMPILE_OPTIONS = ("--fmad=false",)


@dataclass(frozen=True)
class ElementwiseSpec:
    """The parts of a CuPy ElementwiseKernel, and the NumPy twin it must agree with."""

    name: str
    in_params: str
    out_params: str
    operation: str
    twin: str


def _specs() -> dict[str, ElementwiseSpec]:
    specs = {}
    for act, code in ACTIVATION_CODES.items():
        # T: the stored dtype of z, a and g (bfloat16 in a bfloat16 network); F: the bias's.
        # gpubp::widen reads a bfloat16 as float, so the math runs in float and the assignment to
        # a T rounds once (cupy/bfloat16.cuh's operator=); for float and double it does nothing.
        specs[f"gpubp_bias_{act}"] = ElementwiseSpec(
            f"gpubp_bias_{act}", "T z, F b", "T a",
            f"a = gpubp::activate<{code}>(gpubp::widen(z) + b)", "ops.bias_activation")
        if act != "identity":
            specs[f"gpubp_backprop_delta_{act}"] = ElementwiseSpec(
                f"gpubp_backprop_delta_{act}", "T a", "T g",
                f"g = gpubp::widen(g) * gpubp::derivative_from_a<{code}>(gpubp::widen(a))", "ops.backprop_delta")
    # the updates read g + l2 p for the first n_weights elements (i: the element's flat index)
    gradient = "gpubp::l2_gradient(g, p, l2, i < n_weights)"
    specs["gpubp_sgd_momentum"] = ElementwiseSpec(
        "gpubp_sgd_momentum", "T g, T lr, T mu, bool nesterov, T l2, int64 n_weights", "T p, T v",
        f"gpubp::sgd_momentum(p, v, {gradient}, lr, mu, nesterov)", "ops.sgd_momentum_update")
    specs["gpubp_adam"] = ElementwiseSpec(
        "gpubp_adam",
        "T g, T lr_t, T beta1, T one_minus_beta1, T beta2, T one_minus_beta2, T eps, T l2, int64 n_weights",
        "T p, T m, T v",
        f"gpubp::adam(p, m, v, {gradient}, lr_t, beta1, one_minus_beta1, beta2, one_minus_beta2, eps)",
        "ops.adam_update")
    return specs


ELEMENTWISE_SPECS = _specs()


def source_dir() -> Path:
    """Folder holding the CUDA sources: kernels/ of a source checkout or an editable install,
    else gpubp/_cuda/ inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "kernels", here / "_cuda"):
        if (candidate / "gpubp_math.cuh").is_file():
            return candidate
    raise FileNotFoundError(
        f"gpubp's CUDA sources (gpubp_math.cuh) are in neither {here.parent / 'kernels'} nor "
        f"{here / '_cuda'}; reinstall gpubp"
    )


@functools.lru_cache(maxsize=None)
def read_source(name: str) -> str:
    """Text of one file of the CUDA sources."""
    return (source_dir() / name).read_text()


@functools.lru_cache(maxsize=None)
def elementwise_kernel(name: str):
    """The cupy.ElementwiseKernel built from ``ELEMENTWISE_SPECS[name]``, once per name."""
    import cupy

    spec = ELEMENTWISE_SPECS[name]
    return cupy.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name,
                                  preamble=read_source("gpubp_math.cuh"), options=COMPILE_OPTIONS)


@functools.lru_cache(maxsize=None)
def _rows_module():
    import cupy

    return cupy.RawModule(code=read_source("gpubp_math.cuh") + read_source("softmax_rows.cu"),
                          options=COMPILE_OPTIONS)


def clear_cache() -> None:
    """Forget every built kernel, so the next call builds it again (from the cupy now imported)."""
    for cache in (elementwise_kernel, _rows_module):
        cache.cache_clear()


def bias_activation(xp, z, b, name: str):
    """a = f(z + b) in one pass, written over z. z: (n, width); b: (width,) of z's dtype (float32
    for a bfloat16 z). Twin: ops.bias_activation."""
    if b.dtype != ops.wide_dtype(z.dtype):  # F is free in CuPy: a float64 b would turn the math double
        raise TypeError(f"Type is mismatched: b is {b.dtype}, z of {z.dtype} takes b of {ops.wide_dtype(z.dtype)}")
    elementwise_kernel(f"gpubp_bias_{name}")(z, b, z)
    return z


def backprop_delta(xp, g, a, name: str, db=None):
    """BP2's g * f'(a) in one pass, written over g = delta_next @ W.T; with db (width,), BP3's
    db = the column sums of that delta in a second launch (CuPy's reduction). Twin: ops.backprop_delta."""
    if name != "identity":
        elementwise_kernel(f"gpubp_backprop_delta_{name}")(a, g)
    if db is not None:
        g.sum(axis=0, out=db)
    return g


def softmax_minus_y(xp, z, y, sample_weight=None, b=None):
    """BP1 and the loss in one launch: delta (n, C) = (softmax(z + b) - Y) * scale, and the loss,
    the sum of the rows' shares. One warp per row (kernels/softmax_rows.cu); the bias b (C,),
    when given, is added as the logits are read, so the output layer needs no launch of its own.
    z: (n, C); y: (n,) int labels checked on the host; sample_weight: (n,) on the device, its sum
    taken on the device (no host sync). Twin: ops.softmax_minus_y.
    """
    n, C = z.shape  # n >= 1, as the twin's 1/n needs (the callers never pass an empty batch)
    z = xp.ascontiguousarray(z)
    y = xp.ascontiguousarray(y, dtype=xp.int64)
    t = z.dtype.type
    has_bias, b = (0, z) if b is None else (1, xp.ascontiguousarray(b, dtype=z.dtype))  # z: an unread stand-in
    if sample_weight is None:
        weighted, w, wsum = 0, z, z  # unread stand-ins
    else:
        w = xp.ascontiguousarray(sample_weight, dtype=z.dtype)
        weighted, wsum = 1, w.sum()
    delta = xp.empty((n, C), dtype=z.dtype)
    loss_rows = xp.empty(n, dtype=z.dtype)
    suffix = {"float32": "f32", "float64": "f64"}[z.dtype.name]
    kernel = _rows_module().get_function(f"gpubp_softmax_minus_y_rows_{suffix}")
    blocks = (n + _WARPS_PER_BLOCK - 1) // _WARPS_PER_BLOCK
    kernel((blocks,), (32 * _WARPS_PER_BLOCK,),
           (z, b, xp.int32(has_bias), y, t(row_scale(n, z.dtype)), w, wsum.reshape(1) if weighted else wsum,
            xp.int32(weighted), delta, loss_rows, xp.int64(n), xp.int64(C)))
    return delta, loss_rows.sum()


def _l2_argument(xp, l2, t):
    """The L2 factor as a kernel argument: a 0-d device array as it is (alpha over a sum of
    sample weights, left on the device), a number rounded to the parameters' dtype."""
    return l2 if isinstance(l2, xp.ndarray) else t(l2)


def sgd_momentum_update(xp, p, g, v, lr: float, momentum: float, nesterov: bool, l2=0.0,
                        n_weights: int = 0) -> None:
    """One pass: v = momentum v - lr g; p += v (or the Nesterov step), g[:n_weights] read as
    g + l2 p. p, g, v: flat for n_weights > 0. Twin: ops.sgd_momentum_update."""
    t = p.dtype.type
    elementwise_kernel("gpubp_sgd_momentum")(g, t(lr), t(momentum), bool(nesterov), _l2_argument(xp, l2, t),
                                             xp.int64(n_weights), p, v)


def adam_update(xp, p, g, m, v, lr_t: float, beta1: float, beta2: float, eps: float, l2=0.0,
                n_weights: int = 0) -> None:
    """One pass of Adam over p, m and v, g[:n_weights] read as g + l2 p. Twin: ops.adam_update."""
    t = p.dtype.type
    elementwise_kernel("gpubp_adam")(g, t(lr_t), t(beta1), t(1 - beta1), t(beta2), t(1 - beta2), t(eps),
                                     _l2_argument(xp, l2, t), xp.int64(n_weights), p, m, v)


# the operations of the kernel set that have no CUDA kernel: CUDA_KERNELS runs their twins with cupy
TWINS_RUN_BY_CUPY = ("output_minus_y", "output_activation", "cross_entropy")


class CudaKernels:
    """The "cuda" backend's kernel set (gpubp.kernel_set.KernelSet): the kernels above, and the
    twins of gpubp.ops run by cupy for the operations of TWINS_RUN_BY_CUPY."""

    bias_activation = staticmethod(bias_activation)
    backprop_delta = staticmethod(backprop_delta)
    softmax_minus_y = staticmethod(softmax_minus_y)
    output_minus_y = staticmethod(ops.output_minus_y)  # twin, run by cupy
    output_activation = staticmethod(ops.output_activation)  # twin, run by cupy
    cross_entropy = staticmethod(ops.cross_entropy)  # twin, run by cupy
    sgd_momentum_update = staticmethod(sgd_momentum_update)
    adam_update = staticmethod(adam_update)

    def __repr__(self) -> str:
        return "gpubp.kernels.CUDA_KERNELS"


CUDA_KERNELS = CudaKernels()
