"""Data-parallel training: ``gpubp.fit(..., comm=world())`` under ``mpirun -n 2`` (tests/dp_worker.py)
ends with the parameters of one process with the same global batch, to 1e-10 in float64; its
checkpoints resume in one process and the reverse. Skipped without mpirun and mpi4py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpubp
from gpubp.backend import get_backend
from gpubp.batches import ResidentFeed, StreamedFeed, share
from gpubp.checkpoint import read_checkpoint
from gpubp.data_parts import BLOCK_ROWS, block_fingerprint, own_rows
from gpubp.distributed import SingleProcess

from . import dp_worker, estimator_worker
from .test_distributed import kill_session, mpi_env, mpirun_path, mpirun_test, run_group, run_ranks

WORKER = Path(__file__).with_name("dp_worker.py")
TIMEOUT = 300  # seconds for one job: the whole dp_worker.py job takes about 10-20 s here, a command less
TEST_TIMEOUT = 2 * TIMEOUT + 60  # pytest-timeout's bound on a test: at most two jobs, and fixtures
TOL = 1e-10


def close(a, b, what: str) -> None:
    """|a - b| <= TOL * max(1, |b|) element-wise; names the worst element when not."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    err = np.abs(a - b) / np.maximum(1.0, np.abs(b))
    worst = int(err.argmax()) if err.size else 0
    assert err.size == 0 or err[worst] <= TOL, f"{what}: worst element {worst}: {a.flat[worst]!r} vs {b.flat[worst]!r}"


# ----------------------------------------------------------------------------- in one process

@pytest.mark.parametrize("m", [0, 1, 2, 7, 10, 11])
@pytest.mark.parametrize("R", [1, 2, 3])
def test_share_splits_as_array_split(m, R):
    expected = [(c[0], c[-1] + 1) if c.size else None for c in np.array_split(np.arange(m), R)]
    got = [share(m, (r, R)) for r in range(R)]
    assert [g if g[1] > g[0] else None for g in got] == expected
    assert got[0][0] == 0 and got[-1][1] == m and all(got[r][1] == got[r + 1][0] for r in range(R - 1))


@pytest.mark.parametrize("Feed", [ResidentFeed, StreamedFeed])
def test_feeds_give_each_rank_its_share_of_the_global_batch(Feed):
    backend, n = get_backend("cpu"), 23
    X, y = np.arange(2.0 * n).reshape(n, 2), np.arange(n)
    order = np.random.default_rng(0).permutation(n)
    args = (backend, X, y, 5, np.float64) if Feed is StreamedFeed else (backend, X, y, 5)
    whole = list(Feed(*args).epoch(order, 5))
    parts = [list(Feed(*args, part=(r, 2)).epoch(order, 5)) for r in range(2)]
    for k, batch in enumerate(whole):
        assert [(p[k].start, p[k].size) for p in parts] == [(batch.start, batch.size)] * 2
        got = [p[k].arrays() for p in parts]
        assert [p[k].rows for p in parts] == [g[1].shape[0] for g in got]
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), batch.arrays()[0])
        np.testing.assert_array_equal(np.concatenate([g[1] for g in got]), batch.arrays()[1])
    assert [p[-1].rows for p in parts] == [2, 1]  # the last batch: 3 rows


def test_single_process_communicator_is_bitwise_the_one_process_run():
    a, ha = dp_worker.train("adam")
    b, hb = dp_worker.train("adam", SingleProcess())
    assert a.tobytes() == b.tobytes() and ha.train_loss == hb.train_loss


def test_comm_must_be_a_communicator():
    with pytest.raises(ValueError, match="comm must be"):
        dp_worker.train("adam", comm="mpi")


# ----------------------------------------------------------------------------- mpirun -n 2

@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The 2-rank job's outputs by name: (rank 0's npz, rank 1's npz), and the folder."""
    out = tmp_path_factory.mktemp("dp")
    dp_worker.train("resume", epochs=2, checkpoint=str(out / "one_process.npz"), checkpoint_every=1)
    proc, seconds = run_ranks([str(WORKER), str(out)], "dp_worker.py", TIMEOUT)
    output = proc.stdout
    assert proc.returncode == 0, output
    print(f"mpirun -n 2 dp_worker.py: {seconds:.1f} s")

    def load(name):
        files = [np.load(out / f"{name}_rank{r}.npz") for r in range(2)]
        return [(f["params"], json.loads(str(f["history"])), json.loads(str(f["more"]))) for f in files]

    return load, out, output


def _same_on_both_ranks(results):
    (p0, h0, _), (p1, h1, _) = results
    assert p0.tobytes() == p1.tobytes(), "the ranks' parameters differ"
    assert h0 == h1 or {k: v for k, v in h0.items() if k != "seconds"} == {k: v for k, v in h1.items() if k != "seconds"}


def _equals_one_process(result, params, history):
    p, h, _ = result
    close(p, params, "parameters")
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        close(h[key], getattr(history, key), key)
    assert (h["best_epoch"], h["stopped_early"]) == (history.best_epoch, history.stopped_early)


@mpirun_test(TEST_TIMEOUT)
@pytest.mark.parametrize("name", list(dp_worker.CASES))
def test_two_ranks_equal_one_process(job, name):
    load, _, output = job
    results = load(name)
    _same_on_both_ranks(results)
    _equals_one_process(results[0], *dp_worker.train(name))
    if name == "early":
        assert results[0][1]["stopped_early"] and results[0][1]["best_epoch"] == 1
        assert len(results[0][1]["train_loss"]) == 3


@mpirun_test(TEST_TIMEOUT)
def test_bad_data_on_one_rank_fails_every_rank_before_any_step(job):
    load, _, _ = job
    (_, _, rank0), (_, _, rank1) = load("bad_data_on_rank_1")
    assert rank1["nan"][:2] == ["ValueError", "X contains NaN or infinity (first at row 3, column 2: nan); clean or "
                                              "impute the data first"]
    assert rank0["nan"][:2] == ["RankFailedError", "rank 1 of 2 failed before training: ValueError: "
                                                   + rank1["nan"][1]]
    assert rank1["shape"][0] == "ValueError" and "5 features per row but the network expects 6" in rank1["shape"][1]
    assert rank0["shape"][0] == "RankFailedError" and rank1["shape"][1] in rank0["shape"][1]
    differ = "the training data differ across ranks: rank 1's {} differ from rank 0's; every rank must hold the same data"
    for what, named in (("row", f"rows of X (compared at start-up: every {BLOCK_ROWS}th row, from row 0)"),
                        ("label", "labels y")):  # every rank raises the same ValueError, naming rank 1
        assert rank0[what][:2] == rank1[what][:2] == ["ValueError", differ.format(named)]
    assert all(r[what][2] for r in (rank0, rank1) for what in ("nan", "shape", "row", "label"))  # no step was taken


@mpirun_test(TEST_TIMEOUT)
def test_each_rank_reads_only_its_own_rows_of_a_memory_mapped_x_at_start_up(job):
    load, out, _ = job
    results = load("mapped")
    n, blocks = dp_worker.MAPPED_ROWS, -(-dp_worker.MAPPED_ROWS // BLOCK_ROWS)
    for r, (_, _, got) in enumerate(results):  # its own blocks, then the first row of every block
        lo, hi = own_rows(n, (r, 2))
        assert got["rows_read"] == hi - lo + blocks and hi - lo <= n / 2 + BLOCK_ROWS / 2
    _same_on_both_ranks(results)
    X, y = dp_worker.data(n, 3)
    model = dp_worker.net()
    history = gpubp.fit(model, X, y, batch_size=1024, epochs=1, seed=6)  # in memory, one process
    _equals_one_process(results[0], np.concatenate([p.ravel() for p in model.params]), history)
    assert read_checkpoint(out / "mapped.npz").meta["data"] == block_fingerprint(X, y, "float64")
    nan_row, nan_column = dp_worker.NAN_AT  # in rank 1's rows only: rank 1 names it, rank 0 names rank 1
    message = (f"X ({out / 'X_nan.npy'}) contains NaN or infinity (first at row {nan_row}, column {nan_column}); "
               "clean or impute the data first")
    assert results[1][2]["nan"] == ["ValueError", message]
    assert results[0][2]["nan"] == ["RankFailedError", f"rank 1 of 2 failed before training: ValueError: {message}"]


@mpirun_test(TEST_TIMEOUT)
def test_without_seeds_the_ranks_train_rank_0s_network(job):
    load, _, _ = job
    _same_on_both_ranks(load("unseeded"))


@mpirun_test(TEST_TIMEOUT)
def test_two_rank_checkpoint_resumes_in_one_process(job):
    load, out, _ = job
    _same_on_both_ranks(load("first_half"))
    resumed = dp_worker.train("resume", resume=str(out / "two_ranks.npz"))
    uninterrupted = dp_worker.train("resume")
    close(resumed[0], uninterrupted[0], "parameters")
    close(resumed[1].train_loss, uninterrupted[1].train_loss, "train_loss")


@mpirun_test(TEST_TIMEOUT)
def test_one_process_checkpoint_resumes_on_two_ranks(job):
    load, _, _ = job
    results = load("resumed_one_process")
    _same_on_both_ranks(results)
    _equals_one_process(results[0], *dp_worker.train("resume"))


@mpirun_test(TEST_TIMEOUT)
def test_a_signal_to_one_rank_stops_both_mid_epoch_and_resumes_in_one_process(job):
    load, out, _ = job
    for _, _, got in load("interrupted"):  # both ranks stopped after the same step
        assert got == {"steps": dp_worker.INTERRUPT_AFTER, "step": dp_worker.INTERRUPT_AFTER,
                       "signum": int(signal.SIGINT)}
    checkpoint = gpubp.read_checkpoint(out / "interrupted.npz")
    assert checkpoint.meta["state"]["step"] == dp_worker.INTERRUPT_AFTER and checkpoint.meta["state"]["position"] == 30
    resumed = dp_worker.train("resume", resume=str(out / "interrupted.npz"))
    uninterrupted = dp_worker.train("resume")
    close(resumed[0], uninterrupted[0], "parameters")
    close(resumed[1].train_loss, uninterrupted[1].train_loss, "train_loss")


@mpirun_test(TEST_TIMEOUT)
def test_only_rank_0_writes_and_prints(job):
    load, out, output = job
    (_, _, rank0), (_, _, rank1) = load("writes")
    names = [Path(p).name for p in rank0["writes"]]
    assert names == ["two_ranks.npz"] * 2 + ["interrupted.npz"] and rank1["writes"] == []
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint left
    assert [line.split("train_loss")[0].strip() for line in output.splitlines() if "train_loss" in line] == \
        ["epoch 1/3", "epoch 2/3", "epoch 3/3"]  # verbose=1 in "validation": rank 0's lines only


# ----------------------------------------------------------------------------- the command

def _command(args: list[str], cwd, ranks: int | None) -> subprocess.CompletedProcess:
    """``gpubp train ARGS`` in ``cwd``, under ``mpirun -n RANKS`` unless ranks is None (stdout and
    stderr apart; the whole process group killed after TIMEOUT seconds)."""
    launcher = [] if ranks is None else [mpirun_path(), "-n", str(ranks), "--oversubscribe"]
    what = f"gpubp train {' '.join(args)}" + ("" if ranks is None else f" under mpirun -n {ranks}")
    return run_group([*launcher, sys.executable, "-m", "gpubp", "train", *args], what, TIMEOUT, cwd=cwd, merge=False)[0]


@mpirun_test(TEST_TIMEOUT)
def test_the_command_on_two_ranks_equals_one_process(tmp_path):
    """gpubp train --distributed: rank 0 alone prints and saves, and the model is the one
    process's to 1e-10 (float64, the same global batch)."""
    from gpubp import load_model

    common = ["--device", "cpu", "--dtype", "float64", "--epochs", "2", "--quiet"]
    one = _command([*common, "--out", "one.npz"], tmp_path, None)
    two = _command([*common[:-1], "--distributed", "--out", "two.npz"], tmp_path, 2)  # not --quiet: rank 0 prints epochs
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    assert two.stdout.count("test accuracy:") == 1 and "distributed: 2 rank(s), MPICommunicator" in two.stdout
    assert "trained 2 epochs in" in two.stdout and " on 2 ranks" in two.stdout  # fit ran data-parallel
    (a, _), (b, _) = load_model(tmp_path / "one.npz"), load_model(tmp_path / "two.npz")
    for pa, pb in zip(a.params, b.params):
        close(pb.ravel(), pa.ravel(), "the command's parameters")


@mpirun_test(TEST_TIMEOUT)
@pytest.mark.os_level
def test_the_command_on_two_ranks_ends_a_failed_job_with_one_line_and_status_2(tmp_path):
    two = _command(["--device", "cpu", "--distributed", "--dataset", "missing.csv"], tmp_path, 2)
    assert two.returncode == 2, two.stdout + two.stderr
    assert "error: no such data set or file: 'missing.csv'" in two.stderr
    assert "Traceback" not in two.stderr


@mpirun_test(TEST_TIMEOUT)
def test_the_scaling_benchmark_runs_both_configurations_alike():
    """benchmarks/bench_data_parallel.py's two configurations train the same network alike."""
    from benchmarks import bench_data_parallel as bench

    one, two = bench.run("1x2", samples=96, epochs=1), bench.run("2x1", samples=96, epochs=1)
    assert one["ranks"] == 1 and two["ranks"] == 2
    assert abs(two["train_loss"][0] - one["train_loss"][0]) <= bench.LOSS_RTOL * abs(one["train_loss"][0])


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the MPI rank ``rank`` whose command line holds ``marker`` (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marker.encode() in cmdline and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@mpirun_test(TEST_TIMEOUT)
@pytest.mark.os_level
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through Linux /proc")
def test_a_killed_rank_ends_the_job_and_its_checkpoint_resumes_in_one_process(tmp_path):
    """SIGKILL to rank 1 mid-run: the launcher ends the job at once (no hang) and says which rank
    died; rank 0's last checkpoint is whole and a single process resumes it."""
    ckpt = tmp_path / "run.npz"
    args = [mpirun_path(), "-n", "2", "--oversubscribe", sys.executable, "-m", "gpubp", "train", "--distributed",
            "--device", "cpu", "--epochs", "100000", "--quiet", "--checkpoint", str(ckpt)]
    with subprocess.Popen(args, cwd=tmp_path, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as proc:
        try:
            deadline = time.monotonic() + 120
            while not ckpt.exists():
                assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint written"
                time.sleep(0.05)
            pid = _rank_pid(str(ckpt), 1)
            assert pid is not None, "rank 1's process not found"
            os.kill(pid, signal.SIGKILL)
            output, _ = proc.communicate(timeout=60)
        except BaseException:
            kill_session(proc.pid)
            raise
    assert proc.returncode != 0
    assert "rank 1" in output and "signal 9" in output, output[-2000:]
    epochs_done = read_checkpoint(ckpt).meta["state"]["epoch"]
    resumed = _command(["--resume", str(ckpt), "--device", "cpu", "--epochs", str(epochs_done + 1), "--quiet"],
                       tmp_path, None)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trained {epochs_done + 1} epochs" in resumed.stdout and "test accuracy:" in resumed.stdout


@mpirun_test(TEST_TIMEOUT)
def test_the_estimators_fit_on_two_ranks_as_in_one_process(tmp_path):
    proc, _ = run_ranks([str(Path(estimator_worker.__file__)), str(tmp_path)], "estimator_worker.py", TIMEOUT)
    assert proc.returncode == 0, proc.stdout
    got = {name: [json.loads((tmp_path / f"{name}_rank{r}.json").read_text()) for r in range(2)]
           for name in estimator_worker.CASES}
    got["resumed"] = [json.loads((tmp_path / f"resumed_rank{r}.json").read_text()) for r in range(2)]
    assert (tmp_path / "fit_checkpoint.npz").is_file()
    for name, same_as in (("classifier_adam_early_weighted", None), ("regressor_sgd_invscaling", None),
                          ("resumed", "classifier_adam_early_weighted")):  # stopped at 5, resumed to 12
        rank0, rank1 = got[name]
        one = estimator_worker.fit(same_as or name)
        assert rank0 == rank1, f"{name}: the ranks differ"
        assert rank0["n_iter"] == one["n_iter"]
        np.testing.assert_allclose(rank0["params"], one["params"], rtol=0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(rank0["loss_curve"], one["loss_curve"], rtol=1e-10, err_msg=name)
    for rank in got["settings_differ"]:
        assert rank["error"][0] == "ValueError" and "rank 1" in rank["error"][1] and "alpha" in rank["error"][1]
    for rank in got["lbfgs"]:
        assert rank["error"] == ["ValueError", "data-parallel fitting (comm) needs solver 'sgd' or 'adam', not 'lbfgs'"]
    for rank in got["negative_weights"]:
        assert rank["error"] == ["ValueError", "data-parallel fitting (comm) needs sample weights >= 0"]
    assert proc.stdout.count("Iteration 1, loss = ") == 1 and proc.stdout.count("Iteration 3, loss = ") == 1, \
        proc.stdout  # rank 0 alone prints
    rank0, rank1 = got["bad_validation_on_rank_1"]
    assert rank1["error"][0] == "ValueError" and "2 features" in rank1["error"][1]
    assert rank0["error"][0] == "RankFailedError" and "rank 1 of 2" in rank0["error"][1]


@mpirun_test(TEST_TIMEOUT)
def test_the_command_on_a_folder_on_two_ranks_equals_one_process_and_resumes_alone(tmp_path):
    """--dataset FOLDER (X.npy memory-mapped): each rank scans and standardizes only its own rows,
    the model is the one process's to 1e-10, and the 2-rank checkpoint resumes in one process with
    the run's own scaling (kept in the checkpoint: one process alone would round it otherwise)."""
    from gpubp import load_model

    rng = np.random.default_rng(5)
    folder = tmp_path / "data"
    folder.mkdir()
    y = rng.integers(0, 3, 12000)  # 9600 training rows: 3 blocks of gpubp.data_parts, 2 for rank 0 and 1 for rank 1
    np.save(folder / "X.npy", rng.normal(size=(12000, 12)) * 4 + y[:, None] + 10)
    np.save(folder / "y.npy", y)
    common = ["--device", "cpu", "--dtype", "float64", "--dataset", str(folder), "--hidden", "16", "--epochs", "2",
              "--quiet", "--batch-size", "256"]
    one = _command([*common, "--out", "one.npz"], tmp_path, None)
    two = _command([*common, "--distributed", "--out", "two.npz", "--checkpoint", "two_ckpt.npz"], tmp_path, 2)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stdout + two.stderr
    (a, _), (b, _) = load_model(tmp_path / "one.npz"), load_model(tmp_path / "two.npz")
    for pa, pb in zip(a.params, b.params):
        close(pb.ravel(), pa.ravel(), "the command's parameters on a folder")
    resumed = _command(["--resume", "two_ckpt.npz", "--device", "cpu", "--epochs", "3", "--quiet"], tmp_path, None)
    assert resumed.returncode == 0, resumed.stderr
    assert len(read_checkpoint(tmp_path / "two_ckpt.npz").meta["history"]["train_loss"]) == 3
