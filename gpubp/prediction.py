"""Prediction and evaluation of a network over many rows: the forward pass a batch at a time, in
bounded memory, and the check of the rows that go in.

A forward pass holds every activation of its batch, which over a whole data set can be more than
the device holds. These functions run it ``batch_size`` rows at a time through the network's
public :meth:`gpubp.mlp.MLP.logits`, keep only what each batch contributes (its rows of a[L], or
its summed loss and hits), and retry a batch that runs out of memory at half the size, down to
one row. X may also be a :class:`gpubp.rows.HostRows` (rows of a memory-mapped file, such as
the test part of a folder data set): each batch is then read from the file and checked for NaN
as it is read, so no more than one batch of it is ever in memory. The output layer's activation
and the evaluation loss are the backend's kernels (``net.backend.kernels.output_activation``,
``.cross_entropy``). The methods of :class:`gpubp.mlp.MLP` of the same names call these.
"""

from __future__ import annotations

import numpy as np

from .backend import is_out_of_memory
from .rows import HostRows, check_block, check_rows
from .validation import check_fits, check_positive_int, check_sample_weight, check_targets, check_X, check_y


def check_input(xp, X, n_features: int, dtype=None):
    """X (n, n_features) checked: 2-D, n >= 1 rows of n_features, finite and, with ``dtype`` (the
    network's compute dtype), fitting in it. Host data comes back as validation.check_X gives it;
    an array of ``xp`` on the device is checked there and returned; a HostRows has its dtype and
    shape checked here and each batch's rows when read (:func:`batch_rows`)."""
    if isinstance(X, HostRows):
        return check_rows(X, n_features, scan=False)
    if xp is not np and isinstance(X, xp.ndarray):
        if X.ndim != 2 or X.shape[1] != n_features or X.shape[0] == 0:
            raise ValueError(f"X must have shape (n >= 1, {n_features}), got {X.shape}")
        check_fits(X, "X", dtype, xp)
        return X
    return check_X(X, n_features, dtype=dtype)


def checked_batch(net, X, y, sample_weight=None) -> tuple:
    """(X (n, sizes[0]), y, sample_weight (n,) or None) checked and on ``net``'s device in its
    dtype: y as class indices (n,) for a softmax output, else targets (n, sizes[-1])."""
    X = net.backend.asarray(check_input(net.xp, X, net.sizes[0], net.compute_dtype), net.dtype)
    if net.output == "softmax":
        y = net.backend.asarray(check_y(y, X.shape[0], net.n_classes))
    else:
        y = net.backend.asarray(check_targets(y, X.shape[0], net.sizes[-1], net.output, dtype=net.dtype), net.dtype)
    if sample_weight is not None:
        sample_weight = net.backend.asarray(check_sample_weight(sample_weight, X.shape[0], net.dtype), net.dtype)
    return X, y, sample_weight


def batch_rows(X, start: int, stop: int, dtype=None):
    """Rows start:stop of a checked X (n, d): a slice of an array, or read from a HostRows and
    checked for NaN, infinity and values outside ``dtype``'s range (ValueError naming the row of
    X: :func:`gpubp.rows.check_block`)."""
    if not isinstance(X, HostRows):
        return X[start:stop]
    positions = np.arange(start, stop)
    rows = X.take(positions)  # (stop - start, d)
    check_block(X, rows, positions, dtype)
    return rows


def map_batches(net, X, batch_size: int, fn):
    """Yield (start, stop, fn(zL, start, stop)) over the rows of a checked X (n, n0), batch by
    batch, with zL = ``net.logits(batch_rows(X, start, stop))``.

    A batch that runs out of memory, in the forward pass or in fn, is retried at half the size,
    down to one row, before giving up; only fn's result outlives its batch, so one batch's
    activations are held at a time.
    """
    start, n = 0, X.shape[0]
    while start < n:
        stop = min(start + batch_size, n)
        done, result = _try_batch(net, X, start, stop, fn)
        if not done:  # the failed batch's arrays are gone with its traceback: release, halve
            net.backend.release_memory()
            batch_size = max(1, (stop - start) // 2)
            continue
        yield start, stop, result
        start = stop


def _try_batch(net, X, start: int, stop: int, fn):
    """(True, fn(zL, start, stop)) for rows start:stop, or (False, None) when they ran out of
    memory (a single row that does not fit raises)."""
    try:
        return True, fn(net.logits(batch_rows(X, start, stop, net.compute_dtype)), start, stop)
    except Exception as exc:
        if not is_out_of_memory(exc) or stop - start == 1:
            raise
    return False, None


def predict_output(net, X, batch_size: int = 4096):
    """The output layer's activations a[L] of every row of X, ``batch_size`` rows at a time.

    Parameters
    ----------
    net : gpubp.mlp.MLP
    X : array (n, net.sizes[0]), host or device, or HostRows (read batch by batch)
    batch_size : int
        Rows per forward pass; a batch that does not fit in memory is split further.

    Returns
    -------
    array (n, net.sizes[-1]) on the network's device
        Probabilities for softmax and logistic outputs, predictions for identity and exp outputs.
    """
    check_positive_int(batch_size, "batch_size")
    X = check_input(net.xp, X, net.sizes[0], net.compute_dtype)
    xp, kernels = net.xp, net.backend.kernels
    A = xp.empty((X.shape[0], net.sizes[-1]), dtype=net.dtype)  # (n, nL)
    for start, stop, a in map_batches(net, X, batch_size,
                                      lambda zL, start, stop: kernels.output_activation(xp, zL, net.output)):
        A[start:stop] = a
    return A


def predict_proba(net, X, batch_size: int = 4096):
    """Class probabilities (n, net.sizes[-1]) of a softmax or logistic output; see predict_output."""
    if net.output not in ("softmax", "logistic"):
        raise ValueError(f"predict_proba needs a softmax or logistic output, not {net.output!r}; "
                         "use predict_output")
    return predict_output(net, X, batch_size)


def predict(net, X, batch_size: int = 4096):
    """Most probable class index (integer array (n,)) of each row of X for a softmax network."""
    require_softmax(net, "predict")
    return predict_output(net, X, batch_size).argmax(axis=1)


def require_softmax(net, what: str) -> None:
    """ValueError unless ``net`` has a softmax output (``what`` needs class labels)."""
    if net.output != "softmax":
        raise ValueError(f"{what} needs a softmax output (class labels), not {net.output!r}")


def evaluate(net, X, y, batch_size: int = 4096, check: bool = True) -> tuple[float, float | None]:
    """Mean loss (without the L2 term) and accuracy, batched: cross-entropy and the share of rows
    whose most probable class is y for a softmax network; for the other outputs (logistic,
    identity, exp) the mean of their loss (see :func:`gpubp.ops.output_minus_y`) and None.

    Parameters
    ----------
    net : gpubp.mlp.MLP
    X : array (n, net.sizes[0]), host or device, or HostRows (read batch by batch)
    y : integer array (n,) of class indices (softmax), or targets (n, net.sizes[-1]); host or device
    batch_size : int
    check : bool
        True: X, y and batch_size are checked first (the labels on the host). False: they are
        used as they are, for arrays already checked and on the device (a trainer's validation
        set): nothing is copied to the host but the sums at the end, and a label out of range
        reaches the kernels unchecked.

    Returns
    -------
    loss : float
    accuracy : float, or None for a non-softmax output
    """
    softmax = net.output == "softmax"
    if check:
        check_positive_int(batch_size, "batch_size")
        X = check_input(net.xp, X, net.sizes[0], net.compute_dtype)
        y = (check_y(y, X.shape[0], net.n_classes) if softmax
             else check_targets(y, X.shape[0], net.sizes[-1], net.output, dtype=net.dtype).astype(net.dtype))
    xp, kernels = net.xp, net.backend.kernels

    def sums(zL, start, stop):  # the batch's summed loss and hits, on the device
        yb = net.backend.asarray(y[start:stop])
        if not softmax:
            return kernels.output_minus_y(xp, zL, yb, net.output)[1] * (stop - start), 0
        return kernels.cross_entropy(xp, zL, yb) * (stop - start), (zL.argmax(axis=1) == yb).sum()

    loss_sum, correct = 0.0, 0
    for _, _, (batch_loss, batch_correct) in map_batches(net, X, batch_size, sums):
        loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
    return float(loss_sum) / X.shape[0], (int(correct) / X.shape[0] if softmax else None)
