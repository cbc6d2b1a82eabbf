"""A regular (non-editable) install carries the CUDA sources and finds them."""

import os
import subprocess
import sys
import zipfile

import pytest

from .conftest import REPO


@pytest.mark.slow
def test_wheel_carries_the_kernel_sources_and_finds_them(tmp_path):
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("gpubp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"gpubp/_cuda/gpubp_math.cuh", "gpubp/_cuda/softmax_rows.cu", "gpubp/kernels.py"} <= names

    site = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    probe = "import gpubp.kernels as k; print(k.source_dir()); print(len(k.read_source('gpubp_math.cuh')))"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    where, size = result.stdout.split()
    assert where == str(site / "gpubp" / "_cuda") and int(size) > 1000


@pytest.mark.slow
def test_editable_install_finds_the_sources_in_the_checkout(tmp_path):
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(REPO)],
                               capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([str(python), "-c", "import gpubp.kernels as k; print(k.source_dir())"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO / "kernels")
