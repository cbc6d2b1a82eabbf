"""Learning-rate schedules: the rate for optimizer step t (counted from 0) of a run of T steps.

Both schedules warm up linearly over the first ``warmup_steps`` steps, from lr/warmup_steps to lr.
"""

from __future__ import annotations

import math
import numbers

SCHEDULES = ("constant", "cosine")


class Schedule:
    """lr(t) for t = 0..total_steps-1.

    Parameters
    ----------
    lr : float
        Peak learning rate.
    total_steps : int
        Steps in the whole run (the cosine reaches ``final_lr`` at the last one).
    kind : {"constant", "cosine"}
    warmup_steps : int
        Steps of linear warm-up before the constant rate or the cosine decay.
    final_lr : float
        Rate the cosine decays to.
    """

    def __init__(self, lr: float, total_steps: int, kind: str = "constant", warmup_steps: int = 0,
                 final_lr: float = 0.0):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}: expected one of {', '.join(SCHEDULES)}")
        if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
            raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
        for name, steps in (("total_steps", total_steps), ("warmup_steps", warmup_steps)):
            if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
                raise ValueError(f"{name} must be a whole number of steps, got {steps!r}")
        if warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(
                f"warm-up of {warmup_steps} steps does not fit a run of {total_steps} steps"
            )
        if not 0 <= final_lr <= lr:
            raise ValueError(f"final_lr must be in [0, lr={lr}], got {final_lr!r}")
        self.lr = lr
        self.total_steps = total_steps
        self.kind = kind
        self.warmup_steps = warmup_steps
        self.final_lr = final_lr

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return self.lr * (t + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        decay_steps = self.total_steps - self.warmup_steps
        progress = (t - self.warmup_steps) / max(decay_steps - 1, 1)  # 0 .. 1
        progress = min(progress, 1.0)
        return self.final_lr + 0.5 * (self.lr - self.final_lr) * (1 + math.cos(math.pi * progress))
