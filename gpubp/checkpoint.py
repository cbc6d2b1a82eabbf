"""Training checkpoints: all a run needs to go on exactly, in gpubp's one file container.

A checkpoint is a :mod:`gpubp.container` file of kind "checkpoint". Its ``meta`` holds, beside
the model block, the optimizer's settings and step count, the training configuration, the run
state (epochs and steps done, position inside the current epoch, the shuffling generator's state,
early-stopping bookkeeping), the history, a fingerprint of the training data
(:func:`gpubp.rows.fingerprint`) and free-form ``extra`` (the command line keeps its data set
there). Its arrays: ``param_0..``, the weights then the biases; ``opt_<name>``, the optimizer's
state arrays by name (``opt_m``, ``opt_v``, ``opt_velocity``), each flat in the layout of
``MLP.flat_params`` (format 3 called them ``opt_<name>_0``, format 1 kept one per parameter; both
are still read: :func:`gpubp.optim.restore_state`); ``best_0..``, the best epoch's parameters
(early stopping); ``order``, the current epoch's row order when the run
stopped inside an epoch.

The container writes atomically, so a kill at any moment leaves the previous checkpoint whole,
and :func:`read_checkpoint` says what is wrong with a truncated, corrupted, foreign or newer
file, or with a saved model or estimator given where a checkpoint is expected.
"""

from __future__ import annotations

from pathlib import Path

from .container import Contents as Checkpoint
from .container import read, write

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint"]


def write_checkpoint(path, meta: dict, arrays: dict) -> Path:
    """Write a checkpoint: ``meta`` (JSON-able, with the ``model`` block) and host ``arrays`` by
    name (``param_0..`` the weights then the biases), atomically, with a checksum."""
    return write(path, "checkpoint", meta, arrays)


def read_checkpoint(path) -> Checkpoint:
    """Read and check a checkpoint written by :func:`write_checkpoint` (or by gpubp 0.1).

    Returns
    -------
    Checkpoint
        ``meta`` (dict), ``arrays`` (host arrays by name), ``params`` (weights then biases).

    Raises
    ------
    DataError
        Missing, truncated or corrupted file; a file that is not a gpubp checkpoint (a saved
        model or estimator: the message says how to load it); a newer format version; a
        checksum mismatch; parameters whose shapes or dtypes do not match the model block.
    """
    return read(path, "checkpoint")
