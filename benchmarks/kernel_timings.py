"""The device check's kernel timings: each gpubp kernel against a device-to-device copy and
against its plain CuPy chain, and each ElementwiseKernel as gpubp builds it (--fmad=false)
against NVRTC's default build; the table of bytes behind the targets; the CUDA-event timer and
the relative error that the training-step timings (benchmarks/step_timings.py) share.
"""

from __future__ import annotations

import statistics
from functools import partial
from types import SimpleNamespace

import numpy as np


N_ELEMENTS = 16 * 2**20
BANDWIDTH_TARGET = 0.70  # of the copy bandwidth, counting the bytes a kernel must move
SPEEDUP_MARGIN = 0.8  # speed-up target = margin x chain bytes / kernel bytes
AGREE_RTOL = 1e-5  # kernel against chain, float32, norm-relative
MOMENTUM = 0.9  # of the SGD-momentum update timed here and in the training step

# Bytes per element of the main array (float32 4, bool 1; int64 labels, one per row of C = 10
# classes, 0.8) that each kernel must move (each input read once, each output written once) and
# that its plain chain moves (every operation of its NumPy twin in gpubp/ops.py, temporaries
# included; an array used twice in one operation is read once). The bias (one value per column
# of 1024) counts 0. tests/test_device_check.py traces the twins to check the chain column.
BYTES = {
    # read z, write a over z | z += b (8); maximum(z, 0, out=z) (8)
    "bias_activation relu": (8, 16),
    # | z += b (8); abs (8); negate (8); exp (8); z >= 0 (4 + 1); where(z >= 0, 1, e) (1 + 4 + 4);
    #   1 + e (8); divide (12); z[...] = result (8)
    "bias_activation sigmoid": (8, 74),
    # | z += b (8); tanh(z, out=z) (8)
    "bias_activation tanh": (8, 16),
    # | z += b (8); the identity is no operation
    "bias_activation identity": (8, 8),
    # read a and g, write g | a > 0 (4 + 1); multiply(g, mask, out=g) (4 + 1 + 4)
    "backprop_delta relu": (12, 14),
    # | 1 - a (8); a * t (12); g *= t (12)
    "backprop_delta sigmoid": (12, 32),
    # | a * a (8); 1 - t (8); g *= t (12)
    "backprop_delta tanh": (12, 28),
    # read z and labels, write delta (one warp per row; the bias, 10 values, counts 0) | z + b (8);
    #   arange (0.8); row max: argmax (4.8), z[rows, argmax] (2.4); z - zmax (8.4); exp (8); row sum (4.4);
    #   log, + zmax, z[rows, y], subtract (5.6); * scale, sum (1.2); delta /= s (8.4); delta[rows, y] -= 1 (5.6);
    #   delta *= scale (8)
    "softmax_minus_y": (8.8, 65.6),
    # read p, g, v, write p, v | lr g (8); v *= mu (8); v -= s1 (12); mu v (8); s2 -= s1 (12); p += s2 (12)
    "sgd_momentum_update nesterov": (20, 60),
    # read p, g, m, v, write p, m, v | m *= b1 (8); (1-b1) g (8); m += (12); v *= b2 (8); g g (8);
    #   *= 1-b2 (8); v += (12); lr m (8); sqrt v (8); += eps (8); /= (12); p -= (12)
    "adam_update": (28, 112),
}


def speedup_target(name: str) -> float:
    """Least speed-up over the plain chain that the bytes allow: margin x chain bytes / kernel bytes."""
    kernel_bytes, chain_bytes = BYTES[name]
    return SPEEDUP_MARGIN * chain_bytes / kernel_bytes


def timing_arrays(xp, n: int, seed: int = 0) -> SimpleNamespace:
    """Seeded float32 arrays for the kernel timings (n elements each), with the originals of those
    the calls overwrite (``orig``) and the extra arguments of the softmax ElementwiseKernel."""
    rng = xp.random.default_rng(seed)
    f32, width, C = xp.float32, 1024, 10

    def normal(shape, scale=1.0):
        return rng.standard_normal(shape, dtype=f32) * f32(scale)

    orig = {"z": normal((n // width, width), 3), "g": normal((n // width, width)), "p": normal(n),
            "m": normal(n), "v": xp.abs(normal(n))}
    arr = SimpleNamespace(orig=orig, b=normal(width), gp=normal(n), logits=normal((n // C, C), 4),
                          labels=rng.integers(0, C, n // C), **{k: v.copy() for k, v in orig.items()})
    arr.a = {act: twins().activate(xp, orig["z"].copy(), act) for act in ("relu", "sigmoid", "tanh")}
    arr.bias = normal(C)  # the output layer's (C,)
    return arr


def twins():
    """gpubp.ops, the NumPy twins, imported when first needed: the runner and a stage's child
    import only what they use (gpubp brings scikit-learn)."""
    from gpubp import ops

    return ops


def restore(xp, arr: SimpleNamespace) -> None:
    """Put the original values back into the arrays the calls overwrite."""
    for name, original in arr.orig.items():
        xp.copyto(getattr(arr, name), original)


def timing_calls(xp, kern, arr: SimpleNamespace) -> dict:
    """Name -> (kernel call, plain chain call) for every timed kernel; each returns the array to
    compare. ``kern`` is the CUDA kernel set, gpubp.kernels.CUDA_KERNELS (of its operations, those
    with a kernel of their own); the chains are its NumPy twins run with ``xp``."""
    ops = twins()
    calls = {}
    for act in ops.ACTIVATIONS:
        calls[f"bias_activation {act}"] = (partial(kern.bias_activation, xp, arr.z, arr.b, act),
                                           partial(ops.bias_activation, xp, arr.z, arr.b, act))
        if act != "identity":
            calls[f"backprop_delta {act}"] = (partial(kern.backprop_delta, xp, arr.g, arr.a[act], act),
                                              partial(ops.backprop_delta, xp, arr.g, arr.a[act], act))
    calls["softmax_minus_y"] = (lambda: kern.softmax_minus_y(xp, arr.logits, arr.labels, None, arr.bias)[0],
                                lambda: ops.softmax_minus_y(xp, arr.logits, arr.labels, None, arr.bias)[0])
    sgd = (arr.p, arr.gp, arr.v, 0.01, MOMENTUM, True)
    calls["sgd_momentum_update nesterov"] = (lambda: (kern.sgd_momentum_update(xp, *sgd), arr.p)[1],
                                             lambda: (ops.sgd_momentum_update(xp, *sgd), arr.p)[1])
    adam = (arr.p, arr.gp, arr.m, arr.v, 1e-3, 0.9, 0.999, 1e-8)
    calls["adam_update"] = (lambda: (kern.adam_update(xp, *adam), arr.p)[1],
                            lambda: (ops.adam_update(xp, *adam), arr.p)[1])
    return calls


def cupy_events(cp):
    """(new timing event, elapsed ms between two events) for CuPy's current stream."""
    return cp.cuda.Event, cp.cuda.get_elapsed_time


def torch_events(torch):
    """(new timing event, elapsed ms between two events) for PyTorch's current stream."""
    return partial(torch.cuda.Event, enable_timing=True), lambda start, end: start.elapsed_time(end)


def event_median_ms(events, fn, setup=None, repeat: int = 30, warmup: int = 3) -> float:
    """Median CUDA-event time of fn() in ms, events from cupy_events or torch_events; setup()
    runs before each call, outside the events."""
    new_event, elapsed = events
    times = []
    for k in range(warmup + repeat):
        if setup is not None:
            setup()
        start, end = new_event(), new_event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        if k >= warmup:
            times.append(elapsed(start, end))
    return statistics.median(times)


def rel_error(xp, actual, expected) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    a, e = actual.astype(xp.float64), expected.astype(xp.float64)
    return float(xp.linalg.norm(a - e) / max(float(xp.linalg.norm(e)), 1e-300))


def kernel_timings(cp, arr: SimpleNamespace) -> dict:
    """The copy bandwidth, then every kernel against it and against its plain chain."""
    from gpubp import kernels

    src, dst = arr.orig["p"], arr.p
    copy_ms = event_median_ms(cupy_events(cp), lambda: dst.data.copy_from_device_async(src.data, src.nbytes))
    copy = {"ms": copy_ms, "gbs": 2 * src.nbytes / copy_ms / 1e6}
    rows = [kernel_row(cp, name, calls, arr, copy["gbs"]) for name, calls in timing_calls(cp, kernels.CUDA_KERNELS, arr).items()]
    return {"copy": copy, "kernels": rows}


def kernel_row(cp, name: str, calls, arr: SimpleNamespace, copy_gbs: float) -> dict:
    """Agreement of kernel and chain from the same inputs, then both times and the two targets."""
    kernel_call, chain_call = calls
    setup = partial(restore, cp, arr)
    setup()
    from_kernel = kernel_call().copy()
    setup()
    error = rel_error(cp, from_kernel, chain_call())
    kernel_ms, chain_ms = (event_median_ms(cupy_events(cp), call, setup) for call in (kernel_call, chain_call))
    kernel_bytes, chain_bytes = BYTES[name]
    gbs = kernel_bytes * from_kernel.size / kernel_ms / 1e6
    row = {"kernel": name, "ms": kernel_ms, "gbs": gbs, "pct_copy": 100 * gbs / copy_gbs, "chain_ms": chain_ms,
           "speedup": chain_ms / kernel_ms, "bytes": [kernel_bytes, chain_bytes],
           "speedup_target": speedup_target(name), "rel_error": error, "agree": error < AGREE_RTOL}
    checks = (("disagree", row["agree"]), ("bandwidth", row["pct_copy"] >= 100 * BANDWIDTH_TARGET),
              ("speed-up", row["speedup"] >= row["speedup_target"]))
    row["missed"] = [what for what, ok in checks if not ok]
    row["met"] = not row["missed"]
    return row


def fmad_arguments(name: str, arr: SimpleNamespace):
    """Arguments (inputs, then outputs) of the ElementwiseKernel ``name`` of
    kernels.ELEMENTWISE_SPECS over the timing arrays, as gpubp.kernels passes them; None if unknown."""
    f32 = np.float32
    if name.startswith("gpubp_bias_"):
        return arr.z, arr.b, arr.z
    if name.startswith("gpubp_backprop_delta_"):
        return arr.a[name.removeprefix("gpubp_backprop_delta_")], arr.g
    no_l2 = (f32(0.0), np.int64(0))  # the L2 gradient's factor and weight count: none folded in
    if name == "gpubp_sgd_momentum":
        return arr.gp, f32(0.01), f32(MOMENTUM), True, *no_l2, arr.p, arr.v
    if name == "gpubp_adam":
        return arr.gp, f32(1e-3), f32(0.9), f32(0.1), f32(0.999), f32(1e-3), f32(1e-8), *no_l2, arr.p, arr.m, arr.v
    return None


def fmad_timings(cp, arr: SimpleNamespace) -> list[dict]:
    """Each ElementwiseKernel built as gpubp.kernels builds it (its COMPILE_OPTIONS, --fmad=false)
    and built the plain way (NVRTC's default --fmad=true), same arguments: time ratio."""
    from gpubp import kernels

    options = tuple(getattr(kernels, "COMPILE_OPTIONS", ()))
    preamble = kernels.read_source("gpubp_math.cuh")
    rows = []
    for name, spec in kernels.ELEMENTWISE_SPECS.items():
        args = fmad_arguments(name, arr)
        if args is None:
            rows.append({"kernel": name, "skipped": "no arguments known for this kernel"})
            continue
        built = {"gpubp": cp.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name,
                                               preamble=preamble, options=options),
                 "fmad": cp.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name + "_fmad",
                                              preamble=preamble)}
        ms = {k: event_median_ms(cupy_events(cp), partial(kernel, *args), partial(restore, cp, arr))
              for k, kernel in built.items()}
        rows.append({"kernel": name, "options": " ".join(options) or "none", "gpubp_ms": ms["gpubp"],
                     "fmad_ms": ms["fmad"], "ratio": ms["gpubp"] / ms["fmad"]})
    return rows
