"""A command run in its own process group, the whole group killed past its time limit: what the
device check's runner does with each stage's child, and its tests stage with pytest."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from pathlib import Path

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
