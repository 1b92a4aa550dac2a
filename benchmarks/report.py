"""Turn a pytest-benchmark JSON file into Markdown tables and PNG plots.

    python benchmarks/report.py benchmarks/results/cpu-2core-epyc.json [--plots DIR] [--markdown FILE]

Step table: one row per (width, depth, batch) cell with each engine's median ms
per step, gpubp's ratio to the fastest peer (<= 1.00 means gpubp wins), the
same ratio and gpubp / NumPy from the round-robin timing of the cell, and
gpubp's achieved fraction of the sgemm throughput measured in the same run.
Kernel table: fused kernels against the NumPy expressions. Plots (needs
matplotlib): samples/s against batch size (from the round-robin timing when the
run has one), one panel per width and depth, one line per engine.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

PEERS = ("numpy", "torch", "jax")


def load(path):
    with open(path) as f:
        data = json.load(f)
    steps, kernels, others, fits = defaultdict(dict), defaultdict(dict), defaultdict(dict), {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        median = bench["stats"]["median"]
        if "fit_seconds_per_epoch" in info:
            fits[info["config"]] = info  # every engine's test holds the config's alternating result
        elif "width" not in info and "kernel" not in info and "engine" in info:
            others[bench["group"]][info["engine"]] = {"median": median, **info}
        elif "kernel" in info:
            kernels[info["kernel"]][info["engine"]] = median
        elif "width" in info:
            key = (info["device"], info["width"], info["depth"], info["batch"])
            steps[key][info["engine"]] = {"median": median, **info}
    return data, steps, kernels, others, fits


FIT_ENGINES = ("gpubp", "gpubp-mkl", "torch", "jax", "keras", "sklearn")
FIT_PEERS = ("torch", "jax", "keras", "sklearn")


def fit_table(fits):
    """Whole runs: median ms per epoch of each engine (engines alternating run by run), gpubp over the
    fastest peer, and each engine's test accuracy."""
    head = ["config (Adam, float32)"] + [f"{e} ms/epoch" for e in FIT_ENGINES] + \
        ["gpubp / fastest peer", "gpubp-mkl / fastest peer"] + [f"{e} acc." for e in FIT_ENGINES]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config, info in fits.items():
        seconds, accuracy = info["fit_seconds_per_epoch"], info["fit_accuracy"]
        fastest = min((seconds[e] for e in FIT_PEERS if e in seconds), default=float("nan"))
        ratios = [_ratio(seconds[e] / fastest) if e in seconds else "-" for e in ("gpubp", "gpubp-mkl")]
        row = [config] + [f"{seconds[e] * 1e3:.0f}" if e in seconds else "-" for e in FIT_ENGINES]
        row += ratios + [f"{accuracy[e]:.3f}" if e in accuracy else "-" for e in FIT_ENGINES]
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def other_tables(others):
    """One small table per remaining group (e.g. the scikit-learn comparison): engine, ms, accuracy."""
    text = []
    for group in sorted(others):
        rows = [f"**{group}**", "", "| engine | median ms | accuracy |", "|---|---|---|"]
        for engine, row in sorted(others[group].items(), key=lambda kv: kv[1]["median"]):
            accuracy = row.get("accuracy")
            rows.append(f"| {engine} | {row['median'] * 1e3:.1f} | "
                        + ("-" if accuracy is None else f"{accuracy:.4f}") + " |")
        text.append("\n".join(rows))
    return "\n\n".join(text)


def machine_line(data):
    m = data.get("machine_info", {})
    cpu = m.get("cpu", {})
    brand = cpu.get("brand_raw") or m.get("processor") or "unknown CPU"
    return (f"{data.get('datetime', '')[:10]}, {brand}, {cpu.get('count', '?')} cores, "
            f"Python {m.get('python_version', '?')}")


def _ratio(value):
    return "-" if value != value else f"{value:.2f}" + ("" if value <= 1.0 else " ✗")


def _round_robin_ratios(ms):
    """(gpubp / fastest peer, gpubp / numpy) from one cell's round-robin ms per engine."""
    peers = [ms[p] for p in PEERS if p in ms]
    if "gpubp" not in ms or not peers:
        return "-", "-"
    return _ratio(ms["gpubp"] / min(peers)), f"{ms['gpubp'] / ms['numpy']:.2f}" if "numpy" in ms else "-"


def step_table(steps):
    engines_seen = {e for cell in steps.values() for e in cell}
    peers = [p for p in PEERS if p in engines_seen]
    head = ["device", "width", "depth", "batch", "gpubp ms"] + [f"{p} ms" for p in peers]
    head += ["gpubp / fastest peer", "round-robin: gpubp / fastest peer", "round-robin: gpubp / numpy",
             "gpubp GFLOP/s", "sgemm GFLOP/s", "of sgemm"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(steps):
        cell = steps[key]
        if "gpubp" not in cell:
            continue
        g = cell["gpubp"]
        peer_times = [cell[p]["median"] for p in peers if p in cell]
        ratio = g["median"] / min(peer_times) if peer_times else float("nan")
        row = [key[0], key[1], key[2], key[3], f"{g['median'] * 1e3:.3f}"]
        row += [f"{cell[p]['median'] * 1e3:.3f}" if p in cell else "-" for p in peers]
        row += [_ratio(ratio)] + list(_round_robin_ratios(g.get("interleaved_ms", {})))
        row += [f"{g['gflops']:.0f}", f"{g['sgemm_gflops']:.0f}", f"{g['gemm_fraction']:.0%}"]
        rows.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(rows)


def kernel_table(kernels):
    rows = ["| kernel | fused ms | fused-parallel ms | NumPy expression ms | speedup (fused) |",
            "|---|---|---|---|---|"]
    for name in sorted(kernels):
        k = kernels[name]
        speed = k["numpy"] / k["fused"] if "numpy" in k and "fused" in k else float("nan")
        cells = [f"{k[e] * 1e3:.3f}" if e in k else "-" for e in ("fused", "fused-parallel", "numpy")]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {speed:.1f}x |")
    return "\n".join(rows)


def _samples_per_s(cell, engine, batch):
    """Throughput from the cell's round-robin timing when it has one, else pytest-benchmark's median."""
    ms = cell.get("gpubp", {}).get("interleaved_ms", {}).get(engine)
    return batch / (ms / 1e3) if ms else cell[engine]["samples_per_s"]


def plot(steps, directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    panels = sorted({(k[0], k[1], k[2]) for k in steps})
    written = []
    for device in sorted({p[0] for p in panels}):
        mine = [p for p in panels if p[0] == device]
        ncols = min(3, len(mine))
        nrows = -(-len(mine) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
        for ax in axes.flat[len(mine):]:
            ax.set_visible(False)
        for ax, (dev, width, depth) in zip(axes.flat, mine):
            cells = {k[3]: v for k, v in steps.items() if k[:3] == (dev, width, depth)}
            for engine in ["gpubp", *PEERS]:
                pts = sorted((b, _samples_per_s(c, engine, b)) for b, c in cells.items() if engine in c)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=engine, linewidth=2 if engine == "gpubp" else 1)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"width {width}, depth {depth}")
            ax.set_xlabel("batch size")
            ax.grid(True, which="both", alpha=0.3)
        for row in axes:
            row[0].set_ylabel("samples / s (one SGD step)")
        axes.flat[0].legend()
        fig.suptitle(f"MLP training step throughput on {device} (round-robin timing where recorded)")
        fig.tight_layout()
        path = directory / f"step-throughput-{device}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json")
    parser.add_argument("--plots", metavar="DIR", help="write PNG plots into DIR (needs matplotlib)")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables to FILE instead of stdout")
    args = parser.parse_args(argv)
    data, steps, kernels, others, fits = load(args.json)
    text = f"Measured {machine_line(data)}.\n"
    if fits:
        text += f"\n{fit_table(fits)}\n"
    if steps:
        text += f"\n{step_table(steps)}\n"
    if kernels:
        text += f"\n{kernel_table(kernels)}\n"
    if others:
        text += f"\n{other_tables(others)}\n"
    if args.markdown:
        Path(args.markdown).write_text(text)
    else:
        print(text)
    if args.plots:
        for path in plot(steps, args.plots):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
