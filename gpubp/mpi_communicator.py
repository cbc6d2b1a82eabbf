"""CPU ranks over MPI (mpi4py): :class:`MPICommunicator`, and what the launcher tells a rank."""

from __future__ import annotations

import atexit
import os
from typing import Any

from .backend import is_device_array
from .communicator import Communicator, check_buffer
from .errors import BackendUnavailableError

MPI_HINT = "pip install 'gpubp[mpi]' (mpi4py and Open MPI), or mpi4py built on your cluster's MPI"
# Set in every rank by Open MPI, MPICH / Intel MPI / srun --mpi=pmi2, MVAPICH.
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
LAUNCHER_LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK")


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
        check_buffer(buffer)
        if is_device_array(buffer):
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
