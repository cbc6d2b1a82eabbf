"""MLP(dtype="bfloat16"): bfloat16 products and saved activations over float32 parameters, the CPU
as the GPU's reference (gpubp.bfloat16).

Bounds used here. One rounding to bfloat16 is at most u = 2**-8 = 0.0039 relative (7 of float32's
23 mantissa bits kept). A gradient entry of the 64-48-32-10 network passes through about a dozen
roundings (X, W, each product's output, each stored activation and delta), independent and of
either sign, each a uniform error of at most u (standard deviation u / sqrt(3)): in quadrature
sqrt(12) * u / sqrt(3) = 2u of norm-relative error from the float64 gradient. Asserted: below 3u
for the smooth activations (measured 0.5u to 1.4u), above u / 8 (so the test sees bfloat16 and not
float32, whose error here is ~1e-7); ReLU adds the flips of its mask where a rounding moves z
across 0, which no roundoff bound covers: measured up to 7u on the first layer, asserted below
12u. The loss is a float32 softmax of logits each rounded once: within u of float64's.
"""

import numpy as np
import pytest

from gpubp import MLP, to_numpy
from gpubp.bfloat16 import BF16_UNIT_ROUNDOFF, BFLOAT16, matmul_as_bfloat16, round_to_bfloat16

from .test_tf32_training import batch, rel

SIZES = [64, 48, 32, 10]
ACTIVATIONS = ["relu", "tanh", "sigmoid", "identity"]


def test_round_to_bfloat16_rounds_to_nearest_even():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-9), 3e38, np.inf], np.float32)
    expected = np.array([1, 1 + 2**-6, 1 + 2**-7, -1, 2.9980e38, np.inf], np.float32)
    r = round_to_bfloat16(x)
    np.testing.assert_array_equal(r[[0, 1, 2, 3, 5]], expected[[0, 1, 2, 3, 5]])
    assert abs(r[4] - 3e38) / 3e38 <= BF16_UNIT_ROUNDOFF
    assert np.isnan(round_to_bfloat16(np.float32("nan")))


def test_matmul_as_bfloat16_sums_in_float32_and_rounds_once_unless_the_out_is_float32():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 300)).astype(BFLOAT16), rng.normal(size=(300, 20)).astype(BFLOAT16)
    c = matmul_as_bfloat16(a, b)
    assert c.dtype == BFLOAT16
    exact = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_array_equal(c, (a.astype(np.float32) @ b.astype(np.float32)).astype(BFLOAT16))
    # one rounding of the output: every element within u of the exact product (float32 sums add ~1e-6)
    assert np.all(np.abs(c.astype(np.float64) - exact) <= BF16_UNIT_ROUNDOFF * np.abs(exact) + 1e-4)
    out = np.empty((40, 20), np.float32)  # a float32 out: the float32 sums, not rounded (cuBLAS's float32 C)
    assert matmul_as_bfloat16(a, b, out=out) is out
    np.testing.assert_array_equal(out, a.astype(np.float32) @ b.astype(np.float32))
    assert not np.array_equal(out, c.astype(np.float32))
    with pytest.raises(TypeError, match="two bfloat16"):
        matmul_as_bfloat16(a.astype(np.float32), b)


def test_the_network_keeps_float32_parameters_and_bfloat16_products():
    net = MLP(SIZES, "tanh", "cpu", "bfloat16", seed=0)
    assert net.dtype == np.float32 and net.compute_dtype == BFLOAT16
    assert net.flat_params.dtype == np.float32
    assert repr(net) == "MLP(64-48-32-10, tanh, softmax, bfloat16, cpu)"
    X = np.ones((3, 64), np.float32)
    a, zL = net._forward(X)
    assert all(x.dtype == BFLOAT16 for x in a) and zL.dtype == np.float32
    loss, g = net.flat_loss_and_grad(X, np.array([0, 1, 2]))
    assert loss.dtype == np.float32 and g.dtype == np.float32


def test_tf32_with_bfloat16_is_refused():
    with pytest.raises(ValueError, match="tf32=True cannot be combined with dtype bfloat16"):
        MLP(SIZES, "tanh", "cpu", "bfloat16", tf32=True)


def test_bfloat16_on_the_gpu_under_a_numpy_cupy_has_no_bfloat16_for_is_refused(fake_cupy, monkeypatch):
    # CuPy 14 registers bfloat16 only under NumPy >= 2.1.2 (cupy/_core/_scalar.pyx); under an older
    # one its first bfloat16 array raises "Unsupported dtype bfloat16" mid-training
    monkeypatch.setattr(np, "__version__", "2.1.1")
    with pytest.raises(ValueError, match=r"bfloat16 on a GPU needs NumPy >= 2\.1\.2 .* NumPy 2\.1\.1 is installed"):
        MLP(SIZES, "tanh", "cuda", "bfloat16")
    MLP(SIZES, "tanh", "cpu", "bfloat16")  # the CPU model runs on ml_dtypes alone
    MLP(SIZES, "tanh", "cuda", "float32")
    monkeypatch.setattr(np, "__version__", "2.1.2")
    MLP(SIZES, "tanh", "cuda", "bfloat16")


def test_bfloat16_data_train_as_their_float32_values_and_a_nan_in_them_is_named():
    # bfloat16 data (ml_dtypes, kind "V", not a NumPy floating type) were refused on the host as
    # "must hold numbers", and passed unchecked on the card, a NaN in them giving NaN predictions
    from gpubp import fit

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)).astype(BFLOAT16), np.arange(60) % 3
    nets = [MLP([4, 6, 3], "relu", "cpu", "bfloat16", seed=0) for _ in range(2)]
    fit(nets[0], X, y, epochs=2, batch_size=16, seed=0)
    fit(nets[1], X.astype(np.float32), y, epochs=2, batch_size=16, seed=0)
    for a, b in zip(nets[0].params, nets[1].params):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(nets[0].predict_proba(X), nets[0].predict_proba(X.astype(np.float32)))
    X[7, 2] = np.nan
    for call in (lambda: nets[0].predict(X), lambda: fit(nets[0], X, y, epochs=1)):
        with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first at row 7, column 2: nan\)"):
            call()


def test_a_nan_in_bfloat16_data_on_the_device_is_named(fake_cupy):
    net = MLP([4, 6, 3], "relu", "cuda", "bfloat16", seed=0)
    X = np.random.default_rng(0).normal(size=(9, 4)).astype(BFLOAT16)
    X[4, 1] = np.inf
    with pytest.raises(ValueError, match=r"X contains NaN or infinity \(first at row 4, column 1: inf\)"):
        net.predict_proba(fake_cupy.asarray(X))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bfloat16_gradients_are_within_the_bound_of_float64(digits, activation):
    X, y = batch(digits, 256)
    net64 = MLP(SIZES, activation, "cpu", "float64", seed=2, alpha=1e-3)
    net16 = MLP(SIZES, activation, "cpu", "bfloat16", seed=2, alpha=1e-3)
    net16.set_params(net64.get_params())  # the float64 parameters, rounded to float32
    loss64, g64 = net64.flat_loss_and_grad(X.astype(np.float64), y)
    loss16, g16 = net16.flat_loss_and_grad(X, y)
    u = BF16_UNIT_ROUNDOFF
    assert abs(float(loss16) - float(loss64)) <= u * abs(float(loss64))
    bound = 12 * u if activation == "relu" else 3 * u
    for l, (a, b) in enumerate(zip(net16.unflatten(g16)[0] + net16.unflatten(g16)[1],
                                   net64.unflatten(g64)[0] + net64.unflatten(g64)[1])):
        assert u / 8 < rel(a, b) < bound, (activation, l, rel(a, b) / u)


def test_float64_gradient_is_the_central_difference(digits):
    """The float64 reference the bound above is taken against is the true gradient (central
    differences on a few weights of each layer)."""
    X, y = batch(digits, 32)
    net = MLP([64, 12, 10], "tanh", "cpu", "float64", seed=4, alpha=1e-3)
    _, g = net.flat_loss_and_grad(X.astype(np.float64), y)
    rng, h = np.random.default_rng(0), 1e-6
    for i in rng.choice(net.n_params, 20, replace=False):
        p = net.flat_params
        old = p[i]
        p[i] = old + h
        up = float(net.flat_loss_and_grad(X.astype(np.float64), y)[0])
        p[i] = old - h
        down = float(net.flat_loss_and_grad(X.astype(np.float64), y)[0])
        p[i] = old
        assert abs((up - down) / (2 * h) - g[i]) <= 1e-7 + 1e-6 * abs(g[i])


# ------------------------------------------------------------------ CUDA through the stand-in


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_the_stand_ins_cuda_path_rounds_where_the_cpu_does(fake_cupy, digits, activation):
    """Gradient on "cuda" (the kernels compiled by g++, cupy's bfloat16 products as the stand-in
    models them) equals the CPU's bitwise: the same rounding points. The float32 softmax kernel
    (one warp per row) sums in another order than its NumPy twin: the loss, the output bias's
    gradient (BP1's delta[L] summed in float32, never rounded to bfloat16) and the probabilities
    agree to float32 noise; delta[L] is rounded to bfloat16 before it goes further, which
    absorbs that noise here (it could move a value across a rounding boundary: one bfloat16 unit).
    The same holds for the activations: relu and identity are exact float32 operations on both
    sides (bitwise equal), tanh and sigmoid run the host's libm in the kernel and NumPy's own
    loops in the twin, a float32 unit apart at times, so a stored bfloat16 activation is now and
    then one bfloat16 unit apart: their gradients agree to u / 8 in norm."""
    X, y = batch(digits, 256)
    w = np.random.default_rng(1).uniform(0, 2, X.shape[0]).astype(np.float32)
    cpu, gpu = (MLP(SIZES, activation, device, "bfloat16", seed=5, alpha=1e-3) for device in ("cpu", "cuda"))
    for weights in (None, w):
        loss_c, g_c = cpu.flat_loss_and_grad(X, y, weights)
        loss_g, g_g = gpu.flat_loss_and_grad(fake_cupy.asarray(X), fake_cupy.asarray(y),
                                             None if weights is None else fake_cupy.asarray(weights))
        assert g_g.dtype == np.float32
        C = SIZES[-1]
        if activation in ("relu", "identity"):
            np.testing.assert_array_equal(to_numpy(g_g)[:-C], g_c[:-C])
        else:
            assert rel(to_numpy(g_g)[:-C], g_c[:-C]) < BF16_UNIT_ROUNDOFF / 8
        np.testing.assert_allclose(to_numpy(g_g)[-C:], g_c[-C:], rtol=1e-5, atol=1e-8)
        assert float(loss_g) == pytest.approx(float(loss_c), rel=1e-6)
    np.testing.assert_allclose(to_numpy(gpu.predict_proba(X)), cpu.predict_proba(X), rtol=1e-5, atol=1e-7)


def operands(shape: str, n: int, k: int, m: int):
    """bfloat16 A and B stored so that ``host(A, B)`` is an (n, k) @ (k, m) product of the layout
    ``shape`` names: row-major operands, or a transposed view of one (column-major)."""
    rng = np.random.default_rng(0)
    stored = {"a @ b": ((n, k), (k, m)), "a.T @ b": ((k, n), (k, m)), "a @ b.T": ((n, k), (m, k))}[shape]
    A, B = (rng.standard_normal(s, dtype=np.float32).astype(BFLOAT16) for s in stored)
    host = {"a @ b": lambda a, b: (a, b), "a.T @ b": lambda a, b: (a.T, b), "a @ b.T": lambda a, b: (a, b.T)}[shape]
    return A, B, host


@pytest.mark.parametrize("shape", ["a @ b", "a.T @ b", "a @ b.T"])
def test_bfloat16_products_into_float32_are_one_gemm_ex_with_the_cpu_models_sums(fake_cupy, shape):
    """cublas_direct.matmul_into_float32 on the stand-in (cupy.cuda.cublas.gemmEx over its memory,
    tests/fake_cublas.py): one launch into a row-major view of a float32 buffer, the float32 sums of
    the CPU model unrounded; refused while capturing, as CuPy's binding is; another dtype refused."""
    from gpubp.cublas_direct import matmul_into_float32

    cp = fake_cupy
    A, B, host = operands(shape, 20, 24, 16)  # (20, 24) @ (24, 16), stored as the case says
    flat = cp.zeros(20 * 16 + 7, np.float32)
    out = flat[7:].reshape(20, 16)  # a view at an offset, as dW[l] in the flat gradient
    before = cp.activity.launches
    assert matmul_into_float32(*host(cp.asarray(A), cp.asarray(B)), out) is out
    assert cp.activity.launches - before == 1
    model = np.empty((20, 16), np.float32)
    matmul_as_bfloat16(*host(A, B), out=model)
    np.testing.assert_allclose(cp.asnumpy(out), model, rtol=1e-6, atol=1e-6)
    assert not np.array_equal(cp.asnumpy(out), model.astype(BFLOAT16).astype(np.float32))  # not rounded
    assert float(cp.asnumpy(flat[:7]).sum()) == 0  # nothing written before the view
    a, b, stream = *host(cp.asarray(A), cp.asarray(B)), cp.cuda.Stream(non_blocking=True)
    with pytest.raises(TypeError, match="bfloat16 a and b and a float32 out"):
        matmul_into_float32(a, b, cp.zeros((20, 16), BFLOAT16))
    with stream:
        stream.begin_capture()
        with pytest.raises(NotImplementedError, match="during stream capture"):
            matmul_into_float32(a, b, out)
        stream.end_capture()


def test_on_the_stand_in_every_bfloat16_product_sums_in_float32(fake_cupy, digits):
    """The stand-in models cuBLAS's math mode (cupy.cuda.cublas.get/setMathMode) and records it at
    each bfloat16 product, CuPy's matmul and gemmEx alike: through a fit, a prediction and a
    gradient, every one runs with CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION (float32 partial
    sums), and the handle's mode is back to what it was after."""
    from gpubp import fit
    from gpubp.precision import CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION as FLAG

    X, y = batch(digits, 256)
    cublas, handle = fake_cupy.cuda.cublas, fake_cupy.cuda.device.get_cublas_handle()
    cublas.setMathMode(handle, 1)  # a mode found on the handle (CUBLAS_TENSOR_OP_MATH)
    net = MLP(SIZES, "relu", "cuda", "bfloat16", seed=0)
    fit(net, X, y, epochs=2, batch_size=64, validation_fraction=0.25, seed=0)
    net.predict_proba(X)
    net.loss_and_grads(X, y)
    modes = fake_cupy.activity.bfloat16_product_modes
    assert len(modes) > 50 and all(mode == 1 | FLAG for mode in modes), set(modes)
    assert cublas.getMathMode(handle) == 1


def test_the_stand_in_refuses_batched_bfloat16_products_and_keeps_2d_ones_bfloat16(fake_cupy):
    a = fake_cupy.ones((2, 3, 4), BFLOAT16)
    with pytest.raises(TypeError, match="batched bfloat16 matmul"):
        a @ fake_cupy.ones((2, 4, 5), BFLOAT16)
    m = fake_cupy.asarray(np.full((2, 3), 1 + 2**-7, np.float32)).astype(BFLOAT16)
    p = m @ m.T  # 3 * (1 + 2**-7)**2 = 3 + 6 * 2**-7 + 3 * 2**-14: the last term is rounded off
    assert p.dtype == BFLOAT16
    np.testing.assert_array_equal(to_numpy(p.astype(np.float32)), np.full((2, 2), 3 + 6 * 2**-7, np.float32))
    out = fake_cupy.empty((2, 2), np.float32)
    fake_cupy.matmul(m, m.T, out=out)
    np.testing.assert_array_equal(to_numpy(out), np.full((2, 2), 3 + 6 * 2**-7, np.float32))


# ------------------------------------------------------------------ the kernels in bfloat16


def _bf16(rng, shape, scale=3.0):
    return (rng.normal(size=shape) * scale).astype(BFLOAT16)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_twin_bias_activation_rounds_once_from_float32(activation):
    """The twin on a bfloat16 z and float32 b: f(z + b) in float32, rounded once into z."""
    from gpubp import ops

    rng = np.random.default_rng(0)
    z, b = _bf16(rng, (50, 17)), rng.normal(size=17).astype(np.float32)
    expected = ops.activate(np, z.astype(np.float32) + b, activation).astype(BFLOAT16)
    out = ops.bias_activation(np, z, b, activation)
    assert out is z and z.dtype == BFLOAT16
    np.testing.assert_array_equal(z.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_twin_backprop_delta_rounds_once_from_float32(activation):
    from gpubp import ops

    rng = np.random.default_rng(1)
    g, a = _bf16(rng, (50, 17)), ops.activate(np, _bf16(rng, (50, 17)).astype(np.float32), activation).astype(BFLOAT16)
    expected = ops.backprop_delta(np, g.astype(np.float32), a.astype(np.float32), activation).astype(BFLOAT16)
    assert ops.backprop_delta(np, g, a, activation) is g
    np.testing.assert_array_equal(g.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("where", [pytest.param("stand-in", marks=pytest.mark.cupy_stand_in),
                                   pytest.param("card", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_cuda_kernels_in_bfloat16_match_their_twins(request, where, activation):
    """bias_activation and backprop_delta, the kernel set's operations that take bfloat16 arrays
    in a bfloat16 network, as CUDA kernels (on the stand-in compiled by g++ with the host twin of
    CuPy's bfloat16 class; on a card by NVRTC) against the NumPy twins: bitwise for relu and
    identity, within one bfloat16 unit for tanh and sigmoid (libm or CUDA's against NumPy's
    loops in float32, then one rounding). The other operations take float32 in a bfloat16 network
    (logits, float32 deltas, parameters) and are held to their twins by
    tests/test_kernels_emulated.py, tests/test_kernel_set.py and, on a card, test_kernels_gpu.py."""
    from gpubp import ops
    from gpubp.kernels import CUDA_KERNELS

    if where == "stand-in":
        cp = request.getfixturevalue("fake_cupy")
    else:
        import cupy as cp
    rng = np.random.default_rng(2)
    z, b = _bf16(rng, (64, 33)), rng.normal(size=33).astype(np.float32)
    g, a = _bf16(rng, (64, 33)), ops.activate(np, _bf16(rng, (64, 33)).astype(np.float32), activation).astype(BFLOAT16)
    pairs = []
    zd = cp.asarray(z)
    pairs.append((CUDA_KERNELS.bias_activation(cp, zd, cp.asarray(b), activation),
                  ops.bias_activation(np, z.copy(), b, activation)))
    gd = cp.asarray(g)
    pairs.append((CUDA_KERNELS.backprop_delta(cp, gd, cp.asarray(a), activation),
                  ops.backprop_delta(np, g.copy(), a, activation)))
    for device, host in pairs:
        assert device.dtype == BFLOAT16
        d, h = to_numpy(device).astype(np.float32), host.astype(np.float32)
        if activation in ("relu", "identity"):
            np.testing.assert_array_equal(d, h)
        else:
            np.testing.assert_allclose(d, h, rtol=BF16_UNIT_ROUNDOFF * 2, atol=1e-30)


# A class over __nv_bfloat16 with the interface of CuPy's bfloat16 (cupy/bfloat16.cuh): an
# implicit conversion to float, a rounding assignment from anything convertible to float, and no
# arithmetic operators; gpubp_math.cuh's widen must reach float through the conversion.
NV_BFLOAT16_LIKE_CUPY = """
#include <cuda_bf16.h>
class bfloat16 {
  __nv_bfloat16 data_;
 public:
  __device__ bfloat16() : data_() {}
  __device__ bfloat16(float v) : data_(v) {}
  __device__ operator float() const { return float(data_); }
  bfloat16& operator=(const bfloat16&) = default;
  template <typename T>
  __device__ bfloat16& operator=(const T& rhs) { *this = static_cast<bfloat16>(static_cast<float>(rhs)); return *this; }
};
"""


def test_nvcc_compiles_the_elementwise_kernels_for_bfloat16_on_sm90(tmp_path):
    """bias_activation and backprop_delta with T = bfloat16 and F = float, the types CuPy binds
    for a bfloat16 network, compile for sm_90 with no warning (-Werror)."""
    from gpubp import kernels

    from .test_kernel_sources import nvcc_compile, standalone_kernel

    specs = [spec for name, spec in kernels.ELEMENTWISE_SPECS.items() if "bias" in name or "backprop" in name]
    parts = [NV_BFLOAT16_LIKE_CUPY, '#include "gpubp_math.cuh"', "namespace as_bf16 {\nusing T = bfloat16;\nusing F = float;"]
    parts += [standalone_kernel(spec) for spec in specs] + ["}"]
    nvcc_compile("\n".join(parts), tmp_path)


# ------------------------------------------------------------------ training, files, faces


def test_training_digits_in_bfloat16_reaches_float32_accuracy(digits):
    from gpubp import fit

    train, test = digits
    scores = {}
    for dtype in ("float32", "bfloat16"):
        net = MLP([64, 64, 10], "relu", backend="cpu", dtype=dtype, seed=0)
        fit(net, train.X, train.y, epochs=15, batch_size=32, validation_fraction=0.0, seed=0)
        scores[dtype] = net.score(test.X, test.y)
    assert scores["float32"] >= 0.95
    assert abs(scores["bfloat16"] - scores["float32"]) <= 0.01, scores


MNIST = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


@pytest.mark.skipif(not (MNIST / "t10k-images-idx3-ubyte.gz").is_file(), reason=f"no MNIST test set in {MNIST}")
def test_training_mnist_in_bfloat16_reaches_float32_accuracy():
    """The real MNIST test set (10,000 images), 8,000 to train and 2,000 held out, 784-128-10
    relu, 4 epochs of Adam: bfloat16 within 1 point of float32 (both near 95%)."""
    from gpubp import fit
    from gpubp.idx import load_idx_pair

    X, y = load_idx_pair(MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz")
    X = X.astype(np.float32)
    scores = {}
    for dtype in ("float32", "bfloat16"):
        net = MLP([784, 128, 10], "relu", backend="cpu", dtype=dtype, seed=0)
        fit(net, X[:8000], y[:8000], epochs=4, batch_size=64, optimizer="adam", lr=1e-3,
            validation_fraction=0.0, seed=0)
        scores[dtype] = net.score(X[8000:], y[8000:])
    assert scores["float32"] >= 0.92, scores
    assert abs(scores["bfloat16"] - scores["float32"]) <= 0.01, scores


def test_save_and_load_keep_bfloat16(tmp_path, digits):
    from gpubp import load_model, save_model

    X, y = batch(digits, 64)
    net = MLP(SIZES, "tanh", "cpu", "bfloat16", seed=1, alpha=1e-3)
    path = save_model(net, tmp_path / "m.npz")
    loaded, _ = load_model(path, backend="cpu")
    assert loaded.compute_dtype == BFLOAT16 and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded.flat_loss_and_grad(X, y)[1], net.flat_loss_and_grad(X, y)[1])


def test_checkpoint_and_resume_in_bfloat16_continue_the_same_trajectory(tmp_path, digits):
    """Stopped after epoch 2 and resumed equals uninterrupted, bitwise; the checkpoint records
    the mode, and resuming it with a float32 network is refused."""
    from gpubp import fit
    from gpubp.checkpoint import read_checkpoint

    train, _ = digits
    X, y = train.X[:300], train.y[:300]
    settings = dict(epochs=5, batch_size=32, optimizer="adam", validation_fraction=0.2, seed=3)

    def new(dtype="bfloat16"):
        return MLP([64, 24, 10], "tanh", "cpu", dtype, seed=1, alpha=1e-3)

    whole = new()
    h_whole = fit(whole, X, y, **settings)
    ckpt = tmp_path / "run.npz"
    fit(new(), X, y, checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda epoch, logs: epoch == 2], **settings)
    assert read_checkpoint(ckpt).meta["model"]["dtype"] == "bfloat16"
    resumed = new()
    h_resumed = fit(resumed, X, y, resume=ckpt, **settings)
    np.testing.assert_array_equal(resumed.flat_params, whole.flat_params)
    assert h_resumed.train_loss == h_whole.train_loss and h_resumed.val_loss == h_whole.val_loss
    with pytest.raises(ValueError, match="holds the network"):
        fit(new("float32"), X, y, resume=ckpt, **settings)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Estimator", ["MLPClassifier", "MLPRegressor"])
def test_estimators_fit_in_bfloat16(Estimator, digits, tmp_path):
    from gpubp import estimators

    train, test = digits
    est = getattr(estimators, Estimator)(hidden_layer_sizes=(32,), max_iter=30, random_state=0, dtype="bfloat16",
                                         device="cpu")
    target = train.y if Estimator == "MLPClassifier" else train.y.astype(np.float64) / 9
    est.fit(train.X, target)
    assert est.coefs_[0].dtype == np.float32 and est._network().compute_dtype == BFLOAT16
    reference = getattr(estimators, Estimator)(hidden_layer_sizes=(32,), max_iter=30, random_state=0,
                                               dtype="float32", device="cpu").fit(train.X, target)
    assert not np.array_equal(est.coefs_[0], reference.coefs_[0])  # it did train in bfloat16
    test_target = test.y if Estimator == "MLPClassifier" else test.y.astype(np.float64) / 9
    assert abs(est.score(test.X, test_target) - reference.score(test.X, test_target)) <= 0.02
    loaded = estimators.load_estimator(est.save(tmp_path / "e.npz"))
    np.testing.assert_array_equal(loaded.predict(test.X), est.predict(test.X))


def test_cli_trains_in_bfloat16_and_saves_the_mode(tmp_path, capsys):
    from gpubp import load_model
    from gpubp.cli import main

    out = tmp_path / "m.npz"
    status = main(["train", "--dtype", "bfloat16", "--device", "cpu", "--hidden", "16", "--epochs", "2", "--quiet",
                   "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert "bfloat16," in capsys.readouterr().out
    assert load_model(out, backend="cpu")[0].compute_dtype == BFLOAT16
    assert main(["train", "--tf32", "--dtype", "bfloat16", "--device", "cpu"]) == 2
    assert "--tf32 needs --dtype float32" in capsys.readouterr().err


def test_float32_accumulation_sets_the_flag_on_the_handle_and_restores_it():
    """On a CuPy with cuBLAS's math mode (recorded here), the bfloat16 products run with
    CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION added to the mode found, which comes back on
    exit, by an exception too; NumPy and a disabled block change nothing."""
    from types import SimpleNamespace

    from gpubp.bfloat16 import float32_accumulation
    from gpubp.precision import CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION as FLAG

    modes = {7: 3}  # handle 7 in TF32 math mode
    cublas = SimpleNamespace(getMathMode=lambda h: modes[h], setMathMode=lambda h, m: modes.__setitem__(h, m))
    xp = SimpleNamespace(cuda=SimpleNamespace(cublas=cublas, device=SimpleNamespace(get_cublas_handle=lambda: 7)))
    with float32_accumulation(xp) as on:
        assert on and modes[7] == 3 | FLAG
    assert modes[7] == 3
    with pytest.raises(RuntimeError), float32_accumulation(xp):
        raise RuntimeError
    assert modes[7] == 3
    with float32_accumulation(xp, enabled=False) as on, float32_accumulation(np) as on_numpy:
        assert not on and not on_numpy and modes[7] == 3


# ------------------------------------------------------------------ on a card (marker gpu)


def assert_bfloat16_products_agree(a, b, got, model):
    """Two bfloat16 products of a (n, k) and b (k, m), each a float32 sum rounded once, that may
    differ only in the order of their sums: got and model (n, m) are equal on over 98% of the
    elements, and everywhere within one bfloat16 unit of the larger (the two roundings, half a unit
    each) plus 2 gamma_k (|a| @ |b|), the worst-case gap between two float32 sums of k products
    in any orders (gamma_k = k 2**-24 / (1 - k 2**-24)). The second term covers cancellation, where
    the result is small against its terms (on the H100, 4 units at 2.3e-4 from terms near 1)."""
    a, b = a.astype(np.float32), b.astype(np.float32)
    got, model = got.astype(np.float32), model.astype(np.float32)
    k = a.shape[1]
    gamma = k * 2.0**-24 / (1 - k * 2.0**-24)
    larger = np.maximum(np.abs(got), np.abs(model))
    unit = 2.0 ** (np.floor(np.log2(np.maximum(larger, 2.0**-126))) - 7)  # one bfloat16 unit there
    bound = unit + 2 * gamma * (np.abs(a) @ np.abs(b))
    differ = got != model
    assert differ.mean() < 0.02, f"{differ.mean():.2%} of the products differ"
    excess = np.abs(got.astype(np.float64) - model) / bound
    assert excess.max() <= 1, f"{(excess > 1).sum()} products off by up to {excess.max():.1f}x the bound"


def test_the_product_check_takes_another_summation_order_and_refuses_bfloat16_partial_sums():
    """The bound of assert_bfloat16_products_agree holds for float32 sums split over k (as cuBLAS
    may split them) and fails when the partial sums are rounded to bfloat16, the reduced-precision
    reduction that float32_accumulation forbids."""
    rng = np.random.default_rng(1)
    A, B = (rng.standard_normal((384, 384), dtype=np.float32).astype(BFLOAT16) for _ in range(2))
    a, b = A.astype(np.float32), B.astype(np.float32)

    def split_k(parts, partial_dtype):
        partial = [(a[:, i::parts] @ b[i::parts]).astype(partial_dtype).astype(np.float32) for i in range(parts)]
        return np.sum(partial, axis=0, dtype=np.float32).astype(BFLOAT16)

    model = matmul_as_bfloat16(A, B)
    for parts in (2, 4, 16):
        assert_bfloat16_products_agree(A, B, split_k(parts, np.float32), model)
        with pytest.raises(AssertionError, match="products"):
            assert_bfloat16_products_agree(A, B, split_k(parts, BFLOAT16), model)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["a @ b", "a.T @ b", "a @ b.T"])
def test_cupy_bfloat16_products_match_the_cpu_model(shape):
    """CuPy's bfloat16 products (cublasGemmEx, float32 sums inside float32_accumulation) against
    matmul_as_bfloat16, within assert_bfloat16_products_agree's bound (cuBLAS sums in its own
    order; 0.02% of the elements differed on the H100)."""
    import cupy as cp

    from gpubp.bfloat16 import float32_accumulation

    rng = np.random.default_rng(0)
    A, B = (rng.standard_normal((384, 384), dtype=np.float32).astype(BFLOAT16) for _ in range(2))
    host = {"a @ b": lambda a, b: (a, b), "a.T @ b": lambda a, b: (a.T, b), "a @ b.T": lambda a, b: (a, b.T)}[shape]
    with float32_accumulation(cp):
        c = cp.matmul(*host(cp.asarray(A), cp.asarray(B)))
    assert c.dtype == BFLOAT16
    a, b = host(A, B)
    assert_bfloat16_products_agree(a, b, cp.asnumpy(c), matmul_as_bfloat16(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", ["a @ b", "a.T @ b", "a @ b.T"])
def test_cuda_bfloat16_products_into_float32_match_the_cpu_model(shape):
    """cublas_direct.matmul_into_float32 (cublasGemmEx, bfloat16 A and B, float32 C) on a card:
    the CPU model's float32 sums in another order (float32 rounding over k = 384, not bfloat16's),
    into a view at an offset of a float32 buffer, nothing written outside it."""
    import cupy as cp

    from gpubp.bfloat16 import float32_accumulation
    from gpubp.cublas_direct import matmul_into_float32

    A, B, host = operands(shape, 320, 384, 256)
    flat = cp.full(320 * 256 + 3, -7.0, np.float32)
    with float32_accumulation(cp):
        matmul_into_float32(*host(cp.asarray(A), cp.asarray(B)), flat[3:].reshape(320, 256))
    model = np.empty((320, 256), np.float32)
    matmul_as_bfloat16(*host(A, B), out=model)
    got = cp.asnumpy(flat)
    assert (got[:3] == -7.0).all()
    # 1e-5: float32 sums over k = 384 in another order, by tensor cores that truncate their partial
    # sums (a model of that, exact products truncated per k-block, gave 2.4e-7 to 6.5e-7 here), and
    # 100x below a C rounded to bfloat16 (2^-9 relative: about 1e-3)
    assert rel(got[3:].reshape(320, 256), model) < 1e-5


@pytest.mark.gpu
def test_cuda_bfloat16_gradients_and_training_match_the_cpu(digits):
    """Gradients on the card within u / 4 (norm) of the CPU's, and 15 epochs on digits within one
    point of the CPU's accuracy."""
    from gpubp import fit

    X, y = batch(digits, 256)
    cpu, gpu = (MLP(SIZES, "tanh", device, "bfloat16", seed=3, alpha=1e-3) for device in ("cpu", "cuda"))
    _, g_c = cpu.flat_loss_and_grad(X, y)
    _, g_g = gpu.flat_loss_and_grad(gpu.backend.asarray(X), gpu.backend.asarray(y))
    assert rel(to_numpy(g_g), g_c) < BF16_UNIT_ROUNDOFF / 4
    train, test = digits
    scores = []
    for device in ("cpu", "cuda"):
        net = MLP([64, 64, 10], "relu", backend=device, dtype="bfloat16", seed=0)
        fit(net, train.X, train.y, epochs=15, batch_size=32, validation_fraction=0.0, seed=0)
        scores.append(net.score(test.X, test.y))
    assert scores[0] >= 0.95 and abs(scores[0] - scores[1]) <= 0.01, scores
