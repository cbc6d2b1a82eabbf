"""What the estimators gain from the shared engine: out-of-memory reported with a batch size that
fits, divergence found at the end of the epoch where it happened, sparse and weighted batches."""

import warnings

import numpy as np
import pytest
from scipy import sparse

from gpubp import MLP, DeviceMemoryError, MLPClassifier, MLPRegressor
from gpubp.distributed import SingleProcess


def problem(n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def test_out_of_memory_in_a_step_is_a_device_memory_error_with_advice(monkeypatch):
    X, y = problem()

    def no_memory(self, *args, **kwargs):
        raise MemoryError("Unable to allocate 3.00 GiB for an array with shape (1000000, 800)")

    monkeypatch.setattr(MLP, "flat_loss_and_grad", no_memory)
    with pytest.raises(DeviceMemoryError, match=r"epoch 1 \(step 1\) at batch size 32: .*3.00 GiB.*batch size \d+ "
                                                r"should fit"):
        MLPClassifier((8,), batch_size=32, max_iter=3, device="cpu").fit(X, y)


def test_parameters_that_blow_up_stop_the_fit_in_that_iteration():
    X, y = problem()
    X[:5] *= 1e300  # the first steps overflow the weights
    calls = []
    real = MLP.flat_loss_and_grad

    def counting(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    clf = MLPClassifier((8,), solver="sgd", learning_rate_init=1.0, batch_size=20, max_iter=50, shuffle=False,
                        device="cpu", random_state=0)
    MLP.flat_loss_and_grad = counting
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            with pytest.raises(ValueError, match=r"^Solver produced non-finite parameter weights.*iteration 1, "
                                                 r"step \d\.\)$"):
                clf.fit(X, y)
    finally:
        MLP.flat_loss_and_grad = real
    assert len(calls) == 4  # one epoch of 4 batches, not 50 epochs


@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_sparse_input_trains_as_its_dense_copy(Estimator):
    X, y = problem()
    X[np.abs(X) < 0.8] = 0
    settings = dict(hidden_layer_sizes=(6,), max_iter=4, random_state=1, device="cpu", batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = Estimator(**settings).fit(sparse.csr_matrix(X), y)
        b = Estimator(**settings).fit(X, y)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(p, q)
    assert a.loss_curve_ == b.loss_curve_


def test_sparse_weighted_input_streams_on_the_cuda_path_as_on_the_cpu(fake_cupy):
    """Sparse rows go through the pinned double buffers of the cuda path with their targets and
    weights (the CuPy stand-in runs that path's Python code) and train as on the CPU."""
    X, y = problem()
    X[np.abs(X) < 0.8] = 0
    w = np.random.default_rng(3).uniform(0.5, 2, len(y))
    fitted = {}
    for device in ("cpu", "cuda"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf = MLPClassifier((6,), max_iter=3, random_state=1, device=device, batch_size=16, dtype="float64")
            fitted[device] = clf.fit(sparse.csr_matrix(X), y, sample_weight=w)
    for p, q in zip(fitted["cpu"].coefs_, fitted["cuda"].coefs_):
        np.testing.assert_allclose(p, q, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fitted["cpu"].loss_curve_, fitted["cuda"].loss_curve_, rtol=1e-12)


def test_a_comm_that_is_not_a_gpubp_communicator_is_refused():
    X, y = problem()
    with pytest.raises(ValueError, match="comm must be a gpubp.distributed communicator, got <object"):
        MLPClassifier((4,), device="cpu").fit(X, y, comm=object())


class AlikeRanks(SingleProcess):
    """Rank ``rank`` of 2 whose peer holds and does what it does (its gathers give this rank's
    object twice): an estimator's data-parallel fit in one process."""

    def __init__(self, rank: int):
        self.rank, self.size = rank, 2

    def allgather_object(self, obj):
        return [obj, obj]


@pytest.mark.parametrize("agreed", [True, False])
def test_only_a_stop_every_rank_agreed_ends_a_data_parallel_fit_quietly(monkeypatch, agreed):
    """A stop signal agreed by every rank after the same step ends fit as scikit-learn's
    KeyboardInterrupt does (a warning, the model kept); a KeyboardInterrupt of one rank alone (a
    second signal mid-step) was caught the same way, and that rank went on while the others waited
    in the step's collective for ever: it now leaves fit (and the rank, through world()'s abort)."""
    import os
    import signal

    from gpubp import estimator_fit

    real_step, steps = estimator_fit.Engine.step, []

    def step(self, *args, **kwargs):  # a SIGINT during the second step; a second one too unless agreed
        steps.append(1)
        if len(steps) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            if not agreed:
                os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(estimator_fit.Engine, "step", step)
    X, y = problem()
    clf = MLPClassifier((4,), device="cpu", max_iter=3, batch_size=8)
    if agreed:
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            clf.fit(X, y, comm=AlikeRanks(rank=0))
        assert len(steps) == 2 and clf.coefs_[0].shape == (X.shape[1], 4)  # stopped after that step
    else:
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            clf.fit(X, y, comm=AlikeRanks(rank=0))


def test_data_parallel_early_stopping_decides_on_rank_0s_validation_figures():
    """Each rank scored the whole validation set; cards that round differently (another SM
    count, a MIG slice) would score it apart and stop, or divide the learning rate, apart: rank 0
    now scores it and every rank takes its figures (here a rank 1 whose rank 0 scored 0.125 each
    time), and a rank 1 does not score it at all."""

    class RankOneOfTwo(AlikeRanks):
        def bcast_object(self, obj, root=0):  # rank 0's validation figures: 0.125
            return 0.125 if obj is None else obj

    X, y = problem()
    clf = MLPClassifier((4,), device="cpu", max_iter=4, early_stopping=True, n_iter_no_change=10, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y, comm=RankOneOfTwo(rank=1))
    assert clf.validation_scores_ == [0.125] * clf.n_iter_ and clf.best_validation_score_ == 0.125
    assert clf.validation_loss_curve_ == [0.125] * clf.n_iter_
