"""GPU ranks, one process per GPU: :class:`NCCLCommunicator` sums device buffers with NCCL
through ``cupy.cuda.nccl``. Like gpubp.backend and gpubp.kernels this module imports cupy, inside
functions only."""

from __future__ import annotations

import importlib
import socket
import warnings
from importlib import metadata
from typing import Any

import numpy as np

from .backend import is_device_array
from .communicator import Communicator, check_buffer, failing_together
from .errors import BackendUnavailableError

# CuPy's wheel for a CUDA major -> the NCCL wheel CuPy loads (the extras gpubp[cuda12], gpubp[cuda13] bring it)
NCCL_WHEELS = {"cupy-cuda12x": ("nvidia-nccl-cu12", "cuda12"), "cupy-cuda13x": ("nvidia-nccl-cu13", "cuda13")}


def gpu_for_local_rank(local_rank: int, device_count: int) -> int:
    """The GPU of a rank: its local rank, or 0 where each rank sees one GPU (a scheduler's
    CUDA_VISIBLE_DEVICES; :func:`check_one_rank_per_gpu` catches ranks that then share one);
    BackendUnavailableError where a machine has more ranks than GPUs."""
    if local_rank < device_count:
        return local_rank
    if device_count == 1:
        return 0
    raise BackendUnavailableError(f"local rank {local_rank} has no GPU of its own ({device_count} "
                                  "visible on this machine): start at most one rank per GPU")


def node_name() -> str:
    """This machine: ``socket.gethostname()``, and its boot id where Linux gives one (containers on
    two hosts may share a host name; NCCL tells hosts apart the same way). Ranks with the same
    node_name share its GPUs."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{socket.gethostname()} (boot {boot.read().strip()[:8]})"
    except OSError:
        return socket.gethostname()


def check_one_rank_per_gpu(places: list[tuple[str, str]]) -> None:
    """Refuse ranks that share a GPU, which NCCL does not allow (ncclCommInitRank fails every rank
    with NCCL_ERROR_INVALID_USAGE, saying why only in its log).

    Parameters
    ----------
    places : list of (str, str), one per rank in rank order
        Each rank's (:func:`node_name`, PCI bus id of its GPU); every rank passes the same list,
        so every rank comes to the same verdict.

    Raises
    ------
    BackendUnavailableError
        Where two ranks or more have the same place: names them, the bus id and the machine.
    """
    ranks_at: dict[tuple[str, str], list[int]] = {}
    for rank, place in enumerate(places):
        ranks_at.setdefault(tuple(place), []).append(rank)
    shared = [(ranks, place) for place, ranks in ranks_at.items() if len(ranks) > 1]
    if shared:
        said = "; ".join(f"ranks {', '.join(map(str, ranks))} share the GPU at PCI bus id {bus} on machine {node!r}"
                         for ranks, (node, bus) in shared)
        raise BackendUnavailableError(
            f"{said}: NCCL needs one GPU per rank. Start at most as many ranks per machine as it has GPUs "
            "(mpirun -n, or --map-by ppr:<GPUs>:node), or give each rank its own GPU (CUDA_VISIBLE_DEVICES)")


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
        Without CuPy, where CuPy cannot load NCCL (``cupy.cuda.nccl.available``), or on every
        rank where two ranks share a GPU (:func:`check_one_rank_per_gpu`). Where one rank fails
        to set up, the others raise RankFailedError naming it (none waits for it in NCCL's set-up).
    """

    def __init__(self, bootstrap: Communicator, device: int | None = None):
        self.bootstrap = bootstrap
        self.rank, self.size, self.local_rank = bootstrap.rank, bootstrap.size, bootstrap.local_rank
        with failing_together(bootstrap, "setting up NCCL"):  # a rank without CuPy, NCCL or a GPU stops every rank
            place = self._take_gpu(device)
        check_one_rank_per_gpu(bootstrap.allgather_object(place))
        nccl = self.nccl
        # CuPy 14 (cupy_backends/cuda/libs/nccl.pyx): get_unique_id() returns the 128-byte
        # ncclUniqueId as bytes (a tuple before 14), NcclCommunicator(ndev, commId, rank) takes it back.
        uid = bootstrap.bcast_object(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        # ncclDataType_t codes: the cpdef enum of cupy_backends/cuda/libs/nccl.pxd
        self.datatypes = {np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.float32): nccl.NCCL_FLOAT32,
                          np.dtype(np.float64): nccl.NCCL_FLOAT64, np.dtype(np.int32): nccl.NCCL_INT32,
                          np.dtype(np.int64): nccl.NCCL_INT64}

    def _take_gpu(self, device: int | None) -> tuple[str, str]:
        """CuPy and its NCCL loaded, this rank's GPU made CuPy's current device; its place,
        (:func:`node_name`, PCI bus id)."""
        try:
            import cupy
            from cupy.cuda import nccl
        except ImportError as exc:
            raise BackendUnavailableError(f"NCCL needs CuPy ({exc}): install gpubp[cuda12] or gpubp[cuda13]") from exc
        if not getattr(nccl, "available", False):
            raise BackendUnavailableError(f"CuPy {cupy.__version__} cannot load NCCL: {why_nccl_not_loaded(cupy)}")
        self.cupy, self.nccl = cupy, nccl
        if device is None:
            device = gpu_for_local_rank(self.local_rank, cupy.cuda.runtime.getDeviceCount())
        self.device = int(device)
        cupy.cuda.Device(self.device).use()
        return node_name(), cupy.cuda.Device(self.device).pci_bus_id

    def allreduce_sum(self, buffer):
        """Sum a device ``buffer`` (shape (m,), on this rank's GPU; float16/32/64, int32/64) over
        the ranks in place, queued on CuPy's current stream: later work on that stream sees the
        sum, the host does not wait. Returns ``buffer``."""
        check_buffer(buffer)
        if not is_device_array(buffer):
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


def describe_nccl() -> str:
    """'yes (NCCL x.y.z through CuPy v)' or 'no (why; what to install)', for gpubp info."""
    with warnings.catch_warnings():  # CuPy warns when it cannot preload libnccl; the reason is given below
        warnings.simplefilter("ignore")
        try:
            import cupy
        except ImportError as exc:
            if exc.name == "cupy":
                return 'no (CuPy is not installed: pip install "gpubp[cuda12]" or "gpubp[cuda13]", as the driver\'s CUDA)'
            return f"no (CuPy failed to import: {type(exc).__name__}: {exc})"
        except Exception as exc:  # a broken CuPy raises all sorts at import
            return f"no (CuPy failed to import: {type(exc).__name__}: {exc})"
        try:
            from cupy.cuda import nccl
        except Exception as exc:
            return f"no (CuPy {cupy.__version__} has no cupy.cuda.nccl: {type(exc).__name__}: {exc})"
    if not getattr(nccl, "available", False):
        return f"no (CuPy {cupy.__version__} cannot load NCCL: {why_nccl_not_loaded(cupy)})"
    v = nccl.get_version()  # NCCL_VERSION_CODE: X*10000+Y*100+Z from 2.9 on, X*1000+Y*100+Z before
    major, rest = (v // 10000, v % 10000) if v >= 10000 else (v // 1000, v % 1000)
    return f"yes (NCCL {major}.{rest // 100}.{rest % 100} through CuPy {cupy.__version__})"


def why_nccl_not_loaded(cupy) -> str:
    """Where ``cupy.cuda.nccl.available`` is False: the loader's error (CuPy keeps it only in a
    warning, so its NCCL binding is imported again here) and the NCCL wheel to install, if any."""
    try:
        importlib.import_module("cupy_backends.cuda.libs.nccl")
        error = "CuPy's NCCL binding imports now, but did not when cupy.cuda.nccl was first imported"
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    for cupy_wheel, (nccl_wheel, extra) in NCCL_WHEELS.items():
        try:
            if metadata.version(cupy_wheel) != cupy.__version__:
                continue
        except metadata.PackageNotFoundError:
            continue
        try:
            return f"{error}; {nccl_wheel} {metadata.version(nccl_wheel)} is installed but did not load"
        except metadata.PackageNotFoundError:
            return f'{error}; {nccl_wheel} is not installed: pip install "gpubp[{extra}]" (or {nccl_wheel})'
    return (f"{error}; CuPy is not from a cupy-cuda12x or cupy-cuda13x wheel: install NCCL for its CUDA "
            "(pip install nvidia-nccl-cu12 or nvidia-nccl-cu13, or conda install nccl)")
