"""GPU-against-CPU checks behind ``gpubp check``: each kernel against its NumPy twin, and the
whole model on CuPy against the whole model on NumPy.

A check passes when every element satisfies ``|actual - expected| <= max(rtol * |expected|, atol)``;
its "worst error" is ``max |actual - expected| / max(|expected|, atol / rtol)``, to be read
against rtol.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import ops
from .backend import Backend, to_numpy
from .mlp import MLP
from .optim import make_optimizer

# Kernel against NumPy twin: a few ulps apart, from CUDA's exp, log and tanh against the host's
# (multiply-adds are not fused: gpubp.kernels.COMPILE_OPTIONS). Below atol / rtol an absolute
# atol applies, which also covers float32 denormals that the GPU flushes to zero.
KERNEL_TOL = {"float32": (1e-5, 1e-7), "float64": (1e-12, 1e-15)}
# Whole model against whole model: matrix products sum in a different order on each device.
MODEL_TOL = {"float32": (1e-4, 1e-6), "float64": (1e-10, 1e-12)}
LAYOUTS = ("contiguous", "strided")


@dataclass(frozen=True)
class CheckResult:
    """One row of the table: what was compared, in which dtype, how far apart, and the verdict."""

    check: str
    dtype: str
    worst: float
    rtol: float
    passed: bool


def compare(check: str, dtype: str, actual, expected, rtol: float, atol: float) -> CheckResult:
    """CheckResult for two arrays (any device) of one shape; NaN anywhere fails."""
    actual, expected = to_numpy(actual).astype(np.float64), to_numpy(expected).astype(np.float64)
    if actual.shape != expected.shape:
        return CheckResult(f"{check} (shape {actual.shape} != {expected.shape})", dtype, np.inf, rtol, False)
    scale = np.maximum(np.abs(expected), atol / rtol)
    with np.errstate(invalid="ignore"):
        ratio = np.abs(actual - expected) / scale
    worst = float(np.max(ratio)) if ratio.size else 0.0
    if np.isnan(ratio).any():
        worst = np.nan
    return CheckResult(check, dtype, worst, rtol, bool(worst <= rtol))


def _on_device(backend: Backend, host: np.ndarray, layout: str):
    """A device copy of ``host`` (never ``host`` itself, which the kernels under test may write);
    "strided" gives a non-contiguous view with the same values."""
    if layout == "contiguous":
        return backend.asarray(host).copy()
    wide = backend.xp.zeros(host.shape[:-1] + (2 * host.shape[-1],), dtype=host.dtype)
    view = wide[..., ::2]
    view[...] = backend.asarray(host)
    return view


def kernel_checks(backend: Backend, kernels: ModuleType, dtypes=("float32", "float64"),
                  seed: int = 0) -> list[CheckResult]:
    """Every function of ``kernels`` on ``backend`` against its twin in gpubp.ops on the host.

    ``kernels`` is gpubp.kernels for the GPU; any module with the same functions can be checked.
    """
    results = []
    for dtype in dtypes:
        rtol, atol = KERNEL_TOL[dtype]
        for layout in LAYOUTS:
            rng = np.random.default_rng(seed)

            def dev(host):
                return _on_device(backend, host, layout)

            def check(name, actual, expected):
                results.append(compare(f"{name} [{layout}]", dtype, actual, expected, rtol, atol))

            n, width, C = 257, 130, 10
            z = rng.normal(scale=3, size=(n, width)).astype(dtype)
            z[0, :4] = [1000, -1000, 0, 50]
            b = rng.normal(size=width).astype(dtype)
            for name in ops.ACTIVATIONS:
                expected = ops.bias_activation(np, z.copy(), b, name)
                check(f"bias_activation {name}", kernels.bias_activation(backend.xp, dev(z), backend.asarray(b), name), expected)
                a = ops.activate(np, z.copy(), name)
                a[1, :3] = [0, 1, 0]
                g = rng.normal(size=a.shape).astype(dtype)
                expected = ops.backprop_delta(np, g.copy(), a, name)
                check(f"backprop_delta {name}", kernels.backprop_delta(backend.xp, dev(g), dev(a), name), expected)

            logits = rng.normal(scale=4, size=(n, C)).astype(dtype)
            logits[0, :2] = [1000, -1000]
            y = rng.integers(0, C, n)
            w = rng.uniform(0, 2, n)
            bias = rng.normal(scale=2, size=C).astype(dtype)
            for weights, b in ((None, None), (w, None), (None, bias), (w, bias)):
                label = "softmax_minus_y" + (" weighted" if weights is not None else "") + (" bias" if b is not None else "")
                expected_delta, expected_loss = ops.softmax_minus_y(np, logits, y, weights, b)
                delta, loss = kernels.softmax_minus_y(
                    backend.xp, dev(logits), backend.asarray(y),
                    None if weights is None else backend.asarray(weights, dtype), None if b is None else dev(b))
                check(f"{label} delta", delta, expected_delta)
                check(f"{label} loss", loss, expected_loss)

            p, g, v, m = (rng.normal(size=(64, 33)).astype(dtype) for _ in range(4))
            v2 = np.abs(v)
            for nesterov in (False, True):
                ref = [p.copy(), v.copy()]
                ops.sgd_momentum_update(np, ref[0], g, ref[1], 0.05, 0.9, nesterov)
                out = [dev(p), dev(v)]
                kernels.sgd_momentum_update(backend.xp, out[0], dev(g), out[1], 0.05, 0.9, nesterov)
                label = "sgd_nesterov_update" if nesterov else "sgd_momentum_update"
                check(f"{label} p", out[0], ref[0])
                check(f"{label} v", out[1], ref[1])
            ref = [p.copy(), m.copy(), v2.copy()]
            ops.adam_update(np, ref[0], g, ref[1], ref[2], 2e-3, 0.9, 0.999, 1e-8)
            out = [dev(p), dev(m), dev(v2)]
            kernels.adam_update(backend.xp, out[0], dev(g), out[1], out[2], 2e-3, 0.9, 0.999, 1e-8)
            for what, actual, expected in zip("pmv", out, ref):
                check(f"adam_update {what}", actual, expected)
    return results


def model_checks(cpu: Backend, gpu: Backend, dtypes=("float32", "float64"), steps: int = 20,
                 seed: int = 0) -> list[CheckResult]:
    """The same seeded network on both backends: loss, every dW and db, and the parameters
    after ``steps`` optimizer steps of SGD with momentum and of Adam."""
    results = []
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(steps * 32, 40))
    y = rng.integers(0, 10, len(X))
    for dtype in dtypes:
        rtol, atol = MODEL_TOL[dtype]
        for activation in ops.ACTIVATIONS:
            nets = [MLP([40, 64, 32, 10], activation, b, dtype, seed=seed, alpha=1e-3) for b in (cpu, gpu)]
            (loss_c, dW_c, db_c), (loss_g, dW_g, db_g) = (net.loss_and_grads(X[:64], y[:64]) for net in nets)
            checks = [compare(f"model {activation} loss", dtype, loss_g, loss_c, rtol, atol)]
            for l, (gc, gg) in enumerate(zip(dW_c + db_c, dW_g + db_g)):
                checks.append(compare(f"model {activation} grad {l}", dtype, gg, gc, rtol, atol))
            worst = max(checks, key=lambda r: (not r.passed, r.worst))
            results.append(CheckResult(f"model {activation}: loss, all dW and db", dtype, worst.worst,
                                       rtol, all(r.passed for r in checks)))
        for optimizer in ("momentum", "adam"):
            nets = [MLP([40, 64, 32, 10], "relu", b, dtype, seed=seed) for b in (cpu, gpu)]
            opts = [make_optimizer(optimizer), make_optimizer(optimizer)]
            for step in range(steps):
                rows = slice(32 * step, 32 * step + 32)
                for net, opt in zip(nets, opts):
                    _, dW, db = net.loss_and_grads(X[rows], y[rows])
                    opt.step(net.params, dW + db, 0.01)
            checks = [compare("", dtype, pg, pc, rtol, atol) for pc, pg in zip(nets[0].params, nets[1].params)]
            worst = max(checks, key=lambda r: (not r.passed, r.worst))
            results.append(CheckResult(f"model {steps} {optimizer} steps: parameters", dtype, worst.worst,
                                       rtol, all(r.passed for r in checks)))
    return results


def format_table(results: list[CheckResult]) -> str:
    """Plain-text table: check, dtype, worst error, tolerance, pass."""
    width = max([len(r.check) for r in results] + [5])
    lines = [f"{'check':<{width}}  {'dtype':<7}  {'worst error':>11}  {'tolerance':>9}  pass"]
    for r in results:
        lines.append(f"{r.check:<{width}}  {r.dtype:<7}  {r.worst:>11.2e}  {r.rtol:>9.0e}  "
                     f"{'yes' if r.passed else 'NO'}")
    return "\n".join(lines)
