"""The scaling model of data-parallel training: per-step compute against the ring all-reduce of the gradient.

A model, not a measurement: compute time is FLOPs / an assumed sustained GEMM rate, the all-reduce time
is NCCL's ring cost ``2 (p - 1) / p * bytes / bus bandwidth``. Prints the table of ``docs/distributed.md``:

    python benchmarks/scaling_model.py [--hidden 4096 --depth 8 --batch 65536 --ranks 8]
"""

from __future__ import annotations

import argparse

#: Sustained dense GEMM rates assumed for one NVIDIA H100 SXM (FLOP/s), about 75% of the datasheet peaks
#: (67 TFLOP/s float32, 495 TF32, 989 bf16): the precisions of ``set_float32_matmul_precision``.
GEMM_RATES = {"highest (float32)": 50e12, "high (TF32)": 370e12, "medium (bf16)": 740e12}
#: All-reduce bus bandwidths (bytes/s): NVLink 4 through NVSwitch inside one H100 node (NCCL's all-reduce
#: bus bandwidth there is about 450 GB/s), and one 400 Gb/s InfiniBand NIC per GPU at line rate.
LINKS = {"NVLink (8 GPUs, one node)": 450e9, "InfiniBand 400 Gb/s (8 nodes)": 50e9}
#: Share of a step's FLOPs in the backward pass (two GEMMs per layer against the forward's one).
BACKWARD_SHARE = 2 / 3


def parameters(n_in, hidden, depth, n_out):
    widths = [n_in] + [hidden] * depth + [n_out]
    return sum(a * b + b for a, b in zip(widths, widths[1:]))


def step_flops(n_params, batch):
    """Forward 2, backward 4 FLOPs per parameter and sample (the input layer's input gradient included:
    an upper bound by under 1%)."""
    return 6 * n_params * batch


def all_reduce_seconds(nbytes, ranks, bandwidth):
    return 2 * (ranks - 1) / ranks * nbytes / bandwidth


def efficiency(compute, reduce, overlap):
    """Compute time over step time. Without overlap the all-reduce follows the backward pass; with ideal
    overlap (per-layer buckets all-reduced in reverse order while the backward pass goes on) only the part
    of the all-reduce longer than the backward pass adds to the step."""
    if not overlap:
        return compute / (compute + reduce)
    backward = BACKWARD_SHARE * compute
    return compute / (compute - backward + max(backward, reduce))


def table(n_in=784, hidden=4096, depth=8, n_out=10, batch=65536, ranks=8):
    n_params = parameters(n_in, hidden, depth, n_out)
    nbytes = 4 * n_params
    flops = step_flops(n_params, batch // ranks)
    lines = [f"{n_in}-[{hidden}x{depth}]-{n_out}: {n_params / 1e6:.1f} M parameters, float32 gradient "
             f"{nbytes / 2**20:.0f} MiB; global batch {batch} on {ranks} GPUs ({batch // ranks} per GPU): "
             f"{flops / 1e12:.2f} TFLOP per GPU and step", "",
             "| GEMM precision | link | compute (ms) | all-reduce (ms) | efficiency, no overlap | "
             "with overlap |", "|---|---|---|---|---|---|"]
    for precision, rate in GEMM_RATES.items():
        compute = flops / rate
        for link, bandwidth in LINKS.items():
            reduce = all_reduce_seconds(nbytes, ranks, bandwidth)
            lines.append(f"| {precision} | {link} | {compute * 1e3:.1f} | {reduce * 1e3:.1f} | "
                         f"{efficiency(compute, reduce, False):.0%} | {efficiency(compute, reduce, True):.0%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--outputs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=65536)
    parser.add_argument("--ranks", type=int, default=8)
    args = parser.parse_args(argv)
    print(table(args.inputs, args.hidden, args.depth, args.outputs, args.batch, args.ranks))


if __name__ == "__main__":
    main()
