"""Start-up checks and the fingerprint of training data computed in parts, one per rank
(gpubp.data_parts, gpubp issue 13), with ranks played by threads of this process: each rank reads
about n / R rows of a memory-mapped X, the ranks together compute what one process computes alone,
and a rank whose data differ, or whose rows hold a NaN, makes every rank raise."""

import threading

import numpy as np
import pytest

from gpubp import data_parts, rows
from gpubp.communicator import failing_together
from gpubp.data_parts import BLOCK_ROWS, DataPart, block_fingerprint, own_rows
from gpubp.errors import RankFailedError
from gpubp.rows import HostRows

from .test_distributed import ThreadRanks

N, D = 5 * BLOCK_ROWS + 17, 5  # 6 blocks, the last of 17 rows


class ThreadCountingMemmap(np.memmap):
    """A memory-mapped array that counts, per thread, the rows read from it by indexing."""

    reads: dict = {}

    def __getitem__(self, index):
        got = super().__getitem__(index)
        if isinstance(got, np.ndarray):
            me = threading.get_ident()
            ThreadCountingMemmap.reads[me] = ThreadCountingMemmap.reads.get(me, 0) + (got.shape[0] if got.ndim == 2 else 1)
            return got.view(np.ndarray)
        return got


_HEADER_LOCK = threading.Lock()


def counting_map(path):
    """X of the .npy file ``path`` memory-mapped as a ThreadCountingMemmap, opened by one thread at
    a time: np.load parses the header with ast.literal_eval, which CPython 3.11 can fail when
    threads call it at once (SystemError "AST constructor recursion depth mismatch", seen once)."""
    with _HEADER_LOCK:
        return np.load(path, mmap_mode="r").view(ThreadCountingMemmap)


def on_threads(R: int, work):
    """work(comm) on R threads as R ranks (comm: rank r of R); returns their results or errors."""
    shared, results = {"barrier": threading.Barrier(R, timeout=120)}, [None] * R  # generous: CI's 2 cores run two suites

    def rank(r):
        try:
            results[r] = work(ThreadRanks(shared, r, R))
        except Exception as exc:  # noqa: BLE001 - returned to the test
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(R)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return results


@pytest.fixture
def mapped(tmp_path, monkeypatch):
    """(X in memory (N, D) float64, X.npy's path, y (N,)); chunks of 1000 rows: several per block."""
    monkeypatch.setattr(rows, "CHUNK_BYTES", 1000 * D * 8)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(N, D)), rng.integers(0, 3, N)
    np.save(tmp_path / "X.npy", X)
    return X, tmp_path / "X.npy", y


@pytest.mark.parametrize("n,R", [(N, 3), (N, 2), (N, 7), (BLOCK_ROWS, 2), (1, 4), (6 * BLOCK_ROWS, 4)])
def test_own_rows_split_the_blocks_over_the_ranks(n, R):
    parts = [own_rows(n, (r, R)) for r in range(R)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(hi0 == lo1 for (_, hi0), (lo1, _) in zip(parts, parts[1:]))  # contiguous, no overlap
    blocks = -(-n // BLOCK_ROWS)
    for lo, hi in parts:  # whole blocks, at most ceil(blocks / R) of them; a rank beyond the blocks has none
        assert (lo % BLOCK_ROWS == 0 or lo == hi == n) and hi - lo <= -(-blocks // R) * BLOCK_ROWS


def test_each_rank_reads_its_own_rows_and_together_they_fingerprint_as_one_process(mapped):
    X, path, y = mapped
    w = np.linspace(0.5, 2, N)
    alone = block_fingerprint(X, y, "float32", w)
    assert alone == block_fingerprint(HostRows(np.load(path, mmap_mode="r")), y, "float32", w)  # mapped = in memory
    assert alone.startswith(data_parts.PREFIX)
    for R in (2, 3):
        ThreadCountingMemmap.reads = {}

        def start_up(comm):
            part = DataPart(HostRows(counting_map(path)), y, w, "float32",
                            (comm.rank, comm.size))
            read = ThreadCountingMemmap.reads[threading.get_ident()]
            return part.fingerprint(comm), read, (part.lo, part.hi)

        results = on_threads(R, start_up)
        assert [fp for fp, _, _ in results] == [alone] * R
        blocks = -(-N // BLOCK_ROWS)
        for fp, read, (lo, hi) in results:  # its own rows and the first row of every block: about N / R
            assert read == hi - lo + blocks and read <= N / R + BLOCK_ROWS + blocks


def test_the_fingerprint_tells_the_data_apart(mapped):
    X, _, y = mapped
    reference = block_fingerprint(X, y, "float64")
    changed = X.copy()
    changed[N - 1, 4] += 1e-9  # the last row of the last block
    others = [block_fingerprint(changed, y, "float64"), block_fingerprint(X, y, "float32"),
              block_fingerprint(X[:-1], y[:-1], "float64"), block_fingerprint(X, (y + 1) % 3, "float64"),
              block_fingerprint(X, y, "float64", np.ones(N)), block_fingerprint(X[::-1], y[::-1], "float64")]
    assert len({reference, *others}) == 1 + len(others)


def _start_up_with(change, R=3):
    """Every rank's start-up result (fingerprint or error) where rank 1 holds ``change(X, y)``."""
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(N, D)), rng.integers(0, 3, N)

    def start_up(comm):
        mine = change(X.copy(), y.copy()) if comm.rank == 1 else (X, y)
        with failing_together(comm):
            part = DataPart(HostRows(mine[0], name="mine"), mine[1], None, "float64", (comm.rank, comm.size))
        return part.fingerprint(comm)

    return on_threads(R, start_up)


def _row(X, y, row):
    X[row, 2] += 1e-9
    return X, y


DIFFER = "the training data differ across ranks: rank 1's {} differ from rank 0's; every rank must hold the same data"


@pytest.mark.parametrize("change,named", [
    (lambda X, y: _row(X, y, 2 * BLOCK_ROWS), f"rows of X (compared at start-up: every {BLOCK_ROWS}th row, from row 0)"),
    (lambda X, y: (X, np.roll(y, 1)), "labels y"),
    (lambda X, y: (X[::-1].copy(), y), f"rows of X (compared at start-up: every {BLOCK_ROWS}th row, from row 0)"),
])
def test_a_rank_whose_data_differ_is_refused_on_every_rank(change, named):
    results = _start_up_with(change)
    assert all(isinstance(e, ValueError) and str(e) == DIFFER.format(named) for e in results), results


def test_a_rank_with_another_shape_is_refused_naming_it():
    results = _start_up_with(lambda X, y: (X[:-1], y[:-1]))
    assert all(str(e) == f"the training data differ across ranks: rank 1 has the shape of X [{N - 1}, {D}] where "
               f"rank 0 has [{N}, {D}]; every rank must hold the same data" for e in results), results


def test_what_the_ranks_do_not_compare_is_a_row_outside_the_sample():
    """As the module says: no rank reads another's rows, so a row other than a block's first that
    differs on one rank alone is not seen at start-up; it changes the fingerprint instead."""
    results = _start_up_with(lambda X, y: _row(X, y, 2 * BLOCK_ROWS + 1))  # rank 1's own block
    assert len(set(results)) == 1 and isinstance(results[0], str)
    assert results[0] != _start_up_with(lambda X, y: (X, y))[0]


def test_a_nan_in_one_ranks_rows_fails_every_rank_naming_the_row():
    bad_row = 2 * BLOCK_ROWS + 5  # in rank 1's blocks of 3: rows 2 * BLOCK_ROWS .. 4 * BLOCK_ROWS

    def nan(X, y):
        X[bad_row, 3] = np.nan
        return X, y

    results = _start_up_with(nan)
    message = f"X (mine) contains NaN or infinity (first at row {bad_row}, column 3); clean or impute the data first"
    assert isinstance(results[1], ValueError) and str(results[1]) == message
    for r in (0, 2):
        assert isinstance(results[r], RankFailedError)
        assert str(results[r]) == f"rank 1 of 3 failed before training: ValueError: {message}"


def test_each_rank_scans_its_own_rows_of_a_folder_for_nan(tmp_path):
    """open_npy_folder(part=(r, R)) reads rank r's rows only; a NaN is found by the rank owning
    its row, with the row's place in the file, and by no other rank."""
    from gpubp.errors import DataError
    from gpubp.npy_folder import open_npy_folder

    rng = np.random.default_rng(2)
    X = rng.normal(size=(N, D))
    X[N - 3, 1] = np.nan  # in the last block: rank R-1's
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", rng.integers(0, 3, N))
    for R in (2, 3):
        ThreadCountingMemmap.reads = {}

        def start_up(comm):
            me = threading.get_ident()
            ThreadCountingMemmap.reads[me] = 0  # thread idents are reused from one R to the next
            try:
                opened = open_npy_folder(tmp_path, (comm.rank, comm.size))
            except DataError as exc:
                opened = exc
            return opened, ThreadCountingMemmap.reads[me]

        from gpubp import npy_folder

        real = npy_folder._open_npy

        def opened_one_at_a_time(path):  # (see counting_map)
            with _HEADER_LOCK:
                return real(path).view(ThreadCountingMemmap) if path.name == "X.npy" else real(path)

        npy_folder._open_npy = opened_one_at_a_time
        try:
            results = on_threads(R, start_up)
        finally:
            npy_folder._open_npy = real
        assert all(not isinstance(opened, Exception) for opened, _ in results[:-1])
        error = results[-1][0]
        assert isinstance(error, DataError) and f"NaN or infinity in row {N - 3} (column 1)" in str(error)
        for r, (_, read) in enumerate(results[:-1]):  # the failing rank stops at the NaN
            lo, hi = own_rows(N, (r, R))
            assert read == hi - lo
        assert results[-1][1] <= own_rows(N, (R - 1, R))[1] - own_rows(N, (R - 1, R))[0]


def test_the_ranks_standardize_their_own_rows_together_as_one_process(mapped):
    """data_parts.scaler_in_parts: each rank reads its own rows, and every rank gets the mean
    and scale that StandardScaler.partial_fit gives over all the rows (to float64 rounding),
    with a constant column scaled by 1."""
    from sklearn.preprocessing import StandardScaler

    _, path, _ = mapped
    X = np.load(path)
    X[:, 3] = 7.25  # a constant feature
    np.save(path, X)
    alone = StandardScaler().fit(X)
    StandardScaler().partial_fit(X[:2])  # scikit-learn's lazy imports done here, not in 7 threads at once
    for R in (2, 3, 7):
        def start_up(comm):
            ThreadCountingMemmap.reads[threading.get_ident()] = 0  # thread idents are reused
            scaler = data_parts.scaler_in_parts(HostRows(counting_map(path)), comm)
            return scaler, ThreadCountingMemmap.reads.get(threading.get_ident(), 0), own_rows(N, (comm.rank, R))

        results = on_threads(R, start_up)
        assert not [r for r in results if isinstance(r, BaseException)], results  # every rank's error, if any
        for scaler, read, (lo, hi) in results:
            assert read == hi - lo
            np.testing.assert_allclose(scaler.mean_, alone.mean_, rtol=1e-13, atol=1e-15)
            np.testing.assert_allclose(scaler.scale_, alone.scale_, rtol=1e-12)
            assert scaler.scale_[3] == 1.0 and scaler.n_samples_seen_ == N
            np.testing.assert_array_equal(scaler.mean_, results[0][0].mean_)  # the same on every rank
            np.testing.assert_array_equal(scaler.scale_, results[0][0].scale_)


def test_each_rank_reads_only_its_share_of_the_held_out_rows(mapped, monkeypatch):
    """gpubp.fit(validation_fraction=...) on a memory-mapped X, data parallel: before the first
    batch each rank has read its own rows and the sample, and no held-out row; scoring the
    validation set, it reads its share of the held-out rows (which it alone scores), not every
    held-out row; both ranks get the same validation loss."""
    import gpubp.train
    from gpubp import MLP, fit
    from gpubp.batches import share

    from .test_estimator_checkpoint import on_two_ranks  # thread ranks that all-reduce

    _, path, y = mapped
    at_first_batch, real_feed = {}, gpubp.train.batch_feed
    validating, real_validate = {}, gpubp.train.Trainer._validate

    def feed(*args, **kwargs):  # start-up is over
        at_first_batch[threading.get_ident()] = ThreadCountingMemmap.reads[threading.get_ident()]
        return real_feed(*args, **kwargs)

    def validate(self, validation):  # the rows read while scoring the validation set
        before = ThreadCountingMemmap.reads[threading.get_ident()]
        scores = real_validate(self, validation)
        validating[threading.get_ident()] = ThreadCountingMemmap.reads[threading.get_ident()] - before
        return scores

    monkeypatch.setattr(gpubp.train, "batch_feed", feed)
    monkeypatch.setattr(gpubp.train.Trainer, "_validate", validate)

    def run(comm):
        ThreadCountingMemmap.reads[threading.get_ident()] = 0
        net = MLP([D, 4, 3], "relu", "cpu", "float64", seed=0)
        history = fit(net, counting_map(path), y, comm=comm, epochs=1,
                      batch_size=4096, validation_fraction=0.25, seed=0)
        return at_first_batch[threading.get_ident()], validating[threading.get_ident()], history.val_loss

    results = on_two_ranks(run)
    n_val, blocks = int(np.ceil(0.25 * N)), -(-N // BLOCK_ROWS)
    for r, (read, scored, _) in enumerate(results):
        lo, hi = own_rows(N, (r, 2))
        v_lo, v_hi = share(n_val, (r, 2))
        assert read == (hi - lo) + blocks, (r, read)
        assert scored == v_hi - v_lo, (r, scored)
    assert results[0][2] == results[1][2]
