"""Files written whole or not at all: :func:`atomic_write` writes every file gpubp writes (saved
models, checkpoints, saved estimators, plots), and :func:`unwritable` says, before a long run,
why a path given as a setting could not be written.

A write goes to a temporary file ``.<name>.<host>.<pid>.<random>.tmp`` in the folder of the file
it replaces (the target of a symlink at the path: the link stays), created with the permissions
the umask gives a new file, then flushed, fsynced and renamed over that file, so a crash or kill
at any moment leaves either the old file or the new one. Each write first removes the temporary
files of the same name (``.<name>.<host>.<pid>.<random>.tmp``, or ``.<name>.<random>.tmp`` as
they were named before) that have not been modified for :data:`STALE_AFTER_S` seconds: those of
killed writers do not pile up, and a live writer's, which it is writing, is never taken (whether
its pid runs cannot tell: another machine, or another container of the same host name, shares
the folder), so two live writers of one path both succeed, and the last rename wins.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import socket
import tempfile
import time
from pathlib import Path

STALE_AFTER_S = 3600  # a temporary file no write has touched for an hour: its writer is gone
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"  # no dots: the name splits at them
_TEMPORARY = re.compile(r"([A-Za-z0-9-]+\.\d+\.)?[a-z0-9_]{8}\.tmp")  # after ".<name>.": ours, new or old


def target(path) -> Path:
    """The file a write to ``path`` replaces: ``path`` with every symlink resolved."""
    return Path(os.path.realpath(path))


def unwritable(path) -> str | None:
    """Why no file can be written at ``path`` (str or os.PathLike), in words, or None when one
    can: an empty path, a missing folder, a folder at the path, or a folder where no file can be
    created (tried: a temporary file is created and removed)."""
    problem = _path_problem(path)
    if problem is not None:
        return problem
    file = target(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=_prefix(file), suffix=".tmp", dir=file.parent)
    except OSError as exc:
        return f"no file can be created in folder {file.parent} ({exc.strerror or exc})"
    os.close(fd)
    Path(probe).unlink(missing_ok=True)
    return None


def atomic_write(path, write) -> Path:
    """Call ``write(file)`` on a temporary file beside the file at ``path`` (its symlinks
    resolved), fsync it, rename it over that file, fsync the folder; return ``path``.

    Raises
    ------
    ValueError
        The path is empty, its folder does not exist, or it is a folder.
    OSError
        Writing failed (a full disk, no permission, ...): the message names ``path``; the errno
        is the original's and the previous file at ``path`` is whole.
    """
    problem = _path_problem(path)
    if problem is not None:
        raise ValueError(f"cannot write {str(path) or 'a file'}: {problem}")
    path = Path(path)
    file = target(path)
    _remove_stale(file)
    tmp = file.parent / f"{_prefix(file)}{secrets.token_hex(4)}.tmp"
    try:  # O_EXCL: a name no one else holds; 0o666 less the umask, as any new file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _naming(exc, path) from exc
        raise
    _fsync_folder(file.parent)
    return path


def _path_problem(path) -> str | None:
    """What rules out a file at ``path`` before trying: empty, no folder, a folder there."""
    if str(path) == "":
        return "the path is empty"
    folder = Path(path).parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder" if folder.exists() else f"folder {folder} does not exist"
    file = target(path)
    if file.is_dir():
        return "it is a folder: name a file in it"
    if not file.parent.is_dir():
        return f"it links to {file}, whose folder {file.parent} does not exist"
    return None


def _prefix(file: Path) -> str:
    return f".{file.name}.{_HOST}.{os.getpid()}."


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` again, with a message that names ``path``, and its errno (so its subclass)."""
    message = f"could not write {path}: {exc.strerror or exc}"
    return OSError(message) if exc.errno is None else OSError(exc.errno, message)


def _remove_stale(file: Path) -> None:
    """Remove the stale temporary files of writes to ``file`` (see the module's docstring)."""
    start = f".{file.name}."
    for temp in file.parent.glob(f"{glob.escape(start)}*.tmp"):
        try:
            if _TEMPORARY.fullmatch(temp.name[len(start):]) and time.time() - temp.stat().st_mtime > STALE_AFTER_S:
                temp.unlink(missing_ok=True)
        except OSError:
            pass  # gone meanwhile, or not ours to remove: no reason to fail this write


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
