"""Shared fixtures; tests marked ``gpu`` are skipped, with the reason, where CUDA is not usable,
and every test that uses the ``fake_cupy`` fixture is marked ``cupy_stand_in`` (pyproject.toml)."""

from pathlib import Path

import numpy as np
import pytest

from gpubp.backend import cuda_status
from gpubp.data import load_digits, split, standardize

REPO = Path(__file__).resolve().parents[1]
# The "cuda" case of a test parametrized by device that takes the fake_cupy fixture only for it
# (request.getfixturevalue): marked here, as the hook below cannot see such a use.
STAND_IN = pytest.param("cuda", marks=pytest.mark.cupy_stand_in)
MNIST_T10K = REPO.parent / "shared" / "data" / "mnist-t10k"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "fake_cupy" in getattr(item, "fixturenames", ()):  # directly or through another fixture
            item.add_marker(pytest.mark.cupy_stand_in)
    status = cuda_status()
    if status.usable:
        return
    skip = pytest.mark.skip(reason=f"no usable GPU: {status.reason}")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def digits():
    """gpubp's digits set split 80/20 (seed 0), standardized by the training part: (train, test)."""
    train, test = split(load_digits(), 0.2, seed=0)
    _, (train, test) = standardize(train, test)
    return train, test


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


@pytest.fixture
def fake_cupy(monkeypatch):
    """tests/fake_cupy_arrays.py's CuPy stand-in installed as ``cupy`` for one test, with gpubp's
    CUDA probe, backends and kernels forgotten before and after; numpy's conversions refuse device
    arrays only during the test. Skips where the kernels cannot be compiled for the host."""
    import platform
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("g++ is not on PATH: the CuPy stand-in compiles gpubp's kernels with it")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the CuPy stand-in's NVRTC emulation (FMA, FTZ) needs an x86-64 host")
    from . import fake_cupy_arrays

    cupy = fake_cupy_arrays.install(monkeypatch)
    yield cupy
    fake_cupy_arrays.forget_gpubp_caches()
