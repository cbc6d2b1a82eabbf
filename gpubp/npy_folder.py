"""Folders of two .npy files, ``X.npy`` (n, d) and ``y.npy`` (n,), opened memory-mapped and checked
chunk by chunk, so that a data set larger than memory is never read whole.

Errors are :class:`gpubp.errors.DataError` naming the file and the problem: a missing or
unreadable file, one that is not a .npy file (an .npz archive, say), a wrong shape or dtype, the
first row with NaN or infinity, the first label out of range (negative, or implying more than
:data:`MAX_CLASSES` classes), labels and rows that do not pair up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError
from .data_parts import own_rows
from .rows import CHUNK_BYTES, HostRows, first_nonfinite

MAX_CLASSES = 2**20  # the most classes y.npy may imply (its largest label + 1): a 2**20-wide output layer
NPY_MAGIC = np.lib.format.MAGIC_PREFIX  # the first bytes of every .npy file
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # the first bytes of a zip archive (an .npz file), or an empty one


def _open_npy(path: Path) -> np.ndarray:
    """``path`` memory-mapped read-only; DataError naming it when it is missing, not a .npy file
    (checked by its first bytes, before NumPy reads it: a zip archive is not opened) or unreadable."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (a folder data set needs X.npy and y.npy)")
    try:
        with open(path, "rb") as file:
            magic = file.read(len(NPY_MAGIC))
        if magic == NPY_MAGIC:
            return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # a damaged header or an object array fails in many ways
        raise DataError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from None
    found = ("a zip archive (.npz, as np.savez writes)" if magic.startswith(ZIP_MAGIC)
             else f"its first bytes are {magic!r}, not the .npy magic string {NPY_MAGIC!r}")
    raise DataError(f"{path}: not a .npy file: {found}; write each array with np.save")


def _check_labels(y: np.ndarray, path: Path, n: int, x_path: Path) -> np.ndarray:
    """Labels (n,) from ``path``: 1-D integer class indices 0..MAX_CLASSES-1, checked chunk by chunk in
    the file's dtype; int64 copy."""
    if y.ndim != 1:
        raise DataError(f"{path}: y must be 1-D class indices, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: y must hold integer class indices 0..C-1, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise DataError(f"{path}: {y.shape[0]} labels but {x_path} has {n} rows")
    labels = np.empty(n, dtype=np.int64)
    step = max(1, CHUNK_BYTES // y.dtype.itemsize)
    for start in range(0, n, step):
        block = np.asarray(y[start : start + step])  # compared in the file's dtype: a uint64 is not wrapped
        bad = np.flatnonzero((block < 0) | (block >= MAX_CLASSES))
        if bad.size:
            row, label = start + int(bad[0]), int(block[bad[0]])
            if label < 0:
                raise DataError(f"{path}: label {label} in row {row} is out of range (class indices are >= 0)")
            raise DataError(f"{path}: label {label} in row {row} implies {label + 1} classes (labels are class "
                            f"indices 0..C-1), more than the {MAX_CLASSES} allowed; number the classes 0..C-1")
        labels[start : start + step] = block
    return labels


def open_npy_folder(folder, part: tuple[int, int] = (0, 1)) -> tuple[HostRows, np.ndarray]:
    """X.npy and y.npy of ``folder``, checked. ``part=(r, R)``: rank r of a data-parallel job
    scans only its own rows of X for NaN (gpubp.data_parts.own_rows; the ranks' rows together are
    all of them), so no rank reads the whole file at start-up.

    Returns
    -------
    X : HostRows (n, d)
        The memory-mapped X.npy (any real dtype; NaN and infinity refused, row by row).
    y : int64 array (n,)
        y.npy read into memory: integer class indices 0..MAX_CLASSES-1.
    """
    folder = Path(folder)
    x_path, y_path = folder / "X.npy", folder / "y.npy"
    X, y = _open_npy(x_path), _open_npy(y_path)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{x_path}: expected a non-empty 2-D array (samples, features), got shape {X.shape}")
    if not (np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating) or X.dtype == bool):
        raise DataError(f"{x_path}: X must hold real numbers, got dtype {X.dtype}")
    labels = _check_labels(y, y_path, X.shape[0], x_path)
    rows = HostRows(X, name=str(x_path))
    lo, hi = own_rows(X.shape[0], part)
    bad = first_nonfinite(rows.subset(np.arange(lo, hi)))
    if bad is not None:
        raise DataError(f"{x_path}: NaN or infinity in row {lo + bad[0]} (column {bad[1]})")
    return rows, labels
