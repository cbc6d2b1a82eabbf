"""bfloat16 training: bfloat16 products and saved activations over float32 master parameters, and
the CPU model of what the card computes.

A network made with ``dtype="bfloat16"`` keeps its parameters (``flat_params``), gradients,
optimizer state, softmax, loss and every reduction in float32 (``net.dtype`` is float32); its
``net.compute_dtype`` is :data:`BFLOAT16`, the dtype of every product's inputs and output and of
the activations saved for the backward pass. bfloat16 keeps float32's 8 exponent bits and 7 of
its 23 explicit mantissa bits: one rounding is at most 2**-8 = 0.0039 relative (round to nearest
even), and a card multiplies it at the 16-bit tensor-core rate (H100: ~990 against ~50 TFLOP/s
for IEEE float32).

Where the values are rounded to bfloat16 (the same points on both devices):

- the weights W, once per pass (one cast of ``flat_params``, viewed per layer; the biases come
  along in it unused: they are added in float32);
- the inputs X, from their float32 values: a training set kept on the device once, when it is
  placed there (:func:`gpubp.batches.batch_feed` keeps it in bfloat16), streamed batches and
  the rows of a prediction as they enter a pass;
- the outputs of the forward products ``a[l-1] @ W[l]`` and of BP2's ``delta[l] @ W[l].T``:
  summed in float32 and rounded once, at the end, to bfloat16. BP4's ``a[l-1].T @ delta[l]`` and
  BP3's bias gradient (``ones @ delta[l]`` for a bfloat16 delta) are summed in float32 and
  written unrounded into the float32 gradient (:func:`gpubp.cublas_direct.matmul_into_float32`;
  PyTorch's autocast rounds dW to bfloat16 and widens it: a pass more, 16 bits of it lost);
- the hidden activations a = f(z + b) and the hidden deltas g * f'(a): computed in float32 from
  the bfloat16 z (or g, a) and the float32 bias, rounded once when stored (the kernels of
  gpubp.kernels widen with ``gpubp::widen`` and store into bfloat16; the twins of gpubp.ops
  compute in the bias's or float32 dtype and store into z's);
- BP1's delta[L] (float32 from the softmax kernel, which reads float32 logits) before it enters
  BP4 and BP2's products.

The GPU route, CuPy 14 (cupy/cupy 6b6d9563c): ``cupy.matmul`` of two 2-D bfloat16 arrays goes
through ``dot`` -> ``tensordot_core`` -> ``tensordot_core_v11`` (cupy/_core/_routines_linalg.pyx),
which calls ``cublasGemmEx`` with A, B and C in ``CUDA_R_16BF`` and ``CUBLAS_COMPUTE_32F``
(``get_compute_type`` of bfloat16 is ``COMPUTE_TYPE_DEFAULT``; ``to_compute_type_index`` gives it
slot 0): float32 sums, one rounding to bfloat16 at the output. With ``out`` a float32 array
(``matmul`` with ndim <= 2) CuPy still computes the product in bfloat16 and copies it into out.
A bfloat16 operand with a float32 one is promoted to a float32 product (``numpy.promote_types``),
so both operands are cast first. Batched (> 2-D) bfloat16 ``matmul`` takes the integer path
(``dtype.char`` of bfloat16 is 'E', not in 'efdFD') and is not used. The type is registered from
ml_dtypes in cupy/_core/_scalar.pyx (``_setup_type_dict``: typename ``bfloat16`` from
cupy/bfloat16.cuh, a class over ``__nv_bfloat16`` with an implicit ``operator float`` and a
rounding assignment), so ElementwiseKernels take bfloat16 arrays.

cuBLAS may add the partial sums of a split-K product in the output type (bfloat16) unless the
handle's math mode carries ``CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION``;
:func:`float32_accumulation` sets that flag around the network's products (PyTorch leaves it off
by default: ``allow_bf16_reduced_precision_reduction``), so the card sums in float32 as the CPU
model does.

CuPy cannot write a bfloat16 product into a float32 array: ``matmul`` with a float32 ``out``
computes a bfloat16 product and copies it (``_routines_linalg.pyx`` ``matmul``: a bfloat16
temporary, then ``elementwise_copy``). :func:`gpubp.cublas_direct.matmul_into_float32` calls
``cublasGemmEx`` through CuPy's binding (``cupy.cuda.cublas.gemmEx``, which sets the handle's
stream to the current one) with A and B in ``CUDA_R_16BF``, C in ``CUDA_R_32F`` and
``CUBLAS_COMPUTE_32F``, one of cuBLAS's documented gemmEx type combinations: one launch, no
temporary, no rounding. The handle's math mode (:func:`float32_accumulation`) applies to it too.

The CPU reference: :func:`matmul_as_bfloat16` computes the product of the bfloat16 operands in
float32 (NumPy's matmul on ml_dtypes arrays is slow) and rounds the result to bfloat16, the
rounding ml_dtypes does (nearest, ties to even) and ``__float2bfloat16`` does on the card, or
writes the float32 sums unrounded into a float32 ``out``, as cuBLAS writes a float32 C. The
products agree with the card's to the float32 summation order: a bfloat16 output differs by at
most one bfloat16 unit when the float32 sums fall on either side of a rounding boundary.
"""

from __future__ import annotations

import contextlib

import ml_dtypes
import numpy as np

from .precision import CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
BF16_UNIT_ROUNDOFF = 2.0**-8  # largest relative error of one rounding to bfloat16 (7 mantissa bits kept)
# ||A@B - exact|| / ||exact|| of a bfloat16 product of float32 zero-mean random A, B rounded to
# bfloat16 (inputs and output rounded once each; measured 2.87e-3 at K = 512 and 1024, any K)
BF16_TYPICAL_REL_ERROR = 2.9e-3


def parameter_dtype(mode) -> np.dtype:
    """The dtype of the parameters, gradients and optimizer state of a network in ``mode``:
    float32 for "bfloat16", the dtype itself for "float32" and "float64"."""
    dtype = np.dtype(mode)
    return np.dtype(np.float32) if dtype == BFLOAT16 else dtype


def network_dtype(requested, data_dtype) -> np.dtype:
    """The dtype to make an estimator's network with: ``requested`` (its ``dtype`` parameter:
    float32, float64 or bfloat16) when given, else ``data_dtype`` (None: the data's dtype in a
    fit, coefs_' in a prediction)."""
    return np.dtype(data_dtype if requested is None else requested)


def round_to_bfloat16(x) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32.

    Parameters
    ----------
    x : array_like of float32 or bfloat16, any shape

    Returns
    -------
    ndarray of float32, the shape of ``x``
    """
    return np.asarray(x).astype(BFLOAT16).astype(np.float32)


def matmul_as_bfloat16(a, b, out=None) -> np.ndarray:
    """The product a @ b as cuBLAS computes two bfloat16 matrices: float32 sums, the result
    rounded once to bfloat16 (or not at all, into a float32 out).

    Parameters
    ----------
    a : ndarray of bfloat16, shape (n, k)
    b : ndarray of bfloat16, shape (k, m)
    out : ndarray of bfloat16 or float32, shape (n, m), optional
        Written in place and returned: a float32 out gets the float32 sums unrounded (the model
        of :func:`gpubp.cublas_direct.matmul_into_float32`); a view works (BP4 writes dW[l] into
        the flat gradient so).

    Returns
    -------
    ndarray of bfloat16 (or out's dtype), shape (n, m)
    """
    if a.dtype != BFLOAT16 or b.dtype != BFLOAT16:
        raise TypeError(f"matmul_as_bfloat16 takes two bfloat16 arrays, got {a.dtype} and {b.dtype}")
    sums = np.matmul(a.astype(np.float32), b.astype(np.float32))  # (n, m) float32
    if out is None:
        return sums.astype(BFLOAT16)
    out[...] = sums
    return out


CUPY_NUMPY = "2.1.2"  # CuPy 14 registers bfloat16 only under this NumPy or newer (cupy/_core/_scalar.pyx)


def check_mode(dtype, tf32: bool, xp) -> None:
    """ValueError when tf32 is asked with bfloat16 (TF32 rounds float32 products; the products of
    a bfloat16 network are already bfloat16), and for bfloat16 on CuPy (``xp``) under a NumPy
    older than CUPY_NUMPY, where CuPy would refuse the network's first array."""
    if np.dtype(dtype) != BFLOAT16:
        return
    if tf32:
        raise ValueError("tf32=True cannot be combined with dtype bfloat16 (its products are bfloat16 "
                         "already): pass tf32=False, or dtype='float32' for TF32")
    if xp is not np and np.lib.NumpyVersion(np.__version__) < CUPY_NUMPY:
        raise ValueError(f"dtype bfloat16 on a GPU needs NumPy >= {CUPY_NUMPY} (CuPy registers bfloat16 "
                         f"only from there), and NumPy {np.__version__} is installed: "
                         f"pip install 'numpy>={CUPY_NUMPY}', or train in float32")


def _has_math_mode(xp) -> bool:
    cuda = getattr(xp, "cuda", None)
    return cuda is not None and hasattr(getattr(cuda, "cublas", None), "setMathMode")


@contextlib.contextmanager
def float32_accumulation(xp, enabled: bool = True):
    """The current thread's cuBLAS handle with ``CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION``
    added to its math mode inside the block, restored on exit: the partial sums of a bfloat16
    product stay float32. Nothing happens on NumPy, on a CuPy without cuBLAS's math mode, or
    when not enabled. Yields whether the flag was set."""
    if not enabled or not _has_math_mode(xp):
        yield False
        return
    cublas = xp.cuda.cublas
    handle = xp.cuda.device.get_cublas_handle()
    found = cublas.getMathMode(handle)
    cublas.setMathMode(handle, found | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)
    try:
        yield True
    finally:
        cublas.setMathMode(handle, found)
