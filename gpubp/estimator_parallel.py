"""What the estimators do to fit data-parallel (``fit(..., comm=...)``): the checks each rank makes
alone before the ranks compare, and the start-up every rank makes together."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import validate_data

from .rows import HostRows, fingerprint


class DataParallelFit:
    """Data-parallel start-up of the estimators (a mixin of gpubp.estimator_base.BaseMLP)."""

    def _check_shared_validation(self, X, sample_weight, validation_data):
        """Data parallel: what each rank checks alone before the ranks compare their inputs. Negative
        weights are refused (a rank's share of a batch could weigh 0 while its rows do not); a
        validation set is checked here, inside the ranks' agreement."""
        if sample_weight is not None and (sample_weight < 0).any():
            raise ValueError("data-parallel fitting (comm) needs sample weights >= 0")
        if validation_data is None:
            return None
        Xv, yv = validation_data
        return validate_data(self, Xv, accept_sparse=["csr", "csc"], dtype=X.dtype, reset=False), np.asarray(yv)

    def _start_together(self, comm, X, Y, sample_weight, validation_data) -> None:
        """Data parallel: every rank takes rank 0's random state (initial parameters, validation
        split and batch orders) and must have rank 0's settings, data and fitted state."""
        state = comm.bcast_object(self._random_state.get_state())
        self._random_state = np.random.RandomState()
        self._random_state.set_state(state)
        settings = {k: v for k, v in self.get_params().items() if k not in ("verbose", "random_state")}
        comm.check_same({"settings": repr(sorted(settings.items())), "data": fingerprint(HostRows(X), Y, X.dtype, sample_weight),
                         "fitted": [np.asarray(p).tobytes() for p in getattr(self, "coefs_", [])],
                         "validation": None if validation_data is None else
                         fingerprint(HostRows(validation_data[0]), validation_data[1], X.dtype)})
