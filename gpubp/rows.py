"""Rows of a host array read on demand, for training sets that are not loaded whole.

A :class:`HostRows` stands for the rows ``rows`` of a host array ``X`` (in memory or memory-mapped
with ``np.load(..., mmap_mode="r")``), optionally standardized as ``(x - mean) / scale`` in
float64 when read. Nothing here reads all of a memory-mapped ``X`` at once: checks, statistics and
fingerprints go chunk by chunk (:data:`CHUNK_BYTES` of input at a time), and a batch is read
with :meth:`HostRows.take`.

Rows of a memory-mapped file are read in ascending file order (the disk and the page cache read
ahead) and then put back in the order asked for, so a batch holds exactly the rows, in exactly
the order, that ``X_resident[idx]`` would: the sums of the forward and backward pass see the same
operands in the same order, and training is bitwise equal to training on the array in memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from scipy import sparse
from sklearn.model_selection import train_test_split as sk_train_test_split

from .validation import first_unfit, out_of_range

CHUNK_BYTES = 32 * 2**20  # input bytes read per chunk by the checks, statistics and fingerprint


class HostRows:
    """The rows ``rows`` of a host array ``X`` (n_total, d), read on demand.

    Parameters
    ----------
    X : numpy array, numpy.memmap or scipy sparse matrix (n_total, d)
    rows : int array (n,), optional
        Which rows of X, in this order; all of them, in order, when None.
    mean, scale : float64 arrays (d,), optional
        When given, every row read is returned as ``(x - mean) / scale`` computed in float64
        (what ``StandardScaler.transform`` computes), so ``dtype`` is float64.
    name : str
        The file or array named in error messages.
    """

    def __init__(self, X, rows=None, mean=None, scale=None, name: str = "X"):
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
        self.X, self.name = X, name
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.mean, self.scale = mean, scale
        n = X.shape[0] if self.rows is None else self.rows.shape[0]
        self.shape = (n, X.shape[1])
        self.dtype = np.dtype(np.float64) if mean is not None else X.dtype

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * self.dtype.itemsize

    @property
    def mapped(self) -> bool:
        """Whether X is a memory-mapped file (read in file order)."""
        return isinstance(self.X, np.memmap)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"HostRows({self.name}, shape={self.shape}, dtype={self.dtype.name})"

    def subset(self, rows) -> "HostRows":
        """The rows ``rows`` (positions in this set, int array (m,)) as a HostRows."""
        rows = np.asarray(rows, dtype=np.int64)
        return HostRows(self.X, rows if self.rows is None else self.rows[rows], self.mean, self.scale, self.name)

    def scaled(self, mean: np.ndarray, scale: np.ndarray) -> "HostRows":
        """This set standardized: rows read as ``(x - mean) / scale`` (float64 (d,) each)."""
        return HostRows(self.X, self.rows, np.asarray(mean, np.float64), np.asarray(scale, np.float64), self.name)

    def take(self, idx, dtype=None, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``idx`` (int array (m,), positions in this set) as an array (m, d) of ``dtype``
        (this set's dtype if None), written into ``out`` ((m, d)) when given."""
        source = np.asarray(idx, dtype=np.int64)
        if self.rows is not None:
            source = self.rows[source]
        if out is None:
            out = np.empty((source.shape[0], self.shape[1]), dtype=dtype or self.dtype)
        if sparse.issparse(self.X):  # a scipy sparse matrix: its rows densified
            out[...] = self._scale(self.X[source].toarray())
        elif self.mapped:  # read in file order, then put each row where idx asks for it
            order = np.argsort(source, kind="stable")
            out[order] = self._scale(self.X[source[order]])
        elif self.mean is None and self.X.dtype == out.dtype:
            np.take(self.X, source, axis=0, out=out)
        else:
            out[...] = self._scale(self.X[source])
        return out

    def _scale(self, block: np.ndarray) -> np.ndarray:
        if self.mean is None:
            return block
        return (block.astype(np.float64) - self.mean) / self.scale

    def chunks(self, dtype=None) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, block)`` for consecutive blocks of rows, each about CHUNK_BYTES in the wider of
        the file's dtype and the block's (a uint8 file read as float64 takes 8x fewer rows a block)."""
        itemsize = max(self.X.dtype.itemsize, np.dtype(dtype or self.dtype).itemsize)
        step = max(1, CHUNK_BYTES // max(1, self.shape[1] * itemsize))
        for start in range(0, self.shape[0], step):
            yield start, self.take(np.arange(start, min(start + step, self.shape[0])), dtype)


def first_nonfinite(rows: HostRows) -> tuple[int, int] | None:
    """(row, column) of the first NaN or infinity in ``rows``, read chunk by chunk; None if none."""
    if not np.issubdtype(rows.dtype, np.floating):  # integers: nothing to read
        return None
    for start, block in rows.chunks():
        bad = first_unfit(block)
        if bad is not None:
            return start + bad[0], bad[1]
    return None


def check_block(rows: HostRows, block: np.ndarray, positions: np.ndarray, dtype=None, name: str = "X") -> None:
    """ValueError naming the first NaN or infinity in ``block`` (m, d), the rows of ``rows`` at
    ``positions`` (int array (m,)) as read, or with ``dtype`` the first value that cast to dtype (the
    network's compute dtype) would become infinite."""
    bad = first_unfit(block, dtype)
    if bad is None:
        return
    row, column, value = int(positions[bad[0]]), bad[1], block[bad]
    if np.isfinite(value):
        raise out_of_range(name, (row, column), value, dtype, f" (in {rows.name})")
    raise ValueError(f"{name} ({rows.name}) contains NaN or infinity (first at row {row}, column {column}); "
                     "clean or impute the data first")


def check_rows(rows: HostRows, n_features: int, name: str = "X", scan: bool = True, dtype=None) -> HostRows:
    """``rows`` checked as :func:`gpubp.validation.check_X` checks an array (every value fitting
    in ``dtype`` when given), chunk by chunk. With ``scan=False`` only the dtype and shape are
    checked and no row is read (the caller checks the rows it reads with :func:`check_block`:
    :class:`gpubp.data_parts.DataPart`, :func:`gpubp.prediction.batch_rows`)."""
    real = np.issubdtype(rows.dtype, np.number) or rows.dtype == bool
    if not real or np.issubdtype(rows.dtype, np.complexfloating):
        raise ValueError(f"{name} ({rows.name}) must hold real numbers, got dtype {rows.dtype}")
    if rows.shape[0] == 0:
        raise ValueError(f"{name} ({rows.name}) is empty: shape {rows.shape}")
    if rows.shape[1] != n_features:
        raise ValueError(f"{name} ({rows.name}) has {rows.shape[1]} features per row but the network "
                         f"expects {n_features} (shape {rows.shape})")
    for start, block in rows.chunks() if scan and np.issubdtype(rows.dtype, np.floating) else ():
        check_block(rows, block, np.arange(start, start + block.shape[0]), dtype, name)
    return rows


def train_test_split(X: HostRows, y: np.ndarray, *, test_size: float, stratify, random_state):
    """scikit-learn's train_test_split for HostRows: the same partition of the rows as for an
    array, made on row indices; both parts stay HostRows, read when used (the held-out part
    batch by batch when evaluated: :mod:`gpubp.prediction`). Returns X_train (HostRows),
    X_test (HostRows (m, d)), y_train, y_test."""
    train, test = sk_train_test_split(np.arange(len(X)), test_size=test_size, stratify=stratify,
                                      random_state=random_state)
    return X.subset(train), X.subset(test), y[train], y[test]


def fingerprint(X, y: np.ndarray, dtype, sample_weight=None) -> str:
    """SHA-256 identifying training data, so that a resumed run or another rank refuses other data.

    The sequential form (every row read by one process): the estimators' checkpoints and their
    data-parallel check use it. :func:`gpubp.fit`'s checkpoints held it until fit's fingerprint
    came to be computed in parts by the ranks (:mod:`gpubp.data_parts`, values starting "v2:");
    fit still recognises it in an older checkpoint (:func:`gpubp.data_parts.same_data`).

    Parameters
    ----------
    X : HostRows or host array (n, d)
        Hashed as its rows converted to ``dtype``, chunk by chunk (:meth:`HostRows.chunks`), so
        the same data give the same fingerprint in memory, memory-mapped or as a HostRows.
    y : host array (n,)
        The labels, hashed as they are.
    dtype : numpy dtype or name
        The dtype training reads the rows in.
    sample_weight : host array (n,), optional
        Hashed as float64 and appended after ``"|w:"``.
    """
    rows = X if isinstance(X, HostRows) else HostRows(np.asarray(X))
    digest = hashlib.sha256()
    digest.update(f"X|{np.dtype(dtype).str}|{rows.shape}|".encode())
    for _, block in rows.chunks(dtype):
        digest.update(np.ascontiguousarray(block).tobytes())
    y = np.ascontiguousarray(y)
    digest.update(f"y|{y.dtype.str}|{y.shape}|".encode())
    digest.update(y.tobytes())
    if sample_weight is None:
        return digest.hexdigest()
    weights = np.ascontiguousarray(sample_weight, dtype=np.float64)
    return digest.hexdigest() + "|w:" + hashlib.sha256(weights.tobytes()).hexdigest()
