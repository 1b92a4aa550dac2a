"""Do the CPU thread pools fight inside one training step? Times gpubp's step with each BLAS (NumPy's
OpenBLAS, oneMKL) and with Numba's serial or parallel fused kernels, in alternation in one process:

    python benchmarks/thread_pools.py [--width 1024 --depth 3 --batch 1024]

Each BLAS keeps its own worker threads (OpenBLAS's pthreads, oneMKL's OpenMP), and Numba's parallel
kernels add a third pool; the kernels between two GEMMs run while the BLAS workers spin. Prints the
median ms per step of each combination, timed round-robin with a pause between turns.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import interleaved_seconds  # noqa: E402
from engines import gpubp_engine  # noqa: E402

from gpubp.kernels import blas, cpu  # noqa: E402


def combination(engine, library, parallel_kernels):
    """``engine``'s step run with ``library`` and serial or parallel fused kernels."""
    def step():
        chosen, threshold = blas.name(), cpu.PARALLEL_THRESHOLD
        blas.use(library)
        cpu.PARALLEL_THRESHOLD = 0 if parallel_kernels else 1 << 62
        try:
            return engine.step()
        finally:
            blas.use(chosen)
            cpu.PARALLEL_THRESHOLD = threshold

    return type(engine)(f"{library}{'+parallel' if parallel_kernels else ''}", "cpu", step, engine.sync)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args(argv)
    engine = gpubp_engine("cpu", args.batch, 784, args.width, args.depth, 10)
    libraries = ["openblas"] + (["mkl"] if blas.load_mkl() is not None else [])
    combos = {}
    for library in libraries:
        for parallel in (False, True):
            combo = combination(engine, library, parallel)
            combos[combo.name] = combo
    ms = {name: s * 1e3 for name, s in interleaved_seconds(combos, budget_seconds=8.0).items()}
    print(f"784-[{args.width}x{args.depth}]-10 ReLU, plain SGD, batch {args.batch}: median ms per step")
    for name, value in sorted(ms.items(), key=lambda kv: kv[1]):
        print(f"  {name:18s} {value:8.2f}")


if __name__ == "__main__":
    main()
