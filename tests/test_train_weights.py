"""gpubp.fit with sample weights: the weighted step, zero weights as absent rows, a batch that
weighs nothing, checks, and resuming on other weights refused."""

import numpy as np
import pytest

from gpubp import MLP, fit, read_checkpoint, to_numpy

from .conftest import STAND_IN

SIZES = [5, 7, 3]


def problem(n=60, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    y = (X @ rng.normal(size=(SIZES[0], SIZES[-1]))).argmax(axis=1)
    w = rng.uniform(0.1, 3.0, n)
    return X, y, w


def net(alpha=0.0):
    return MLP(SIZES, "tanh", backend="cpu", dtype="float64", seed=3, alpha=alpha)


def flat(model):
    return np.concatenate([p.ravel() for p in model.params])


@pytest.mark.parametrize("alpha", [0.0, 0.01])
def test_one_full_batch_step_follows_the_weighted_gradient(alpha):
    X, y, w = problem()
    model, reference = net(alpha), net(alpha)
    _, dW, db = reference.loss_and_grads(X, y, sample_weight=w)  # loss sum(w l)/sum(w), L2 with n = sum(w)
    expected = flat(reference) - 0.1 * np.concatenate([g.ravel() for g in dW + db])
    fit(model, X, y, sample_weight=w, epochs=1, batch_size=len(y), optimizer="sgd", lr=0.1, shuffle=False)
    np.testing.assert_allclose(flat(model), expected, rtol=0, atol=1e-14)


def test_rows_of_weight_zero_train_as_if_they_were_absent():
    X, y, w = problem()
    w[::3] = 0
    keep = w > 0
    weighted, dropped = net(), net()
    h1 = fit(weighted, X, y, sample_weight=w, epochs=5, batch_size=len(y), optimizer="momentum", lr=0.1)
    fit(dropped, X[keep], y[keep], sample_weight=w[keep], epochs=5, batch_size=int(keep.sum()),
        optimizer="momentum", lr=0.1)
    np.testing.assert_allclose(flat(weighted), flat(dropped), rtol=0, atol=1e-12)
    assert h1.epochs == 5


def test_a_batch_that_weighs_nothing_takes_no_step():
    X, y, w = problem()
    w[:10] = 0  # the first batch of every epoch (no shuffling)
    skipping, without = net(), net()
    fit(skipping, X, y, sample_weight=w, epochs=3, batch_size=10, optimizer="sgd", lr=0.1, shuffle=False)
    fit(without, X[10:], y[10:], sample_weight=w[10:], epochs=3, batch_size=10, optimizer="sgd", lr=0.1,
        shuffle=False)
    np.testing.assert_allclose(flat(skipping), flat(without), rtol=0, atol=1e-12)
    assert np.isfinite(flat(skipping)).all()


def test_weights_are_held_out_with_their_rows():
    X, y, w = problem(n=90)
    a, b = net(), net()
    fit(a, X, y, sample_weight=w, epochs=2, batch_size=16, validation_fraction=0.2, seed=4)
    fit(b, X, y, sample_weight=np.ones_like(w), epochs=2, batch_size=16, validation_fraction=0.2, seed=4)
    assert not np.allclose(flat(a), flat(b))  # the weights reached the steps
    c = net()
    fit(c, X, y, sample_weight=w, epochs=2, batch_size=16, validation_fraction=0.2, seed=4)
    np.testing.assert_array_equal(flat(a), flat(c))


@pytest.mark.parametrize("w, words", [
    (np.ones(59), r"sample_weight must have shape \(60,\), got \(59,\)"),
    (-np.ones(60), "sample_weight must be finite and >= 0"),
    (np.zeros(60), "sample_weight sums to 0"),
    (np.full(60, np.nan), "sample_weight must be finite"),
])
def test_bad_weights_are_refused_before_training(w, words):
    X, y, _ = problem()
    model = net()
    before = flat(model)
    with pytest.raises(ValueError, match=words):
        fit(model, X, y, sample_weight=w, epochs=1)
    np.testing.assert_array_equal(flat(model), before)


def test_a_checkpoint_resumes_only_on_the_same_weights(tmp_path):
    X, y, w = problem()
    ckpt = tmp_path / "c.npz"
    fit(net(), X, y, sample_weight=w, epochs=2, batch_size=16, checkpoint=ckpt, checkpoint_every=1)
    assert read_checkpoint(ckpt).meta["state"]["epoch"] == 2
    with pytest.raises(ValueError, match="training data differ"):
        fit(net(), X, y, sample_weight=w * 2, epochs=3, batch_size=16, resume=ckpt)
    with pytest.raises(ValueError, match="training data differ"):
        fit(net(), X, y, epochs=3, batch_size=16, resume=ckpt)
    fit(net(), X, y, sample_weight=w, epochs=3, batch_size=16, resume=ckpt)


@pytest.mark.parametrize("device", ["cpu", STAND_IN, pytest.param("card", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("first_batch_weighs", [True, False])
def test_streamed_weights_train_bitwise_as_resident_ones(request, device, first_batch_weighs):
    """The weights travel with their rows through the pinned double buffers (the CuPy stand-in
    runs the cuda path's Python code); a batch that weighs nothing still takes its turn of the
    buffers, so the batches after it get their own rows."""
    if device == "cuda":
        request.getfixturevalue("fake_cupy")
    device = "cuda" if device == "card" else device
    X, y, w = problem(n=70)
    if not first_batch_weighs:
        w[:16] = 0  # the first batch of each epoch (no shuffling): no step
    runs = []
    for stream in (False, True):
        model = MLP(SIZES, "relu", backend=device, dtype="float32", seed=1, alpha=1e-3)
        history = fit(model, X, y, sample_weight=w, epochs=3, batch_size=16, seed=2, stream=stream,
                      shuffle=first_batch_weighs)
        runs.append((np.concatenate([to_numpy(p).ravel() for p in model.params]),
                     history.train_loss))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_the_training_loss_is_the_mean_over_the_rows_that_take_part():
    X, y, w = problem(n=8)
    w[:4] = 0  # the first batch (no shuffling) weighs nothing and takes no step
    model = net()
    history = fit(model, X, y, sample_weight=w, epochs=1, batch_size=4, optimizer="sgd", lr=1e-12, shuffle=False)
    loss = float(net().loss_and_grads(X[4:], y[4:], sample_weight=w[4:])[0])
    assert history.train_loss[0] == pytest.approx(loss, rel=1e-9)


def test_weights_that_all_fall_in_the_validation_rows_are_refused():
    X, y, _ = problem(n=40)
    w = np.zeros(40)
    w[0] = 1.0
    for seed in range(10):  # a seed whose split holds row 0 out
        try:
            fit(net(), X, y, sample_weight=w, epochs=1, validation_fraction=0.5, seed=seed)
        except ValueError as exc:
            assert "sample_weight of the training rows sums to 0" in str(exc)
            return
    pytest.fail("no seed held row 0 out")
