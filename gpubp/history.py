"""What a run of :func:`gpubp.fit` records: :class:`History`, and the line printed per epoch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class History:
    """Per-epoch record of a run. Lists have one entry per completed epoch."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    device: str = ""
    ranks: int = 1  # processes that trained it together (data-parallel), in the latest run

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    def record(self, logs: dict) -> None:
        """Append an epoch's figures (``logs`` as callbacks get them; None where not measured)."""
        self.train_loss.append(logs["train_loss"])
        self.lr.append(logs["lr"])
        self.seconds.append(logs["seconds"])
        if logs["val_loss"] is not None:
            self.val_loss.append(logs["val_loss"])
        if logs["val_accuracy"] is not None:
            self.val_accuracy.append(logs["val_accuracy"])

    def as_dict(self) -> dict:
        return asdict(self)


def epoch_line(epoch: int, epochs: int, logs: dict) -> str:
    """'epoch  3/20  train_loss 0.1234  val_loss 0.1500  val_acc 0.9583  lr 1.0e-03  0.050s'."""
    width = len(str(epochs))
    parts = [f"epoch {epoch:>{width}}/{epochs}", f"train_loss {logs['train_loss']:.4f}"]
    if logs["val_loss"] is not None:
        parts.append(f"val_loss {logs['val_loss']:.4f}")
    if logs["val_accuracy"] is not None:
        parts.append(f"val_acc {logs['val_accuracy']:.4f}")
    parts += [f"lr {logs['lr']:.1e}", f"{logs['seconds']:.3f}s"]
    return "  ".join(parts)
