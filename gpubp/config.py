"""Training settings of :func:`gpubp.fit`, checked once on creation (:class:`TrainConfig`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from .optim import DEFAULT_LR, OPTIMIZERS, SGD, Adam, check_lr
from .schedules import SCHEDULES
from .validation import check_positive_int


@dataclass
class TrainConfig:
    """Training settings, checked once on creation (see :func:`fit` for their meaning)."""

    epochs: int = 20
    batch_size: int = 64
    optimizer: str | SGD | Adam = "adam"
    lr: float | None = None
    momentum: float = 0.9
    schedule: str = "constant"
    warmup_epochs: int = 0
    validation_fraction: float = 0.0
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    shuffle: bool = True
    seed: int | None = None
    clip_norm: float | None = None
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    verbose: int = 0
    stream: bool = False

    def __post_init__(self):
        check_positive_int(self.epochs, "epochs")
        check_positive_int(self.batch_size, "batch_size")
        if isinstance(self.optimizer, str):
            if self.optimizer not in OPTIMIZERS:
                raise ValueError(
                    f"unknown optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}"
                )
        elif not isinstance(self.optimizer, (SGD, Adam)):
            raise ValueError(f"optimizer must be a name or an SGD/Adam instance, got {self.optimizer!r}")
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer_name]
        self.lr = check_lr(self.lr)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        check_positive_int(self.warmup_epochs, "warmup_epochs", minimum=0)
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        vf = self.validation_fraction
        if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 <= vf < 1:
            raise ValueError(f"validation_fraction must be in [0, 1), got {vf!r}")
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        if not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {self.min_delta!r}")
        if self.clip_norm is not None and not (
            isinstance(self.clip_norm, (int, float)) and math.isfinite(self.clip_norm) and self.clip_norm > 0
        ):
            raise ValueError(f"clip_norm must be a finite number > 0, got {self.clip_norm!r}")
        if self.checkpoint is not None:
            self.checkpoint = str(self.checkpoint)
            if not Path(self.checkpoint).parent.is_dir():
                raise ValueError(f"checkpoint {self.checkpoint}: folder {Path(self.checkpoint).parent} does not exist")
        if self.checkpoint_every is not None:
            check_positive_int(self.checkpoint_every, "checkpoint_every")
            if self.checkpoint is None:
                raise ValueError("checkpoint_every needs a checkpoint path")
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2, got {self.verbose!r}")
        if not isinstance(self.stream, bool):
            raise ValueError(f"stream must be True or False, got {self.stream!r}")

    @property
    def optimizer_name(self) -> str:
        if isinstance(self.optimizer, str):
            return self.optimizer
        if isinstance(self.optimizer, Adam):
            return "adam"
        if self.optimizer.nesterov:
            return "nesterov"
        return "momentum" if self.optimizer.momentum else "sgd"

    def as_dict(self) -> dict:
        """The settings as plain values (an optimizer instance by its name)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["optimizer"] = self.optimizer_name
        return values
