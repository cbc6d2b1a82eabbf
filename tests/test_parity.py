"""The machinery of ``gpubp check``, run on the CPU: it passes a faithful implementation, fails
a wrong one, and the command says plainly when nothing could be compared."""

import types

import numpy as np
import pytest

from gpubp import MLP, get_backend, host_kernels, ops, parity
from gpubp.backend import cuda_status
from gpubp.kernel_set import OPERATIONS

from .test_cli import gpubp


def test_compare_reads_worst_error_against_rtol():
    ok = parity.compare("x", "float64", [1.0, 2.0 + 1e-13], [1.0, 2.0], rtol=1e-12, atol=1e-15)
    assert ok.passed and ok.worst == pytest.approx(5e-14, rel=1e-3)
    bad = parity.compare("x", "float64", [1.0, 2.1], [1.0, 2.0], rtol=1e-12, atol=1e-15)
    assert not bad.passed and bad.worst == pytest.approx(0.05)
    nan = parity.compare("x", "float32", [np.nan], [1.0], rtol=1e-5, atol=1e-7)
    assert not nan.passed
    small = parity.compare("x", "float32", [1e-9], [0.0], rtol=1e-5, atol=1e-7)
    assert small.passed  # below atol


def test_the_cpu_backends_kernels_pass_the_checks():
    cpu = get_backend("cpu")
    assert cpu.kernels is host_kernels.CPU_KERNELS
    results = parity.kernel_checks(cpu, cpu.kernels)
    assert results and all(r.passed for r in results), parity.format_table([r for r in results if not r.passed])
    names = {r.check.split(" [")[0] for r in results}
    assert {"bias_activation sigmoid", "backprop_delta tanh", "softmax_minus_y weighted delta",
            "output_minus_y exp weighted loss", "output_activation softmax", "cross_entropy",
            "sgd_nesterov_update p", "adam_update v"} <= names
    assert {r.check.split("[")[1] for r in results} == {"contiguous]", "strided]"}


def test_every_operation_of_the_contract_has_a_parity_check():
    assert list(parity.OPERATION_CHECKS) == list(OPERATIONS)
    results = parity.kernel_checks(get_backend("cpu"), ops.TWIN_KERNELS, dtypes=("float64",))
    for operation in OPERATIONS:  # each check reports rows of its own operation
        stem = "sgd_" if operation == "sgd_momentum_update" else operation
        assert any(r.check.startswith(stem) for r in results), operation


def test_an_operation_without_a_check_fails_the_checks(monkeypatch):
    monkeypatch.delitem(parity.OPERATION_CHECKS, "cross_entropy")
    results = parity.kernel_checks(get_backend("cpu"), ops.TWIN_KERNELS, dtypes=("float32",))
    failed = [r for r in results if not r.passed]
    assert [r.check for r in failed] == ["cross_entropy: no parity check [contiguous]",
                                         "cross_entropy: no parity check [strided]"]


def test_an_incomplete_kernel_set_is_refused():
    incomplete = types.SimpleNamespace(**{op: getattr(ops.TWIN_KERNELS, op) for op in OPERATIONS
                                          if op != "output_minus_y"})
    with pytest.raises(ValueError, match="output_minus_y is missing"):
        parity.kernel_checks(get_backend("cpu"), incomplete)


def _twins_but(**replaced):
    """The twin kernel set with some operations replaced."""
    return types.SimpleNamespace(**{op: getattr(ops.TWIN_KERNELS, op) for op in OPERATIONS} | replaced)


def test_a_wrong_kernel_is_caught():
    def wrong_backprop_delta(xp, g, a, name, db=None):
        if name == "sigmoid":
            g *= a  # forgot the (1 - a)
            return g
        return ops.backprop_delta(xp, g, a, name, db)

    failed = [r for r in parity.kernel_checks(get_backend("cpu"), _twins_but(backprop_delta=wrong_backprop_delta))
              if not r.passed]
    assert failed and {r.check.split(" [")[0] for r in failed} == {"backprop_delta sigmoid"}


def test_a_wrong_bias_gradient_is_caught():
    """BP3 of the fused BP2 call: a sum that leaves out the first row fails its check, and only it."""
    def wrong_backprop_delta(xp, g, a, name, db=None):
        ops.backprop_delta(xp, g, a, name)
        if db is not None:
            g[1:].sum(axis=0, out=db)
        return g

    failed = [r for r in parity.kernel_checks(get_backend("cpu"), _twins_but(backprop_delta=wrong_backprop_delta))
              if not r.passed]
    assert {r.check for r in failed} == {f"backprop_delta relu db [{layout}]" for layout in parity.LAYOUTS}
    assert len(failed) == 2 * len(parity.LAYOUTS)  # float32 and float64


def test_a_wrong_output_layer_is_caught():
    def wrong_output_minus_y(xp, z, Y, output, sample_weight=None):
        delta, loss = ops.output_minus_y(xp, z, Y, output, sample_weight)
        return delta, loss * 2 if output == "exp" else loss  # Poisson deviance doubled

    failed = [r for r in parity.kernel_checks(get_backend("cpu"), _twins_but(output_minus_y=wrong_output_minus_y))
              if not r.passed]
    assert {r.check.split(" [")[0] for r in failed} == {"output_minus_y exp loss", "output_minus_y exp weighted loss"}


def test_model_checks_pass_on_identical_backends():
    cpu = get_backend("cpu")
    results = parity.model_checks(cpu, cpu, steps=3)
    assert len(results) == 2 * (4 + 2) and all(r.passed for r in results)
    assert "check" in parity.format_table(results).splitlines()[0]


def test_labels_are_checked_before_any_kernel_runs(monkeypatch):
    net = MLP([4, 5, 3], backend="cpu", seed=0)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a kernel ran on unchecked labels")

    for name in ("bias_activation", "backprop_delta", "softmax_minus_y"):  # the backend's own set
        monkeypatch.setattr(net.backend.kernels, name, must_not_run)
    with pytest.raises(AssertionError, match="unchecked labels"):  # the patch reaches the kernels
        net.loss_and_grads(np.zeros((2, 4)), np.array([0, 2]))
    with pytest.raises(ValueError, match="labels from 0 to 3 but the network has 3 classes"):
        net.loss_and_grads(np.zeros((2, 4)), np.array([0, 3]))


@pytest.mark.skipif(cuda_status().usable, reason="a GPU is usable here")
def test_check_command_without_a_gpu_compares_nothing():
    result = gpubp("check")
    assert result.returncode == 3
    assert "no usable GPU: " in result.stdout and "nothing was compared" in result.stdout
