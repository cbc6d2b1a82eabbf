"""Every operation of the CUDA kernel set against its NumPy twin, on a GPU (marker ``gpu``).

Random and edge inputs, contiguous and strided, float32 and float64, with the per-dtype
tolerances of gpubp.parity (float32 rtol 1e-5, float64 rtol 1e-12). float16 is not supported by
the kernels or the model, so it is not checked.
"""

import pytest

from gpubp import get_backend, kernels, parity

from .test_cli import gpubp

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_kernel_matches_its_numpy_twin(dtype):
    gpu = get_backend("cuda")
    assert gpu.kernels is kernels.CUDA_KERNELS
    results = parity.kernel_checks(gpu, gpu.kernels, dtypes=(dtype,))
    failed = [r for r in results if not r.passed]
    assert not failed, parity.format_table(failed)
    names = {r.check.split(" [")[0] for r in results}
    assert "softmax_minus_y weighted bias delta" in names and "adam_update p" in names
    assert "output_minus_y exp weighted delta" in names and "cross_entropy" in names


def test_whole_model_matches_numpy_with_the_kernels_in_use():
    results = parity.model_checks(get_backend("cpu"), get_backend("cuda"))
    failed = [r for r in results if not r.passed]
    assert not failed, parity.format_table(failed)


def test_kernels_are_memoized():
    assert kernels.elementwise_kernel("gpubp_bias_relu") is kernels.elementwise_kernel("gpubp_bias_relu")


def test_check_command_passes():
    result = gpubp("check", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout
