"""benchmarks/device_check.py without a GPU: it refuses clearly, and its report renders."""

import importlib.util
import subprocess
import sys

import pytest

from gpubp.backend import cuda_status

from .conftest import REPO

SCRIPT = REPO / "benchmarks" / "device_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(cuda_status().usable, reason="a GPU is usable here")
def test_without_a_gpu_it_says_why_and_measures_nothing():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3
    assert "no usable GPU" in result.stdout and "nothing was measured" in result.stdout


def test_markdown_report_states_card_versions_and_verdicts():
    dc = load_script()
    report = {
        "versions": {"gpu": "NVIDIA H100 80GB HBM3", "date": "2026-11-26 10:00 UTC", "driver": "580.1",
                     "driver_cuda": "13.0", "runtime_cuda": "13.0", "cupy": "14.0.0", "numpy": "2.3.0",
                     "python": "3.12.0"},
        "gpu_tests": {"passed": 40, "failed": 0, "skipped": 0, "seconds": 30.0},
        "kernels": [
            {"kernel": "device-to-device copy", "ms": 0.05, "gbs": 2600.0, "pct_copy": 100.0},
            {"kernel": "backprop_delta sigmoid (BP2)", "ms": 0.08, "gbs": 2500.0, "pct_copy": 96.0,
             "chain_ms": 0.3, "speedup": 3.75, "rel_error": 1e-7, "agree": True,
             "target": ">= 70% of copy, >= 2.0x plain CuPy", "met": True},
        ],
        "steps": [{"case": "784-512-512-10 b256", "gpubp_ms": 0.3, "torch_ms": 0.25, "ratio": 1.2,
                   "gpubp_tflops": 1.1, "max_rel_error": 1e-6, "agree": True, "target": "<= 1.5x torch",
                   "met": True}],
        "estimator": {"median_seconds": {"cuda": 1.5, "cpu": 30.0}, "speedup": 20.0, "loss_curve_rel_error": 1e-7,
                      "target": ">= 10.0x", "met": True},
    }
    text = dc.markdown(report)
    assert text.startswith("# Device check: NVIDIA H100 80GB HBM3, 2026-11-26 10:00 UTC")
    assert "CuPy 14.0.0" in text and "40 passed, 0 failed, 0 skipped" in text
    assert "| backprop_delta sigmoid (BP2) | 0.080 | 2500 | 96 | 0.300 | 3.75x |" in text
    assert "| 784-512-512-10 b256 | 0.300 | 0.250 | 1.20x |" in text
    assert text.count("| yes |") == 2
    assert "cuda 1.50 s, cpu 30.00 s: 20.0x (target >= 10.0x: met" in text


@pytest.mark.skipif(cuda_status().usable, reason="a GPU is usable here")
def test_gpu_benchmark_without_a_gpu_measures_nothing():
    script = REPO / "benchmarks" / "bench_gpu.py"
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3 and "nothing was measured" in result.stdout


def test_gpu_benchmark_markdown():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    row = {"case": "784-512-512-10 b256", "mode": "fp32", "max_rel_error": 1e-6, "agree": True,
           "ms": {"gpubp": 0.3, "torch eager": 0.25, "torch.compile": 0.2, "torch CUDA graph": 0.1},
           "tflops": {"gpubp": 2.0}, "fraction_of_ceiling": 0.04, "ratio_to_eager": 1.2,
           "target": "<= 1.5x eager", "met": True}
    report = {"gpu": "NVIDIA H200 (139.8 GiB)", "date": "today", "cupy": "14.0", "torch": "2.9", "numpy": "2.3",
              "modes": [{"mode": "fp32", "rows": [row]}]}
    text = module.markdown(report)
    assert "| 784-512-512-10 b256 | fp32 | 0.300 | 0.250 | 0.200 | 0.100 | 1.20 | 2.0 | 4% | <= 1.5x eager | yes |" in text


def test_a_failed_section_is_reported_and_the_others_kept():
    dc = load_script()
    report = {"versions": {"gpu": "G", "date": "d", "driver": "1", "driver_cuda": "13.0", "runtime_cuda": "13.0",
                           "cupy": "14", "numpy": "2", "python": "3.12"},
              "gpu_tests": {"passed": 1, "failed": 0, "skipped": 0, "seconds": 1.0}}

    def broken():
        raise AttributeError("module 'cupy' has no attribute 'x'")

    dc._run_section(report, "kernels", broken)
    dc._run_section(report, "steps", lambda: [{"case": "all", "skipped": "no torch"}])
    text = dc.markdown(report)
    assert "## kernels: failed: AttributeError: module 'cupy' has no attribute 'x'" in text
    assert "| all | skipped: no torch |" in text and "## estimator: not run" in text
