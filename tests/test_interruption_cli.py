"""The command under signals: SIGINT/SIGTERM stop cleanly; SIGKILL at any moment, often in the
middle of writing a checkpoint, always leaves the newest checkpoint loadable and resumable.

Every test here is ``os_level`` (what signals and kills do to the process and its files) and
bounded by pytest-timeout; a process a test started is killed when the test ends."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from gpubp.checkpoint import read_checkpoint

from .conftest import REPO

pytestmark = pytest.mark.os_level

EPOCHS = "100000"  # far more than a test waits for
# on the CPU even where a GPU is usable: the kill and signal times below assume no CUDA start-up
LONG_RUN = ["train", "--device", "cpu", "--epochs", EPOCHS, "--hidden", "256,256", "--batch-size", "32"]


@pytest.fixture
def start():
    """start(*ARGS, cwd=...) runs ``python -m gpubp ARGS`` in cwd, output piped, and returns the
    process; those still running when the test ends (a failure, a timeout) are killed then."""
    started = []

    def launch(*args, cwd):
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        started.append(subprocess.Popen([sys.executable, "-m", "gpubp", *args], cwd=cwd, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        return started[-1]

    yield launch
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def wait_for_epoch(proc, epoch, timeout=60):
    """Read the run's output until the line of the given epoch."""
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        words = line.split()
        if words[:1] == ["epoch"] and words[1].split("/")[0] == str(epoch):
            return line
        assert time.monotonic() < deadline, f"no line for epoch {epoch}"
    raise AssertionError(f"process ended before epoch {epoch}")


def finish(path, cwd):
    """Resume the checkpoint at path for one more epoch; the run must complete (a few seconds; the
    bound is for a hang: 120 s ran out once on this shared 2-core machine at a load of about 30)."""
    done = read_checkpoint(path).meta["state"]["epoch"]
    result = subprocess.run([sys.executable, "-m", "gpubp", "train", "--resume", str(path), "--device", "cpu",
                             "--epochs", str(done + 1), "--quiet"], cwd=cwd, capture_output=True,
                            text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "resuming: " in result.stdout and "test accuracy: " in result.stdout
    return done


@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_checkpoint_and_exits_with_the_documented_status(start, tmp_path, signum, status):
    proc = start(*LONG_RUN, "--checkpoint", "run.npz", cwd=tmp_path)
    wait_for_epoch(proc, 2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    name = signal.Signals(signum).name
    assert f"interrupted by {name}" in err and "checkpoint written to run.npz" in err
    assert "resume with: gpubp train --resume run.npz" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz"]  # no partial files
    assert finish(tmp_path / "run.npz", tmp_path) >= 2


@pytest.mark.timeout(300)
def test_default_checkpoint_on_interrupt(start, tmp_path):
    proc = start("train", "--device", "cpu", "--epochs", EPOCHS, cwd=tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "checkpoint written to gpubp-checkpoint.npz" in err
    assert read_checkpoint(tmp_path / "gpubp-checkpoint.npz").meta["state"]["step"] > 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_at_20_moments_never_loses_the_newest_checkpoint(start, tmp_path):
    ckpt = tmp_path / "run.npz"
    rng = random.Random(2026)
    during_write = 0
    def temporaries():
        return {p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")}

    # a first checkpoint, however slow the machine: the random kills below (0.3-2.5 s after the
    # start) would otherwise all land before it on a loaded machine, and there is nothing to lose
    proc = start(*LONG_RUN, "--checkpoint", "run.npz", "--checkpoint-every", "1", "--quiet", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not ckpt.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    proc.kill()
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    for i in range(20):
        args = ["train", "--resume", "run.npz", "--device", "cpu", "--quiet"] if ckpt.exists() else \
            [*LONG_RUN, "--checkpoint", "run.npz", "--checkpoint-every", "1", "--quiet"]
        left_before = temporaries()  # from earlier kills (a write removes them once an hour old)
        proc = start(*args, cwd=tmp_path)
        if i % 2:  # wait for a new checkpoint write to be under way, then kill
            deadline = time.monotonic() + 30
            while not temporaries() - left_before:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.0005)
        else:  # anywhere: start-up, training, writing
            time.sleep(rng.uniform(0.3, 2.5))
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        during_write += bool(temporaries() - left_before)  # killed while writing this run's file
        if ckpt.exists():
            read_checkpoint(ckpt)  # whole and loadable, whatever the moment
    assert ckpt.exists() and during_write >= 5, during_write
    finish(ckpt, tmp_path)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # of killed writers: at most one a kill
    assert len(left) <= 21, left
    for temp in left:  # a write removes those untouched for an hour (gpubp.atomic_file), never a live writer's
        os.utime(temp, (time.time() - 2 * 3600,) * 2)
    finish(ckpt, tmp_path)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the next write cleaned up


@pytest.mark.timeout(300)
def test_default_checkpoint_on_interrupt_keeps_an_earlier_one(start, tmp_path):
    """An earlier interrupted run's gpubp-checkpoint.npz is not replaced: this run writes the
    first free name, gpubp-checkpoint-2.npz, and says so in its resume hint."""
    earlier = tmp_path / "gpubp-checkpoint.npz"
    earlier.write_bytes(b"an earlier run's checkpoint")
    proc = start("train", "--device", "cpu", "--epochs", EPOCHS, cwd=tmp_path)
    wait_for_epoch(proc, 1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "checkpoint written to gpubp-checkpoint-2.npz" in err
    assert "resume with: gpubp train --resume gpubp-checkpoint-2.npz" in err
    assert earlier.read_bytes() == b"an earlier run's checkpoint"
    assert read_checkpoint(tmp_path / "gpubp-checkpoint-2.npz").meta["state"]["step"] > 0
