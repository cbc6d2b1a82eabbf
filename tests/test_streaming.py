"""Training on data that do not fit: batches streamed from the host, and memory-mapped .npy folders.

Every streamed run is compared bitwise (losses and parameters) with the same run on the resident
path, on the cpu backend and on the CuPy stand-in (tests/fake_cupy_arrays.py), whose side-stream
copies arrive only when waited for and whose pinned buffers refuse to be rewritten while a copy
out of them may run: a pipeline that uses a buffer too early, or swaps the wrong one, fails here.
"""

import os
import signal
import warnings

import numpy as np
import pytest

import gpubp
from gpubp import MLP, fit, npy_folder, rows, to_numpy
from gpubp.data import Dataset, load_dataset, split, standardize
from gpubp.errors import DataError
from gpubp.rows import HostRows
from gpubp.engine import Engine

from . import fake_cupy_arrays
from .conftest import STAND_IN
from .test_cli import assert_one_line_error, gpubp as run_cli


SETTINGS = dict(epochs=3, batch_size=16, optimizer="adam", lr=0.01, validation_fraction=0.2, seed=5)


def write_folder(folder, n=150, d=7, classes=3, seed=0, dtype=np.float32):
    """X.npy (n, d) Gaussian clusters and y.npy (n,) int64 labels in ``folder``; returns (X, y)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = (rng.normal(scale=2, size=(classes, d))[y] + rng.normal(size=(n, d))).astype(dtype)
    folder.mkdir(exist_ok=True)
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", y)
    return X, y


def train(device, X, y, dtype="float32", **settings):
    net = MLP([7, 12, 3], "tanh", device, dtype, seed=2)
    history = fit(net, X, y, **{**SETTINGS, **settings})
    return [to_numpy(p) for p in net.params], history


def assert_bitwise(a, b):
    (params_a, history_a), (params_b, history_b) = a, b
    assert history_a.train_loss == history_b.train_loss and history_a.val_loss == history_b.val_loss
    for i, (p, q) in enumerate(zip(params_a, params_b)):
        assert np.array_equal(p, q), f"parameter {i} differs by up to {np.abs(p - q).max():.3e}"


@pytest.fixture
def small_chunks(monkeypatch):
    """Checks, statistics and fingerprints read 3 rows of 7 float32 at a time: many chunks."""
    monkeypatch.setattr(rows, "CHUNK_BYTES", 3 * 7 * 4)
    monkeypatch.setattr(npy_folder, "CHUNK_BYTES", 3 * 8)


# ----------------------------------------------------------------------------- bitwise equal

@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_streamed_and_memory_mapped_runs_equal_the_resident_run_on_cpu(tmp_path, small_chunks, dtype):
    X, y = write_folder(tmp_path / "d")
    resident = train("cpu", X, y, dtype)
    folder, _ = load_dataset(str(tmp_path / "d"))
    assert isinstance(folder.X, HostRows) and folder.X.mapped
    assert_bitwise(train("cpu", X, y, dtype, stream=True), resident)
    assert_bitwise(train("cpu", folder.X, folder.y, dtype), resident)
    assert_bitwise(train("cpu", np.load(tmp_path / "d" / "X.npy", mmap_mode="r"), y, dtype), resident)


def test_streamed_runs_equal_the_resident_run_on_the_cupy_stand_in(fake_cupy, tmp_path, monkeypatch):
    X, y = write_folder(tmp_path / "d")
    live = []  # device buffer shapes after each epoch
    record = lambda epoch, logs: live.append({s for s, _, _ in fake_cupy.memory.live.values()})  # noqa: E731
    resident = train("cuda", X, y, callbacks=[record])
    assert (120, 7) in live[-1] and not fake_cupy.pinned  # the training set went over once, no pinning
    live.clear()
    assert_bitwise(train("cuda", X, y, stream=True, callbacks=[record]), resident)
    assert (120, 7) not in live[-1] and (16, 7) in live[-1]  # two batch buffers, not the set
    assert sorted(fake_cupy.pinned) == [16 * 8] * 2 + [16 * 7 * 4] * 2  # two pinned y and X buffers
    folder, _ = load_dataset(str(tmp_path / "d"))
    assert_bitwise(train("cuda", folder.X, folder.y), resident)
    monkeypatch.setattr(gpubp.backend.Backend, "fits", lambda self, nbytes: False)  # a card too small
    assert_bitwise(train("cuda", X, y), resident)  # streamed without being asked


def test_a_bfloat16_network_keeps_its_resident_set_in_bfloat16_and_trains_as_streamed(fake_cupy, tmp_path,
                                                                                      monkeypatch):
    """The resident set is rounded to bfloat16 once, when placed: half the device bytes of float32
    (asked of the card as such), and the same numbers in every product as the streamed batches,
    rounded at each step."""
    X, y = write_folder(tmp_path / "d")
    live, asked, fits = [], [], gpubp.backend.Backend.fits
    record = lambda epoch, logs: live.append(set(fake_cupy.memory.live.values()))  # noqa: E731
    monkeypatch.setattr(gpubp.backend.Backend, "fits", lambda self, nbytes: asked.append(nbytes) or fits(self, nbytes))
    resident = train("cuda", X, y, "bfloat16", callbacks=[record])
    assert asked[0] == 120 * 7 * 2  # the training rows' bytes in bfloat16
    placed = [(dtype, size) for shape, dtype, size in live[-1] if shape == (120, 7)]
    assert [dtype for dtype, _ in placed] == ["bfloat16"]  # one copy of the training rows, in bfloat16
    assert_bitwise(train("cuda", X, y, "bfloat16", stream=True), resident)


def test_the_stand_in_delivers_side_stream_copies_only_when_waited_for(fake_cupy):
    cp = fake_cupy
    side = cp.cuda.Stream(non_blocking=True)
    pinned = np.ndarray((4,), np.float64, buffer=cp.cuda.alloc_pinned_memory(32))
    pinned[:] = 1.0
    device, ready = cp.zeros(4), cp.cuda.Event(disable_timing=True)
    device.set(pinned, stream=side)
    ready.record(side)
    assert float(device.sum()) == 0  # not waited for: the old contents
    cp.cuda.get_current_stream().wait_event(ready)
    assert float(device.sum()) == 4
    device.set(pinned, stream=side)
    pinned[:] = 2.0  # the host has not seen that copy finish
    with pytest.raises(fake_cupy_arrays.PinnedCopyRace, match="pinned host buffer"):
        ready.record(side)


# ----------------------------------------------------------------------------- resume

@pytest.mark.parametrize("device", ["cpu", STAND_IN])
def test_a_streamed_run_stopped_mid_epoch_resumes_bitwise(request, tmp_path, monkeypatch, device):
    if device == "cuda":
        request.getfixturevalue("fake_cupy")
    X, y = write_folder(tmp_path / "d")
    folder, _ = load_dataset(str(tmp_path / "d"))
    whole = train(device, X, y)  # resident, uninterrupted
    steps, real_step = [], Engine.step

    def step_then_signal(self, *args):
        loss = real_step(self, *args)
        steps.append(1)
        if len(steps) == 11:  # epoch 2, step 3 of 8
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(Engine, "step", step_then_signal)
    ckpt = tmp_path / "c.npz"
    with pytest.raises(gpubp.TrainingInterrupted):
        train(device, folder.X, folder.y, checkpoint=ckpt)
    monkeypatch.setattr(Engine, "step", real_step)
    state = gpubp.read_checkpoint(ckpt).meta["state"]
    assert (state["epoch"], state["position"]) == (1, 3 * 16)
    net = MLP([7, 12, 3], "tanh", device, "float32", seed=2)
    history = fit(net, folder.X, folder.y, resume=ckpt, **SETTINGS)
    assert_bitwise(([to_numpy(p) for p in net.params], history), whole)


def test_the_chunked_fingerprint_equals_the_in_memory_one(tmp_path, small_chunks):
    X, y = write_folder(tmp_path / "d")
    folder, _ = load_dataset(str(tmp_path / "d"))
    for dtype in ("float32", "float64"):
        assert rows.fingerprint(folder.X, y, dtype) == rows.fingerprint(X.astype(dtype), y, dtype)
    part = folder.X.subset(np.array([5, 2, 9]))
    assert rows.fingerprint(part, y[:3], "float32") == rows.fingerprint(X[[5, 2, 9]], y[:3], "float32")


def test_a_chunk_holds_at_most_chunk_bytes_in_the_dtype_it_is_read_in(tmp_path, monkeypatch):
    # a uint8 folder read as float64 (standardizing it) took CHUNK_BYTES of uint8 rows a block,
    # eight times CHUNK_BYTES once converted; every block stays within CHUNK_BYTES read either way
    monkeypatch.setattr(rows, "CHUNK_BYTES", 7 * 8 * 10)
    X = np.random.default_rng(0).integers(0, 256, (95, 7)).astype(np.uint8)
    (tmp_path / "d").mkdir()
    np.save(tmp_path / "d" / "X.npy", X)
    np.save(tmp_path / "d" / "y.npy", np.arange(95) % 3)
    folder, _ = load_dataset(str(tmp_path / "d"))
    for dtype in (None, np.float32, np.float64):  # 80, 20 and 10 rows a block
        blocks = list(folder.X.chunks(dtype))
        assert max(block.nbytes for _, block in blocks) == rows.CHUNK_BYTES
        np.testing.assert_array_equal(np.concatenate([block for _, block in blocks]), X.astype(dtype or X.dtype))
    scaled = folder.X.scaled(np.zeros(7), np.ones(7))  # read as float64 whatever the file holds
    assert max(block.nbytes for _, block in scaled.chunks()) == rows.CHUNK_BYTES


def test_split_and_standardize_of_a_folder_read_rows_not_the_file(tmp_path, small_chunks):
    X, y = write_folder(tmp_path / "d", dtype=np.float64)
    folder, _ = load_dataset(str(tmp_path / "d"))
    train_set, test_set = split(folder, 0.2, seed=3)
    in_memory = split(Dataset(X, y, folder.classes), 0.2, seed=3)
    assert isinstance(train_set.X, HostRows) and isinstance(test_set.X, HostRows)
    np.testing.assert_array_equal(train_set.X.take(np.arange(len(train_set))), in_memory[0].X)
    np.testing.assert_array_equal(test_set.X.take(np.arange(len(test_set))), in_memory[1].X)
    scaler, (scaled, scaled_test) = standardize(train_set, test_set)
    expected_scaler, (expected, _) = standardize(*in_memory)
    np.testing.assert_allclose(scaler.mean_, expected_scaler.mean_, rtol=1e-13)
    np.testing.assert_allclose(scaler.scale_, expected_scaler.scale_, rtol=1e-13)
    np.testing.assert_allclose(scaled.X.take(np.arange(len(scaled))), expected.X, rtol=1e-12, atol=1e-12)
    idx = np.array([7, 0, 3])
    np.testing.assert_array_equal(scaled.X.take(idx), (train_set.X.take(idx) - scaler.mean_) / scaler.scale_)


class CountingMemmap(np.memmap):
    """A memory-mapped array that records the number of rows of each read by indexing."""

    reads: list = []

    def __getitem__(self, index):
        got = super().__getitem__(index)
        if isinstance(got, np.ndarray) and got.ndim == 2:
            CountingMemmap.reads.append(got.shape[0])
            return got.view(np.ndarray)
        return got


@pytest.mark.parametrize("device", ["cpu", STAND_IN, pytest.param("card", marks=pytest.mark.gpu)])
def test_the_test_part_of_a_folder_is_evaluated_batch_by_batch_from_the_file(tmp_path, request, device):
    """split + standardize of a folder leave the test part in the file; evaluate and predict read
    it a batch at a time, every row once, and give exactly what the rows in memory give (on the
    cpu backend, on the CuPy stand-in as a card would run it, and on a card)."""
    if device == "cuda":
        request.getfixturevalue("fake_cupy")
    device = "cuda" if device == "card" else device
    X, y = write_folder(tmp_path / "d", n=300)
    folder, _ = load_dataset(str(tmp_path / "d"))
    folder.X.X = folder.X.X.view(CountingMemmap)
    CountingMemmap.reads = []
    scaler, (train_set, test_set) = standardize(*split(folder, 0.3, seed=1))
    assert CountingMemmap.reads == [len(train_set)]  # the scaler's one chunk of training rows; no test row
    in_memory = test_set.X.take(np.arange(len(test_set)))  # (90, 7), as the old split read it
    net = MLP([7, 12, 3], "tanh", device, "float64", seed=2)
    fit(net, train_set.X, train_set.y, epochs=2, batch_size=32, seed=0)
    CountingMemmap.reads = []
    assert net.evaluate(test_set.X, test_set.y, batch_size=32) == net.evaluate(in_memory, test_set.y, batch_size=32)
    assert CountingMemmap.reads == [32, 32, 26]
    np.testing.assert_array_equal(to_numpy(net.predict_proba(test_set.X, batch_size=50)),
                                  to_numpy(net.predict_proba(in_memory, batch_size=50)))


def test_a_nan_in_a_test_row_read_from_the_file_is_named_by_its_row(tmp_path):
    """Rows of a HostRows are checked as each batch is read (in a data-parallel run rank 0 did not
    scan the other ranks' rows at start-up)."""
    X, y = write_folder(tmp_path / "d", n=100)
    X[61, 2] = np.inf
    rows_ = HostRows(X)
    net = MLP([7, 12, 3], "tanh", "cpu", "float64", seed=2)
    assert net.evaluate(rows_.subset(np.arange(60)), y[:60], batch_size=16)[0] > 0
    with pytest.raises(ValueError, match=r"X \(X\) contains NaN or infinity \(first at row 61, column 2\)"):
        net.evaluate(rows_, y, batch_size=16)
    with pytest.raises(ValueError, match="has 7 features per row but the network expects 5"):
        MLP([5, 3], "tanh", "cpu", seed=0).predict(rows_)


# ----------------------------------------------------------------------------- bad files

def bad_x_rank(folder):
    np.save(folder / "X.npy", np.zeros(150, np.float32))


def nan_in_row_100(folder):
    X = np.load(folder / "X.npy")
    X[100, 4] = np.nan
    np.save(folder / "X.npy", X)


def label_in_row_77(label, dtype=np.int64):
    """Damage: y.npy saved as ``dtype`` with ``label`` in row 77."""
    def damage(folder):
        y = np.load(folder / "y.npy").astype(dtype)
        y[77] = label
        np.save(folder / "y.npy", y)
    return damage


label_out_of_range_in_row_77 = label_in_row_77(-1)


def npz_archive_as(name):
    """``name`` (X.npy or y.npy) replaced by a zip archive of the same array, as np.savez writes."""
    def damage(folder):
        array = np.load(folder / name)
        with open(folder / name, "wb") as file:
            np.savez(file, array)
    return damage


BAD = {
    "wrong shape": (bad_x_rank, "X.npy", "expected a non-empty 2-D array (samples, features), got shape (150,)"),
    "NaN in row k": (nan_in_row_100, "X.npy", "NaN or infinity in row 100 (column 4)"),
    "label out of range": (label_out_of_range_in_row_77, "y.npy", "label -1 in row 77 is out of range"),
    "y length mismatch": (lambda f: np.save(f / "y.npy", np.zeros(149, np.int64)), "y.npy",
                          "149 labels but"),
    "float labels": (lambda f: np.save(f / "y.npy", np.zeros(150)), "y.npy", "integer class indices"),
    "missing file": (lambda f: (f / "y.npy").unlink(), "y.npy", "no such file"),
    "not a .npy file": (lambda f: (f / "X.npy").write_bytes(b"not numpy"), "X.npy",
                        "not a .npy file: its first bytes are b'not nu', not the .npy magic string"),
    "X.npy an .npz archive": (npz_archive_as("X.npy"), "X.npy", "not a .npy file: a zip archive (.npz"),
    "y.npy an .npz archive": (npz_archive_as("y.npy"), "y.npy", "not a .npy file: a zip archive (.npz"),
    "label 10**9": (label_in_row_77(10**9), "y.npy", "label 1000000000 in row 77 implies 1000000001 classes"),
    "label 2**62": (label_in_row_77(2**62), "y.npy", f"label {2**62} in row 77 implies {2**62 + 1} classes"),
    "label MAX_CLASSES": (label_in_row_77(npy_folder.MAX_CLASSES), "y.npy",
                          f"implies {npy_folder.MAX_CLASSES + 1} classes (labels are class indices 0..C-1), more "
                          f"than the {npy_folder.MAX_CLASSES} allowed"),
    "uint64 label above int64": (label_in_row_77(2**64 - 1, np.uint64), "y.npy",
                                 f"label {2**64 - 1} in row 77 implies {2**64} classes"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_folders_give_errors_naming_the_file_and_the_problem(tmp_path, small_chunks, case):
    damage, file, fragment = BAD[case]
    write_folder(tmp_path / "d")
    damage(tmp_path / "d")
    with pytest.raises(DataError) as caught:
        load_dataset(str(tmp_path / "d"))
    assert str(tmp_path / "d" / file) in str(caught.value) and fragment in str(caught.value), str(caught.value)


def test_the_largest_label_allowed_gives_max_classes_classes(tmp_path, small_chunks):
    write_folder(tmp_path / "d")
    label_in_row_77(npy_folder.MAX_CLASSES - 1, np.uint32)(tmp_path / "d")
    folder, _ = load_dataset(str(tmp_path / "d"))
    assert folder.n_classes == npy_folder.MAX_CLASSES and folder.y[77] == npy_folder.MAX_CLASSES - 1
    assert folder.y.dtype == np.int64


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="lists open files through /proc")
def test_an_npz_archive_as_x_npy_is_left_closed(tmp_path):
    write_folder(tmp_path / "d")
    npz_archive_as("X.npy")(tmp_path / "d")
    with pytest.raises(DataError, match="not a .npy file"):
        load_dataset(str(tmp_path / "d"))
    open_files = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    assert str((tmp_path / "d" / "X.npy").resolve()) not in open_files


def test_a_column_too_large_to_standardize_is_named_without_warnings(tmp_path, small_chunks):
    """A float64 column of +-1e308, all finite: its mean and variance overflow, whether the rows are
    memory-mapped or in memory; the column is named and NumPy's overflow warnings stay quiet."""
    X, y = write_folder(tmp_path / "d", dtype=np.float64)
    X[:, 2] = np.where(np.arange(len(X)) % 2, 1e308, -1e308)
    np.save(tmp_path / "d" / "X.npy", X)
    folder, _ = load_dataset(str(tmp_path / "d"))
    for data in (folder, Dataset(X, y, folder.classes, "in memory")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match=r"the values in column 2 of X are too large to standardize"):
                standardize(*split(data, 0.2, seed=0))


def test_fit_checks_a_memmap_chunk_by_chunk(tmp_path, small_chunks):
    X, y = write_folder(tmp_path / "d")
    X[90, 1] = np.inf
    np.save(tmp_path / "d" / "X.npy", X)
    with pytest.raises(ValueError, match=r"X\.npy\) contains NaN or infinity \(first at row 90, column 1\)"):
        train("cpu", np.load(tmp_path / "d" / "X.npy", mmap_mode="r"), y)
    with pytest.raises(ValueError, match="stream must be True or False"):
        train("cpu", X, y, stream="yes")


# ----------------------------------------------------------------------------- the command

def test_the_command_trains_on_a_folder_streamed_and_refuses_a_bad_one(tmp_path):
    write_folder(tmp_path / "d", n=400)
    result = run_cli("train", "--dataset", str(tmp_path / "d"), "--stream", "--epochs", "8", "--lr", "0.01",
                     "--quiet", "--out", str(tmp_path / "m.npz"))
    assert result.returncode == 0, result.stderr
    assert "320 train / 80 test samples, 7 features, 3 classes (memory-mapped" in result.stdout
    assert float(result.stdout.splitlines()[-2].split()[-1]) > 0.8, result.stdout  # test accuracy
    label_out_of_range_in_row_77(tmp_path / "d")
    assert_one_line_error(run_cli("train", "--dataset", str(tmp_path / "d"), "--stream"),
                          str(tmp_path / "d" / "y.npy"), "label -1 in row 77 is out of range")


def test_the_command_refuses_an_archive_a_huge_label_and_an_overflowing_column_in_one_line(tmp_path):
    X, _ = write_folder(tmp_path / "d", dtype=np.float64)
    for damage, file, fragment in [
        (npz_archive_as("X.npy"), "X.npy", "not a .npy file: a zip archive"),
        (label_in_row_77(10**9), "y.npy", "label 1000000000 in row 77 implies 1000000001 classes"),
        (lambda f: np.save(f / "X.npy", np.where(np.arange(X.size).reshape(X.shape) % 2, 1e308, -1e308)), "",
         "column 0 of X are too large to standardize"),
    ]:
        write_folder(tmp_path / "d", dtype=np.float64)
        damage(tmp_path / "d")
        assert_one_line_error(run_cli("train", "--dataset", str(tmp_path / "d"), "--quiet", "--device", "cpu"),
                              str(tmp_path / "d" / file), fragment)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_runs_equal_the_resident_run_on_a_gpu(tmp_path, dtype):
    X, y = write_folder(tmp_path / "d", n=600)
    resident = train("cuda", X, y, dtype)
    assert_bitwise(train("cuda", X, y, dtype, stream=True), resident)
    folder, _ = load_dataset(str(tmp_path / "d"))
    assert_bitwise(train("cuda", folder.X, folder.y, dtype), resident)


@pytest.mark.parametrize("device", ["cpu", STAND_IN, pytest.param("card", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("output", ["identity", "logistic"])
def test_streamed_float_targets_train_bitwise_as_resident_ones(tmp_path, request, device, output):
    """Targets (n, k) of floats ride the pinned double buffers in place of int64 labels: a
    regression (identity) and a multi-label (logistic) output stream as they train resident."""
    if device == "cuda":
        request.getfixturevalue("fake_cupy")
    device = "cuda" if device == "card" else device
    X, labels = write_folder(tmp_path / "d", n=200)
    targets = np.eye(3)[labels] if output == "logistic" else X[:, :3] * 0.5 + labels[:, None]  # (200, 3)
    runs = []
    for stream in (False, True):
        net = MLP([7, 12, 3], "relu", device, "float32", seed=2, output=output)
        history = fit(net, X, targets, **{**SETTINGS, "stream": stream})
        runs.append(([to_numpy(p) for p in net.params], history))
    assert_bitwise(*runs)


@pytest.mark.parametrize("device", [pytest.param("stand-in", marks=pytest.mark.cupy_stand_in),
                                    pytest.param("card", marks=pytest.mark.gpu)])
def test_cupys_own_errors_say_which_memory_ran_out_and_a_streamed_fit_names_pinned_memory(tmp_path, request,
                                                                                          monkeypatch, device):
    """gpubp.backend.memory_failure on CuPy's classes themselves (the stand-in's copies of them
    here, the real ones on a card): cudaHostAlloc's failure, as CuPy's pinned pool lets it out, is
    "pinned"; so a streamed fit whose pinned buffers cannot be had raises DeviceMemoryError saying
    so, and half the batch trains."""
    from gpubp import DeviceMemoryError
    from gpubp.backend import memory_failure

    if device == "stand-in":
        request.getfixturevalue("fake_cupy")
    import cupy

    assert memory_failure(cupy.cuda.runtime.CUDARuntimeError(2)) == "pinned"  # cudaErrorMemoryAllocation
    assert memory_failure(cupy.cuda.runtime.CUDARuntimeError(1)) is None  # cudaErrorInvalidValue
    assert memory_failure(cupy.cuda.memory.OutOfMemoryError(512, 1024, 2048)) == "device"
    real = cupy.cuda.alloc_pinned_memory

    def alloc_pinned_memory(nbytes):  # page-locked memory for one 128-row batch of X at most
        if nbytes > 128 * 20 * 4:
            raise cupy.cuda.runtime.CUDARuntimeError(2)
        return real(nbytes)

    monkeypatch.setattr(cupy.cuda, "alloc_pinned_memory", alloc_pinned_memory)
    X, y = write_folder(tmp_path / "d", n=512, d=20, classes=5)
    with pytest.raises(DeviceMemoryError, match=r"out of pinned \(page-locked\) host memory .* batch size 256"):
        fit(MLP([20, 16, 5], "relu", backend="cuda", dtype="float32", seed=0), X, y, epochs=1, batch_size=256,
            stream=True, seed=0)
    history = fit(MLP([20, 16, 5], "relu", backend="cuda", dtype="float32", seed=0), X, y, epochs=1, batch_size=128,
                  stream=True, seed=0)
    assert history.epochs == 1 and np.isfinite(history.train_loss[-1])


def test_a_memmap_that_is_not_2d_is_refused_clearly(tmp_path):
    from gpubp import MLP, fit

    np.save(tmp_path / "flat.npy", np.zeros(12, np.float32))
    with pytest.raises(ValueError, match=r"flat.npy must be 2-D \(samples, features\), got shape \(12,\)"):
        fit(MLP([3, 4, 2], backend="cpu", seed=0), np.load(tmp_path / "flat.npy", mmap_mode="r"), np.zeros(12, int),
            epochs=1)
