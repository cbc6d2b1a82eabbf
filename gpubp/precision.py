"""TF32 products for one network at a time, and the CPU model of what they compute.

float32 stays IEEE float32 unless a network asks for TF32. TF32 ("TensorFloat-32") keeps
float32's 8 exponent bits and 10 of its 23 explicit mantissa bits: on Ampere and newer cards
(compute capability >= 8.0) cuBLAS can round both inputs of a float32 product to TF32, multiply
them on the tensor cores and add the products in float32, about 8x the float32 rate of the same
card (H100: ~400 against ~50 TFLOP/s).

CuPy reads the ``CUPY_TF32`` environment variable once per process, so a per-network switch needs
another lever. :func:`tf32_products` pulls two, for the products issued inside it:

- CuPy's float32 compute type (``cupy._core.set_compute_type``): every 2-D float32 product
  (``a @ W``, ``a.T @ delta``, ``delta @ W.T``) reaches ``tensordot_core_v11`` in
  ``cupy/_core/_routines_linalg.pyx``, which asks ``get_compute_type`` on every call and passes
  ``CUBLAS_COMPUTE_32F_FAST_TF32`` to ``cublasGemmEx`` when it is TF32 (``CUBLAS_COMPUTE_32F``
  otherwise). cuBLAS documents that compute type as TF32 tensor-core compute with inputs rounded
  to nearest even. This setting is one per process (a module-level list in CuPy), so it is held
  by a count: the first TF32 context in the process sets it, the last one to leave restores it.
- The cuBLAS handle's math mode (``cublasSetMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH)``): CuPy
  keeps one handle per thread and device, so this half is local to the thread and the device
  current at entry. It covers what the compute type does not reach: cuBLAS's typed routines
  (``cupy.cublas.gemm`` -> ``cublasSgemm``, ``sgemmBatched`` of broadcast batched products) and
  the batched ``matmul`` of arrays with more than two dimensions, which passes the legacy
  ``CUDA_R_32F`` compute type. It is restored (to the mode found at entry) on exit.

Both are restored when the block exits by an exception too. Nothing is changed on NumPy, when
TF32 is not asked for, or on a card older than compute capability 8.0 (no TF32 there). What is
not covered: another thread's float32 products issued while a TF32 context is open somewhere in
the process also get CuPy's TF32 compute type (the math-mode half stays in its own thread), and
``NVIDIA_TF32_OVERRIDE=0`` in the environment turns TF32 off in cuBLAS whatever is asked.

The CPU reference: :func:`round_to_tf32` rounds float32 to TF32 as cuBLAS documents its input
conversion (round to nearest, ties to even; the cuBLAS documentation of
``CUBLAS_TF32_TENSOR_OP_MATH`` and ``CUBLAS_COMPUTE_32F_FAST_TF32`` says "input conversions round
to nearest even"; a bare ``mma.sync`` on TF32 operands would instead ignore the 13 low bits, a
truncation). :func:`matmul_as_tf32` is the product as TF32 computes it: inputs rounded, sums in
float32. Error to expect from a TF32 product: each input rounding is at most 2**-11 relative;
for zero-mean random inputs the norm-relative error ``||A@B - exact|| / ||exact||`` is about
``sqrt(2) * 2.1e-4 = 2.9e-4`` whatever the inner size K (the error and the product both grow
like sqrt(K)); float32 IEEE products of K ~ 1000-4000 are near 1e-6.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

TF32_MANTISSA_BITS = 10
TF32_UNIT_ROUNDOFF = 2.0**-11  # largest relative error of one rounding to TF32 (normal numbers)
TF32_TYPICAL_REL_ERROR = 2.9e-4  # ||A@B - exact|| / ||exact||, zero-mean random A, B, any K
TF32_MIN_COMPUTE_CAPABILITY = 80  # Ampere

# cublasMath_t (cublas_api.h). CuPy 14's cublas.pxd names only the first two.
CUBLAS_DEFAULT_MATH = 0
CUBLAS_TF32_TENSOR_OP_MATH = 3
CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION = 16  # a flag, or-ed with a mode; kept as found

_DROPPED_BITS = 23 - TF32_MANTISSA_BITS  # 13 low mantissa bits of float32 that TF32 has not
_LOW = np.uint32((1 << _DROPPED_BITS) - 1)  # 0x1FFF
_HALF_MINUS_ONE = np.uint32((1 << (_DROPPED_BITS - 1)) - 1)  # 0x0FFF


# ------------------------------------------------------------------ the CPU reference


def round_to_tf32(x) -> np.ndarray:
    """float32 values rounded to the nearest TF32 value, ties to even, returned as float32.

    Parameters
    ----------
    x : array_like of float32, any shape

    Returns
    -------
    ndarray of float32, the shape of ``x``
        Each value with the 13 low mantissa bits cleared after rounding to nearest even on the
        10 bits kept. Subnormals round on the same grid (multiples of 2**-136), values at or
        above the halfway point past the largest TF32 value, (2 - 2**-11) * 2**127, become inf
        (IEEE overflow under round to nearest), signs are kept (-2**-149 gives -0.0), inf stays
        inf and NaN stays NaN (with its payload).
    """
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise TypeError(f"round_to_tf32 takes float32, got {x.dtype}")
    bits = x.view(np.uint32)  # same item size: a view of any layout
    kept_lsb = (bits >> np.uint32(_DROPPED_BITS)) & np.uint32(1)
    # adding 0x0FFF + kept_lsb carries into the kept bits exactly when the dropped part is above
    # half, or at half with an odd kept part; a carry out of the mantissa raises the exponent
    rounded = ((bits + _HALF_MINUS_ONE + kept_lsb) & ~_LOW).view(np.float32)
    return np.where(np.isnan(x), x, rounded)


def matmul_as_tf32(a, b, out=None) -> np.ndarray:
    """The product a @ b as TF32 tensor cores compute it: inputs rounded to TF32, sums in float32.

    Parameters
    ----------
    a : array_like of float32, shape (n, k)
    b : array_like of float32, shape (k, m)
    out : ndarray of float32, shape (n, m), optional
        Written in place and returned; a view works (the network writes BP4's dW[l] into its
        flat gradient this way).

    Returns
    -------
    ndarray of float32, shape (n, m)
        Agrees with a GPU TF32 product to float32 accumulation noise (about 1e-6 of the norm for
        k ~ 4000); differs from the IEEE product by about TF32_TYPICAL_REL_ERROR.
    """
    return np.matmul(round_to_tf32(a), round_to_tf32(b), out=out)


def check_tf32(tf32, dtype) -> bool:
    """Validate a network's ``tf32`` option against its dtype, once, at the entry point.

    Parameters
    ----------
    tf32 : bool
    dtype : numpy dtype or name
        The network's dtype; TF32 applies to float32 products only.

    Returns
    -------
    bool
        ``tf32`` itself.

    Raises
    ------
    TypeError
        When ``tf32`` is not a bool.
    ValueError
        When ``tf32`` is True and the dtype is not float32.
    """
    if not isinstance(tf32, (bool, np.bool_)):
        raise TypeError(f"tf32 must be True or False, got {tf32!r}")
    if tf32 and np.dtype(dtype) != np.float32:
        raise ValueError(f"tf32=True needs dtype float32 (TF32 rounds float32 inputs), got {np.dtype(dtype).name}")
    return bool(tf32)


# ------------------------------------------------------------------ the device switch


def tf32_supported(xp) -> bool:
    """Whether ``xp`` is CuPy on CUDA with a current device of compute capability >= 8.0."""
    cuda = getattr(xp, "cuda", None)
    if cuda is None or not hasattr(getattr(xp, "_core", None), "set_compute_type"):
        return False  # NumPy, or not a CuPy that has the switch
    if getattr(cuda.runtime, "is_hip", False):
        return False  # hipBLAS has no TF32
    return int(cuda.device.get_compute_capability()) >= TF32_MIN_COMPUTE_CAPABILITY


@contextlib.contextmanager
def tf32_products(xp, enabled: bool = True):
    """Let the float32 products issued inside the block use TF32 tensor cores.

    The network wraps its forward and its backward pass in it, ``with tf32_products(self.xp,
    self.tf32): ...``; everything outside stays IEEE float32. See the module docstring for the
    two switches it turns and what they cover.

    Parameters
    ----------
    xp : module
        numpy (nothing happens) or cupy.
    enabled : bool
        False: nothing happens (the network's default).

    Yields
    ------
    bool
        Whether TF32 is on inside the block (False on NumPy, when not enabled, or on a card older
        than compute capability 8.0).
    """
    if not enabled or not tf32_supported(xp):
        yield False
        return
    with tf32_compute_type(xp), tf32_math_mode(xp):
        yield True


_lock = threading.Lock()
_holds: dict[int, list] = {}  # id(xp) -> [open TF32 contexts, float32 compute type found by the first]


@contextlib.contextmanager
def tf32_compute_type(xp):
    """CuPy's float32 compute type set to TF32 while any such block is open in the process.

    One half of :func:`tf32_products`, public so that the device check can time each half.
    """
    core = xp._core
    tf32 = core._routines_linalg.COMPUTE_TYPE_TF32
    with _lock:
        hold = _holds.setdefault(id(xp), [0, None])
        if hold[0] == 0:
            found = core.get_compute_type(np.float32)
            core.set_compute_type(np.float32, tf32)
            hold[1] = found
        hold[0] += 1
    try:
        yield
    finally:
        with _lock:
            hold[0] -= 1
            if hold[0] == 0:
                del _holds[id(xp)]
                core.set_compute_type(np.float32, hold[1])


@contextlib.contextmanager
def tf32_math_mode(xp):
    """The current thread's cuBLAS handle for the current device in TF32 math mode, restored to
    the mode found at entry on exit (the handle of entry, even if the device changes inside).

    One half of :func:`tf32_products`, public so that the device check can time each half.
    """
    cublas = xp.cuda.cublas
    handle = xp.cuda.device.get_cublas_handle()
    found = cublas.getMathMode(handle)
    cublas.setMathMode(handle, CUBLAS_TF32_TENSOR_OP_MATH | (found & CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION))
    try:
        yield
    finally:
        cublas.setMathMode(handle, found)
