"""Checkpoints of the estimators' fits: a fit stopped and resumed ends exactly as an uninterrupted
one, a finished fit is not trained further, and what cannot resume is refused."""

import shutil
import threading
import warnings

import numpy as np
import pytest
from sklearn.base import clone

from gpubp import MLP, MLPClassifier, MLPRegressor, DataError, RankFailedError, fit, load_estimator
from gpubp import estimator_checkpoint
from gpubp.communicator import Communicator
from gpubp.optim import Adam

CASES = {
    "adam, early stopping, weights": (MLPClassifier, dict(solver="adam", early_stopping=True, n_iter_no_change=50,
                                                          learning_rate_init=0.01), True),
    "nesterov, invscaling": (MLPClassifier, dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.2,
                                                 power_t=0.3), False),
    "regressor, sgd adaptive, 2 outputs": (MLPRegressor, dict(solver="sgd", learning_rate="adaptive", tol=1e-2,
                                                              n_iter_no_change=2, learning_rate_init=0.05), False),
}


def problem(outputs=1, n=150, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    if outputs == 1:
        return X, (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    return X, np.stack([X[:, 0] - X[:, 1], X[:, 2] * 0.5], axis=1)


def estimator(name, **extra):
    Estimator, settings, _ = CASES[name]
    return Estimator(**{"hidden_layer_sizes": (10,), "batch_size": 32, "random_state": 3, "device": "cpu",
                        **settings, **extra})


def data(name):
    Estimator, _, weighted = CASES[name]
    X, y = problem(2 if Estimator is MLPRegressor else 1)
    return X, y, (np.linspace(0.5, 2, X.shape[0]) if weighted else None)


def quiet_fit(est, X, y, w=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter warnings of the shortened fits
        return est.fit(X, y, sample_weight=w)


def assert_same_fit(a, b):
    for pa, pb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(pa, pb)
    assert a.loss_curve_ == b.loss_curve_ and a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    assert a.validation_scores_ == b.validation_scores_ and a.best_validation_score_ == b.best_validation_score_
    assert a.best_loss_ == b.best_loss_ and a._no_improvement_count == b._no_improvement_count


@pytest.mark.parametrize("name", CASES)
def test_a_fit_stopped_after_k_iterations_and_resumed_ends_as_the_uninterrupted_one(tmp_path, name):
    X, y, w = data(name)
    whole = quiet_fit(estimator(name, max_iter=9), X, y, w)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=4, checkpoint=path), X, y, w)
    resumed = quiet_fit(estimator(name, max_iter=9, checkpoint=path, resume=True), X, y, w)
    assert resumed.n_iter_ == whole.n_iter_ > 4
    assert_same_fit(whole, resumed)
    np.testing.assert_array_equal(whole.predict(X), resumed.predict(X))


def test_a_fit_interrupted_inside_an_iteration_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    """Ctrl-C in the middle of iteration 4 (checkpoint every 2): the resumed fit redoes iterations
    3 and 4 from the checkpoint of iteration 2 and ends as the uninterrupted fit."""
    name = "adam, early stopping, weights"
    X, y, w = data(name)
    whole = quiet_fit(estimator(name, max_iter=7), X, y, w)
    path, steps, real = tmp_path / "fit.npz", [], Adam.update

    def update_then_interrupt(self, *args):
        real(self, *args)
        steps.append(1)
        if len(steps) == 3 * 4 + 2:  # 4 batches an iteration (135 training rows, batch 32)
            raise KeyboardInterrupt

    monkeypatch.setattr(Adam, "update", update_then_interrupt)
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        quiet = estimator(name, max_iter=7, checkpoint=path, checkpoint_every=2)
        quiet.fit(X, y, sample_weight=w)
    monkeypatch.setattr(Adam, "update", real)
    assert len(steps) == 14
    resumed = quiet_fit(estimator(name, max_iter=7, checkpoint=path, checkpoint_every=2, resume=True), X, y, w)
    assert_same_fit(whole, resumed)


def test_a_resumed_fit_keeps_the_early_stopping_split_when_random_state_is_none(tmp_path):
    """With random_state=None a new draw would split other rows off: two resumptions of one
    checkpoint must agree, so the split comes from the checkpoint."""
    name = "adam, early stopping, weights"
    X, y, w = data(name)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=3, checkpoint=path, random_state=None), X, y, w)
    shutil.copy(path, tmp_path / "copy.npz")
    first = quiet_fit(estimator(name, max_iter=5, checkpoint=path, resume=True, random_state=None), X, y, w)
    second = quiet_fit(estimator(name, max_iter=5, checkpoint=tmp_path / "copy.npz", resume=True,
                                 random_state=None), X, y, w)
    assert first.validation_scores_[:3] == second.validation_scores_[:3]  # restored records
    assert first.validation_scores_[3:] == second.validation_scores_[3:]  # scored on the same rows


def test_a_fit_that_stopped_is_restored_and_not_trained_further(tmp_path):
    name = "regressor, sgd adaptive, 2 outputs"
    X, y, _ = data(name)
    path = tmp_path / "fit.npz"
    done = quiet_fit(estimator(name, max_iter=200, checkpoint=path), X, y)
    assert done.n_iter_ < 200  # the stopping rule ended it
    again = quiet_fit(estimator(name, max_iter=300, checkpoint=path, resume=True), X, y)
    assert_same_fit(done, again)


def test_resume_without_a_file_starts_afresh_and_writes_one(tmp_path):
    name = "nesterov, invscaling"
    X, y, _ = data(name)
    path = tmp_path / "fit.npz"
    plain = quiet_fit(estimator(name, max_iter=5), X, y)
    fresh = quiet_fit(estimator(name, max_iter=5, checkpoint=path, resume=True), X, y)
    assert_same_fit(plain, fresh)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["fit.npz"]  # no temporary left


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(alpha=0.5), r"needs its settings: alpha=0.0001 there, 0.5 here"),
        (dict(max_iter=2), r"has fitted 4 iterations, more than max_iter=2"),
        (dict(hidden_layer_sizes=(11,)), r"hidden_layer_sizes=\[10\] there, \[11\] here"),
        (dict(data=1), r"the training data differ from those .* was fitted on"),
    ],
)
def test_resume_refuses_what_does_not_match(tmp_path, change, message):
    name = "nesterov, invscaling"
    X, y, _ = data(name)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=4, checkpoint=path), X, y)
    if change.pop("data", None):
        X = X.copy()
        X[7, 2] += 1e-9
    with pytest.raises(ValueError, match=message):
        quiet_fit(estimator(name, **{"max_iter": 6, "checkpoint": path, "resume": True, **change}), X, y)


def test_what_cannot_checkpoint_is_refused(tmp_path):
    X, y = problem()
    path = tmp_path / "fit.npz"
    with pytest.raises(ValueError, match=r"partial_fit does not write checkpoints"):
        MLPClassifier((4,), checkpoint=path, device="cpu").partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"checkpoint needs solver 'sgd' or 'adam'.*lbfgs"):
        MLPClassifier((4,), solver="lbfgs", checkpoint=path, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match=r"resume=True needs checkpoint=<path"):
        MLPClassifier((4,), resume=True, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match=r"folder .*nowhere does not exist"):
        MLPClassifier((4,), checkpoint=tmp_path / "nowhere" / "fit.npz", device="cpu").fit(X, y)
    with pytest.raises(ValueError, match=r"'checkpoint_every' parameter .* must be an int in the range \[1, inf\)"):
        MLPClassifier((4,), checkpoint=path, checkpoint_every=0, device="cpu").fit(X, y)
    assert not path.exists()


def test_a_folder_as_checkpoint_or_save_path_is_refused_before_fitting(tmp_path):
    X, y = problem()
    est = MLPClassifier((4,), max_iter=2, checkpoint=tmp_path, device="cpu")
    with pytest.raises(ValueError, match=f"checkpoint='{tmp_path}': it is a folder"):
        est.fit(X, y)
    assert not hasattr(est, "coefs_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged
        est.set_params(checkpoint=None).fit(X, y)
    with pytest.raises(ValueError, match=f"{tmp_path}: it is a folder"):
        est.save(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_of_another_kind_is_refused_with_how_to_read_it(tmp_path):
    X, y = problem()
    fit(MLP([6, 10, 3], backend="cpu", seed=0), X, y, epochs=1, checkpoint=tmp_path / "run.npz", checkpoint_every=1, seed=0)
    with pytest.raises(DataError, match=r"is a checkpoint, not a checkpoint of an estimator's fit: resume it with "
                                        r"gpubp.fit"):
        quiet_fit(MLPClassifier((10,), checkpoint=tmp_path / "run.npz", resume=True, device="cpu"), X, y)


def test_the_checkpoint_settings_are_estimator_parameters(tmp_path):
    est = MLPRegressor(checkpoint=tmp_path / "a.npz", checkpoint_every=3, resume=True)
    params = clone(est).get_params()
    assert (params["checkpoint"], params["checkpoint_every"], params["resume"]) == (tmp_path / "a.npz", 3, True)
    assert MLPClassifier().get_params()["checkpoint"] is None


@pytest.mark.parametrize("first, second", [("cuda", "cpu"), ("cpu", "cuda")])
def test_a_fit_checkpoint_resumes_on_the_other_device(fake_cupy, tmp_path, first, second):
    """The checkpoint holds host arrays: a fit stopped on one device resumes on the other (the CUDA
    one here is the CuPy stand-in running the CUDA kernels) and ends as the uninterrupted fit."""
    name = "adam, early stopping, weights"
    X, y, w = data(name)
    whole = quiet_fit(estimator(name, max_iter=7, device="cpu"), X, y, w)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=3, device=first, checkpoint=path), X, y, w)
    resumed = quiet_fit(estimator(name, max_iter=7, device=second, checkpoint=path, resume=True), X, y, w)
    assert resumed.n_iter_ == whole.n_iter_
    for pa, pb in zip(whole.coefs_ + whole.intercepts_, resumed.coefs_ + resumed.intercepts_):
        np.testing.assert_allclose(pb, pa, rtol=1e-9, atol=1e-12)  # float64; the kernels sum in another order
    np.testing.assert_allclose(resumed.loss_curve_, whole.loss_curve_, rtol=1e-9)


def test_validation_data_are_part_of_the_checkpoint(tmp_path):
    name = "nesterov, invscaling"
    X, y, _ = data(name)
    train, val = (X[:110], y[:110]), (X[110:], y[110:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = estimator(name, max_iter=6).fit(*train, validation_data=val)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=3, checkpoint=path), *train)  # no validation data: other data
    with pytest.raises(ValueError, match=r"the validation data differ from those .* was fitted on"):
        estimator(name, max_iter=6, checkpoint=path, resume=True).fit(*train, validation_data=val)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator(name, max_iter=3, checkpoint=path).fit(*train, validation_data=val)
        resumed = estimator(name, max_iter=6, checkpoint=path, resume=True).fit(*train, validation_data=val)
    assert_same_fit(whole, resumed)
    assert resumed.validation_loss_curve_ == whole.validation_loss_curve_


def test_warm_started_calls_go_on_from_the_estimator_not_from_its_checkpoint(tmp_path):
    """resume is for a fit that starts afresh (a relaunch): each warm-started call on the fitted
    estimator trains its iterations, as without a checkpoint."""
    name = "nesterov, invscaling"
    X, y, _ = data(name)
    plain = estimator(name, max_iter=4, warm_start=True)
    saving = estimator(name, max_iter=4, warm_start=True, checkpoint=tmp_path / "fit.npz", resume=True)
    for _ in range(3):
        quiet_fit(plain, X, y)
        quiet_fit(saving, X, y)
    assert len(saving.loss_curve_) == len(plain.loss_curve_) == 12
    assert_same_fit(plain, saving)


def test_equivalent_settings_resume(tmp_path):
    """hidden_layer_sizes 10 and (10,), a random_state seed and a generator (the checkpoint holds
    what it drew), and dtype None or the data's are the same fit."""
    name = "nesterov, invscaling"
    X, y, _ = data(name)
    whole = quiet_fit(estimator(name, max_iter=6), X, y)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=3, checkpoint=path), X, y)
    resumed = quiet_fit(estimator(name, max_iter=6, checkpoint=path, resume=True, hidden_layer_sizes=10,
                                  random_state=np.random.RandomState(3), dtype="float64"), X, y)
    assert_same_fit(whole, resumed)


class ThreadRanks(Communicator):
    """Data-parallel ranks played by threads of this process (a barrier that times out, so that a
    rank left waiting fails the test instead of hanging it)."""

    def __init__(self, shared: dict, rank: int, size: int):
        self.shared, self.rank, self.size, self.local_rank = shared, rank, size, 0

    def allgather_object(self, obj):
        self.barrier()
        self.shared[self.rank] = obj
        self.barrier()
        values = [self.shared[r] for r in range(self.size)]
        self.barrier()
        return values

    def allreduce_sum(self, buffer):
        buffer[...] = sum(self.allgather_object(buffer.copy()))
        return buffer

    def bcast_object(self, obj, root=0):
        return self.allgather_object(obj)[root]

    def barrier(self):
        self.shared["barrier"].wait()


def on_two_ranks(work) -> list:
    """``work(comm)`` on 2 thread ranks: each rank's result or the exception it raised."""
    shared, results = {"barrier": threading.Barrier(2, timeout=30)}, [None, None]

    def rank(r):
        try:
            results[r] = work(ThreadRanks(shared, r, 2))
        except Exception as exc:
            results[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), name=f"rank{r}") for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_a_checkpoint_that_rank_0_cannot_write_stops_every_rank(tmp_path, monkeypatch):
    name = "nesterov, invscaling"
    X, y, _ = data(name)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(estimator_checkpoint, "write", full_disk)
    rank0, rank1 = on_two_ranks(lambda comm: estimator(name, max_iter=3, checkpoint=tmp_path / "f.npz")
                                .fit(X, y, comm=comm))
    assert isinstance(rank0, OSError) and "No space left" in str(rank0)
    assert isinstance(rank1, RankFailedError) and "rank 0 of 2 failed writing a checkpoint: OSError" in str(rank1)


def test_the_ranks_resume_as_rank_0_decides(tmp_path, monkeypatch):
    """A rank that does not see the checkpoint (a disk that is not shared) fails every rank with
    its reason, instead of starting afresh beside ranks that resume."""
    name = "nesterov, invscaling"
    X, y, _ = data(name)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=3, checkpoint=path), X, y)
    real_read = estimator_checkpoint.read

    class NotOnRank1(type(path)):
        def is_file(self):
            return threading.current_thread().name != "rank1" and super().is_file()

    def read_but_on_rank1(file, kind):
        if threading.current_thread().name == "rank1":
            raise DataError(f"no checkpoint of an estimator's fit at {file}")
        return real_read(file, kind)

    monkeypatch.setattr(estimator_checkpoint, "Path", NotOnRank1)
    monkeypatch.setattr(estimator_checkpoint, "read", read_but_on_rank1)
    rank0, rank1 = on_two_ranks(lambda comm: estimator(name, max_iter=6, checkpoint=path, resume=True)
                                .fit(X, y, comm=comm))
    assert isinstance(rank1, DataError) and "no checkpoint" in str(rank1)
    assert isinstance(rank0, RankFailedError) and "rank 1 of 2" in str(rank0)


def test_partial_fit_goes_on_after_load_estimator(tmp_path):
    """A loaded estimator has no optimizer yet: partial_fit starts one (it raised AttributeError)."""
    X, y = problem()
    quiet_fit(MLPClassifier((6,), max_iter=2, random_state=0, device="cpu"), X, y).save(tmp_path / "e.npz")
    loaded = load_estimator(tmp_path / "e.npz", device="cpu")
    before = loaded.coefs_[0].copy()
    loaded.partial_fit(X, y)
    assert loaded.n_iter_ >= 1 and not np.array_equal(loaded.coefs_[0], before)


@pytest.mark.gpu
def test_a_fit_checkpoint_written_on_a_card_resumes_there_exactly_and_on_the_cpu(tmp_path):
    """On a real card: stopped after 3 iterations and resumed, the fit ends bit-identical to the
    uninterrupted fit on the card (the same kernels in the same order), and the same checkpoint
    resumed on the CPU ends within float64 roundoff of it (other summation orders)."""
    name = "adam, early stopping, weights"
    X, y, w = data(name)
    whole = quiet_fit(estimator(name, max_iter=7, device="cuda"), X, y, w)
    path = tmp_path / "fit.npz"
    quiet_fit(estimator(name, max_iter=3, device="cuda", checkpoint=path), X, y, w)
    copy = shutil.copy(path, tmp_path / "copy.npz")
    on_card = quiet_fit(estimator(name, max_iter=7, device="cuda", checkpoint=path, resume=True), X, y, w)
    assert_same_fit(whole, on_card)
    on_cpu = quiet_fit(estimator(name, max_iter=7, device="cpu", checkpoint=copy, resume=True), X, y, w)
    assert on_cpu.n_iter_ == whole.n_iter_
    for pa, pb in zip(whole.coefs_ + whole.intercepts_, on_cpu.coefs_ + on_cpu.intercepts_):
        np.testing.assert_allclose(pb, pa, rtol=1e-9, atol=1e-12)
