"""The per-layer arithmetic: activations, their derivatives, softmax and cross-entropy.

Every function takes the array module ``xp`` (numpy or cupy) first and works on either. These are
the reference (NumPy) versions of the steps that hand-written CUDA kernels fuse on the GPU; a
kernel's docstring names its twin here by the same stem. :data:`TWIN_KERNELS` gathers the twins
into the kernel set of gpubp.kernel_set, the one the others are checked against.

Rows are samples: ``z`` and ``a`` are (n, width), labels ``y`` are (n,) integers in 0..C-1.
"""

from __future__ import annotations

import numpy as np

ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity")
# Output layers and their losses: softmax + cross-entropy over classes; logistic + binary
# cross-entropy per output (binary and multilabel); identity + half squared error; exp + Poisson
# deviance. Each pairs its activation with its loss so that BP1 is delta = (a[L] - Y) * scale.
OUTPUTS = ("softmax", "logistic", "identity", "exp")


def check_activation(name: str) -> str:
    """``name`` if it is a known hidden activation, else a ValueError listing them."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: expected one of {', '.join(ACTIVATIONS)}")
    return name


def sigmoid(xp, z):
    """1 / (1 + exp(-z)) without overflow: exp is only taken of -|z|. Shape of z."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1, e) / (1 + e)


def activate(xp, z, name: str):
    """a = f(z) for a hidden layer, written over ``z`` (which is returned). z: (n, width)."""
    if name == "relu":
        return xp.maximum(z, 0, out=z)
    if name == "sigmoid":
        z[...] = sigmoid(xp, z)
        return z
    if name == "tanh":
        return xp.tanh(z, out=z)
    if name == "identity":
        return z
    raise ValueError(f"unknown activation {name!r}")


def wide_dtype(*dtypes) -> np.dtype:
    """The dtype the arithmetic of a kernel runs in for arrays of ``dtypes``: at least float32, so
    bfloat16 operands are computed in float32 (and rounded once, when stored)."""
    return np.result_type(np.float32, *dtypes)


def bias_activation(xp, z, b, name: str):
    """a = f(z + b), written over ``z``. z: (n, width) pre-bias product a_prev @ W; b: (width,).

    A z stored narrower than the arithmetic (bfloat16 z, float32 b) is read into float32, and
    f(z + b) is rounded once into z, as the kernel does (gpubp.bfloat16)."""
    wide = wide_dtype(z.dtype, b.dtype)
    if z.dtype != wide:
        z[...] = activate(xp, z.astype(wide) + b, name)
        return z
    z += b
    return activate(xp, z, name)


def backprop_delta(xp, g, a, name: str, db=None):
    """BP2's elementwise half: delta = g * f'(z), written over g = delta_next @ W.T; with ``db``,
    BP3 of the same layer too: db = delta.sum(axis=0), the bias gradient.

    f'(z) is taken from the saved activation a = f(z): relu (a > 0), sigmoid a(1 - a),
    tanh 1 - a^2, identity 1.

    g, a: (n, width); db: (width,) of g's dtype, or None. Returns g. bfloat16 g and a are read
    into float32 and g * f'(a) rounded once into g, as the kernel does (gpubp.bfloat16).
    """
    wide = wide_dtype(g.dtype, a.dtype)
    if g.dtype != wide:
        g[...] = backprop_delta(xp, g.astype(wide), a.astype(wide), name)
    elif name == "relu":
        xp.multiply(g, a > 0, out=g)
    elif name == "sigmoid":
        g *= a * (1 - a)
    elif name == "tanh":
        g *= 1 - a * a
    elif name != "identity":
        raise ValueError(f"unknown activation {name!r}")
    if db is not None:
        g.sum(axis=0, out=db)
    return g


def log_softmax(xp, z):
    """log p for p = softmax(z) row by row, with the row max subtracted first. z: (n, C)."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))


def softmax(xp, z):
    """p = exp(z - max) / sum(exp(z - max)) row by row. z: (n, C) -> (n, C)."""
    p = z - z.max(axis=1, keepdims=True)
    xp.exp(p, out=p)
    p /= p.sum(axis=1, keepdims=True)
    return p


def cross_entropy(xp, z, y):
    """Mean cross-entropy -mean(log softmax(z)[i, y_i]) of logits z (n, C) and labels y (n,)."""
    n = z.shape[0]
    return -log_softmax(xp, z)[xp.arange(n), y].mean()


def row_scale(n: int, dtype, sample_weight=None):
    """Factor of each row in BP1 and the loss: 1/n, or w_i / sum(w) as an (n, 1) array.

    sample_weight, when given, is an (n,) array on the device, checked by the caller.
    """
    if sample_weight is None:
        return dtype.type(1.0 / n)
    w = sample_weight.astype(dtype, copy=False)
    return (w / w.sum())[:, None]


def softmax_minus_y(xp, z, y, sample_weight=None, b=None):
    """BP1 and the loss from one pass over the logits: delta = (softmax(z + b) - Y) / n.

    Parameters
    ----------
    z : array (n, C)
        Output-layer logits, or their product part a[L-1] @ W[L] when b is given; not modified.
    y : integer array (n,)
        Class indices in 0..C-1 (checked by the caller).
    sample_weight : array (n,), optional
        Non-negative weights; rows are then scaled by w_i / sum(w) instead of 1/n.
    b : array (C,), optional
        The output layer's bias, added to z first (the CUDA kernel adds it as it reads z).

    Returns
    -------
    delta : array (n, C), dtype of z
        ``(p - Y) * scale`` where Y is one-hot of y and scale is 1/n or w_i / sum(w).
    loss : 0-d array, dtype of z
        ``sum_i scale_i * (log sum exp(z_i) - z_i[y_i])``: the (weighted) mean cross-entropy,
        finite for any finite z.
    """
    n = z.shape[0]
    if b is not None:
        z = z + b  # (n, C) logits
    rows = xp.arange(n)
    scale = row_scale(n, z.dtype, sample_weight)  # scalar or (n, 1)
    zmax = z[rows, z.argmax(axis=1)][:, None]  # (n, 1) row maxima (NaN where a row has one), picked:
    # NumPy's max over short rows takes twice as long
    delta = z - zmax  # (n, C) shifted logits, all <= 0
    xp.exp(delta, out=delta)
    s = delta.sum(axis=1, keepdims=True)  # (n, 1), >= 1
    row_losses = xp.log(s) + zmax - z[rows, y][:, None]  # (n, 1)
    loss = (row_losses * scale).sum()
    delta /= s  # p
    delta[rows, y] -= 1  # p - Y
    delta *= scale
    return delta, loss


def output_minus_y(xp, z, Y, output: str, sample_weight=None):
    """BP1 and the loss for the non-softmax output layers: delta = (f(z) - Y) * scale.

    Parameters
    ----------
    z : array (n, k)
        Output-layer pre-activations; not modified.
    Y : array (n, k)
        Targets: 0/1 indicators for "logistic", real values for "identity", counts >= 0 for "exp".
    output : {"logistic", "identity", "exp"}
    sample_weight : array (n,), optional

    Returns
    -------
    delta : array (n, k)
    loss : 0-d array
        ``sum_i scale_i * sum_j l(z_ij, Y_ij)`` with, per element, binary cross-entropy
        ``log(1 + e^z) - Y z`` (computed without overflow), half squared error
        ``(z - Y)^2 / 2``, or Poisson deviance ``Y log Y - Y z - Y + e^z``.
    """
    scale = row_scale(z.shape[0], z.dtype, sample_weight)  # scalar or (n, 1)
    if output == "logistic":
        a = sigmoid(xp, z)
        losses = xp.maximum(z, 0) - Y * z + xp.log1p(xp.exp(-xp.abs(z)))
    elif output == "identity":
        a = z.copy()
        losses = 0.5 * (z - Y) ** 2
    elif output == "exp":
        a = xp.exp(z)
        y_log_y = xp.where(Y > 0, Y * xp.log(xp.where(Y > 0, Y, 1)), 0)
        losses = y_log_y - Y * z - Y + a
    else:
        raise ValueError(f"unknown output {output!r}: expected one of {', '.join(OUTPUTS[1:])}")
    loss = (losses.sum(axis=1, keepdims=True) * scale).sum()
    a -= Y
    a *= scale
    return a, loss


def output_activation(xp, z, output: str):
    """a[L] = f(z[L]) for any output layer: probabilities, or predictions for regression."""
    if output == "softmax":
        return softmax(xp, z)
    if output == "logistic":
        return sigmoid(xp, z)
    if output == "exp":
        return xp.exp(z)
    return z


def l2_gradient(g, p, l2, n_weights: int):
    """g with the L2 penalty's gradient on the weights: the first n_weights elements (in row-major
    order) g + l2 * p, the rest as in g (a copy; g itself when n_weights is 0). g, p: arrays of
    one shape, flat (n_params,) in gpubp.mlp's layout, the weights first; l2 = alpha / n, a number
    or a 0-d array of p's dtype."""
    if not n_weights:
        return g
    g = g.copy()
    weights = g.reshape(-1)[:n_weights]  # a view (the copy is C-contiguous): += writes g
    weights += l2 * p.reshape(-1)[:n_weights]
    return g


def sgd_momentum_update(xp, p, g, v, lr: float, momentum: float, nesterov: bool, l2=0.0, n_weights: int = 0,
                        scratch=None) -> None:
    """In place: v = momentum v - lr g; p += v, or p += momentum v - lr g (Nesterov).

    p, g, v: arrays of one shape and dtype (g is not changed). l2, n_weights: the L2 penalty's
    gradient folded in, g read as :func:`l2_gradient` gives it (flat arrays; none when n_weights
    is 0). scratch: optional pair of arrays of p's shape and dtype for the intermediate products,
    so that no temporaries are allocated on each step.
    """
    g = l2_gradient(g, p, l2, n_weights)
    s1, s2 = scratch if scratch is not None else (xp.empty_like(p), xp.empty_like(p))
    xp.multiply(g, lr, out=s1)  # lr g
    v *= momentum
    v -= s1
    if nesterov:
        xp.multiply(v, momentum, out=s2)
        s2 -= s1
        p += s2
    else:
        p += v


def adam_update(xp, p, g, m, v, lr_t: float, beta1: float, beta2: float, eps: float, l2=0.0, n_weights: int = 0,
                scratch=None) -> None:
    """In place: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= lr_t m / (sqrt(v) + eps).

    lr_t carries Adam's bias correction for this step. p, g, m, v: arrays of one shape and dtype
    (g is not changed); l2, n_weights: as in :func:`sgd_momentum_update`; scratch: optional pair
    of arrays like them for the intermediate results.
    1 - beta is computed in double, then rounded to p's dtype (as the kernel does).
    """
    g = l2_gradient(g, p, l2, n_weights)
    s1, s2 = scratch if scratch is not None else (xp.empty_like(p), xp.empty_like(p))
    m *= beta1
    xp.multiply(g, 1 - beta1, out=s1)
    m += s1
    v *= beta2
    xp.multiply(g, g, out=s1)
    s1 *= 1 - beta2
    v += s1
    xp.multiply(m, lr_t, out=s1)
    xp.sqrt(v, out=s2)
    s2 += eps
    s1 /= s2
    p -= s1


class TwinKernels:
    """The NumPy twins as a kernel set (gpubp.kernel_set.KernelSet): plain array calls, run by
    whichever ``xp`` is passed."""

    bias_activation = staticmethod(bias_activation)
    backprop_delta = staticmethod(backprop_delta)
    softmax_minus_y = staticmethod(softmax_minus_y)
    output_minus_y = staticmethod(output_minus_y)
    output_activation = staticmethod(output_activation)
    cross_entropy = staticmethod(cross_entropy)
    sgd_momentum_update = staticmethod(sgd_momentum_update)
    adam_update = staticmethod(adam_update)

    def __repr__(self) -> str:
        return "gpubp.ops.TWIN_KERNELS"


TWIN_KERNELS = TwinKernels()
