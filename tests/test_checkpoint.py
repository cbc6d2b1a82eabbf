"""Checkpoints: resume equals uninterrupted (bitwise, on the CPU), interruption by signal,
divergence, bad files, mismatched resumes, clipping and running out of memory."""

import json
import os
import re
import signal
import weakref

import numpy as np
import pytest

from gpubp import MLP, DataError, DivergenceError, fit, save_model
from gpubp.backend import Backend
from gpubp.checkpoint import read_checkpoint, write_checkpoint
from gpubp.errors import DeviceMemoryError
from gpubp.interrupt import TrainingInterrupted
from gpubp.optim import SGD, clip_by_global_norm

from .legacy_files import write_with_meta

SETTINGS = dict(epochs=6, batch_size=16, optimizer="nesterov", schedule="cosine", warmup_epochs=1,
                validation_fraction=0.2, patience=10, seed=3)


def problem(n=150, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2, size=(classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.normal(size=(n, d)), y


def new_net(dtype="float64"):
    return MLP([5, 12, 3], "tanh", backend="cpu", dtype=dtype, seed=1, alpha=1e-3)


def assert_same_run(net_a, hist_a, net_b, hist_b):
    for pa, pb in zip(net_a.params, net_b.params):
        np.testing.assert_array_equal(pa, pb)
    assert hist_a.train_loss == hist_b.train_loss
    assert hist_a.val_loss == hist_b.val_loss and hist_a.lr == hist_b.lr
    assert hist_a.epochs == hist_b.epochs


@pytest.mark.parametrize("optimizer", ["nesterov", "adam"])
def test_stopped_after_k_epochs_and_resumed_equals_uninterrupted(tmp_path, optimizer):
    X, y = problem()
    settings = {**SETTINGS, "optimizer": optimizer}
    whole = new_net()
    h_whole = fit(whole, X, y, **settings)

    ckpt = tmp_path / "run.npz"
    first = new_net()
    fit(first, X, y, checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda epoch, logs: epoch == 2], **settings)
    assert read_checkpoint(ckpt).meta["state"]["epoch"] == 2
    resumed = new_net()  # a fresh process would start from a fresh network
    h_resumed = fit(resumed, X, y, resume=ckpt, **settings)
    assert_same_run(whole, h_whole, resumed, h_resumed)


def test_interrupted_mid_epoch_by_sigint_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    X, y = problem()
    whole = new_net()
    h_whole = fit(whole, X, y, **SETTINGS)

    ckpt = tmp_path / "run.npz"
    original, steps = SGD.update, []

    def step_then_signal(self, *args):
        original(self, *args)
        steps.append(1)
        if len(steps) == 17:  # inside epoch 3 (8 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(SGD, "update", step_then_signal)
    interrupted = new_net()
    with pytest.raises(TrainingInterrupted) as info:
        fit(interrupted, X, y, checkpoint=ckpt, **SETTINGS)
    monkeypatch.setattr(SGD, "update", original)
    assert info.value.exit_status == 130 and info.value.step == 17 and info.value.epoch == 3
    assert info.value.checkpoint == str(ckpt) and "SIGINT" in str(info.value)
    meta = read_checkpoint(ckpt).meta
    assert meta["state"]["epoch"] == 2 and meta["state"]["position"] == 16
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]  # no partial files

    resumed = new_net()
    h_resumed = fit(resumed, X, y, resume=ckpt, **SETTINGS)
    assert_same_run(whole, h_whole, resumed, h_resumed)


def test_sigterm_gives_143_and_a_loadable_checkpoint(tmp_path, monkeypatch):
    X, y = problem()
    original = SGD.update

    def step_then_term(self, *args):
        original(self, *args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(SGD, "update", step_then_term)
    with pytest.raises(TrainingInterrupted) as info:
        fit(new_net(), X, y, checkpoint=tmp_path / "c.npz", **SETTINGS)
    assert info.value.exit_status == 143 and info.value.step == 1
    assert read_checkpoint(tmp_path / "c.npz").meta["state"]["step"] == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers are put back


def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    X, y = problem()
    ckpt = tmp_path / "c.npz"
    calls = []
    original = MLP.flat_loss_and_grad

    def nan_at_step_20(self, Xb, yb, sample_weight=None, l2=True):
        loss, g = original(self, Xb, yb, sample_weight, l2)
        calls.append(1)
        return (loss * np.nan if len(calls) == 20 else loss), g

    monkeypatch.setattr(MLP, "flat_loss_and_grad", nan_at_step_20)
    with pytest.raises(DivergenceError, match=rf"epoch 3 at step 20: the loss .*last good checkpoint is {ckpt}"):
        fit(new_net(), X, y, checkpoint=ckpt, checkpoint_every=1, **SETTINGS)
    assert read_checkpoint(ckpt).meta["state"]["epoch"] == 2


def test_clipping_by_global_norm(rng):
    grads = [rng.normal(size=(4, 3)), rng.normal(size=3)]
    norm = np.sqrt(sum((g**2).sum() for g in grads))
    before = [g.copy() for g in grads]
    assert float(clip_by_global_norm(np, grads, norm / 4)) == pytest.approx(norm)
    assert np.sqrt(sum((g**2).sum() for g in grads)) == pytest.approx(norm / 4)
    np.testing.assert_allclose(grads[0], before[0] / 4)
    unchanged = [g.copy() for g in grads]
    clip_by_global_norm(np, grads, 1e6)
    np.testing.assert_array_equal(grads[0], unchanged[0])
    X, y = problem()
    history = fit(new_net(), X, y, epochs=2, clip_norm=0.5, seed=0)
    assert history.epochs == 2


def test_out_of_memory_suggests_a_batch_size(monkeypatch):
    X, y = problem()

    def no_memory(self, Xb, yb, sample_weight=None, l2=True):
        raise MemoryError("Unable to allocate 3.00 GiB for an array with shape (1000000, 800)")

    monkeypatch.setattr(MLP, "flat_loss_and_grad", no_memory)
    with pytest.raises(DeviceMemoryError, match=r"epoch 1 \(step 1\) at batch size 64: .*asked for 3.00 GiB, "
                                                r"with .* free; batch size \d+ should fit"):
        fit(new_net(), X, y, epochs=1, batch_size=64)


def test_out_of_memory_releases_the_failed_step_before_measuring(monkeypatch):
    """The advice measures free memory after the failed step's arrays are gone and the cache is
    released, and the error keeps no reference to them (a retry in the same session can fit)."""
    X, y = problem()
    held, calls = [], []

    class Activations(np.ndarray):
        """An array a weak reference can follow (a device array's memory in the real case)."""

    def no_memory(self, Xb, yb, sample_weight=None, l2=True):
        activations = np.zeros(1000).view(Activations)
        held.append(weakref.ref(activations))
        raise MemoryError("Unable to allocate 3.00 GiB for an array with shape (1000000, 800)")

    def free_memory(backend):
        calls.append(("free_memory", held[0]() is None))
        return 2**30

    monkeypatch.setattr(MLP, "flat_loss_and_grad", no_memory)
    monkeypatch.setattr(Backend, "release_memory", lambda backend: calls.append(("release", held[0]() is None)))
    monkeypatch.setattr(Backend, "free_memory", free_memory)
    with pytest.raises(DeviceMemoryError) as caught:
        fit(new_net(), X, y, epochs=1, batch_size=64)
    assert calls == [("release", True), ("free_memory", True)]
    assert caught.value.__context__ is None and caught.value.__cause__ is None


def test_prediction_splits_batches_that_do_not_fit(monkeypatch, rng):
    net = new_net()
    X = rng.normal(size=(100, 5))
    expected = net.predict_proba(X, batch_size=100)
    original, sizes = MLP._forward, []

    def small_batches_only(self, Xb):
        if Xb.shape[0] > 8:
            raise MemoryError("Unable to allocate")
        sizes.append(Xb.shape[0])
        return original(self, Xb)

    monkeypatch.setattr(MLP, "_forward", small_batches_only)
    np.testing.assert_array_equal(net.predict_proba(X, batch_size=64), expected)
    assert max(sizes) == 8 and sum(sizes) == 100


def test_bad_checkpoint_files(tmp_path):
    X, y = problem()
    good = tmp_path / "good.npz"
    fit(new_net(), X, y, epochs=1, checkpoint=good, checkpoint_every=1)
    raw = good.read_bytes()
    cases = {
        "truncated.npz": (raw[: len(raw) // 2], "truncated or corrupted"),
        "empty.npz": (b"", "truncated or corrupted"),
        "text.npz": (b"hello, not a checkpoint", "not a gpubp file .*; expected a checkpoint"),
    }
    flipped = bytearray(raw)
    flipped[len(raw) // 3] ^= 0xFF  # inside a stored array: zip CRC or our checksum catches it
    cases["flipped.npz"] = (bytes(flipped), "corrupted|checksum")
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match=message):
            read_checkpoint(tmp_path / name)
    np.savez(tmp_path / "foreign.npz", weights=np.zeros(3))
    with pytest.raises(DataError, match="not a gpubp file .*; expected a checkpoint"):
        read_checkpoint(tmp_path / "foreign.npz")
    save_model(new_net(), tmp_path / "model.npz")
    with pytest.raises(DataError, match="is a gpubp model file, not a checkpoint: load it with gpubp.load_model"):
        read_checkpoint(tmp_path / "model.npz")
    with pytest.raises(DataError, match="no checkpoint at"):
        read_checkpoint(tmp_path / "missing.npz")
    c = read_checkpoint(good)
    write_with_meta(tmp_path / "future.npz", {**c.meta, "version": 99}, c.arrays)
    with pytest.raises(DataError, match="format version 99, written by gpubp .*: upgrade gpubp"):
        read_checkpoint(tmp_path / "future.npz")
    write_with_meta(tmp_path / "old99.npz", {**c.meta, "format": "gpubp-checkpoint", "version": 99}, c.arrays)
    with pytest.raises(DataError, match="gpubp-checkpoint format version 99, not one this gpubp reads"):
        read_checkpoint(tmp_path / "old99.npz")
    write_checkpoint(tmp_path / "shape.npz", c.meta, {**c.arrays, "param_0": np.zeros((5, 13))})
    with pytest.raises(DataError, match=r"parameter 0 is float64 \(5, 13\), the model 5-12-3 float64 needs"):
        read_checkpoint(tmp_path / "shape.npz")
    write_checkpoint(tmp_path / "dtype.npz", c.meta, {**c.arrays, "param_1": c.arrays["param_1"].astype(np.float32)})
    with pytest.raises(DataError, match="parameter 1 is float32"):
        read_checkpoint(tmp_path / "dtype.npz")


def test_checkpoint_holds_no_pickle_and_states_its_contents(tmp_path):
    X, y = problem()
    ckpt = tmp_path / "c.npz"
    fit(new_net(), X, y, epochs=2, checkpoint=ckpt, checkpoint_every=1, patience=5, seed=0)
    with np.load(ckpt, allow_pickle=False) as f:  # loads without pickle
        meta = json.loads(f["meta"].tobytes())
        names = set(f.files)
    assert (meta["format"], meta["version"], meta["kind"]) == ("gpubp", 4, "checkpoint")
    assert meta["model"] == {"sizes": [5, 12, 3], "activation": "tanh", "output": "softmax", "dtype": "float64",
                             "alpha": 1e-3, "tf32": False}
    assert meta["model"]["sizes"] == [5, 12, 3] and meta["optimizer"]["name"] == "adam"
    assert meta["optimizer"]["t"] == 2 * 3 and meta["state"]["epoch"] == 2
    assert len(meta["history"]["train_loss"]) == 2 and meta["config"]["epochs"] == 2
    assert {"param_0", "param_3", "opt_m", "opt_v", "best_0", "checksum"} <= names
    assert not any(name.startswith("opt_m_") for name in names)  # one flat array per kind of state


@pytest.mark.parametrize("optimizer", ["adam", "nesterov"])
def test_version_1_and_3_checkpoints_resume_the_same(tmp_path, optimizer):
    """Checkpoints written before the flat parameter buffer keep one optimizer array per
    parameter, those of format 3 the flat state as opt_<name>_0; resuming one continues exactly
    as the checkpoint it is cut from."""
    X, y = problem()
    settings = {**SETTINGS, "optimizer": optimizer}
    flat = tmp_path / "flat.npz"
    fit(new_net(), X, y, checkpoint=flat, checkpoint_every=1, callbacks=[lambda epoch, logs: epoch == 2], **settings)
    c = read_checkpoint(flat)
    net = new_net()
    per_parameter = {k: v for k, v in c.arrays.items() if not k.startswith("opt_")}
    suffixed = {k: v for k, v in c.arrays.items() if not k.startswith("opt_")}
    for kind in ("velocity", "m", "v"):
        if f"opt_{kind}" in c.arrays:
            weights, biases = net.unflatten(c.arrays[f"opt_{kind}"])
            per_parameter.update({f"opt_{kind}_{i}": a.copy() for i, a in enumerate(weights + biases)})
            suffixed[f"opt_{kind}_0"] = c.arrays[f"opt_{kind}"]
    assert len(per_parameter) > len(c.arrays)
    v1 = {**{k: v for k, v in c.meta.items() if k != "kind"}, "format": "gpubp-checkpoint", "version": 1}
    write_with_meta(tmp_path / "v1.npz", v1, per_parameter)  # as gpubp 0.1 wrote it
    write_with_meta(tmp_path / "v3.npz", {**c.meta, "version": 3}, suffixed)  # state as opt_<name>_0
    a, b, v3 = new_net(), new_net(), new_net()
    fit(a, X, y, resume=flat, **settings)
    fit(b, X, y, resume=tmp_path / "v1.npz", **settings)
    fit(v3, X, y, resume=tmp_path / "v3.npz", **settings)
    for pa, pb, p3 in zip(a.params, b.params, v3.params):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(pa, p3)
    short = dict(per_parameter)
    del short["opt_" + ("m" if optimizer == "adam" else "velocity") + "_3"]  # the last bias's
    write_with_meta(tmp_path / "short.npz", v1, short)
    with pytest.raises(ValueError, match=f"optimizer state has 3 .* arrays of 108 values in all for {net.n_params} "):
        fit(new_net(), X, y, resume=tmp_path / "short.npz", **settings)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(settings={"lr": 0.5}), "lr=0.05 there, 0.5 here"),
        (dict(settings={"epochs": 1}), "more than epochs=1"),
        (dict(net=MLP([5, 13, 3], "tanh", backend="cpu", dtype="float64", seed=1, alpha=1e-3)), "holds the network"),
        (dict(data=problem(seed=1)), "training data differ"),
    ],
)
def test_resume_refuses_what_does_not_match(tmp_path, change, message):
    X, y = problem()
    ckpt = tmp_path / "c.npz"
    settings = dict(epochs=3, optimizer="momentum", seed=0)
    fit(new_net(), X, y, checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda e, logs: e == 2], **settings)
    X2, y2 = change.get("data", (X, y))
    with pytest.raises(ValueError, match=message):
        fit(change.get("net", new_net()), X2, y2, resume=ckpt, **{**settings, **change.get("settings", {})})


def test_a_checkpoint_path_that_cannot_be_written_is_refused_before_training(tmp_path):
    epochs = []
    unwritable = [str(tmp_path)] + (["/proc/c.npz"] if os.path.isdir("/proc/self") else [])  # a folder; no files there
    for path in unwritable:
        with pytest.raises(ValueError, match=f"checkpoint must be a file path in an existing folder .*got '{path}'"):
            fit(new_net(), *problem(), epochs=2, checkpoint=path, callbacks=[lambda e, logs: epochs.append(e)])
    assert epochs == [] and list(tmp_path.iterdir()) == []


def test_checkpoint_settings_are_checked():
    with pytest.raises(ValueError, match="checkpoint must be a file path in an existing folder"):
        fit(new_net(), *problem(), checkpoint="/no/such/folder/c.npz")
    with pytest.raises(ValueError, match="checkpoint_every needs a checkpoint path"):
        fit(new_net(), *problem(), checkpoint_every=2)
    with pytest.raises(ValueError, match=r"clip_norm must be a float in the range \(0.0, inf\)"):
        fit(new_net(), *problem(), clip_norm=0)


@pytest.mark.parametrize("restore_best", [True, False])
def test_a_run_early_stopping_ended_resumes_to_itself_untrained(tmp_path, capsys, restore_best):
    X, y = problem()
    settings = {**SETTINGS, "epochs": 60, "patience": 1, "restore_best": restore_best}
    ckpt = tmp_path / "run.npz"
    whole = new_net()
    h_whole = fit(whole, X, y, checkpoint=ckpt, checkpoint_every=1, **settings)
    assert h_whole.stopped_early and h_whole.epochs < 60
    written = ckpt.read_bytes()
    for _ in range(2):  # each resume, not only the first, ends where the uninterrupted run did
        resumed = new_net()
        h_resumed = fit(resumed, X, y, resume=ckpt, checkpoint=ckpt, checkpoint_every=1, verbose=1, **settings)
        assert_same_run(whole, h_whole, resumed, h_resumed)
        assert h_resumed.stopped_early and h_resumed.best_epoch == h_whole.best_epoch
        assert ckpt.read_bytes() == written  # nothing trained, so nothing rewritten
        out = capsys.readouterr().out
        assert f"early stopping ended {ckpt} after epoch {h_whole.epochs}" in out and "epoch 1/" not in out


@pytest.mark.parametrize("extra, words", [
    ({"ok": 1, "mean": np.zeros(3)}, "checkpoint_extra['mean'] (of type ndarray)"),
    ({"scale": np.float32(1)}, "checkpoint_extra['scale'] (of type float32)"),
    ({"tags": {1, 2}}, "checkpoint_extra['tags'] (of type set)"),
    ({"nested": {"a": [1, object()]}}, "checkpoint_extra['nested'] (of type dict)"),
    ({(1, 2): 3}, "checkpoint_extra[(1, 2)] (of type int)"),
    ([("a", 1)], "checkpoint_extra must be a dict"),
])
def test_checkpoint_extra_that_a_checkpoint_cannot_hold_is_refused_before_training(tmp_path, extra, words):
    epochs, ckpt = [], tmp_path / "c.npz"
    with pytest.raises(ValueError, match=re.escape(words)):
        fit(new_net(), *problem(), epochs=2, checkpoint=ckpt, checkpoint_every=1, checkpoint_extra=extra,
            callbacks=[lambda epoch, logs: epochs.append(epoch)])
    assert epochs == [] and not ckpt.exists()


def test_checkpoint_extra_holds_what_json_holds(tmp_path):
    extra = {"mean": [0.5, float("nan")], "note": "run 3", 7: None, "cfg": {"depth": 2, "on": True}}
    fit(new_net(), *problem(), epochs=1, checkpoint=tmp_path / "c.npz", checkpoint_every=1, checkpoint_extra=extra)
    stored = read_checkpoint(tmp_path / "c.npz").meta["extra"]
    assert json.dumps(stored) == json.dumps(extra)  # NaN and a key 7 (stored as "7") as json writes them
