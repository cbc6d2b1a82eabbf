"""gpubp.cublas_direct's mapping of row-major products onto cuBLAS's column-major gemm, checked on
the CPU by an emulator of gemm over the arrays' memory (the products themselves run on a card, and
through the stand-in's FakeCublas in tests/test_cuda_graph.py)."""

import re

import numpy as np
import pytest

from gpubp.cublas_direct import CUBLAS_OP_N, cublas_path, gemm_arguments


def column_major(memory, rows, cols, ld, op):
    """op(X) of a column-major X stored in ``memory`` (1-D) with leading dimension ld: op N reads
    X (rows, cols), op T reads X (cols, rows) and transposes it."""
    stored_rows, stored_cols = (rows, cols) if op == CUBLAS_OP_N else (cols, rows)
    X = np.array([[memory[i + j * ld] for j in range(stored_cols)] for i in range(stored_rows)])
    return X if op == CUBLAS_OP_N else X.T


def emulated_gemm(a, b, c):
    """c = a @ b through sgemm's column-major contract, reading and writing the arrays' memory
    (their bases, raveled) as cuBLAS would; returns the row-major result read back from c."""
    transa, transb, m, n, k, lda, ldb, ldc = gemm_arguments(a, b, c)
    A = column_major(memory(b)[start(b):], m, k, lda, transa)  # cuBLAS's first operand is b
    B = column_major(memory(a)[start(a):], k, n, ldb, transb)
    C = A @ B  # (m, n) column-major: c.T
    out = memory(c)
    for i in range(m):
        for j in range(n):
            out[start(c) + i + j * ldc] = C[i, j]
    return c


def memory(x):
    """The 1-D memory an array views (its base raveled, or the array itself)."""
    return (x.base if x.base is not None else x).reshape(-1)


def start(x):
    """x's first element's offset in memory(x), in elements."""
    return (x.__array_interface__["data"][0] - memory(x).__array_interface__["data"][0]) // x.itemsize


def operands(layout, rng):
    a, b = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    if layout == "a @ b":
        return a, b
    if layout == "a.T @ b":
        return np.ascontiguousarray(a.T).T, b  # a column-major a (a transposed view)
    if layout == "a @ b.T":
        return a, np.ascontiguousarray(b.T).T
    wide = rng.normal(size=(5, 12)).astype(np.float32)
    return wide[:, :7], b  # rows of a wider array: leading dimension 12


@pytest.mark.parametrize("layout", ["a @ b", "a.T @ b", "a @ b.T", "row slice"])
def test_the_gemm_arguments_compute_the_row_major_product(layout):
    rng = np.random.default_rng(0)
    a, b = operands(layout, rng)
    c = np.full((5, 4), np.nan, np.float32)
    np.testing.assert_allclose(emulated_gemm(a, b, c), a @ b, rtol=1e-5)


def test_the_gemm_arguments_write_into_a_view_of_a_flat_buffer():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 7)).astype(np.float32), rng.normal(size=(7, 4)).astype(np.float32)
    flat = np.full(3 + 20 + 3, np.nan, np.float32)
    c = flat[3:23].reshape(5, 4)  # dW[l] as a view of the flat gradient
    emulated_gemm(a.T.copy().T, b, c)
    np.testing.assert_allclose(c, a @ b, rtol=1e-5)
    assert np.isnan(flat[:3]).all() and np.isnan(flat[23:]).all()


def test_layouts_without_a_unit_stride_are_refused():
    a = np.ones((8, 8), np.float32)[::2, ::2]
    with pytest.raises(ValueError, match="no unit-stride axis"):
        gemm_arguments(a, np.ones((4, 3), np.float32), np.ones((4, 3), np.float32))
    with pytest.raises(ValueError, match="output must be row-major"):
        gemm_arguments(np.ones((4, 2), np.float32), np.ones((2, 3), np.float32), np.ones((3, 4), np.float32).T)


MAPS = [  # /proc/self/maps lines: address perms offset dev inode path
    "7f1c00000000-7f1c00200000 r-xp 00000000 08:01 131 /opt/torch/lib/libcublas.so.12\n",
    "7f1d00000000-7f1d00200000 r-xp 00000000 08:01 132 /site packages/nvidia/cu13/lib/libcublas.so.13\n",
    "7f1d00200000-7f1d00300000 r--p 00200000 08:01 132 /site packages/nvidia/cu13/lib/libcublas.so.13\n",
    "7f1e00000000-7f1e00100000 r-xp 00000000 08:01 133 /usr/lib/libcublasLt.so.13\n",
    "7f1f00000000-7f1f00001000 rw-p 00000000 00:00 0 \n",
]


def test_the_libcublas_of_cupys_major_is_the_one_taken():
    # the first libcublas mapped was taken: here PyTorch's CUDA 12 copy, given a handle CuPy's
    # CUDA 13 copy made (a crash); the path may hold spaces
    assert cublas_path(MAPS, 13) == "/site packages/nvidia/cu13/lib/libcublas.so.13"
    assert cublas_path(MAPS, 12) == "/opt/torch/lib/libcublas.so.12"
    full_version = ["7f2000000000-7f2000100000 r-xp 00000000 08:01 9 /usr/local/cuda/lib64/libcublas.so.13.1.0.3\n"]
    assert cublas_path(full_version, 13) == "/usr/local/cuda/lib64/libcublas.so.13.1.0.3"
    with pytest.raises(RuntimeError):  # libcublas.so.13... is not libcublas.so.1
        cublas_path(full_version, 1)


@pytest.mark.parametrize("maps, found", [
    (MAPS[:1], "it was not found in /proc/self/maps"),  # only another major's copy
    ((), "it was not found in /proc/self/maps"),
    (MAPS + ["7f2100000000-7f2100100000 r-xp 00000000 08:01 7 /other/libcublas.so.13\n"],
     "found 2 (/other/libcublas.so.13, /site packages/nvidia/cu13/lib/libcublas.so.13)"),
])
def test_no_or_two_libcublas_of_cupys_major_are_refused(maps, found):
    with pytest.raises(RuntimeError, match=re.escape(f"the libcublas that CuPy loaded (libcublas.so.13), and {found}")):
        cublas_path(maps, 13)
