"""Training checkpoints: one .npz file (no pickle) holding all a run needs to go on exactly.

Layout of the file:

- ``meta``: UTF-8 JSON (as uint8) with ``format`` ("gpubp-checkpoint"), ``version``, the model
  (sizes, activation, dtype, alpha), the optimizer's settings and step count, the training
  configuration, the run state (epochs and steps done, position inside the current epoch, the
  shuffling generator's state, early-stopping bookkeeping), the history, a fingerprint of the
  training data, and free-form ``extra`` (the command line keeps its data set there);
- ``param_0..``: weights then biases, host copies; ``opt_*``: optimizer state arrays, one flat
  array per kind of state in the layout of ``MLP.flat_params`` (version 2; version 1 kept one
  array per parameter and is still read: the optimizer joins them);
  ``best_0..``: the best epoch's parameters (early stopping); ``order``: the current epoch's row
  order when the run stopped inside an epoch;
- ``checksum``: SHA-256 over every other entry's name, dtype, shape and bytes.

Files are written atomically (:func:`gpubp.saving.atomic_write`), so a kill at any moment leaves
the previous checkpoint whole. :func:`read_checkpoint` checks the format, version, checksum,
shapes and dtypes and says what is wrong with a truncated, corrupted or foreign file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .saving import atomic_write

FORMAT = "gpubp-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class Checkpoint:
    """A checkpoint read back: its JSON ``meta`` and its host ``arrays`` by name."""

    path: Path
    meta: dict
    arrays: dict

    @property
    def params(self) -> list[np.ndarray]:
        """Weights then biases."""
        return [self.arrays[f"param_{i}"] for i in range(2 * (len(self.meta["model"]["sizes"]) - 1))]

    def prefixed(self, prefix: str) -> dict:
        """Arrays whose names start with ``prefix``, with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}


def _checksum(arrays: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def data_fingerprint(X: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the training inputs and labels, to refuse resuming on different data."""
    return _checksum({"X": X, "y": y})


def write_checkpoint(path, meta: dict, arrays: dict) -> Path:
    """Write ``meta`` and host ``arrays`` to ``path`` atomically, with a checksum."""
    meta = {"format": FORMAT, "version": VERSION, **meta}
    entries = {name: np.asarray(a) for name, a in arrays.items()}
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    entries["checksum"] = np.array(_checksum(entries))
    return atomic_write(path, lambda f: np.savez(f, **entries))


def read_checkpoint(path) -> Checkpoint:
    """Read and check a checkpoint.

    Raises
    ------
    DataError
        Missing, truncated or corrupted file; a file that is not a gpubp checkpoint; another
        format version; a checksum mismatch; parameters whose shapes or dtypes do not match the
        model described in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            entries = {name: f[name] for name in f.files}
    except Exception as exc:  # a damaged zip or .npy header can fail in many ways, all meaning the same
        raise DataError(f"{path}: truncated or corrupted checkpoint ({type(exc).__name__}: {exc})") from None
    if "meta" not in entries or "checksum" not in entries:
        if "format_version" in entries and "sizes" in entries:
            raise DataError(f"{path}: a gpubp model file, not a checkpoint; load it with gpubp.load_model")
        raise DataError(f"{path}: not a gpubp checkpoint (it holds {sorted(entries)[:6]})")
    stored = str(entries.pop("checksum"))
    if _checksum(entries) != stored:
        raise DataError(f"{path}: checksum mismatch: the checkpoint is corrupted")
    try:
        meta = json.loads(entries.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable checkpoint metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a gpubp checkpoint (format {meta.get('format')!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        raise DataError(f"{path}: checkpoint format version {meta.get('version')}, this gpubp reads "
                        f"{' and '.join(map(str, READABLE_VERSIONS))}")
    checkpoint = Checkpoint(path, meta, entries)
    _check_params(checkpoint)
    return checkpoint


def _check_params(checkpoint: Checkpoint) -> None:
    model = checkpoint.meta["model"]
    sizes, dtype = model["sizes"], np.dtype(model["dtype"])
    shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:])] + [(b,) for b in sizes[1:]]
    for i, shape in enumerate(shapes):
        a = checkpoint.arrays.get(f"param_{i}")
        if a is None:
            raise DataError(f"{checkpoint.path}: parameter {i} is missing")
        if a.shape != shape or a.dtype != dtype:
            raise DataError(
                f"{checkpoint.path}: parameter {i} is {a.dtype} {a.shape}, the model "
                f"{'-'.join(map(str, sizes))} {dtype.name} needs {dtype.name} {shape}"
            )
