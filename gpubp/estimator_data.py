"""The estimators' data as the network takes it: dense rows, targets, and scikit-learn's check of
batch weights."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from scipy import sparse

PREDICT_BATCH = 4096  # rows per device batch in prediction and validation


def host_targets(net, Y) -> np.ndarray:
    """Targets on the host as the network takes them: class indices (n,) for a softmax output
    (from the one-hot rows (n, k)), the (n, k) matrix in the network's dtype otherwise."""
    if net.output == "softmax":
        return np.asarray(Y).argmax(axis=1)
    return np.asarray(Y, dtype=net.dtype)


def dense(X):
    """X as a dense array (a sparse matrix converted)."""
    return X.toarray() if sparse.issparse(X) else X


def cast_in_range(X, dtype, compute_dtype, name: str = "X", first_row: int = 0):
    """X (n, d), dense or sparse, cast to ``dtype`` (the network's parameters' dtype).

    scikit-learn's check has found X finite in its own dtype; a value too large for ``dtype``, or
    for ``compute_dtype`` (a bfloat16 network rounds X to bfloat16 as it enters a product), would
    become infinite in the network and NaN in its output. That is a ValueError naming the value,
    its row (counted from ``first_row``: prediction casts X batch by batch) and column."""
    with np.errstate(over="ignore"):  # the overflow is reported below, with the value
        cast = X.astype(dtype, copy=False)
        values = cast.data if sparse.issparse(cast) else cast
        overflow = ~np.isfinite(values.astype(compute_dtype, copy=False))
    if overflow.any():
        if sparse.issparse(X):
            coo, k = X.tocoo(), np.flatnonzero(overflow)[0]  # tocoo keeps the order of .data
            row, column, value = coo.row[k], coo.col[k], coo.data[k]
        else:
            row, column = np.argwhere(overflow)[0]
            value = X[row, column]
        raise ValueError(f"{name} holds {float(value):g} at row {first_row + row}, column {column}, beyond the range "
                         f"of {compute_dtype.name} (largest {float(ml_dtypes.finfo(compute_dtype).max):g}), the dtype "
                         "this estimator computes in: "
                         f"scale {name} (e.g. with StandardScaler) or use a wider dtype")
    return cast


def check_batch_weights(sample_weight, sample_idx, batch_size: int) -> None:
    """scikit-learn's ZeroDivisionError (from np.average) for a batch whose weights sum to zero,
    which negative weights allow; raised on the host before the arithmetic that would divide."""
    if sample_weight is not None:
        sums = np.add.reduceat(sample_weight[sample_idx], np.arange(0, len(sample_idx), batch_size))
        if not sums.all():
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
