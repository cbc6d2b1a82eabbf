"""The data fingerprint a checkpoint records (gpubp.rows.fingerprint): one implementation for
arrays and HostRows, the same value for the same data in memory or memory-mapped, so a run
checkpointed on data in memory resumes on a memory-mapped copy of them."""

import numpy as np

from gpubp import MLP, fit, rows
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
