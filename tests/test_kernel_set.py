"""gpubp.kernel_set: the three kernel sets implement every operation of the contract, with its
signature; an incomplete set is refused by name; the CUDA set's stand-ins are the twins."""

import types

import numpy as np
import pytest

from gpubp import host_kernels, kernels, ops
from gpubp.backend import Backend, get_backend
from gpubp.kernel_set import OPERATIONS, KernelSet, check_kernel_set, kernel_set_problems

SETS = {"twins": ops.TWIN_KERNELS, "cpu": host_kernels.CPU_KERNELS, "cuda": kernels.CUDA_KERNELS}


def test_the_contract_lists_every_operation_of_a_step_and_a_prediction():
    assert OPERATIONS == ("bias_activation", "backprop_delta", "softmax_minus_y", "output_minus_y",
                          "output_activation", "cross_entropy", "sgd_momentum_update", "adam_update")


@pytest.mark.parametrize("name", SETS)
def test_each_kernel_set_implements_every_operation(name):
    kernel_set = SETS[name]
    assert kernel_set_problems(kernel_set) == []
    assert isinstance(kernel_set, KernelSet)
    for operation in OPERATIONS:  # an implementation, not the Protocol's empty stub
        assert getattr(kernel_set, operation) is not getattr(KernelSet, operation)


def test_the_backends_carry_their_sets():
    assert get_backend("cpu").kernels is host_kernels.CPU_KERNELS
    assert Backend("cuda", np, "stand-in", kernels.CUDA_KERNELS).kernels is kernels.CUDA_KERNELS


def test_the_cuda_set_runs_the_twins_only_where_it_has_no_kernel():
    for operation in OPERATIONS:
        implementation = getattr(kernels.CUDA_KERNELS, operation)
        if operation in kernels.TWINS_RUN_BY_CUPY:
            assert implementation is getattr(ops, operation), operation
        else:
            assert implementation is getattr(kernels, operation), operation
            assert implementation is not getattr(ops, operation), operation


def test_the_cpu_set_is_the_twins_but_for_the_compiled_kernels():
    compiled = {"sgd_momentum_update", "adam_update", "bias_activation", "backprop_delta", "softmax_minus_y"}
    for operation in OPERATIONS:
        expected = getattr(host_kernels if operation in compiled else ops, operation)
        assert getattr(host_kernels.CPU_KERNELS, operation) is expected, operation


def _without(operation):
    return types.SimpleNamespace(**{op: getattr(ops.TWIN_KERNELS, op) for op in OPERATIONS if op != operation})


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_missing_operation_is_named(operation):
    assert kernel_set_problems(_without(operation)) == [f"{operation} is missing"]
    with pytest.raises(ValueError, match=f"{operation} is missing"):
        check_kernel_set(_without(operation))
    with pytest.raises(ValueError, match=f"not a complete kernel set: {operation} is missing"):
        Backend("cpu", np, "incomplete", _without(operation))


def test_a_mismatched_signature_is_named():
    def swapped(xp, b, z, name):  # bias and product swapped
        return z

    def needs_more(xp, z, output, scale):  # a required parameter the contract does not pass
        return z

    def extra_with_default(xp, z, y, out=None):  # callable as the contract calls it: accepted
        return z

    broken = types.SimpleNamespace(**{op: getattr(ops.TWIN_KERNELS, op) for op in OPERATIONS})
    broken.bias_activation, broken.output_activation, broken.cross_entropy = swapped, needs_more, extra_with_default
    problems = kernel_set_problems(broken)
    assert len(problems) == 2
    assert problems[0] == "bias_activation takes (xp, b, z, name), not (xp, z, b, name)"
    assert problems[1] == "output_activation requires scale, which the contract leaves out"


def test_an_optional_parameter_of_the_contract_must_stay_optional():
    def weights_required(xp, z, y, sample_weight, b=None):
        return ops.softmax_minus_y(xp, z, y, sample_weight, b)

    broken = types.SimpleNamespace(**{op: getattr(ops.TWIN_KERNELS, op) for op in OPERATIONS})
    broken.softmax_minus_y = weights_required
    assert kernel_set_problems(broken) == ["softmax_minus_y requires sample_weight, which the contract leaves out"]
