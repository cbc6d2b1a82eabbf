"""Render benchmarks/RESULTS.md (and PNG plots) from the newest result files in benchmarks/results/.

Each section names the machine that produced it. Plots need matplotlib (gpubp[plot]).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(stem: str, report: dict, text: str, folders: list[Path] | None = None) -> list[Path]:
    """Write report as STEM.json and text as STEM.md to each of ``folders``: by default
    benchmarks/results/ and $OUT when set (the device machine returns what is under $OUT)."""
    if folders is None:
        folders = [RESULTS] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
        (folder / f"{stem}.md").write_text(text)
        written.append(folder / f"{stem}.json")
    return written


def _newest(folder: Path, pattern: str):
    files = sorted(folder.glob(pattern))
    return (files[-1], json.loads(files[-1].read_text())) if files else (None, None)


def _cpu_section(path: Path, report: dict, plots: list[str]) -> list[str]:
    m = report["machine"]
    lines = [
        f"## CPU: gpubp (NumPy) vs scikit-learn vs PyTorch ({path.name})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores; BLAS: {'; '.join(m['blas'])}. Python {m['python']}, "
        f"NumPy {m['numpy']}, scikit-learn {m['sklearn']}, PyTorch {m['torch'] or 'not installed'}, "
        f"gpubp {m['gpubp']}; {m['date']}.",
        "",
        f"Data: {report['data']}. Measured matmul rate: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in report["matmul_gflops"].items())
        + f". Median of {report['pairs']} paired, alternating runs per library; one epoch each. "
        "% of products: the time the epoch's matrix products alone take at the case's shapes (timed "
        "in the same pairs) over the library's epoch time, so 100 would be nothing but the products.",
        "",
        "| case | library | epoch s | time / gpubp | GFLOP/s | % of matmul | % of products | test acc. (2 epochs) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        if not row["agree"]:
            lines.append(f"| {row['label']} | (libraries disagree: {row['accuracy']}; not timed) | | | | | | |")
            continue
        for lib, seconds in row["median_seconds"].items():
            lines.append(f"| {row['label']} | {lib} | {seconds:.3f} | {row['ratio_to_gpubp'][lib]:.2f} | "
                         f"{row['gflops'][lib]:.0f} | {row['pct_of_matmul'][lib]:.0f} | "
                         f"{row['pct_of_products'][lib]:.0f} | {row['accuracy'][lib]:.3f} |")
    lines += ["", "Limit: the value the matrix products alone reach; no implementation that does these "
              "products with this BLAS can do better, so a target beyond its limit cannot be met on this "
              "machine.", "",
              "| target | measured | met | limit |", "|---|---:|---|---:|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.2f} | {'yes' if t['met'] else 'NO'} | {t['limit']:.2f} |")
    lines += [""] + [f"![{p}](results/{p})" for p in plots]
    return lines


def _plot_cpu(path: Path, report: dict) -> list[str]:
    """Epoch time and fraction of the matmul rate per case and library; names of the PNGs."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["agree"]]
    if not rows:
        return []
    libraries = list(rows[0]["median_seconds"])
    names = []
    for key, ylabel, suffix in (("median_seconds", "seconds per epoch (log)", "epoch-time"),
                                ("pct_of_matmul", "% of measured matmul rate", "matmul-fraction")):
        fig, ax = plt.subplots(figsize=(max(8, 0.55 * len(rows)), 4.5))
        width = 0.8 / len(libraries)
        for i, lib in enumerate(libraries):
            ax.bar([j + i * width for j in range(len(rows))], [r[key][lib] for r in rows], width, label=lib)
        if all("products_median_seconds" in r for r in rows):
            floor = [r["products_median_seconds"] if key == "median_seconds"
                     else r["pct_of_matmul"]["gpubp"] * 100 / r["pct_of_products"]["gpubp"] for r in rows]
            ax.scatter([j + 0.4 - width / 2 for j in range(len(rows))], floor, marker="_", s=300, color="black",
                       zorder=3, label="matrix products alone")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
        ax.set_xticklabels([r["label"] for r in rows], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        if key == "median_seconds":
            ax.set_yscale("log")
        ax.legend()
        ax.set_title(f"{report['machine']['cpu']}, {report['machine']['cores']} cores ({report['machine']['date']})",
                     fontsize=9)
        fig.tight_layout()
        name = f"{path.stem}-{suffix}.png"
        fig.savefig(path.parent / name, dpi=90)
        plt.close(fig)
        names.append(name)
    return names


def render(results: Path, out: Path) -> Path:
    """Write ``out`` from the newest CPU benchmark and device-check results in ``results``."""
    lines = ["# gpubp benchmark results", "",
             "Rendered by benchmarks/results_md.py from the newest files in benchmarks/results/. Every "
             "number comes from a script in benchmarks/ that checks the libraries agree before timing.", ""]
    path, report = _newest(results, "cpu-*.json")
    if report:
        lines += _cpu_section(path, report, _plot_cpu(path, report)) + [""]
    else:
        lines += ["## CPU", "", "No results yet: run `PYTHONPATH=. python benchmarks/bench_cpu.py`.", ""]
    path, report = _newest(results, "estimator_cpu-*.json")
    if report:
        m, med = report["machine"], report["median_seconds"]
        lines += [f"## CPU: gpubp.MLPClassifier vs scikit-learn's ({path.name})", "",
                  f"Machine: {m['cpu']}, {m['cores']} cores; BLAS: {'; '.join(m['blas'])}; {report['date']}. "
                  f"{report['data']}; {report['network']}; {report['epochs']} epochs; median of {report['pairs']} "
                  "paired runs.", "", "| estimator | median fit s |", "|---|---:|"]
        lines += [f"| {name} | {seconds:.2f} |" for name, seconds in med.items()]
        lines += ["", f"gpubp / scikit-learn (both float32): {report['ratio_gpubp_to_sklearn']:.2f} "
                      f"(target {report['target']}: {'met' if report['met'] else 'NOT met'}; the matrix "
                      f"products alone / scikit-learn: {report['limit']:.2f}).", ""]
    path, report = _newest(results, "cpu_step-*.json")
    if report:
        lines += [f"## CPU: an epoch of gpubp.fit over its matrix products ({path.name})", ""]
        lines += Path(path).with_suffix(".md").read_text().splitlines()[2:] + [""]
    path, report = _newest(results, "device_check-*.json")
    if report:
        from benchmarks.device_report import markdown

        lines += [f"## GPU ({path.name})", ""] + markdown(report).splitlines()[1:] + [""]
    else:
        lines += ["## GPU", "", "No results yet: run `PYTHONPATH=. python benchmarks/device_check.py` on a GPU "
                  "machine (see README).", ""]
    out.write_text("\n".join(lines))
    return out
