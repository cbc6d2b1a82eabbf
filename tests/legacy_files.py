"""Files in the layouts gpubp 0.1 wrote (before the one container), built here byte for byte
from that layout's description, so the tests check that they still load without keeping binaries."""

import hashlib
import json

import numpy as np


def legacy_checksum(entries: dict) -> str:
    """The checksum of gpubp 0.1 checkpoints: SHA-256 over name|dtype|shape| and bytes, by name.
    Written out here rather than taken from gpubp.container, so that a change there cannot change
    what the old files look like."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        a = np.ascontiguousarray(entries[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def write_with_meta(path, meta: dict, arrays: dict) -> None:
    """An .npz with ``meta`` exactly as given (JSON as uint8), the arrays and their checksum: a
    gpubp 0.1 checkpoint or estimator save ("gpubp-checkpoint", version 1 or 2), or any forgery."""
    entries = {name: np.asarray(a) for name, a in arrays.items()}
    entries["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    entries["checksum"] = np.array(legacy_checksum(entries))
    np.savez(path, **entries)


def legacy_model_arrays(net, extra: dict | None = None) -> dict:
    """The arrays of a gpubp 0.1 model file (format_version 1) of ``net`` (a CPU MLP), without
    ``tf32`` (files from before it existed); add it as ``tf32=np.array(True)``."""
    arrays = {"format_version": np.array(1), "sizes": np.array(net.sizes, dtype=np.int64),
              "activation": np.array(net.activation), "dtype": np.array(net.dtype.name),
              "alpha": np.array(net.alpha), "output": np.array(net.output)}
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        arrays[f"W{l}"], arrays[f"b{l}"] = np.asarray(W), np.asarray(b)
    arrays.update({f"extra_{name}": np.asarray(v) for name, v in (extra or {}).items()})
    return arrays
