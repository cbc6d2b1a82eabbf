"""The CUDA kernel sources, checked without a GPU.

1. g++ compiles kernels/gpubp_math.cuh (through tests/kernels_host.cpp) into a shared library,
   and every function is held to its NumPy twin in gpubp.ops on random and edge inputs.
2. nvcc, when on PATH, compiles every kernel for sm_90: each ElementwiseKernel of
   gpubp.kernels (its operation pasted into a plain __global__ loop, as CuPy does) and the
   row-wise RawKernel, failing on any error or warning.
"""

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from gpubp import kernels, ops

from .conftest import REPO, assert_close

KERNELS = REPO / "kernels"
CTYPE = {np.float32: ctypes.c_float, np.float64: ctypes.c_double}
SUFFIX = {np.float32: "f32", np.float64: "f64"}
# Host C++ and NumPy may differ by an ulp or two in exp/log/tanh.
RTOL = {np.float32: 2e-6, np.float64: 1e-14}
ATOL = {np.float32: 1e-30, np.float64: 1e-300}
DTYPES = [np.float32, np.float64]


@pytest.fixture(scope="module")
def host_lib(tmp_path_factory):
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not on PATH")
    out = tmp_path_factory.mktemp("host") / "libgpubp_host.so"
    cmd = [gxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           "-o", str(out), str(REPO / "tests" / "kernels_host.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return ctypes.CDLL(str(out))


def ptr(a):
    assert a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.c_void_p)


def call(lib, name, dtype, *args):
    """Call name_f32 / name_f64 with arrays as pointers, ints as long long, floats as T."""
    converted = []
    for arg in args:
        if isinstance(arg, np.ndarray):
            converted.append(ptr(arg))
        elif isinstance(arg, (int, np.integer)) and not isinstance(arg, bool):
            converted.append(ctypes.c_longlong(int(arg)))
        else:
            converted.append(CTYPE[dtype](arg))
    getattr(lib, f"{name}_{SUFFIX[dtype]}")(*converted)


def edge_logits(dtype, rng):
    z = rng.normal(scale=4, size=(40, 7))
    z[0] = [1000, -1000, 0, 0, 0, 0, 0]
    z[1] = [-1000, 1000, -1000, 1000, -1000, 1000, -1000]
    z[2] = 0
    z[3] = [88, 89, 90, -88, -89, -90, 0]  # near float32's exp overflow
    return z.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ops.ACTIVATIONS)
def test_bias_activation_matches_numpy(host_lib, name, dtype, rng):
    z = edge_logits(dtype, rng)
    b = rng.normal(size=7).astype(dtype)
    b[0] = 0
    expected = ops.bias_activation(np, z.copy(), b, name)
    actual = z.copy()
    call(host_lib, "bias_activation", dtype, actual, b, z.shape[0], z.shape[1],
         kernels.ACTIVATION_CODES[name])
    assert_close(actual, expected, RTOL[dtype], ATOL[dtype], what=f"bias_{name} {dtype.__name__}")
    assert np.isfinite(actual).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ops.ACTIVATIONS)
def test_backprop_delta_matches_numpy(host_lib, name, dtype, rng):
    a = ops.activate(np, rng.normal(scale=3, size=(30, 9)), name).astype(dtype)
    a[0, :4] = [0, 1, -0.0, 1e-30]  # saved activations of exactly 0 and 1
    if name in ("sigmoid", "tanh"):
        a[1, :3] = [1, 0, -1 if name == "tanh" else 1]
    g = rng.normal(size=a.shape).astype(dtype)
    expected = ops.backprop_delta(np, g.copy(), a, name)
    actual = g.copy()
    call(host_lib, "backprop_delta", dtype, actual, a, a.size, kernels.ACTIVATION_CODES[name])
    assert_close(actual, expected, RTOL[dtype], ATOL[dtype], what=f"delta_{name} {dtype.__name__}")
    if name == "relu":
        assert (actual[0, [0, 2]] == 0).all() and actual[0, 1] == g[0, 1]


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_minus_y_matches_numpy(host_lib, dtype, weighted, rng):
    z = edge_logits(dtype, rng)
    n, C = z.shape
    y = rng.integers(0, C, n).astype(np.int64)
    y[:2] = [1, 0]  # the wrong class at +-1000: loss 2000 in those rows
    w = rng.uniform(0, 3, n) if weighted else None
    expected_delta, expected_loss = ops.softmax_minus_y(np, z, y, w)
    scale = np.broadcast_to(ops.row_scale(n, z.dtype, w), (n, 1)).astype(dtype).ravel().copy()
    delta = np.empty_like(z)
    loss_rows = np.empty(n, dtype=dtype)
    call(host_lib, "softmax_minus_y", dtype, z, y, scale, delta, loss_rows, n, C)
    assert_close(delta, expected_delta, RTOL[dtype], ATOL[dtype], what="delta")
    assert_close(loss_rows.sum(), expected_loss, RTOL[dtype], what="loss")
    assert np.isfinite(delta).all() and np.isfinite(loss_rows).all()
    np.testing.assert_allclose(delta.sum(axis=1), 0, atol=10 * np.finfo(dtype).eps)  # rows of p - Y


# (l2, n_weights): no L2 term; the L2 penalty's gradient on the first 30 of 50 parameters (a
# large l2, so that leaving it out, or putting it on the biases, moves p far past the tolerance)
L2_CASES = [(0.0, 0), (0.5, 30)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("l2, n_weights", L2_CASES)
def test_sgd_momentum_matches_numpy(host_lib, dtype, nesterov, l2, n_weights, rng):
    p, v, g = (rng.normal(size=50).astype(dtype) for _ in range(3))
    p_ref, v_ref, g_before = p.copy(), v.copy(), g.copy()
    ops.sgd_momentum_update(np, p_ref, g, v_ref, 0.05, 0.9, nesterov, l2, n_weights)
    assert np.array_equal(g, g_before)  # the twin reads g + l2 p without writing it
    call(host_lib, "sgd_momentum", dtype, p, v, g, p.size, 0.05, 0.9, int(nesterov), l2, n_weights)
    assert_close(p, p_ref, RTOL[dtype], ATOL[dtype], what="p")
    assert_close(v, v_ref, RTOL[dtype], ATOL[dtype], what="v")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("l2, n_weights", L2_CASES)
def test_adam_matches_numpy(host_lib, dtype, l2, n_weights, rng):
    p, m, g = (rng.normal(size=50).astype(dtype) for _ in range(3))
    v = rng.uniform(0, 2, 50).astype(dtype)
    v[:2] = 0  # a fresh second moment: the step leans on eps
    g[0] = 0
    refs = [a.copy() for a in (p, m, v)]
    lr_t, b1, b2, eps = 1e-3 * np.sqrt(1 - 0.999**3) / (1 - 0.9**3), 0.9, 0.999, 1e-8
    ops.adam_update(np, *refs[:1], g, *refs[1:], lr_t, b1, b2, eps, l2, n_weights)
    call(host_lib, "adam", dtype, p, m, v, g, p.size, lr_t, b1, 1 - b1, b2, 1 - b2, eps, l2, n_weights)
    for actual, expected, what in zip((p, m, v), refs, "pmv"):
        assert_close(actual, expected, RTOL[dtype], ATOL[dtype], what=what)


def test_every_elementwise_kernel_names_an_existing_twin():
    for spec in kernels.ELEMENTWISE_SPECS.values():
        module, name = spec.twin.split(".")
        assert module == "ops" and callable(getattr(ops, name)), spec
        assert spec.name.startswith("gpubp_")
    for name in ("bias_activation", "backprop_delta", "softmax_minus_y", "sgd_momentum_update",
                 "adam_update"):
        assert callable(getattr(ops, name)) and callable(getattr(kernels, name))
        assert f"ops.{name}" in getattr(kernels, name).__doc__


def test_sources_are_found_in_the_checkout():
    assert kernels.source_dir() == KERNELS
    assert "GPUBP_HD" in kernels.read_source("gpubp_math.cuh")


# ---------------------------------------------------------------------------- nvcc, sm_90

_C_TYPES = {"T": "T", "F": "F", "I": "I", "int64": "long long", "bool": "bool"}


def standalone_kernel(spec) -> str:
    """A plain __global__ grid-stride loop around an ElementwiseKernel's operation, as CuPy builds
    it: each non-raw argument bound to element i, raw arguments left as arrays."""
    params, bindings = [], []
    for direction, text in (("in", spec.in_params), ("out", spec.out_params)):
        for param in text.split(","):
            words = param.split()
            raw = words[0] == "raw"
            ctype, name = _C_TYPES[words[-2]], words[-1]
            if raw:
                params.append(f"{ctype}* {name}")
            elif direction == "in":
                params.append(f"const {ctype}* {name}_")
                bindings.append(f"const {ctype} {name} = {name}_[i];")
            else:
                params.append(f"{ctype}* {name}_")
                bindings.append(f"{ctype}& {name} = {name}_[i];")
    body = "\n        ".join(bindings + [spec.operation.replace("\n", "\n        ") + ";"])
    return (
        f"__global__ void {spec.name}({', '.join(params)}, long long n) {{\n"
        "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
        "         i += (long long)blockDim.x * gridDim.x) {\n"
        f"        {body}\n"
        "    }\n"
        "}\n"
    )


def nvcc_compile(source: str, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the sm_90 compile check needs the CUDA toolkit")
    cu = tmp_path / "check.cu"
    cu.write_text(source)
    cmd = [nvcc, "-arch=sm_90", "-std=c++17", f"-I{KERNELS}", "-c", str(cu), "-o",
           str(tmp_path / "check.o"), "-Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not re.search(r"warning", output, re.I), output


def test_nvcc_compiles_every_elementwise_kernel_for_sm90(tmp_path):
    parts = ['#include "gpubp_math.cuh"']
    for ctype in ("float", "double"):
        parts.append(f"namespace as_{ctype} {{\nusing T = {ctype};\nusing F = T;\nusing I = long long;")
        parts += [standalone_kernel(spec) for spec in kernels.ELEMENTWISE_SPECS.values()]
        parts.append("}")
    nvcc_compile("\n".join(parts), tmp_path)


def test_nvcc_compiles_the_row_wise_kernel_for_sm90(tmp_path):
    # the same concatenation gpubp.kernels hands to CuPy's RawModule
    nvcc_compile('#include "gpubp_math.cuh"\n#include "softmax_rows.cu"\n', tmp_path)


def test_nvcc_check_fails_on_a_warning(tmp_path):
    """The compile check is not a rubber stamp: a kernel with a warning is refused."""
    with pytest.raises(AssertionError):
        nvcc_compile("__global__ void k(float* x) { int unused = 1; x[0] = 1.0f; }\n", tmp_path)
