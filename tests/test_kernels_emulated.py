"""gpubp.kernels run without a GPU, through a host emulation of CuPy that is as strict as CuPy.

tests/fake_cupy.py plays ElementwiseKernel and ReductionKernel (const-bound inputs, dtype checks,
NVRTC's fused multiply-adds unless --fmad=false, float32 denormals flushed) and
tests/fake_cuda_threads.py plays RawModule (a host thread per CUDA thread, warps meeting at each
shuffle), so CI runs every kernel's Python glue and CUDA source against the NumPy twins. Each
strictness is shown catching a planted mistake.
"""

import shutil
import sys
import types

import numpy as np
import pytest

from gpubp import MLP, kernels, ops, parity
from gpubp.backend import Backend, get_backend
from gpubp.ops import ACTIVATIONS

from . import fake_cupy, fake_nvrtc

# The kernels whose float32 results move by more than KERNEL_TOL when a * b + c is fused.
FMA_SENSITIVE = {"sgd_momentum_update p", "sgd_nesterov_update p", "backprop_delta tanh", "adam_update p"}


@pytest.fixture
def emulated(monkeypatch):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH")
    fake = types.ModuleType("cupy")
    fake.ElementwiseKernel = fake_cupy.ElementwiseKernel
    fake.ReductionKernel = fake_cupy.ReductionKernel
    fake.RawModule = fake_cupy.RawModule
    kernels.clear_cache()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    yield kernels.CUDA_KERNELS  # its twins (kernels.TWINS_RUN_BY_CUPY) run here on NumPy
    kernels.clear_cache()


def failed_checks(emulated) -> set[str]:
    return {r.check.split(" [")[0] for r in parity.kernel_checks(get_backend("cpu"), emulated) if not r.passed}


def test_every_emulated_kernel_matches_its_numpy_twin(emulated):
    results = parity.kernel_checks(get_backend("cpu"), emulated)
    failed = [r for r in results if not r.passed]
    assert not failed, parity.format_table(failed)
    # dtypes x layouts x checks: bias_activation, backprop_delta (and its db), softmax_minus_y, output_minus_y,
    # output_activation, cross_entropy, the SGD and the Adam updates (each also with the L2 gradient folded in)
    assert len(results) == 2 * 2 * (4 + 5 + 8 + 12 + 4 + 1 + 8 + 6)
    assert any(r.check.startswith("softmax_minus_y weighted bias delta") for r in results)


def test_the_emulation_can_fail(emulated, monkeypatch):
    """A wrong operation string is caught: the check is not a rubber stamp."""
    spec = kernels.ELEMENTWISE_SPECS["gpubp_backprop_delta_tanh"]
    wrong = kernels.ElementwiseSpec(spec.name, spec.in_params, spec.out_params,
                                    "g = g * gpubp::derivative_from_a<2>(a)", spec.twin)  # sigmoid's
    monkeypatch.setitem(kernels.ELEMENTWISE_SPECS, spec.name, wrong)
    assert failed_checks(emulated) == {"backprop_delta tanh"}


def test_without_fmad_false_float32_drifts_past_the_tolerance(emulated, monkeypatch):
    """NVRTC fuses multiply-adds unless told not to; the emulation does too, so dropping the option
    from COMPILE_OPTIONS fails CI, in float32 and only in the kernels that multiply and add."""
    monkeypatch.setattr(kernels, "COMPILE_OPTIONS", ())
    failed = [r for r in parity.kernel_checks(get_backend("cpu"), emulated) if not r.passed]
    assert failed and {r.check.split(" [")[0] for r in failed} <= FMA_SENSITIVE, parity.format_table(failed)
    assert {r.dtype for r in failed} == {"float32"}


def test_an_operation_that_writes_an_input_does_not_compile(emulated, monkeypatch):
    """CuPy binds array inputs as const T&: writing one is a compile error, here too."""
    spec = kernels.ELEMENTWISE_SPECS["gpubp_bias_relu"]
    writes_b = kernels.ElementwiseSpec(spec.name, spec.in_params, spec.out_params,
                                       "b = 0; a = gpubp::activate<1>(z + b)", spec.twin)
    monkeypatch.setitem(kernels.ELEMENTWISE_SPECS, spec.name, writes_b)
    z, b = np.ones((3, 4), np.float32), np.ones(4, np.float32)
    with pytest.raises(fake_nvrtc.CompileException, match="read-only|const"):
        kernels.bias_activation(np, z, b, "relu")


def test_a_dtype_mismatch_raises_as_in_cupy(emulated):
    z = np.ones((3, 4), np.float32)
    with pytest.raises(TypeError, match="Type is mismatched"):
        kernels.bias_activation(np, z, np.ones(4, np.float64), "relu")  # T is float32 and float64
    kernel = fake_cupy.ElementwiseKernel("T x, int64 n", "T y", "y = x * n", "fixed_type")
    with pytest.raises(TypeError, match="Type is mismatched"):
        kernel(np.ones(3), np.ones(3, np.int32), np.empty(3))  # int64 parameter, int32 array
    np.testing.assert_array_equal(kernel(np.ones(3), 4, np.empty(3)), 4.0)  # scalars are cast


def test_outputs_must_have_the_loop_shape(emulated):
    kernel = fake_cupy.ElementwiseKernel("T x", "T y", "y = x", "copy_x")
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        kernel(np.ones((3, 4)), np.empty(4))


@pytest.mark.parametrize("options", [["--fmad=false"], ("--use_fast_math",)])
def test_options_are_checked(options):
    """CuPy declares options as a tuple; an option the emulation cannot model is refused."""
    with pytest.raises((TypeError, NotImplementedError)):
        fake_nvrtc.fmad_enabled(options)


def test_float32_denormals_are_flushed_as_cupy_compiles_with_ftz(emulated):
    """CuPy passes -ftz=true: exp(-95) is a float32 denormal, so sigmoid(-95) reads 0 on the GPU."""
    z32, z64 = np.full((1, 2), -95, np.float32), np.full((1, 2), -95, np.float64)
    assert ops.activate(np, z32.copy(), "sigmoid")[0, 0] > 0  # the twin keeps the denormal
    assert kernels.bias_activation(np, z32, np.zeros(2, np.float32), "sigmoid")[0, 0] == 0
    assert kernels.bias_activation(np, z64, np.zeros(2), "sigmoid")[0, 0] == pytest.approx(np.exp(-95.0))


def test_the_row_kernel_emulation_catches_a_broken_warp_reduction(emulated, monkeypatch):
    """Shuffling over 8 lanes instead of 32 leaves lanes 8-9 of a 10-class row out of the sum."""
    source = kernels.read_source

    def broken(name):
        text = source(name)
        return text.replace("for (int offset = 16; offset > 0; offset /= 2) {\n        sumexp",
                            "for (int offset = 4; offset > 0; offset /= 2) {\n        sumexp")

    assert broken("softmax_rows.cu") != source("softmax_rows.cu")
    monkeypatch.setattr(kernels, "read_source", broken)
    assert {"softmax_minus_y delta", "softmax_minus_y weighted bias delta"} <= failed_checks(emulated)


def test_a_shuffle_after_a_lane_returned_raises(emulated):
    code = ('extern "C" __global__ void early_exit(float* x, long long n) {\n'
            "    if (threadIdx.x == 3) return;\n"
            "    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, x[threadIdx.x], 1);\n}\n")
    kernel = fake_cupy.RawModule(code=code).get_function("early_exit")
    with pytest.raises(RuntimeError, match="returned or missing lanes"):
        kernel((1,), (32,), (np.ones(32, np.float32), np.int64(32)))


def test_raw_kernel_arguments_are_checked_against_the_c_signature(emulated):
    code = 'extern "C" __global__ void scale(float* x, long long n) { x[threadIdx.x] *= n; }\n'
    kernel = fake_cupy.RawModule(code=code).get_function("scale")
    x = np.ones(32, np.float32)
    kernel((1,), (32,), (x, np.int64(3)))
    np.testing.assert_array_equal(x, 3)
    for args in ((np.ones(32), np.int64(3)), (x, np.int32(3)), (np.ones(64, np.float32)[::2], 3)):
        with pytest.raises(TypeError):
            kernel((1,), (32,), args)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_whole_model_with_the_kernels_matches_the_twins(emulated, activation):
    with_kernels = Backend("cpu", np, "cpu, gpubp.kernels emulated", kernels.CUDA_KERNELS)
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
