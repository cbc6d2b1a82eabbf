"""The MLP: initialisation, shapes, dtypes, stability, batched prediction and bad input."""

import inspect
import types

import numpy as np
import pytest

from gpubp import MLP, get_backend


def test_shapes_and_initialisation_bounds():
    net = MLP([30, 20, 10, 3], "relu", backend="cpu", seed=0)
    assert [W.shape for W in net.weights] == [(30, 20), (20, 10), (10, 3)]
    assert [b.shape for b in net.biases] == [(20,), (10,), (3,)]
    assert net.n_params == 30 * 20 + 20 + 20 * 10 + 10 + 10 * 3 + 3
    # He uniform into ReLU layers, Glorot uniform into the softmax layer
    bounds = [np.sqrt(6 / 30), np.sqrt(6 / 20), np.sqrt(6 / 13)]
    for W, r in zip(net.weights, bounds):
        assert np.abs(W).max() <= r
        assert np.abs(W).max() > 0.8 * r  # drawn over the whole range, not a narrower one
    assert all(not b.any() for b in net.biases)
    tanh = MLP([30, 20, 3], "tanh", backend="cpu", seed=0)
    assert np.abs(tanh.weights[0]).max() <= np.sqrt(6 / 50)


def test_same_seed_same_network_in_both_dtypes():
    a = MLP([8, 6, 3], seed=7, backend="cpu", dtype="float64")
    b = MLP([8, 6, 3], seed=7, backend="cpu", dtype="float32")
    c = MLP([8, 6, 3], seed=8, backend="cpu", dtype="float64")
    for Wa, Wb in zip(a.weights, b.weights):
        assert Wb.dtype == np.float32
        np.testing.assert_array_equal(Wa.astype(np.float32), Wb)
    assert not np.array_equal(a.weights[0], c.weights[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_is_kept_end_to_end(dtype, rng):
    net = MLP([5, 4, 3], "sigmoid", backend="cpu", dtype=dtype, seed=0, alpha=0.1)
    loss, dW, db = net.loss_and_grads(rng.normal(size=(6, 5)), rng.integers(0, 3, 6))
    assert np.asarray(loss).dtype == dtype
    assert all(g.dtype == dtype for g in dW + db)
    assert net.predict_proba(rng.normal(size=(2, 5))).dtype == dtype


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_extreme_logits_give_finite_loss_and_exact_gradients(dtype):
    net = MLP([2, 2], backend="cpu", dtype=dtype, seed=0)
    net.set_params([np.array([[1000.0, -1000.0], [0.0, 0.0]]), np.zeros(2)])
    X = np.array([[1.0, 0.0], [-1.0, 0.0]])  # logits [1000, -1000] and [-1000, 1000]
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss, dW, db = net.loss_and_grads(X, np.array([0, 0]))
    # row 0 is right with certainty (loss 0), row 1 wrong by 2000: mean loss 1000
    assert float(loss) == pytest.approx(1000.0, rel=1e-6)
    # delta = (p - Y) / 2 = [[0, 0], [-1, 1]] / 2
    # dW = X.T @ delta = [[1*0 + (-1)*(-0.5), 1*0 + (-1)*0.5], [0, 0]] = [[0.5, -0.5], [0, 0]]
    # db = delta.sum(0) = [-0.5, 0.5]
    np.testing.assert_array_equal(dW[0], np.array([[0.5, -0.5], [0, 0]], dtype=dtype))
    np.testing.assert_array_equal(db[0], np.array([-0.5, 0.5], dtype=dtype))


def test_batched_prediction_matches_whole(rng):
    net = MLP([6, 9, 4], "tanh", backend="cpu", dtype="float64", seed=1)
    X = rng.normal(size=(53, 6))
    whole = net.predict_proba(X, batch_size=1000)
    np.testing.assert_allclose(net.predict_proba(X, batch_size=7), whole, rtol=1e-14)
    np.testing.assert_allclose(whole.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(net.predict(X, batch_size=5), whole.argmax(axis=1))
    y = whole.argmax(axis=1)
    assert net.score(X, y) == 1.0
    loss, acc = net.evaluate(X, y, batch_size=10)
    assert acc == 1.0
    assert loss == pytest.approx(-np.mean(np.log(whole.max(axis=1))), rel=1e-12)


def test_params_round_trip(rng):
    net = MLP([3, 4, 2], backend="cpu", seed=0)
    saved = net.get_params()
    for p in net.params:
        p += 1
    net.set_params(saved)
    for p, s in zip(net.params, saved):
        np.testing.assert_array_equal(p, s)
    with pytest.raises(ValueError, match="shape"):
        net.set_params([np.zeros((4, 3))] + saved[1:])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sizes=[4]), "at least an input and an output"),
        (dict(sizes=[4, 0, 3]), r"sizes\[1\]"),
        (dict(sizes=[4, 3, 1]), "at least 2 classes"),
        (dict(sizes=[4, 2.5, 3]), r"sizes\[1\]"),
        (dict(sizes=[4, 3], activation="softplus"), "unknown activation"),
        (dict(sizes=[4, 3], dtype="float16"), "dtype must be a float dtype among"),
        (dict(sizes=[4, 3], alpha=-1.0), r"alpha must be a float in the range \[0.0, inf\), got -1.0"),
        (dict(sizes=[4, 3], alpha="0.1"), r"alpha must be .*, got '0.1'"),  # (these raised TypeError from np.isfinite)
        (dict(sizes=[4, 3], alpha=None), r"alpha must be .*, got None"),
        (dict(sizes=[4, 3], alpha=np.array([0.1])), r"alpha must be .*, got array"),
        (dict(sizes=[4, 3], backend="tpu"), "unknown device"),
        (dict(sizes=[4, 3], seed=-1), r"seed must be an int in the range \[0, inf\) or None, got -1"),  # (NumPy's, deep)
        (dict(sizes=[4, 3], seed=1.5), r"seed must be .*, got 1.5"),
        (dict(sizes=[4, 3], seed=True), r"seed must be .*, got True"),
    ],
)
def test_bad_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MLP(**{"backend": "cpu", **kwargs})


@pytest.mark.parametrize(
    "X, y, message",
    [
        (np.zeros((3, 5)), np.zeros(3, int), "5 features per row but the network expects 4"),
        (np.zeros(4), np.zeros(1, int), "must be 2-D"),
        (np.zeros((0, 4)), np.zeros(0, int), "empty"),
        (np.array([[0, 0, np.nan, 0]]), np.zeros(1, int), "NaN or infinity .*row 0, column 2"),
        (np.zeros((2, 4)), np.array([0, 3]), "labels from 0 to 3 but the network has 3 classes"),
        (np.zeros((2, 4)), np.array([0, -1]), "labels from -1"),
        (np.zeros((2, 4)), np.array([0.5, 1.0]), "integer class indices"),
        (np.zeros((2, 4)), np.array(["a", "b"]), "encode labels first"),
        (np.zeros((2, 4)), np.zeros(3, int), "X has 2 rows but y has 3 labels"),
        (np.zeros((2, 4)), np.zeros((2, 2), int), "must be 1-D"),
        ([[0, 0], [0, 0, 0]], np.zeros(2, int), "not a numeric array|must hold numbers"),
        (np.array([["a", "b", "c", "d"]]), np.zeros(1, int), "must hold numbers"),
    ],
)
def test_bad_input_names_the_problem(X, y, message):
    net = MLP([4, 3], backend="cpu", seed=0)
    with pytest.raises(ValueError, match=message):
        net.loss_and_grads(X, y)


def test_bad_batch_size():
    net = MLP([4, 3], backend="cpu", seed=0)
    with pytest.raises(ValueError, match=r"batch_size must be an int in the range \[1, inf\), got 0"):
        net.predict_proba(np.zeros((2, 4)), batch_size=0)


def test_non_softmax_outputs_losses_agree_with_scikit_learn(rng):
    from sklearn.neural_network._base import binary_log_loss, poisson_loss, squared_loss

    X = rng.normal(size=(20, 4))
    targets = {"logistic": rng.integers(0, 2, (20, 1)).astype(float),
               "identity": rng.normal(size=(20, 1)), "exp": rng.poisson(3.0, (20, 1)).astype(float)}
    reference = {"logistic": binary_log_loss, "identity": squared_loss, "exp": poisson_loss}
    for output, Y in targets.items():
        net = MLP([4, 6, 1], "relu", backend="cpu", dtype="float64", seed=0, output=output)
        A = net.predict_output(X)
        loss, _, _ = net.loss_and_grads(X, Y)
        assert float(loss) == pytest.approx(reference[output](Y, A), rel=1e-10), output
    with pytest.raises(ValueError, match="predict_proba needs a softmax or logistic output"):
        MLP([4, 1], backend="cpu", output="identity").predict_proba(X)
    with pytest.raises(ValueError, match="predict needs a softmax output"):
        MLP([4, 1], backend="cpu", output="logistic").predict(X)


@pytest.mark.parametrize(
    "output, Y, message",
    [
        ("logistic", np.full((3, 2), 2.0), r"must lie in \[0, 1\]"),
        ("exp", -np.ones((3, 2)), "must be >= 0"),
        ("identity", np.ones((3, 3)), r"must have shape \(3, 2\)"),
        ("identity", np.array([[np.nan, 0]] * 3), "NaN or infinity"),
    ],
)
def test_bad_targets_for_other_outputs(output, Y, message):
    net = MLP([4, 2], backend="cpu", output=output)
    with pytest.raises(ValueError, match=message):
        net.loss_and_grads(np.zeros((3, 4)), Y)


def test_evaluate_without_checks_gives_the_checked_result(rng):
    net = MLP([6, 9, 4], "relu", backend="cpu", dtype="float64", seed=2)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 4, 40)
    assert net.evaluate(X, y, batch_size=16, check=False) == net.evaluate(X, y, batch_size=16)
    with pytest.raises(ValueError, match="labels from 1 to 4 but the network has 4 classes"):
        net.evaluate(X, np.where(y == 0, 4, y))  # the labels are checked by default
    with pytest.raises(ValueError, match="batch_size"):
        net.evaluate(X, y, batch_size=0)
    with pytest.raises(ValueError, match=r"y must have shape \(40, 2\)"):  # targets for a non-softmax output
        MLP([6, 2], backend="cpu", output="identity").evaluate(X, y)


def _recording_backend(calls):
    """The CPU backend with every operation of its kernel set recorded in ``calls`` by name."""
    from gpubp.backend import Backend
    from gpubp.kernel_set import OPERATIONS

    cpu = get_backend("cpu")

    def recorded(name):
        def run(*args, **kwargs):
            calls.append(name)
            return getattr(cpu.kernels, name)(*args, **kwargs)
        run.__signature__ = inspect.signature(getattr(cpu.kernels, name))
        return run

    kernels = types.SimpleNamespace(**{name: recorded(name) for name in OPERATIONS})
    return Backend("cpu", np, "cpu, recorded", kernels)


@pytest.mark.parametrize("output", ["softmax", "logistic", "identity", "exp"])
def test_the_step_and_the_predictions_run_through_the_backends_kernel_set(rng, output):
    calls = []
    net = MLP([5, 7, 3], "tanh", backend=_recording_backend(calls), dtype="float64", seed=0, output=output)
    ref = MLP([5, 7, 3], "tanh", backend="cpu", dtype="float64", seed=0, output=output)
    X = rng.normal(size=(12, 5))
    y = rng.integers(0, 3, 12) if output == "softmax" else rng.uniform(0, 1, (12, 3))
    (loss, dW, db), (ref_loss, ref_dW, ref_db) = net.loss_and_grads(X, y), ref.loss_and_grads(X, y)
    for got, want in zip([loss, *dW, *db], [ref_loss, *ref_dW, *ref_db]):
        np.testing.assert_array_equal(got, want)  # bitwise: the same twins, called through the set
    bp1 = "softmax_minus_y" if output == "softmax" else "output_minus_y"
    assert calls == ["bias_activation", bp1, "backprop_delta"]
    calls.clear()
    np.testing.assert_array_equal(net.predict_output(X, batch_size=5), ref.predict_output(X))
    assert calls == ["bias_activation", "output_activation"] * 3  # batches of 5, 5 and 2 rows
    if output == "softmax":
        calls.clear()
        assert net.evaluate(X, y, batch_size=12) == ref.evaluate(X, y)
        assert calls == ["bias_activation", "cross_entropy"]


@pytest.mark.parametrize("spoil, message", [
    (lambda ps: ps[:2] + [np.zeros(5)] + ps[3:], r"parameter 2 of shape \(4,\) cannot take an array of shape \(5,\)"),
    (lambda ps: ps[:3] + [np.full(2, np.nan)], "parameter 3 contains NaN or infinity"),
    (lambda ps: ps[:3] + [np.full(2, 1e300)], r"parameter 3\[0\] = 1e\+300 is outside float32's range"),
    (lambda ps: ps[:3] + [np.ones(2, complex)], "parameter 3 must hold real numbers, got dtype complex128"),
    (lambda ps: ps[:3], "expected 4 arrays"),
])
def test_set_params_checks_every_array_before_it_writes_any(spoil, message):
    """A bad array among good ones changed nothing (the arrays before it had been written), and
    NaN, complex or too-large values went in (inf in float32) with a warning at most."""
    net = MLP([3, 4, 2], backend="cpu", seed=0)
    fresh = [p + 1.0 for p in net.get_params()]
    before = net.get_params()
    with pytest.raises(ValueError, match=message):
        net.set_params(spoil(fresh))
    for p, b in zip(net.params, before):
        np.testing.assert_array_equal(p, b)
    net.set_params([p.tolist() for p in fresh])  # nested lists are arrays too
    for p, f in zip(net.params, fresh):
        np.testing.assert_array_equal(p, f.astype(np.float32))


def test_unflatten_takes_only_an_array_of_the_parameters_shape():
    net = MLP([3, 4, 2], backend="cpu", seed=0)
    for wrong in (np.zeros(net.n_params + 1), np.zeros((net.n_params, 1)), np.zeros(net.n_params - 1)):
        with pytest.raises(ValueError, match=rf"unflatten takes an array of shape \({net.n_params},\), got"):
            net.unflatten(wrong)
