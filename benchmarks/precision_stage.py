"""Device-check stage for TF32 (issue 12): does gpubp.precision.tf32_products engage TF32, what does
it buy, and is IEEE float32 back after the block?

    PYTHONPATH=. python benchmarks/precision_stage.py      (this stage alone: $OUT/precision.json)

or registered in benchmarks/device_check.py's STAGES as ``"precision": (precision_stage, BUDGET_S)``.

On 4096 x 4096 x 4096 float32 products of seeded standard-normal matrices (drawn on the host):

- the norm-relative error against a float64 product and the median CUDA-event time (TFLOP/s) of
  CuPy's plain product (IEEE: ~1e-6 expected), inside tf32_products (TF32: ~3e-4, the proof that
  TF32 engaged), inside each of its two halves alone (CuPy's compute type, the handle's math mode:
  reported, which one cuBLAS honours), the two transposed products of the backward pass inside it,
  and the plain product again after the block (IEEE again, with the math mode and the compute type
  as found);
- the TF32 product against gpubp.precision.matmul_as_tf32 on the host (the CPU model: inputs
  rounded to nearest even, float32 sums) on its first 1024 rows;
- how the card rounds inputs to TF32: X @ I with an identity I gives X rounded, compared bit for bit
  with round to nearest even, truncation and round half away (ties planted in a quarter of X);
- the same products in PyTorch with ``torch.backends.cuda.matmul.fp32_precision`` "ieee" and "tf32";
- bfloat16 (gpubp.bfloat16): the inputs cast to bfloat16 and multiplied by CuPy inside
  float32_accumulation (expected error ~BF16_TYPICAL_REL_ERROR; the three product shapes), the
  product against the CPU model matmul_as_bfloat16 on its first rows (one bfloat16 unit apart at
  most, where the float32 sums fall on either side of a rounding boundary), and PyTorch's
  bfloat16 product of the same inputs.

Failures (mechanism and model only; speeds are reported): an IEEE product off by more than
IEEE_MAX_ERROR, a TF32 product outside TF32_ERROR_BAND, the state not restored, the CPU model off
by more than MODEL_MAX_ERROR, or a rounding other than nearest even. About 15-25 s on an H100,
imports, kernel compiles and PyTorch included; saved after every step.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.kernel_timings import cupy_events, event_median_ms, rel_error, torch_events  # noqa: E402
from benchmarks.timed_command import child_env, run_child, run_isolated, write_json  # noqa: E402
from gpubp.bench import matmul_flops  # noqa: E402
from gpubp.bfloat16 import BF16_TYPICAL_REL_ERROR, BFLOAT16, matmul_as_bfloat16  # noqa: E402
from gpubp.precision import TF32_TYPICAL_REL_ERROR, matmul_as_tf32, round_to_tf32  # noqa: E402

SIZE = 4096  # n = k = m
MODEL_ROWS = 1024  # rows of the TF32 product checked against the CPU model (host time)
ROUNDING_SHAPE = (4096, 1024)  # X of the X @ I rounding check
REPEAT = 20
BUDGET_S = 30
IEEE_MAX_ERROR = 1e-5
TF32_ERROR_BAND = (0.3 * TF32_TYPICAL_REL_ERROR, 3 * TF32_TYPICAL_REL_ERROR)
MODEL_MAX_ERROR = 2e-5
BF16_ERROR_BAND = (0.5 * BF16_TYPICAL_REL_ERROR, 2 * BF16_TYPICAL_REL_ERROR)
BF16_MODEL_MAX_ERROR = 1e-3  # norm-relative: a few elements one bfloat16 unit (2**-8) apart
NEAREST_EVEN = "nearest even"


# ------------------------------------------------------------------ pure helpers (tested on the CPU)


def tflops(n: int, k: int, m: int, ms: float) -> float:
    """TFLOP/s of an (n, k) @ (k, m) product that took ``ms`` milliseconds."""
    return matmul_flops(n, k, m) / (ms * 1e-3) / 1e12


def product_inputs(size: int | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two (size, size) standard-normal float32 matrices (size: SIZE), drawn on the host."""
    size = SIZE if size is None else size
    rng = np.random.default_rng(seed)
    return tuple(rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))


def rounding_inputs(shape=None, seed: int = 1) -> np.ndarray:
    """float32 normals over many binades (shape: ROUNDING_SHAPE); every fourth element an exact
    tie of TF32 rounding."""
    shape = ROUNDING_SHAPE if shape is None else shape
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-20, 20, shape))).astype(np.float32)
    bits = x.view(np.uint32)
    bits[:, ::4] = (bits[:, ::4] & np.uint32(0xFFFFE000)) | np.uint32(0x1000)
    return x


def rounding_models(x: np.ndarray) -> dict:
    """x rounded to TF32 by each candidate rule: name -> float32 array."""
    bits = x.view(np.uint32)
    low = np.uint32(0x1FFF)
    return {NEAREST_EVEN: round_to_tf32(x),
            "truncation": (bits & ~low).view(np.float32),
            "nearest, ties away from zero": ((bits + np.uint32(0x1000)) & ~low).view(np.float32),
            "not rounded (IEEE)": x}


def rounding_agreement(x: np.ndarray, got: np.ndarray) -> dict:
    """Share of the elements of ``got`` (x rounded by a card) equal, bit for bit, to each rule's."""
    got_bits = np.asarray(got, dtype=np.float32).view(np.uint32)
    shares = {name: float(np.mean(got_bits == r.view(np.uint32))) for name, r in rounding_models(x).items()}
    return {"shares": shares, "rule": max(shares, key=shares.get), "elements": int(x.size)}


def measure(name: str, expect: str, run, error_of, timer, flops: float) -> dict:
    """One product: its error (``error_of(run())``), median time (``timer(run)``) and TFLOP/s.
    ``expect``: "ieee", "tf32" or "report" (no expectation)."""
    row = {"name": name, "expect": expect, "rel_error": float(error_of(run()))}
    row["ms"] = float(timer(run))
    row["tflops"] = flops / (row["ms"] * 1e-3) / 1e12
    row["tf32_engaged"] = row["rel_error"] >= TF32_ERROR_BAND[0]
    row["as_expected"] = meets(row)
    return row


def meets(row: dict) -> bool:
    """Whether a row's error is what its expectation says."""
    if row["expect"] == "ieee":
        return row["rel_error"] <= IEEE_MAX_ERROR
    if row["expect"] == "tf32":
        return TF32_ERROR_BAND[0] <= row["rel_error"] <= TF32_ERROR_BAND[1]
    if row["expect"] == "bfloat16":
        return BF16_ERROR_BAND[0] <= row["rel_error"] <= BF16_ERROR_BAND[1]
    return True


def row_failures(rows: list[dict]) -> list[str]:
    """A failure for each row whose error is not what it expects."""
    failures = []
    for r in rows:
        if r["as_expected"]:
            continue
        if r["expect"] == "ieee":
            failures.append(f"{r['name']}: error {r['rel_error']:.1e} > {IEEE_MAX_ERROR:.0e}, not IEEE float32")
        elif r["expect"] == "bfloat16":
            failures.append(f"{r['name']}: error {r['rel_error']:.1e} outside {BF16_ERROR_BAND} of a bfloat16 product")
        else:
            low, high = TF32_ERROR_BAND
            why = "TF32 did not engage" if r["rel_error"] < low else "more than TF32's rounding"
            failures.append(f"{r['name']}: error {r['rel_error']:.1e} outside [{low:.0e}, {high:.0e}] ({why})")
    return failures


def section_failures(result: dict) -> list[str]:
    """Everything that makes the stage a failure: rows, restored state, CPU model, rounding rule."""
    failures = row_failures(result.get("rows", []))
    state = result.get("state", {})
    for when, found in state.items():
        if when != "before" and found != state["before"]:
            failures.append(f"state not restored ({when}): {found}, against {state['before']} before")
    model = result.get("model")
    if model and model["rel_error"] > MODEL_MAX_ERROR:
        failures.append(f"TF32 product against the CPU model (matmul_as_tf32): {model['rel_error']:.1e} "
                        f"> {MODEL_MAX_ERROR:.0e}")
    bf16_model = result.get("bfloat16_model")
    if bf16_model and bf16_model["rel_error"] > BF16_MODEL_MAX_ERROR:
        failures.append(f"bfloat16 product against the CPU model (matmul_as_bfloat16): "
                        f"{bf16_model['rel_error']:.1e} > {BF16_MODEL_MAX_ERROR:.0e}")
    rounding = result.get("rounding")
    if rounding and rounding["shares"][NEAREST_EVEN] < 1.0:
        failures.append(f"the card's TF32 rounding is not nearest even everywhere ({rounding['shares']})")
    return failures


def verdict(result: dict) -> str:
    """One line: TF32 against IEEE in time and error, the restore, the rounding rule, PyTorch."""
    rows = {r["name"]: r for r in result.get("rows", [])}
    ieee, tf32 = rows.get("cupy ieee"), rows.get("cupy tf32_products")
    if not (ieee and tf32):
        return "incomplete: " + ", ".join(rows) if rows else "nothing measured"
    text = (f"tf32_products {ieee['ms'] / tf32['ms']:.1f}x IEEE ({tf32['tflops']:.0f} vs {ieee['tflops']:.0f} "
            f"TFLOP/s), error {tf32['rel_error']:.1e} vs {ieee['rel_error']:.1e}")
    after = rows.get("cupy ieee after the block")
    if after:
        text += f"; after the block {after['rel_error']:.1e}"
    if result.get("rounding"):
        text += f"; card rounds to TF32 by {result['rounding']['rule']}"
    torch_rows = {r["name"]: r for r in result.get("torch", {}).get("rows", [])}
    t_ieee, t_tf32 = torch_rows.get("torch ieee"), torch_rows.get("torch tf32")
    if t_ieee and t_tf32:
        text += f"; PyTorch tf32 {t_tf32['tflops']:.0f} TFLOP/s, error {t_tf32['rel_error']:.1e}"
    return text


def summary(result: dict) -> dict:
    """result with its failures and verdict (what save() and the stage return)."""
    return {**result, "failures": section_failures(result), "verdict": verdict(result)}


# ------------------------------------------------------------------ on the card


def cublas_state(cp) -> dict:
    """The current handle's math mode and CuPy's float32 compute type."""
    return {"math_mode": int(cp.cuda.cublas.getMathMode(cp.cuda.device.get_cublas_handle())),
            "compute_type": int(cp._core.get_compute_type(np.float32))}


def entry_cost_us(cp, count: int = 1000) -> float:
    """Host microseconds to enter and leave tf32_products once (the network pays it per pass)."""
    from gpubp.precision import tf32_products

    t0 = time.perf_counter()
    for _ in range(count):
        with tf32_products(cp, True):
            pass
    return (time.perf_counter() - t0) / count * 1e6


def cupy_part(cp, A, B, result: dict, save) -> None:
    """CuPy rows, restored state, CPU model, rounding rule, added to ``result`` as measured."""
    from gpubp import precision

    n = A.shape[0]
    flops = matmul_flops(n, n, n)
    a, b = cp.asarray(A), cp.asarray(B)
    ref = a.astype(cp.float64) @ b.astype(cp.float64)  # (n, n)

    def error(c):
        return rel_error(cp, c, ref)

    def timer(fn):
        return event_median_ms(cupy_events(cp), fn, repeat=REPEAT)

    def product():
        return a @ b

    rows = result["rows"]

    def add(row):
        rows.append(row)
        save(summary(result))

    result["tf32_supported"] = precision.tf32_supported(cp)
    result["state"] = {"before": cublas_state(cp)}
    add(measure("cupy ieee", "ieee", product, error, timer, flops))
    refs_t = {"a.T @ b": a.T.astype(cp.float64) @ b.astype(cp.float64),
              "a @ b.T": a.astype(cp.float64) @ b.T.astype(cp.float64)}
    with precision.tf32_products(cp, True):
        add(measure("cupy tf32_products", "tf32", product, error, timer, flops))
        tf32_top = product()[:MODEL_ROWS].get()
        for name, run in (("a.T @ b", lambda: a.T @ b), ("a @ b.T", lambda: a @ b.T)):
            add(measure(f"cupy tf32_products {name} (BP4, BP2 shapes)", "tf32", run,
                        lambda c, name=name: rel_error(cp, c, refs_t[name]), timer, flops))
    result["state"]["after"] = cublas_state(cp)
    add(measure("cupy ieee after the block", "ieee", product, error, timer, flops))
    with precision.tf32_compute_type(cp):
        add(measure("cupy compute type only", "report", product, error, timer, flops))
    with precision.tf32_math_mode(cp):
        add(measure("cupy math mode only", "report", product, error, timer, flops))
    result["state"]["after halves"] = cublas_state(cp)
    result["entry_cost_us"] = entry_cost_us(cp)

    ref_top = ref[:MODEL_ROWS].get()
    model = matmul_as_tf32(A[:MODEL_ROWS], B).astype(np.float64)
    result["model"] = {"rel_error": float(np.linalg.norm(tf32_top - model) / np.linalg.norm(ref_top))}
    save(summary(result))

    X = rounding_inputs()
    x, eye = cp.asarray(X), cp.eye(X.shape[1], dtype=cp.float32)
    with precision.tf32_products(cp, True):
        rounded = (x @ eye).get()
    result["rounding"] = rounding_agreement(X, rounded)
    save(summary(result))
    cp.get_default_memory_pool().free_all_blocks()


def bfloat16_part(cp, A, B, result: dict, save) -> None:
    """bfloat16 rows (the three product shapes inside float32_accumulation) and the product
    against the CPU model, added to ``result`` as measured."""
    from gpubp.bfloat16 import float32_accumulation

    n = A.shape[0]
    a32, b32 = cp.asarray(A), cp.asarray(B)
    a, b = a32.astype(BFLOAT16), b32.astype(BFLOAT16)
    refs = {"a @ b": a32.astype(cp.float64) @ b32.astype(cp.float64),
            "a.T @ b": a32.T.astype(cp.float64) @ b32.astype(cp.float64),
            "a @ b.T": a32.astype(cp.float64) @ b32.T.astype(cp.float64)}
    runs = {"a @ b": lambda: a @ b, "a.T @ b": lambda: a.T @ b, "a @ b.T": lambda: a @ b.T}
    with float32_accumulation(cp):
        for name, run in runs.items():
            result["rows"].append(measure(f"cupy bfloat16 {name}", "bfloat16", run,
                                          lambda c, name=name: rel_error(cp, c.astype(cp.float64), refs[name]),
                                          lambda fn: event_median_ms(cupy_events(cp), fn, repeat=REPEAT),
                                          matmul_flops(n, n, n)))
            save(summary(result))
        top = (a[:MODEL_ROWS] @ b).astype(cp.float32).get()
    model = matmul_as_bfloat16(A[:MODEL_ROWS].astype(BFLOAT16), B.astype(BFLOAT16)).astype(np.float32)
    result["bfloat16_model"] = {"rel_error": float(np.linalg.norm(top - model) / np.linalg.norm(model)),
                                "elements_differing": int(np.count_nonzero(top != model))}
    save(summary(result))
    cp.get_default_memory_pool().free_all_blocks()


def torch_bfloat16_row(torch, a, b, error, timer, n: int) -> dict:
    """PyTorch's bfloat16 product of the float32 inputs a, b (cast once, outside the timing)."""
    a16, b16 = a.bfloat16(), b.bfloat16()
    return measure("torch bfloat16", "bfloat16", lambda: a16 @ b16, error, timer, matmul_flops(n, n, n))


def torch_part(A, B) -> dict:
    """The IEEE and TF32 products in PyTorch (fp32_precision), and its TF32 rounding rule."""
    try:
        import torch
    except Exception as exc:
        return {"skipped": f"PyTorch not importable: {type(exc).__name__}: {exc}"}
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        return {"skipped": f"torch {torch.__version__} has no torch.backends.cuda.matmul.fp32_precision"}
    before = matmul.fp32_precision
    n = A.shape[0]
    a, b = torch.from_numpy(A).cuda(), torch.from_numpy(B).cuda()
    ref = a.double() @ b.double()
    ref_norm = float(torch.linalg.norm(ref))

    def error(c):
        return float(torch.linalg.norm(c.double() - ref)) / ref_norm

    def timer(fn):
        return event_median_ms(torch_events(torch), fn, repeat=REPEAT)

    out = {"torch": torch.__version__, "fp32_precision_before": before, "rows": []}
    try:
        for setting in ("ieee", "tf32"):
            matmul.fp32_precision = setting
            out["rows"].append(measure(f"torch {setting}", setting, lambda: a @ b, error, timer, matmul_flops(n, n, n)))
        out["rows"].append(torch_bfloat16_row(torch, a, b, error, timer, n))
        X = rounding_inputs()
        x = torch.from_numpy(X).cuda()
        out["rounding"] = rounding_agreement(X, (x @ torch.eye(X.shape[1], device="cuda")).cpu().numpy())
    finally:
        matmul.fp32_precision = before
    torch.cuda.empty_cache()
    return out


def precision_stage(save) -> dict:
    """The stage: CuPy with gpubp.precision, then PyTorch, saved as it goes."""
    import cupy as cp

    t0 = time.monotonic()
    result = {"size": SIZE, "repeat": REPEAT, "model_rows": MODEL_ROWS, "tf32_error_band": list(TF32_ERROR_BAND),
              "env": {k: os.environ.get(k, "unset") for k in ("CUPY_TF32", "NVIDIA_TF32_OVERRIDE")}, "rows": []}
    A, B = product_inputs()
    save(summary(result))
    cupy_part(cp, A, B, result, save)
    bfloat16_part(cp, A, B, result, save)
    result["cupy_seconds"] = round(time.monotonic() - t0, 1)
    save(summary(result))
    result["torch"] = torch_part(A, B)
    result["seconds"] = round(time.monotonic() - t0, 1)
    return summary(result)


# ------------------------------------------------------------------ alone, through timed_command's runner


def main(argv=None) -> int:
    """Run the stage in a child process under BUDGET_S (timed_command.run_isolated); write
    $OUT/precision.json; exit status 0 when it passed, 1 otherwise, 3 without a usable GPU."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args(argv)
    if args.result:
        return run_child(precision_stage, args.result)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else None
    from gpubp.backend import cuda_status

    if not cuda_status().usable:
        print(f"no usable GPU: {cuda_status().reason}")
        return 3
    with tempfile.TemporaryDirectory(prefix="gpubp-precision-") as scratch:
        result = Path(scratch) / "precision.json"
        status, section = run_isolated([sys.executable, str(Path(__file__).resolve()), "--result", str(result)],
                                       BUDGET_S, result, child_env(out))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "precision.json", {"stage": "precision", **status, "result": section})
    print(f"[precision] {status['status']} in {status['seconds']} s: "
          f"{status.get('detail') or (section or {}).get('verdict', '')}")
    for row in (section or {}).get("rows", []) + (section or {}).get("torch", {}).get("rows", []):
        print(f"  {row['name']:45s} error {row['rel_error']:.2e}  {row['ms']:.3f} ms  {row['tflops']:.0f} TFLOP/s")
    return 0 if status["status"] == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
