"""Optimizers against scikit-learn's own implementations, and the learning-rate schedules."""

import numpy as np
import pytest
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer

from gpubp import MLP, fit, host_build, ops
from gpubp.optim import SGD, Adam, check_lr, clip_by_global_norm, make_optimizer, optimizer_from_settings, restore_state
from gpubp.schedules import Schedule


def run_both(ours, theirs_factory, steps, rng, lr):
    """``steps`` updates of a flat parameter array by ours and by scikit-learn's optimizer."""
    params = rng.normal(size=15)
    theirs_params = [params.copy()]
    theirs = theirs_factory(theirs_params)
    state = ours.init(params)
    for _ in range(steps):
        grads = rng.normal(size=params.shape)
        ours.update(params, grads, state, lr)
        theirs.update_params(theirs_params, [grads.copy()])
    assert state.t == steps
    return params, theirs_params[0]


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_matches_scikit_learn(nesterov, rng):
    ours, theirs = run_both(
        SGD(momentum=0.9, nesterov=nesterov),
        lambda p: SGDOptimizer(p, learning_rate_init=0.05, momentum=0.9, nesterov=nesterov),
        steps=20, rng=rng, lr=0.05,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_adam_matches_scikit_learn(rng):
    ours, theirs = run_both(
        Adam(beta1=0.8, beta2=0.99, eps=1e-7),
        lambda p: AdamOptimizer(p, learning_rate_init=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-7),
        steps=20, rng=rng, lr=0.01,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


def test_sgd_by_hand():
    # p = 1, g = 0.5, lr = 0.1, momentum 0.9:
    # step 1: v = -0.05,                p = 0.95
    # step 2: v = 0.9 * -0.05 - 0.05 = -0.095, p = 0.855
    p = np.array([1.0])
    opt = SGD(momentum=0.9)
    state = opt.init(p)
    opt.update(p, np.array([0.5]), state, 0.1)
    assert p[0] == pytest.approx(0.95) and state.arrays["velocity"][0] == pytest.approx(-0.05)
    opt.update(p, np.array([0.5]), state, 0.1)
    assert p[0] == pytest.approx(0.855)
    plain, sgd = np.array([1.0]), make_optimizer("sgd")
    sgd.update(plain, np.array([0.5]), sgd.init(plain), 0.1)
    assert plain[0] == pytest.approx(0.95)


def test_adam_first_step_moves_each_weight_by_about_lr():
    # m = 0.1 g, v = 0.001 g^2, lr_t = lr sqrt(0.001) / 0.1: the step is lr * sign(g) (up to eps)
    p, opt = np.array([1.0, -2.0, 3.0]), Adam()
    opt.update(p, np.array([10.0, -0.01, 3.0]), opt.init(p), 0.01)
    np.testing.assert_allclose(p, [0.99, -1.99, 2.99], rtol=1e-6)


@pytest.mark.parametrize("optimizer", [SGD(momentum=0.0), SGD(), SGD(nesterov=True), Adam()], ids=repr)
def test_an_update_with_the_l2_gradient_equals_one_of_the_gradient_with_it_added(optimizer, rng):
    """update(..., l2, n_weights) reads g + l2 p on the first n_weights parameters: the bits of an
    update of that gradient, made by hand; g itself is left as it was."""
    p, g = rng.normal(size=40).astype(np.float32), rng.normal(size=40).astype(np.float32)
    added = g.copy()
    added[:25] += np.float32(0.3) * p[:25]
    folded, by_hand = p.copy(), p.copy()
    optimizer.update(folded, g, optimizer.init(p), 0.05, np.float32(0.3), 25)
    optimizer.update(by_hand, added, optimizer.init(p), 0.05)
    assert np.array_equal(folded, by_hand) and not np.array_equal(ops.l2_gradient(g, p, 0.3, 25), g)
    assert optimizer.folds_l2 == (optimizer.settings().get("momentum", 1) > 0)  # plain SGD has no kernel to fold into


@pytest.mark.parametrize("optimizer", ["momentum", "nesterov", "adam"])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_l2_gradient_folded_into_the_update_trains_as_added_to_the_gradient(optimizer, weighted, rng):
    """fit folds alpha/n W into the optimizer's pass; with clipping (here by a bound never reached:
    the factor is 1) it adds it to the gradient first (MLP.add_l2). Both train the same bits, and
    report the same losses; without the L2 term the parameters differ (it is not lost)."""
    X, y = rng.normal(size=(90, 6)).astype(np.float32), rng.integers(0, 3, 90)
    w = rng.uniform(0.5, 2.0, 90).astype(np.float32) if weighted else None
    runs = {}
    for name, alpha, clip_norm in [("folded", 0.05, None), ("added", 0.05, 1e30), ("none", 0.0, None)]:
        net = MLP([6, 8, 3], "tanh", "cpu", "float32", seed=4, alpha=alpha)
        history = fit(net, X, y, sample_weight=w, epochs=3, batch_size=16, optimizer=optimizer, lr=0.05, seed=1,
                      clip_norm=clip_norm)
        runs[name] = (np.array(net.flat_params), history.train_loss)
    assert np.array_equal(runs["folded"][0], runs["added"][0]) and runs["folded"][1] == runs["added"][1]
    assert not np.allclose(runs["folded"][0], runs["none"][0])


def test_optimizers_keep_float32(rng):
    for opt in (SGD(momentum=0.9, nesterov=True), Adam()):
        p = rng.normal(size=5).astype(np.float32)
        state = opt.init(p)
        opt.update(p, rng.normal(size=5).astype(np.float32), state, 0.1)
        assert p.dtype == np.float32
        assert state.arrays and all(s.dtype == np.float32 for s in state.arrays.values())


@pytest.mark.parametrize("opt", [SGD(momentum=0.0), SGD(momentum=0.9), SGD(momentum=0.9, nesterov=True), Adam()],
                         ids=repr)
def test_a_numpy_float64_rate_updates_float32_parameters_as_a_python_float_does(opt, rng, monkeypatch):
    """A rate of NumPy's float64 (what GridSearchCV over np.logspace passes) is rounded to the
    parameters' dtype as a Python float is, by the compiled kernels and by the NumPy twins alike
    (the twins alone would otherwise compute lr * g in float64 and round once)."""
    start = [rng.normal(size=37).astype(np.float32) for _ in range(4)]  # p, then three gradients
    results = {}
    for kernels in ("compiled", "numpy"):
        if kernels == "numpy":
            monkeypatch.setenv("GPUBP_HOST_KERNELS", "numpy")
        host_build.compiled_kernels.cache_clear()
        for rate in (0.0123, np.float64(0.0123)):
            p = start[0].copy()
            state = opt.init(p)
            for g in start[1:]:
                opt.update(p, g, state, rate, l2=np.float32(0.01), n_weights=20)
            results[kernels, type(rate).__name__] = p
    host_build.compiled_kernels.cache_clear()
    reference = results["compiled", "float"]
    for key, p in results.items():
        assert np.array_equal(p.view(np.uint32), reference.view(np.uint32)), key


@pytest.mark.parametrize("opt", [SGD(momentum=0.9, nesterov=True), Adam()], ids=repr)
def test_one_optimizer_object_keeps_no_state_between_runs(opt, rng):
    """The state belongs to the caller: two runs sharing one optimizer object each go as with an
    object of their own (an optimizer that kept its moments would start the second run with the
    first run's)."""
    grads = rng.normal(size=(6, 4))
    first, second = np.zeros(4), np.zeros(4)
    states = opt.init(first), opt.init(second)
    for g in grads:
        opt.update(first, g, states[0], 0.1)
    for g in grads:
        opt.update(second, g, states[1], 0.1)
    np.testing.assert_array_equal(first, second)


def test_restore_state_reads_every_stored_layout(rng):
    """restore_state reads the state by its name, as name_0 (formats 2-3) and one array per layer
    (format 1), and names what does not fit."""
    opt, params = Adam(), rng.normal(size=7)
    m, v = rng.normal(size=7), rng.random(7)
    layouts = [{"m": m, "v": v}, {"m_0": m, "v_0": v},
               {"m_0": m[:4].reshape(2, 2), "m_1": m[4:], "v_0": v[:4].reshape(2, 2), "v_1": v[4:]}]
    for stored in layouts:
        state = restore_state(opt, stored, 3, params)
        assert state.t == 3
        np.testing.assert_array_equal(state.arrays["m"], m)
        np.testing.assert_array_equal(state.arrays["v"], v)
        assert state.arrays["m"] is not m  # a copy next to the parameters
    assert not restore_state(opt, {}, 0, params).arrays["m"].any()  # not stepped yet: zeros
    with pytest.raises(ValueError, match=r"optimizer state has 2 'm' arrays of 6 values in all for 7 parameters"):
        restore_state(opt, {"m_0": m[:4], "m_1": m[4:6]}, 1, params)
    with pytest.raises(ValueError, match=r"optimizer state 'v' of shape\(s\) \[\(6,\)\] does not fit parameters "
                                         r"of shape \(7,\)"):
        restore_state(opt, {"m": m, "v": v[:6]}, 1, params)


def test_settings_make_the_same_optimizer():
    for opt in (SGD(momentum=0.5, nesterov=True), SGD(momentum=0.0), Adam(beta1=0.7, beta2=0.9, eps=1e-6)):
        assert repr(optimizer_from_settings(opt.settings())) == repr(opt)
    with pytest.raises(ValueError, match="unknown optimizer settings"):
        optimizer_from_settings({"name": "rmsprop"})


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SGD(momentum=1.5), "momentum must be a float in the range [0.0, 1.0], got 1.5"),  # 1 is allowed
        (lambda: SGD(momentum=-0.1), "momentum must be a float in the range [0.0, 1.0], got -0.1"),
        (lambda: SGD(momentum=0.5, nesterov="yes"), "nesterov must be True or False, got 'yes'"),
        (lambda: SGD(momentum=0.0, nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda: Adam(beta1=1.0), "beta1 must be a float in the range [0.0, 1.0), got 1.0"),
        (lambda: Adam(beta2=-1), "beta2 must be a float in the range [0.0, 1.0), got -1"),
        (lambda: Adam(eps=0), "eps must be a float in the range (0.0, inf), got 0"),
        (lambda: check_lr(float("nan")), "lr must be a float in the range (0.0, inf), got nan"),
        (lambda: make_optimizer("rmsprop"), "optimizer must be a str among {'adam', 'sgd', 'momentum', 'nesterov'}"
                                            " or an instance of SGD or Adam, got 'rmsprop'"),
    ],
)
def test_bad_optimizer_settings(make, message):
    """The optimizers check their settings through gpubp.params, in its words."""
    with pytest.raises(ValueError) as caught:
        make()
    assert str(caught.value) == message


def test_make_optimizer_passes_an_optimizer_object_through():
    opt = Adam(beta1=0.5)
    assert make_optimizer(opt) is opt


def test_constant_schedule_with_warmup():
    s = Schedule(0.1, total_steps=100, kind="constant", warmup_steps=4)
    assert [s(t) for t in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert s(99) == 0.1


def test_cosine_schedule():
    s = Schedule(1.0, total_steps=11, kind="cosine", warmup_steps=0, final_lr=0.1)
    assert s(0) == pytest.approx(1.0)
    assert s(5) == pytest.approx(0.55)  # halfway: the mean of the start and the end
    assert s(10) == pytest.approx(0.1)
    rates = [s(t) for t in range(11)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    warm = Schedule(1.0, total_steps=12, kind="cosine", warmup_steps=2)
    assert [warm(0), warm(1), warm(2), warm(11)] == pytest.approx([0.5, 1.0, 1.0, 0.0])


def test_bad_schedules():
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule(0.1, 10, kind="step")
    with pytest.raises(ValueError, match="does not fit"):
        Schedule(0.1, 10, warmup_steps=11)
    for lr in (-1, 0, float("nan"), float("inf"), "0.1", True):  # (a NaN or negative lr blamed final_lr; inf gave nan)
        with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got"):
            Schedule(lr, 10)
    with pytest.raises(ValueError, match=r"warmup_steps must be a whole number of steps, got 2.5"):
        Schedule(0.1, 10, warmup_steps=2.5)  # (its rate rose past lr)
    with pytest.raises(ValueError, match=r"total_steps must be a whole number of steps, got 10.0"):
        Schedule(0.1, 10.0)
    assert Schedule(0.1, np.int64(10), "cosine", warmup_steps=np.int64(2))(1) == pytest.approx(0.1)


def test_clipping_scales_a_gradient_whose_squares_overflow_to_max_norm():
    """A float32 gradient of norm 8e21: its sum of squares overflows float32, and a norm taken as
    sqrt(g . g) would be inf and the factor 0, zeroing the step; BLAS's nrm2 scales as it sums."""
    g = np.full(668_000, 1e19, dtype=np.float32)
    norm = clip_by_global_norm(np, [g], 0.5)
    assert float(norm) == pytest.approx(1e19 * np.sqrt(668_000), rel=1e-5)
    assert np.all(g > 0) and float(np.linalg.norm(g.astype(np.float64))) == pytest.approx(0.5, rel=1e-5)
    parts = [np.full((300, 2), 1e19, np.float32), np.full(5, 3e19, np.float32)]  # the norm over a list too
    clip_by_global_norm(np, parts, 2.0)
    assert np.sqrt(sum(float((p.astype(np.float64) ** 2).sum()) for p in parts)) == pytest.approx(2.0, rel=1e-5)
