"""What :func:`gpubp.fit` trains on: the training set, its sample weights and the validation set,
checked on the host, with the validation set held out when asked."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from .data_parts import DataPart
from .mlp import MLP
from .rows import HostRows, check_rows
from .validation import check_sample_weight, check_targets, check_X, check_y


def check_training_data(net: MLP, X, y, sample_weight, validation_data, part: tuple[int, int] = (0, 1),
                        hashed: bool = False):
    """X (n, d) (a host array or HostRows), y (n,) int64, weights (n,) float64 or None, the
    validation pair (X_val, y_val) or None, checked for ``net``, and this rank's DataPart.

    Rank r of R, ``part=(r, R)``, reads only its own blocks of a HostRows X to check them (and,
    when ``hashed``, to hash them): :class:`gpubp.data_parts.DataPart`, whose ``fingerprint``
    the ranks then compute together. Each rank does this alone (no collective)."""
    X = as_rows(X)
    X = (check_rows(X, net.sizes[0], scan=False) if isinstance(X, HostRows)
         else check_X(X, net.sizes[0], dtype=net.compute_dtype))
    y = labels(net, y, X.shape[0])
    w = None if sample_weight is None else check_sample_weight(sample_weight, X.shape[0], net.dtype)
    mine = DataPart(X, y, w, net.dtype, part, hashed, x_dtype=net.compute_dtype)
    if validation_data is None:
        return X, y, w, None, mine
    if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
        raise ValueError("validation_data must be a pair (X_val, y_val)")
    Xv = as_rows(validation_data[0])  # a HostRows is read whole here to check it, chunk by chunk
    Xv = (check_rows(Xv, net.sizes[0], "X_val", dtype=net.compute_dtype) if isinstance(Xv, HostRows)
          else check_X(Xv, net.sizes[0], name="X_val", dtype=net.compute_dtype))
    return X, y, w, (Xv, labels(net, validation_data[1], Xv.shape[0], "y_val")), mine


def as_rows(X):
    """A memory-mapped array as a HostRows (read batch by batch); anything else as it is."""
    return HostRows(X, name=str(X.filename)) if isinstance(X, np.memmap) else X


def labels(net: MLP, y, n: int, name: str = "y") -> np.ndarray:
    """y checked for ``net``'s output: class indices (n,) int64 for a softmax, else the targets
    (n, sizes[-1]) in the network's dtype."""
    if net.output == "softmax":
        return check_y(y, n, net.n_classes, name=name)
    return check_targets(y, n, net.sizes[-1], net.output, name=name, dtype=net.dtype).astype(net.dtype)


class HoldOutError(ValueError):
    """validation_fraction cannot be held out of the training rows; ``detail`` says why (the
    command line says it in its options' words)."""

    def __init__(self, fraction: float, n: int, detail: str):
        super().__init__(f"cannot hold out validation_fraction={fraction} of the {n} training samples: {detail}")
        self.fraction, self.n, self.detail = fraction, n, detail


def hold_out(X, y: np.ndarray, w, fraction: float, split_seed: int):
    """(X, y, w, (X_val, y_val)): ``fraction`` of the checked rows held out for validation,
    stratified by class (class indices y) and seeded by ``split_seed``, the weights staying with
    their rows. From a HostRows X both parts are HostRows, read when needed (:func:`rows_of`:
    data parallel, each rank reads only its share of the held-out rows)."""
    stratify = y if y.ndim == 1 else None  # targets (n, k) of a non-softmax output: not stratified
    if stratify is not None:
        counts = np.bincount(y)
        if counts[counts > 0].min() < 2:
            raise HoldOutError(fraction, len(y), "a stratified split needs at least 2 samples of every class; "
                               f"class counts are {counts.tolist()}")
    try:  # the partition depends only on the row count, the classes and the seed
        train, held = train_test_split(np.arange(len(X)), test_size=fraction, stratify=stratify,
                                       random_state=split_seed)
    except ValueError as exc:
        raise HoldOutError(fraction, len(y), str(exc)) from None
    if w is not None and not w[train].sum() > 0:
        raise ValueError(f"sample_weight of the training rows sums to 0 once validation_fraction={fraction} is "
                         "held out: every weight fell in the validation set")
    X, Xv = (X.subset(train), X.subset(held)) if isinstance(X, HostRows) else (X[train], X[held])
    return X, y[train], None if w is None else w[train], (Xv, y[held])


def rows_of(X, lo: int, hi: int):
    """Rows ``lo .. hi`` of X (n, d): a slice (hi - lo, d) of an array, or of a HostRows a HostRows
    (read batch by batch when scored: :mod:`gpubp.prediction`)."""
    return X.subset(np.arange(lo, hi)) if isinstance(X, HostRows) else X[lo:hi]
