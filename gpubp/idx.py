"""Reader for the IDX format of the MNIST files (raw or gzip-compressed).

An IDX file is a 4-byte magic number -- two zero bytes, a type code, the number of dimensions --
then one big-endian uint32 per dimension, then the values in C order. MNIST images are
``0x00000803`` (2051: unsigned bytes, 3 dimensions), labels ``0x00000801`` (2049: unsigned
bytes, 1 dimension).
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_IMAGES = re.compile(r"^(?P<prefix>.*?)[-_.]?images[-_.]idx3[-_.]ubyte(\.gz)?$")
_LABELS = re.compile(r"^(?P<prefix>.*?)[-_.]?labels[-_.]idx1[-_.]ubyte(\.gz)?$")


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path, expected_magic: int | None = None) -> np.ndarray:
    """The array stored in one IDX file.

    Parameters
    ----------
    path : str or Path
        IDX file, raw or gzip-compressed.
    expected_magic : int, optional
        Magic number the file must carry (2051 for MNIST images, 2049 for labels).

    Returns
    -------
    ndarray of the stored shape, in native byte order

    Raises
    ------
    DataError
        Unreadable file, wrong or unknown magic number, or data shorter or longer than the
        dimensions in the header say.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in _TYPES or ndim == 0:
        raise DataError(f"{path}: not an IDX file (magic number 0x{magic:08x})")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(f"{path}: magic number {magic}, expected {expected_magic}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes, {ndim} dimensions need {header})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated" if found < expected else "too long"
        raise DataError(
            f"{path}: {what}: shape {shape} needs {expected} bytes of data, the file has {found}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx_pair(images_path, labels_path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-style images (n, rows*cols) float64 in [0, 1] and labels (n,) int64.

    Raises DataError when the magic numbers are wrong or the counts differ.
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    X = images.reshape(images.shape[0], -1).astype(np.float64) / 255.0
    return X, labels.astype(np.int64)


def find_idx_pairs(folder) -> dict[str, tuple[Path, Path]]:
    """Image/label file pairs in a folder, keyed by their prefix ("train", "t10k", ...).

    Raises DataError when the folder holds no complete pair.
    """
    folder = Path(folder)
    images, labels = {}, {}
    for path in sorted(folder.iterdir()):
        for pattern, found in ((_IMAGES, images), (_LABELS, labels)):
            m = pattern.match(path.name)
            if m:
                found.setdefault(m["prefix"], path)
    pairs = {prefix: (images[prefix], labels[prefix]) for prefix in images if prefix in labels}
    if not pairs:
        raise DataError(
            f"{folder}: no IDX image/label pair found (expected files like "
            "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])"
        )
    return pairs
