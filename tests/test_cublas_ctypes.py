"""gpubp.cublas_direct's ctypes calls into libcublas, checked on the CPU. Every other CPU test
replaces load_cublas by tests/fake_cublas.py's Python FakeCublas, so its ctypes signatures (the
argtypes and restype of each entry point) would be tried first on a card, where a pointer declared
int is cut to 32 bits and crashes or corrupts. Here tests/fake_libcublas.c, the four entry points
with cuBLAS's C prototypes, is compiled as libcublas.so.99 (see CUBLAS_VERSION) and loaded into
the process, so that /proc/self/maps names it; gpubp's own load_cublas finds it there and declares
its signatures, and gemm's calls go through them to C functions that log what they received. CuPy
is a stub answering the handle, stream and device pointers, all above 2**32 and never read; alpha
and beta are gpubp's own host scalars, which the C side reads."""

import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import ANY

import numpy as np
import pytest

from gpubp import cublas_direct

from .fake_cupy_arrays import forget_gpubp_caches

SOURCE = Path(__file__).with_name("fake_libcublas.c")
OP_N, OP_T = 0, 1
# major * 10000 + minor * 100 + patch, as cublasGetVersion gives it; a major no cuBLAS has, as this
# library, which ctypes never unloads, must not be found beside another of the process's tests'
# libcublas.so.13 (the stand-in's, or a card's real one): gpubp refuses two copies of one major
CUBLAS_VERSION = 990100
# Addresses with bits set in both 32-bit halves, all different
HANDLE, STREAM, WORKSPACE = 0x7F12_3456_7890, 0x7F21_0BAD_0A00, 0x7E00_1357_9B00
A_PTR, B_PTR, C_PTR = 0x7D11_2233_4400, 0x7D55_6677_8800, 0x7D99_AABB_CC00
# gpubp's workspace, 32 MiB, fits 32 bits, as a size_t cut to an int would pass it; one over 4 GiB does not
BIG_WORKSPACE = 2**32 + 3 * 2**20


class Call(ctypes.Structure):
    """struct call of tests/fake_libcublas.c: one entry point's arguments as it received them."""
    _fields_ = [("name", ctypes.c_char * 32), ("nargs", ctypes.c_int), ("args", ctypes.c_int64 * 14),
                ("alpha", ctypes.c_double), ("beta", ctypes.c_double)]


@pytest.fixture(scope="module")
def libcublas(tmp_path_factory):
    """tests/fake_libcublas.c built as <tmp>/libcublas.so.99 and loaded (ctypes) into this process:
    the library whose log the tests read, and the one gpubp finds in /proc/self/maps."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc or gcc) on PATH to build the stand-in libcublas")
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("load_cublas finds libcublas in /proc/self/maps (Linux only)")
    path = tmp_path_factory.mktemp("cublas") / f"libcublas.so.{CUBLAS_VERSION // 10000}"
    cmd = [compiler, "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", str(path), str(SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(path))


def device_array(shape, strides, dtype, ptr):
    """What gemm reads of a cupy.ndarray: ``strides`` in elements, ``ptr`` its device address."""
    dtype = np.dtype(dtype)
    return SimpleNamespace(shape=shape, strides=tuple(s * dtype.itemsize for s in strides), dtype=dtype,
                           itemsize=dtype.itemsize, nbytes=int(np.prod(shape)) * dtype.itemsize,
                           data=SimpleNamespace(ptr=ptr))


@pytest.fixture
def stub_cupy(monkeypatch, libcublas):
    """``cupy`` as load_cublas and gemm call it: the handle, its version, the current stream and
    cupy.empty (the workspace). gpubp's cached library and workspace are forgotten before and after,
    and the log of the C library emptied."""
    cuda = SimpleNamespace(device=SimpleNamespace(get_cublas_handle=lambda: HANDLE),
                           cublas=SimpleNamespace(getVersion=lambda handle: CUBLAS_VERSION),
                           get_current_stream=lambda: SimpleNamespace(ptr=STREAM))
    cupy = SimpleNamespace(cuda=cuda, empty=lambda size, dtype: device_array((size,), (1,), dtype, WORKSPACE))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(cublas_direct, "WORKSPACE_BYTES", BIG_WORKSPACE)
    forget_gpubp_caches()
    ctypes.c_int.in_dll(libcublas, "ncalls").value = 0
    (ctypes.c_char * 32).in_dll(libcublas, "failing").value = b""
    yield
    forget_gpubp_caches()


def received(lib) -> list:
    """The logged calls, oldest first: (name, [arguments]) and, for a gemm, (alpha, beta)."""
    log = (Call * 8).in_dll(lib, "calls")[:ctypes.c_int.in_dll(lib, "ncalls").value]
    return [(c.name.decode(), list(c.args[:c.nargs])) + (() if c.nargs < 14 else ((c.alpha, c.beta),))
            for c in log]


def operands(dtype):
    """a (5, 7) rows of a (5, 12) matrix, b (7, 4) a transposed view, out (5, 4) rows of a (5, 9)
    matrix: cuBLAS's first operand is b, op T with ld 7, its second a, op N with ld 12; m, n, k
    = 4, 5, 7; ldc 9. Every number differs, so two arguments swapped show."""
    return (device_array((5, 7), (12, 1), dtype, A_PTR), device_array((7, 4), (1, 7), dtype, B_PTR),
            device_array((5, 4), (9, 1), dtype, C_PTR))


@pytest.mark.parametrize("dtype, entry", [(np.float32, "cublasSgemm_v2"), (np.float64, "cublasDgemm_v2")])
def test_every_argument_reaches_libcublas_whole(libcublas, stub_cupy, dtype, entry):
    a, b, out = operands(dtype)
    assert cublas_direct.gemm(a, b, out) is out
    assert received(libcublas) == [
        ("cublasSetStream_v2", [HANDLE, STREAM]),
        ("cublasSetWorkspace_v2", [HANDLE, WORKSPACE, BIG_WORKSPACE]),
        # alpha's and beta's addresses are gpubp's own host scalars: their values, read there, are checked
        (entry, [HANDLE, OP_T, OP_N, 4, 5, 7, ANY, B_PTR, 7, A_PTR, 12, ANY, C_PTR, 9], (1.0, 0.0)),
    ]


@pytest.mark.parametrize("entry, name", [("cublasSetStream_v2", "cublasSetStream"),
                                         ("cublasSetWorkspace_v2", "cublasSetWorkspace"),
                                         ("cublasDgemm_v2", "gemm")])
def test_a_failed_status_is_an_error_naming_the_call(libcublas, stub_cupy, entry, name):
    (ctypes.c_char * 32).in_dll(libcublas, "failing").value = entry.encode()
    ctypes.c_int.in_dll(libcublas, "status").value = 14  # CUBLAS_STATUS_INTERNAL_ERROR
    with pytest.raises(RuntimeError, match=re.escape(f"cuBLAS {name} failed with status 14 ((5, 7) @ (7, 4))")):
        cublas_direct.gemm(*operands(np.float64))
    assert received(libcublas)[-1][0] == entry  # and nothing was called after it
