"""Training data checked and fingerprinted in parts, one part per rank, so that at start-up each
rank of a data-parallel :func:`gpubp.fit` reads only its own rows of a memory-mapped X.

The rows of X (n, d) are cut into blocks of :data:`BLOCK_ROWS` consecutive rows (the last one
may be shorter). Rank r of R owns a contiguous run of blocks, the blocks split over the ranks as
``np.array_split`` splits them (:func:`own_rows`): about n / R rows. At start-up each rank
(:class:`DataPart`) reads its own rows once, chunk by chunk (about ``CHUNK_BYTES`` of input at a
time), checks them for NaN and infinity (a HostRows X; an array in memory is checked whole by
:func:`gpubp.validation.check_X`) and hashes each block's rows, converted to the training dtype,
with SHA-256. It also hashes the labels y and the weights w, which are in memory, and the first
row of every block (n / BLOCK_ROWS rows: the *sample*). :meth:`DataPart.fingerprint` then gathers
every rank's digests and hashes them, with the shape, dtype, y and w, in block order into one
fingerprint, ``"v2:<sha256 hex>"``.

The block size is part of the format and does not depend on R: R ranks and one process alone
compute the same fingerprint (:func:`block_fingerprint`), so a checkpoint written on R ranks
resumes on any number of ranks and in one process; an array in memory and a memory-mapped copy
of the same values give the same fingerprint.

What the ranks compare. Gathering the digests, every rank compares each rank's X shape, dtype,
digest of y, digest of w and digest of the sample with rank 0's, and raises ValueError naming
the first rank that differs. So a rank with another file, another row order, another scaling,
other labels or weights is refused before any step. A rank whose X differs from rank 0's only in
rows outside the sample is not: no rank reads the rows another rank owns, so no two ranks read
the same row at start-up save the sample. (Such a difference inside the rank's own blocks
changes the fingerprint, which a later resume compares; where the ranks read one shared file,
as usual, their data cannot differ.)

Checkpoints written before the fingerprint was computed in parts hold the sequential
fingerprint of :func:`gpubp.rows.fingerprint` (64 hex digits, maybe ``"|w:"`` and 64 more; no
``"v2:"``); :func:`same_data` recognises that form and recomputes it to compare.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import rows as host_rows
from .communicator import Communicator, SingleProcess
from .rows import HostRows, check_block

BLOCK_ROWS = 4096  # rows per hashed block: part of the fingerprint's format, whatever the ranks
PREFIX = "v2:"  # the fingerprint computed in blocks; the sequential form has no prefix

_DIFFERING = {"y": "labels y", "w": "sample weights",
              "sample": f"rows of X (compared at start-up: every {BLOCK_ROWS}th row, from row 0)"}


def own_rows(n: int, part: tuple[int, int]) -> tuple[int, int]:
    """Rows ``lo .. hi`` (hi excluded) that rank r of R owns, ``part=(r, R)``: its run of the
    ``ceil(n / BLOCK_ROWS)`` blocks split as ``np.array_split`` splits them."""
    r, R = part
    q, extra = divmod(-(-n // BLOCK_ROWS), R)
    first = r * q + min(r, extra)
    return min(n, first * BLOCK_ROWS), min(n, (first + q + (r < extra)) * BLOCK_ROWS)


def digest_of(a: np.ndarray) -> str:
    """SHA-256 hex of a host array's dtype, shape and bytes."""
    a = np.ascontiguousarray(a)
    return hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode() + a.tobytes()).hexdigest()


def hash_rows(rows: HostRows, positions: np.ndarray, dtype, check: bool, name: str = "X",
              x_dtype=None) -> bytes | None:
    """SHA-256 of the rows at ``positions`` (int array (m,), ascending) converted to ``dtype``
    (None: not hashed, only checked), read chunk by chunk; with ``check``, ValueError naming the
    first NaN, infinity or value outside ``x_dtype``'s range (:func:`gpubp.rows.check_block`)."""
    digest = hashlib.sha256()
    step = max(1, host_rows.CHUNK_BYTES // max(1, rows.shape[1] * rows.X.dtype.itemsize))
    for i in range(0, positions.shape[0], step):
        idx = positions[i : i + step]
        block = rows.take(idx)
        if check:
            check_block(rows, block, idx, x_dtype, name)
        if dtype is not None:
            digest.update(np.ascontiguousarray(block, dtype=dtype).tobytes())
    return None if dtype is None else digest.digest()


class DataPart:
    """What one rank reads of the training data at start-up: its own blocks of X, checked (a
    HostRows) and, when ``hashed``, hashed; y, w and the sample hashed.

    Parameters
    ----------
    X : HostRows or host array (n, d)
        All the training rows (every rank holds the same); a HostRows is checked here, row by
        row, only in this rank's blocks (its dtype and shape by :func:`gpubp.rows.check_rows`).
    y : host array (n,) or (n, k)
        The checked labels or targets.
    w : float64 host array (n,) or None
        The checked sample weights.
    dtype : numpy dtype or name
        The dtype training reads the rows in; the blocks are hashed converted to it.
    part : (rank, size)
    hashed : bool
        False: nothing is hashed (a run in one process that neither writes nor resumes a
        checkpoint); only a HostRows's rows are read, to check them.
    name : str
        What error messages call X.
    x_dtype : numpy dtype, optional
        The dtype a HostRows X's values must fit in (the network's compute dtype); ``dtype`` when None.
    """

    def __init__(self, X, y, w, dtype, part: tuple[int, int] = (0, 1), hashed: bool = True, name: str = "X",
                 x_dtype=None):
        rows = X if isinstance(X, HostRows) else HostRows(np.asarray(X))
        self.dtype, self.hashed = np.dtype(dtype), hashed
        self.lo, self.hi = own_rows(rows.shape[0], part)
        check, hash_dtype = isinstance(X, HostRows), self.dtype if hashed else None
        self.blocks = [] if not (check or hashed) else [  # digests (None when not hashed) of this rank's blocks
            hash_rows(rows, np.arange(start, min(start + BLOCK_ROWS, self.hi)), hash_dtype, check, name,
                      self.dtype if x_dtype is None else x_dtype)
            for start in range(self.lo, self.hi, BLOCK_ROWS)]
        if hashed:
            sample = hash_rows(rows, np.arange(0, rows.shape[0], BLOCK_ROWS), self.dtype, False)
            self.summary = {"X": list(rows.shape), "dtype": self.dtype.str, "y": digest_of(y),
                            "w": None if w is None else digest_of(np.asarray(w, dtype=np.float64)),
                            "sample": sample.hex()}

    def fingerprint(self, comm: Communicator) -> str | None:
        """The data's fingerprint, ``"v2:<sha256 hex>"``, the same on every rank (None when not
        ``hashed``). Collective: every rank's summary and block digests are gathered.

        Raises
        ------
        ValueError
            On every rank, when a rank's X shape, dtype, labels, weights or sampled rows differ
            from rank 0's, naming the first such rank.
        """
        if not self.hashed:
            return None
        gathered = comm.allgather_object((self.summary, self.blocks))
        reference = gathered[0][0]
        for rank, (summary, _) in enumerate(gathered[1:], start=1):
            key = next((k for k in reference if summary[k] != reference[k]), None)
            if key in ("X", "dtype"):
                what = "the shape of X" if key == "X" else "the training dtype"
                raise ValueError(f"the training data differ across ranks: rank {rank} has {what} {summary[key]} "
                                 f"where rank 0 has {reference[key]}; every rank must hold the same data")
            if key is not None:
                raise ValueError(f"the training data differ across ranks: rank {rank}'s {_DIFFERING[key]} differ "
                                 "from rank 0's; every rank must hold the same data")
        digest = hashlib.sha256(f"gpubp data v2|{BLOCK_ROWS}|{reference['X']}|{reference['dtype']}|"
                                f"{reference['y']}|{reference['w']}|".encode())
        for _, blocks in gathered:
            for block in blocks:
                digest.update(block)
        return PREFIX + digest.hexdigest()


def block_fingerprint(X, y: np.ndarray, dtype, sample_weight=None) -> str:
    """The fingerprint :meth:`DataPart.fingerprint` gives, computed by one process alone.

    Parameters
    ----------
    X : HostRows or host array (n, d)
    y : host array (n,) or (n, k)
    dtype : numpy dtype or name
    sample_weight : host array (n,), optional

    Returns
    -------
    str
        ``"v2:"`` and 64 hex digits.
    """
    return DataPart(X, y, sample_weight, dtype).fingerprint(SingleProcess())


def same_data(recorded: str, fingerprint: str, X, y: np.ndarray, dtype, sample_weight=None) -> bool:
    """Whether a checkpoint's recorded fingerprint names the data of this run.

    Parameters
    ----------
    recorded : str
        The checkpoint's ``meta["data"]``: ``"v2:..."``, compared with ``fingerprint``; else the
        sequential form of older checkpoints, compared with :func:`gpubp.rows.fingerprint` of X,
        y, ``dtype`` and sample_weight, recomputed (every row read: only to resume such a file).
    fingerprint : str
        This run's :meth:`DataPart.fingerprint`.
    X, y, sample_weight : the training rows (n, d), labels and weights (n,) or None
        As the older runs hashed them: after the validation rows are held out, the weights in
        the network's dtype.
    """
    if recorded.startswith(PREFIX):
        return recorded == fingerprint
    return recorded == host_rows.fingerprint(X, y, dtype, sample_weight)


def scaler_in_parts(X: HostRows, comm: Communicator):
    """StandardScaler statistics of the rows of X (n, d), each rank reading only its own rows
    (:func:`own_rows`): each rank's count, mean and sum of squared deviations, combined in rank
    order by the pairwise update of Chan, Golub and LeVeque, the same on every rank. Equal to
    ``StandardScaler().partial_fit`` over all the rows up to float64 rounding (another summation
    order), with its rule for constant features (scale 1).

    Returns a fitted sklearn.preprocessing.StandardScaler (``mean_``, ``var_``, ``scale_``,
    ``n_samples_seen_``)."""
    from sklearn.preprocessing import StandardScaler

    lo, hi = own_rows(X.shape[0], (comm.rank, comm.size))
    mine = StandardScaler()
    for _, block in X.subset(np.arange(lo, hi)).chunks(np.float64):
        mine.partial_fit(block)
    ours = (hi - lo, mine.mean_, mine.var_ * (hi - lo)) if hi > lo else (0, None, None)
    n, mean, m2 = 0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for count, their_mean, their_m2 in comm.allgather_object(ours):
        if count:
            delta, total = their_mean - mean, n + count
            mean = mean + delta * (count / total)
            m2 = m2 + their_m2 + delta**2 * (n * count / total)
            n = total
    scaler = StandardScaler()
    scaler.n_samples_seen_, scaler.mean_, scaler.var_, scaler.n_features_in_ = n, mean, m2 / n, X.shape[1]
    eps = np.finfo(np.float64).eps  # scikit-learn's constant features: variance within rounding of 0
    constant = scaler.var_ <= n * eps * scaler.var_ + (n * mean * eps) ** 2
    scaler.scale_ = np.where(constant, 1.0, np.sqrt(scaler.var_))
    return scaler
