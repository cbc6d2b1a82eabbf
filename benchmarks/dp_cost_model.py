"""The data-parallel step on paper: what a ring all-reduce costs and how fast a step on R GPUs
would be, from the one-GPU steps measured on this project's H100.

    PYTHONPATH=. python benchmarks/dp_cost_model.py

Model (gpubp issue 13). With R ranks and a flat gradient of S bytes, a ring all-reduce moves
2(R-1)/R * S bytes through each rank in 2(R-1) steps:

    t_allreduce = 2(R-1) * latency + 2(R-1)/R * S / bus_bandwidth

gpubp's data-parallel step does its share of the global batch B and then one all-reduce, without
overlap, so a step on R GPUs takes t_1(B/R) + t_allreduce, where t_1(b) is the one-GPU step at b
rows. Speed-up: t_1(B) / that; efficiency: speed-up / R.

Inputs, and which of them are measured:
- t_1(b), measured on one H100 (the files named in MEASURED). Between two measured batches t_1 is
  interpolated linearly in b; a network measured at one batch only is taken as compute-bound,
  t_1(b) = t_1(B) b / B (true of the 8192-wide products at 256 rows and more).
- S: 4 bytes per parameter in every precision (gradients and master weights are float32).
- Bus bandwidth and per-step latency of the links (LINKS): typical figures for NCCL on such
  machines, assumed, not measured here (this project has had one GPU at a time).

Writes benchmarks/results/dp_model-2026-11-27.md (the README's table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GLOBAL_BATCH = 4096


@dataclass(frozen=True)
class Link:
    """How the ranks' all-reduce ring is connected: ``ranks`` GPUs, the ring's bus bandwidth per
    GPU (bytes/s) and the latency of one ring step (s)."""

    name: str
    ranks: int
    bus_bandwidth: float
    latency: float


LINKS = [
    Link("8 H100, NVLink (one node)", 8, 400e9, 5e-6),
    Link("2 nodes x 8 H100, InfiniBand 400 Gb/s per GPU", 16, 50e9, 10e-6),
]

# (network, mode, source file, how to find its one-GPU steps in it): see measured_steps
MEASURED = [
    ("784-512-512-10", "float32, eager", "h100-2026-11-27-run5/graph_probe.json", "eager_ms"),
    ("784-512-512-10", "float32, CUDA graph", "h100-2026-11-27-run5/graph_probe.json", "graph_ms"),
    ("8192-8192-10", "float32", "gpu-2026-11-27-NVIDIA-H100-80GB-HBM3-79-2-GiB.json", "fp32"),
    ("8192-8192-10", "bfloat16", "device_check-2026-11-27-NVIDIA-H100-80GB-HBM3.json", "bfloat16"),
]


def gradient_bytes(sizes: list[int]) -> int:
    """S: bytes of the flat float32 gradient of a network with layer sizes ``sizes``."""
    return 4 * sum((n_in + 1) * n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))


def allreduce_seconds(S: float, link: Link) -> float:
    """Ring all-reduce time of S bytes over ``link``: 2(R-1) latencies plus 2(R-1)/R S over the bus."""
    R = link.ranks
    return 2 * (R - 1) * link.latency + 2 * (R - 1) / R * S / link.bus_bandwidth


def step_seconds(points: dict[int, float], batch: int) -> float:
    """t_1(batch) from measured one-GPU steps {batch: seconds}: linear between two measured batches,
    proportional to the batch from a single one; ValueError outside what two points cover."""
    if batch in points:
        return points[batch]
    if len(points) == 1:
        (b, t), = points.items()
        return t * batch / b
    below = [b for b in points if b < batch]
    above = [b for b in points if b > batch]
    if not below or not above:
        raise ValueError(f"batch {batch} is outside the measured batches {sorted(points)}")
    lo, hi = max(below), min(above)
    return points[lo] + (batch - lo) * (points[hi] - points[lo]) / (hi - lo)


def predict(sizes: list[int], points: dict[int, float], link: Link, batch: int = GLOBAL_BATCH) -> dict:
    """The model's figures for one network and link: S, t_allreduce, t_1(B), t_1(B/R), the step
    on R GPUs, speed-up and efficiency."""
    S = gradient_bytes(sizes)
    t_ar, t_full, t_share = allreduce_seconds(S, link), step_seconds(points, batch), step_seconds(points, batch // link.ranks)
    step = t_share + t_ar
    return {"S": S, "t_allreduce": t_ar, "t_1": t_full, "t_share": t_share, "step": step,
            "speedup": t_full / step, "efficiency": t_full / step / link.ranks}


def measured_steps(network: str, file: str, key: str) -> dict[int, float]:
    """{batch: seconds} of one network's measured one-GPU steps in one of the results files."""
    data = json.loads((RESULTS / file).read_text())
    if "cases" in data:  # benchmarks/graph_probe.py
        rows = [(c["case"], c[key]) for c in data["cases"]]
    elif "rows" in data:  # benchmarks/bench_gpu.py
        rows = [(r["case"], r["ms"]["gpubp"]) for r in data["rows"] if r["mode"] == key and "ms" in r]
    else:  # benchmarks/device_check.py's timings
        rows = [(s["case"].removesuffix(f" {key}"), s["gpubp_ms"]) for s in data["sections"]["timings"]["steps"]
                if s["case"].endswith(f" {key}")]
    points = {int(case.split(" b")[1]): ms / 1e3 for case, ms in rows if case.split(" b")[0] == network}
    if not points:
        raise ValueError(f"{file} has no step of {network} ({key})")
    return points


def table() -> str:
    """The markdown table of every measured network and mode on every link."""
    lines = ["| link | network, mode | S | t_allreduce | t_1(4096) | t_1(4096/R) | step on R | speed-up | efficiency |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for link in LINKS:
        for network, mode, file, key in MEASURED:
            sizes = [int(n) for n in network.split("-")]
            f = predict(sizes, measured_steps(network, file, key), link)
            lines.append(f"| {link.name} | {network}, {mode} | {f['S'] / 1e6:.1f} MB | {f['t_allreduce'] * 1e3:.2f} ms "
                         f"| {f['t_1'] * 1e3:.2f} ms | {f['t_share'] * 1e3:.2f} ms | {f['step'] * 1e3:.2f} ms "
                         f"| {f['speedup']:.1f}x | {f['efficiency']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    links = "; ".join(f"{link.name}: {link.bus_bandwidth / 1e9:.0f} GB/s bus bandwidth, {link.latency * 1e6:.0f} us a ring step"
                      for link in LINKS)
    sources = ", ".join(sorted({f"`{file}`" for _, _, file, _ in MEASURED}))
    text = (f"# Data-parallel step on paper (benchmarks/dp_cost_model.py)\n\nGlobal batch {GLOBAL_BATCH}. "
            f"Links assumed, not measured: {links}. One-GPU steps measured on an H100: {sources}.\n\n{table()}\n")
    out = RESULTS / "dp_model-2026-11-27.md"
    out.write_text(text)
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
