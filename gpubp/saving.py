"""Save a trained network to one .npz file (no pickle) and load it back on any device.

The file holds ``format_version``, ``sizes``, ``activation``, ``dtype``, ``alpha``, ``output``, ``tf32``
(files written before it existed load as tf32=False), the arrays
``W0..W{L-1}`` and ``b0..b{L-1}`` (host copies), and any extra arrays the caller adds under
``extra_<name>`` (the command line stores the classes and the input scaling there). It is written
to a temporary file in the same folder, flushed to disk and renamed over the target, so a crash
never leaves a half-written model where a good one was.
"""

from __future__ import annotations

import glob
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import DataError
from .mlp import MLP

FORMAT_VERSION = 1


def atomic_write(path, write) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, rename it to ``path``.

    A crash or kill at any moment leaves either the old file or the new one at ``path``. A
    temporary file that a killed writer left beside ``path`` is removed on the next write.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(net: MLP, path, extra: dict | None = None) -> Path:
    """Write ``net`` (and optional extra arrays) to ``path``, a .npz file.

    Parameters
    ----------
    net : MLP
    path : str or Path
        Its folder must exist.
    extra : dict of name -> array, optional
        Saved as ``extra_<name>``; returned by :func:`load_model`.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot save to {path}: folder {path.parent} does not exist")
    arrays = {
        "format_version": np.array(FORMAT_VERSION),
        "sizes": np.array(net.sizes, dtype=np.int64),
        "activation": np.array(net.activation),
        "dtype": np.array(net.dtype.name),
        "alpha": np.array(net.alpha),
        "output": np.array(net.output),
        "tf32": np.array(net.tf32),
    }
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"] = net.backend.to_host(W)
        arrays[f"b{l}"] = net.backend.to_host(b)
    for name, value in (extra or {}).items():
        arrays[f"extra_{name}"] = np.asarray(value)
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_model(path, backend="auto") -> tuple[MLP, dict]:
    """Read a network written by :func:`save_model` onto ``backend``.

    Returns
    -------
    net : MLP
    extra : dict of name -> ndarray

    Raises
    ------
    DataError
        When the file is missing, not a gpubp model, of another format version, or inconsistent.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as exc:  # a damaged zip or .npy header can fail in many ways
        raise DataError(f"{path}: not a readable gpubp model file ({type(exc).__name__}: {exc})") from None
    if "format_version" not in arrays or "sizes" not in arrays:
        raise DataError(f"{path}: not a gpubp model file (arrays: {sorted(arrays)[:8]})")
    version = int(arrays["format_version"])
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: model format version {version}, this gpubp reads {FORMAT_VERSION}")
    sizes = [int(s) for s in arrays["sizes"]]
    try:
        output = str(arrays.get("output", "softmax"))
        tf32 = arrays["tf32"].item() if "tf32" in arrays else False  # older files: IEEE float32
        net = MLP(sizes, str(arrays["activation"]), backend, str(arrays["dtype"]), alpha=float(arrays["alpha"]),
                  output=output, tf32=tf32)
        net.set_params([arrays[f"W{l}"] for l in range(len(sizes) - 1)] +
                       [arrays[f"b{l}"] for l in range(len(sizes) - 1)])
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: inconsistent gpubp model file ({exc})") from None
    extra = {k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")}
    return net, extra
