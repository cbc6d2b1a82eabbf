"""One command for a lent GPU machine, in stages that each survive the others' failures.

    PYTHONPATH=. python benchmarks/device_check.py                  (a few minutes, at most 7)
    PYTHONPATH=. python benchmarks/device_check.py --only timings   (preflight, then one stage again)

A lease is 15 minutes of device time, starts included, and only what is under $OUT comes back
(at most 8 files). So every stage runs in its own child process (this script with ``--stage
NAME``) under a time budget; a stage that hangs (a CUDA deadlock, a stuck compile) is killed with
its process group and recorded as "timed out after N s", a stage that raises is recorded with
its error and the end of its traceback, and the next stage runs either way. As soon as a stage
ends, its file and summary.md are written to $OUT (and the whole report to benchmarks/results/),
so a stop at any moment keeps everything measured before it.

stage (budget)    file in $OUT     what
preflight (30 s)  env.json         card, driver, CUDA driver and runtime, NVRTC, CuPy, NumPy,
                                   scikit-learn, torch; the TF32 settings of both libraries; one
                                   tiny ElementwiseKernel compiled and run (float32 and float16)
parity (40 s)     parity.json      every kernel against its NumPy twin and the model against the
                                   CPU, float32 and float64 (gpubp.parity): every row
tests (140 s)     tests.json,      pytest -m "gpu and not slow": 40 s per test where pytest-timeout
                  pytest-gpu.xml   is installed, 125 s for the whole run; counts, failed tests
timings (80 s)    timings.json     kernels against a copy and against their plain CuPy chains; the
                                   cost of --fmad=false; a training step against PyTorch eager,
                                   with the kernels each launches and their time on the card
estimator (40 s)  estimator.json   gpubp.MLPClassifier on cuda against scikit-learn's on the CPU
precision (30 s)  precision.json   gpubp.precision's TF32 products against IEEE and float64
                                   (benchmarks/precision_stage.py)
                  summary.md       all of it, rewritten after every stage

The budgets add up to 360 s, and the runner's CUDA probe (in a child, PROBE_S) takes up to 60 s
more: 7 minutes at the very worst, inside the 10 a command is given. On the first run (H100,
2026-11-26) the stages took 8, 15, 36, 23 and 12 s; the budgets keep two to four times that.
On 2026-11-27 (run 6) the gpu tests took 49 s for 41 tests; more came after it (56 now), so the
tests stage took budget from parity and timings (15 and 41 s in run 2), then from the estimator
and precision stages (9 and 7 s in run 1 of 2026-11-27).
The runner itself never touches the card: it asks gpubp's CUDA probe in a child (PROBE_S).
Each child pays a few seconds of imports and CUDA start-up; CuPy compiles every kernel once per
dtype on a fresh machine (parity pays for most of it) and the disk cache serves the later stages.
A stage that saves as it goes (all but tests) keeps what it saved past a timeout or an error.

This file is the runner (each child run by timed_command.py); the stages are in
benchmarks/device_stages.py (the timings in kernel_timings.py and step_timings.py) and
precision_stage.py, and summary.md is rendered by device_report.py.

Timings are medians of CUDA-event times. The CuPy children run with CUPY_TF32 removed from the
environment and PyTorch with ``fp32_precision = "ieee"``: float32 is IEEE float32 on both sides.
Targets are reported, never asserted. Exit status: 3 without a usable GPU (env.json says why),
1 when a stage failed (parity, a GPU test, an agreement check), raised or timed out, 0 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.device_report import markdown, stage_rows  # noqa: E402
from benchmarks.device_stages import (  # noqa: E402
    estimator_stage, parity_stage, preflight, tests_stage, timings_stage)
from benchmarks.precision_stage import BUDGET_S as PRECISION_BUDGET_S, precision_stage  # noqa: E402
from benchmarks.results_md import RESULTS, write_results  # noqa: E402
from benchmarks.timed_command import child_env, run_child, run_command, run_isolated, tail, write_json  # noqa: E402

MAX_OUT_FILES = 8  # what the device machine sends back

# name -> (function(save) -> section, budget in seconds); estimates, see the module docstring
STAGES = {"preflight": (preflight, 30), "parity": (parity_stage, 40), "tests": (tests_stage, 140),
          "timings": (timings_stage, 80), "estimator": (estimator_stage, 40),
          "precision": (precision_stage, PRECISION_BUDGET_S)}


# ------------------------------------------------------------------ running the stages


def stage_file(name: str) -> str:
    """Name of a stage's file in $OUT."""
    return "env.json" if name == "preflight" else f"{name}.json"


def run_stages(stages: dict, script: Path, out: Path | None, results: Path | None = None) -> dict:
    """Run each stage of ``stages`` (name -> (function, budget s)) as ``script --stage NAME``.

    After each stage its file and summary.md go to ``out`` and the whole report to ``results``.
    """
    report = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "stages": {}, "sections": {}}
    env = child_env(out)
    # the children's result files, removed at the end (a child left running past its kill may still hold it)
    with tempfile.TemporaryDirectory(prefix="gpubp-check-", ignore_cleanup_errors=True) as scratch:
        for name, (_, budget) in stages.items():
            result = Path(scratch) / f"{name}.json"
            cmd = [sys.executable, str(script), "--stage", name, "--result", str(result)]
            status, section = run_isolated(cmd, budget, result, env)
            report["stages"][name] = status
            if section is not None:
                report["sections"][name] = section
            publish(report, name, out, results)
            print(f"[{name}] {status['status']} in {status['seconds']} s: "
                  f"{status.get('detail') or (section or {}).get('verdict', '')}", flush=True)
    return report


def publish(report: dict, name: str, out: Path | None, results: Path | None) -> None:
    """Write stage ``name``'s file and summary.md to ``out``, and the report to ``results``."""
    text = markdown(report)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / stage_file(name), {"stage": name, **report["stages"][name],
                                            "result": report["sections"].get(name)})
        (out / "summary.md").write_text(text)
    if results is not None:
        card = re.sub(r"[^A-Za-z0-9]+", "-", report["sections"].get("preflight", {}).get("gpu", "unknown card"))
        write_results(f"device_check-{report['date'][:10]}-{card.strip('-')}", report, text, folders=[results])


def collect(folders: list[Path]) -> dict:
    """The report rebuilt from the stage files that came back from $OUT, one folder per run;
    a stage found in a later folder replaces the earlier one (a rerun after a fix). The report's
    date is the first run's; each stage keeps the date of the preflight it ran after."""
    report = {"date": None, "stages": {}, "sections": {}}
    for folder in folders:
        env = json.loads((folder / "env.json").read_text())
        if not (env.get("result") or {}).get("gpu"):  # (null: the preflight raised before its first save)
            raise SystemExit(f"{folder / 'env.json'} is not a preflight that found a GPU")
        report["date"] = report["date"] or env["result"]["date"]
        for name in STAGES:
            path = folder / stage_file(name)
            if path.exists():
                data = json.loads(path.read_text())
                section = data.pop("result")
                data.pop("stage")
                report["stages"][name] = {**data, "run": f"{folder.name}, after the preflight of {env['result']['date']}"}
                if section is not None:
                    report["sections"][name] = section
    return report


def exit_status(report: dict) -> int:
    """0 when every stage passed, else 1."""
    return 0 if all(s["status"] == "passed" for s in report["stages"].values()) else 1


# ------------------------------------------------------------------ main


def no_gpu(reason: str, out: Path | None) -> int:
    """Write env.json with the reason (to $OUT when set), say so, exit status 3."""
    env = {"usable": False, "reason": reason, "python": platform.python_version(), "numpy": np.__version__,
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "env.json", env)
    print(f"no usable GPU: {reason}; nothing was measured")
    return 3


PROBE_S = 60  # CuPy's import, one kernel compiled by NVRTC and one cuBLAS product, on a cold machine
PROBE_MARK = "gpubp-probe: "  # the probe's line, found among whatever else the child writes
PROBE = ("import json; from gpubp.backend import cuda_status; s = cuda_status(); "
         f"print({PROBE_MARK!r} + json.dumps([s.usable, s.reason]), flush=True)")


def probe_in_child(env: dict) -> tuple[bool, str]:
    """(usable, reason) of gpubp's CUDA probe, run in a child under PROBE_S seconds: the runner
    itself never touches the card, so a hang there (the driver, NVRTC, cuBLAS) is a reason, not a
    stuck run with nothing in $OUT, and no CUDA context is held through the stages."""
    code, output = run_command([sys.executable, "-c", PROBE], PROBE_S, env)
    if code is None:
        return False, f"gpubp's CUDA probe did not finish in {PROBE_S} s (a hang in the driver, NVRTC or cuBLAS)"
    lines = [line[len(PROBE_MARK):] for line in output.splitlines() if line.startswith(PROBE_MARK)]
    try:
        usable, reason = json.loads(lines[-1])
    except (ValueError, IndexError):
        return False, f"gpubp's CUDA probe failed (exit status {code}): {tail(output, 5)}"
    return bool(usable), reason


def parse_args(argv, stages: dict) -> argparse.Namespace:
    """Command-line options; --stage and --result are the child's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated stages to run after preflight, of: {', '.join(stages)}")
    parser.add_argument("--collect", type=Path, nargs="+", metavar="DIR",
                        help="rebuild the report in benchmarks/results/ from the files of one or more "
                             "device runs (their $OUT, fetched here); later runs' stages replace earlier ones")
    parser.add_argument("--stage", choices=list(stages), help=argparse.SUPPRESS)  # a child process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only or ()) - set(stages)
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}: expected some of {', '.join(stages)}")
    return args


def main(argv=None, stages: dict | None = None, script: str | Path | None = None) -> int:
    """Run the stages (or, with --stage, be one of them); ``stages`` and ``script`` let a test
    run other stages: name -> (function(save) -> dict, budget s), and the file that defines them."""
    stages = STAGES if stages is None else stages
    args = parse_args(argv, stages)
    if args.stage:
        return run_child(stages[args.stage][0], args.result)
    if args.collect:
        report = collect(args.collect)
        publish(report, "preflight", None, RESULTS)
        print("\n".join(stage_rows(report)))
        return exit_status(report)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    usable, reason = probe_in_child(child_env(out))
    if not usable:
        return no_gpu(reason, out)
    chosen = {n: v for n, v in stages.items() if args.only is None or n == "preflight" or n in args.only}
    report = run_stages(chosen, Path(script or __file__), out, RESULTS)
    print("\n".join([""] + stage_rows(report)))
    print(f"\nfiles: {out if out else 'no $OUT'}; report: {RESULTS}")
    return exit_status(report)


if __name__ == "__main__":
    sys.exit(main())
