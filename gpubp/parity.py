"""GPU-against-CPU checks behind ``gpubp check``: each operation of a kernel set against its
NumPy twin, and the whole model on CuPy against the whole model on NumPy.

A check passes when every element satisfies ``|actual - expected| <= max(rtol * |expected|, atol)``;
its "worst error" is ``max |actual - expected| / max(|expected|, atol / rtol)``, to be read
against rtol.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np

from . import ops
from .backend import Backend, to_numpy
from .kernel_set import OPERATIONS, KernelSet, check_kernel_set
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


@dataclass
class _Case:
    """One operation's checks in one dtype and layout: the kernel set under test, the seeded
    generator of its inputs, and the list its results go to."""

    backend: Backend
    kernels: KernelSet
    dtype: str
    layout: str
    rng: np.random.Generator
    results: list

    @property
    def xp(self):
        return self.backend.xp

    def dev(self, host):
        """``host`` as an input of the kernel under test, in this case's layout; None stays None."""
        return None if host is None else _on_device(self.backend, host, self.layout)

    def normal(self, shape, scale=1.0) -> np.ndarray:
        return self.rng.normal(scale=scale, size=shape).astype(self.dtype)

    def check(self, name: str, actual, expected) -> None:
        rtol, atol = KERNEL_TOL[self.dtype]
        self.results.append(compare(f"{name} [{self.layout}]", self.dtype, actual, expected, rtol, atol))


N, WIDTH, C = 257, 130, 10  # rows, hidden width and classes of the checks' inputs


def _hidden(case: _Case) -> np.ndarray:
    z = case.normal((N, WIDTH), 3)
    z[0, :4] = [1000, -1000, 0, 50]
    return z


def _logits(case: _Case) -> np.ndarray:
    z = case.normal((N, C), 4)
    z[0, :2] = [1000, -1000]
    return z


def _check_bias_activation(case: _Case) -> None:
    z, b = _hidden(case), case.normal(WIDTH)
    for name in ops.ACTIVATIONS:
        expected = ops.bias_activation(np, z.copy(), b, name)
        case.check(f"bias_activation {name}", case.kernels.bias_activation(case.xp, case.dev(z), case.dev(b), name),
                   expected)


def _check_backprop_delta(case: _Case) -> None:
    z = _hidden(case)
    for name in ops.ACTIVATIONS:
        a = ops.activate(np, z.copy(), name)
        a[1, :3] = [0, 1, 0]
        g = case.normal(a.shape)
        expected = ops.backprop_delta(np, g.copy(), a, name)
        case.check(f"backprop_delta {name}", case.kernels.backprop_delta(case.xp, case.dev(g), case.dev(a), name),
                   expected)
    # BP3 in the same call: db = the column sums of delta, in the kernel set's order; two orders of
    # n terms each lie within n eps of sum |terms| of the exact sum (Higham, Accuracy and Stability, 4.2)
    expected_db = np.empty(WIDTH, case.dtype)
    delta = ops.backprop_delta(np, g.copy(), a, "relu", expected_db)
    db = case.xp.full(WIDTH, np.nan, case.dtype)
    case.kernels.backprop_delta(case.xp, case.dev(g), case.dev(a), "relu", db)
    error = np.abs(to_numpy(db).astype(np.float64) - expected_db) / np.abs(delta).astype(np.float64).sum(axis=0)
    bound = 2 * N * float(np.finfo(case.dtype).eps)
    worst = float(np.nan if np.isnan(error).any() else error.max())
    case.results.append(CheckResult(f"backprop_delta relu db [{case.layout}]", case.dtype, worst, bound,
                                    bool(worst <= bound)))


def _check_softmax_minus_y(case: _Case) -> None:
    z, y = _logits(case), case.rng.integers(0, C, N)
    w, bias = case.rng.uniform(0, 2, N).astype(case.dtype), case.normal(C, 2)
    for weights, b in ((None, None), (w, None), (None, bias), (w, bias)):
        label = "softmax_minus_y" + (" weighted" if weights is not None else "") + (" bias" if b is not None else "")
        expected_delta, expected_loss = ops.softmax_minus_y(np, z, y, weights, b)
        delta, loss = case.kernels.softmax_minus_y(case.xp, case.dev(z), case.backend.asarray(y),
                                                   case.dev(weights), case.dev(b))
        case.check(f"{label} delta", delta, expected_delta)
        case.check(f"{label} loss", loss, expected_loss)


def _targets(case: _Case, output: str, z: np.ndarray) -> np.ndarray:
    """Targets of an output layer, shaped like z: 0/1, real values, or counts."""
    if output == "logistic":
        return case.rng.integers(0, 2, z.shape).astype(case.dtype)
    if output == "identity":
        return case.normal(z.shape, 2)
    return case.rng.poisson(np.exp(np.clip(z, -5, 5))).astype(case.dtype)


def _check_output_minus_y(case: _Case) -> None:
    w = case.rng.uniform(0, 2, N).astype(case.dtype)
    for output in ops.OUTPUTS[1:]:
        z = case.normal((N, 3), 2)
        z[0, :2] = [30, -30]
        Y = _targets(case, output, z)
        for weights in (None, w):
            label = f"output_minus_y {output}" + (" weighted" if weights is not None else "")
            expected_delta, expected_loss = ops.output_minus_y(np, z, Y, output, weights)
            delta, loss = case.kernels.output_minus_y(case.xp, case.dev(z), case.dev(Y), output, case.dev(weights))
            case.check(f"{label} delta", delta, expected_delta)
            case.check(f"{label} loss", loss, expected_loss)


def _check_output_activation(case: _Case) -> None:
    z = _logits(case)
    z[0, :2] = [80, -80]  # exp(80) is finite in float32
    for output in ops.OUTPUTS:
        expected = ops.output_activation(np, z.copy(), output)
        case.check(f"output_activation {output}", case.kernels.output_activation(case.xp, case.dev(z), output),
                   expected)


def _check_cross_entropy(case: _Case) -> None:
    z, y = _logits(case), case.rng.integers(0, C, N)
    case.check("cross_entropy", case.kernels.cross_entropy(case.xp, case.dev(z), case.backend.asarray(y)),
               ops.cross_entropy(np, z, y))


# the updates without an L2 term, and with its gradient folded in on the first 1000 of the 64 x 33
# parameters (l2 = alpha / n large enough that leaving it out, or adding it past them, fails)
_L2_CASES = (("", 0.0, 0), (" l2", 0.3, 1000))


def _check_sgd_momentum_update(case: _Case) -> None:
    p, g, v = (case.normal((64, 33)) for _ in range(3))
    for nesterov in (False, True):
        for suffix, l2, n_weights in _L2_CASES:
            ref = [p.copy(), v.copy()]
            ops.sgd_momentum_update(np, ref[0], g, ref[1], 0.05, 0.9, nesterov, l2, n_weights)
            out = [case.dev(p), case.dev(v)]
            case.kernels.sgd_momentum_update(case.xp, out[0], case.dev(g), out[1], 0.05, 0.9, nesterov, l2, n_weights)
            label = ("sgd_nesterov_update" if nesterov else "sgd_momentum_update") + suffix
            case.check(f"{label} p", out[0], ref[0])
            case.check(f"{label} v", out[1], ref[1])


def _check_adam_update(case: _Case) -> None:
    p, g, m, v = (case.normal((64, 33)) for _ in range(4))
    v = np.abs(v)
    for suffix, l2, n_weights in _L2_CASES:
        ref = [p.copy(), m.copy(), v.copy()]
        ops.adam_update(np, ref[0], g, ref[1], ref[2], 2e-3, 0.9, 0.999, 1e-8, l2, n_weights)
        out = [case.dev(p), case.dev(m), case.dev(v)]
        case.kernels.adam_update(case.xp, out[0], case.dev(g), out[1], out[2], 2e-3, 0.9, 0.999, 1e-8, l2, n_weights)
        for what, actual, expected in zip("pmv", out, ref):
            case.check(f"adam_update{suffix} {what}", actual, expected)


# The check of each operation of the kernel set against its twin in gpubp.ops, by name;
# tests/test_parity.py holds the keys to gpubp.kernel_set.OPERATIONS.
OPERATION_CHECKS = {
    "bias_activation": _check_bias_activation,
    "backprop_delta": _check_backprop_delta,
    "softmax_minus_y": _check_softmax_minus_y,
    "output_minus_y": _check_output_minus_y,
    "output_activation": _check_output_activation,
    "cross_entropy": _check_cross_entropy,
    "sgd_momentum_update": _check_sgd_momentum_update,
    "adam_update": _check_adam_update,
}


def kernel_checks(backend: Backend, kernels: KernelSet, dtypes=("float32", "float64"),
                  seed: int = 0) -> list[CheckResult]:
    """Every operation of the kernel set ``kernels`` on ``backend`` against its twin in gpubp.ops
    on the host, in each dtype, on contiguous and on strided inputs.

    ``kernels`` is any gpubp.kernel_set.KernelSet (an incomplete one raises ValueError), e.g.
    ``get_backend("cuda").kernels``. The operations are those of gpubp.kernel_set.OPERATIONS; one
    without a check in OPERATION_CHECKS gives a failed row "<operation>: no parity check".
    """
    check_kernel_set(kernels)
    results = []
    for dtype in dtypes:
        for layout in LAYOUTS:
            for i, operation in enumerate(OPERATIONS):
                run = OPERATION_CHECKS.get(operation)
                if run is None:
                    results.append(CheckResult(f"{operation}: no parity check [{layout}]", dtype, np.nan,
                                               KERNEL_TOL[dtype][0], False))
                    continue
                run(_Case(backend, kernels, dtype, layout, np.random.default_rng([seed, i]), results))
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
            opt = make_optimizer(optimizer)  # settings only: each network has its own state
            states = [opt.init(net.flat_params) for net in nets]
            for step in range(steps):
                rows = slice(32 * step, 32 * step + 32)
                for net, state in zip(nets, states):
                    Xb, yb = net.backend.asarray(X[rows], net.dtype), net.backend.asarray(y[rows])
                    _, g = net.flat_loss_and_grad(Xb, yb)
                    opt.update(net.flat_params, g, state, 0.01)
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
