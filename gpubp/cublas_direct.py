"""Products through libcublas itself, for the CUDA graphs of :mod:`gpubp.cuda_graph`.

CuPy 14 refuses every cuBLAS call while a stream captures a graph: its binding's ``setStream``
raises ``NotImplementedError`` (cupy_backends/cuda/libs/cublas.pyx; cupy#6290), for
``cupy.matmul`` and ``cupy.cuda.cublas.sgemm`` alike. cuBLAS itself supports capture (its
guide's "CUDA Graphs Support", with a workspace set beforehand so that it allocates nothing while
capturing). So for a captured step gpubp calls ``cublasSgemm_v2`` / ``cublasDgemm_v2`` of the
libcublas that CuPy loaded, through ctypes, with CuPy's handle. On an H100 these products gave
bitwise the gradients of ``cupy.matmul`` and the captured step replayed bitwise equal to the
eager one (benchmarks/graph_probe.py). Eager steps keep ``cupy.matmul``.

Row-major products as column-major BLAS: c = a @ b, a (n, k), b (k, m), is c.T = b.T @ a.T in
column-major terms, and a row-major matrix's memory read column-major is its transpose. So
:func:`gemm_arguments` passes b first, each operand with op N when it is row-major (leading
dimension: its row stride) and op T when it is a transposed view (column-major; leading
dimension: its column stride).

Precision: the handle's math mode applies (TF32 inside :func:`gpubp.precision.tf32_products`);
float32 and float64 here. And one eager product of bfloat16 networks: :func:`matmul_into_float32`,
bfloat16 operands into a float32 output, through CuPy's own cublasGemmEx binding.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from .bfloat16 import BFLOAT16

CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
WORKSPACE_BYTES = 32 * 2**20  # cuBLAS's guide: 32 MiB covers every kernel on Hopper


@functools.lru_cache(maxsize=1)
def load_cublas():
    """libcublas as this process loaded it (CuPy's copy, found in /proc/self/maps once CuPy has
    made its handle), with the ctypes signatures of the four entry points gpubp calls. Raises
    RuntimeError where it cannot be found (not Linux, or CuPy has not loaded cuBLAS)."""
    import cupy

    handle = cupy.cuda.device.get_cublas_handle()  # loads libcublas
    major = cupy.cuda.cublas.getVersion(handle) // 10000  # CUBLAS_VERSION: major * 10000 + ...
    try:
        with open("/proc/self/maps") as maps:
            path = cublas_path(maps, major)
    except OSError:
        path = cublas_path((), major)
    lib = ctypes.CDLL(path)
    p, i = ctypes.c_void_p, ctypes.c_int
    for gemm in (lib.cublasSgemm_v2, lib.cublasDgemm_v2):
        gemm.argtypes, gemm.restype = [p, i, i, i, i, i, p, p, i, p, i, p, p, i], i
    lib.cublasSetStream_v2.argtypes, lib.cublasSetStream_v2.restype = [p, p], i
    lib.cublasSetWorkspace_v2.argtypes, lib.cublasSetWorkspace_v2.restype = [p, p, ctypes.c_size_t], i
    return lib


def cublas_path(maps, major: int) -> str:
    """The file of the one libcublas.so.<major> among ``maps`` (the lines of /proc/self/maps): the
    copy CuPy's handle belongs to. Another CUDA major's copy (a PyTorch built for another CUDA)
    is passed over; two files of CuPy's major, or none, are a RuntimeError, as a handle given to
    another copy's functions would crash the process."""
    paths = set()
    for line in maps:
        fields = line.rstrip("\n").split(maxsplit=5)  # address perms offset dev inode path (which may hold spaces)
        name = os.path.basename(fields[5]) if len(fields) == 6 else ""
        if name == f"libcublas.so.{major}" or name.startswith(f"libcublas.so.{major}."):
            paths.add(fields[5])
    if len(paths) == 1:
        return paths.pop()
    found = f"found {len(paths)} ({', '.join(sorted(paths))})" if paths else "it was not found in /proc/self/maps (Linux only)"
    raise RuntimeError(f"cuda_graph needs the libcublas that CuPy loaded (libcublas.so.{major}), and {found}; "
                       "train without cuda_graph")


def operand(shape: tuple, strides: tuple, itemsize: int) -> tuple[int, int]:
    """(op, leading dimension) that make cuBLAS read the row-major matrix of ``shape`` (p, q)
    and ``strides`` (bytes) as its transpose (q, p): op N for a row-major layout (ld: the row
    stride), op T for a column-major one, a transposed view (ld: the column stride). Raises
    ValueError for a layout with no unit-stride axis."""
    (p, q), (row, col) = shape, strides
    if col == itemsize and row >= q * itemsize:
        return CUBLAS_OP_N, max(row // itemsize, 1)
    if row == itemsize and col >= p * itemsize:
        return CUBLAS_OP_T, max(col // itemsize, 1)
    raise ValueError(f"a matrix of shape {shape} and strides {strides} has no unit-stride axis")


def gemm_arguments(a, b, c) -> tuple:
    """(transa, transb, m, n, k, lda, ldb, ldc) of the column-major gemm that writes the
    row-major c = a @ b, for a (n, k), b (k, m) and c (n, m) row-major: c.T = b.T @ a.T, so
    cuBLAS's first operand is b."""
    (n, k), m = a.shape, b.shape[1]
    op_a, ld_a = operand(a.shape, a.strides, a.itemsize)
    op_b, ld_b = operand(b.shape, b.strides, b.itemsize)
    op_c, ld_c = operand(c.shape, c.strides, c.itemsize)
    if op_c != CUBLAS_OP_N:
        raise ValueError(f"the product's output must be row-major, got strides {c.strides}")
    return op_b, op_a, m, n, k, ld_b, ld_a, ld_c


_SCALARS = {np.dtype(np.float32): (np.ones(1, np.float32), np.zeros(1, np.float32)),
            np.dtype(np.float64): (np.ones(1, np.float64), np.zeros(1, np.float64))}  # alpha, beta on the host


def gemm(a, b, out=None):
    """a @ b on the current stream by cublasSgemm_v2 / cublasDgemm_v2 of :func:`load_cublas`,
    into ``out`` when given (a row-major view works: BP4 writes dW[l] into the flat gradient).

    Parameters
    ----------
    a : cupy.ndarray (n, k), float32 or float64, row-major or a transposed view
    b : cupy.ndarray (k, m), same dtype, same
    out : cupy.ndarray (n, m), same dtype, row-major, optional

    Returns
    -------
    cupy.ndarray (n, m): ``out``, or a new array
    """
    import cupy

    if a.dtype != b.dtype or a.dtype not in _SCALARS:
        raise TypeError(f"gemm takes two float32 or two float64 matrices, got {a.dtype} and {b.dtype}")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: shapes {a.shape} and {b.shape} do not chain")
    c = cupy.empty((a.shape[0], b.shape[1]), a.dtype) if out is None else out
    if c.shape != (a.shape[0], b.shape[1]) or c.dtype != a.dtype:
        raise ValueError(f"gemm: out is {c.dtype} {c.shape}, the product {a.dtype} {(a.shape[0], b.shape[1])}")
    transa, transb, m, n, k, lda, ldb, ldc = gemm_arguments(a, b, c)
    lib, handle = load_cublas(), cupy.cuda.device.get_cublas_handle()
    workspace = _workspace(handle)
    one, zero = _SCALARS[a.dtype]
    call = lib.cublasSgemm_v2 if a.dtype == np.float32 else lib.cublasDgemm_v2
    stream = cupy.cuda.get_current_stream().ptr
    # cublasSetStream puts the handle back on cuBLAS's own workspace pool (its guide says so, and
    # CuPy calls it before each of its products), where a captured gemm could allocate: ours again
    calls = (("cublasSetStream", lambda: lib.cublasSetStream_v2(handle, stream)),
             ("cublasSetWorkspace", lambda: lib.cublasSetWorkspace_v2(handle, workspace.data.ptr, workspace.nbytes)),
             ("gemm", lambda: call(handle, transa, transb, m, n, k, one.ctypes.data, b.data.ptr, lda,
                                   a.data.ptr, ldb, zero.ctypes.data, c.data.ptr, ldc)))
    for name, make_call in calls:
        status = make_call()
        if status:
            raise RuntimeError(f"cuBLAS {name} failed with status {status} ({a.shape} @ {b.shape})")
    return c


def ensure_workspace() -> None:
    """Make the workspace of the current device's cuBLAS handle (CuPy's) before a graph is
    captured (made inside a capture, it would be an allocation, which a capture forbids);
    :func:`gemm` sets it on the handle at each call."""
    import cupy

    _workspace(cupy.cuda.device.get_cublas_handle())


@functools.lru_cache(maxsize=None)
def _workspace(handle: int):
    """The workspace buffer of ``handle``, WORKSPACE_BYTES, made once and kept for the life of
    the process: the captured gemms of every graph write into it at each replay."""
    import cupy

    return cupy.empty(WORKSPACE_BYTES, np.uint8)


# cudaDataType_t (library_types.h), cublasComputeType_t and cublasGemmAlgo_t (cublas_api.h)
CUDA_R_32F, CUDA_R_16BF, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT = 0, 14, 68, -1


def matmul_into_float32(a, b, out):
    """out = a @ b on the card, bfloat16 a and b summed in float32 and written unrounded into the
    float32 ``out`` by one cublasGemmEx through CuPy's binding, on the current stream (eager: CuPy's
    binding refuses a capture); why, in :mod:`gpubp.bfloat16`.

    Parameters
    ----------
    a : cupy.ndarray (n, k) bfloat16, row-major or a transposed view
    b : cupy.ndarray (k, m) bfloat16, the same
    out : cupy.ndarray (n, m) float32, row-major (a view works: BP4's dW[l] in the flat gradient)

    Returns
    -------
    out
    """
    import cupy

    if a.dtype != BFLOAT16 or b.dtype != BFLOAT16 or out.dtype != np.float32:
        raise TypeError(f"matmul_into_float32 takes bfloat16 a and b and a float32 out, got {a.dtype}, "
                        f"{b.dtype} and {out.dtype}")
    if a.shape[1] != b.shape[0] or out.shape != (a.shape[0], b.shape[1]):
        raise ValueError(f"matmul_into_float32: {a.shape} @ {b.shape} into {out.shape}")
    transa, transb, m, n, k, lda, ldb, ldc = gemm_arguments(a, b, out)
    one, zero = _SCALARS[np.dtype(np.float32)]  # float32 alpha and beta for CUBLAS_COMPUTE_32F
    cupy.cuda.cublas.gemmEx(cupy.cuda.device.get_cublas_handle(), transa, transb, m, n, k, one.ctypes.data,
                            b.data.ptr, CUDA_R_16BF, lda, a.data.ptr, CUDA_R_16BF, ldb, zero.ctypes.data,
                            out.data.ptr, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
    return out
