"""One rank of the 2-rank job that tests/test_data_parallel.py starts to fit the estimators
data-parallel: ``python tests/estimator_worker.py OUT_DIR``. Each rank writes, per case, its
parameters and loss curve (or the error it raised) to OUT_DIR/<case>_rank<r>.json; the test fits
the same cases in one process and compares."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np

import gpubp


def data(n=150, seed=0):
    """X (n, 5), class labels (n,), two regression targets (n, 2) and sample weights (n,)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    Z = X @ rng.normal(size=(5, 2))
    return X, (Z[:, 0] > 0).astype(int) + (Z[:, 1] > 0), Z + 0.1 * rng.normal(size=Z.shape), rng.uniform(0.2, 2, n)


def case(name, rank=0):
    """(estimator, fit arguments) of a case; ``rank`` varies what rank 0's broadcast must override
    (a random state) or what the start-up check must refuse (alpha, the solver)."""
    X, y, Y, w = data()
    common = dict(device="cpu", dtype="float64", max_iter=12)
    if name == "classifier_adam_early_weighted":  # rank r seeds with 3 + r: rank 0's state must win
        est = gpubp.MLPClassifier((8,), solver="adam", early_stopping=True, batch_size=20, n_iter_no_change=30,
                                  random_state=np.random.RandomState(3 + rank), **common)
        return est, (X, y), {"sample_weight": w}
    if name == "regressor_sgd_invscaling":  # 150 rows in batches of 16 end with a batch of 6
        est = gpubp.MLPRegressor(hidden_layer_sizes=(6,), solver="sgd", learning_rate="invscaling", learning_rate_init=0.05,
                                 batch_size=16, random_state=0, **common)
        return est, (X, Y), {}
    if name == "settings_differ":
        return gpubp.MLPClassifier((8,), alpha=1e-4 * (1 + rank), random_state=0, **common), (X, y), {}
    if name == "lbfgs":
        return gpubp.MLPClassifier((8,), solver="lbfgs", random_state=0, **common), (X, y), {}
    if name == "negative_weights":  # scikit-learn allows them; a rank's share of a batch could weigh 0
        return gpubp.MLPClassifier((8,), random_state=0, **common), (X, y), {"sample_weight": w - 0.5}
    if name == "bad_validation_on_rank_1":  # must not leave rank 0 waiting in the first all-reduce
        Xv = X[:30, :2] if rank == 1 else X[:30]
        return gpubp.MLPClassifier((8,), random_state=0, **common), (X, y), {"validation_data": (Xv, y[:30])}
    raise KeyError(name)


CASES = ("classifier_adam_early_weighted", "regressor_sgd_invscaling", "settings_differ", "lbfgs", "negative_weights",
         "bad_validation_on_rank_1")


def fit(name, comm=None, rank=0) -> dict:
    """The case fitted (with ``comm``): its parameters and loss curve, or its error."""
    est, args, kwargs = case(name, rank)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(*args, comm=comm, **kwargs)
    except Exception as exc:
        return {"error": [type(exc).__name__, str(exc)]}
    return {"params": np.concatenate([p.ravel() for p in est.coefs_ + est.intercepts_]).tolist(),
            "loss_curve": getattr(est, "loss_curve_", None), "n_iter": est.n_iter_}


def resumed(out: Path, comm, rank: int) -> dict:
    """classifier_adam_early_weighted fitted for 5 iterations with a checkpoint in ``out`` (rank 0
    writes it), then resumed by every rank from it up to the case's max_iter."""
    first, args, kwargs = case("classifier_adam_early_weighted", rank)
    again, _, _ = case("classifier_adam_early_weighted", rank)
    first.set_params(max_iter=5, checkpoint=out / "fit_checkpoint.npz")
    again.set_params(checkpoint=out / "fit_checkpoint.npz", resume=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.fit(*args, comm=comm, **kwargs)
        again.fit(*args, comm=comm, **kwargs)
    return {"params": np.concatenate([p.ravel() for p in again.coefs_ + again.intercepts_]).tolist(),
            "loss_curve": again.loss_curve_, "n_iter": again.n_iter_}


def main() -> None:
    out = Path(sys.argv[1])
    comm = gpubp.distributed.world("cpu")
    assert comm.size == 2, f"not a 2-rank job: {comm!r}"
    for name in CASES:
        (out / f"{name}_rank{comm.rank}.json").write_text(json.dumps(fit(name, comm, comm.rank)))
    (out / f"resumed_rank{comm.rank}.json").write_text(json.dumps(resumed(out, comm, comm.rank)))
    talking, args, _ = case("regressor_sgd_invscaling", comm.rank)  # its messages: rank 0 alone prints them
    talking.set_params(verbose=True, max_iter=3)
    talking.fit(*args, comm=comm)


if __name__ == "__main__":
    main()
