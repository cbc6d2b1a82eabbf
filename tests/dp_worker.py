"""One rank of the data-parallel job that tests/test_data_parallel.py starts with ``mpirun -n 2``.

    python tests/dp_worker.py OUT_DIR

Runs every case of CASES with ``comm=world("cpu")``; each rank writes its final parameters and
history to OUT_DIR/<case>_rank<r>.npz. The test runs the same cases in one process (``comm=None``)
and compares. OUT_DIR/one_process.npz, a checkpoint the test wrote in one process, is resumed here.
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

import gpubp
import gpubp.train
import gpubp.train_checkpoint
from gpubp.interrupt import TrainingInterrupted
from gpubp.optim import SGD

SIZES = [6, 12, 3]


def data(n: int, seed: int):
    """n rows of 6 features, 3 classes from a noisy linear rule (float64)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, SIZES[0]))
    y = (X @ rng.normal(size=(SIZES[0], SIZES[-1])) + 0.5 * rng.normal(size=(n, SIZES[-1]))).argmax(axis=1)
    return X, y


def weights(n: int):
    """Sample weights (n,): uniform in [0, 2) with every fifth row weighted 0."""
    w = np.random.default_rng(7).uniform(0, 2, n)
    w[::5] = 0
    return w


def net():
    return gpubp.MLP(SIZES, activation="tanh", backend="cpu", dtype="float64", seed=0, alpha=1e-3)


# name: (rows, settings); 101 rows in batches of 10 end with a batch of 1 (rank 1's share is
# empty), 107 with a batch of 7 (4 + 3 rows)
CASES = {
    "momentum": (101, dict(batch_size=10, optimizer="momentum", lr=0.05, epochs=4, seed=1)),
    "adam": (107, dict(batch_size=10, optimizer="adam", lr=0.01, epochs=4, seed=2)),
    "nesterov_stream": (107, dict(batch_size=12, optimizer="nesterov", lr=0.05, epochs=3, seed=3, stream=True,
                                  clip_norm=0.5)),
    # min_delta 1: epoch 1 improves on inf, 2 and 3 do not: stops after epoch 3, restores epoch 1
    "early": (121, dict(batch_size=16, optimizer="adam", lr=0.01, epochs=10, seed=4, validation_fraction=0.25,
                        patience=2, min_delta=1.0)),
    "validation": (121, dict(batch_size=16, optimizer="adam", lr=0.01, epochs=3, seed=4, validation_fraction=0.25,
                             verbose=1)),
}
CASES["weighted"] = (107, dict(batch_size=10, optimizer="adam", lr=0.01, epochs=5, seed=5, validation_fraction=0.2,
                              patience=2, sample_weight=lambda n: weights(n)))
RESUME = (101, dict(batch_size=10, optimizer="momentum", lr=0.05, epochs=4, seed=1))  # = "momentum"
INTERRUPT_AFTER = 14  # optimizer steps: mid-epoch 2 (11 steps an epoch)


def train(name, comm=None, **extra):
    """Train the case ``name`` (or RESUME for other names) and return (params, history)."""
    n, settings = CASES.get(name, RESUME)
    X, y = data(n, 0)
    if callable(settings.get("sample_weight")):
        settings = {**settings, "sample_weight": settings["sample_weight"](n)}
    model = net()
    history = gpubp.fit(model, X, y, comm=comm, **{**settings, **extra})
    return np.concatenate([p.ravel() for p in model.params]), history


def interrupted_on_rank0(comm, checkpoint: str):
    """RESUME with a SIGINT to rank 0 only, after step INTERRUPT_AFTER: every rank must stop there."""
    steps, step = [0], SGD.update

    def step_then_signal(self, *args):
        step(self, *args)
        steps[0] += 1
        if steps[0] == INTERRUPT_AFTER and comm.rank == 0:
            os.kill(os.getpid(), signal.SIGINT)

    SGD.update = step_then_signal
    try:
        train("interrupt", comm, checkpoint=checkpoint)
    except TrainingInterrupted as exc:
        return {"steps": steps[0], "step": exc.step, "signum": exc.signum}
    finally:
        SGD.update = step
    return {"steps": steps[0], "step": None, "not_interrupted": True}


def save(out: Path, name: str, rank: int, params, history, **more) -> None:
    np.savez(out / f"{name}_rank{rank}.npz", params=params,
             history=np.array(json.dumps(history.as_dict() if history is not None else None)),
             more=np.array(json.dumps(more)))


def main() -> None:
    out = Path(sys.argv[1])
    comm = gpubp.distributed.world("cpu")
    assert comm.size == 2, f"not a 2-rank job: {comm!r}"
    r = comm.rank
    writes, write = [], gpubp.train_checkpoint.write_checkpoint
    gpubp.train_checkpoint.write_checkpoint = lambda path, *a: writes.append(str(path)) or write(path, *a)
    for name in CASES:
        save(out, name, r, *train(name, comm))
    # 2 ranks write a checkpoint after 2 of 4 epochs (the test resumes it in one process) ...
    save(out, "first_half", r, *train("ckpt", comm, epochs=2, checkpoint=str(out / "two_ranks.npz"),
                                      checkpoint_every=1))
    # ... and resume one written by one process
    save(out, "resumed_one_process", r, *train("resume", comm, resume=str(out / "one_process.npz")))
    got = interrupted_on_rank0(comm, str(out / "interrupted.npz"))
    save(out, "interrupted", r, np.zeros(0), None, **got)
    X, y = data(101, 0)  # no seed anywhere: the ranks must still train one network alike
    model = gpubp.MLP(SIZES, activation="tanh", backend="cpu", dtype="float64")
    history = gpubp.fit(model, X, y, comm=comm, batch_size=10, epochs=2, validation_fraction=0.2)
    save(out, "unseeded", r, np.concatenate([p.ravel() for p in model.params]), history)
    save(out, "writes", r, np.zeros(0), None, writes=writes)
    save(out, "bad_data_on_rank_1", r, np.zeros(0), None, **failure_alone(comm))
    params, history, got = reads_at_start_up(comm, out)
    save(out, "mapped", r, params, history, **got)


def failure_alone(comm) -> dict:
    """Rank 1 alone gets a NaN in its X, a wrong shape, another row 0 (a row every rank reads at
    start-up: the first of a block) or another label: each time, both ranks must raise before
    any step, neither waiting for the other."""
    got = {}
    for what in ("nan", "shape", "row", "label"):
        X, y = data(101, 0)
        if comm.rank == 1:
            X = X[:, :-1] if what == "shape" else X
            X[3, 2] = np.nan if what == "nan" else X[3, 2]
            X[0, 1] += 1e-9 if what == "row" else 0
            y[50] = (y[50] + 1) % SIZES[-1] if what == "label" else y[50]
        model = net()
        before = np.concatenate([p.ravel() for p in model.params])
        try:
            gpubp.fit(model, X, y, comm=comm, batch_size=10, epochs=1, seed=1)
            got[what] = ["no error", ""]
        except Exception as exc:
            got[what] = [type(exc).__name__, str(exc)]
        got[what].append(bool(np.array_equal(before, np.concatenate([p.ravel() for p in model.params]))))
    return got


class CountingMemmap(np.memmap):
    """A memory-mapped array that counts the rows read from it by indexing (``reads``)."""

    reads = 0

    def __getitem__(self, index):
        got = super().__getitem__(index)
        if isinstance(got, np.ndarray):
            CountingMemmap.reads += got.shape[0] if got.ndim == 2 else 1
            return got.view(np.ndarray)
        return got


MAPPED_ROWS = 4 * 4096 - 50  # 4 blocks of gpubp.data_parts.BLOCK_ROWS rows: 2 for each rank
NAN_AT = (9000, 3)  # in rank 1's blocks (rows 8192 ..)


def reads_at_start_up(comm, out: Path):
    """Both ranks train on one memory-mapped X.npy (and then on one with a NaN in rank 1's rows):
    the rows each rank reads from the file before its batches are made, the fingerprint written,
    and the errors."""
    X, y = data(MAPPED_ROWS, 3)
    if comm.rank == 0:
        np.save(out / "X.npy", X)
        X[NAN_AT] = np.inf
        np.save(out / "X_nan.npy", X)
    comm.barrier()
    counted, make_feed = {}, gpubp.train.batch_feed

    def feed(*args, **kwargs):  # start-up is over: count no more
        counted.setdefault("rows", CountingMemmap.reads)
        return make_feed(*args, **kwargs)

    gpubp.train.batch_feed = feed
    try:
        model, got = net(), {}
        mapped = np.load(out / "X.npy", mmap_mode="r").view(CountingMemmap)
        history = gpubp.fit(model, mapped, y, comm=comm, batch_size=1024, epochs=1, seed=6,
                            checkpoint=str(out / "mapped.npz"), checkpoint_every=1)
        got["rows_read"] = counted["rows"]
        try:
            gpubp.fit(net(), np.load(out / "X_nan.npy", mmap_mode="r"), y, comm=comm, epochs=1)
            got["nan"] = ["no error", ""]
        except Exception as exc:
            got["nan"] = [type(exc).__name__, str(exc)]
    finally:
        gpubp.train.batch_feed = make_feed
    return np.concatenate([p.ravel() for p in model.params]), history, got


if __name__ == "__main__":
    main()
