"""A command run in its own process group, the whole group killed past its time limit: what the
device check's runner does with each stage's child, and its tests stage with pytest; and the two
sides of such a child (run_isolated in the parent, run_child in the child), which the device
check, its precision stage and the GPU benchmark share.

The lowest of the benchmarks' modules: it imports none of the others.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]  # the checkout: every command runs here


def tail(text: str, lines: int = 15) -> str:
    """The last lines of text."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_command(cmd: list[str], timeout: float, env: dict | None = None) -> tuple[int | None, str]:
    """Run cmd in a new process group, output to a file; past ``timeout`` kill the whole group.

    Returns the exit status (None when it timed out) and the output.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
            os.killpg(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # stuck in the driver: left behind, the next stage goes on
                pass
        log.seek(0)
        return code, log.read().decode(errors="replace")


def write_json(path: Path, data) -> None:
    """Write data as JSON atomically (a reader never sees half a file); NumPy scalars as numbers."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=_plain) + "\n")
    os.replace(tmp, path)


def _plain(value):
    """JSON for what json cannot write itself: NumPy scalars and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def run_child(fn, result: Path) -> int:
    """Child side: section = fn(save), written to ``result``; fn may save(partial) as it goes.

    An exception is written there too, with the last saved section and the traceback's end.
    """
    saved = {}

    def save(section: dict) -> None:
        saved["section"] = section
        write_json(result, {"section": section})

    try:
        section = fn(save)
    except Exception as exc:  # recorded for the parent, which goes on with the next stage
        write_json(result, {"section": saved.get("section"), "error": f"{type(exc).__name__}: {exc}"[:500],
                            "traceback": tail(traceback.format_exc())})
        return 1
    save(section)
    return 0


def run_isolated(cmd: list[str], budget: float, result: Path, env: dict | None = None) -> tuple[dict, dict | None]:
    """Parent side: run a child that writes ``result`` (run_child) within ``budget`` seconds.

    Returns its status (status: passed, failed, error or timed out; seconds; budget_s; detail) and
    its section (what it saved last, also after a timeout), or None.
    """
    result.unlink(missing_ok=True)
    t0 = time.monotonic()
    code, output = run_command(cmd, budget, env)
    status = {"budget_s": budget, "seconds": round(time.monotonic() - t0, 1)}
    saved = json.loads(result.read_text()) if result.is_file() else {}
    section = saved.get("section")
    if code is None:
        kept = " (the results saved before are kept)" if section else ""
        status.update(status="timed out", detail=f"timed out after {budget} s{kept}", output=tail(output))
    elif "error" in saved:
        status.update(status="error", detail=saved["error"], traceback=saved["traceback"])
    elif code != 0 or section is None:
        status.update(status="error", detail=f"exit status {code} without a result", output=tail(output))
    elif section.get("failures"):
        status.update(status="failed", detail="; ".join(section["failures"])[:300])
    else:
        status["status"] = "passed"
    return status, section


def child_env(out: Path | None) -> dict:
    """The environment of every stage: the checkout importable, $OUT as given, CUPY_TF32 removed."""
    env = {k: v for k, v in os.environ.items() if k != "CUPY_TF32"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if out is not None:
        env["OUT"] = str(out)
    return env
