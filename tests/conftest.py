"""Shared fixtures; tests marked ``gpu`` are skipped, with the reason, where CUDA is not usable."""

from pathlib import Path

import numpy as np
import pytest

from gpubp.backend import cuda_status

REPO = Path(__file__).resolve().parents[1]
MNIST_T10K = REPO.parent / "shared" / "data" / "mnist-t10k"


def pytest_collection_modifyitems(config, items):
    status = cuda_status()
    if status.usable:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {status.reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def assert_close(actual, expected, rtol, atol=0.0, what="arrays"):
    """assert_allclose that prints the worst element when it fails."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    if not np.all(err <= bound):
        i = np.unravel_index(np.argmax(err - bound), err.shape)
        raise AssertionError(
            f"{what}: worst element {i}: {actual[i]!r} vs {expected[i]!r} "
            f"(|diff| {err[i]:.3e} > {bound[i]:.3e}, rtol {rtol}, atol {atol})"
        )
