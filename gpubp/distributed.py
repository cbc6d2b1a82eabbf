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

import os
import sys

from .backend import Backend, cuda_status, get_backend
from .communicator import Communicator, SingleProcess, failing_together, first_difference, reduce_in_rank_order
from .errors import BackendUnavailableError
from .mpi_communicator import (LAUNCHER_LOCAL_RANK_VARIABLES, LAUNCHER_SIZE_VARIABLES, MPI_HINT, MPICommunicator,
                               from_launcher, import_mpi)
from .nccl_communicator import NCCLCommunicator, describe_nccl, gpu_for_local_rank

__all__ = ["Communicator", "SingleProcess", "MPICommunicator", "NCCLCommunicator", "world", "describe",
           "abort_on_uncaught_exception", "check_same_backend", "launcher_size", "gpu_for_local_rank", "first_difference",
           "reduce_in_rank_order", "import_mpi", "LAUNCHER_SIZE_VARIABLES", "LAUNCHER_LOCAL_RANK_VARIABLES"]


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


def check_same_backend(comm: Communicator, name: str, reason: str | None = None) -> None:
    """Refuse ranks that chose different backends (under "auto", a rank whose GPU is not usable
    takes the CPU): they would go on to different collectives (NCCL's set-up, MPI's) and wait for
    each other for ever. A collective of ``comm``: every rank calls it and comes to the same verdict.

    Parameters
    ----------
    comm : Communicator
        The bootstrap communicator of every rank.
    name : str
        This rank's backend, "cpu" or "cuda".
    reason : str, optional
        Why this rank took the CPU where it was not asked to (``cuda_status().reason``).

    Raises
    ------
    BackendUnavailableError
        On every rank where their ``name`` differ: which ranks chose what, and why.
    """
    choices = comm.allgather_object((name, reason))
    if len({chosen for chosen, _ in choices}) < 2:
        return
    ranks_for: dict[tuple, list[int]] = {}
    for rank, choice in enumerate(choices):
        ranks_for.setdefault(tuple(choice), []).append(rank)
    said = "; ".join(f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))} chose {chosen}"
                     + (f" ({why})" if why else "") for (chosen, why), ranks in ranks_for.items())
    raise BackendUnavailableError(f"the ranks chose different backends: {said}. Every rank must compute on the "
                                  "same kind of device: give every rank a usable GPU, or ask for world('cpu')")


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
        Launched under MPI with several ranks but mpi4py is missing; "cuda" without a GPU or NCCL;
        ranks that chose different backends (:func:`check_same_backend`); ranks sharing a GPU.
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
    reason = None
    with failing_together(bootstrap, "choosing its device"):  # ("cuda" without a GPU on one rank stops every rank)
        if name not in ("cpu", "numpy"):  # gpubp.backend's names for the host
            if not isinstance(backend, Backend):
                _use_local_gpu(bootstrap.local_rank)
            name = get_backend(backend).name
            reason = cuda_status().reason if name == "cpu" else None
    name = "cpu" if name == "numpy" else name
    if bootstrap.size > 1:
        check_same_backend(bootstrap, name, reason)
    return bootstrap if name == "cpu" else NCCLCommunicator(bootstrap)


def describe() -> str:
    """One line for ``gpubp info``: what distributed support is usable here, and why not.

    Loads mpi4py's MPI library without initialising MPI (``mpi4py.rc.initialize``), so it starts
    no MPI runtime; :func:`import_mpi` initialises it later where a communicator needs it.
    """
    size = launcher_size()
    launched = "not launched under MPI" if size is None else f"launched under MPI ({size or '?'} ranks)"
    return f"distributed: MPI {_describe_mpi()}; NCCL {describe_nccl()}; {launched}"


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
