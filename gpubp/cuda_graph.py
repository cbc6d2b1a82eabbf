"""A training step's loss and gradient replayed from a CUDA graph: one launch instead of ~20.

On small networks a step is bound by its launches, not by the card: 784-512-512-10 at batch 256
took 0.75 ms eager on an H100 and 0.107 ms replayed from a graph (benchmarks/graph_probe.py).
:class:`GraphedGradient` captures ``net.flat_loss_and_grad(X, y, w, l2=False)`` (forward, BP1-BP4)
once per batch shape and replays it every step; the rest of the step (L2 term, clipping, the
optimizer's one-launch update) runs eagerly after it, so the learning rate, Adam's step count and
the schedules stay host values as in an eager step.

How a capture is made safe (CUDA and CuPy rules, each held by the CuPy stand-in in the tests):

- the whole run goes to one non-blocking stream (:meth:`GraphedGradient.running`): capture needs
  one, and the eager work between replays must be ordered with them;
- products go through cuBLAS directly (:mod:`gpubp.cublas_direct`), since CuPy refuses its own
  cuBLAS calls while capturing, and the handle gets a workspace first so that cuBLAS allocates
  nothing while capturing;
- a graph reads its inputs from fixed buffers: a step gathers its batch straight into them
  (:meth:`GraphedGradient.inputs`; the first batch of each row count, which the graph is captured
  from, is copied in), and its outputs (the loss, the flat gradient) are fixed buffers too: the
  loss is copied out, as the next replay overwrites it;
- a graph's temporaries stay where the capture put them, so they come from a pool of their own
  (a ``cupy.cuda.MemoryPool`` used for nothing else): from the shared pool, an eager array made
  between replays could be given a graph's temporary block and be overwritten by the next replay;
- nothing allocates device memory while capturing (global capture mode refuses cudaMalloc; CuPy's
  default, relaxed, allows it, but gpubp does not rely on that), so the same step first runs once
  eagerly on the stream and through that pool, which then holds every block the capture asks for.

float32 and float64 (TF32 too); one process (data-parallel runs take eager steps).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from . import cublas_direct


@dataclass
class _Graph:
    """A captured step for one batch shape: its input buffers and its outputs."""

    graph: object
    X: object  # (rows, d)
    y: object  # (rows,) or (rows, k)
    w: object  # (rows,) or None
    loss: object  # 0-d
    g: object  # (n_params,)


def check_graphable(net, parallel: bool) -> None:
    """Raise ValueError when ``net`` cannot train with cuda_graph=True (``parallel``: a
    data-parallel run), saying why and what to do."""
    if net.backend.name != "cuda":
        raise ValueError(f"cuda_graph=True needs the cuda device, the network is on {net.backend.name}: "
                         "leave cuda_graph off")
    if net.compute_dtype != net.dtype:
        raise ValueError(f"cuda_graph=True takes float32 or float64 networks, not {net.compute_dtype.name}: "
                         "leave cuda_graph off for bfloat16")
    if parallel:
        raise ValueError("cuda_graph=True trains in one process; data-parallel runs take eager steps: "
                         "leave cuda_graph off with more than one rank")


def describe() -> str:
    """One line for ``gpubp info``: whether cuda_graph=True can run here, or why not."""
    from .backend import cuda_status

    status = cuda_status()
    if not status.usable:
        return f"cuda graphs (--cuda-graph): no ({status.reason})"
    try:
        cublas_direct.load_cublas()
    except RuntimeError as exc:
        return f"cuda graphs (--cuda-graph): no ({exc})"
    return "cuda graphs (--cuda-graph): yes, for float32 and float64 networks in one process"


class GraphedGradient:
    """``net.flat_loss_and_grad(X, y, w, l2=False)`` from CUDA graphs, one per batch shape.

    Call it inside :meth:`running`. ``graphed(X, y, w)`` copies the batch into the graph's
    buffers (unless they are those buffers, as :meth:`inputs` gives them), replays the graph and
    returns (loss 0-d, a copy; g (n_params,), the graph's own buffer, valid until the next call).

    The graphs outlive a run: an estimator's ``partial_fit`` hands them to its next call on the same
    network, which replays them (they read ``net.flat_params``, the one buffer a network's
    parameters live in for its life). At most :data:`MAX_GRAPHS` are kept, the least recently used
    dropped first: calls with ever other batch sizes would otherwise each leave a graph and its
    temporaries on the card.
    """

    MAX_GRAPHS = 4

    def __init__(self, net):
        import cupy

        check_graphable(net, parallel=False)
        self.net, self.cupy = net, cupy
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.pool = cupy.cuda.MemoryPool()  # the graphs' temporaries, and nothing else
        cublas_direct.ensure_workspace()
        self.graphs: dict[tuple, _Graph] = {}  # by batch shape, the most recently used last

    @contextlib.contextmanager
    def running(self):
        """The block a run trains in: everything on the graphs' stream, ordered after the work
        already queued on the current stream, and finished when the block ends."""
        self.cupy.cuda.get_current_stream().synchronize()  # the data copied to the device, the parameters
        try:
            with self.stream:
                yield self
        finally:
            self.stream.synchronize()

    def inputs(self, batch) -> tuple:
        """(X, y, w) of a :class:`gpubp.batches.Batch`: gathered straight into the input buffers of
        the most recently used graph of its row count once there is one (no copy at the replay),
        else as they come (the graph is captured from them and they are copied in)."""
        entry = next((e for e in reversed(self.graphs.values()) if e.X.shape[0] == batch.rows), None)
        return batch.arrays() if entry is None else batch.arrays((entry.X, entry.y, entry.w))

    def __call__(self, X, y, w=None):
        if self.cupy.cuda.get_current_stream() != self.stream:
            raise RuntimeError("GraphedGradient is called inside its running() block, on its stream")
        key = (X.shape, X.dtype.str, y.shape, y.dtype.str, None if w is None else w.shape)
        entry = self.graphs.pop(key, None)
        if entry is None:
            entry = self._capture(X, y, w)  # the stream is idle after it
            while len(self.graphs) >= self.MAX_GRAPHS:  # the least recently used
                del self.graphs[next(iter(self.graphs))]
        self.graphs[key] = entry
        for buffer, array in ((entry.X, X), (entry.y, y), (entry.w, w)):
            if array is not None and array is not buffer:
                buffer[...] = array
        entry.graph.launch(self.stream)
        return entry.loss.copy(), entry.g

    def _capture(self, X, y, w) -> _Graph:
        """Warm the pool up with one eager step through it, then capture the same step."""
        net, cupy, stream = self.net, self.cupy, self.stream
        Xs, ys, ws = X.copy(), y.copy(), None if w is None else w.copy()  # the graph's input buffers
        with cupy.cuda.using_allocator(self.pool.malloc), net.direct_products(cublas_direct.gemm):
            net.flat_loss_and_grad(Xs, ys, ws, l2=False)  # kernels compiled, blocks cached on this stream
            stream.synchronize()
            stream.begin_capture()
            try:
                loss, g = net.flat_loss_and_grad(Xs, ys, ws, l2=False)
            except BaseException:
                with contextlib.suppress(Exception):  # leave capture mode; the step's error is the news
                    stream.end_capture()
                raise
            graph = stream.end_capture()
        return _Graph(graph, Xs, ys, ws, loss, g)
