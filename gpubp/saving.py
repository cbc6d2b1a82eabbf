"""Save a trained network to one file (no pickle) and load it back on any device.

A saved model is a :mod:`gpubp.container` file of kind "model": the model block (sizes,
activation, output, dtype, alpha, tf32), the parameters ``param_0..`` (weights then biases, host
copies) and any extra arrays the caller adds, stored as ``extra_<name>`` (the command line keeps
the classes and the input scaling there). It is written atomically, so a crash never leaves a
half-written model where a good one was. Model files written by gpubp 0.1 (``format_version`` 1)
still load.
"""

from __future__ import annotations

from pathlib import Path

from .backend import get_backend, to_numpy
from .container import model_block, read, write
from .errors import DataError
from .mlp import MLP


def save_model(net: MLP, path, extra: dict | None = None) -> Path:
    """Write ``net`` (and optional extra arrays) to ``path``, a .npz file.

    Parameters
    ----------
    net : MLP
    path : str or Path
        Its folder must exist.
    extra : dict of name -> array, optional
        Numbers or strings, on the host or the device; saved as ``extra_<name>`` and returned by
        :func:`load_model` as NumPy arrays.
    """
    arrays = {f"param_{i}": net.backend.to_host(p) for i, p in enumerate(net.params)}
    arrays.update({f"extra_{name}": to_numpy(value) for name, value in (extra or {}).items()})
    return write(path, "model", {"model": model_block(net)}, arrays)


def load_model(path, backend="auto") -> tuple[MLP, dict]:
    """Read a network written by :func:`save_model` onto ``backend``.

    Returns
    -------
    net : MLP
    extra : dict of name -> ndarray

    Raises
    ------
    DataError
        When the file is missing, corrupted, not a gpubp model (a checkpoint or a saved
        estimator: the message says how to load it), of a newer format version, or inconsistent.
    """
    saved = read(path, "model")
    block, backend = saved.meta["model"], get_backend(backend)
    try:
        net = MLP(block["sizes"], block["activation"], backend, block["dtype"], alpha=block["alpha"],
                  output=block["output"], tf32=block["tf32"])
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: inconsistent gpubp model file ({type(exc).__name__}: {exc})") from None
    net.set_params(saved.params)
    return net, saved.prefixed("extra_")
