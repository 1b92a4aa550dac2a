"""Shared machinery of the benchmark suite: engine parameters, adaptive rounds, round-robin timing,
the in-run GEMM peak."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engines import cpu_sgemm_engines, has, sgemm_engine  # noqa: E402

from gpubp.backend import probe_cupy  # noqa: E402

_cupy, _GPU_MISSING = probe_cupy()


def _torch_cuda():
    if not has("torch"):
        return False
    import torch

    return torch.cuda.is_available()


def _jax_gpu():
    if not has("jax"):
        return False
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


ENGINES = (("gpubp", "cpu"), ("numpy", "cpu"), ("torch", "cpu"), ("jax", "cpu"),
           ("gpubp", "gpu"), ("torch", "gpu"), ("jax", "gpu"))


def missing(engine, device):
    """Why ``engine`` cannot run on ``device`` here, or None when it can."""
    if engine in ("torch", "jax") and not has(engine):
        return f"{'PyTorch' if engine == 'torch' else 'JAX'} not installed (pip install 'gpubp[bench]')"
    if device == "cpu":
        return None
    if engine == "gpubp":
        return None if _cupy is not None else f"no GPU backend: {_GPU_MISSING}"
    if engine == "torch":
        return None if _torch_cuda() else "PyTorch has no CUDA device"
    if engine == "jax":
        return None if _jax_gpu() else "JAX has no GPU device"
    return f"{engine} runs on the CPU only"


def engine_params(include_gpu=True):
    """pytest params ``(engine, device)`` with skip marks that say why a peer is absent."""
    params = []
    for engine, device in ENGINES:
        if device == "gpu" and not include_gpu:
            continue
        reason = missing(engine, device)
        params.append(pytest.param((engine, device), id=f"{engine}-{device}",
                                   marks=pytest.mark.skipif(reason is not None, reason=reason or "")))
    return params


def interleaved_seconds(engines, budget_seconds=3.0, min_rounds=3, max_rounds=7, settle_seconds=0.25):
    """Median seconds per call of each ``{name: Engine}``, timed round-robin (A B C A B C ...).

    On a shared machine a burst of load from other processes slows whichever
    engine is being timed at that moment; in alternation every engine sees the
    same bursts, so their ratios hold even when absolute times wander. Before
    each engine's turn the process sleeps ``settle_seconds`` and runs one
    untimed step: the worker threads of the engine that ran before (OpenBLAS's
    spin for about 0.1 s after a call, PyTorch's OpenMP and XLA's pools too)
    would otherwise steal the cores from the next one. A turn then times at
    least 50 ms of steps; the number of rounds fits ``budget_seconds`` of timing.
    """
    per_call = {name: _seconds_per_call(e.step, e.sync, min_time=0.05) for name, e in engines.items()}
    calls = {name: max(1, int(0.05 / t)) for name, t in per_call.items()}
    round_seconds = sum(per_call[name] * calls[name] for name in engines)
    rounds = int(min(max_rounds, max(min_rounds, budget_seconds / round_seconds)))
    samples = {name: [] for name in engines}
    for _ in range(rounds):
        for name, engine in engines.items():
            time.sleep(settle_seconds)
            engine.step()
            engine.sync()
            t0 = time.perf_counter()
            for _ in range(calls[name]):
                engine.step()
            engine.sync()
            samples[name].append((time.perf_counter() - t0) / calls[name])
    return {name: sorted(times)[len(times) // 2] for name, times in samples.items()}


def _seconds_per_call(fn, sync, min_time=0.2, min_calls=3):
    """Best seconds per call of ``fn`` (after one warm-up) over at least ``min_time`` seconds and ``min_calls`` calls."""
    fn()
    sync()
    best, spent, calls = float("inf"), 0.0, 0
    while spent < min_time or calls < min_calls:
        calls += 1
        t0 = time.perf_counter()
        fn()
        sync()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return best


_GEMM_CACHE = {}


@pytest.fixture(scope="session")
def sgemm_gflops():
    """``sgemm_gflops(device, m, k, n)``: GFLOP/s of an (m,k)@(k,n) float32 GEMM measured in this run."""

    def measure(device, m, k, n):
        """On the CPU the best over every BLAS of the machine (see :func:`sgemm_by_blas`)."""
        key = (device, m, k, n)
        if key not in _GEMM_CACHE:
            if device == "cpu":
                _GEMM_CACHE[key] = max(sgemm_by_blas(m, k, n).values())
            else:
                engine = sgemm_engine(device, m, k, n)
                _GEMM_CACHE[key] = 2.0 * m * k * n / _seconds_per_call(engine.step, engine.sync, min_time=1.0) / 1e9
        return _GEMM_CACHE[key]

    return measure


_BY_BLAS = {}


def sgemm_by_blas(m, k, n):
    """GFLOP/s of an (m,k)@(k,n) float32 GEMM through each BLAS on this machine (OpenBLAS, oneMKL,
    PyTorch's), timed round-robin in this run; measured once per shape."""
    key = (m, k, n)
    if key not in _BY_BLAS:
        seconds = interleaved_seconds(cpu_sgemm_engines(m, k, n), budget_seconds=1.5, settle_seconds=0.1)
        _BY_BLAS[key] = {name: 2.0 * m * k * n / s / 1e9 for name, s in seconds.items()}
    return _BY_BLAS[key]


def run_timed(benchmark, engine, target_seconds=1.0):
    """Time ``engine.step`` with pytest-benchmark; rounds scale so a cell takes about ``target_seconds``.

    Returns the median seconds per step, or None when benchmarks are disabled
    (then the step runs exactly once, as a test).
    """

    def one_step():
        result = engine.step()
        engine.sync()
        return result

    if benchmark.disabled:
        return benchmark(one_step), None
    estimate = _seconds_per_call(engine.step, engine.sync, min_time=0.3)  # also warms caches and clocks
    iterations = max(1, int(2e-3 / estimate))  # batch calls of sub-millisecond steps against timer noise
    rounds = int(min(200, max(5, target_seconds / (estimate * iterations))))
    result = benchmark.pedantic(one_step, rounds=rounds, iterations=iterations, warmup_rounds=1)
    return result, benchmark.stats.stats.median
