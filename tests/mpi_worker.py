"""One rank of a test job that tests/test_distributed.py starts with ``mpirun -n 2``.

    python tests/mpi_worker.py SCENARIO OUT_DIR

``collectives``: every operation of ``gpubp.distributed.world("cpu")``; each rank writes what it
got to OUT_DIR/rank<r>.json and the test compares. ``raise``: rank 1 raises before the first
collective while rank 0 enters it; ``sigkill``: rank 1 is killed there. Both must end the job
with a non-zero status, never hang.
"""

import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from gpubp.distributed import MPICommunicator, world


def buffer(rank: int, dtype) -> np.ndarray:
    """Rank r's buffer: multiples of 1/8 below 2**10, so that every sum is exact in float32."""
    return (np.arange(1000) % 97 * 0.125 + rank * 3.5 - 40.0).astype(dtype)


def error(call):
    """The message of the ValueError that ``call()`` raises, or None."""
    try:
        call()
    except ValueError as exc:
        return str(exc)
    return None


def collectives(comm, out: Path) -> None:
    r = comm.rank
    result = {"type": type(comm).__name__, "rank": r, "size": comm.size, "local_rank": comm.local_rank,
              "launcher_local_rank": os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK")}
    node = comm.comm.Split_type(comm.MPI.COMM_TYPE_SHARED)
    result["shared_memory_rank"] = node.Get_rank()
    for dtype in ("float64", "float32"):
        b = buffer(r, dtype)
        same = comm.allreduce_sum(b)
        result[dtype] = {"is_same_object": same is b, "dtype": str(b.dtype), "values": b.tolist()}
    result["sum"] = comm.allreduce_scalar(r + 0.5, "sum")
    result["int_sum"] = comm.allreduce_scalar(np.int64(10 * r + 1), "sum")
    result["max"] = comm.allreduce_scalar(float(r), "max")
    result["max_nan"] = repr(comm.allreduce_scalar(float("nan") if r == 1 else 5.0, "max"))
    result["any_one"] = comm.allreduce_scalar(r == 1, "any")
    result["any_none"] = comm.allreduce_scalar(False, "any")
    result["bcast0"] = comm.bcast_object({"seed": 7, "sizes": [64, 10]} if r == 0 else None)
    result["bcast1"] = comm.bcast_object(f"from rank {r}", root=1)
    settings = {"seed": 0, "sizes": (64, 128, 10), "dtype": "float32", "data": "sha256:ab12"}
    result["same_ok"] = error(lambda: comm.check_same(settings))
    result["seed_differs"] = error(lambda: comm.check_same({**settings, "seed": r}))
    result["fingerprint_differs"] = error(lambda: comm.check_same({**settings, "data": "sha256:ab12" if r == 0 else "x"}))
    comm.barrier()
    (out / f"rank{r}.json").write_text(json.dumps(result))


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    comm = world("cpu")
    assert isinstance(comm, MPICommunicator) and comm.size == 2, f"not a 2-rank MPI job: {comm!r}"
    if scenario == "collectives":
        collectives(comm, out)
        return
    if comm.rank == 1:
        if scenario == "raise":
            raise ValueError("bad data on rank 1: NaN in X")
        os.kill(os.getpid(), signal.SIGKILL)
    comm.allreduce_sum(np.ones(4))  # rank 0 waits here for a rank that will never come
    print("rank 0 passed an all-reduce without rank 1", flush=True)


if __name__ == "__main__":
    main()
