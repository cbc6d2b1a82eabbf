"""gpubp.fit on networks whose output is not a softmax: logistic (multi-label), identity
(regression) and exp (Poisson) -- the step, learning, validation, evaluation and resuming."""

import numpy as np
import pytest

from gpubp import MLP, fit

OUTPUTS = ("logistic", "identity", "exp")


def problem(output, n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    z = X @ rng.normal(size=(4, 2)) * 0.5
    Y = {"logistic": (z > 0).astype(float), "identity": z, "exp": rng.poisson(np.exp(z)).astype(float)}[output]
    return X, Y


def net(output, alpha=0.0):
    return MLP([4, 6, 2], "tanh", backend="cpu", dtype="float64", seed=1, alpha=alpha, output=output)


def flat(model):
    return np.concatenate([p.ravel() for p in model.params])


@pytest.mark.parametrize("output", OUTPUTS)
def test_one_full_batch_step_follows_the_gradient(output):
    X, Y = problem(output)
    model, reference = net(output, 0.01), net(output, 0.01)
    _, dW, db = reference.loss_and_grads(X, Y)
    expected = flat(reference) - 0.05 * np.concatenate([g.ravel() for g in dW + db])
    fit(model, X, Y, epochs=1, batch_size=len(X), optimizer="sgd", lr=0.05, shuffle=False)
    np.testing.assert_allclose(flat(model), expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("output", OUTPUTS)
def test_it_learns_and_validates_by_loss(output):
    X, Y = problem(output, n=300)
    model = net(output)
    history = fit(model, X, Y, epochs=30, batch_size=32, lr=0.01, validation_fraction=0.2, seed=0)
    assert history.train_loss[-1] < 0.7 * history.train_loss[0]
    assert len(history.val_loss) == 30 and history.val_accuracy == []
    loss, accuracy = model.evaluate(X, Y)
    assert accuracy is None and np.isfinite(loss)
    assert loss == pytest.approx(float(model.loss_and_grads(X, Y)[0]), rel=1e-12)  # alpha 0: the same loss


def test_score_and_predict_still_need_classes():
    X, Y = problem("identity")
    with pytest.raises(ValueError, match="score needs a softmax output"):
        net("identity").score(X, Y)


@pytest.mark.parametrize("output, bad, words", [
    ("logistic", lambda Y: Y + 2, r"logistic output must lie in \[0, 1\]"),
    ("exp", lambda Y: -Y - 1, "must be >= 0"),
    ("identity", lambda Y: Y[:, :1], r"y must have shape \(64, 2\)"),
])
def test_bad_targets_are_refused(output, bad, words):
    X, Y = problem(output)
    with pytest.raises(ValueError, match=words):
        fit(net(output), X, bad(Y), epochs=1)


def test_a_regression_run_resumes_bitwise(tmp_path):
    X, Y = problem("identity", n=100)
    whole = net("identity")
    fit(whole, X, Y, epochs=4, batch_size=16, seed=3, validation_fraction=0.2)
    first = net("identity")
    ckpt = tmp_path / "c.npz"
    fit(first, X, Y, epochs=2, batch_size=16, seed=3, validation_fraction=0.2, checkpoint=ckpt, checkpoint_every=1)
    resumed = net("identity")
    fit(resumed, X, Y, epochs=4, batch_size=16, seed=3, validation_fraction=0.2, resume=ckpt)
    np.testing.assert_array_equal(flat(resumed), flat(whole))
    with pytest.raises(ValueError, match="holds the network"):
        fit(net("logistic"), X, (Y > 0).astype(float), epochs=4, batch_size=16, seed=3, validation_fraction=0.2,
            resume=ckpt)
