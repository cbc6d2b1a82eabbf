"""The validation set of a memory-mapped X (held out by validation_fraction, or given as a
memory-map or HostRows) is scored batch by batch from the file, never loaded whole, with the
history of the same run in memory; and a hold-out the command line cannot make names its options."""

import tracemalloc

import numpy as np

from gpubp import MLP, fit
from gpubp.rows import HostRows

from .test_cli import assert_one_line_error, gpubp as run_cli

SETTINGS = dict(epochs=3, batch_size=500, lr=0.01, seed=3, patience=1)


def write_X(path, n=30000, d=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = rng.normal(scale=2, size=(3, d))[y] + rng.normal(size=(n, d))
    np.save(path, X)
    return X, y


def history_of(X, y, **settings):
    h = fit(MLP([64, 8, 3], backend="cpu", seed=0), X, y, **settings)
    return h.train_loss, h.val_loss, h.val_accuracy, h.best_epoch, h.stopped_early


def test_held_out_rows_of_a_memory_mapped_x_are_scored_batch_by_batch_as_in_memory(tmp_path):
    X, y = write_X(tmp_path / "X.npy")
    expected = history_of(X, y, validation_fraction=0.8, **SETTINGS)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        got = history_of(mapped, y, validation_fraction=0.8, **SETTINGS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got == expected
    held_out_bytes = 24000 * 64 * 8  # 12.3 MB; loaded whole (and again as float32) it was 18.4 MB
    assert peak < held_out_bytes / 2, f"fit's peak {peak / 2**20:.1f} MiB"


def test_a_memory_mapped_or_host_rows_validation_set_scores_as_the_array(tmp_path):
    X, y = write_X(tmp_path / "X.npy", n=6000)
    Xv, yv = write_X(tmp_path / "Xv.npy", n=5000, seed=1)
    mapped = np.load(tmp_path / "Xv.npy", mmap_mode="r")
    expected = history_of(X, y, validation_data=(Xv, yv), **SETTINGS)
    assert history_of(X, y, validation_data=(mapped, yv), **SETTINGS) == expected
    assert history_of(np.load(tmp_path / "X.npy", mmap_mode="r"), y,
                      validation_data=(HostRows(mapped, name="Xv.npy"), yv), **SETTINGS) == expected


def test_a_validation_split_the_test_split_leaves_too_small_names_both_options():
    result = run_cli("train", "--test-fraction", "0.99", "--epochs", "1", "--quiet")
    assert_one_line_error(result, "--val-fraction 0.1", "17 training samples that --test-fraction 0.99 leaves",
                          "class counts are")
    assert "validation_fraction" not in result.stderr
