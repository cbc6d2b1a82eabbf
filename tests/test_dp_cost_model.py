"""benchmarks/dp_cost_model.py: the ring all-reduce model's arithmetic, the one-GPU step it reads
from the measured results, and the README's table, which must be the script's output."""

import pytest

from benchmarks import dp_cost_model as model

from .conftest import REPO


def test_the_gradient_is_four_bytes_per_weight_and_bias():
    assert model.gradient_bytes([784, 512, 512, 10]) == 4 * (785 * 512 + 513 * 512 + 513 * 10)
    assert model.gradient_bytes([3, 2]) == 4 * 8


def test_a_ring_moves_2_r_minus_1_over_r_of_the_bytes_in_2_r_minus_1_steps():
    link = model.Link("test", ranks=4, bus_bandwidth=1e9, latency=1e-6)
    assert model.allreduce_seconds(8e9, link) == pytest.approx(6 * 1e-6 + 1.5 * 8)
    assert model.allreduce_seconds(8e9, model.Link("one", 1, 1e9, 1e-6)) == 0  # nothing to exchange


def test_the_one_gpu_step_is_interpolated_between_measured_batches_and_scaled_from_one():
    points = {256: 1.0, 4096: 4.84}
    assert model.step_seconds(points, 256) == 1.0
    assert model.step_seconds(points, 512) == pytest.approx(1.0 + 256 * 3.84 / 3840)
    assert model.step_seconds({4096: 8.0}, 512) == 1.0
    with pytest.raises(ValueError, match=r"batch 128 is outside the measured batches \[256, 4096\]"):
        model.step_seconds(points, 128)


def test_speed_up_and_efficiency_follow_from_the_step_on_r_gpus():
    link = model.Link("test", ranks=2, bus_bandwidth=1e9, latency=0.0)
    f = model.predict([1, 1], {8: 4e-3}, link, batch=8)  # S = 8 bytes: 8 ns of all-reduce
    assert f["t_share"] == 2e-3 and f["t_allreduce"] == pytest.approx(8e-9)
    assert f["speedup"] == pytest.approx(4e-3 / (2e-3 + 8e-9)) and f["efficiency"] == pytest.approx(f["speedup"] / 2)


def test_the_measured_steps_are_read_from_the_results_files():
    """The figures the model takes are those the device runs recorded (ms there, s here)."""
    graphed = model.measured_steps("784-512-512-10", "h100-2026-11-27-run5/graph_probe.json", "graph_ms")
    assert sorted(graphed) == [256, 4096] and 0.1e-3 < graphed[256] < graphed[4096] < 1e-3
    assert list(model.measured_steps("8192-8192-10", "gpu-2026-11-27-NVIDIA-H100-80GB-HBM3-79-2-GiB.json", "fp32")) == [4096]
    bf16 = model.measured_steps("8192-8192-10", "device_check-2026-11-27-NVIDIA-H100-80GB-HBM3.json", "bfloat16")
    assert list(bf16) == [4096] and bf16[4096] == pytest.approx(3.280095934867859e-3)
    with pytest.raises(ValueError, match="has no step of 1-2-3"):
        model.measured_steps("1-2-3", "h100-2026-11-27-run5/graph_probe.json", "graph_ms")


def test_the_readme_and_the_results_file_show_the_scripts_table():
    table = model.table()
    assert table.count("\n") == 1 + len(model.LINKS) * len(model.MEASURED)
    assert table in (REPO / "README.md").read_text()
    assert table in (model.RESULTS / "dp_model-2026-11-27.md").read_text()
