"""gpubp's cuda backend run without a GPU, on the CuPy stand-in of tests/fake_cupy_arrays.py.

The ``fake_cupy`` fixture (tests/conftest.py) installs the stand-in as ``cupy``: device arrays
that refuse to meet host arrays as CuPy's do, gpubp's kernels compiled by g++ as NVRTC would
build them, and a card of fixed capacity that runs out of memory as CuPy's pool does. Every
path a card would run -- transfers, MLP, fit, checkpoints, saving, the checks behind
``gpubp check``, the estimators, a device change between fits, running out of memory -- runs
here on "cuda" and is compared with the same run on "cpu": float64 to 1e-12, float32 to
gpubp.parity's tolerances. The first tests hold the stand-in itself to CuPy's behaviour.
"""

import ast
import pickle
import re
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import gpubp
from gpubp import MLP, MLPClassifier, MLPRegressor, cli, fit, kernels, parity, to_numpy
from gpubp.backend import backend_for, cuda_status, get_backend
from gpubp.errors import DeviceMemoryError
from gpubp.ops import ACTIVATIONS

from . import fake_cupy_arrays
from .conftest import REPO, assert_close

TOL = {"float64": (1e-12, 1e-14), "float32": parity.MODEL_TOL["float32"]}


def blobs(n=240, d=12, classes=4, seed=0, spread=1.5):
    """Gaussian clusters: X (n, d) float64, y (n,) int labels."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3, size=(classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + spread * rng.normal(size=(n, d)), y


def same(actual, expected, dtype="float64", what="arrays"):
    """actual (device or host) equals expected (host) within TOL[dtype]."""
    rtol, atol = TOL[dtype]
    assert_close(to_numpy(actual), to_numpy(expected), rtol, atol, what=what)


def on_device(a) -> bool:
    return type(a).__module__ == "cupy"


def quiet_fit(estimator, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*args, **kwargs)


# ----------------------------------------------------------------------------- the stand-in itself

def test_device_arrays_behave_as_cupy_arrays(fake_cupy):
    cp = fake_cupy
    x = cp.arange(6, dtype=cp.float64).reshape(2, 3)
    assert type(x).__module__ == "cupy" and type(x).__name__ == "ndarray"
    for reduced in (x.sum(), x.max(), x.argmax(), x.mean(), cp.vdot(x, x), x[1, 2], np.sum(x)):
        assert on_device(reduced) and reduced.shape == (), reduced  # 0-d device arrays, as in CuPy
    host = x.get()
    assert type(host) is np.ndarray and host.tolist() == [[0, 1, 2], [3, 4, 5]]
    host[0, 0] = 7
    assert float(x[0, 0]) == 0  # get() copies
    assert on_device(np.stack([x, x])) and on_device(cp.exp(x)) and on_device(x @ x.T)
    assert cp.asarray(x) is x and cp.asarray(x, dtype=cp.float32).dtype == np.float32
    assert cp.ascontiguousarray(x) is x and cp.ascontiguousarray(x.T).flags.c_contiguous
    assert type(cp.asnumpy(x)) is np.ndarray and repr(x).startswith("array(")
    x[[0]] = np.ones(3)  # an advanced index takes host values: CuPy copies them over
    x[1] = np.float64(2.0)  # so does a scalar
    assert x.get().tolist() == [[1, 1, 1], [2, 2, 2]]


HOST = np.ones(3)
def softmax_rows(cp, scale, grid=(1,)):
    """gpubp's RawModule kernel softmax_minus_y_rows (float32) on 2 rows of 3 classes, launched on
    ``grid`` with ``scale`` for its float row scale, the other arguments as gpubp.kernels passes them."""
    z, y = cp.zeros((2, 3), np.float32), cp.zeros(2, np.int64)
    module = cp.RawModule(code=kernels.read_source("gpubp_math.cuh") + kernels.read_source("softmax_rows.cu"),
                          options=kernels.COMPILE_OPTIONS)
    kernel = module.get_function("gpubp_softmax_minus_y_rows_f32")
    kernel(grid, (64,), (z, z, np.int32(0), y, scale, z, z, np.int32(0), cp.empty((2, 3), np.float32),
                         cp.empty(2, np.float32), np.int64(2), np.int64(3)))


STRICT = {  # what CuPy refuses, with the exception it raises
    "ufunc with a host operand": (lambda cp, x: x + HOST, TypeError),
    "host operand first": (lambda cp, x: HOST * x, TypeError),
    "in place from host": (lambda cp, x: x.__iadd__(HOST), TypeError),
    "out= a host array": (lambda cp, x: np.exp(x, out=HOST.copy()), TypeError),
    "cupy ufunc on host": (lambda cp, x: cp.exp(HOST), TypeError),
    "cupy function on host": (lambda cp, x: cp.stack([x, HOST]), TypeError),
    "numpy function mixing": (lambda cp, x: np.concatenate([x, HOST]), TypeError),
    "numpy function CuPy lacks": (lambda cp, x: np.insert(x, 0, 1.0), TypeError),
    "numpy.asarray": (lambda cp, x: np.asarray(x), TypeError),
    "numpy.array of a list": (lambda cp, x: np.array([x[0], x[1]]), TypeError),
    "numpy.ascontiguousarray": (lambda cp, x: np.ascontiguousarray(x), TypeError),
    "numpy.asanyarray": (lambda cp, x: np.asanyarray(x), TypeError),
    "__array__": (lambda cp, x: x.__array__(), TypeError),
    "cupy.ascontiguousarray of host": (lambda cp, x: cp.ascontiguousarray(HOST), TypeError),
    "setitem from host": (lambda cp, x: x.__setitem__(slice(None), HOST), ValueError),
    "set() another dtype": (lambda cp, x: x.set(HOST.astype(np.float32)), TypeError),
    "pickle": (lambda cp, x: pickle.dumps(x), TypeError),
    "dot with host": (lambda cp, x: x.dot(HOST), TypeError),
    "elementwise kernel on host": (
        lambda cp, x: cp.ElementwiseKernel("T a", "T b", "b = a", "copy_kernel")(HOST, x), TypeError),
    "elementwise output on host": (
        lambda cp, x: cp.ElementwiseKernel("T a", "T b", "b = a", "copy_kernel")(x, HOST.copy()), TypeError),
    "reduction kernel on host": (
        lambda cp, x: cp.ReductionKernel("T a", "T s", "a", "a + b", "s = a", "0", "sum_kernel")(HOST), TypeError),
    "elementwise kernel given a list for a scalar": (  # CScalar: "Unsupported type <class 'list'>"
        lambda cp, x: cp.ElementwiseKernel("T a, T s", "T b", "b = a * s", "scale_kernel")(x, [2.0], x), TypeError),
    "raw kernel given a device array for a by-value scalar": (  # CuPy would pass its CArray's bytes
        lambda cp, x: softmax_rows(cp, scale=cp.ones((), np.float32)), TypeError),
    "raw kernel launched on a list": (  # Function.__call__(self, tuple grid, tuple block, ...)
        lambda cp, x: softmax_rows(cp, scale=np.float32(1), grid=[1]), TypeError),
    "a device integer as an index": (lambda cp, x: range(cp.asarray(3)), TypeError),  # no __index__ in CuPy
    "item with an index": (lambda cp, x: x.item(0), TypeError),  # CuPy's item(self) takes none
    "item of more than one element": (lambda cp, x: x.item(), ValueError),
    "missing cupy name": (lambda cp, x: cp.insert, AttributeError),
    "take into an out of another dtype": (
        lambda cp, x: cp.take(x, cp.arange(2), axis=0, out=cp.zeros(2, np.float32)), TypeError),
    "take into an out of another shape": (lambda cp, x: cp.take(x, cp.arange(2), axis=0, out=cp.zeros(3)), ValueError),
}


def test_a_cupy_function_with_out_writes_into_it_and_returns_it(fake_cupy):
    """As cupy.take(a, idx, axis, out) does (cupy/_core/_routines_indexing.pyx ``_take``): one
    launch, out itself returned (CUDA graphs' input buffers are filled so)."""
    cp = fake_cupy
    X, idx, out = cp.asarray(np.arange(12.0).reshape(4, 3)), cp.asarray([3, 1]), cp.zeros((2, 3))
    before = cp.activity.launches
    assert cp.take(X, idx, axis=0, out=out) is out
    assert cp.activity.launches - before == 1
    np.testing.assert_array_equal(cp.asnumpy(out), [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]])


@pytest.mark.parametrize("case", STRICT)
def test_the_stand_in_refuses_what_cupy_refuses(fake_cupy, case):
    action, error = STRICT[case]
    x = fake_cupy.zeros(3)
    with pytest.raises(error):
        action(fake_cupy, x)


# The functions of gpubp that test isinstance(..., np.ndarray), each given host values only. The
# stand-in's device arrays are NumPy subclasses (True there), CuPy's are not (False on a card), so
# such a test of a value that may live on the device passes here and takes the other branch there:
# use gpubp.backend.is_device_array, or add the function here with why it sees the host alone.
HOST_ONLY_NDARRAY_TESTS = {
    "communicator.py:_same": "compares ranks' settings: Python values and host arrays",
    "estimator_checkpoint.py:jsonable": "a fitted record's floats and lists, on the host",
    "host_kernels.py:softmax_minus_y": "the CPU backend's kernel, on NumPy arrays",
}


def ndarray_tests(source: str, module: str) -> set[str]:
    """'module:function' of each function in ``source`` calling isinstance(..., np.ndarray)."""
    found = set()
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for call in ast.walk(function):
                if (isinstance(call, ast.Call) and getattr(call.func, "id", None) == "isinstance"
                        and "np.ndarray" in ast.unparse(call.args[1])):
                    found.add(f"{module}:{function.name}")
    return found


def test_no_isinstance_ndarray_test_meets_a_device_array():
    package = REPO / "gpubp"
    found = set().union(*(ndarray_tests(path.read_text(), path.name) for path in package.glob("*.py")))
    assert found == set(HOST_ONLY_NDARRAY_TESTS)
    planted = "def f(a):\n    return isinstance(a, (list, np.ndarray))\n"
    assert ndarray_tests(planted, "m.py") == {"m.py:f"}


def test_numpy_and_sys_modules_are_restored_after_the_stand_in():
    status = cuda_status()  # first: on a machine with CuPy this imports the real one
    real, before = np.asarray, sys.modules.get("cupy")
    with pytest.MonkeyPatch.context() as mp:
        cp = fake_cupy_arrays.install(mp)
        assert sys.modules["cupy"] is cp and np.asarray is not real and cuda_status().usable
        with pytest.raises(TypeError):
            np.asarray(cp.zeros(2))
    fake_cupy_arrays.forget_gpubp_caches()
    assert np.asarray is real and sys.modules.get("cupy") is before and cuda_status() == status
    assert np.asarray(cp.zeros(2)).shape == (2,)  # numpy is itself again


def test_out_of_memory_is_raised_as_cupy_raises_it(fake_cupy):
    cp = fake_cupy
    cp.memory.capacity = 10_000
    pool = cp.get_default_memory_pool()
    kept = cp.empty(1000, dtype=cp.uint8)  # 1,024 bytes once rounded to cudaMalloc's 512
    dropped = cp.empty(3000, dtype=cp.uint8)
    del dropped
    assert (pool.used_bytes(), pool.free_bytes(), pool.total_bytes()) == (1024, 3072, 4096)
    assert cp.cuda.runtime.memGetInfo() == (10_000 - 4096, 10_000)
    with pytest.raises(cp.cuda.memory.OutOfMemoryError) as caught:
        cp.empty(9000, dtype=cp.uint8)
    assert isinstance(caught.value, MemoryError)
    assert str(caught.value) == "Out of memory allocating 9,216 bytes (allocated so far: 1,024 bytes)."
    assert pool.free_bytes() == 0  # the pool freed its cache before giving up, as CuPy's does
    assert kept.nbytes == 1000


# ----------------------------------------------------------------------------- backend and model

def test_cuda_backend_transfers_on_the_stand_in(fake_cupy):
    cp = fake_cupy
    assert cuda_status().usable and "stand-in" in cuda_status().devices[0]
    cuda, cpu = get_backend("cuda"), get_backend("cpu")
    assert get_backend("auto") is cuda and cuda.xp is cp
    host = np.arange(12.0).reshape(3, 4)
    dev = cuda.asarray(host.T, np.float32)  # strided host data
    assert on_device(dev) and dev.dtype == np.float32 and backend_for(dev) is cuda
    np.testing.assert_array_equal(cuda.to_host(dev), host.T.astype(np.float32))
    assert cuda.asarray(dev) is dev  # already there: no copy
    back = cpu.asarray(dev)  # device to host through the cpu backend
    assert type(back) is np.ndarray and backend_for(back) is cpu
    np.testing.assert_array_equal(back, host.T)
    pool = cp.get_default_memory_pool()
    assert cuda.free_memory() == cp.memory.capacity - pool.used_bytes()
    del dev
    assert pool.free_bytes() > 0
    cuda.release_memory()
    assert pool.free_bytes() == 0
    pool.set_limit(size=pool.used_bytes() + 4096)
    assert cuda.free_memory() == 4096 and cuda.fits(2048) and not cuda.fits(2049)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_and_grads_on_cuda_match_cpu(fake_cupy, activation, dtype):
    X, y = blobs(n=64, d=20, classes=5)
    weights = np.random.default_rng(1).uniform(0, 2, 64)
    cpu, gpu = (MLP([20, 32, 16, 5], activation, device, dtype, seed=11, alpha=0.1) for device in ("cpu", "cuda"))
    for p_cpu, p_gpu in zip(cpu.params, gpu.params):
        assert on_device(p_gpu)
        np.testing.assert_array_equal(to_numpy(p_gpu), p_cpu)  # same seed, same network
    for w in (None, weights):
        (loss_c, dW_c, db_c), (loss_g, dW_g, db_g) = (net.loss_and_grads(X, y, w) for net in (cpu, gpu))
        assert on_device(loss_g) and loss_g.shape == ()
        same(loss_g, loss_c, dtype, f"{activation} loss")
        for l, (g_c, g_g) in enumerate(zip(dW_c + db_c, dW_g + db_g)):
            assert on_device(g_g)
            same(g_g, g_c, dtype, f"{activation} {dtype} grad {l} weighted={w is not None}")


@pytest.mark.parametrize("output", ["logistic", "identity", "exp"])
def test_other_output_layers_on_cuda_match_cpu(fake_cupy, output):
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(50, 8)), rng.uniform(0, 1, size=(50, 3))
    cpu, gpu = (MLP([8, 16, 3], "tanh", device, "float64", seed=2, output=output) for device in ("cpu", "cuda"))
    (loss_c, dW_c, db_c), (loss_g, dW_g, db_g) = (net.loss_and_grads(X, Y) for net in (cpu, gpu))
    same(loss_g, loss_c, what=f"{output} loss")
    for g_c, g_g in zip(dW_c + db_c, dW_g + db_g):
        same(g_g, g_c, what=f"{output} grads")
    same(gpu.predict_output(X, batch_size=7), cpu.predict_output(X), what=f"{output} predict_output")


def test_predict_and_evaluate_on_cuda_match_cpu(fake_cupy):
    X, y = blobs(n=100)
    cpu, gpu = (MLP([12, 24, 4], "sigmoid", device, "float64", seed=5) for device in ("cpu", "cuda"))
    X_dev = fake_cupy.asarray(X)
    for X_in in (X, X_dev):  # host rows are sent batch by batch; device rows stay there
        P = gpu.predict_proba(X_in, batch_size=37)
        assert on_device(P)
        same(P, cpu.predict_proba(X), what="predict_proba")
        np.testing.assert_array_equal(to_numpy(gpu.predict(X_in)), cpu.predict(X))
        loss_g, acc_g = gpu.evaluate(X_in, y, batch_size=33)
        loss_c, acc_c = cpu.evaluate(X, y, batch_size=33)
        assert isinstance(loss_g, float) and acc_g == acc_c
        np.testing.assert_allclose(loss_g, loss_c, rtol=1e-12)
    X_dev[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        gpu.predict(X_dev)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("optimizer,dtype,data_on_device", [
    ("momentum", "float64", True), ("adam", "float64", True), ("adam", "float64", False), ("adam", "float32", True)])
def test_fit_on_cuda_matches_cpu(fake_cupy, optimizer, dtype, data_on_device):
    X, y = blobs(n=400)
    if not data_on_device:  # a card too small for the 320 training rows: batches go from the host
        fake_cupy.memory.capacity = 64_000
    settings = dict(epochs=12, batch_size=32, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05,
                    validation_fraction=0.2, patience=2, min_delta=0.02, seed=3)
    cpu, gpu = (MLP([12, 24, 4], "tanh", device, dtype, seed=1, alpha=1e-3) for device in ("cpu", "cuda"))
    live = []  # shapes of the device buffers after each epoch
    h_cpu = fit(cpu, X, y, **settings)
    record = lambda epoch, logs: live.append({shape for shape, _, _ in fake_cupy.memory.live.values()})  # noqa: E731
    h_gpu = fit(gpu, X, y, callbacks=[record], **settings)
    assert ((320, 12) in live[0]) is data_on_device
    assert h_gpu.device.startswith("cuda:0") and h_cpu.device.startswith("cpu")
    assert h_gpu.stopped_early and h_gpu.best_epoch < h_gpu.epochs  # restore_best ran on the device
    assert (h_gpu.epochs, h_gpu.best_epoch) == (h_cpu.epochs, h_cpu.best_epoch) and h_cpu.stopped_early
    rtol = TOL[dtype][0]
    np.testing.assert_allclose(h_gpu.train_loss, h_cpu.train_loss, rtol=rtol)
    np.testing.assert_allclose(h_gpu.val_loss, h_cpu.val_loss, rtol=rtol)
    assert h_gpu.val_accuracy == h_cpu.val_accuracy
    for l, (p_cpu, p_gpu) in enumerate(zip(cpu.params, gpu.params)):
        assert on_device(p_gpu)
        same(p_gpu, p_cpu, dtype, f"parameter {l} after fit")


@pytest.mark.parametrize("first,second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_checkpoint_resumes_on_the_other_device(fake_cupy, tmp_path, first, second):
    X, y = blobs()
    settings = dict(epochs=5, batch_size=32, optimizer="adam", validation_fraction=0.2, patience=4, seed=2)
    net = MLP([12, 24, 4], "relu", first, "float64", seed=4)
    fit(net, X, y, checkpoint=tmp_path / "c.npz", checkpoint_every=1,
        callbacks=[lambda epoch, logs: epoch == 2], **settings)
    checkpoint = gpubp.read_checkpoint(tmp_path / "c.npz")
    assert checkpoint.meta["state"]["epoch"] == 2 and "opt_m" in checkpoint.arrays and "best_0" in checkpoint.arrays
    resumed, trained = MLP([12, 24, 4], "relu", second, "float64", seed=99), []  # its own start: the checkpoint's
    history = fit(resumed, X, y, resume=tmp_path / "c.npz", callbacks=[lambda epoch, logs: trained.append(epoch)],
                  **settings)
    assert history.epochs == 5 and trained == [3, 4, 5]
    for device in (first, second):  # uninterrupted on either device
        whole = MLP([12, 24, 4], "relu", device, "float64", seed=4)
        reference = fit(whole, X, y, **settings)
        np.testing.assert_allclose(history.train_loss, reference.train_loss, rtol=1e-12)
        for l, (p, q) in enumerate(zip(resumed.params, whole.params)):
            same(p, q, what=f"parameter {l}: resumed on {second} vs uninterrupted on {device}")


def test_save_model_from_device_arrays_loads_anywhere(fake_cupy, tmp_path):
    X, y = blobs(n=80)
    gpu = MLP([12, 24, 4], "tanh", "cuda", "float32", seed=6, alpha=0.01)
    fit(gpu, X, y, epochs=2, batch_size=16, seed=0)
    counts = gpu.xp.asarray([5, 7, 9, 11])  # an extra that lives on the card, as the parameters do
    gpubp.save_model(gpu, tmp_path / "m.npz", extra={"classes": np.arange(4), "counts": counts})
    for device in ("cpu", "cuda"):
        net, extra = gpubp.load_model(tmp_path / "m.npz", backend=device)
        assert net.backend.name == device and (net.alpha, net.dtype) == (gpu.alpha, gpu.dtype)
        assert extra["classes"].tolist() == [0, 1, 2, 3] and extra["counts"].tolist() == [5, 7, 9, 11]
        for p, q in zip(net.params, gpu.params):
            assert on_device(p) is (device == "cuda")
            np.testing.assert_array_equal(to_numpy(p), to_numpy(q))  # bitwise: a copy, not a computation
        np.testing.assert_array_equal(to_numpy(net.predict(X)), to_numpy(gpu.predict(X)))


def test_gpubp_check_passes_on_the_stand_in(fake_cupy, capsys):
    """`gpubp check` in-process: every kernel against its twin, the model on cuda against cpu."""
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    # dtypes x layouts x the rows of each operation of gpubp.kernel_set.OPERATIONS (gpubp.parity)
    kernel_rows = 2 * 2 * (4 + 5 + 8 + 12 + 4 + 1 + 8 + 6)  # (the updates with and without the L2 gradient)
    model_rows = 2 * (len(ACTIVATIONS) + 2)  # dtypes x (activations + 2 optimizers)
    assert f"{kernel_rows + model_rows} passed, 0 failed" in out
    assert "comparing cuda:0 gpubp CuPy stand-in (NumPy)" in out
    assert "softmax_minus_y weighted bias delta [strided]" in out and "model 20 adam steps" in out


def test_model_checks_on_cuda_catch_a_wrong_kernel(fake_cupy, monkeypatch):
    spec = kernels.ELEMENTWISE_SPECS["gpubp_backprop_delta_sigmoid"]
    wrong = kernels.ElementwiseSpec(spec.name, spec.in_params, spec.out_params,
                                    "g = g * gpubp::derivative_from_a<3>(a)", spec.twin)  # tanh's
    monkeypatch.setitem(kernels.ELEMENTWISE_SPECS, spec.name, wrong)
    results = parity.model_checks(get_backend("cpu"), get_backend("cuda"), dtypes=("float64",), steps=3)
    assert {r.check for r in results if not r.passed} == {"model sigmoid: loss, all dW and db"}


# ----------------------------------------------------------------------------- estimators

@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_classifier_on_cuda_matches_cpu(fake_cupy, solver):
    X, y = blobs(n=200)
    weights = np.random.default_rng(0).uniform(0.5, 2, len(y)) if solver == "sgd" else None
    params = dict(hidden_layer_sizes=(16, 8), max_iter=6, random_state=0, solver=solver, batch_size=32)
    cpu, gpu = (quiet_fit(MLPClassifier(device=device, **params), X, y, sample_weight=weights)
                for device in ("cpu", "cuda"))
    assert gpu._net.backend.name == "cuda"
    if solver != "lbfgs":
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-12)
        for est in (cpu, gpu):  # partial_fit goes on from the optimizer state on the device
            for _ in range(2):
                est.partial_fit(X[:100], y[:100])
        np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-12)
    for p, q in zip(gpu.coefs_ + gpu.intercepts_, cpu.coefs_ + cpu.intercepts_):
        assert type(p) is np.ndarray
        same(p, q, what=f"{solver} coefs_/intercepts_")
    same(gpu.predict_proba(X), cpu.predict_proba(X), what="predict_proba")
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))
    assert gpu.score(X, y) == cpu.score(X, y)


def test_regressor_float32_on_cuda_matches_cpu(fake_cupy):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(150, 6)).astype(np.float32)
    Y = np.stack([X[:, 0] - 2 * X[:, 1], np.sin(X[:, 2])], axis=1).astype(np.float32)
    params = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, early_stopping=True)
    cpu, gpu = (quiet_fit(MLPRegressor(device=device, **params), X, Y) for device in ("cpu", "cuda"))
    assert gpu.coefs_[0].dtype == np.float32
    rtol, atol = TOL["float32"]
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=rtol)
    np.testing.assert_allclose(gpu.validation_scores_, cpu.validation_scores_, rtol=rtol, atol=atol)
    same(gpu.predict(X), cpu.predict(X), "float32", "regressor predictions")


def test_a_classifier_fitted_on_cuda_pickles_and_saves_host_arrays(fake_cupy, tmp_path):
    """The stand-in refuses to pickle a device array, so a device array left in the pickled state
    (Adam's moments, early stopping's best parameters) fails here."""
    X, y = blobs(n=120)
    stepped = MLPClassifier((16,), device="cuda", random_state=0, batch_size=32)
    stepped.partial_fit(X, y, classes=np.arange(4))
    assert all(on_device(a) for a in stepped._opt_state.arrays.values())
    stopped = quiet_fit(MLPClassifier((16,), device="cuda", random_state=0, max_iter=4, batch_size=32,
                                      early_stopping=True, warm_start=True), X, y)
    assert all(on_device(p) for p in stopped._best_params)
    for gpu in (stepped, stopped):
        thawed = pickle.loads(pickle.dumps(gpu))
        loaded = gpubp.load_estimator(gpu.save(tmp_path / "clf.npz"), device="cpu")
        for other in (thawed, loaded):
            np.testing.assert_array_equal(other.predict_proba(X), gpu.predict_proba(X))
        thawed.set_params(device="cpu")
        for est in (gpu, thawed):  # both go on: on the cpu from the pickled state, on the card
            if est.early_stopping:
                quiet_fit(est, X, y)
            else:
                est.partial_fit(X, y)
        np.testing.assert_allclose(thawed.loss_curve_, gpu.loss_curve_, rtol=1e-12)
        for p, q in zip(thawed.coefs_ + thawed.intercepts_, gpu.coefs_ + gpu.intercepts_):
            same(p, q, what="going on after unpickling: on cpu vs on cuda")


@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_partial_fit_goes_on_after_the_device_changes(fake_cupy, first, second):
    """Adam's state moves with the parameters when ``device`` changes between partial_fit calls."""
    X, y = blobs(n=160)
    params = dict(hidden_layer_sizes=(16,), random_state=0, solver="adam", batch_size=32)
    switched, reference = MLPClassifier(device=first, **params), MLPClassifier(device="cpu", **params)
    for step in range(6):
        if step == 3:
            switched.set_params(device=second)
        for est in (switched, reference):
            est.partial_fit(X, y, classes=np.arange(4))
    assert switched._net.backend.name == second
    np.testing.assert_allclose(switched.loss_curve_, reference.loss_curve_, rtol=1e-12)
    for p, q in zip(switched.coefs_ + switched.intercepts_, reference.coefs_ + reference.intercepts_):
        same(p, q, what=f"partial_fit on {first} then {second} vs on cpu")


@pytest.mark.parametrize("first,second", [("cpu", "cuda"), ("cuda", "cpu")])
def test_warm_start_with_early_stopping_after_the_device_changes(fake_cupy, first, second):
    """The best parameters kept by early stopping move with the device too: the second fit never
    beats the first one's best validation score, so it ends by restoring the first fit's best."""
    X, y = blobs(n=200, spread=0.5)  # well separated: validation accuracy reaches 1 in the first fit
    params = dict(hidden_layer_sizes=(16,), random_state=0, max_iter=30, batch_size=32, warm_start=True,
                  early_stopping=True, n_iter_no_change=2, learning_rate_init=0.01)
    switched, reference = MLPClassifier(device=first, **params), MLPClassifier(device="cpu", **params)
    for est in (switched, reference):
        quiet_fit(est, X, y)
    best, fitted_iterations = switched.best_validation_score_, len(switched.validation_scores_)
    assert best == 1.0
    switched.set_params(device=second)
    for est in (switched, reference):
        quiet_fit(est, X, y)
    assert max(switched.validation_scores_[fitted_iterations:]) <= best  # restored the old best
    assert switched._net.backend.name == second
    np.testing.assert_allclose(switched.loss_curve_, reference.loss_curve_, rtol=1e-12)
    for p, q in zip(switched.coefs_ + switched.intercepts_, reference.coefs_ + reference.intercepts_):
        same(p, q, what=f"warm start on {first} then {second} vs on cpu")


# ----------------------------------------------------------------------------- out of memory

def test_fit_out_of_memory_advises_a_batch_size_that_fits(fake_cupy, monkeypatch):
    """A step that does not fit raises DeviceMemoryError naming the failed allocation; free memory
    is measured after the failed step's arrays are gone, and the batch size it suggests fits."""
    cp = fake_cupy
    cp.memory.capacity = 4 * 2**20
    X, y = blobs(n=4096, d=20, classes=10)
    seen = []  # the live device buffers each time free memory is asked for

    def mem_get_info(real=cp.cuda.runtime.memGetInfo):
        seen.append([shape for shape, _, _ in cp.memory.live.values()])
        return real()

    monkeypatch.setattr(cp.cuda.runtime, "memGetInfo", mem_get_info)
    net = MLP([20, 200, 10], "relu", "cuda", "float64", seed=0)
    with pytest.raises(DeviceMemoryError) as caught:
        fit(net, X, y, epochs=1, batch_size=1024, seed=0)
    failure = cp.memory.failures[-1]
    message = str(caught.value)
    assert f"asked for {failure._size:,} bytes" in message, message
    assert "out of cuda memory in epoch 1 (step 1) at batch size 1024" in message
    assert not any(shape and shape[0] == 1024 for shape in seen[-1]), f"step arrays alive when measured: {seen[-1]}"
    assert cp.get_default_memory_pool().free_bytes() == 0  # released after they died, not before
    suggested = int(re.search(r"batch size (\d+) should fit", message).group(1))
    assert 1 < suggested < 1024
    history = fit(MLP([20, 200, 10], "relu", "cuda", "float64", seed=0), X, y, epochs=1, batch_size=suggested, seed=0)
    assert history.epochs == 1


def test_a_streamed_fit_out_of_pinned_host_memory_says_so_and_a_smaller_batch_trains(fake_cupy):
    """CuPy's pinned pool lets cudaHostAlloc's failure out as a CUDARuntimeError, not an
    OutOfMemoryError: it was raised as it is, with no batch size to try."""
    X, y = blobs(n=512, d=20, classes=10)
    fake_cupy.streams.pinned_capacity = 2 * 128 * 20 * 4 + 4096  # two 128-row float32 buffers and their labels
    with pytest.raises(DeviceMemoryError, match="out of pinned \\(page-locked\\) host memory in epoch 1 \\(step 1\\) at "
                       "batch size 256, for the streamed batches' buffers; batch size 128 needs half of it"):
        fit(MLP([20, 16, 10], "relu", "cuda", "float32", seed=0), X, y, epochs=1, batch_size=256, stream=True, seed=0)
    fake_cupy.pinned.clear()
    history = fit(MLP([20, 16, 10], "relu", "cuda", "float32", seed=0), X, y, epochs=1, batch_size=128, stream=True,
                  seed=0)
    assert history.epochs == 1 and sorted(fake_cupy.pinned) == [128 * 8] * 2 + [128 * 20 * 4] * 2  # y and X, twice


def test_predict_splits_a_batch_that_runs_out_of_memory(fake_cupy):
    cp = fake_cupy
    X, _ = blobs(n=4096, d=20, classes=10)
    cpu, gpu = (MLP([20, 200, 10], "relu", device, "float64", seed=0) for device in ("cpu", "cuda"))
    cp.memory.capacity = 5 * 2**20  # a 4096-row batch needs 6.5 MB for its hidden layer alone
    P = gpu.predict_proba(X)
    # one failure, the 4096-row hidden layer: at 2048 rows only one batch's activations are held
    assert [f._size for f in cp.memory.failures] == [4096 * 200 * 8], "the retry path did not run, or ran twice"
    same(P, cpu.predict_proba(X), what="predict_proba after splitting batches")


def test_predict_retries_a_batch_whose_output_layer_runs_out_of_memory(fake_cupy):
    """On a 4 MiB card the softmax of a batch fails too; it is retried at half the size."""
    cp = fake_cupy
    X, _ = blobs(n=4096, d=20, classes=10)
    cpu, gpu = (MLP([20, 200, 10], "relu", device, "float64", seed=0) for device in ("cpu", "cuda"))
    cp.memory.capacity = 4 * 2**20
    same(gpu.predict_proba(X), cpu.predict_proba(X), what="predict_proba on a 4 MiB card")
    assert cp.memory.failures


# ----------------------------------------------------------------------------- launches per step

def step_activity(fake_cupy, sizes, optimizer, alpha=0.0, clip_norm=None, batch=32, activation="relu",
                  cuda_graph=False):
    """(launches, syncs) of one training step of gpubp.fit on "cuda": an epoch of 4 steps minus
    an epoch of 2, each measured on a fresh network, so what an epoch does once cancels out."""
    rng = np.random.default_rng(0)
    counts = []
    for steps in (2, 4):
        X = rng.normal(size=(steps * batch, sizes[0]))
        y = rng.integers(0, sizes[-1], steps * batch)
        net = MLP(sizes, activation, "cuda", "float32", seed=0, alpha=alpha)
        before = (fake_cupy.activity.launches, fake_cupy.activity.syncs)
        fit(net, X, y, epochs=1, batch_size=batch, optimizer=optimizer, clip_norm=clip_norm, seed=0,
            cuda_graph=cuda_graph)
        counts.append((fake_cupy.activity.launches - before[0], fake_cupy.activity.syncs - before[1]))
    return tuple((b - a) // 2 for a, b in zip(*counts))


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
@pytest.mark.parametrize("sizes", [[20, 16, 16, 4], [20, 16, 4], [20, 4]], ids=lambda s: f"L{len(s) - 1}")
def test_a_step_takes_at_most_6L_plus_3_launches_and_no_sync(fake_cupy, sizes, optimizer):
    """Issue 12's budget for L layers: 2L - 1 products and L - 1 bias+activation kernels forward,
    the output layer's bias and BP1, 2L - 1 products, L sums (BP3) and L - 1 BP2 kernels
    backward, one update of the flat parameter buffer, the batch gather and the loss sum."""
    L = len(sizes) - 1
    launches, syncs = step_activity(fake_cupy, sizes, optimizer)
    assert syncs == 0
    assert launches <= 6 * L + 3, f"{launches} launches per step for L={L}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_clipped_fit_follows_the_cpu_and_its_norm_does_not_overflow(fake_cupy, dtype):
    """tests/test_gpu.py's clipped fit on the stand-in: clipping's norm through cupy.cublas.nrm2
    (1-D, a 0-d device result), every step clipped, as on the CPU; a float32 gradient whose
    squares overflow is scaled to max_norm, not to zero."""
    from gpubp.optim import clip_by_global_norm
    X, y = blobs(n=200)
    runs = {}
    for device in ("cpu", "cuda"):
        net = MLP([12, 16, 4], "relu", device, dtype, seed=3, alpha=0.1)
        runs[device] = net, fit(net, X, y, epochs=3, batch_size=32, seed=4, clip_norm=0.05)
    (cpu, h_c), (gpu, h_g) = runs["cpu"], runs["cuda"]
    same(np.array(h_g.train_loss), np.array(h_c.train_loss), dtype, "clipped train loss")
    same(gpu.flat_params, cpu.flat_params, dtype, "parameters after a clipped fit")
    g = fake_cupy.full(1000, 1e19, dtype=np.float32)
    norm = clip_by_global_norm(fake_cupy, [g], 0.5)
    assert on_device(norm) and float(norm) == pytest.approx(1e19 * np.sqrt(1000), rel=1e-6)
    assert float(np.linalg.norm(to_numpy(g).astype(np.float64))) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "sgd"])
def test_the_l2_term_and_clipping_cost_a_fixed_number_of_launches(fake_cupy, optimizer):
    """Over the flat buffers the L2 term and clipping cost the same launches whatever L. The L2
    term's gradient is folded into the update kernel, so the term costs its loss alone: 3 (W . W,
    its scaling and the loss's +). Clipping needs the whole gradient first, so with it the L2
    gradient is added before (c * W and the +=: 2 more), and clipping costs 5 (the norm's nrm2,
    the factor's + eps, division and minimum, the gradient's *=). Plain SGD has
    no update kernel: it adds the L2 gradient first (5) either way."""
    for sizes in ([20, 16, 4], [20, 16, 16, 16, 4]):
        plain, _ = step_activity(fake_cupy, sizes, optimizer)
        with_l2, syncs = step_activity(fake_cupy, sizes, optimizer, alpha=1e-3)
        clipped, clipped_syncs = step_activity(fake_cupy, sizes, optimizer, alpha=1e-3, clip_norm=1.0)
        assert syncs == clipped_syncs == 0
        folded = 3 if optimizer != "sgd" else 3 + 2
        assert (with_l2 - plain, clipped - plain) == (folded, 3 + 2 + 5), sizes


def test_bfloat16_estimators_on_cuda_follow_the_cpu(fake_cupy):
    """MLPClassifier and MLPRegressor(dtype="bfloat16") on the stand-in against the CPU: the same
    rounding points (the training set kept in bfloat16 on the device, dW and BP3 of bfloat16 deltas
    through cublasGemmEx into float32), so the runs differ only where float32 sums in another
    order (the softmax kernel, the products) move a value across a bfloat16 rounding boundary: on
    these runs none did, and the loss curves agree to float32 noise (1.7e-8 measured)."""
    X, y = blobs(n=200)
    params = dict(hidden_layer_sizes=(16, 8), max_iter=6, random_state=0, batch_size=32, dtype="bfloat16")
    cpu, gpu = (quiet_fit(MLPClassifier(device=device, **params), X, y) for device in ("cpu", "cuda"))
    assert gpu._net.compute_dtype == np.dtype("bfloat16") and gpu.coefs_[0].dtype == np.float32
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-6)
    np.testing.assert_array_equal(gpu.predict(X), cpu.predict(X))
    Y = np.stack([X[:, 0] - 2 * X[:, 1], np.sin(X[:, 2])], axis=1)
    params = dict(hidden_layer_sizes=(16,), max_iter=5, random_state=0, early_stopping=True, dtype="bfloat16")
    cpu, gpu = (quiet_fit(MLPRegressor(device=device, **params), X, Y) for device in ("cpu", "cuda"))
    np.testing.assert_allclose(gpu.loss_curve_, cpu.loss_curve_, rtol=1e-6)
    np.testing.assert_allclose(gpu.validation_scores_, cpu.validation_scores_, rtol=1e-6)


@pytest.mark.parametrize("output", ["identity", "logistic"])
def test_a_fit_with_another_output_validates_on_cuda_as_on_the_cpu(fake_cupy, output):
    """gpubp.fit with an identity or logistic output and held-out rows: the validation loss (no
    accuracy) is evaluated on the device as on the CPU."""
    X, y = blobs(n=160, d=6)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(np.float64) if output == "logistic" else X[:, :2] * 0.5
    histories = []
    for device in ("cpu", "cuda"):
        net = MLP([6, 8, 2], "tanh", device, "float64", seed=0, output=output)
        histories.append(gpubp.fit(net, X, Y, epochs=3, batch_size=32, seed=0, validation_fraction=0.25))
    cpu, gpu = histories
    assert gpu.val_accuracy == cpu.val_accuracy and all(a is None for a in gpu.val_accuracy)
    np.testing.assert_allclose(gpu.val_loss, cpu.val_loss, rtol=1e-12)
    np.testing.assert_allclose(gpu.train_loss, cpu.train_loss, rtol=1e-12)
