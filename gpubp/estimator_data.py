"""The estimators' data as the network takes it: dense rows, targets, and scikit-learn's check of
batch weights."""

from __future__ import annotations

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


def check_batch_weights(sample_weight, sample_idx, batch_size: int) -> None:
    """scikit-learn's ZeroDivisionError (from np.average) for a batch whose weights sum to zero,
    which negative weights allow; raised on the host before the arithmetic that would divide."""
    if sample_weight is not None:
        sums = np.add.reduceat(sample_weight[sample_idx], np.arange(0, len(sample_idx), batch_size))
        if not sums.all():
            raise ZeroDivisionError("Weights sum to zero, can't be normalized")
