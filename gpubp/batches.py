"""Where a training step's batch comes from: a resident training set, or rows streamed from the host.

:func:`batch_feed` picks one of two feeds for a run. Both give, for an epoch's row order, the
batches ``(X[idx], y[idx])`` with ``idx = order[start : start + batch_size]``, as
:class:`Batch` objects whose :meth:`Batch.arrays` the training step calls (so that running out of
memory there is reported like any other failed step).

- :class:`ResidentFeed`: the training set was copied to the device once (it fits, in half the
  free memory), in the network's compute dtype; rows are gathered by index on the device.
With data parallelism (``part=(rank, size)``) every rank holds the whole training set and the
same order; each batch is the global batch ``order[start : start + batch_size]``, of which a rank
gathers only its contiguous share (:func:`share`, split as ``numpy.array_split`` splits). A
Batch keeps the global ``start`` and ``size`` (the run's position and the loss weights are global)
and gives its share's row count as ``rows``; a share may be empty (a last batch of fewer rows than
ranks), and its rank still takes the step's part in the collectives.

- :class:`StreamedFeed`: the training set stays on the host (it does not fit, the caller asked
  with ``stream=True``, or it is memory-mapped: :class:`gpubp.rows.HostRows`). On the CPU a
  batch is simply gathered. On a GPU, rows are gathered on the host into one of two pinned
  (page-locked) buffers and copied to one of two device buffers on a side stream while the
  previous step computes: batch k+1 travels while step k runs. Two events per slot keep it safe:
  ``ready`` (the copy has arrived; the compute stream waits for it before the step, the host
  waits for it before gathering into that pinned buffer again) and ``free`` (the step that read
  the device buffer has run; the side stream waits for it before copying over it).

Streamed batches hold the same numbers in the same order as resident ones, so a run gives
bitwise the same losses and parameters either way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .rows import HostRows


@dataclass
class Batch:
    """Rows ``start .. start + size`` of an epoch's order, of which this rank trains ``rows``
    (all of them in one process); ``arrays()`` gives ``(Xb (rows, d), yb (rows,) or (rows, k),
    wb (rows,) or None)`` on the device, and ``arrays(out)`` writes them into ``out``, device
    arrays of those shapes and dtypes (a CUDA graph's input buffers), and returns ``out`` itself.
    ``weight`` is the whole batch's weight W (its row count, or its summed sample weights) and
    ``share`` this rank's part of it, W_r / W (1 in one process)."""

    start: int
    size: int
    arrays: Callable[..., tuple]
    rows: int
    weight: float
    share: float


def share(m: int, part: tuple[int, int]) -> tuple[int, int]:
    """Rank r's rows ``lo .. hi`` of a batch of m rows split over R ranks, ``part=(r, R)``: the
    first ``m % R`` ranks get ``m // R + 1`` rows, the others ``m // R`` (as np.array_split)."""
    r, R = part
    q, extra = divmod(m, R)
    lo = r * q + min(r, extra)
    return lo, lo + q + (r < extra)


def batch_feed(backend, X, y, batch_size: int, dtype, stream: bool, part: tuple[int, int] = (0, 1),
               sample_weight=None, x_dtype=None):
    """The feed for training data X (n, d) (a host array in ``dtype``, or HostRows), targets y
    (host: class indices (n,) int64, or (n, k) in ``dtype``) and optional sample weights (host
    (n,) in ``dtype``) on ``backend``: resident when X is an array that fits on the device and
    streaming was not asked for, streamed otherwise (batches in ``dtype``). ``part=(rank, size)``:
    this rank's share of every batch (the whole batch by default).

    ``x_dtype``: the dtype a resident X is kept in, the network's compute dtype (``dtype`` when
    None). A bfloat16 network's products read X rounded to bfloat16 from float32; kept so, the set
    is rounded once, when placed, instead of at every step, takes half the device memory, and
    each gather moves half the bytes, with the same numbers in every product."""
    x_dtype = np.dtype(dtype if x_dtype is None else x_dtype)
    if isinstance(X, HostRows) or stream or not backend.fits(X.shape[0] * X.shape[1] * x_dtype.itemsize):
        return StreamedFeed(backend, X, y, batch_size, dtype, part, sample_weight)
    return ResidentFeed(backend, X.astype(x_dtype, copy=False), y, batch_size, part, sample_weight)


def _shares(order: np.ndarray, n: int, batch_size: int, position: int, part: tuple[int, int], w=None):
    """(start, size, lo, hi, weight, share) of every batch of the host ``order`` from
    ``position`` on: ``order[lo:hi]`` are this rank's rows, weight is the batch's W and share this
    rank's W_r / W."""
    for start in range(position, n, batch_size):
        size = min(batch_size, n - start)
        lo, hi = share(size, part)
        lo, hi = start + lo, start + hi
        if w is None:
            yield start, size, lo, hi, size, (hi - lo) / size
        else:
            weight = float(w[order[start : start + size]].sum(dtype=np.float64))
            mine = weight if part[1] == 1 else float(w[order[lo:hi]].sum(dtype=np.float64))
            yield start, size, lo, hi, weight, mine / weight if weight else 0.0


class ResidentFeed:
    """Batches gathered on the device from a training set copied there once."""

    def __init__(self, backend, X: np.ndarray, y: np.ndarray, batch_size: int, part: tuple[int, int] = (0, 1),
                 sample_weight=None):
        self.backend, self.batch_size, self.n, self.part = backend, batch_size, X.shape[0], part
        self.X, self.y = backend.asarray(X), backend.asarray(y)
        self.w_host = sample_weight
        self.w = None if sample_weight is None else backend.asarray(sample_weight)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def epoch(self, order: np.ndarray, position: int) -> Iterator[Batch]:
        """The batches of ``order`` (host int array (n,)) from row ``position`` on."""
        device_order = self.backend.asarray(order)  # one copy per epoch; batches slice it on the device
        for start, size, lo, hi, weight, part in _shares(order, self.n, self.batch_size, position, self.part,
                                                         self.w_host):
            yield Batch(start, size, lambda out=None, idx=device_order[lo:hi]: self._gather(idx, out), hi - lo,
                        weight, part)

    def _gather(self, idx, out: tuple | None) -> tuple:
        """Rows idx (device int array (m,)) of X, y and the weights: one gather each, into ``out``."""
        take, out = self.backend.xp.take, out or (None, None, None)
        arrays = [None if a is None else take(a, idx, axis=0, out=o) for a, o in zip((self.X, self.y, self.w), out)]
        return tuple(arrays)


class StreamedFeed:
    """Batches gathered on the host and, on a GPU, copied over a side stream into two device
    buffers that take turns (see the module docstring)."""

    def __init__(self, backend, X, y: np.ndarray, batch_size: int, dtype, part: tuple[int, int] = (0, 1),
                 sample_weight=None):
        self.backend, self.batch_size, self.n, self.part = backend, batch_size, X.shape[0], part
        self.rows = X if isinstance(X, HostRows) else HostRows(X)
        self.dtype = np.dtype(dtype)
        self.y = np.asarray(y, dtype=np.int64 if np.asarray(y).ndim == 1 else self.dtype)
        self.w = None if sample_weight is None else np.asarray(sample_weight, dtype=self.dtype)
        self._slots = None  # allocated by the first step (inside it, so running out of memory there is reported)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        """Wait for the copy in flight, if any, before the pinned buffers may be released."""
        if self._slots is not None:
            self._slots.stream.synchronize()

    def epoch(self, order: np.ndarray, position: int) -> Iterator[Batch]:
        """The batches of ``order`` (host int array (n,)) from row ``position`` on."""
        batches = list(_shares(order, self.n, self.batch_size, position, self.part, self.w))
        idx = [order[lo:hi] for _, _, lo, hi, _, _ in batches]
        for k, (start, size, lo, hi, weight, part) in enumerate(batches):
            if self.backend.name == "cpu":
                fetch = lambda out=None, i=idx[k]: _into(out, self._take(i))  # noqa: E731
            else:
                fetch = lambda out=None, k=k: _into(out, self._arrive(idx, k))  # noqa: E731
            yield Batch(start, size, fetch, hi - lo, weight, part)

    def _take(self, i: np.ndarray) -> tuple:
        """Rows i (host int array (m,)) of X, y and the weights, gathered on the host."""
        return self.rows.take(i, self.dtype), self.y[i], None if self.w is None else self.w[i]

    def _arrive(self, idx: list, k: int) -> tuple:
        """Batch k of ``idx`` on the device: sent now if it is the first, batch k+1 sent behind it."""
        if self._slots is None:
            self._slots = _Slots(self.backend, self.batch_size, self.dtype, self.rows, [self.y, self.w])
        slots = self._slots
        if k == 0:  # every step before this epoch (or resumed part) is queued: both slots are free after it
            slots.release(0)
            slots.release(1)
            slots.send(0, idx[0])
        else:
            slots.release((k - 1) % 2)  # step k-1, which read slot (k-1) % 2, is queued before this
        if k + 1 < len(idx):
            slots.send((k + 1) % 2, idx[k + 1])
        return slots.receive(k % 2, idx[k].shape[0])


class _Slots:
    """Two pinned host buffers, two device buffers, a side stream and two events per slot, for
    the rows of X and of each per-row array (targets, and weights when not None)."""

    def __init__(self, backend, batch_size: int, dtype, rows: HostRows, columns: list):
        cuda, xp = backend.xp.cuda, backend.xp
        self.stream = cuda.Stream(non_blocking=True)
        self.compute = cuda.get_current_stream()
        self.rows, self.columns = rows, columns
        shapes = [((batch_size, rows.shape[1]), dtype)]  # X's rows, converted as they are gathered
        shapes += [((batch_size, *c.shape[1:]), c.dtype) for c in columns if c is not None]
        self.host = [[_pinned(cuda, shape, dtype) for shape, dtype in shapes] for _ in range(2)]
        self.dev = [[xp.empty(shape, dtype) for shape, dtype in shapes] for _ in range(2)]
        self.ready = [cuda.Event(disable_timing=True) for _ in range(2)]
        self.free = [cuda.Event(disable_timing=True) for _ in range(2)]

    def send(self, s: int, idx: np.ndarray) -> None:
        """Gather rows idx (m,) into pinned slot s and queue their copy to device slot s."""
        m = idx.shape[0]
        self.ready[s].synchronize()  # the last copy out of this pinned buffer has finished
        host = self.host[s]
        self.rows.take(idx, out=host[0][:m])
        for column, buffer in zip([c for c in self.columns if c is not None], host[1:]):
            np.take(column, idx, axis=0, out=buffer[:m])
        self.stream.wait_event(self.free[s])  # the last step that read this device buffer has run
        for h, d in zip(host, self.dev[s]):
            d[:m].set(h[:m], stream=self.stream)
        self.ready[s].record(self.stream)

    def release(self, s: int) -> None:
        """Mark device slot s free once the work queued so far on the compute stream has run."""
        self.free[s].record(self.compute)

    def receive(self, s: int, m: int) -> tuple:
        """Device slot s's first m rows (X, y, weights or None), with the compute stream waiting
        for their copy."""
        self.compute.wait_event(self.ready[s])
        arrays = [d[:m] for d in self.dev[s]]
        return arrays[0], arrays[1], arrays[2] if len(arrays) > 2 else None


def _into(out: tuple | None, arrays: tuple) -> tuple:
    """``arrays`` (X, y, weights or None), each copied into its buffer in ``out`` where there is
    one (as ResidentFeed._gather gathers into them): no weights stay None, weights without a
    buffer come as they are."""
    if out is None:
        return arrays
    result = []
    for target, source in zip(out, arrays, strict=True):
        if source is not None and target is not None:
            target[...] = source
        result.append(target if source is not None and target is not None else source)
    return tuple(result)


def _pinned(cuda, shape: tuple, dtype) -> np.ndarray:
    """An uninitialized host array in page-locked memory (what ``cupyx.empty_pinned`` does)."""
    dtype = np.dtype(dtype)
    memory = cuda.alloc_pinned_memory(int(np.prod(shape)) * dtype.itemsize)
    return np.ndarray(shape, dtype=dtype, buffer=memory)
