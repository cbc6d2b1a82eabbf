"""The one file container: every kind round-trips and records the same model block, a file of
one kind given where another is expected is refused with how to load it, damaged and newer files
are refused naming the file, a failed write keeps the previous file, and gpubp 0.1 files still load."""

import json
import re
import struct
import warnings
import zipfile

import numpy as np
import pytest

from gpubp import (DataError, MLPClassifier, fit, load_estimator, load_model, read_checkpoint,
                   save_model)
from gpubp import container

from .legacy_files import write_with_meta
from .test_checkpoint import new_net, problem


SETTINGS = dict(epochs=3, batch_size=16, optimizer="adam", seed=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file of each kind, and the objects they were written from."""
    folder = tmp_path_factory.mktemp("kinds")
    X, y = problem(n=90)
    net = new_net()
    fit(net, X, y, checkpoint=folder / "checkpoint.npz", checkpoint_every=1, **SETTINGS)
    save_model(net, folder / "model.npz", extra={"classes": np.array(["a", "b", "c"])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 3 iterations
        est = MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0, device="cpu").fit(X, y)
    est.save(folder / "estimator.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0, device="cpu",
                      checkpoint=folder / "estimator_checkpoint.npz").fit(X, y)
    return folder, net, est, X


def read_meta(path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return json.loads(f["meta"].tobytes())


def test_every_kind_states_its_kind_version_and_the_same_model_block(files):
    folder, net, est, X = files
    blocks = {"model": container.model_block(net), "checkpoint": container.model_block(net),
              "estimator": container.model_block(est._network()),
              "estimator_checkpoint": container.model_block(est._network())}
    for kind, block in blocks.items():
        meta = read_meta(folder / f"{kind}.npz")
        assert (meta["format"], meta["version"], meta["kind"]) == ("gpubp", container.VERSION, kind)
        assert meta["gpubp_version"] and meta["model"] == block
    assert blocks["estimator"] == {"sizes": [5, 4, 3], "activation": "relu", "output": "softmax",
                                   "dtype": "float64", "alpha": 1e-4, "tf32": False}
    loaded, extra = load_model(folder / "model.npz", backend="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
    assert extra["classes"].tolist() == ["a", "b", "c"]
    assert read_checkpoint(folder / "checkpoint.npz").kind == "checkpoint"
    np.testing.assert_array_equal(load_estimator(folder / "estimator.npz").predict_proba(X), est.predict_proba(X))


LOADERS = {"model": lambda p: load_model(p, backend="cpu"), "checkpoint": read_checkpoint,
           "estimator": load_estimator, "estimator_checkpoint": lambda p: container.read(p, "estimator_checkpoint")}
SAYS = {"model": "a gpubp model file", "checkpoint": "a checkpoint", "estimator": "a saved estimator",
        "estimator_checkpoint": "a checkpoint of an estimator's fit"}
HOW = {"model": "gpubp.load_model", "checkpoint": "resume=path", "estimator": "gpubp.load_estimator",
       "estimator_checkpoint": "checkpoint=path and resume=True"}


@pytest.mark.parametrize("found, wanted", [(f, w) for f in container.KINDS for w in container.KINDS if f != w])
def test_a_file_of_another_kind_is_refused_with_how_to_load_it(files, found, wanted):
    path = files[0] / f"{found}.npz"
    with pytest.raises(DataError) as caught:
        LOADERS[wanted](path)
    message = str(caught.value)
    assert message.startswith(f"{path} is {SAYS[found]}, not {SAYS[wanted]}: ")
    assert HOW[found] in message


def _last_data_byte(path, member: str) -> int:
    """Offset in the archive of the last byte of ``member``'s stored data (a flipped bit there
    changes a value; a bit of a header's optional field may not matter to a reader)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    raw = path.read_bytes()
    name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    return info.header_offset + 30 + name_length + extra_length + info.compress_size - 1


@pytest.mark.parametrize("kind", container.KINDS)
def test_a_corrupted_byte_is_refused_naming_the_file(files, tmp_path, kind):
    raw = bytearray((files[0] / f"{kind}.npz").read_bytes())
    raw[_last_data_byte(files[0] / f"{kind}.npz", "param_1.npy")] ^= 0x01  # a bit of a stored value
    damaged = tmp_path / f"damaged-{kind}.npz"
    damaged.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"^{re.escape(str(damaged))}: (truncated or corrupted|checksum mismatch)"):
        LOADERS[kind](damaged)
    # a changed array that zip accepts (written again whole): the checksum catches it
    with np.load(files[0] / f"{kind}.npz") as f:
        entries = dict(f)
    entries["param_0"] = entries["param_0"] + 1e-12
    np.savez(tmp_path / "changed.npz", **entries)
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'changed.npz'))}: checksum mismatch"):
        LOADERS[kind](tmp_path / "changed.npz")


def test_a_newer_or_unknown_file_is_refused(files, tmp_path):
    c = read_checkpoint(files[0] / "checkpoint.npz")
    write_with_meta(tmp_path / "newer.npz", {**c.meta, "version": container.VERSION + 1, "gpubp_version": "9.0"},
                    c.arrays)
    with pytest.raises(DataError, match=rf"format version {container.VERSION + 1}, written by gpubp 9.0; this gpubp \(.*\) reads "
                                        rf"versions up to {container.VERSION}: upgrade gpubp"):
        read_checkpoint(tmp_path / "newer.npz")
    write_with_meta(tmp_path / "kind.npz", {**c.meta, "kind": "tokenizer"}, c.arrays)
    with pytest.raises(DataError, match="unknown kind 'tokenizer'"):
        read_checkpoint(tmp_path / "kind.npz")
    write_with_meta(tmp_path / "other.npz", {**c.meta, "format": "someone-else"}, c.arrays)
    with pytest.raises(DataError, match="not a gpubp file"):
        read_checkpoint(tmp_path / "other.npz")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DataError, match=r"not a gpubp file \(not an \.npz archive: it starts with b'\\x93NUM'\)"):
        read_checkpoint(tmp_path / "plain.npy")


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_file_that_is_no_npz_archive_is_refused_as_not_gpubps(tmp_path, kind):
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(DataError, match=rf"^{re.escape(str(png))}: not a gpubp file \(not an \.npz archive") as caught:
        LOADERS[kind](png)
    assert "pickle" not in str(caught.value)


def test_writing_refuses_objects_reserved_names_and_a_missing_model_block(tmp_path):
    net = new_net()
    with pytest.raises(ValueError, match="'extra_labels' holds Python objects"):
        save_model(net, tmp_path / "m.npz", extra={"labels": np.array([1, "a"], dtype=object)})
    with pytest.raises(ValueError, match="'checksum' is reserved"):
        container.write(tmp_path / "m.npz", "model", {"model": {}}, {"checksum": np.zeros(1)})
    with pytest.raises(ValueError, match="model block"):
        container.write(tmp_path / "m.npz", "checkpoint", {}, {})
    with pytest.raises(ValueError, match="unknown kind 'run'"):
        container.write(tmp_path / "m.npz", "run", {"model": {}}, {})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    X, y = problem(n=90)
    ckpt = tmp_path / "c.npz"
    fit(new_net(), X, y, checkpoint=ckpt, checkpoint_every=1, **SETTINGS)
    before = ckpt.read_bytes()

    def savez_then_fail(f, **arrays):
        f.write(b"PK half an archive")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_fail)
    with pytest.raises(OSError, match="No space left"):
        fit(new_net(), X, y, checkpoint=ckpt, checkpoint_every=1, **SETTINGS)
    assert ckpt.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def legacy_meta(meta: dict, **model) -> dict:
    """``meta`` as gpubp 0.1 wrote it: format "gpubp-checkpoint" version 2, no kind."""
    old = {k: v for k, v in meta.items() if k not in ("format", "version", "kind")}
    return {"format": "gpubp-checkpoint", "version": 2, **old, "model": model}


def test_a_checkpoint_of_format_2_resumes_as_the_new_one(tmp_path):
    X, y = problem(n=90)
    ckpt = tmp_path / "c.npz"
    fit(new_net(), X, y, checkpoint=ckpt, checkpoint_every=1, callbacks=[lambda e, logs: e == 1], **SETTINGS)
    c = read_checkpoint(ckpt)
    old_block = {k: c.meta["model"][k] for k in ("sizes", "activation", "dtype", "alpha", "tf32")}
    write_with_meta(tmp_path / "old.npz", legacy_meta(c.meta, **old_block), c.arrays)
    old = read_checkpoint(tmp_path / "old.npz")
    assert old.kind == "checkpoint" and old.meta["model"] == c.meta["model"]  # output: softmax
    a, b = new_net(), new_net()
    fit(a, X, y, resume=ckpt, **SETTINGS)
    fit(b, X, y, resume=tmp_path / "old.npz", **SETTINGS)
    for pa, pb in zip(a.params, b.params):
        np.testing.assert_array_equal(pa, pb)


def test_an_estimator_saved_by_gpubp_0_1_loads(files, tmp_path):
    folder, _, est, X = files
    saved = container.read(folder / "estimator.npz", "estimator")
    old = legacy_meta(saved.meta, sizes=[5, 4, 3], dtype="float64")  # 0.1 recorded only these
    write_with_meta(tmp_path / "old.npz", old, saved.arrays)
    loaded = load_estimator(tmp_path / "old.npz", device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    assert loaded.get_params() == est.get_params()
    old_file = re.escape(str(tmp_path / "old.npz"))
    with pytest.raises(DataError, match=f"{old_file} is a saved estimator, not a checkpoint"):
        read_checkpoint(tmp_path / "old.npz")


def test_an_estimator_set_to_a_device_this_machine_lacks_still_saves(tmp_path):
    """The model block of a saved estimator comes from its fitted attributes, not from a network
    on its device (a model fitted on a GPU machine, unpickled on a CPU one, can be saved)."""
    import warnings

    from gpubp import MLPClassifier, load_estimator

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4)), rng.integers(0, 3, 40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier((5,), max_iter=3, device="cpu", random_state=0).fit(X, y)
    clf.set_params(device="cuda")
    clf.save(tmp_path / "e.npz")
    loaded = load_estimator(tmp_path / "e.npz", device="cpu")
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.set_params(device="cpu").predict_proba(X))
