"""gpubp.MLPClassifier / MLPRegressor against scikit-learn's, on the CPU in float64: the same
loss curves (rtol 1e-6) and parameters, and the same behaviour around them."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn import neural_network as sk
from sklearn.base import clone
from sklearn.datasets import load_digits, make_multilabel_classification, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import log_loss
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from gpubp import DataError, MLPClassifier, MLPRegressor, load_estimator

RTOL = 1e-6


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:600] / 16.0, y[:600]


@pytest.fixture(scope="module")
def regression():
    X, y = make_regression(300, 6, n_targets=1, noise=2.0, random_state=0)
    return X, y / 50


def fit_both(kind, X, y, sample_weight=None, **params):
    ours, theirs = {"clf": (MLPClassifier, sk.MLPClassifier), "reg": (MLPRegressor, sk.MLPRegressor)}[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = ours(device="cpu", **params).fit(X, y, sample_weight=sample_weight)
        b = theirs(**params).fit(X, y, sample_weight=sample_weight)
    return a, b


def assert_same_fit(a, b, rtol=RTOL):
    if hasattr(b, "loss_curve_"):
        np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=rtol)
    assert a.n_iter_ == b.n_iter_ and a.t_ == b.t_
    assert a.loss_ == pytest.approx(b.loss_, rel=rtol)
    for p, q in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        assert isinstance(p, np.ndarray) and p.dtype == q.dtype
        np.testing.assert_allclose(p, q, rtol=rtol, atol=1e-9)
    assert (a.n_layers_, a.n_outputs_, a.out_activation_) == (b.n_layers_, b.n_outputs_, b.out_activation_)


SOLVERS = [
    dict(solver="adam"),
    dict(solver="sgd", learning_rate="constant", momentum=0.9, nesterovs_momentum=True),
    dict(solver="sgd", learning_rate="invscaling", momentum=0.5, nesterovs_momentum=False),
    dict(solver="sgd", learning_rate="adaptive", momentum=0.0, tol=1.0, n_iter_no_change=2),
]


@pytest.mark.parametrize("solver", SOLVERS, ids=lambda s: "-".join(str(v) for v in s.values()))
@pytest.mark.parametrize("activation", ["relu", "logistic", "tanh", "identity"])
def test_multiclass_loss_curve_matches_scikit_learn(digits, solver, activation):
    a, b = fit_both("clf", *digits, hidden_layer_sizes=(15, 8), activation=activation, max_iter=8,
                    random_state=3, learning_rate_init=0.02, alpha=1e-3, batch_size=64, **solver)
    assert_same_fit(a, b)
    np.testing.assert_allclose(a.predict_proba(digits[0]), b.predict_proba(digits[0]), rtol=1e-6, atol=1e-12)


def test_binary_multilabel_and_weighted_classification_match(digits):
    X, y = digits
    a, b = fit_both("clf", X, y % 2, hidden_layer_sizes=(10,), max_iter=6, random_state=0)
    assert_same_fit(a, b)
    assert a.predict_proba(X).shape == (len(X), 2)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    Xm, Ym = make_multilabel_classification(200, 8, n_classes=4, random_state=0)
    a, b = fit_both("clf", Xm, Ym, hidden_layer_sizes=(12,), max_iter=6, random_state=0, solver="sgd")
    assert_same_fit(a, b)
    np.testing.assert_array_equal(a.predict(Xm), b.predict(Xm))
    w = np.random.default_rng(0).uniform(0.2, 3.0, len(X))
    a, b = fit_both("clf", X, y, sample_weight=w, hidden_layer_sizes=(10,), max_iter=5, random_state=1)
    assert_same_fit(a, b)


def test_early_stopping_matches(digits):
    a, b = fit_both("clf", *digits, hidden_layer_sizes=(10,), max_iter=40, random_state=0, early_stopping=True,
                    n_iter_no_change=3, learning_rate_init=0.05)
    assert_same_fit(a, b)
    np.testing.assert_allclose(a.validation_scores_, b.validation_scores_, rtol=RTOL)
    assert a.best_validation_score_ == b.best_validation_score_ and a.best_loss_ is None


@pytest.mark.parametrize("early_stopping", [False, True])
def test_n_iter_no_change_inf_never_stops_early_as_in_scikit_learn(digits, early_stopping):
    """scikit-learn documents n_iter_no_change=np.inf as the way to train for max_iter epochs."""
    a, b = fit_both("clf", *digits, hidden_layer_sizes=(10,), max_iter=12, random_state=0, tol=10.0,
                    n_iter_no_change=np.inf, early_stopping=early_stopping)
    assert a.n_iter_ == b.n_iter_ == 12
    assert_same_fit(a, b)


def test_parameter_bounds_are_scikit_learns(digits):
    """momentum may be 1 and validation_fraction 0 (without early stopping), as in scikit-learn."""
    a, b = fit_both("clf", *digits, hidden_layer_sizes=(10,), max_iter=3, random_state=0, solver="sgd",
                    momentum=1.0)
    assert_same_fit(a, b)
    a, b = fit_both("clf", *digits, hidden_layer_sizes=(10,), max_iter=3, random_state=0, validation_fraction=0.0)
    assert_same_fit(a, b)
    for cls, says in ((MLPClassifier, "validation_fraction=0.0 leaves no validation set"),
                      (sk.MLPClassifier, "test_size=0.0")):
        with pytest.raises(ValueError, match=says):
            cls(max_iter=3, early_stopping=True, validation_fraction=0.0).fit(*digits)
        with pytest.raises(ValueError, match="momentum"):
            cls(solver="sgd", momentum=1.5).fit(*digits)


@pytest.mark.parametrize("loss, targets", [("squared_error", 1), ("squared_error", 3), ("poisson", 1)])
@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_regression_loss_curve_matches_scikit_learn(loss, targets, solver):
    X, y = make_regression(250, 5, n_targets=targets, noise=1.0, random_state=0)
    y = np.exp(y / 100) if loss == "poisson" else y / 100
    a, b = fit_both("reg", X, y, loss=loss, hidden_layer_sizes=(12,), max_iter=8, random_state=2,
                    solver=solver, learning_rate_init=0.005)
    assert_same_fit(a, b)
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-6, atol=1e-9)
    assert a.score(X, y) == pytest.approx(b.score(X, y), rel=1e-6)


def test_lbfgs_matches(digits, regression):
    a, b = fit_both("clf", *digits, solver="lbfgs", hidden_layer_sizes=(10,), max_iter=30, random_state=0)
    assert_same_fit(a, b, rtol=1e-5)
    a, b = fit_both("reg", *regression, solver="lbfgs", hidden_layer_sizes=(8,), max_iter=30, random_state=0)
    assert_same_fit(a, b, rtol=1e-5)


def test_float32_stays_float32_and_follows_scikit_learn(digits):
    X, y = digits
    a, b = fit_both("clf", X.astype(np.float32), y, hidden_layer_sizes=(10,), max_iter=5, random_state=0)
    assert a.coefs_[0].dtype == np.float32
    np.testing.assert_allclose(a.loss_curve_, b.loss_curve_, rtol=1e-4)


def test_partial_fit_and_warm_start_match(digits):
    X, y = digits
    a = MLPClassifier(hidden_layer_sizes=(10,), random_state=0, device="cpu")
    b = sk.MLPClassifier(hidden_layer_sizes=(10,), random_state=0)
    for start in (0, 200, 400):
        a.partial_fit(X[start:start + 200], y[start:start + 200], classes=np.arange(10))
        b.partial_fit(X[start:start + 200], y[start:start + 200], classes=np.arange(10))
    assert_same_fit(a, b)
    with pytest.raises(ValueError, match="has classes not in `self.classes_`"):
        MLPClassifier(device="cpu").partial_fit(X[:50], y[:50], classes=[0, 1, 2])
    a, b = fit_both("clf", X, y, hidden_layer_sizes=(10,), max_iter=3, random_state=0, warm_start=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a.fit(X, y)
        b.fit(X, y)
    assert_same_fit(a, b)
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")


def test_warnings_and_messages_like_scikit_learn(digits):
    X, y = digits
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        MLPClassifier(max_iter=2, device="cpu").fit(X, y)
    clf = MLPClassifier(max_iter=5, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 64 features"):
        clf.predict(X[:, :3])
    with pytest.raises(ValueError, match="Input X contains NaN"):
        MLPClassifier(device="cpu").fit(np.where(X == 0, np.nan, X), y)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        MLPClassifier(device="cpu").fit(X, y[:-1])
    with pytest.raises(ValueError, match="'alpha' parameter of MLPClassifier must be a float"):
        MLPClassifier(alpha=-1, device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be > 0"):
        MLPClassifier(hidden_layer_sizes=(3, 0), device="cpu").fit(X, y)
    with pytest.raises(ValueError, match="negative which is not allowed for Poisson"):
        MLPRegressor(loss="poisson", device="cpu").fit(X, -np.ones(len(X)))
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        MLPClassifier(device="tpu").fit(X, y)


def test_works_in_pipelines_and_searches(digits):
    X, y = digits
    settings = dict(hidden_layer_sizes=(10,), max_iter=30, random_state=0, learning_rate_init=0.02)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(device="cpu", **settings))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        scores = cross_val_score(pipe, X, y, cv=3)
        reference = cross_val_score(make_pipeline(StandardScaler(), sk.MLPClassifier(**settings)), X, y, cv=3)
        search = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1]}, cv=2).fit(X, y)
    assert scores.mean() > 0.8 and search.best_score_ > 0.8
    np.testing.assert_allclose(scores, reference)
    c = clone(MLPClassifier(hidden_layer_sizes=(7,), device="cpu", dtype="float32", class_weight="balanced"))
    assert c.get_params()["hidden_layer_sizes"] == (7,) and c.get_params()["dtype"] == "float32"


def test_save_and_load_without_pickle(tmp_path, digits):
    X, y = digits
    labels = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=5, random_state=0, device="cpu").fit(X, labels)
    path = clf.save(tmp_path / "clf.npz")
    with np.load(path, allow_pickle=False) as f:
        assert "param_0" in f.files
    loaded = load_estimator(path, device="cpu")
    np.testing.assert_array_equal(loaded.predict(X), clf.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    assert loaded.loss_curve_ == clf.loss_curve_ and loaded.get_params() == clf.get_params()
    reg = MLPRegressor(hidden_layer_sizes=(5,), max_iter=5, device="cpu").fit(X, y.astype(float))
    np.testing.assert_array_equal(load_estimator(reg.save(tmp_path / "reg.npz")).predict(X), reg.predict(X))
    (tmp_path / "bad.npz").write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="truncated or corrupted"):
        load_estimator(tmp_path / "bad.npz")


def test_pickle_holds_host_arrays_and_partial_fit_continues(digits):
    X, y = digits
    a = MLPClassifier(hidden_layer_sizes=(10,), random_state=0, device="cpu", solver="sgd")
    a.partial_fit(X[:300], y[:300], classes=np.arange(10))
    b = pickle.loads(pickle.dumps(a))
    assert "_net" not in b.__dict__
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    a.partial_fit(X[300:], y[300:])
    b.partial_fit(X[300:], y[300:])
    for p, q in zip(a.coefs_, b.coefs_):
        np.testing.assert_array_equal(p, q)  # the momentum survived the pickle


def test_validation_data_class_weight_and_verbose(digits, capsys):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(10,), max_iter=4, random_state=0, device="cpu", verbose=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X[:500], y[:500], validation_data=(X[500:], y[500:]))
    assert len(clf.validation_loss_curve_) == 4 and all(np.isfinite(clf.validation_loss_curve_))
    assert "Iteration 4, loss = " in capsys.readouterr().out
    rng = np.random.default_rng(0)
    yb = np.where(rng.uniform(size=len(y)) < 0.8, 0, 1)
    weights = {0: 1.0, 1: 4.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0, device="cpu", class_weight=weights).fit(X, yb)
        b = MLPClassifier(hidden_layer_sizes=(5,), max_iter=3, random_state=0, device="cpu").fit(
            X, yb, sample_weight=np.where(yb == 1, 4.0, 1.0))
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def test_changing_the_device_after_fit_moves_the_network(digits):
    X, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(5,), max_iter=2, device="cpu").fit(X, y)
    before = clf.predict_proba(X)
    clf.set_params(device="numpy")  # an alias of the same backend: same result, no error
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    clf.coefs_ = [c * 0 for c in clf.coefs_]  # new parameters are picked up
    assert np.allclose(clf.predict_proba(X), clf.predict_proba(X)[0])



def test_the_validation_loss_adds_the_l2_term_once_whatever_the_chunks(digits, monkeypatch):
    """validation_loss_curve_ is taken in chunks of PREDICT_BATCH rows; its L2 term is the whole
    set's, alpha / (2 n) ||W||^2 with n its rows, as the training loss's, not one per chunk with
    n the chunk's (a last chunk of one row had doubled it)."""
    from gpubp import estimator_fit
    X, y = digits
    Xv, yv = X[300:321], y[300:321]  # 21 rows: chunks of 10, 10 and 1
    monkeypatch.setattr(estimator_fit, "PREDICT_BATCH", 10)
    clf = MLPClassifier(hidden_layer_sizes=(10,), alpha=5.0, max_iter=1, random_state=0, device="cpu",
                        dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X[:300], y[:300], validation_data=(Xv, yv))
    data_part = log_loss(yv, clf.predict_proba(Xv), labels=clf.classes_)
    expected = data_part + 5.0 / (2 * 21) * sum(float((W ** 2).sum()) for W in clf.coefs_)
    assert clf.validation_loss_curve_[0] == pytest.approx(expected, rel=1e-12)


def test_predict_follows_a_changed_activation_and_replaced_parameters(digits):
    """As scikit-learn's: predict reads the activation and coefs_/intercepts_ as they are now. The
    cached network was made again only when coefs_ became another list, so set_params(activation=)
    and new intercepts_ or a coefs_ item assigned went unseen."""
    X, y = digits
    X, y = X[:200], y[:200]
    clf = MLPClassifier((10,), max_iter=3, random_state=0, device="cpu", dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)

    def forward(f):  # softmax(f(X W0 + b0) W1 + b1), (n, 10)
        z = f(X @ clf.coefs_[0] + clf.intercepts_[0]) @ clf.coefs_[1] + clf.intercepts_[1]
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    np.testing.assert_allclose(clf.predict_proba(X), forward(lambda a: np.maximum(a, 0)), rtol=1e-10)
    clf.set_params(activation="tanh")
    np.testing.assert_allclose(clf.predict_proba(X), forward(np.tanh), rtol=1e-10)
    clf.intercepts_ = [b + 0.5 for b in clf.intercepts_]
    np.testing.assert_allclose(clf.predict_proba(X), forward(np.tanh), rtol=1e-10)
    clf.coefs_[1] = clf.coefs_[1] * 2.0
    np.testing.assert_allclose(clf.predict_proba(X), forward(np.tanh), rtol=1e-10)


def test_a_regressor_refuses_text_targets_as_scikit_learn_does():
    """Numeric strings were parsed and trained on (the range check cast them first); scikit-learn
    fails with a TypeError (UFuncTypeError) at its first arithmetic on them."""
    X, y = make_regression(n_samples=40, n_features=3, random_state=0)
    for fit in (MLPRegressor(max_iter=2, random_state=0, device="cpu").fit,
                MLPRegressor(random_state=0, device="cpu").partial_fit):
        with pytest.raises(TypeError, match="needs numeric targets"):
            fit(X, y.astype(str))
