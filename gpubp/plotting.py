"""PNG of a run's loss and accuracy curves (matplotlib, an optional extra: gpubp[plot])."""

from __future__ import annotations

from pathlib import Path

from .atomic_file import atomic_write
from .history import History


def require_matplotlib() -> None:
    """Raise ImportError with the install command when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'gpubp[plot]'") from None


def plot_history(history: History, path, title: str = "") -> Path:
    """Write loss (train, validation) and validation-accuracy curves per epoch to ``path``."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, history.epochs + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, history.train_loss, label="train")
    if history.val_loss:
        ax_loss.plot(epochs, history.val_loss, label="validation")
        ax_acc.plot(epochs, history.val_accuracy, color="tab:orange", label="validation")
    else:
        ax_acc.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=ax_acc.transAxes)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    ax_loss.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
