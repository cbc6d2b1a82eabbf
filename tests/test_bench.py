"""The benchmark machinery: FLOP counts, the quick `gpubp bench`, and the RESULTS.md renderer."""

import json
import tomllib

import numpy as np
import pytest
from packaging.requirements import Requirement

from gpubp import bench

from .conftest import REPO
from .test_cli import gpubp


def test_flop_count_of_a_small_network_by_hand():
    # 3-4-2 on 5 rows. Forward: (5,3)@(3,4) = 2*5*3*4 = 120 and (5,4)@(4,2) = 80. Weight
    # gradients a.T @ delta: (3,5)@(5,4) = 120 and (4,5)@(5,2) = 80. Backward delta @ W.T only
    # into the hidden layer: (5,2)@(2,4) = 80. 480 in all.
    assert bench.train_flops([3, 4, 2], 5) == 480
    assert bench.train_flops((3, 2), 5) == 120  # no hidden layer: forward and gradient, no delta
    assert bench.train_flops([3, 4, 2], 0) == 0
    assert bench.matmul_flops(5, 3, 4) == 120


def test_flop_count_refuses_what_is_no_network():
    for sizes, rows in (([784], 10), ([784, 0, 10], 10), ([784, 10], -1)):
        with pytest.raises(ValueError, match="train_flops needs at least two layer widths"):
            bench.train_flops(sizes, rows)


def test_case_label():
    assert bench.Case((784, 512, 512, 10), 256, "float32", "adam").label == "784-512-512-10 b256 float32 adam"


def test_the_products_floor_does_the_counted_flops():
    """The products timed as the floor are exactly the FLOPs the GFLOP/s figures count."""
    case = bench.Case((30, 20, 16, 5), 8, "float64", "momentum")
    rng = np.random.default_rng(0)
    runner = bench.Runner(case, rng.normal(size=(27, 30)), rng.integers(0, 5, 27))
    flops = []

    def counting(a, b):
        flops.append(2 * a.shape[0] * a.shape[1] * b.shape[1])
        return np.matmul(a, b)

    runner.products(matmul=counting)
    assert sum(flops) == bench.train_flops(case.sizes, 27)


def test_matmul_rate_is_measured():
    assert bench.matmul_rate("float64", n=256, repeat=2) > 0.1


def test_quick_bench_command():
    result = gpubp("bench", "--pairs", "1", "--samples", "600", timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "GFLOP/s" in lines[0]
    rows = [line for line in lines if line.startswith("784-512-512-10 b256 float32")]
    assert {row.split()[4] for row in rows} >= {"gpubp", "sklearn"}


def test_quick_bench_without_its_extra_says_what_to_install(monkeypatch, capsys):
    from gpubp import cli

    monkeypatch.setattr(bench, "EXTRA", ("threadpoolctl", "gpubp_no_such_module"))
    assert cli.main(["bench", "--pairs", "1", "--samples", "10"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: gpubp bench needs: pip install 'gpubp[bench]' (missing: gpubp_no_such_module)"]


def test_the_bench_extra_is_what_gpubp_bench_imports():
    """pyproject.toml's [bench] extra holds the modules bench.EXTRA checks for, and the core
    dependencies do not: gpubp itself runs without them."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {Requirement(line).name for line in project["dependencies"]}
    extra = {Requirement(line).name for line in project["optional-dependencies"]["bench"]}
    assert extra == set(bench.EXTRA)
    assert not core & extra


def test_results_markdown_names_the_machine_and_the_verdicts(tmp_path):
    from benchmarks.results_md import render

    row = {"sizes": [784, 100, 10], "batch_size": 256, "dtype": "float32", "optimizer": "adam",
           "label": "784-100-10 b256 float32 adam", "agree": True,
           "accuracy": {"gpubp": 0.9, "sklearn": 0.91}, "median_seconds": {"gpubp": 0.02, "sklearn": 0.03},
           "ratio_to_gpubp": {"gpubp": 1.0, "sklearn": 1.5}, "gflops": {"gpubp": 100.0, "sklearn": 66.0},
           "pct_of_matmul": {"gpubp": 40.0, "sklearn": 27.0}, "pct_of_products": {"gpubp": 80.0, "sklearn": 53.3},
           "products_median_seconds": 0.016}
    report = {"machine": {"cpu": "Test CPU", "cores": 2, "blas": ["openblas 0.3"], "python": "3.11",
                          "numpy": "2.0", "sklearn": "1.9", "torch": None, "gpubp": "0.1.0", "date": "today"},
              "matmul_gflops": {"float32": 250.0}, "pairs": 3, "data": "synthetic", "rows": [row],
              "targets": [{"target": "784-100-10: gpubp <= 0.5x scikit-learn", "value": 0.67, "met": False,
                           "limit": 0.53}]}
    (tmp_path / "cpu-2026-01-01.json").write_text(json.dumps(report))
    text = render(tmp_path, tmp_path / "RESULTS.md").read_text()
    assert "Machine: Test CPU, 2 cores; BLAS: openblas 0.3" in text
    assert "| 784-100-10 b256 float32 adam | sklearn | 0.030 | 1.50 | 66 | 27 | 53 | 0.910 |" in text
    assert "| 784-100-10: gpubp <= 0.5x scikit-learn | 0.67 | NO | 0.53 |" in text
    assert "## GPU" in text and "No results yet" in text
    pytest.importorskip("matplotlib")
    assert (tmp_path / "cpu-2026-01-01-epoch-time.png").read_bytes()[:4] == b"\x89PNG"
