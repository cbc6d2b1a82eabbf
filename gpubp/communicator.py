"""What every communicator of gpubp.distributed shares: the collective operations the training
loop calls (:class:`Communicator`), the one-process communicator (:class:`SingleProcess`), and
the host-side reductions that make every rank decide alike.

Every method of a communicator is collective: every rank calls it, in the same order.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any

import numpy as np

from .errors import RankFailedError

SCALAR_OPS = ("sum", "max", "any")


def check_buffer(buffer) -> None:
    """Refuse anything but one flat, C-contiguous, writable array. (A CuPy array's flags have
    no WRITEABLE: every device array is writable; a NumPy array may be read-only.)"""
    if getattr(buffer, "ndim", None) != 1 or not buffer.flags.c_contiguous:
        raise ValueError("allreduce_sum takes one flat (1-D) C-contiguous array; got "
                         f"{type(buffer).__name__} of shape {getattr(buffer, 'shape', None)}")
    if not getattr(buffer.flags, "writeable", True):
        raise ValueError("allreduce_sum sums in place: the buffer must be writable")


def host_scalar(x):
    """A Python bool, int or float from a Python or NumPy scalar (or 1-element NumPy array)."""
    if isinstance(x, (bool, int, float)):
        return x
    if isinstance(x, np.generic) or (type(x) is np.ndarray and x.size == 1):
        return x.item()
    raise TypeError(f"allreduce_scalar takes a host number, not {type(x).__name__} "
                    "(bring a device value over with float() first)")


def reduce_in_rank_order(values: list, op: str):
    """``op`` ("sum", "max" or "any") of ``values``, rank 0's first: the same bits on every rank;
    "max" is NaN where any value is NaN (a divergence must not be hidden by another rank)."""
    if op == "any":
        return any(bool(v) for v in values)
    if op == "max":
        nan = [v for v in values if isinstance(v, float) and math.isnan(v)]
        return nan[0] if nan else max(values)
    if op != "sum":
        raise ValueError(f"unknown reduction {op!r}: expected one of {', '.join(SCALAR_OPS)}")
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return type(a) is type(b) and a.dtype == b.dtype and bool(np.array_equal(a, b))
    try:
        return type(a) is type(b) and bool(a == b)
    except (TypeError, ValueError):
        return False


def first_difference(all_settings: list[dict]) -> str | None:
    """The message naming the first rank, and its first setting, that differ from rank 0's.

    Parameters
    ----------
    all_settings : list of dict, length size
        Each rank's settings, in rank order.

    Returns
    -------
    str or None
        None when every rank's settings equal rank 0's (same keys, equal values of one type).
    """
    reference = all_settings[0]
    for rank, settings in enumerate(all_settings[1:], start=1):
        for key in list(reference) + [k for k in settings if k not in reference]:
            if key not in settings or key not in reference:
                has = "lacks" if key not in settings else "has, where rank 0 lacks,"
                return f"settings differ across ranks: rank {rank} {has} the setting {key!r}"
            if not _same(settings[key], reference[key]):
                return (f"settings differ across ranks: rank {rank} has {key}={settings[key]!r} "
                        f"where rank 0 has {key}={reference[key]!r}")
    return None


class Communicator:
    """A group of ranks, as the training loop sees it. Every method is collective: every rank
    calls it, in the same order. Subclasses give ``allreduce_sum``, ``allgather_object``,
    ``bcast_object``, ``barrier`` and ``abort``; the rest is built on them here.

    Attributes
    ----------
    rank : int
        This process's index, ``0 <= rank < size``; rank 0 prints and writes files.
    size : int
        The number of ranks.
    local_rank : int
        The index among the ranks on this machine; a GPU rank uses the GPU of this number.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    def allreduce_sum(self, buffer):
        """Sum ``buffer`` over the ranks in place; afterwards every rank holds the same sum.

        Parameters
        ----------
        buffer : numpy.ndarray (CPU ranks) or cupy.ndarray (GPU ranks), shape (m,)
            Flat and C-contiguous, of the same length and dtype on every rank (not checked
            per call: :meth:`check_same` on the sizes and dtype at start-up is the check).

        Returns
        -------
        array, shape (m,)
            ``buffer`` itself, now the element-wise sum of every rank's buffer.
        """
        raise NotImplementedError

    def allgather_object(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        raise NotImplementedError

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (picklable) on every rank; the other ranks' ``obj`` is ignored."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Return when every rank has called it."""
        raise NotImplementedError

    def abort(self, status: int = 1) -> None:
        """End every rank of the job now, with exit status ``status`` (``MPI_Abort``)."""
        raise NotImplementedError

    def allreduce_scalar(self, x, op: str):
        """``op`` of a host number over the ranks, the same bits on every rank.

        Parameters
        ----------
        x : bool, int or float (or a NumPy scalar)
        op : {"sum", "max", "any"}
            "max" is NaN when any rank's value is NaN; "any" is a logical or (stop, diverged).

        Returns
        -------
        bool, int or float
            Gathered and reduced in rank order on every rank, so that all ranks decide alike.
        """
        if op not in SCALAR_OPS:
            raise ValueError(f"unknown reduction {op!r}: expected one of {', '.join(SCALAR_OPS)}")
        return reduce_in_rank_order(self.allgather_object(host_scalar(x)), op)

    def check_same(self, settings: dict) -> None:
        """Compare every rank's settings (seed, sizes, dtype, data fingerprint ...) with rank 0's.

        Parameters
        ----------
        settings : dict
            Picklable values, compared with ``==`` (arrays with ``numpy.array_equal``); types count.

        Raises
        ------
        ValueError
            On every rank, naming the first rank that differs and its first differing setting.
        """
        if not isinstance(settings, dict):
            raise TypeError(f"check_same takes a dict of settings, not {type(settings).__name__}")
        message = first_difference(self.allgather_object(settings))
        if message is not None:
            raise ValueError(message)

    def raise_together(self, failure: BaseException | None, when: str = "before training") -> None:
        """End a stretch of work each rank did alone (checks, reading files): when any rank's
        ``failure`` is not None, every rank raises, so that none waits in a later collective for a
        rank that has stopped. ``when`` says in the others' message when it failed.

        Raises
        ------
        the rank's own ``failure``
            On a rank that failed.
        RankFailedError
            On the others, naming the first rank that failed and its error.
        """
        reports = self.allgather_object(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        failed = next(((r, m) for r, m in enumerate(reports) if m is not None), None)
        if failed is not None:
            raise RankFailedError(f"rank {failed[0]} of {self.size} failed {when}: {failed[1]}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


@contextlib.contextmanager
def failing_together(comm: Communicator, when: str = "before training"):
    """Run a block of work each rank does alone (no collective inside); at its end, every rank
    raises if any rank's block raised (:meth:`Communicator.raise_together`, ``when`` for its
    message)."""
    try:
        yield
    except Exception as exc:
        comm.raise_together(exc, when)
    else:
        comm.raise_together(None, when)


class SingleProcess(Communicator):
    """The communicator of a run in one process: size 1, every operation the identity."""

    def allreduce_sum(self, buffer):
        check_buffer(buffer)
        return buffer

    def allgather_object(self, obj: Any) -> list:
        return [obj]

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        if root != 0:
            raise ValueError(f"root {root} is not a rank of a 1-process run")
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, status: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
