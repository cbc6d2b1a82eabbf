"""Training settings of :func:`gpubp.fit`, checked once on creation (:class:`TrainConfig`).

The allowed values of each setting are rows of gpubp.params.SETTINGS, the table that the optimizers
and the ``gpubp`` command check against too; only the rules that relate two settings are here."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .optim import DEFAULT_LR, SGD, Adam
from .params import check_all


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
    cuda_graph: bool = False

    def __post_init__(self):
        """Every setting through gpubp.params (one wording for a bad value everywhere), then the
        rules between settings."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if values["lr"] is None:
            del values["lr"]  # the optimizer's default, filled in below
        for name, value in check_all(values).items():
            setattr(self, name, value)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.optimizer_name]
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        if self.checkpoint_every is not None and self.checkpoint is None:
            raise ValueError("checkpoint_every needs a checkpoint path")

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
