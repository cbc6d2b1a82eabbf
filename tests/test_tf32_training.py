"""MLP(tf32=True): TF32 products in training and prediction, the CPU as the GPU's reference.

On the CPU a tf32 network computes every product with gpubp.precision.matmul_as_tf32 (inputs
rounded to TF32 as the card rounds them, sums in float32); on CUDA inside
gpubp.precision.tf32_products. The setting travels through save/load, the estimators and the CLI.
"""

import contextlib

import numpy as np
import pytest
from sklearn.base import clone

from gpubp import MLP, fit, load_model, save_model, to_numpy
from gpubp import precision
from gpubp.cli import main
from gpubp.errors import DataError
from gpubp.estimators import MLPClassifier, MLPRegressor, load_estimator
from gpubp.precision import matmul_as_tf32

from . import fake_cupy_arrays
from .legacy_files import legacy_model_arrays

SIZES = [64, 48, 32, 10]
ALPHA = 1e-3


def batch(digits, n=512):
    train, _ = digits
    return train.X[:n].astype(np.float32), train.y[:n]


def rel(a, b) -> float:
    """Norm-relative difference of a from b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def reference_tf32(net, X, y):
    """Loss, flat gradient and output probabilities of a tanh softmax network, written out
    here with every product a matmul_as_tf32 (BP1-BP4 and the L2 term, in float32)."""
    W, b = [to_numpy(w) for w in net.weights], [to_numpy(c) for c in net.biases]
    n = X.shape[0]
    a = [X]
    for l in range(len(W) - 1):
        a.append(np.tanh(matmul_as_tf32(a[-1], W[l]) + b[l]))
    zL = matmul_as_tf32(a[-1], W[-1]) + b[-1]
    p = np.exp(zL - zL.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(n), y]).mean() + ALPHA / (2 * n) * sum((w * w).sum() for w in W)
    delta = p.copy()  # BP1
    delta[np.arange(n), y] -= 1
    delta /= n
    dW, db = [None] * len(W), [None] * len(W)
    for l in reversed(range(len(W))):
        db[l] = delta.sum(axis=0)  # BP3
        dW[l] = matmul_as_tf32(a[l].T, delta) + np.float32(ALPHA / n) * W[l]  # BP4
        if l > 0:
            delta = matmul_as_tf32(delta, W[l].T) * (1 - a[l] * a[l])  # BP2
    return loss, np.concatenate([g.ravel() for g in dW + db]), p


def pair(dtype="float32", backend="cpu"):
    ieee = MLP(SIZES, "tanh", backend, dtype, seed=3, alpha=ALPHA)
    tf32 = MLP(SIZES, "tanh", backend, dtype, seed=3, alpha=ALPHA, tf32=True)
    return ieee, tf32


# ------------------------------------------------------------------ the CPU model


def test_cpu_tf32_gradients_are_the_tf32_products_and_differ_from_ieee(digits):
    X, y = batch(digits)
    ieee, tf32 = pair()
    loss_i, g_i = ieee.flat_loss_and_grad(X, y)
    loss_t, g_t = tf32.flat_loss_and_grad(X, y)
    loss_r, g_r, _ = reference_tf32(tf32, X, y)
    # the network is the explicit TF32 computation, to float32 summation noise
    assert abs(float(loss_t) - loss_r) / loss_r < 1e-6
    assert rel(g_t, g_r) < 2e-6, rel(g_t, g_r)
    for l, (dW_t, dW_r) in enumerate(zip(*(tf32.unflatten(g)[0] for g in (g_t, g_r)))):
        assert rel(dW_t, dW_r) < 2e-6, (l, rel(dW_t, dW_r))
    # and it is not IEEE float32: TF32's error is some 1e-4..1e-3 of the gradient
    assert 1e-4 < rel(g_t, g_i) < 3e-3, rel(g_t, g_i)
    assert rel(g_i, g_r) > 5e-5
    assert 1e-7 < abs(float(loss_t) - float(loss_i)) / float(loss_i) < 1e-3


def test_cpu_tf32_prediction_uses_the_tf32_products(digits):
    X, y = batch(digits, 300)
    ieee, tf32 = pair()
    _, _, p_r = reference_tf32(tf32, X, y)
    # one batch of the reference's shape: smaller batches would add BLAS blocking noise (5e-6 on OpenBLAS 0.3.20)
    p_t, p_i = tf32.predict_proba(X, batch_size=len(X)), ieee.predict_proba(X, batch_size=len(X))
    assert rel(p_t, p_r) < 2e-6
    assert rel(p_i, p_r) > 1e-5


def test_ieee_float32_is_the_default():
    net = MLP([4, 3, 2], backend="cpu", seed=0)
    assert net.tf32 is False and "tf32" not in repr(net)
    assert repr(MLP([4, 3, 2], backend="cpu", seed=0, tf32=True)) == "MLP(4-3-2, relu, softmax, float32, cpu, tf32)"


def test_float64_with_tf32_is_refused():
    with pytest.raises(ValueError, match="tf32=True needs dtype float32.*float64"):
        MLP([4, 3, 2], backend="cpu", dtype="float64", tf32=True)
    with pytest.raises(TypeError, match="tf32 must be True or False"):
        MLP([4, 3, 2], backend="cpu", tf32="yes")
    assert MLP([4, 3, 2], backend="cpu", dtype="float64", tf32=False).tf32 is False


def test_training_digits_in_tf32_reaches_float32_accuracy(digits):
    train, test = digits
    scores = {}
    for tf32 in (False, True):
        net = MLP([64, 64, 10], "relu", backend="cpu", seed=0, tf32=tf32)
        fit(net, train.X, train.y, epochs=15, batch_size=32, validation_fraction=0.0, seed=0)
        scores[tf32] = net.score(test.X, test.y)
    assert scores[False] >= 0.95
    assert abs(scores[True] - scores[False]) <= 0.01, scores


# ------------------------------------------------------------------ carried through


@pytest.mark.parametrize("tf32", [False, True])
def test_save_and_load_keep_tf32(tmp_path, tf32, digits):
    X, y = batch(digits, 64)
    net = MLP(SIZES, "tanh", "cpu", seed=1, alpha=ALPHA, tf32=tf32)
    loaded, _ = load_model(save_model(net, tmp_path / "m.npz"), backend="cpu")
    assert loaded.tf32 is tf32
    np.testing.assert_array_equal(loaded.flat_loss_and_grad(X, y)[1], net.flat_loss_and_grad(X, y)[1])


def test_a_model_file_without_tf32_loads_as_ieee(tmp_path):
    path = tmp_path / "m.npz"
    arrays = legacy_model_arrays(MLP([4, 3, 2], backend="cpu", dtype="float32", seed=0))
    np.savez(path, **arrays)  # as written before tf32 existed
    assert load_model(path, backend="cpu")[0].tf32 is False
    np.savez(path, **arrays, tf32=np.array("yes"))
    with pytest.raises(DataError, match="tf32 must be True or False"):
        load_model(path, backend="cpu")


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_estimators_take_tf32(Estimator, digits, tmp_path):
    X, y = batch(digits, 200)
    settings = dict(hidden_layer_sizes=(16,), activation="tanh", max_iter=3, random_state=0, device="cpu",
                    dtype="float32")
    fitted = {tf32: Estimator(**settings, tf32=tf32).fit(X, y.astype(np.float32)) for tf32 in (False, True)}
    est = fitted[True]
    assert est.get_params()["tf32"] is True and clone(est).get_params()["tf32"] is True
    assert Estimator().get_params()["tf32"] is False
    assert est._network().tf32 is True and fitted[False]._network().tf32 is False
    assert not np.array_equal(est.coefs_[0], fitted[False].coefs_[0])  # trained in TF32
    loaded = load_estimator(est.save(tmp_path / "e.npz"), device="cpu")
    assert loaded.get_params()["tf32"] is True
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_estimators_validate_tf32(Estimator, digits):
    X, y = batch(digits, 50)
    with pytest.raises(ValueError, match="The 'tf32' parameter of .* must be an instance of 'bool'"):
        Estimator(tf32="yes", max_iter=1, device="cpu").fit(X, y)
    for dtype, data in (("float64", X), (None, X.astype(np.float64))):
        with pytest.raises(ValueError, match="tf32=True needs float32.*float64: pass dtype='float32'"):
            Estimator(tf32=True, dtype=dtype, max_iter=1, device="cpu").fit(data, y)


def test_cli_trains_in_tf32_and_saves_the_setting(tmp_path, capsys):
    out = tmp_path / "m.npz"
    status = main(["train", "--tf32", "--device", "cpu", "--hidden", "16", "--epochs", "2", "--quiet",
                   "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    assert "float32 tf32," in capsys.readouterr().out
    assert load_model(out, backend="cpu")[0].tf32 is True


def test_cli_refuses_tf32_with_float64(capsys):
    assert main(["train", "--tf32", "--dtype", "float64", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: gpubp train: --tf32 needs --dtype float32 (TF32 rounds float32 inputs), got float64"]


# ------------------------------------------------------------------ CUDA: the stand-in and the card


def test_on_the_cupy_stand_in_every_product_runs_inside_tf32_products(fake_cupy, monkeypatch, digits):
    X, y = batch(digits, 256)
    entered, depth, outside, inside = [], [0], [], []

    real_context = precision.tf32_products

    @contextlib.contextmanager
    def spy_context(xp, enabled=True):
        entered.append((xp, enabled))
        depth[0] += enabled
        try:
            with real_context(xp, enabled) as on:
                yield on
        finally:
            depth[0] -= enabled

    real_ufunc = fake_cupy_arrays._apply_ufunc

    def spy_ufunc(ufunc, method, inputs, kwargs):
        if ufunc.__name__ == "matmul":
            (inside if depth[0] else outside).append(tuple(x.shape for x in inputs))
        return real_ufunc(ufunc, method, inputs, kwargs)

    ieee, tf32 = pair(backend="cuda")  # first: the backend's probe takes a product of its own
    monkeypatch.setattr(precision, "tf32_products", spy_context)
    monkeypatch.setattr(fake_cupy_arrays, "_apply_ufunc", spy_ufunc)
    loss_i, g_i = ieee.flat_loss_and_grad(fake_cupy.asarray(X), fake_cupy.asarray(y))
    p_i = ieee.predict_proba(X)
    assert not inside and len(outside) == 3 + 5 + 3  # IEEE: forward, BP4 and BP2, prediction
    assert all(enabled is False for _, enabled in entered)
    entered.clear(), outside.clear()
    loss_t, g_t = tf32.flat_loss_and_grad(fake_cupy.asarray(X), fake_cupy.asarray(y))
    p_t = tf32.predict_proba(X)
    assert not outside and len(inside) == 3 + 5 + 3
    assert entered and all(xp is fake_cupy and enabled is True for xp, enabled in entered)
    # the stand-in honours TF32 (tests/fake_cupy_core.py): not the IEEE arithmetic
    assert rel(to_numpy(g_t), to_numpy(g_i)) > 1e-4 and float(loss_t) != float(loss_i)
    assert not np.array_equal(to_numpy(p_t), to_numpy(p_i))


def test_stand_in_products_are_tf32_exactly_while_a_tf32_block_is_open(fake_cupy, rng):
    """Every CuPy route of a 2-D float32 product (@, ndarray.dot, cupy.matmul / dot, numpy.matmul
    / dot on device arrays) gives bitwise matmul_as_tf32 inside tf32_products and bitwise the
    IEEE product outside it, before and after; the switches are back after the block, also
    when it leaves by an exception."""
    a, b = rng.standard_normal((40, 30)).astype(np.float32), rng.standard_normal((30, 20)).astype(np.float32)
    da, db = fake_cupy.asarray(a), fake_cupy.asarray(b)
    routes = [lambda: da @ db, lambda: da.dot(db), lambda: fake_cupy.matmul(da, db), lambda: fake_cupy.dot(da, db),
              lambda: np.matmul(da, db), lambda: np.dot(da, db)]
    ieee, tf32 = a @ b, matmul_as_tf32(a, b)
    assert not np.array_equal(ieee, tf32)
    core, cublas, handle = fake_cupy._core, fake_cupy.cuda.cublas, fake_cupy.cuda.device.get_cublas_handle()
    DEFAULT = core._routines_linalg.COMPUTE_TYPE_DEFAULT
    for expected in (ieee, "tf32", ieee, "raise", ieee):
        if isinstance(expected, str):
            with contextlib.suppress(KeyError), precision.tf32_products(fake_cupy) as on:
                assert on is True
                assert core.get_compute_type(np.float32) == core._routines_linalg.COMPUTE_TYPE_TF32
                assert cublas.getMathMode(handle) == precision.CUBLAS_TF32_TENSOR_OP_MATH
                for route in routes:
                    np.testing.assert_array_equal(to_numpy(route()), tf32)
                if expected == "raise":
                    raise KeyError("inside the block")
        else:
            for route in routes:
                np.testing.assert_array_equal(to_numpy(route()), ieee)
            assert core.get_compute_type(np.float32) == DEFAULT and cublas.getMathMode(handle) == 0


def test_stand_in_cuda_tf32_network_is_the_cpu_tf32_network(fake_cupy, digits):
    """The stand-in's TF32 network against the CPU's (whose products are matmul_as_tf32): the
    products agree bitwise on equal inputs (the test above), but the stand-in's kernels (tanh,
    softmax: g++'s libm) differ from NumPy's by a float32 ulp here and there (IEEE networks: ~1e-7
    of the gradient), and now and then such an ulp moves an activation or a delta across a TF32
    rounding boundary, a change of one TF32 ulp (2**-10 relative) in one input of the next
    product: measured 3.6e-6 of the gradient, 1e-7 of the loss. Bounds 2e-5 and 1e-6 (the card's
    test uses 2e-5), an order of magnitude below what separates TF32 from IEEE (3.3e-4, 8e-6)."""
    X, y = batch(digits)
    cpu = MLP(SIZES, "tanh", "cpu", seed=3, alpha=ALPHA, tf32=True)
    ieee, tf32 = pair(backend="cuda")
    assert precision.tf32_supported(fake_cupy)
    loss_c, g_c = cpu.flat_loss_and_grad(X, y)
    loss_i, g_i = ieee.flat_loss_and_grad(fake_cupy.asarray(X), fake_cupy.asarray(y))
    loss_t, g_t = tf32.flat_loss_and_grad(fake_cupy.asarray(X), fake_cupy.asarray(y))
    g_i, g_t, loss_i, loss_t = to_numpy(g_i), to_numpy(g_t), float(loss_i), float(loss_t)
    assert rel(g_t, g_c) < 2e-5, rel(g_t, g_c)
    assert abs(loss_t - float(loss_c)) / float(loss_c) < 1e-6
    assert rel(g_i, g_c) > 1e-4, rel(g_i, g_c)  # TF32 silently off would fail here
    assert abs(loss_i - float(loss_c)) / float(loss_c) > 2e-6
    core, cublas = fake_cupy._core, fake_cupy.cuda.cublas
    assert core.get_compute_type(np.float32) == core._routines_linalg.COMPUTE_TYPE_DEFAULT
    assert cublas.getMathMode(fake_cupy.cuda.device.get_cublas_handle()) == 0


def test_a_stand_in_tf32_network_restores_the_switches_after_an_error(fake_cupy, digits, monkeypatch):
    X, y = batch(digits, 64)
    _, tf32 = pair(backend="cuda")
    seen = []
    real = fake_cupy_arrays._apply_ufunc

    def failing_product(ufunc, method, inputs, kwargs):
        if ufunc.__name__ == "matmul":
            seen.append((fake_cupy._core.get_compute_type(np.float32), fake_cupy.cuda.cublas.getMathMode(
                fake_cupy.cuda.device.get_cublas_handle())))
            raise RuntimeError("a product failed")
        return real(ufunc, method, inputs, kwargs)

    monkeypatch.setattr(fake_cupy_arrays, "_apply_ufunc", failing_product)
    with pytest.raises(RuntimeError, match="a product failed"):
        tf32.flat_loss_and_grad(fake_cupy.asarray(X), fake_cupy.asarray(y))
    monkeypatch.setattr(fake_cupy_arrays, "_apply_ufunc", real)
    assert seen == [(7, precision.CUBLAS_TF32_TENSOR_OP_MATH)]  # COMPUTE_TYPE_TF32 inside
    assert fake_cupy._core.get_compute_type(np.float32) == 1  # COMPUTE_TYPE_DEFAULT again
    assert fake_cupy.cuda.cublas.getMathMode(fake_cupy.cuda.device.get_cublas_handle()) == 0


@pytest.mark.gpu
def test_cuda_tf32_gradients_match_the_cpu_tf32_reference(digits):
    X, y = batch(digits)
    cpu = MLP(SIZES, "tanh", "cpu", seed=3, alpha=ALPHA, tf32=True)
    ieee, tf32 = pair(backend="cuda")
    _, g_c = cpu.flat_loss_and_grad(X, y)
    _, g_i = ieee.flat_loss_and_grad(ieee.backend.asarray(X), ieee.backend.asarray(y))
    _, g_t = tf32.flat_loss_and_grad(tf32.backend.asarray(X), tf32.backend.asarray(y))
    if not precision.tf32_supported(tf32.xp):
        pytest.skip("this card has no TF32 (compute capability < 8.0)")
    g_i, g_t = to_numpy(g_i), to_numpy(g_t)
    assert rel(g_t, g_c) < 2e-5, rel(g_t, g_c)
    assert rel(g_i, g_c) > 5e-5, rel(g_i, g_c)


def test_a_checkpoint_records_tf32_and_a_resume_must_match(tmp_path):
    """The checkpoint's model block holds tf32; resuming with the other setting is refused, and a
    checkpoint written before tf32 existed (no entry) resumes as tf32=False."""
    from gpubp import fit
    from gpubp.checkpoint import read_checkpoint, write_checkpoint

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)).astype(np.float32), rng.integers(0, 3, 60)
    ckpt = tmp_path / "c.npz"
    fit(MLP([5, 8, 3], "tanh", "cpu", "float32", seed=0, tf32=True), X, y, epochs=2, batch_size=20, seed=0,
        checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda epoch, logs: epoch == 1])
    c = read_checkpoint(ckpt)
    assert c.meta["model"]["tf32"] is True
    with pytest.raises(ValueError, match="holds the network"):
        fit(MLP([5, 8, 3], "tanh", "cpu", "float32", seed=0), X, y, epochs=2, batch_size=20, seed=0, resume=ckpt)
    old = {**c.meta, "model": {k: v for k, v in c.meta["model"].items() if k != "tf32"}}
    write_checkpoint(tmp_path / "old.npz", old, c.arrays)
    fit(MLP([5, 8, 3], "tanh", "cpu", "float32", seed=0), X, y, epochs=2, batch_size=20, seed=0,
        resume=tmp_path / "old.npz")
    with pytest.raises(ValueError, match="holds the network"):
        fit(MLP([5, 8, 3], "tanh", "cpu", "float32", seed=0, tf32=True), X, y, epochs=2, batch_size=20, seed=0,
            resume=tmp_path / "old.npz")
