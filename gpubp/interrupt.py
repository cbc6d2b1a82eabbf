"""SIGINT and SIGTERM during training: finish the current step, then stop cleanly.

While :func:`catch_stop_signals` is active (in the main thread), the first SIGINT or SIGTERM only
records the signal; the trainer looks after every optimizer step, writes a checkpoint and raises
:class:`TrainingInterrupted`. A second signal before that stops at once with KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after a whole step.

    Attributes
    ----------
    signum : int
    checkpoint : str or None
        Where the state was written (None when the run had no checkpoint path).
    epoch, step : int
        The epoch in progress and the number of optimizer steps taken.
    exit_status : int
        128 + signum: 130 for SIGINT, 143 for SIGTERM.
    """

    def __init__(self, signum: int, checkpoint, epoch: int, step: int):
        self.signum, self.checkpoint, self.epoch, self.step = signum, checkpoint, epoch, step
        self.exit_status = 128 + signum
        where = f"; checkpoint written to {checkpoint}" if checkpoint else "; no checkpoint path was set"
        super().__init__(f"interrupted by {signal.Signals(signum).name} in epoch {epoch} after step {step}{where}")


class StopFlag:
    """The first stop signal received while armed, or None."""

    def __init__(self):
        self.signum: int | None = None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum


@contextlib.contextmanager
def catch_stop_signals():
    """Yield a :class:`StopFlag` that SIGINT/SIGTERM set instead of killing the process.

    Outside the main thread signals cannot be caught, and the flag simply stays None.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, flag._handle)
    try:
        yield flag
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
