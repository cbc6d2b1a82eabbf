"""The network: parameters, the forward pass and the backward pass (BP1-BP4).

Row form throughout: a batch is a matrix whose rows are samples, so a layer is
``z = a_prev @ W + b`` with W of shape (n_in, n_out). The textbook derivation (Nielsen,
"Neural Networks and Deep Learning", ch. 2) uses column vectors, ``z = W a + b`` with W of shape
(n_out, n_in); every equation here is the transpose of the one there.
"""

from __future__ import annotations

import contextlib

import numpy as np

from . import bfloat16, cublas_direct, ops, precision, prediction
from .initialization import flat_views, init_params
from .params import check
from .backend import Backend, get_backend
from .validation import check_dtype, check_parameters, check_sizes


class MLP:
    """A fully connected network with a softmax + cross-entropy output.

    Parameters
    ----------
    sizes : list of int
        Layer widths ``[n0, n1, ..., nL]``: n0 input features, nL >= 2 classes.
    activation : {"relu", "sigmoid", "tanh", "identity"}
        Activation of every hidden layer.
    backend : {"auto", "cpu", "cuda"} or Backend
        Where the parameters live and the arithmetic runs (see :func:`gpubp.backend.get_backend`).
    dtype : {"float32", "float64", "bfloat16"}
        Dtype of parameters and computation. "bfloat16": products and saved activations in
        bfloat16 (float32 sums), the rest float32; the CPU rounds where the card does
        (:mod:`gpubp.bfloat16`). ``dtype`` is then float32 and ``compute_dtype`` bfloat16.
    seed : int or None
        Seed of the host generator that draws the initial parameters (:func:`gpubp.initialization.init_params`).
    alpha : float
        L2 penalty: the loss gains ``alpha / (2 n) * sum ||W||^2`` over a batch of n rows.
    output : {"softmax", "logistic", "identity", "exp"}
        Output layer and loss (see :data:`gpubp.ops.OUTPUTS`): softmax with cross-entropy over
        nL >= 2 classes (labels are class indices), or per-output logistic with binary
        cross-entropy, identity with half squared error, exp with Poisson deviance (targets
        are an (n, nL) array).
    tf32 : bool
        float32 only; False (default): IEEE float32. True: every product uses TF32 (inputs rounded
        to 10 mantissa bits, float32 sums, ~3e-4 relative error, float32's rate several times): on CUDA
        :func:`gpubp.precision.tf32_products`, on NumPy its model :func:`gpubp.precision.matmul_as_tf32`.

    Attributes
    ----------
    dtype, compute_dtype : numpy dtype
        Of the parameters, gradients and loss (float32 or float64), and of the products and saved
        activations (``dtype``, or bfloat16: its name is the ``dtype`` the network was made with).
    flat_params : array (n_params,)
        Every parameter in one buffer on the backend's device: the weights, row-major, layer by
        layer, then the biases. An optimizer updates it in one pass, and a gradient
        (:meth:`flat_loss_and_grad`) has the same layout.
    weights, biases : lists of arrays
        ``weights[l]`` (sizes[l], sizes[l+1]) and ``biases[l]`` (sizes[l+1],): views of ``flat_params``.
    """

    _gemm = None  # the products' route inside direct_products

    def __init__(self, sizes, activation="relu", backend="auto", dtype="float32", seed=None, alpha=0.0,
                 output="softmax", tf32=False):
        if output not in ops.OUTPUTS:
            raise ValueError(f"unknown output {output!r}: expected one of {', '.join(ops.OUTPUTS)}")
        self.output = output
        self.sizes = check_sizes(sizes, min_outputs=2 if output == "softmax" else 1)
        self.activation = ops.check_activation(activation)
        self.backend: Backend = get_backend(backend)
        self.xp = self.backend.xp
        self.compute_dtype = check_dtype(dtype)
        self.dtype = bfloat16.parameter_dtype(self.compute_dtype)
        self.tf32 = precision.check_tf32(tf32, self.dtype)
        bfloat16.check_mode(self.compute_dtype, self.tf32, self.xp)
        self.alpha = check("alpha", alpha)  # the L2 penalty: a ParameterError (ValueError) unless a float >= 0
        self.seed = check("seed", seed)  # a ParameterError unless an int >= 0 or None
        weights, biases = init_params(self.sizes, self.activation, seed)
        host = np.concatenate([a.ravel() for a in weights + biases])  # (n_params,), flat_params' layout
        self.flat_params = self.backend.asarray(host, self.dtype)
        self.weights, self.biases = self.unflatten(self.flat_params)

    def __repr__(self) -> str:
        widths = "-".join(map(str, self.sizes))
        tf32 = ", tf32" if self.tf32 else ""
        return f"MLP({widths}, {self.activation}, {self.output}, {self.compute_dtype.name}, {self.backend.name}{tf32})"

    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    @property
    def n_params(self) -> int:
        """Number of trainable scalars."""
        return sum(n_in * n_out + n_out for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def params(self) -> list:
        """Weights then biases, the arrays themselves: views of ``flat_params``."""
        return self.weights + self.biases

    @property
    def n_weights(self) -> int:
        """Number of weights: ``flat_params[:n_weights]`` are the weights, the rest the biases."""
        return sum(n_in * n_out for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:]))

    def unflatten(self, flat) -> tuple[list, list]:
        """Views of a flat (n_params,) array as (weights, biases) shaped like the network's."""
        if tuple(flat.shape) != self.flat_params.shape:  # (a longer one's tail was ignored)
            raise ValueError(f"unflatten takes an array of shape {self.flat_params.shape}, got {tuple(flat.shape)}")
        return flat_views(flat, self.sizes)

    # ------------------------------------------------------------------ forward and backward

    def _products(self):
        """The block every product of a pass runs in: TF32 on a card when tf32, float32 partial
        sums in cuBLAS for bfloat16 (gpubp.bfloat16.float32_accumulation), else nothing."""
        if self.compute_dtype != self.dtype:
            return bfloat16.float32_accumulation(self.xp)
        return precision.tf32_products(self.xp, self.tf32)

    def _matmul(self, a, b, out=None):
        """a @ b (into ``out`` when given): the network's one way to take a product. With tf32 or
        bfloat16 on NumPy, the CPU model of the card's product; on CUDA :meth:`_products` sets
        how cuBLAS computes it (through :meth:`direct_products`' gemm inside that block).
        bfloat16 a and b give bfloat16, or their float32 sums unrounded in a float32 out."""
        if self.xp is np and self.compute_dtype != self.dtype:
            return bfloat16.matmul_as_bfloat16(a, b, out=out)
        if self.tf32 and self.xp is np:
            return precision.matmul_as_tf32(a, b, out=out)
        if self._gemm is not None:
            return self._gemm(a, b, out=out)
        if out is not None and out.dtype != a.dtype:  # bfloat16 operands into the float32 gradient
            return cublas_direct.matmul_into_float32(a, b, out)
        return self.xp.matmul(a, b, out=out)

    @contextlib.contextmanager
    def direct_products(self, gemm):
        """Products by ``gemm(a, b, out=None)`` inside the block, not xp.matmul (gpubp.cuda_graph
        captures with gpubp.cublas_direct.gemm: CuPy refuses its own cuBLAS while capturing)."""
        previous, self._gemm = self._gemm, gemm
        try:
            yield
        finally:
            self._gemm = previous

    def _forward(self, X):
        """Hidden activations a[0] = X, ..., a[L-1] (compute_dtype) and the logits z[L] (n, nL)."""
        with self._products():
            a, zL, _ = self._forward_products(X)
        zL += self.biases[-1]
        return a, zL

    def _forward_products(self, X):
        """a[0] = X, ..., a[L-1] and the weights in compute_dtype, and a[L-1] @ W[L] (n, nL) in dtype
        without the output bias (BP1's kernel adds it as it reads the logits). Callers hold _products()."""
        xp, kernels, bf16 = self.xp, self.backend.kernels, self.compute_dtype != self.dtype
        weights, a = self.weights, [X]
        if bf16:  # W (one cast a pass, viewed per layer) and X rounded once to bfloat16 (a resident X is)
            weights = self.unflatten(self.flat_params.astype(self.compute_dtype))[0]
            a = [X.astype(self.compute_dtype, copy=False)]
        for W, b in zip(weights[:-1], self.biases[:-1]):
            z = self._matmul(a[-1], W)  # (n, sizes[l+1])
            a.append(kernels.bias_activation(xp, z, b, self.activation))
        zL = self._matmul(a[-1], weights[-1])  # (n, nL)
        return a, (zL.astype(self.dtype) if bf16 else zL), weights

    def flat_loss_and_grad(self, X, y, sample_weight=None, l2: bool = True):
        """The trainers' step: loss and gradient of a batch with no checks and no host sync.

        Parameters
        ----------
        X : array (n, sizes[0]) of the network's dtype (or its compute dtype), on its device
        y : integer array (n,) with every label in 0..sizes[-1]-1 (a softmax output; a kernel
            does not bounds-check, so check on the host first), or the targets (n, sizes[-1])
        sample_weight : array (n,) on the device, optional (checked by the caller)
        l2 : bool
            Include the L2 term (when alpha > 0). The trainers leave it out and add it once (to
            the ranks' summed gradient), most often inside the optimizer's update (gpubp.engine).

        Returns
        -------
        loss : 0-d array on the device
        g : array (n_params,), the gradient in ``flat_params``' layout (``unflatten(g)`` gives
            dW and db); a new buffer each call
        """
        with self._products():
            return self._flat_loss_and_grad(X, y, sample_weight, l2)

    def _flat_loss_and_grad(self, X, y, sample_weight, l2: bool):
        """flat_loss_and_grad's forward and backward pass, inside _products()."""
        xp, kernels, bf16 = self.xp, self.backend.kernels, self.compute_dtype != self.dtype
        a, zL, weights = self._forward_products(X)  # zL: (n, nL) without the output bias
        g = xp.empty(self.flat_params.shape, dtype=self.dtype)  # (n_params,)
        dW, db = self.unflatten(g)
        # BP1: delta[L] = (a[L] - Y) / n, with the mean loss from the same pass
        if self.output == "softmax":
            delta, loss = kernels.softmax_minus_y(xp, zL, y, sample_weight, self.biases[-1])
        else:
            zL += self.biases[-1]
            delta, loss = kernels.output_minus_y(xp, zL, y, self.output, sample_weight)
        delta.sum(axis=0, out=db[-1])  # BP3: db[L] = sum over the batch of delta[L]
        ones = xp.ones((1, X.shape[0]), self.compute_dtype) if bf16 else None  # (1, n)
        for l in reversed(range(len(self.weights))):
            if bf16 and delta.dtype != self.compute_dtype:  # delta[L] rounded for BP4 and BP2
                delta = delta.astype(self.compute_dtype)
            # BP4: dW[l] = a[l-1].T @ delta[l]
            self._matmul(a[l].T, delta, out=dW[l])
            if l > 0:
                # BP2: delta[l-1] = (delta[l] @ W[l].T) * f'(z[l-1]), f' from the saved a, and BP3's
                # db[l-1] in the same pass; a bfloat16 delta's as ones @ delta, float32 sums (CuPy's
                # axis-0 sum of it is slow)
                delta = kernels.backprop_delta(xp, self._matmul(delta, weights[l].T), a[l], self.activation,
                                               None if bf16 else db[l - 1])
                if bf16:
                    self._matmul(ones, delta, out=db[l - 1].reshape(1, -1))
        if self.alpha and l2:
            loss = loss + self.add_l2(g, self.l2_scale(X.shape[0] if sample_weight is None else sample_weight.sum()))
        return loss, g

    def add_l2(self, g, c):
        """g's weights += c * W, in place, c = :meth:`l2_scale` (the trainers mostly fold this into
        the optimizer's update); returns :meth:`l2_loss`. g: (n_params,) in flat_params' layout."""
        gW = g[:self.n_weights]
        gW += c * self.flat_params[:self.n_weights]  # (on a view: g[:k] += would copy it back onto itself)
        return self.l2_loss(c)

    def l2_scale(self, n):
        """c = alpha / n in the network's dtype (NumPy 1.x would widen a float32 scalar times a
        Python float), n the row count (int) or the total sample weight (0-d: so is c, no sync)."""
        return self.dtype.type(self.alpha / n) if isinstance(n, (int, float)) else (self.alpha / n).astype(self.dtype)

    def l2_loss(self, c):
        """The loss's L2 term c/2 * sum ||W||^2 (0-d, on the device), c from :meth:`l2_scale`."""
        W = self.flat_params[:self.n_weights]
        return self.xp.vdot(W, W) * (c * self.dtype.type(0.5))

    def loss_and_grads(self, X, y, sample_weight=None):
        """Mean loss of a batch and its gradient by backpropagation, the inputs checked first.

        X (n, sizes[0]), host or device; y: class indices (n,) in 0..sizes[-1]-1 (softmax) or the
        targets (n, sizes[-1]); sample_weight (n,), optional: non-negative, not all zero (the loss
        becomes ``sum(w_i l_i) / sum(w)``, the L2 term ``alpha / (2 sum(w)) * sum ||W||^2``).
        Returns (loss, dW, db): a 0-d device array (the L2 term included; ``float(loss)`` for a
        number), and lists shaped like ``weights`` and ``biases``, views of one flat gradient.
        """
        loss, g = self.flat_loss_and_grad(*prediction.checked_batch(self, X, y, sample_weight))
        return (loss, *self.unflatten(g))

    # ------------------------------------------------------------------ prediction (gpubp.prediction)

    def logits(self, X):
        """z[L] (n, sizes[-1]), the output layer's pre-activations, of rows X (n, sizes[0]), host or
        device, in one batch and unchecked (see predict_output for checked, batched rows)."""
        return self._forward(self.backend.asarray(X, self.dtype))[1]

    def predict_output(self, X, batch_size: int = 4096):
        """a[L] (n, sizes[-1]) on the network's device of X (n, sizes[0]), host or device, computed
        ``batch_size`` rows at a time: probabilities for softmax and logistic outputs, predictions
        for identity and exp outputs. See :func:`gpubp.prediction.predict_output`."""
        return prediction.predict_output(self, X, batch_size)

    def predict_proba(self, X, batch_size: int = 4096):
        """Class probabilities (n, sizes[-1]) of a softmax or logistic output; see predict_output."""
        return prediction.predict_proba(self, X, batch_size)

    def predict(self, X, batch_size: int = 4096):
        """Most probable class index for each row of a softmax network: integer array (n,)."""
        return prediction.predict(self, X, batch_size)

    def evaluate(self, X, y, batch_size: int = 4096, check: bool = True) -> tuple[float, float | None]:
        """(loss, accuracy): the mean loss (without the L2 term) over X (n, sizes[0]) and labels y
        (n,) (softmax) or targets (n, sizes[-1]), host or device, batched; accuracy is None for a
        non-softmax output.
        ``check=False`` skips the checks of X, y and batch_size, for arrays already checked and
        on the device (a trainer's validation set). See :func:`gpubp.prediction.evaluate`."""
        return prediction.evaluate(self, X, y, batch_size, check)

    def score(self, X, y, batch_size: int = 4096) -> float:
        """Accuracy: the fraction of rows of X whose predicted class equals y (softmax output)."""
        prediction.require_softmax(self, "score")
        return self.evaluate(X, y, batch_size)[1]

    # ------------------------------------------------------------------ parameters

    def get_params(self) -> list:
        """Copies of weights then biases (for restoring later with :meth:`set_params`)."""
        return [p.copy() for p in self.params]

    def set_params(self, values) -> None:
        """Overwrite weights then biases in place from ``values`` (host or device arrays, or
        nested lists), all checked first (shapes; real, finite, in the dtype's range), so a bad
        one changes nothing (gpubp.validation.check_parameters)."""
        arrays = check_parameters(values, [p.shape for p in self.params], self.dtype)
        for p, v in zip(self.params, arrays):
            p[...] = self.backend.asarray(v, self.dtype)
