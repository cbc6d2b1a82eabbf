"""The estimators' data as the network takes it: dense rows, targets, and scikit-learn's check of
batch weights."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .validation import first_unfit, is_float, narrower, out_of_range

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
    """X (n, d) (dense or sparse) or (n,), cast to ``dtype`` (the network's parameters' dtype).

    scikit-learn's check has found X finite in its own dtype, so X is read again only for a
    narrower ``compute_dtype`` (a float64 network predicting float64 X reads nothing more): a
    value too large for it (a bfloat16 network rounds X to bfloat16 as it enters a product) would
    become infinite in the network and NaN in its output: the ValueError of
    :func:`gpubp.validation.out_of_range` names it, its row (counted from ``first_row``: prediction
    casts X batch by batch) and column."""
    values = X.data if sparse.issparse(X) else X  # (a sparse matrix's stored values, in its order)
    read = is_float(values.dtype) and narrower(compute_dtype, values.dtype)  # (else none can overflow; finite: checked)
    bad = first_unfit(values, compute_dtype) if read else None
    if bad is not None:
        if sparse.issparse(X):
            coo = X.tocoo()  # (keeps the order of .data)
            bad = (coo.row[bad[0]], coo.col[bad[0]])
        raise out_of_range(name, (first_row + bad[0], *bad[1:]), X[bad], compute_dtype)
    return X.astype(dtype, copy=False)


def check_batch_weights(sample_weight, sample_idx, batch_size: int) -> None:
    """scikit-learn's ZeroDivisionError (from np.average) for a batch whose weights sum to zero,
    which negative weights allow; raised on the host before the arithmetic that would divide."""
    if sample_weight is not None:
        sums = np.add.reduceat(sample_weight[sample_idx], np.arange(0, len(sample_idx), batch_size))
        if not sums.all():
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
