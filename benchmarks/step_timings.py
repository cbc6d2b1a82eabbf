"""The device check's training step: forward, backward and SGD-momentum update of gpubp on CuPy
against PyTorch eager, float32 in IEEE and in TF32 on both sides, and bfloat16 (gpubp's
dtype="bfloat16" against PyTorch's bfloat16 autocast over float32 parameters), loss and
gradients compared before timing."""

from __future__ import annotations

import contextlib

import numpy as np

from benchmarks.kernel_timings import MOMENTUM, cupy_events, event_median_ms, rel_error, torch_events


# gpubp against PyTorch, loss and every gradient, norm-relative. IEEE: float32 products in two
# summation orders. TF32: each product's inputs are rounded to 10 mantissa bits (2.9e-4 of error
# a product, measured), and the two libraries' products round differently; through three layers
# and ReLUs that flip, 1e-2 is about 30 such errors.
# bfloat16: each product's inputs and output, each saved activation rounded to 8 bits (2**-8 a
# rounding), PyTorch rounding at other points (its linear layers' bias is added in the product's
# epilogue, its ReLU saves the bfloat16 output too) and its split-K sums allowed in bfloat16:
# a few units of 2.9e-3 (a product's error), and ReLUs that flip.
STEP_RTOL = {"ieee": 1e-4, "tf32": 1e-2, "bfloat16": 5e-2}
STEP_TARGET = 1.0  # gpubp step time / PyTorch eager step time
STEP_CASES = [([784, 512, 512, 10], 256), ([784, 512, 512, 10], 4096), ([4096, 4096, 4096, 10], 4096),
              ([784, 8192, 8192, 10], 4096)]
PRECISIONS = ("ieee", "tf32", "bfloat16")
BF16_CASES = [([784, 512, 512, 10], 256), ([784, 512, 512, 10], 1024), ([784, 512, 512, 10], 4096),
              ([4096, 4096, 4096, 10], 4096), ([8192, 8192, 10], 4096)]
LR = 1e-3


def step_timings(cp, save=lambda rows: None) -> list[dict]:
    """A training step (forward, backward, SGD-momentum) of each STEP_CASES, gpubp against PyTorch
    eager; ``save(rows)`` after each case. Every case is timed before any is profiled: once a
    profile has run, CUPTI stays attached to the process and slows its launches (PyTorch's Kineto
    tears it down only with TEARDOWN_CUPTI=1), which would weigh on every later case's times."""
    try:
        import torch
    except Exception as exc:
        return [{"case": "all", "skipped": f"PyTorch not importable: {type(exc).__name__}: {exc}"}]
    rows, profiles = [], []
    try:
        for precision in PRECISIONS:
            set_fp32_precision(torch, "tf32" if precision == "tf32" else "ieee")
            for sizes, batch in BF16_CASES if precision == "bfloat16" else STEP_CASES:
                row, steps = step_case(cp, torch, sizes, batch, precision)
                rows.append(row)
                profiles += [(row, precision, steps)] if steps else []
                save(rows)
        for row, precision, (gpubp_step, torch_step) in profiles:
            set_fp32_precision(torch, "tf32" if precision == "tf32" else "ieee")
            row.update(launch_fields(kernels_per_step(torch, gpubp_step), kernels_per_step(torch, torch_step)))
            save(rows)
    finally:
        set_fp32_precision(torch, "ieee")
    return rows


def launch_fields(gpubp_launches, torch_launches) -> dict:
    """A step row's kernel fields from the two sides' kernels_per_step lists (or reasons)."""
    return dict(gpubp_kernels=count(gpubp_launches), gpubp_kernel_us=gpubp_launches, torch_kernels=count(torch_launches),
                gpubp_busy_ms=busy_ms(gpubp_launches), torch_busy_ms=busy_ms(torch_launches))


def set_fp32_precision(torch, value: str) -> None:
    """PyTorch's float32 matmul and convolution precision, "ieee" or "tf32", through the
    fp32_precision settings (torch >= 2.9 refuses to mix them with the legacy allow_tf32 flags)."""
    torch.backends.cuda.matmul.fp32_precision = value
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = value


def torch_twin(torch, net, cp):
    """A torch.nn.Sequential on the GPU with the weights and biases of the gpubp MLP ``net`` (relu)."""
    layers = []
    for W, b in zip(net.weights, net.biases, strict=True):
        linear = torch.nn.Linear(*W.shape).cuda()
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(cp.asnumpy(W).T.copy()))
            linear.bias.copy_(torch.as_tensor(cp.asnumpy(b)))
        layers += [linear, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1])


def step_case(cp, torch, sizes: list[int], batch: int, precision: str = "ieee") -> tuple[dict, tuple | None]:
    """Loss and gradients compared first, then the median CUDA-event time of a step on each side:
    (the row, the two step functions for step_timings to profile later, or None where the two
    sides disagree).

    The gpubp step is what ``gpubp.fit`` runs per step on checked data (``flat_loss_and_grad``
    and one update of the flat parameter buffer): no host synchronization, as in PyTorch's step.
    Its batch is held as fit holds a resident training set, in the compute dtype (bfloat16 for
    "bfloat16"; PyTorch's autocast casts its float32 batch in the step).
    ``precision`` "tf32" builds the network with tf32=True; PyTorch's is set by the caller.
    "bfloat16" builds it with dtype="bfloat16" and runs PyTorch's forward and loss under
    ``torch.autocast("cuda", torch.bfloat16)`` (float32 parameters and optimizer, as gpubp's).
    """
    from gpubp import MLP, get_backend
    from gpubp.bench import train_flops

    label = f"{'-'.join(map(str, sizes))} b{batch}" + ("" if precision == "ieee" else f" {precision}")
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(batch, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], batch)
    yd = cp.asarray(y)
    net = MLP(sizes, "relu", get_backend("cuda"), "bfloat16" if precision == "bfloat16" else "float32", seed=0,
              tf32=precision == "tf32")
    model = torch_twin(torch, net, cp)
    Xd, Xt, yt = cp.asarray(X), torch.as_tensor(X, device="cuda"), torch.as_tensor(y, device="cuda")
    autocast = torch_autocast(torch, precision)
    errors = step_errors(cp, torch, net, model, Xd, y, Xt, yt, autocast)
    row = {"case": label, "max_rel_error": max(errors), "agree": max(errors) < STEP_RTOL[precision]}
    if not row["agree"]:
        return row, None
    gpubp_step = gpubp_sgd_step(net, Xd.astype(net.compute_dtype, copy=False), yd)  # X as fit keeps it
    torch_opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)

    def torch_step():
        torch_opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(Xt), yt)
        loss.backward()
        torch_opt.step()

    repeat = 50 if batch <= 1024 else 20
    gpubp_ms = event_median_ms(cupy_events(cp), gpubp_step, repeat=repeat)
    torch_ms = event_median_ms(torch_events(torch), torch_step, repeat=repeat)
    flops = train_flops(sizes, batch)  # one step
    row.update(gpubp_ms=gpubp_ms, torch_ms=torch_ms, ratio=gpubp_ms / torch_ms, gpubp_tflops=flops / gpubp_ms / 1e9,
               target=f"<= {STEP_TARGET}x torch eager", met=gpubp_ms / torch_ms <= STEP_TARGET,
               launch_budget=6 * (len(sizes) - 1) + 3)
    return row, (gpubp_step, torch_step)


def kernels_per_step(torch, step) -> list[list] | str:
    """The GPU kernels one call of ``step`` launches, in order, as [name cut to 80 characters,
    microseconds on the card], from PyTorch's profiler (CUPTI records every kernel of the process,
    CuPy's and cuBLAS's included); memory copies and sets are not kernels. A string says why the
    profile failed (the timings stand without it)."""
    try:
        return [[name[:80], round(us, 2)] for name, us in kernel_times(torch, step)
                if not name.lower().startswith(("memcpy", "memset"))]
    except Exception as exc:  # a profiler problem must not cost the timings
        return f"{type(exc).__name__}: {exc}"[:120]


def count(launches: list | str) -> int | str:
    """How many kernels a list of kernels_per_step holds, or its reason for having none."""
    return len(launches) if isinstance(launches, list) else launches


def busy_ms(launches: list | str) -> float | None:
    """Milliseconds the card spent in the kernels of a kernels_per_step list (None without one): set
    beside the step's time, what is left is the card waiting for the host (launch-bound steps)."""
    return sum(us for _, us in launches) / 1000 if isinstance(launches, list) else None


def kernel_times(torch, step) -> list[tuple[str, float]]:
    """(name, microseconds) of the GPU kernels and memory operations one call of ``step`` runs, in
    order, from PyTorch's profiler (CUPTI records every kernel of the process, CuPy's and
    cuBLAS's too), after one call unprofiled."""
    profiler = torch.profiler
    step()
    torch.cuda.synchronize()
    with profiler.profile(activities=[profiler.ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return [(e.name, e.time_range.elapsed_us()) for e in prof.events()
            if e.device_type == torch.autograd.DeviceType.CUDA]


def gpubp_sgd_step(net, Xd, yd):
    """A function doing one gpubp training step on the device batch (Xd, yd) as gpubp.fit does
    (the data checked once before): loss and flat gradient, then SGD with momentum MOMENTUM at
    LR over the flat parameter buffer."""
    from gpubp.optim import SGD

    opt = SGD(momentum=MOMENTUM)
    state = opt.init(net.flat_params)

    def step():
        _, g = net.flat_loss_and_grad(Xd, yd)
        opt.update(net.flat_params, g, state, LR)

    return step


def torch_autocast(torch, precision: str):
    """A function returning the context PyTorch's step runs its forward pass in: bfloat16
    autocast for "bfloat16", nothing otherwise."""
    if precision == "bfloat16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def step_errors(cp, torch, net, model, Xd, y, Xt, yt, autocast=contextlib.nullcontext) -> list[float]:
    """Relative errors of the loss and of every dW and db, gpubp against PyTorch, from one batch."""
    loss, dW, db = net.loss_and_grads(Xd, y)
    with autocast():
        torch_loss = torch.nn.functional.cross_entropy(model(Xt), yt)
    torch_loss.backward()
    errors = [abs(float(loss) - torch_loss.item()) / abs(torch_loss.item())]
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    for linear, gW, gb in zip(linears, dW, db, strict=True):
        errors.append(rel_error(np, cp.asnumpy(gW), linear.weight.grad.T.cpu().numpy()))
        errors.append(rel_error(np, cp.asnumpy(gb), linear.bias.grad.cpu().numpy()))
    model.zero_grad(set_to_none=True)
    return errors
