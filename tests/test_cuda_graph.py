"""gpubp.fit(cuda_graph=True): each batch shape's forward and backward pass captured once as a CUDA
graph and replayed (gpubp.cuda_graph, gpubp.cublas_direct).

On the CPU the cuda path runs on the CuPy stand-in, whose capture is as strict as CUDA's and
CuPy's (tests/fake_cupy_arrays.py: work captured is recorded, not run; cuBLAS through CuPy, host
syncs, pageable copies and new allocations are refused while capturing) and whose FakeCublas
plays libcublas over the stand-in's memory. On a card (marker gpu) the graphed fit must equal
the eager one bit for bit: the same kernels and cuBLAS algorithms run in the same order.
"""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from gpubp import MLP, fit, to_numpy
from gpubp import cublas_direct
from gpubp.cli import main
from gpubp.cuda_graph import GraphedGradient, check_graphable

from .test_cuda_emulated import blobs, step_activity

CASES = {
    "adam, weights, L2, uneven last batch": (dict(optimizer="adam", alpha=1e-3), True, 100),
    "nesterov, clipping, validation": (dict(optimizer="nesterov", clip_norm=0.5, validation_fraction=0.2), False, 96),
    "momentum, cosine schedule, streamed": (dict(optimizer="momentum", schedule="cosine", stream=True), False, 96),
}


@pytest.fixture
def graph_cupy(fake_cupy, monkeypatch):
    """The CuPy stand-in with FakeCublas as the libcublas that gpubp.cublas_direct calls."""
    from .fake_cublas import FakeCublas

    lib = FakeCublas(fake_cupy)
    monkeypatch.setattr(cublas_direct, "load_cublas", lambda: lib)
    return fake_cupy


def train(cuda_graph: bool, settings: dict, weighted: bool, n: int, dtype="float64", device="cuda"):
    """A 12-16-8-4 network trained 3 epochs on blobs, batch 32: (history, parameters on the host)."""
    X, y = blobs(n=n, d=12)
    settings = dict(settings)
    alpha = settings.pop("alpha", 0.0)
    w = np.linspace(0.5, 2.0, n) if weighted else None
    net = MLP([12, 16, 8, 4], "tanh", device, dtype, seed=0, alpha=alpha)
    history = fit(net, X, y, sample_weight=w, epochs=3, batch_size=32, seed=1, cuda_graph=cuda_graph, **settings)
    return history, to_numpy(net.flat_params)


@pytest.mark.parametrize("name", CASES)
def test_a_graphed_fit_ends_as_the_eager_fit(graph_cupy, name):
    """Every step's loss and the final parameters: float64, the same arithmetic except the
    products' summation order (FakeCublas reads the operands through their pointers)."""
    settings, weighted, n = CASES[name]
    eager_history, eager = train(False, settings, weighted, n)
    graphed_history, graphed = train(True, settings, weighted, n)
    np.testing.assert_allclose(graphed, eager, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(graphed_history.train_loss, eager_history.train_loss, rtol=1e-12)
    if settings.get("validation_fraction"):
        np.testing.assert_allclose(graphed_history.val_loss, eager_history.val_loss, rtol=1e-12)


def test_a_graphed_tf32_fit_ends_as_the_eager_tf32_fit(graph_cupy):
    """TF32 on the stand-in: the eager products by CuPy's compute type, the graphed ones by
    FakeCublas's sgemm under the handle's math mode (tests/fake_cupy_core.py), both
    matmul_as_tf32 of the same operands, so the fits agree bit for bit (float32, as measured);
    a graph whose sgemm ignored the math mode would end as the IEEE graphed fit does, 2e-5 away."""
    X, y = blobs(n=96, d=12)

    def fit_params(tf32, cuda_graph):
        net = MLP([12, 16, 8, 4], "tanh", "cuda", "float32", seed=0, alpha=1e-3, tf32=tf32)
        history = fit(net, X, y, epochs=3, batch_size=32, seed=1, optimizer="adam", cuda_graph=cuda_graph)
        return history.train_loss, to_numpy(net.flat_params)

    (loss_e, eager), (loss_g, graphed) = fit_params(True, False), fit_params(True, True)
    np.testing.assert_array_equal(graphed, eager)
    assert loss_g == loss_e
    _, ieee = fit_params(False, True)
    assert np.abs(ieee - eager).max() > 5e-6, np.abs(ieee - eager).max()


def test_the_cublas_workspace_outlives_the_graphs(graph_cupy):
    """The workspace the captured gemms write into at each replay is kept for the process: after
    a graphed fit and its graphs are gone it is still a live device buffer (freed, the pool would
    hand its memory to other arrays, for the next graph's gemms to overwrite)."""
    import gc

    train(True, CASES["nesterov, clipping, validation"][0], False, 96)
    gc.collect()
    lib = cublas_direct.load_cublas()
    ptr, nbytes = lib.workspace
    from .fake_cupy_arrays import device_matrix

    assert device_matrix(ptr, nbytes, 1, nbytes, np.uint8) is not None, "the workspace was freed"


def test_the_estimators_take_cuda_graph(graph_cupy):
    """MLPClassifier and MLPRegressor(cuda_graph=True) fit as without it (float64, sgd and adam)."""
    from gpubp import MLPClassifier, MLPRegressor

    X, y = blobs(n=120, d=12)
    for Estimator, target, solver in ((MLPClassifier, y, "adam"), (MLPRegressor, X[:, :2].sum(1), "sgd")):
        fits = []
        for cuda_graph in (False, True):
            est = Estimator(hidden_layer_sizes=(16,), solver=solver, max_iter=4, batch_size=32, random_state=0, device="cuda",
                            cuda_graph=cuda_graph)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # max_iter reached
                fits.append(est.fit(X, target))
        np.testing.assert_allclose(fits[1].loss_curve_, fits[0].loss_curve_, rtol=1e-12)
        for a, b in zip(fits[1].coefs_, fits[0].coefs_):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    with pytest.raises(ValueError, match="needs the cuda device"):
        MLPClassifier((4,), max_iter=1, device="cpu", cuda_graph=True).fit(X, y)
    with pytest.raises(ValueError, match="solver='lbfgs' takes no such steps"):
        MLPClassifier((4,), solver="lbfgs", max_iter=1, device="cuda", cuda_graph=True).fit(X, y)


@pytest.mark.filterwarnings("ignore:Got `batch_size` less than 1")  # the chunks of fewer than 32 rows
def test_partial_fit_replays_the_graphs_of_its_previous_call(graph_cupy, monkeypatch):
    """A partial_fit's graphs go on to its next call on the same network: one capture for calls of
    one batch shape; at most MAX_GRAPHS kept over ever other sizes; none pickled (the stand-in
    refuses to pickle a device array), captured anew after loading; results as eager throughout."""
    import pickle

    from gpubp import MLPClassifier

    captures = []
    capture = GraphedGradient._capture
    monkeypatch.setattr(GraphedGradient, "_capture", lambda self, *a: captures.append(a[0].shape) or capture(self, *a))
    X, y = blobs(n=400, d=12)
    made = lambda cuda_graph: MLPClassifier((16,), solver="adam", batch_size=32, random_state=0,  # noqa: E731
                                            device="cuda", cuda_graph=cuda_graph)
    graphed, eager = made(True), made(False)
    chunks = [slice(0, 64), slice(64, 128), slice(128, 192), slice(192, 212)] + [
        slice(212 + 30 * i, 212 + 30 * i + 3 + i) for i in range(6)]  # 32-row batches, then 20, then 3..8 rows
    for i, rows in enumerate(chunks):
        for est in (graphed, eager):
            est.partial_fit(X[rows], y[rows], classes=np.arange(4))
        if i == 2:
            assert captures == [(32, 12)]  # three calls, six steps, one capture
        np.testing.assert_allclose(graphed.loss_curve_, eager.loss_curve_, rtol=1e-12)
    assert captures[:2] == [(32, 12), (20, 12)] and len(captures) == 8
    assert len(graphed._graphs.graphs) == GraphedGradient.MAX_GRAPHS
    for a, b in zip(graphed.coefs_, eager.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
    loaded = pickle.loads(pickle.dumps(graphed))
    loaded.partial_fit(X[:64], y[:64])
    assert len(captures) == 9 and loaded._graphs.net is loaded._net


@pytest.mark.parametrize("weighted_first", [False, True])
def test_partial_fits_switching_weights_on_streamed_rows_replay_as_eager(graph_cupy, weighted_first):
    """Sparse X streams from the host; a partial_fit with sample weights after one without (or the
    reverse), on batches of one row count: the weights get a graph of their own and no call reads
    a buffer of the other's (a missing weights buffer, or the last call's stale weights)."""
    from scipy import sparse

    from gpubp import MLPClassifier

    X, y = blobs(n=64, d=12)
    X[np.abs(X) < 1.0] = 0.0
    Xs, w = sparse.csr_matrix(X), np.linspace(0.2, 3.0, 64)
    made = lambda cuda_graph: MLPClassifier((16,), solver="sgd", batch_size=32, random_state=0,  # noqa: E731
                                            device="cuda", cuda_graph=cuda_graph)
    graphed, eager = made(True), made(False)
    weights = [w, None, w] if weighted_first else [None, w, None]
    for est in (graphed, eager):
        for sample_weight in weights:
            est.partial_fit(Xs, y, classes=np.arange(4), sample_weight=sample_weight)
    np.testing.assert_allclose(graphed.loss_curve_, eager.loss_curve_, rtol=1e-12)
    for a, b in zip(graphed.coefs_, eager.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_a_graphed_step_is_a_few_launches(graph_cupy):
    """Eager, a step of a 3-layer network is 18-21 launches; graphed, five: the batch gather (X, y)
    straight into the graph's buffers, the graph, the loss's copy and the update."""
    eager, _ = step_activity(graph_cupy, [20, 16, 16, 4], "adam")
    graphed, syncs = step_activity(graph_cupy, [20, 16, 16, 4], "adam", cuda_graph=True)
    assert syncs == 0
    assert eager >= 18 and graphed == 5, (eager, graphed)


def test_the_graphed_gradient_runs_inside_its_block_only(graph_cupy):
    net = MLP([4, 3, 2], "relu", "cuda", "float32", seed=0)
    graphed = GraphedGradient(net)
    X, y = graph_cupy.ones((5, 4), np.float32), graph_cupy.zeros(5, np.int64)
    with pytest.raises(RuntimeError, match="inside its running"):
        graphed(X, y)
    with graphed.running():
        loss, g = graphed(X, y)
    expected_loss, expected_g = net.flat_loss_and_grad(X, y)
    np.testing.assert_allclose(to_numpy(g), to_numpy(expected_g), rtol=1e-6)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)


def test_what_cannot_be_graphed_is_refused_with_what_to_do(graph_cupy):
    X, y = blobs(n=40, d=12)
    with pytest.raises(ValueError, match="needs the cuda device, the network is on cpu"):
        fit(MLP([12, 4], "relu", "cpu", "float32", seed=0), X, y, epochs=1, cuda_graph=True)
    with pytest.raises(ValueError, match="not bfloat16: leave cuda_graph off"):
        fit(MLP([12, 4], "relu", "cuda", "bfloat16", seed=0), X, y, epochs=1, cuda_graph=True)
    net = SimpleNamespace(backend=SimpleNamespace(name="cuda"), dtype=np.dtype(np.float32),
                          compute_dtype=np.dtype(np.float32))
    with pytest.raises(ValueError, match="data-parallel runs take eager steps"):
        check_graphable(net, parallel=True)
    check_graphable(net, parallel=False)


def test_the_command_line_takes_cuda_graph_and_refuses_it_on_the_cpu(capsys):
    assert main(["train", "--cuda-graph", "--device", "cpu", "--hidden", "8", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cuda_graph=True needs the cuda device" in err[0], err


@pytest.mark.parametrize("options", [["--cuda-graph"], ["--stream"], ["--dtype", "bfloat16"]])
def test_the_command_line_trains_on_cuda(graph_cupy, capsys, tmp_path, options):
    """gpubp train --device cuda on the stand-in, graphed, streamed or in bfloat16: the digits run
    reaches the CPU run's test accuracy (to one test image), and the model saved there loads on
    the CPU."""
    from gpubp import load_model

    accuracies = []
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.npz"
        args = ["train", "--hidden", "32", "--epochs", "5", "--quiet", "--out", str(out), "--device", device]
        assert main(args + [o for o in options if device == "cuda" or o != "--cuda-graph"]) == 0, capsys.readouterr().err
        line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("test accuracy")]
        accuracies.append(float(line[-1].split()[-1]))
        assert load_model(out, backend="cpu")[0].sizes[1] == 32
    assert abs(accuracies[1] - accuracies[0]) <= 1 / 360 + 1e-9, accuracies


# ------------------------------------------------------------------ on a card (marker gpu)


def fits_on_a_card(dtype, tf32, cuda_graph, **settings):
    """(train losses, validation losses, parameters) of a 64-128-64-10 network, 3 epochs of Adam
    with L2 on the card, batch 128 (the last batch of each epoch smaller); ``settings``: more of
    fit's (sample weights: ``weighted=True``)."""
    X, y = blobs(n=2000, d=64, classes=10)
    w = np.linspace(0.5, 2.0, 2000) if settings.pop("weighted", False) else None
    net = MLP([64, 128, 64, 10], "relu", "cuda", dtype, seed=0, alpha=1e-4, tf32=tf32)
    history = fit(net, X, y, sample_weight=w, epochs=3, batch_size=128, seed=1, optimizer="adam",
                  cuda_graph=cuda_graph, validation_fraction=0.1, **settings)
    return history.train_loss, history.val_loss, to_numpy(net.flat_params)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, settings", [("float32", {}), ("float64", {}), ("float32", {"stream": True}),
                                             ("float32", {"weighted": True})],
                         ids=["float32", "float64", "streamed", "weighted"])
def test_on_a_card_the_graphed_fit_equals_the_eager_fit_bit_for_bit(dtype, settings):
    """On an H100 the direct cuBLAS products gave bitwise cupy.matmul's gradients and the replayed
    step bitwise the eager one (benchmarks/graph_probe.py): so whole fits must agree exactly, with
    the batches gathered into the graph's buffers on the card, copied in from the pinned buffers of
    a streamed run, or carrying sample weights."""
    (loss_e, val_e, p_e), (loss_g, val_g, p_g) = (fits_on_a_card(dtype, False, g, **settings) for g in (False, True))
    assert loss_g == loss_e and val_g == val_e
    np.testing.assert_array_equal(p_g, p_e)


@pytest.mark.gpu
def test_on_a_card_a_graphed_tf32_fit_follows_the_eager_one():
    """TF32: cupy.matmul asks cuBLAS for TF32 by compute type and the direct sgemm by the handle's
    math mode, which may pick other kernels; each product then differs by TF32 rounding (~3e-4),
    and three epochs of Adam carry that into the parameters (~0.1): losses within 1%, parameters
    within 1e-2. And the graph did run TF32: its parameters differ from an IEEE graphed fit's."""
    (loss_e, val_e, p_e), (loss_g, val_g, p_g) = (fits_on_a_card("float32", True, g) for g in (False, True))
    np.testing.assert_allclose(loss_g, loss_e, rtol=1e-2)
    np.testing.assert_allclose(val_g, val_e, rtol=1e-2)
    np.testing.assert_allclose(p_g, p_e, rtol=0, atol=1e-2)
    assert not np.array_equal(p_g, fits_on_a_card("float32", False, True)[2])


@pytest.mark.gpu
def test_on_a_card_a_graphed_estimator_fit_equals_the_eager_one():
    from sklearn.datasets import load_digits

    from gpubp import MLPClassifier

    X, y = load_digits(return_X_y=True)
    fits = [MLPClassifier((64,), max_iter=3, random_state=0, device="cuda", dtype="float32",
                          cuda_graph=cuda_graph).fit(X / 16, y) for cuda_graph in (False, True)]
    assert fits[1].loss_curve_ == fits[0].loss_curve_
    for a, b in zip(fits[1].coefs_ + fits[1].intercepts_, fits[0].coefs_ + fits[0].intercepts_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:Got `batch_size` less than 1")  # the calls of fewer than 64 rows
@pytest.mark.parametrize("device", [pytest.param("stand-in", marks=pytest.mark.cupy_stand_in),
                                    pytest.param("card", marks=pytest.mark.gpu)])
def test_a_graphed_regressor_equals_the_eager_one_as_its_graphs_are_evicted(request, device):
    """An identity output's BP1 (CuPy's own elementwise kernels, their temporaries taken inside the
    capture) graphed, bit for bit as eager; then partial_fit calls of more batch shapes than
    GraphedGradient.MAX_GRAPHS keeps, each evicted graph freed and the rest replayed, still so."""
    from sklearn.datasets import load_diabetes

    from gpubp import MLPRegressor

    if device == "stand-in":
        request.getfixturevalue("graph_cupy")
    X, y = load_diabetes(return_X_y=True)  # (442, 10)
    X, y = X / X.std(axis=0), y / y.std()
    fits = [MLPRegressor(hidden_layer_sizes=(32,), batch_size=64, max_iter=3, random_state=0, device="cuda", dtype="float32",
                         cuda_graph=cuda_graph) for cuda_graph in (False, True)]
    for est in fits:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter reached
            est.fit(X, y)
    assert fits[1].loss_curve_ == fits[0].loss_curve_
    start = 0
    for rows in range(3, 3 + GraphedGradient.MAX_GRAPHS + 2):  # one shape a call, every shape new
        for est in fits:
            est.partial_fit(X[start:start + rows], y[start:start + rows])
        start += rows
    assert len(fits[1]._graphs.graphs) == GraphedGradient.MAX_GRAPHS and fits[1].loss_curve_ == fits[0].loss_curve_
    for a, b in zip(fits[1].coefs_ + fits[1].intercepts_, fits[0].coefs_ + fits[0].intercepts_):
        np.testing.assert_array_equal(a, b)


@pytest.mark.gpu
def test_on_a_card_partial_fits_replaying_their_graphs_equal_eager_ones():
    """Six partial_fit calls of 237 rows, each replaying the graphs of the one before (batches of
    100, 100 and 37: two shapes), bit for bit as eager calls."""
    from sklearn.datasets import load_digits

    from gpubp import MLPClassifier

    X, y = load_digits(return_X_y=True)
    fits = [MLPClassifier((64,), batch_size=100, random_state=0, device="cuda", dtype="float32", cuda_graph=cuda_graph)
            for cuda_graph in (False, True)]
    for start in range(0, 1200, 200):
        for est in fits:
            est.partial_fit(X[start:start + 237] / 16, y[start:start + 237], classes=np.arange(10))
    assert len(fits[1]._graphs.graphs) == 2 and fits[1].loss_curve_ == fits[0].loss_curve_
    for a, b in zip(fits[1].coefs_ + fits[1].intercepts_, fits[0].coefs_ + fits[0].intercepts_):
        np.testing.assert_array_equal(a, b)


def test_info_says_whether_graphs_can_run_and_why_not(fake_cupy, monkeypatch):
    """On the stand-in (a usable "card") graphs need the libcublas CuPy loaded: not found in
    this process, gpubp info says so; found, it says yes."""
    from gpubp.cuda_graph import describe

    assert describe().startswith("cuda graphs (--cuda-graph): no (cuda_graph needs the libcublas that CuPy loaded")
    monkeypatch.setattr(cublas_direct, "load_cublas", lambda: object())
    assert describe() == "cuda graphs (--cuda-graph): yes, for float32 and float64 networks in one process"


def test_the_direct_gemm_refuses_bad_operands_and_reports_a_failed_status(graph_cupy, monkeypatch):
    """gpubp.cublas_direct.gemm's checks (dtypes, chaining shapes, out), and a status cuBLAS returns
    raised with the shapes, setting the workspace's too."""
    cp = graph_cupy
    a, b = cp.ones((3, 4), np.float32), cp.ones((4, 2), np.float32)
    with pytest.raises(TypeError, match="two float32 or two float64"):
        cublas_direct.gemm(a, b.astype(np.float64))
    with pytest.raises(ValueError, match="do not chain"):
        cublas_direct.gemm(a, a)
    with pytest.raises(ValueError, match="out is float32 \\(3, 3\\)"):
        cublas_direct.gemm(a, b, out=cp.empty((3, 3), np.float32))
    np.testing.assert_array_equal(to_numpy(cublas_direct.gemm(a, b)), np.full((3, 2), 4.0))
    lib = cublas_direct.load_cublas()
    monkeypatch.setattr(lib, "cublasSgemm_v2", lambda *args: 13)  # CUBLAS_STATUS_EXECUTION_FAILED
    with pytest.raises(RuntimeError, match=r"cuBLAS gemm failed with status 13 \(\(3, 4\) @ \(4, 2\)\)"):
        cublas_direct.gemm(a, b)
    monkeypatch.setattr(lib, "cublasSetWorkspace_v2", lambda *args: 7)
    with pytest.raises(RuntimeError, match=r"cuBLAS cublasSetWorkspace failed with status 7 \(\(3, 4\) @ \(4, 2\)\)"):
        cublas_direct.gemm(a, b)


def test_a_capture_that_fails_leaves_capture_mode_and_the_next_steps_run(graph_cupy, monkeypatch):
    """An error inside the captured pass reaches the caller as itself, the stream is no longer
    capturing, and the graph is tried again at the next step (here: works)."""
    net = MLP([4, 3, 2], "relu", "cuda", "float32", seed=0)
    graphed = GraphedGradient(net)
    X, y = graph_cupy.ones((5, 4), np.float32), graph_cupy.zeros(5, np.int64)
    real, calls = MLP.flat_loss_and_grad, []

    def failing_second_call(self, *args, **kwargs):  # the warm-up passes, the captured pass fails
        calls.append(1)
        if len(calls) == 2:
            raise ArithmeticError("planted failure inside the capture")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MLP, "flat_loss_and_grad", failing_second_call)
    with graphed.running():
        with pytest.raises(ArithmeticError, match="planted failure"):
            graphed(X, y)
        assert not graphed.stream.is_capturing() and not graphed.graphs
        loss, g = graphed(X, y)  # captured now
        _, expected_g = real(net, X, y)
    np.testing.assert_allclose(to_numpy(g), to_numpy(expected_g), rtol=1e-6)
    assert len(graphed.graphs) == 1
