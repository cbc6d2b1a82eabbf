"""The data fingerprints: gpubp.rows.fingerprint (sequential: the estimators' checkpoints, and
fit's before gpubp issue 13) and gpubp.data_parts.block_fingerprint (fit's, computed in blocks by
the ranks). Each is one implementation for arrays and HostRows, the same value for the same data
in memory or memory-mapped, so a run checkpointed on data in memory resumes on a memory-mapped
copy of them; a checkpoint holding the older sequential form still resumes."""

import hashlib

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from gpubp import MLP, fit, rows
from gpubp.checkpoint import read_checkpoint, write_checkpoint
from gpubp.data_parts import block_fingerprint
from gpubp.rows import HostRows


def problem(n=90, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2, size=(classes, d))
    y = rng.integers(0, classes, n)
    return centers[y] + rng.normal(size=(n, d)), y


def new_net(dtype):
    return MLP([5, 6, 3], "tanh", backend="cpu", dtype=dtype, seed=1, alpha=1e-3)


def test_the_fingerprint_is_the_same_in_memory_and_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(rows, "CHUNK_BYTES", 5 * 8 * 7)  # 7 rows a chunk: many chunks
    X, y = problem(n=40)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    w = np.linspace(0.5, 2, 40)
    for dtype in ("float32", "float64"):
        assert block_fingerprint(HostRows(mapped), y, dtype, w) == block_fingerprint(X.astype(dtype), y, dtype, w)
        expected = rows.fingerprint(X, y, dtype)
        assert rows.fingerprint(X.astype(dtype), y, dtype) == expected
        assert rows.fingerprint(HostRows(mapped), y, dtype) == expected
        assert rows.fingerprint(HostRows(mapped), y, dtype, w) == rows.fingerprint(X, y, dtype, w) != expected
    part = np.array([9, 2, 31])
    assert rows.fingerprint(HostRows(mapped).subset(part), y[part], "float32") == \
        rows.fingerprint(X[part], y[part], "float32")
    assert rows.fingerprint(X, y, "float32") != rows.fingerprint(X, y, "float64")
    changed = X.copy()
    changed[39, 4] += 1e-6
    assert rows.fingerprint(changed, y, "float64") != rows.fingerprint(X, y, "float64")


def test_a_checkpoint_of_an_in_memory_run_resumes_on_a_memory_mapped_copy(tmp_path):
    X, y = problem()
    np.save(tmp_path / "X.npy", X)  # float64 on disk, trained in float32
    settings = dict(epochs=3, batch_size=16, optimizer="adam", seed=2, validation_fraction=0.0)
    whole = new_net("float32")
    fit(whole, X, y, **settings)
    ckpt = tmp_path / "c.npz"
    fit(new_net("float32"), X, y, checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda e, logs: e == 1],
        **settings)
    resumed = new_net("float32")
    fit(resumed, np.load(tmp_path / "X.npy", mmap_mode="r"), y, resume=ckpt, **settings)
    for pa, pb in zip(whole.params, resumed.params):
        np.testing.assert_array_equal(pa, pb)


def sequential_fingerprint(X, y, dtype, w=None) -> str:
    """The fingerprint fit's checkpoints held before it was computed in blocks, written out here
    (not taken from gpubp.rows) so that a change there cannot change what old files hold."""
    X, y = np.ascontiguousarray(X, dtype=dtype), np.ascontiguousarray(y)
    digest = hashlib.sha256(f"X|{np.dtype(dtype).str}|{X.shape}|".encode() + X.tobytes())
    digest.update(f"y|{y.dtype.str}|{y.shape}|".encode() + y.tobytes())
    if w is None:
        return digest.hexdigest()
    return digest.hexdigest() + "|w:" + hashlib.sha256(np.ascontiguousarray(w, dtype=np.float64).tobytes()).hexdigest()


def test_a_checkpoint_holding_the_older_sequential_fingerprint_resumes_and_refuses_other_data(tmp_path):
    X, y = problem()
    np.save(tmp_path / "X.npy", X)
    w = np.linspace(0.5, 2, len(y))
    settings = dict(epochs=3, batch_size=16, optimizer="adam", seed=2, validation_fraction=0.2, sample_weight=w)
    whole = new_net("float32")
    fit(whole, X, y, **settings)
    ckpt = tmp_path / "c.npz"
    fit(new_net("float32"), X, y, checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda e, logs: e == 1], **settings)
    new = read_checkpoint(ckpt)  # the whole data set's fingerprint, in blocks, before the hold-out
    assert new.meta["data"] == block_fingerprint(X, y, "float32", w)
    train, _ = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y,
                                random_state=new.meta["state"]["split_seed"])
    old = sequential_fingerprint(X[train], y[train], "float32", w[train].astype(np.float32))  # the trained rows
    assert old == rows.fingerprint(X[train], y[train], "float32", w[train].astype(np.float32))
    write_checkpoint(ckpt, {**new.meta, "data": old}, new.arrays)
    resumed = new_net("float32")
    fit(resumed, np.load(tmp_path / "X.npy", mmap_mode="r"), y, resume=ckpt, checkpoint=tmp_path / "again.npz",
        checkpoint_every=1, **settings)
    for pa, pb in zip(whole.params, resumed.params):
        np.testing.assert_array_equal(pa, pb)
    assert read_checkpoint(tmp_path / "again.npz").meta["data"] == new.meta["data"]  # rewritten in blocks
    changed = X.copy()
    changed[train[5], 1] += 1e-3
    for other in (changed, X):
        with pytest.raises(ValueError, match="the training data differ from those .*c.npz was trained on"):
            fit(new_net("float32"), other, y, resume=ckpt, sample_weight=w if other is changed else w * 2,
                **{k: v for k, v in settings.items() if k != "sample_weight"})
