"""Data sets: scikit-learn's digits, MNIST IDX folders, .npz and .csv files, memory-mapped
.npy folders; splitting and scaling.

Every loader returns a :class:`Dataset` whose labels are class indices 0..C-1 with the original
labels kept in ``classes``. Bad files raise :class:`gpubp.errors.DataError` (a ValueError) that
names the file and the problem.

A folder with ``X.npy`` and ``y.npy`` (:func:`load_npy_folder`) may be larger than memory: X is
memory-mapped and stays a :class:`gpubp.rows.HostRows`, checked chunk by chunk. :func:`split`
splits it by row index into two HostRows (the test part read a batch at a time), :func:`standardize`
computes its statistics chunk by chunk and applies them to each batch as it is read, and
training streams its batches (:mod:`gpubp.batches`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from .errors import DataError
from .idx import find_idx_pairs, load_idx_pair
from .data_parts import scaler_in_parts
from .npy_folder import open_npy_folder
from .rows import HostRows
from .rows import train_test_split as split_rows

_LABEL_NAMES = ("label", "labels", "y", "target", "class")


@dataclass
class Dataset:
    """Inputs X (n, d) float (or HostRows: memory-mapped), labels y (n,) int64 in 0..C-1, and
    the original labels (C,)."""

    X: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    name: str = ""

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.X.shape[0]


def encode_labels(labels, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """Class indices for arbitrary labels.

    Parameters
    ----------
    labels : array (n,)
    classes : array (C,), optional
        Known classes (sorted); labels outside them raise DataError. Found from labels if None.

    Returns
    -------
    y : int64 array (n,) with ``classes[y] == labels``
    classes : array (C,)
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {labels.shape}")
    if classes is None:
        classes, y = np.unique(labels, return_inverse=True)
        return y.astype(np.int64), classes
    y = np.searchsorted(classes, labels)
    y_clipped = np.minimum(y, len(classes) - 1)
    unknown = classes[y_clipped] != labels
    if unknown.any():
        raise DataError(f"labels {np.unique(labels[unknown])[:5].tolist()} are not among the training classes")
    return y.astype(np.int64), classes


def _dataset(X, labels, name: str, classes=None) -> Dataset:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{name}: expected a non-empty 2-D array of samples, got shape {X.shape}")
    if len(labels) != X.shape[0]:
        raise DataError(f"{name}: {X.shape[0]} samples but {len(labels)} labels")
    if not np.isfinite(X).all():
        row = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise DataError(f"{name}: NaN or infinity in the inputs (first in sample {row})")
    y, classes = encode_labels(labels, classes)
    return Dataset(X, y, classes, name)


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits: 1797 samples, 64 features (0..16), 10 classes."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return _dataset(bunch.data, bunch.target, "digits")


def load_idx_folder(folder) -> tuple[Dataset, Dataset | None]:
    """MNIST-style IDX files in a folder (raw or .gz).

    A ``train``/``t10k`` pair gives a training and a test set; a folder with only one pair
    gives that set and None for the test set (split it with :func:`split`).
    """
    pairs = find_idx_pairs(folder)
    if "train" in pairs:
        train = _dataset(*load_idx_pair(*pairs["train"]), f"{folder} (train)")
        test_key = next((k for k in ("t10k", "test") if k in pairs), None)
        if test_key is None:
            return train, None
        test = _dataset(*load_idx_pair(*pairs[test_key]), f"{folder} ({test_key})", train.classes)
        return train, test
    if len(pairs) > 1:
        raise DataError(f"{folder}: several IDX pairs {sorted(pairs)} and none named 'train'")
    (prefix, files), = pairs.items()
    return _dataset(*load_idx_pair(*files), f"{folder} ({prefix or 'idx'})"), None


def load_npz(path) -> Dataset:
    """Arrays ``X`` (n, d) and ``y`` (n,) from a .npz file (no pickled objects)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"X", "y"} <= keys:
                raise DataError(f"{path}: needs arrays named 'X' and 'y', found {sorted(keys)}")
            X, labels = f["X"], f["y"]
    except DataError:
        raise
    except Exception as exc:  # a damaged zip or .npy header can fail in many ways
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if labels.ndim != 1:
        raise DataError(f"{path}: y must be 1-D labels, got shape {labels.shape}")
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    return _dataset(X, labels, str(path))


def load_npy_folder(folder, part: tuple[int, int] = (0, 1)) -> Dataset:
    """A folder with ``X.npy`` (n, d) numbers and ``y.npy`` (n,) integer class indices 0..C-1.

    X is memory-mapped, never read whole (:func:`gpubp.npy_folder.open_npy_folder` checks it
    chunk by chunk): the Dataset's X is a :class:`gpubp.rows.HostRows` in the file's dtype. The
    labels are read into memory (int64); C is their maximum + 1 (<= npy_folder.MAX_CLASSES).
    ``part=(r, R)``: rank r of a data-parallel job checks only its own rows of X.
    """
    rows, labels = open_npy_folder(folder, part)
    return Dataset(rows, labels, np.arange(int(labels.max()) + 1), str(folder))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_csv(path, label_column: str | int | None = None) -> Dataset:
    """A comma-separated file with one label column and numeric feature columns.

    Parameters
    ----------
    path : str or Path
    label_column : str or int, optional
        Column name (with a header row) or index. Defaults to a column named label, labels, y,
        target or class when there is a header, else the first column.

    A header row is recognised when any of its fields is not a number.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    fields = [field.strip() for field in first.strip().split(",")]
    if not first.strip():
        raise DataError(f"{path}: empty file")
    has_header = not all(_is_number(field) for field in fields)
    if isinstance(label_column, str):
        if not has_header or label_column not in fields:
            raise DataError(f"{path}: no column named {label_column!r} (header: {fields if has_header else 'none'})")
        col = fields.index(label_column)
    elif label_column is not None:
        col = int(label_column)
        if not -len(fields) <= col < len(fields):
            raise DataError(f"{path}: label column {col} out of range for {len(fields)} columns")
        col %= len(fields)
    else:
        lowered = [field.lower() for field in fields]
        col = next((lowered.index(n) for n in _LABEL_NAMES if has_header and n in lowered), 0)
    if len(fields) < 2:
        raise DataError(f"{path}: needs a label column and at least one feature column")
    features = [i for i in range(len(fields)) if i != col]
    skip = 1 if has_header else 0
    try:
        X = np.loadtxt(path, delimiter=",", skiprows=skip, usecols=features, ndmin=2, dtype=np.float64)
        labels = np.loadtxt(path, delimiter=",", skiprows=skip, usecols=[col], dtype=str, ndmin=1)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    labels = np.char.strip(labels)
    if all(_is_number(v) for v in labels[: min(len(labels), 1000)]):
        try:
            numeric = labels.astype(np.float64)
            if np.array_equal(numeric, np.round(numeric)):
                labels = numeric.astype(np.int64)
        except ValueError:
            pass
    return _dataset(X, labels, str(path))


def load_dataset(spec: str, part: tuple[int, int] = (0, 1)) -> tuple[Dataset, Dataset | None]:
    """A data set named on the command line: "digits", an IDX folder, a folder with X.npy and
    y.npy (memory-mapped, :func:`load_npy_folder`), a .npz or a .csv file.

    Returns the training set and, when the source has one (an IDX train/t10k folder), the test
    set; otherwise None for the test set. ``part=(r, R)``: rank r of a data-parallel job, which
    checks only its own rows of a memory-mapped folder (the other formats are read whole).
    """
    if spec == "digits":
        return load_digits(), None
    path = Path(spec)
    if not path.exists():
        raise DataError(f"no such data set or file: {spec!r} (expected digits, an IDX folder, a folder with X.npy and y.npy, a .npz or a .csv file)")
    if path.is_dir():
        if (path / "X.npy").exists() or (path / "y.npy").exists():
            return load_npy_folder(path, part), None
        return load_idx_folder(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_npz(path), None
    if suffix == ".csv":
        return load_csv(path), None
    raise DataError(f"{spec}: unknown data format {suffix!r} (expected an IDX folder, .npz or .csv)")


def split(data: Dataset, test_fraction: float = 0.2, seed: int | None = 0) -> tuple[Dataset, Dataset]:
    """Stratified train/test split: each class keeps its share in both parts.

    Raises DataError when a class has too few samples to appear in both parts. A memory-mapped
    X (HostRows) is split by row index into the same parts, both staying memory-mapped
    HostRows (no row is read here).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    splitter = split_rows if isinstance(data.X, HostRows) else train_test_split
    try:
        X_tr, X_te, y_tr, y_te = splitter(
            data.X, data.y, test_size=test_fraction, stratify=data.y, random_state=seed
        )
    except ValueError as exc:
        raise DataError(f"{data.name}: cannot split {len(data)} samples stratified by class: {exc}") from None
    return (Dataset(X_tr, y_tr, data.classes, f"{data.name} (train)"),
            Dataset(X_te, y_te, data.classes, f"{data.name} (test)"))


def standardize(train: Dataset, *others: Dataset, comm=None, scaler: StandardScaler | None = None
                ) -> tuple[StandardScaler, list[Dataset]]:
    """Scale features to zero mean and unit variance, fitted on ``train`` only.

    Returns the fitted scaler (``mean_``, ``scale_``) and the scaled copies of train and others.
    A memory-mapped X (HostRows) is not copied: the scaler is fitted chunk by chunk
    (``partial_fit``) and the scaling is applied to each batch as it is read. With ``comm``
    (a data-parallel job), each rank reads only its own rows of such an X and the ranks combine
    their statistics (:func:`gpubp.data_parts.scaler_in_parts`). A ``scaler`` given (a resumed
    run's) is applied as it is. DataError: a column whose mean or variance overflows float64.
    """
    if scaler is None:  # else a resumed run's own, applied as it is
        with np.errstate(over="ignore", invalid="ignore"):  # statistics that overflow are refused below
            if isinstance(train.X, HostRows) and comm is not None and comm.size > 1:
                scaler = scaler_in_parts(train.X, comm)
            elif isinstance(train.X, HostRows):
                scaler = StandardScaler()
                for _, block in train.X.chunks(np.float64):
                    scaler.partial_fit(block)
            else:
                scaler = StandardScaler().fit(train.X)
        overflowed = np.flatnonzero(~(np.isfinite(scaler.mean_) & np.isfinite(scaler.var_)))
        if overflowed.size:
            raise DataError(f"{train.name}: the values in column {overflowed[0]} of X are too large to standardize "
                            "(their mean or variance overflows float64); rescale that column first")
    return scaler, [Dataset(_scaled(d.X, scaler), d.y, d.classes, d.name) for d in (train, *others)]


def fitted_scaler(mean, scale) -> StandardScaler:
    """A StandardScaler scaling by ``mean`` and ``scale`` (d,) (a run's own, from its checkpoint)."""
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_ = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
    scaler.var_, scaler.n_features_in_ = scaler.scale_**2, scaler.mean_.shape[0]
    return scaler


def _scaled(X, scaler: StandardScaler):
    """X (n, d) standardized in float64: a HostRows that scales its rows as read, or an array."""
    if isinstance(X, HostRows):
        return X.scaled(scaler.mean_, scaler.scale_)
    return scaler.transform(np.asarray(X, dtype=np.float64))
