"""gpubp.kernels run without a GPU: CuPy's ElementwiseKernel and ReductionKernel emulated on the
host (tests/fake_cupy.py compiles each operation string with g++), so CI exercises the kernels'
Python glue and operation strings against the NumPy twins. The row-wise RawKernel needs a GPU."""

import shutil
import sys
import types

import numpy as np
import pytest

from gpubp import MLP, kernels, parity
from gpubp.backend import Backend, get_backend
from gpubp.ops import ACTIVATIONS

from . import fake_cupy

EMULATED = ("bias_activation", "backprop_delta", "softmax_minus_y", "sgd_momentum_update", "adam_update")


@pytest.fixture
def emulated(monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    fake = types.ModuleType("cupy")
    fake.ElementwiseKernel = fake_cupy.ElementwiseKernel
    fake.ReductionKernel = fake_cupy.ReductionKernel
    fake.RawModule = fake_cupy.RawModule
    caches = (kernels._elementwise, kernels._row_sumexp, kernels._rows_module)
    for cache in caches:
        cache.cache_clear()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    yield types.SimpleNamespace(**{name: getattr(kernels, name) for name in EMULATED})
    for cache in caches:
        cache.cache_clear()


def test_every_emulated_kernel_matches_its_numpy_twin(emulated):
    results = parity.kernel_checks(get_backend("cpu"), emulated)
    failed = [r for r in results if not r.passed]
    assert not failed, parity.format_table(failed)
    assert len(results) == 2 * 2 * (4 + 4 + 4 + 4 + 3)  # dtypes x layouts x checks


def test_the_emulation_can_fail(emulated, monkeypatch):
    """A wrong operation string is caught: the check is not a rubber stamp."""
    spec = kernels.ELEMENTWISE_SPECS["gpubp_backprop_delta_tanh"]
    wrong = kernels.ElementwiseSpec(spec.name, spec.in_params, spec.out_params,
                                    "g = g * gpubp::derivative_from_a<2>(a)", spec.twin)  # sigmoid's
    monkeypatch.setitem(kernels.ELEMENTWISE_SPECS, spec.name, wrong)
    failed = {r.check.split(" [")[0] for r in parity.kernel_checks(get_backend("cpu"), emulated) if not r.passed}
    assert failed == {"backprop_delta tanh"}


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_whole_model_with_the_kernels_matches_the_twins(emulated, activation):
    with_kernels = Backend("cpu", np, "cpu, gpubp.kernels emulated", kernels)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(33, 6)), rng.integers(0, 4, 33)
    w = rng.uniform(0.5, 2, 33)
    a = MLP([6, 9, 7, 4], activation, backend=with_kernels, dtype="float64", seed=4, alpha=0.01)
    b = MLP([6, 9, 7, 4], activation, backend="cpu", dtype="float64", seed=4, alpha=0.01)
    for weights in (None, w):
        (loss_a, dW_a, db_a), (loss_b, dW_b, db_b) = a.loss_and_grads(X, y, weights), b.loss_and_grads(X, y, weights)
        assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-13)
        for ga, gb in zip(dW_a + db_a, dW_b + db_b):
            np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-15)
