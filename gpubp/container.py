"""The one file format of gpubp: saved models, training checkpoints and saved estimators.

Every file gpubp writes about a network is an .npz archive (read with ``allow_pickle=False``)
holding

- ``meta``: UTF-8 JSON (stored as uint8) with ``format`` ("gpubp"), ``version``
  (:data:`VERSION`), ``kind`` (one of :data:`KINDS`), ``gpubp_version`` (the writer's), the
  ``model`` block (:func:`model_block`: sizes, activation, output, dtype, alpha, tf32) and what
  the kind adds (a checkpoint's run state, an estimator's parameters, an estimator fit's state;
  see gpubp.checkpoint, gpubp.estimator_base and gpubp.estimator_checkpoint);
- ``param_0..param_{2L-1}``: the weights then the biases, host copies, in every kind, checked on
  reading against the model block's sizes and dtype; other arrays by name (a model's
  ``extra_<name>``, a checkpoint's ``opt_*``, ``best_*``, ``order``);
- ``checksum``: SHA-256 over every other entry's name, dtype, shape and bytes.

Files are written atomically (:func:`gpubp.atomic_file.atomic_write`): a crash or kill leaves
the previous file whole, and a failed write raises an OSError naming the file. :func:`read` says
in a :class:`gpubp.DataError` what is wrong with a missing, truncated, corrupted or newer file, a
foreign one (an .npz that is not gpubp's, or no .npz at all), or one of another kind (and how to
load that kind).

Files written before this container (gpubp 0.1) are still read:

- checkpoints and estimator saves with ``format`` "gpubp-checkpoint", versions 1 and 2: the same
  meta and checksum, no ``kind`` (an ``estimator`` entry marks an estimator save); a checkpoint's
  model block without ``output`` is a softmax network's, without ``tf32`` an IEEE one's;
- model files with ``format_version`` 1 and no meta: the settings as arrays (``sizes``,
  ``activation``, ``dtype``, ``alpha``, ``output``, ``tf32``), ``W0..``, ``b0..`` and
  ``extra_<name>``, no checksum.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic_file import atomic_write
from .bfloat16 import parameter_dtype
from .errors import DataError
from .version import __version__

FORMAT = "gpubp"
VERSION = 4  # after the checkpoint formats 1 and 2; 4 names a checkpoint's optimizer state opt_<name>
_READABLE = (3, VERSION)  # 3 named it opt_<name>_0: an older gpubp must not take opt_<name> for no state
KINDS = ("model", "checkpoint", "estimator", "estimator_checkpoint")
_LEGACY_FORMAT, _LEGACY_VERSIONS = "gpubp-checkpoint", (1, 2)
_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")  # an archive's first entry, or an empty archive's end
_NOUNS = {"model": "gpubp model file", "checkpoint": "checkpoint", "estimator": "saved estimator",
          "estimator_checkpoint": "checkpoint of an estimator's fit"}
_HOW = {"model": "load it with gpubp.load_model",
        "checkpoint": "resume it with gpubp.fit(..., resume=path) or gpubp train --resume, "
                      "or read it with gpubp.read_checkpoint",
        "estimator": "load it with gpubp.load_estimator",
        "estimator_checkpoint": "resume it with the estimator's fit, given checkpoint=path and resume=True"}


@dataclass
class Contents:
    """A file read back: its ``kind``, JSON ``meta`` (with the ``model`` block) and host ``arrays``."""

    path: Path
    kind: str
    meta: dict
    arrays: dict

    @property
    def params(self) -> list[np.ndarray]:
        """Weights then biases: 2L host arrays, (sizes[l], sizes[l+1]) then (sizes[l+1],)."""
        return [self.arrays[f"param_{i}"] for i in range(2 * (len(self.meta["model"]["sizes"]) - 1))]

    def prefixed(self, prefix: str) -> dict:
        """Arrays whose names start with ``prefix``, with the prefix removed."""
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}


def model_block(net) -> dict:
    """The settings of ``net`` (a :class:`gpubp.MLP`) as every kind of file records them, and as
    a resumed run must match them: sizes, activation, output, dtype, alpha, tf32 (JSON types)."""
    return block(net.sizes, net.activation, net.output, net.compute_dtype, net.alpha, net.tf32)  # bfloat16's name


def block(sizes, activation: str, output: str, dtype, alpha: float, tf32: bool) -> dict:
    """The model block of a network with these settings (see :func:`model_block`), for a caller
    that has the settings but no network on a device (a saved estimator)."""
    return {"sizes": [int(s) for s in sizes], "activation": activation, "output": output,
            "dtype": np.dtype(dtype).name, "alpha": float(alpha), "tf32": bool(tf32)}


def write(path, kind: str, meta: dict, arrays: dict) -> Path:
    """Write a container of ``kind`` to ``path`` atomically, with a checksum.

    Parameters
    ----------
    path : str or Path
        Its folder must exist (a symlink: its target's), and no folder be there
        (:func:`gpubp.atomic_file.atomic_write`).
    kind : {"model", "checkpoint", "estimator", "estimator_checkpoint"}
    meta : dict
        JSON-able; must hold the ``model`` block (:func:`model_block`). ``format``, ``version``,
        ``kind`` and ``gpubp_version`` are set here.
    arrays : dict of name -> host array
        Numbers or strings (no Python objects); ``param_0..`` the weights then the biases.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
    if not isinstance(meta.get("model"), dict):
        raise ValueError("meta needs the network's model block (gpubp.container.model_block(net))")
    entries = {name: np.asarray(a) for name, a in arrays.items()}
    for name, a in entries.items():
        if name in ("meta", "checksum"):
            raise ValueError(f"array name {name!r} is reserved by the file format: rename the array")
        if a.dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects (dtype object), which cannot be stored "
                             "without pickle: convert it to numbers or strings (e.g. .astype(str))")
    meta = {**meta, "format": FORMAT, "version": VERSION, "kind": kind, "gpubp_version": __version__}
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    entries["checksum"] = np.array(_checksum(entries))
    return atomic_write(path, lambda f: np.savez(f, **entries))


def read(path, kind: str) -> Contents:
    """Read and check the container at ``path``, which must be of ``kind``.

    Raises
    ------
    DataError
        Missing, truncated or corrupted file (checksum); a file that is not gpubp's; a newer
        format version; a file of another kind (the message says how to load that kind);
        parameters whose shapes or dtypes do not match the model block.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no {_NOUNS[kind]} at {path}")
    _check_archive(path, kind)
    try:
        with np.load(path, allow_pickle=False) as f:
            entries = {name: f[name] for name in f.files}
    except Exception as exc:  # a damaged zip or .npy header can fail in many ways, all meaning the same
        raise DataError(f"{path}: truncated or corrupted, not readable as a {_NOUNS[kind]} "
                        f"({type(exc).__name__}: {exc})") from None
    if "meta" in entries and "checksum" in entries:
        found, meta = _checked_meta(path, entries)
    elif "format_version" in entries and "sizes" in entries:
        found, meta = "model", _legacy_model(path, entries)
    else:
        raise DataError(f"{path}: not a gpubp file (it holds {sorted(entries)[:6]}); expected a {_NOUNS[kind]}")
    if found != kind:
        raise DataError(f"{path} is a {_NOUNS[found]}, not a {_NOUNS[kind]}: {_HOW[found]}")
    contents = Contents(path, found, meta, entries)
    _check_params(contents)
    return contents


def _check_archive(path: Path, kind: str) -> None:
    """DataError unless the file at ``path`` starts as a zip archive (an .npz) does; a shorter
    file is left to np.load, which finds it truncated."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_STARTS[0]))
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not any(start.startswith(head) for start in _ZIP_STARTS):
        raise DataError(f"{path}: not a gpubp file (not an .npz archive: it starts with {head!r}); "
                        f"expected a {_NOUNS[kind]}")


def _checksum(entries: dict) -> str:
    """SHA-256 over each entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        a = np.ascontiguousarray(entries[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _checked_meta(path: Path, entries: dict) -> tuple[str, dict]:
    """(kind, meta) of a file with meta and checksum, both removed from ``entries``."""
    stored = str(entries.pop("checksum"))
    if _checksum(entries) != stored:
        raise DataError(f"{path}: checksum mismatch: the file is corrupted")
    try:
        meta = json.loads(entries.pop("meta").tobytes().decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT, _LEGACY_FORMAT):
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise DataError(f"{path}: not a gpubp file (format {found!r})")
    version = meta.get("version")
    if meta["format"] == _LEGACY_FORMAT and version in _LEGACY_VERSIONS:
        if "estimator" in meta:
            return "estimator", meta
        if isinstance(meta.get("model"), dict):  # fit trains softmax networks; tf32 came later
            meta["model"] = {"output": "softmax", "tf32": False, **meta["model"]}
        return "checkpoint", meta
    if meta["format"] == FORMAT and isinstance(version, int) and version > VERSION:
        raise DataError(f"{path}: format version {version}, written by gpubp {meta.get('gpubp_version')}; "
                        f"this gpubp ({__version__}) reads versions up to {VERSION}: upgrade gpubp")
    if version not in _READABLE or meta["format"] != FORMAT:
        raise DataError(f"{path}: {meta['format']} format version {version}, not one this gpubp reads "
                        f"(1 and 2 of {_LEGACY_FORMAT}, 3 to {VERSION} of {FORMAT})")
    if meta.get("kind") not in KINDS:
        raise DataError(f"{path}: unknown kind {meta.get('kind')!r}, expected one of {', '.join(KINDS)}")
    return meta["kind"], meta


def _legacy_model(path: Path, entries: dict) -> dict:
    """Meta of a model file of format_version 1; its settings and W/b arrays are taken out of
    ``entries`` and the parameters put back as param_0.. (weights then biases)."""
    version = entries.pop("format_version")
    if version.shape != () or version != 1:
        raise DataError(f"{path}: model file format version {version}; this gpubp reads model files of "
                        f"version 1 and {FORMAT} files up to version {VERSION}")
    try:
        sizes = [int(s) for s in entries.pop("sizes")]
        model = {"sizes": sizes, "activation": str(entries.pop("activation")),
                 "output": str(entries.pop("output", "softmax")), "dtype": str(entries.pop("dtype")),
                 "alpha": float(entries.pop("alpha")), "tf32": entries.pop("tf32", np.array(False)).item()}
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: inconsistent gpubp model file ({type(exc).__name__}: {exc})") from None
    L = len(sizes) - 1
    for l in range(L):
        for name, i in ((f"W{l}", l), (f"b{l}", L + l)):
            if name in entries:
                entries[f"param_{i}"] = entries.pop(name)
    return {"format": "gpubp-model", "version": 1, "model": model}


def _check_params(contents: Contents) -> None:
    """DataError unless param_0.. have the shapes and dtype of the model block."""
    path, model = contents.path, contents.meta.get("model")
    try:
        sizes, dtype = [int(s) for s in model["sizes"]], parameter_dtype(model["dtype"])  # bfloat16: float32
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: no readable model block ({type(exc).__name__}: {exc})") from None
    shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:])] + [(b,) for b in sizes[1:]]
    for i, shape in enumerate(shapes):
        a = contents.arrays.get(f"param_{i}")
        if a is None:
            raise DataError(f"{path}: parameter {i} is missing")
        if a.shape != shape or a.dtype != dtype:
            raise DataError(f"{path}: parameter {i} is {a.dtype} {a.shape}, the model "
                            f"{'-'.join(map(str, sizes))} {dtype.name} needs {dtype.name} {shape}")
