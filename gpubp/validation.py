"""Checks run once where data and settings enter the library, with messages that name the problem."""

from __future__ import annotations

from collections.abc import Iterable

import ml_dtypes
import numpy as np

from .backend import backend_for, to_numpy
from .constraints import Interval
from .params import ParameterError, check

def check_dtype(dtype) -> np.dtype:
    """numpy dtype for "float32", "float64" or "bfloat16" (a name or a dtype); the table's
    ParameterError else."""
    return np.dtype(check("dtype", dtype))


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= minimum, else a ParameterError (a ValueError) naming the setting in
    the table's words."""
    interval = Interval(int, minimum)
    if not interval.accepts(value):
        raise ParameterError(name, value, interval.describe())
    return int(value)


def check_sizes(sizes, min_outputs: int = 2) -> list[int]:
    """Layer widths [n0, ..., nL], all >= 1, and nL >= min_outputs (2 classes for a softmax)."""
    try:
        sizes = list(sizes)
    except TypeError:
        raise ValueError(f"sizes must be a list of layer widths, got {sizes!r}") from None
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least an input and an output width, got {sizes!r}")
    for i, width in enumerate(sizes):
        check_positive_int(width, f"sizes[{i}] (layer width)")
    if sizes[-1] < min_outputs:
        raise ValueError(f"the softmax output needs at least 2 classes, got sizes[-1] = {sizes[-1]}")
    return [int(w) for w in sizes]


def largest_finite(dtype) -> float:
    """The largest finite value of a float dtype (bfloat16 too): a value of larger magnitude
    becomes infinite when cast to it."""
    return float(ml_dtypes.finfo(dtype).max)


def narrower(dtype, than) -> bool:
    """Whether float ``dtype``'s largest finite value is below float ``than``'s: a finite value of
    ``than`` may become infinite cast to ``dtype`` (float64 to float32, float32 to bfloat16)."""
    return largest_finite(dtype) < largest_finite(than)


def is_float(dtype) -> bool:
    """Whether ``dtype`` is a real float type: NumPy's or ml_dtypes' bfloat16 (not a NumPy
    floating subtype, its kind is "V")."""
    return np.issubdtype(dtype, np.floating) or dtype == ml_dtypes.bfloat16


def first_unfit(X, dtype=None, xp=np) -> tuple[int, ...] | None:
    """Index of the first element of X (an array of ``xp``, any shape) that is NaN or infinite
    or, with ``dtype``, finite but of larger magnitude than ``dtype``'s largest finite value (cast
    to dtype it would become infinite, or within half a unit round down to that value: refused
    all the same); None if none, or X is empty. Integers and bools fit every float dtype. Where
    every value fits, X is read by two reductions (its min and max) and not copied."""
    if not is_float(X.dtype) or X.size == 0:
        return None
    limit = np.inf  # a dtype at least as wide as X's holds every finite value of X
    if dtype is not None and narrower(dtype, X.dtype):
        limit = largest_finite(dtype)
    with np.errstate(invalid="ignore"):  # (ml_dtypes' min and max warn of a NaN, NumPy's floats' do not)
        lo, hi = X.min(), X.max()
    if bool(xp.isfinite(lo) & xp.isfinite(hi)) and -limit <= lo and hi <= limit:
        return None
    bad = ~xp.isfinite(X) | (xp.abs(X) > limit)
    return tuple(int(i) for i in xp.argwhere(bad)[0])


def out_of_range(name: str, index: tuple, value, dtype, source: str = "") -> ValueError:
    """The error for a finite value of ``name`` at ``index`` that ``dtype`` cannot hold (``source``:
    where it was read, e.g. " (in X.npy)")."""
    dtype = np.dtype(dtype)
    return ValueError(f"{name}[{', '.join(map(str, index))}] = {value!s}{source} is outside {dtype.name}'s range "
                      f"(largest finite value {largest_finite(dtype):g}) and would become infinite in the network; "
                      f"rescale {name}")


def check_fits(X, name: str, dtype=None, xp=np) -> None:
    """ValueError naming the first NaN or infinity of X (an array of ``xp``), or with ``dtype`` the
    first value that cast to dtype would become infinite."""
    bad = first_unfit(X, dtype, xp)
    if bad is None:
        return
    if bool(xp.isfinite(X[bad])):
        raise out_of_range(name, bad, X[bad], dtype)
    where = f"row {bad[0]}, column {bad[1]}: " if len(bad) == 2 else f"index {bad[0]}: "
    raise ValueError(f"{name} contains NaN or infinity (first at {where}{X[bad]}); clean or impute the data first")


def check_X(X, n_features: int | None = None, name: str = "X", dtype=None) -> np.ndarray:
    """Host array (n, n_features) of finite numbers, n >= 1, that fit in ``dtype`` when given
    (the network's compute dtype); ValueError naming what is wrong."""
    try:
        X = to_numpy(X)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not a numeric array: {exc}") from None
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == bool or is_float(X.dtype)):
        raise ValueError(f"{name} must hold numbers, got dtype {X.dtype} (ragged rows or text?)")
    if np.issubdtype(X.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features per row but the network expects {n_features} "
            f"(shape {X.shape})"
        )
    check_fits(X, name, dtype)
    return X


def check_y(y, n_samples: int, n_classes: int, name: str = "y") -> np.ndarray:
    """Host int64 labels (n_samples,) in 0..n_classes-1; ValueError naming what is wrong."""
    try:
        y = to_numpy(y)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} is not an array of class indices: {exc}") from None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D class indices of shape ({n_samples},), got shape {y.shape}"
        )
    if y.shape[0] != n_samples:
        rows = "X_val" if name == "y_val" else "X"  # (the rows these labels go with)
        raise ValueError(f"{rows} has {n_samples} rows but {name} has {y.shape[0]} labels")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise ValueError(f"{name} must hold integer class indices, got non-integer values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer class indices 0..{n_classes - 1}, got dtype {y.dtype}; "
            "encode labels first (gpubp.data.encode_labels)"
        )
    y = y.astype(np.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ValueError(
            f"{name} holds labels from {lo} to {hi} but the network has {n_classes} classes "
            f"(0..{n_classes - 1})"
        )
    return y


def check_sample_weight(sample_weight, n_samples: int, dtype=None) -> np.ndarray:
    """Host float64 weights (n_samples,), finite, >= 0 and not all zero; with ``dtype`` (the
    network's), also none infinite and not all zero once cast to it."""
    try:
        w = np.asarray(to_numpy(sample_weight), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample_weight must be numbers: {exc}") from None
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape ({n_samples},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and >= 0")
    if not w.sum() > 0:
        raise ValueError("sample_weight sums to 0: at least one sample needs a positive weight")
    if dtype is not None:
        check_fits(w, "sample_weight", dtype)
        if not w.max().astype(dtype) > 0:
            raise ValueError(f"sample_weight sums to 0 in {np.dtype(dtype).name}, the network's dtype: its largest "
                             f"weight, {w.max():g}, rounds to 0; at least one sample needs a positive weight: "
                             "rescale sample_weight")
    return w


def check_targets(Y, n_samples: int, n_outputs: int, output: str, name: str = "y", dtype=None) -> np.ndarray:
    """Host float64 targets (n_samples, n_outputs) for a logistic, identity or exp output layer:
    finite (and, with ``dtype``, fitting in it: the network's dtype); 0..1 for "logistic"; >= 0
    for "exp" (Poisson)."""
    try:
        Y = np.asarray(to_numpy(Y), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must hold numbers: {exc}") from None
    if Y.ndim == 1 and n_outputs == 1:
        Y = Y[:, None]
    if Y.shape != (n_samples, n_outputs):
        raise ValueError(f"{name} must have shape ({n_samples}, {n_outputs}), got {Y.shape}")
    check_fits(Y, name, dtype)
    if output == "logistic" and ((Y < 0) | (Y > 1)).any():
        raise ValueError(f"{name} for a logistic output must lie in [0, 1]")
    if output == "exp" and (Y < 0).any():
        raise ValueError(f"{name} for a Poisson (exp) output must be >= 0")
    return Y


def check_callbacks(callbacks) -> tuple:
    """``callbacks`` (any iterable of callables cb(epoch, logs), a generator too) as a tuple,
    read once; ValueError for a single callable, None or anything not callable."""
    if callable(callbacks) or not isinstance(callbacks, Iterable):
        raise ValueError(f"callbacks must be a sequence of callables cb(epoch, logs), got {callbacks!r}")
    callbacks = tuple(callbacks)  # (a generator is read here once; checked by iterating, it was left empty)
    for cb in callbacks:
        if not callable(cb):
            raise ValueError(f"callbacks must be callables cb(epoch, logs), got {cb!r}")
    return callbacks


def check_parameters(values, shapes: list, dtype) -> list:
    """``values`` (weights then biases: host or device arrays, or nested lists) checked against
    the network's ``shapes`` and ``dtype`` before any is written: their count and shapes, real
    numbers, finite, and none too large for ``dtype``; returns them as arrays (device ones stay
    on the device). ValueError naming the first that is not."""
    values = list(values)
    if len(values) != len(shapes):
        raise ValueError(f"expected {len(shapes)} arrays (weights then biases), got {len(values)}")
    arrays = [v if hasattr(v, "shape") and hasattr(v, "dtype") else np.asarray(v) for v in values]
    for i, (v, shape) in enumerate(zip(arrays, shapes)):
        if tuple(v.shape) != tuple(shape):
            raise ValueError(f"parameter {i} of shape {tuple(shape)} cannot take an array of shape {tuple(v.shape)}")
        if v.dtype.kind not in "biuf" and v.dtype != dtype:
            raise ValueError(f"parameter {i} must hold real numbers, got dtype {v.dtype}")
        check_fits(v, f"parameter {i}", dtype, backend_for(v).xp)
    return arrays
