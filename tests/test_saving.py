"""save_model / load_model: round trip, atomic writes, and refusal of bad files."""

import numpy as np
import pytest

from gpubp import MLP, DataError, load_model, save_model
from gpubp import saving


def test_round_trip_keeps_parameters_settings_and_extras(tmp_path, rng):
    net = MLP([5, 4, 3], "tanh", backend="cpu", dtype="float64", seed=2, alpha=0.25)
    path = save_model(net, tmp_path / "m.npz", extra={"classes": np.array(["a", "b", "c"])})
    loaded, extra = load_model(path, backend="cpu")
    assert (loaded.sizes, loaded.activation, loaded.dtype, loaded.alpha) == ([5, 4, 3], "tanh", np.float64, 0.25)
    for a, b in zip(net.params, loaded.params):
        np.testing.assert_array_equal(a, b)
    assert extra["classes"].tolist() == ["a", "b", "c"]
    X = rng.normal(size=(4, 5))
    np.testing.assert_array_equal(net.predict_proba(X), loaded.predict_proba(X))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"old model")

    def explode(f):
        f.write(b"half a model")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        saving.atomic_write(path, explode)
    assert path.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_bad_files_are_refused(tmp_path):
    net = MLP([3, 2], backend="cpu", seed=0)
    good = save_model(net, tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable gpubp model"):
        load_model(truncated, backend="cpu")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, X=np.zeros(3))
    with pytest.raises(DataError, match="not a gpubp model file"):
        load_model(foreign, backend="cpu")
    future = tmp_path / "future.npz"
    with np.load(good) as f:
        arrays = dict(f)
    np.savez(future, **{**arrays, "format_version": np.array(99)})
    with pytest.raises(DataError, match="format version 99"):
        load_model(future, backend="cpu")
    broken = tmp_path / "broken.npz"
    np.savez(broken, **{**arrays, "W0": np.zeros((5, 5))})
    with pytest.raises(DataError, match="inconsistent"):
        load_model(broken, backend="cpu")
    with pytest.raises(DataError, match="not a readable"):
        load_model(tmp_path / "missing.npz", backend="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        save_model(net, tmp_path / "no" / "such" / "m.npz")
