"""``cupy._core`` of the CuPy stand-in (tests/fake_cupy_arrays.py): CuPy 14.2's compute types,
and whether a float32 product of the stand-in runs as TF32.

Modelled on cupy/_core/_routines_linalg.pyx of CuPy v14.2.0: one compute type per dtype class
(bfloat16, float16, float32/complex64, float64/complex128), a module-level list in CuPy, so one
per process (here: one per installed stand-in, the process the test plays). ``COMPUTE_TYPE_TBD``
until first asked; ``get_compute_type`` then settles it to ``COMPUTE_TYPE_DEFAULT``, or to
``COMPUTE_TYPE_TF32`` for float32 when ``CUPY_TF32`` is set above 0 then (read once, as CuPy
reads it). ``set_compute_type`` refuses an unknown type (ValueError) and takes BF16 or TF32 only
on compute capability 8.0 or newer, warning and taking DEFAULT below; the stand-in's card is 9.0.

A 2-D float32 product of CuPy (``matmul``, ``@``, ``dot``) reaches ``tensordot_core_v11``, which
asks ``get_compute_type`` at every call and passes ``CUBLAS_COMPUTE_32F_FAST_TF32`` to
cublasGemmEx when it is TF32; a batched one (more than two dimensions) passes the legacy
``CUDA_R_32F`` compute type, under which cuBLAS follows the handle's math mode, as do its typed
routines (cublasSgemm: tests/fake_cublas.py). TF32 there computes as
gpubp.precision.matmul_as_tf32: inputs rounded to TF32 (nearest even), sums in float32.
"""

from __future__ import annotations

import os
import types
import warnings

import numpy as np

from gpubp.precision import CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION, CUBLAS_TF32_TENSOR_OP_MATH

# cupy/_core/_routines_linalg.pxd (cpdef enum)
COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC = 0, 1, 2
COMPUTE_TYPE_FP16, COMPUTE_TYPE_FP32, COMPUTE_TYPE_FP64 = 3, 4, 5
COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32 = 6, 7
_PLAIN = (COMPUTE_TYPE_TBD, COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_PEDANTIC, COMPUTE_TYPE_FP16, COMPUTE_TYPE_FP32,
          COMPUTE_TYPE_FP64)


def _index(dtype) -> int:
    """to_compute_type_index: bfloat16 0, float16 1, float32/complex64 2, float64/complex128 3."""
    dtype = np.dtype(dtype)
    if dtype.char == "e":
        return 1
    if dtype.char in "fF":
        return 2
    if dtype.char in "dD":
        return 3
    if dtype.name == "bfloat16":
        return 0
    raise TypeError(f"dtype is not supported: {dtype}")


def make_core(compute_capability) -> tuple[types.ModuleType, types.ModuleType]:
    """A fresh ``cupy._core`` and its ``_routines_linalg``, every compute type TBD;
    ``compute_capability()`` gives the current device's, as a string ("90")."""
    compute_types = [COMPUTE_TYPE_TBD] * 4
    linalg = types.ModuleType("cupy._core._routines_linalg")
    for name, value in globals().items():
        if name.startswith("COMPUTE_TYPE_"):
            setattr(linalg, name, value)

    def set_compute_type(dtype, compute_type):
        if compute_type in _PLAIN:
            compute_types[_index(dtype)] = compute_type
        elif compute_type in (COMPUTE_TYPE_BF16, COMPUTE_TYPE_TF32):
            if int(compute_capability()) >= 80:
                compute_types[_index(dtype)] = compute_type
            else:
                warnings.warn("COMPUTE_TYPE_BF16 and COMPUTE_TYPE_TF32 are only available on GPUs with compute "
                              "capability 8.0 or higher. COMPUTE_TYPE_DEFAULT will be used instead.")
                compute_types[_index(dtype)] = COMPUTE_TYPE_DEFAULT
        else:
            raise ValueError(f"Unknown compute type: {compute_type}")

    def get_compute_type(dtype):
        index = _index(dtype)
        if compute_types[index] == COMPUTE_TYPE_TBD:
            compute_type = COMPUTE_TYPE_DEFAULT
            if np.dtype(dtype).char in "fF" and int(os.getenv("CUPY_TF32", "0")) > 0:
                compute_type = COMPUTE_TYPE_TF32
            set_compute_type(dtype, compute_type)
        return compute_types[index]

    linalg.get_compute_type, linalg.set_compute_type = get_compute_type, set_compute_type
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    core.get_compute_type, core.set_compute_type = get_compute_type, set_compute_type
    return core, linalg


def product_is_tf32(core, math_mode: int, a, b) -> bool:
    """Whether CuPy's product of the device arrays ``a`` and ``b`` runs as TF32 on a card: both
    float32, and for 2-D operands the float32 compute type is TF32 (read now, as
    tensordot_core_v11 reads it), for batched ones the handle's math mode is TF32 (the flag
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION aside). 1-D operands are not modelled
    (IEEE): gpubp's products are 2-D."""
    if getattr(a, "dtype", None) != np.float32 or getattr(b, "dtype", None) != np.float32:
        return False
    if a.ndim == 2 and b.ndim == 2:
        return core.get_compute_type(np.float32) == COMPUTE_TYPE_TF32
    return min(a.ndim, b.ndim) >= 2 and math_mode_is_tf32(math_mode)


def math_mode_is_tf32(math_mode: int) -> bool:
    """cuBLAS's typed float32 routines (cublasSgemm) run as TF32 under this handle math mode."""
    return math_mode & ~CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION == CUBLAS_TF32_TENSOR_OP_MATH
