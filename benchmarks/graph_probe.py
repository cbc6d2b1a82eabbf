"""Can a gpubp training step run as one CUDA graph? A probe for the launch work of issue 12, run
on a card; it measures and reports, it asserts nothing.

    PYTHONPATH=. python benchmarks/graph_probe.py        (about a minute; writes $OUT/graph_probe.json)

On 784-512-512-10 at batch 256 a step is bound by its ~20 launches: 0.5-0.9 ms eager, where
PyTorch replays the same step from a CUDA graph in 0.19 ms (benchmarks/bench_gpu.py, H100). CuPy
refuses its own cuBLAS calls while a stream captures (cupy#6290; on the H100, 2026-11-27, its
binding's setStream raised for cupy.matmul and for a direct ``cupy.cuda.cublas.sgemm`` alike), so
``MLP._matmul`` cannot be captured as it stands. This probe asks the card:

1. what CuPy says when ``cupy.matmul`` runs under capture;
2. whether the step (``flat_loss_and_grad`` and one SGD-momentum update, as gpubp.fit runs it)
   captures when its products call libcublas's ``cublasSgemm_v2`` through ctypes, with CuPy's
   handle and a workspace set beforehand (a subclass of MLP overrides the one product method;
   the rest of the step is unchanged), and whether replaying the graph
   gives the parameters that the same steps give eagerly;
3. the step's median CUDA-event time: eager through cupy.matmul, eager through sgemm, and one
   replay of the graph.

On the H100 (2026-11-27, benchmarks/results/h100-2026-11-27-run4/graph_probe.json) the step
captured, its replays gave bitwise the parameters of the eager steps after 11 steps, the direct
products gave bitwise cupy.matmul's gradients, and a step took 0.107 ms replayed against 0.75 ms
eager on 784-512-512-10 b256 (PyTorch's own graph: 0.185 ms), 0.53 against 0.92 ms at b4096, and
14.28 against 14.45 ms on 4096-4096-4096-10 b4096.

A captured graph owns the memory its step allocated: the probe keeps the step's outputs alive
and allocates nothing on the capturing stream between replays. float32 IEEE only.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.kernel_timings import MOMENTUM, cupy_events, event_median_ms, rel_error  # noqa: E402

CASES = [([784, 512, 512, 10], 256), ([784, 512, 512, 10], 4096), ([4096, 4096, 4096, 10], 4096)]
STEPS = 10  # replays compared with eager steps
LR = 1e-3
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1


def operand(shape: tuple, strides: tuple, itemsize: int) -> tuple[int, int]:
    """(op, leading dimension) that make cuBLAS (column-major) read the row-major matrix of
    ``shape`` (p, q) and ``strides`` (bytes) as its transpose (q, p): a row-major layout is the
    transpose already (op N, ld = row stride); a column-major one (a transposed view) needs op T
    (ld = column stride). Raises ValueError for any other layout."""
    (p, q), (row, col) = shape, strides
    if col == itemsize and row >= q * itemsize:
        return CUBLAS_OP_N, row // itemsize
    if row == itemsize and col >= p * itemsize:
        return CUBLAS_OP_T, col // itemsize
    raise ValueError(f"a matrix of shape {shape} and strides {strides} has no unit-stride axis")


def sgemm_arguments(a, b, c) -> tuple:
    """The arguments (transa, transb, m, n, k, lda, ldb, ldc) of a column-major sgemm that writes
    the row-major product c = a @ b, a (n, k), b (k, m), c (n, m) with unit column stride:
    column-major c.T = b.T @ a.T, so b comes first."""
    (n, k), m = a.shape, b.shape[1]
    op_a, ld_a = operand(a.shape, a.strides, a.itemsize)
    op_b, ld_b = operand(b.shape, b.strides, b.itemsize)
    op_c, ld_c = operand(c.shape, c.strides, c.itemsize)
    if op_c != CUBLAS_OP_N:
        raise ValueError(f"the output must be row-major, got strides {c.strides}")
    return op_b, op_a, m, n, k, ld_b, ld_a, ld_c


def cublas_library():
    """libcublas as this process loaded it (CuPy's copy), through ctypes: CuPy's own binding
    refuses every call while a stream captures (its setStream raises), the library does not."""
    import ctypes

    with open("/proc/self/maps") as maps:
        path = next((line.split()[-1] for line in maps if "libcublas.so" in line), None)
    if path is None:
        raise RuntimeError("libcublas is not loaded in this process")
    lib = ctypes.CDLL(path)
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.cublasSgemm_v2.argtypes = [p, i, i, i, i, i, p, p, i, p, i, p, p, i]
    lib.cublasSetStream_v2.argtypes = [p, p]
    lib.cublasSetWorkspace_v2.argtypes = [p, p, ctypes.c_size_t]
    return lib


def direct_mlp(cp, lib):
    """A subclass of gpubp.MLP whose float32 products call libcublas's sgemm (``lib``, from
    cublas_library) on the current stream, with CuPy's cuBLAS handle."""
    from gpubp import MLP

    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)  # host scalars, read at each call

    class DirectMLP(MLP):
        def _matmul(self, a, b, out=None):
            if a.dtype != np.float32 or b.dtype != np.float32:
                raise TypeError("the probe takes float32 products only")
            c = cp.empty((a.shape[0], b.shape[1]), np.float32) if out is None else out
            transa, transb, m, n, k, lda, ldb, ldc = sgemm_arguments(a, b, c)
            handle = cp.cuda.device.get_cublas_handle()
            status = lib.cublasSetStream_v2(handle, cp.cuda.get_current_stream().ptr)
            status = status or lib.cublasSgemm_v2(handle, transa, transb, m, n, k, one.ctypes.data, b.data.ptr,
                                                  lda, a.data.ptr, ldb, zero.ctypes.data, c.data.ptr, ldc)
            if status:
                raise RuntimeError(f"cuBLAS status {status}")
            return c

    return DirectMLP


def training_step(net, Xd, yd):
    """One step as gpubp.fit runs it; returns it as a function that returns the step's outputs."""
    from gpubp.optim import SGD

    opt = SGD(momentum=MOMENTUM)
    state = opt.init(net.flat_params)

    def step():
        loss, g = net.flat_loss_and_grad(Xd, yd)
        opt.update(net.flat_params, g, state, LR)
        return loss, g, state

    return step


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:400]


def matmul_under_capture(cp) -> str:
    """What CuPy does with cupy.matmul while a stream captures."""
    a = cp.ones((64, 64), np.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            cp.matmul(a, a)
            outcome = "captured without an error"
        except Exception as exc:
            outcome = "refused: " + error_text(exc)
        finally:
            try:
                stream.end_capture()
            except Exception as exc:
                outcome += "; end_capture: " + error_text(exc)
    return outcome


def probe_case(cp, Direct, sizes: list[int], batch: int) -> dict:
    """Check, capture and time one network (see the module docstring)."""
    from gpubp import MLP

    row = {"case": f"{'-'.join(map(str, sizes))} b{batch}"}
    rng = np.random.default_rng(0)
    Xd = cp.asarray(rng.normal(size=(batch, sizes[0])).astype(np.float32))
    yd = cp.asarray(rng.integers(0, sizes[-1], batch))
    plain, eager, captured = (cls(sizes, "relu", "cuda", "float32", seed=0) for cls in (MLP, Direct, Direct))
    plain_step, eager_step, captured_step = (training_step(n, Xd, yd) for n in (plain, eager, captured))
    # the direct products against cupy.matmul: one step's gradient
    _, g_plain, _ = plain_step()
    _, g_eager, _ = eager_step()
    row["sgemm_vs_matmul_grad_rel_error"] = rel_error(cp, g_eager, g_plain)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        captured_step()  # the same first step, on the capturing stream: its pool holds the blocks
        stream.synchronize()
        stream.begin_capture()
        kept = None
        try:
            kept = captured_step()
        except Exception as exc:
            row["capture_error"] = error_text(exc)
        try:
            graph = stream.end_capture()
        except Exception as exc:
            row["end_capture_error"] = error_text(exc)
            return row
        if kept is None:
            return row
        for _ in range(STEPS):
            graph.launch(stream)
        stream.synchronize()
    for _ in range(STEPS):
        eager_step()
    row["graph_vs_eager_params_rel_error_after_steps"] = [STEPS + 1, rel_error(cp, captured.flat_params, eager.flat_params)]
    new_event, elapsed = cupy_events(cp)
    times = []
    for k in range(53):
        start, end = new_event(), new_event()
        start.record(stream)
        graph.launch(stream)
        end.record(stream)
        end.synchronize()
        if k >= 3:
            times.append(elapsed(start, end))
    repeat = 50 if batch <= 1024 else 20
    row.update(graph_ms=float(np.median(times)), eager_sgemm_ms=event_median_ms(cupy_events(cp), eager_step, repeat=repeat),
               eager_matmul_ms=event_median_ms(cupy_events(cp), plain_step, repeat=repeat))
    del kept
    return row


def main() -> int:
    import cupy as cp

    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    report = {"cupy": cp.__version__, "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
              "gpu": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(), "cases": []}

    def save():
        print(json.dumps(report, indent=1), flush=True)
        if out is not None:
            (out / "graph_probe.json").write_text(json.dumps(report, indent=1))

    try:
        report["matmul_under_capture"] = matmul_under_capture(cp)
        lib = cublas_library()
        workspace = cp.empty(32 * 2**20, np.uint8)  # cuBLAS must not allocate while capturing
        report["set_workspace_status"] = lib.cublasSetWorkspace_v2(cp.cuda.device.get_cublas_handle(),
                                                                   workspace.data.ptr, workspace.nbytes)
        Direct = direct_mlp(cp, lib)
    except Exception as exc:
        report["setup_error"] = error_text(exc)
        save()
        return 1
    save()
    for sizes, batch in CASES:
        try:
            report["cases"].append(probe_case(cp, Direct, sizes, batch))
        except Exception as exc:
            report["cases"].append({"case": f"{sizes} b{batch}", "error": error_text(exc),
                                    "traceback": traceback.format_exc()[-1500:]})
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
