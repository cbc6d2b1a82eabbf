"""Communicators for data-parallel training: one process per rank, every rank holding the same
parameters, one all-reduce of the flat gradient buffer per step (ChainerMN's design, our code).

:func:`world` gives :class:`SingleProcess` where no MPI launcher started this process (size 1,
every operation the identity, no mpi4py needed), :class:`MPICommunicator` to CPU ranks (mpi4py
sums NumPy buffers) and :class:`NCCLCommunicator` to GPU ranks (NCCL through ``cupy.cuda.nccl``
sums device buffers, one GPU per rank; MPI broadcasts NCCL's id and carries the host work).
Like gpubp.backend and gpubp.kernels this module imports cupy, inside functions only.

A failed rank must not leave the others waiting in a collective for ever (Open MPI 5 hangs then:
the failed rank waits in ``MPI_Finalize``, the others in their collective). With more than one
rank :func:`world` installs :func:`abort_on_uncaught_exception`: an uncaught exception prints its
traceback, then ``MPI_Abort`` makes the launcher end every rank. ``sys.exit(2)`` raises no such
exception: code that ends a rank that way must call ``comm.abort(2)`` first.
"""

from __future__ import annotations

import atexit
import math
import os
import sys
import warnings
from typing import Any

import numpy as np

from .backend import Backend, get_backend
from .errors import BackendUnavailableError

MPI_HINT = "pip install 'gpubp[mpi]' (mpi4py and Open MPI), or mpi4py built on your cluster's MPI"
NCCL_HINT = "pip install nvidia-nccl-cu12 (or -cu13, matching CuPy)"
# Set in every rank by Open MPI, MPICH / Intel MPI / srun --mpi=pmi2, MVAPICH.
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")
SCALAR_OPS = ("sum", "max", "any")


def _check_buffer(buffer) -> None:
    """Refuse anything but one flat, C-contiguous, writable array."""
    if getattr(buffer, "ndim", None) != 1 or not buffer.flags.c_contiguous:
        raise ValueError("allreduce_sum takes one flat (1-D) C-contiguous array; got "
                         f"{type(buffer).__name__} of shape {getattr(buffer, 'shape', None)}")
    if not buffer.flags.writeable:
        raise ValueError("allreduce_sum sums in place: the buffer must be writable")


def _is_device_array(a) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def _host_scalar(x):
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
        return reduce_in_rank_order(self.allgather_object(_host_scalar(x)), op)

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"


class SingleProcess(Communicator):
    """The communicator of a run in one process: size 1, every operation the identity."""

    def allreduce_sum(self, buffer):
        _check_buffer(buffer)
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


def import_mpi():
    """mpi4py's ``MPI``, initialised (finalised at exit where we initialised it); raises
    BackendUnavailableError, saying what to install, where mpi4py or its MPI library is missing."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:  # RuntimeError: mpi4py found no MPI library
        raise BackendUnavailableError(f"MPI is not usable ({exc}): {MPI_HINT}") from exc
    if not MPI.Is_initialized():  # describe() imported MPI without initialising it
        MPI.Init_thread()
        atexit.register(lambda: MPI.Is_finalized() or MPI.Finalize())
    return MPI


def from_launcher(names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that the launcher set in the environment, as an int; else None."""
    values = [int(os.environ[n]) for n in names if os.environ.get(n, "").isdigit()]
    return values[0] if values else None


class MPICommunicator(Communicator):
    """CPU ranks over MPI (mpi4py): NumPy buffers summed in place by ``Allreduce(IN_PLACE, ...)``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The ranks to use; ``MPI.COMM_WORLD`` by default. The local rank is the launcher's
        (COMM_WORLD) or the rank among those sharing this machine's memory (``Split_type``).
    """

    def __init__(self, comm=None):
        self.MPI = import_mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        local = from_launcher(LAUNCHER_LOCAL_RANK_VARIABLES) if self.comm == self.MPI.COMM_WORLD else None
        if local is None:
            node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
            local = node.Get_rank()
            node.Free()
        self.local_rank = local

    def allreduce_sum(self, buffer):
        _check_buffer(buffer)
        if _is_device_array(buffer):
            raise TypeError("MPICommunicator sums host (NumPy) buffers; device arrays go through "
                            "NCCLCommunicator (world(backend='cuda'))")
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        return buffer

    def allgather_object(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        if not 0 <= root < self.size:
            raise ValueError(f"root {root} is not a rank of {self.size}")
        return self.comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, status: int = 1) -> None:
        self.comm.Abort(status)


def gpu_for_local_rank(local_rank: int, device_count: int) -> int:
    """The GPU of a rank: its local rank, or 0 where each rank sees one GPU (a scheduler's
    CUDA_VISIBLE_DEVICES); BackendUnavailableError where a machine has more ranks than GPUs."""
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise BackendUnavailableError(f"local rank {local_rank} has no GPU of its own ({device_count} "
                                  "visible on this machine): start at most one rank per GPU")


class NCCLCommunicator(Communicator):
    """GPU ranks, one process per GPU: NCCL sums device buffers; ``bootstrap`` broadcasts NCCL's
    unique id and carries every other operation (objects, host figures, barrier) on the host.

    Parameters
    ----------
    bootstrap : MPICommunicator or SingleProcess
        Its rank, size and local rank become this communicator's.
    device : int, optional
        The GPU to use, made CuPy's current device; default ``gpu_for_local_rank(local_rank, count)``.

    Raises
    ------
    BackendUnavailableError
        Without CuPy, or where CuPy cannot load NCCL (``cupy.cuda.nccl.available``).
    """

    def __init__(self, bootstrap: Communicator, device: int | None = None):
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise BackendUnavailableError(f"NCCL needs CuPy ({exc}): install gpubp[cuda12] or gpubp[cuda13]") from exc
        if not getattr(nccl, "available", False):
            raise BackendUnavailableError(f"CuPy {cupy.__version__} cannot load NCCL: {NCCL_HINT}")
        self.bootstrap, self.cupy, self.nccl = bootstrap, cupy, nccl
        self.rank, self.size, self.local_rank = bootstrap.rank, bootstrap.size, bootstrap.local_rank
        if device is None:
            device = gpu_for_local_rank(self.local_rank, cupy.cuda.runtime.getDeviceCount())
        self.device = int(device)
        cupy.cuda.Device(self.device).use()
        # CuPy 14 (cupy_backends/cuda/libs/nccl.pyx): get_unique_id() returns the 128-byte
        # ncclUniqueId as bytes (a tuple before 14), NcclCommunicator(ndev, commId, rank) takes it back.
        uid = bootstrap.bcast_object(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        # ncclDataType_t codes: the cpdef enum of cupy_backends/cuda/libs/nccl.pxd
        self.datatypes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                          np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
                          np.dtype(np.int64): nccl.NCCL_INT64}

    def allreduce_sum(self, buffer):
        """Sum a device ``buffer`` (shape (m,), on this rank's GPU; float16/32/64, int32/64) over
        the ranks in place, queued on CuPy's current stream: later work on that stream sees the
        sum, the host does not wait. Returns ``buffer``."""
        _check_buffer(buffer)
        if not _is_device_array(buffer):
            raise TypeError("NCCLCommunicator sums device (CuPy) buffers; host arrays go through "
                            "MPICommunicator (world(backend='cpu'))")
        if buffer.device.id != self.device:
            raise ValueError(f"the buffer is on GPU {buffer.device.id}; this rank uses GPU {self.device}")
        datatype = self.datatypes.get(np.dtype(buffer.dtype))
        if datatype is None:
            raise TypeError(f"no NCCL all-reduce here for {buffer.dtype}")
        # allReduce(sendbuf, recvbuf, count, datatype, op, stream): device pointers (the same
        # for in place), count in elements, the stream's handle (nccl.pyx)
        pointer, stream = buffer.data.ptr, self.cupy.cuda.get_current_stream().ptr
        self.comm.allReduce(pointer, pointer, buffer.size, datatype, self.nccl.NCCL_SUM, stream)
        return buffer

    def allgather_object(self, obj: Any) -> list:
        return self.bootstrap.allgather_object(obj)

    def bcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.bootstrap.bcast_object(obj, root)

    def barrier(self) -> None:
        self.bootstrap.barrier()

    def abort(self, status: int = 1) -> None:
        self.bootstrap.abort(status)


def launcher_size() -> int | None:
    """The number of ranks an MPI launcher put in the environment (0: a PMIx launcher that does
    not say); None where no launcher started this process."""
    size = from_launcher(LAUNCHER_SIZE_VARIABLES)
    return 0 if size is None and "PMIX_RANK" in os.environ else size


def abort_on_uncaught_exception(comm: Communicator) -> None:
    """Make an uncaught exception print its traceback and then end every rank (``comm.abort(1)``)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        print(f"gpubp: rank {comm.rank} of {comm.size} failed; aborting every rank", file=sys.stderr, flush=True)
        comm.abort(1)

    sys.excepthook = hook


def _use_local_gpu(local_rank: int) -> None:
    """Make the local rank's GPU CuPy's current device, where CuPy sees any (before its probe)."""
    try:
        import cupy

        cupy.cuda.Device(gpu_for_local_rank(local_rank, cupy.cuda.runtime.getDeviceCount())).use()
    except Exception:  # no CuPy, no GPU: get_backend says why where it matters
        pass


def world(backend: str | Backend = "auto") -> Communicator:
    """The communicator for the way this process was started.

    Parameters
    ----------
    backend : {"auto", "cpu", "cuda"} or Backend
        Where this rank computes, as in :func:`gpubp.get_backend`: "cpu" ranks get an
        :class:`MPICommunicator`, "cuda" ranks an :class:`NCCLCommunicator` on the GPU of their
        local rank; "auto" is "cuda" where a GPU is usable.

    Returns
    -------
    Communicator
        :class:`SingleProcess` when no launcher's variables are set, or when a launcher started
        one rank and mpi4py is absent. With more than one rank, an uncaught exception aborts the
        job (:func:`abort_on_uncaught_exception`).

    Raises
    ------
    BackendUnavailableError
        Launched under MPI with several ranks but mpi4py is missing; "cuda" without a GPU or NCCL.
    """
    size = launcher_size()
    if size is None:
        return SingleProcess()
    try:
        bootstrap = MPICommunicator()
    except BackendUnavailableError as exc:
        if size == 1:
            return SingleProcess()
        raise BackendUnavailableError(f"launched under MPI ({size or 'PMIx'} ranks) but {exc}") from exc
    if bootstrap.size > 1:
        abort_on_uncaught_exception(bootstrap)
    name = backend.name if isinstance(backend, Backend) else str(backend).lower()
    if name not in ("cpu", "numpy"):  # gpubp.backend's names for the host
        if not isinstance(backend, Backend):
            _use_local_gpu(bootstrap.local_rank)
        name = get_backend(backend).name
    return bootstrap if name == "cpu" else NCCLCommunicator(bootstrap)


def describe() -> str:
    """One line for ``gpubp info``: what distributed support is usable here, and why not.

    Loads mpi4py's MPI library without initialising MPI (``mpi4py.rc.initialize``), so it starts
    no MPI runtime; :func:`import_mpi` initialises it later where a communicator needs it.
    """
    size = launcher_size()
    launched = "not launched under MPI" if size is None else f"launched under MPI ({size or '?'} ranks)"
    return f"distributed: MPI {_describe_mpi()}; NCCL {_describe_nccl()}; {launched}"


def _describe_mpi() -> str:
    try:
        import mpi4py
    except ImportError:
        return f"no (mpi4py is not installed: {MPI_HINT})"
    initialize = mpi4py.rc.initialize
    mpi4py.rc.initialize = False  # read when mpi4py.MPI is first imported; harmless after
    try:
        from mpi4py import MPI
    except Exception as exc:
        return f"no (mpi4py {mpi4py.__version__} cannot load an MPI library: {exc}; {MPI_HINT})"
    finally:
        mpi4py.rc.initialize = initialize
    library = MPI.Get_library_version().strip().splitlines()[0].split(",")[0]
    return f"yes (mpi4py {mpi4py.__version__}, {' '.join(library.split())})"


def _describe_nccl() -> str:
    with warnings.catch_warnings():  # CuPy warns when it cannot preload libnccl
        warnings.simplefilter("ignore")
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError:
            return "no (CuPy is not installed)"
        except Exception as exc:  # a broken CuPy raises all sorts at import
            return f"no (CuPy failed to import: {type(exc).__name__}: {exc})"
    if not getattr(nccl, "available", False):
        return f"no (CuPy {cupy.__version__} cannot load NCCL: {NCCL_HINT})"
    v = nccl.get_version()  # NCCL_VERSION_CODE: X*10000+Y*100+Z from 2.9 on, X*1000+Y*100+Z before
    major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
    return f"yes (NCCL {major}.{rest // 100}.{rest % 100} through CuPy {cupy.__version__})"
