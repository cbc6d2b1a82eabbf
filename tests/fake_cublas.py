"""libcublas as gpubp.cublas_direct calls it (ctypes), played over the CuPy stand-in's memory.

:class:`FakeCublas` has the four entry points gpubp calls and returns cuBLAS's status codes. A
device pointer must lie, with the whole extent the call reads or writes, inside a live device
buffer of the stand-in (tests/fake_cupy_arrays.py ``device_matrix``), and a leading dimension
must be at least the stored matrix's rows, as cuBLAS checks (CUBLAS_STATUS_INVALID_VALUE
otherwise): so a wrong op, leading dimension or offset gives a wrong product, or a refusal, as
it would on a card. Every refusal is a returned status, never an exception, as from libcublas.
alpha and beta are host pointers read when the call is made (host pointer mode), so a captured
gemm keeps the values it was captured with; one that points into a live device buffer is refused
with CUBLAS_STATUS_INVALID_VALUE (stricter than cuBLAS, which would read the device address on the
host and crash or read garbage).

A gemm runs on the stream last set on the handle: while that stream captures it is recorded
(tests/fake_cupy_arrays.py ``run_on``) and runs at each launch of the graph. Stricter than
cuBLAS, on purpose: a gemm captured on a handle that was given no workspace
(cublasSetWorkspace) is refused with CUBLAS_STATUS_NOT_SUPPORTED, as cuBLAS may allocate its
workspace then, which a capture forbids (cuBLAS's guide, "CUDA Graphs Support"); and, as in
cuBLAS, cublasSetStream puts the handle back on that pool, so a workspace is set after it.
"""

from __future__ import annotations

import ctypes

import ml_dtypes
import numpy as np

from gpubp import precision

from . import fake_cupy_arrays, fake_cupy_core

SUCCESS, INVALID_VALUE, NOT_SUPPORTED = 0, 7, 15


class FakeCublas:
    """cublasSetStream_v2, cublasSetWorkspace_v2, cublasSgemm_v2 and cublasDgemm_v2 (ctypes-style
    positional arguments, int status) on the handle of the installed stand-in ``cupy``. Sgemm
    runs as TF32 when the handle's math mode (the stand-in's ``cupy.cuda.cublas.setMathMode``,
    read at the call) is CUBLAS_TF32_TENSOR_OP_MATH, as cuBLAS's typed routines do."""

    def __init__(self, cupy):
        self.handle = cupy.cuda.device.get_cublas_handle()
        self.stream = 0  # the null stream until SetStream
        self.workspace: tuple[int, int] | None = None
        self.gemms = 0  # gemms called (run or captured)

    def cublasSetStream_v2(self, handle, stream) -> int:
        if handle != self.handle:
            return INVALID_VALUE
        self.stream = int(stream or 0)
        self.workspace = None  # as cuBLAS's guide says: back to its own pool, whatever was set
        return SUCCESS

    def cublasSetWorkspace_v2(self, handle, ptr, nbytes) -> int:
        if handle != self.handle or fake_cupy_arrays.device_matrix(ptr, nbytes, 1, nbytes, np.uint8) is None:
            return INVALID_VALUE
        self.workspace = (ptr, nbytes)
        return SUCCESS

    def cublasSgemm_v2(self, *args) -> int:
        return self._gemm(np.float32, *args)

    def cublasDgemm_v2(self, *args) -> int:
        return self._gemm(np.float64, *args)

    def _gemm(self, dtype, handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc) -> int:
        """C (m, n) = alpha op(A) (m, k) @ op(B) (k, n) + beta C, column-major."""
        if handle != self.handle:
            return INVALID_VALUE
        stream = fake_cupy_arrays.stream_by_ptr(self.stream)
        if stream is not None and stream.capture is not None and self.workspace is None:
            return NOT_SUPPORTED
        mode = fake_cupy_arrays.activity().math_modes.get(handle, 0)  # read at the call: a graph keeps it
        tf32 = dtype == np.float32 and fake_cupy_core.math_mode_is_tf32(mode)
        gemm = column_major_gemm(transa, transb, m, n, k, (alpha, beta, dtype), (A, lda, dtype), (B, ldb, dtype),
                                 (C, ldc, dtype), tf32=tf32)
        if isinstance(gemm, int):
            return gemm
        self.gemms += 1
        fake_cupy_arrays.run_on(self.stream, gemm)
        return SUCCESS


# cuBLAS's cudaDataType_t (library_types.h) and cublasComputeType_t / cublasGemmAlgo_t (cublas_api.h)
CUDA_TYPES = {0: np.dtype(np.float32), 1: np.dtype(np.float64), 14: np.dtype(ml_dtypes.bfloat16)}
COMPUTE_32F, GEMM_DEFAULT = 68, -1


def column_major_gemm(transa, transb, m, n, k, scalars: tuple, A: tuple, B: tuple, C: tuple, tf32=False):
    """The operation C (m, n) = alpha op(A) (m, k) @ op(B) (k, n) + beta C over the stand-in's
    memory, column-major, each matrix given as (pointer, leading dimension, dtype) and the scalars
    as (alpha pointer, beta pointer, their dtype, on the host); or cuBLAS's refusal, a status. The
    sums are float32 for bfloat16 operands (CUBLAS_COMPUTE_32F), and C is rounded once to its dtype.
    ``tf32`` (float32 operands in TF32 math mode): op(A) and op(B) rounded to TF32 when the gemm
    runs, sums in float32 (gpubp.precision.matmul_as_tf32)."""
    if transa not in (0, 1) or transb not in (0, 1) or min(m, n, k) < 0:
        return INVALID_VALUE
    (A, lda, a_dtype), (B, ldb, b_dtype), (C, ldc, c_dtype) = A, B, C
    stored_a = (m, k) if transa == 0 else (k, m)
    stored_b = (k, n) if transb == 0 else (n, k)
    if lda < max(1, stored_a[0]) or ldb < max(1, stored_b[0]) or ldc < max(1, m):
        return INVALID_VALUE
    a = fake_cupy_arrays.device_matrix(A, *stored_a, lda, a_dtype)
    b = fake_cupy_arrays.device_matrix(B, *stored_b, ldb, b_dtype)
    c = fake_cupy_arrays.device_matrix(C, m, n, ldc, c_dtype)
    if a is None or b is None or c is None:
        return INVALID_VALUE
    alpha, beta, scalar_dtype = scalars
    if any(fake_cupy_arrays.device_matrix(p, 1, 1, 1, scalar_dtype) is not None for p in (alpha, beta)):
        return INVALID_VALUE  # device pointers in host pointer mode
    scalar = ctypes.c_float if scalar_dtype == np.float32 else ctypes.c_double
    alpha_value, beta_value = scalar.from_address(alpha).value, scalar.from_address(beta).value
    op_a, op_b = (a if transa == 0 else a.T), (b if transb == 0 else b.T)
    wide = np.result_type(np.float32, a_dtype, b_dtype)

    def gemm():
        x, y = op_a.astype(wide, copy=False), op_b.astype(wide, copy=False)
        product = alpha_value * (precision.matmul_as_tf32(x, y) if tf32 else x @ y)
        c[...] = product + beta_value * c.astype(wide) if beta_value else product

    return gemm


def cupy_gemm_ex(handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc,
                 computeType, algo) -> None:
    """cupy.cuda.cublas.gemmEx of CuPy 14 (cupy_backends/cuda/libs/cublas.pyx) over the stand-in:
    the handle set to the current stream (refused while it captures, as CuPy's setStream refuses),
    then cublasGemmEx; a failed status raises CUBLASError, as CuPy's check_status does. Modelled:
    the types gpubp passes, bfloat16 A and B with a bfloat16 or float32 C, float32 sums
    (CUBLAS_COMPUTE_32F), float32 alpha and beta on the host."""
    fake_cupy_arrays.refuse_cublas()
    types = (Atype, Btype, Ctype)
    if (handle != fake_cupy_arrays.CUBLAS_HANDLE or computeType != COMPUTE_32F or algo != GEMM_DEFAULT
            or Atype != 14 or Btype != 14 or Ctype not in (0, 14)):
        raise fake_cupy_arrays.CUBLASError(INVALID_VALUE, f"gemmEx: handle {handle:#x}, types {types}, "
                                                          f"compute {computeType}, algo {algo} not modelled")
    gemm = column_major_gemm(transa, transb, m, n, k, (alpha, beta, np.dtype(np.float32)),
                             (A, lda, CUDA_TYPES[Atype]), (B, ldb, CUDA_TYPES[Btype]), (C, ldc, CUDA_TYPES[Ctype]))
    if isinstance(gemm, int):
        raise fake_cupy_arrays.CUBLASError(gemm, "gemmEx: CUBLAS_STATUS_INVALID_VALUE")
    fake_cupy_arrays.activity().bfloat16_product()
    fake_cupy_arrays.run_on(fake_cupy_arrays.get_current_stream().ptr, gemm)
