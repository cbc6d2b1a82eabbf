"""The estimators' solver="lbfgs": scipy's L-BFGS-B on the host over the flat parameters, each
evaluation a full-batch loss and gradient on the device (scikit-learn's algorithm and words)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.optimize
from sklearn.exceptions import ConvergenceWarning

from .backend import to_numpy
from .engine import batch_loss_and_grad
from .estimator_data import check_batch_weights, dense, host_targets


class LbfgsFit:
    """solver="lbfgs", and the batch loss every solver reports (a mixin of
    gpubp.estimator_base.BaseMLP, through StochasticFit)."""

    def _batch_loss(self, net, Xb, Yb, wb):
        """Loss as scikit-learn reports it and the flat gradient (n_params,) as scikit-learn
        computes it, in the layout of net.flat_params (scikit-learn's packing: weights, then biases)."""
        return batch_loss_and_grad(net, Xb, Yb, wb, self._loss_scale(net))[:2]

    def _loss_scale(self, net) -> float:
        """The factor on the data part of the reported loss: scikit-learn's squared loss averages
        over the outputs (its gradient does not)."""
        return 1.0 / self.n_outputs_ if net.output == "identity" and self.n_outputs_ > 1 else 1.0

    def _fit_lbfgs(self, net, X, Y, sample_weight):
        backend = net.backend
        Xd = backend.asarray(dense(X), net.dtype)
        Yd = backend.asarray(host_targets(net, Y))
        wd = None if sample_weight is None else backend.asarray(sample_weight, net.dtype)
        check_batch_weights(sample_weight, np.arange(X.shape[0]), X.shape[0])

        def unpack(packed):  # (n_params,) float64 in scikit-learn's packing, which is flat_params' layout
            net.flat_params[...] = backend.asarray(packed, net.dtype)

        def loss_and_grad(packed):
            unpack(packed)
            loss, g = self._batch_loss(net, Xd, Yd, wd)
            return float(loss), to_numpy(g).astype(np.float64)

        packed = np.concatenate([p.ravel() for p in self.coefs_ + self.intercepts_])
        result = scipy.optimize.minimize(loss_and_grad, packed, method="L-BFGS-B", jac=True,
                                         options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        self.n_iter_ = min(result.nit, self.max_iter)
        if result.status != 0:
            warnings.warn(_lbfgs_warning(result, self.n_iter_, self.max_iter), ConvergenceWarning)
        self.loss_ = float(result.fun)
        unpack(result.x)


def _lbfgs_warning(result, n_iter: int, max_iter: int) -> str:
    """scikit-learn's words when L-BFGS-B stops without converging (utils.optimize)."""
    msg = f"lbfgs failed to converge after {n_iter} iteration(s) (status={result.status}):\n{result.message}\n"
    if n_iter == max_iter:  # advice to raise max_iter only when the limit is what stopped it
        msg += f"\nIncrease the number of iterations to improve the convergence (max_iter={max_iter})."
    return msg + ("\nYou might also want to scale the data as shown in:\n"
                  "    https://scikit-learn.org/stable/modules/preprocessing.html")
