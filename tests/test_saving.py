"""save_model / load_model: round trip, atomic writes, refusal of bad files, and model files
of gpubp 0.1 (before the one container) still load."""

import errno
import os
import stat
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpubp import MLP, DataError, load_model, save_model
from gpubp import container

from .legacy_files import legacy_model_arrays


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
    with np.load(path, allow_pickle=False) as f:  # the container: meta, parameters, extras, checksum
        assert sorted(f.files) == ["checksum", "extra_classes", "meta", "param_0", "param_1", "param_2",
                                   "param_3"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"old model")

    def explode(f):
        f.write(b"half a model")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        container.atomic_write(path, explode)
    assert path.read_bytes() == b"old model"
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_bad_files_are_refused(tmp_path):
    net = MLP([3, 2], backend="cpu", seed=0)
    good = save_model(net, tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match=f"{re.escape(str(truncated))}: truncated or corrupted, not readable as a gpubp"):
        load_model(truncated, backend="cpu")
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, X=np.zeros(3))
    with pytest.raises(DataError, match=r"not a gpubp file \(it holds \['X'\]\); expected a gpubp model file"):
        load_model(foreign, backend="cpu")
    old = legacy_model_arrays(net)
    np.savez(tmp_path / "future.npz", **{**old, "format_version": np.array(99)})
    with pytest.raises(DataError, match="model file format version 99"):
        load_model(tmp_path / "future.npz", backend="cpu")
    np.savez(tmp_path / "broken.npz", **{**old, "W0": np.zeros((5, 5), np.float32)})
    with pytest.raises(DataError, match=r"parameter 0 is float32 \(5, 5\), the model 3-2 float32 needs"):
        load_model(tmp_path / "broken.npz", backend="cpu")
    np.savez(tmp_path / "settings.npz", **{**old, "activation": np.array("swish")})
    with pytest.raises(DataError, match="inconsistent gpubp model file .*unknown activation 'swish'"):
        load_model(tmp_path / "settings.npz", backend="cpu")
    with pytest.raises(DataError, match="no gpubp model file at"):
        load_model(tmp_path / "missing.npz", backend="cpu")
    with pytest.raises(ValueError, match="does not exist"):
        save_model(net, tmp_path / "no" / "such" / "m.npz")


@pytest.mark.parametrize("tf32", [None, True])
def test_a_model_file_of_gpubp_0_1_loads(tmp_path, rng, tf32):
    net = MLP([5, 4, 3], "relu", backend="cpu", dtype="float32", seed=3, alpha=0.5, tf32=bool(tf32))
    arrays = legacy_model_arrays(net, extra={"input_mean": np.arange(5.0)})
    if tf32 is not None:
        arrays["tf32"] = np.array(tf32)
    np.savez(tmp_path / "old.npz", **arrays)
    loaded, extra = load_model(tmp_path / "old.npz", backend="cpu")
    assert repr(loaded) == repr(net) and loaded.alpha == 0.5
    X = rng.normal(size=(6, 5)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), net.predict_proba(X))
    np.testing.assert_array_equal(extra["input_mean"], np.arange(5.0))


def test_a_folder_at_the_path_is_refused_before_anything_is_written(tmp_path):
    net = MLP([3, 2], backend="cpu", seed=0)
    (tmp_path / "adir").mkdir()
    with pytest.raises(ValueError, match=f"{re.escape(str(tmp_path / 'adir'))}: it is a folder"):
        save_model(net, tmp_path / "adir")
    assert [p.name for p in tmp_path.iterdir()] == ["adir"]


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_a_folder_that_takes_no_files_gives_an_os_error_naming_the_file():
    with pytest.raises(OSError, match="could not write /proc/m.npz: "):
        save_model(MLP([3, 2], backend="cpu", seed=0), "/proc/m.npz")


def test_a_failed_rename_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    path.write_bytes(b"old model")

    def busy(src, dst):
        raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), src, None, dst)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(OSError, match=f"could not write {re.escape(str(path))}: Device or resource busy") as caught:
        container.atomic_write(path, lambda f: f.write(b"new model"))
    assert caught.value.errno == errno.EBUSY
    assert path.read_bytes() == b"old model" and [p.name for p in tmp_path.iterdir()] == ["m.npz"]


def test_saving_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target, link = tmp_path / "real" / "m.npz", tmp_path / "link.npz"
    save_model(MLP([3, 2], backend="cpu", seed=0), target)
    link.symlink_to(target)
    save_model(MLP([3, 4, 2], backend="cpu", seed=0), link)
    assert link.is_symlink() and load_model(target, backend="cpu")[0].sizes == [3, 4, 2]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["link.npz", "m.npz", "real"]  # no temporary file


def test_a_second_writer_of_the_same_path_in_this_process_keeps_the_first_ones_file(tmp_path):
    path = tmp_path / "c.npz"

    def first(f):
        f.write(b"first")
        container.atomic_write(path, lambda g: g.write(b"second"))  # e.g. another thread, meanwhile

    container.atomic_write(path, first)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


WRITER = """
import os, sys
from gpubp.container import atomic_write

def write(f):
    f.write(b"other")
    f.flush()
    print("writing", flush=True)
    if sys.argv[2] == "die":
        os._exit(3)  # killed mid-write: no clean-up
    sys.stdin.readline()

atomic_write(sys.argv[1], write)
"""


def _other_writer(path, how):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), how], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdout.readline() == "writing\n"
    return writer


def test_a_live_writer_in_another_process_keeps_its_temporary_file(tmp_path):
    path = tmp_path / "c.npz"
    writer = _other_writer(path, "wait")
    try:
        container.atomic_write(path, lambda f: f.write(b"mine"))
        assert path.read_bytes() == b"mine" and len(list(tmp_path.iterdir())) == 2  # the other's temporary
    finally:
        writer.communicate("\n", timeout=60)
    assert writer.returncode == 0, "the other writer lost its temporary file"
    assert path.read_bytes() == b"other" and [p.name for p in tmp_path.iterdir()] == ["c.npz"]


def test_temporary_files_untouched_for_an_hour_are_removed_by_the_next_write(tmp_path):
    """A killed writer's temporary file goes once an hour has passed without a write to it (the
    next write removes it); a recent one stays (whether its writer runs cannot be told from its
    pid: another container of the same host name may write there), and so does a file that only
    looks like one (.c.npz.bak.tmp is not a name gpubp gives)."""
    path = tmp_path / "c.npz"
    writer = _other_writer(path, "die")
    assert writer.wait(timeout=60) == 3
    (killed,) = tmp_path.iterdir()
    old, recent = tmp_path / ".c.npz.k2j4h5gf.tmp", tmp_path / ".c.npz.x8s9d7fa.tmp"  # no host or pid: named as before
    other = tmp_path / ".c.npz.bak.tmp"
    for temp in (old, recent, other):
        temp.write_bytes(b"x")
    container.atomic_write(path, lambda f: f.write(b"mine"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([killed.name, old.name, recent.name, other.name, "c.npz"])
    for temp in (killed, old, other):
        os.utime(temp, (time.time() - 2 * 3600,) * 2)
    container.atomic_write(path, lambda f: f.write(b"again"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([recent.name, other.name, "c.npz"])


def test_a_written_file_has_the_permissions_the_umask_gives(tmp_path):
    """The temporary file is created with mode 0o666 less the umask (the kernel applies it), as any
    new file: no umask is changed to read it (a process-wide race under threads)."""
    old = os.umask(0o027)
    try:
        container.atomic_write(tmp_path / "m.npz", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o640
