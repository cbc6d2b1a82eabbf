"""fit(): learning, determinism, validation, early stopping, callbacks, dtypes and bad settings."""

import numpy as np
import pytest

from gpubp import MLP, SGD, Adam, DivergenceError, fit
from gpubp.backend import Backend

from .conftest import STAND_IN


def small_problem(rng, n=120, d=6, classes=3):
    centers = rng.normal(scale=3, size=(classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.normal(size=(n, d)), y


def test_digits_accuracy_of_the_default_recipe(digits):
    train, test = digits
    net = MLP([64, 128, 10], "relu", backend="cpu", seed=0)
    history = fit(net, train.X, train.y, epochs=30, batch_size=32, validation_fraction=0.1, seed=0)
    assert net.score(test.X, test.y) >= 0.95
    assert history.epochs == 30 and len(history.val_accuracy) == 30
    assert history.train_loss[-1] < 0.2 * history.train_loss[0]


@pytest.mark.parametrize("make", [lambda: Adam(beta1=0.8), lambda: SGD(momentum=0.9)], ids=["adam", "momentum"])
def test_one_optimizer_object_given_to_two_fits_starts_each_afresh(make, rng):
    """An optimizer object holds settings only: a second fit with the same object trains as one
    with a new object (an object that kept its moments and step count from the first fit would
    start the second from them)."""
    X, y = small_problem(rng)
    shared = make()
    runs = [fit(MLP([6, 8, 3], backend="cpu", seed=0), X, y, epochs=2, batch_size=16, optimizer=opt, seed=3)
            for opt in (shared, shared, make())]
    assert runs[1].train_loss == runs[2].train_loss == runs[0].train_loss


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum", "nesterov"])
@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_every_optimizer_learns(optimizer, schedule, digits):
    train, _ = digits
    net = MLP([64, 32, 10], "tanh", backend="cpu", seed=1)
    history = fit(net, train.X, train.y, epochs=5, batch_size=64, optimizer=optimizer,
                  schedule=schedule, warmup_epochs=1, seed=1)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]


def train_once(X, y, seed, **kw):
    net = MLP([6, 8, 3], "relu", backend="cpu", seed=seed)
    history = fit(net, X, y, epochs=4, batch_size=16, seed=seed, **kw)
    return net, history


def test_same_seed_gives_identical_parameters(rng):
    X, y = small_problem(rng)
    a, ha = train_once(X, y, seed=5, validation_fraction=0.2)
    b, hb = train_once(X, y, seed=5, validation_fraction=0.2)
    c, _ = train_once(X, y, seed=6, validation_fraction=0.2)
    for pa, pb in zip(a.params, b.params):
        np.testing.assert_array_equal(pa, pb)
    assert ha.train_loss == hb.train_loss and ha.val_loss == hb.val_loss
    assert not np.array_equal(a.weights[0], c.weights[0])


def test_a_trainer_runs_once_and_a_failed_check_can_be_run_again(rng, tmp_path):
    import gpubp.train
    from gpubp import Trainer, TrainConfig
    X, y = small_problem(rng)
    net = MLP([6, 5, 3], seed=0)
    trainer = Trainer(net, TrainConfig(epochs=2, batch_size=32, seed=0, checkpoint=str(tmp_path / "c.npz"),
                                       checkpoint_every=1))
    with pytest.raises(ValueError, match="y"):  # no step taken: the same Trainer may run again
        trainer.run(X, y[:-1])
    history = trainer.run(X, y)
    assert history.epochs == 2
    trained = [p.copy() for p in net.params]
    with pytest.raises(RuntimeError, match="trained already"):  # it used to train nothing, silently
        trainer.run(X, y)
    for before, after in zip(trained, net.params):
        np.testing.assert_array_equal(before, after)
    # failing after its checkpoint was read (here no memory for the feed), it runs again; stopped
    # mid-way, it does not
    resumed = Trainer(MLP([6, 5, 3], seed=0), TrainConfig(epochs=3, batch_size=32, seed=0))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gpubp.train, "batch_feed", lambda *args: (_ for _ in ()).throw(MemoryError("no room")))
        with pytest.raises(MemoryError):
            resumed.run(X, y, resume=str(tmp_path / "c.npz"))
    assert resumed.run(X, y, resume=str(tmp_path / "c.npz")).epochs == 3

    def stop(epoch, logs):
        raise KeyboardInterrupt

    stopped = Trainer(MLP([6, 5, 3], seed=0), TrainConfig(epochs=3, batch_size=32, seed=0), callbacks=(stop,))
    with pytest.raises(KeyboardInterrupt):
        stopped.run(X, y)
    with pytest.raises(RuntimeError, match="trained already"):  # its state is a stopped run's: resume= goes on
        stopped.run(X, y)


def test_float32_stays_float32(rng, monkeypatch):
    X, y = small_problem(rng)
    seen = []
    original = MLP.flat_loss_and_grad

    def spy(self, Xb, *args, **kwargs):
        loss, g = original(self, Xb, *args, **kwargs)
        seen.append((Xb.dtype, np.asarray(loss).dtype, {g.dtype}))
        return loss, g

    monkeypatch.setattr(MLP, "flat_loss_and_grad", spy)
    net = MLP([6, 8, 3], backend="cpu", dtype="float32", seed=0)
    fit(net, X.astype(np.float64), y, epochs=1, batch_size=50)
    assert seen and all(s == (np.float32, np.float32, {np.dtype(np.float32)}) for s in seen)
    assert all(p.dtype == np.float32 for p in net.params)
    assert len(seen) == 3  # 120 rows in batches of 50: 50, 50, 20


def test_batches_from_the_host_equal_batches_on_the_device(rng, monkeypatch):
    X, y = small_problem(rng)
    on_device, _ = train_once(X, y, seed=3)
    monkeypatch.setattr(Backend, "fits", lambda self, nbytes: False)
    from_host, _ = train_once(X, y, seed=3)
    for a, b in zip(on_device.params, from_host.params):
        np.testing.assert_array_equal(a, b)


def test_validation_data_and_early_stopping_restores_the_best_epoch(rng):
    X, y = small_problem(rng, n=200)
    Xv, yv = X[:40], rng.integers(0, 3, 40)  # random validation labels: loss soon rises
    net = MLP([6, 64, 3], "relu", backend="cpu", seed=0)
    snapshots = {}
    history = fit(net, X[40:], y[40:], validation_data=(Xv, yv), epochs=200, batch_size=8,
                  lr=0.01, patience=3, seed=0,
                  callbacks=[lambda epoch, logs: snapshots.__setitem__(epoch, net.get_params())])
    assert history.stopped_early and history.epochs < 200
    assert history.best_epoch == int(np.argmin(history.val_loss)) + 1
    assert history.epochs == history.best_epoch + 3
    for p, best in zip(net.params, snapshots[history.best_epoch]):
        np.testing.assert_array_equal(p, best)
    assert net.evaluate(Xv, yv)[0] == pytest.approx(min(history.val_loss), rel=1e-6)


def test_callback_sees_the_logs_and_can_stop(rng):
    X, y = small_problem(rng)
    calls = []

    def stop_at_two(epoch, logs):
        calls.append((epoch, sorted(logs)))
        return epoch == 2

    _, history = train_once(X, y, seed=0, callbacks=[stop_at_two], validation_fraction=0.25)
    assert history.epochs == 2 and not history.stopped_early
    assert calls[0] == (1, ["lr", "seconds", "train_loss", "val_accuracy", "val_loss"])


@pytest.mark.parametrize("once", [lambda cbs: (cb for cb in cbs), iter], ids=["generator", "iterator"])
def test_callbacks_given_as_a_generator_are_called(rng, once):
    """The check of each callback read a generator to its end, and fit then kept an empty tuple:
    no callback ran, and one that stops did not stop."""
    X, y = small_problem(rng)
    seen = []

    def stop_at_two(epoch, logs):
        seen.append(epoch)
        return epoch == 2

    _, history = train_once(X, y, seed=0, callbacks=once([stop_at_two]))
    assert seen == [1, 2] and history.epochs == 2


def test_verbose_prints_a_line_per_epoch(rng, capsys):
    X, y = small_problem(rng)
    train_once(X, y, seed=0, verbose=1, validation_fraction=0.25)
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("epoch")]
    assert len(lines) == 4 and "val_acc" in lines[0] and lines[-1].startswith("epoch 4/4")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("device", ["cpu", STAND_IN])
def test_divergence_is_reported_not_hidden(rng, request, device):
    """On "cuda" the finite check is a device reduction read once an epoch (the stand-in runs it)."""
    if device == "cuda":
        request.getfixturevalue("fake_cupy")
    X, y = small_problem(rng)
    net = MLP([6, 16, 3], "relu", backend=device, seed=0)
    with pytest.raises(DivergenceError, match=r"diverged in epoch \d+.*lower learning rate"):
        fit(net, X * 1e4, y, epochs=20, optimizer="sgd", lr=1e30, seed=0)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(epochs=0), r"epochs must be an int in the range \[1, inf\), got 0"),
        (dict(batch_size=0), r"batch_size must be an int in the range \[1, inf\), got 0"),
        (dict(lr=-0.1), r"lr must be a float in the range \(0.0, inf\), got -0.1"),
        (dict(lr=float("nan")), "lr must be"),
        (dict(optimizer="rmsprop"), "optimizer must be a str among"),
        (dict(schedule="step"), "schedule must be a str among"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(patience=0), "patience"),
        (dict(verbose=3), "verbose"),
        (dict(warmup_epochs=9), "warmup_epochs"),
        (dict(validation_data=(np.zeros((2, 5)), [0, 1])), "X_val has 5 features"),
        (dict(validation_data=np.zeros((2, 6))), "pair"),
        (dict(callbacks=[1]), "callables"),
        (dict(callbacks=None), r"callbacks must be a sequence of callables .*, got None"),
        (dict(callbacks=lambda epoch, logs: None), r"callbacks must be a sequence of callables"),
        (dict(validation_data=(np.zeros((2, 6)), [0, 1, 2])), "X_val has 2 rows but y_val has 3 labels"),
    ],
)
def test_bad_settings_are_rejected_up_front(settings, message, rng):
    X, y = small_problem(rng)
    net = MLP([6, 4, 3], backend="cpu", seed=0)
    before = net.get_params()
    with pytest.raises(ValueError, match=message):
        fit(net, X, y, epochs=settings.pop("epochs", 5), **settings)
    for p, b in zip(net.params, before):
        np.testing.assert_array_equal(p, b)  # nothing was trained


def test_validation_fraction_needs_two_samples_per_class():
    X = np.zeros((5, 6))
    y = np.array([0, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="at least 2 samples of every class"):
        fit(MLP([6, 3], backend="cpu"), X, y, validation_fraction=0.4)
