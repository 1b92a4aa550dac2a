"""Shared machinery of the benchmark suite: engine parameters, adaptive rounds, the in-run GEMM peak."""

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from engines import has, sgemm_engine  # noqa: E402

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


def engine_params(include_gpu=True):
    """pytest params ``(engine, device)`` with skip marks that say why a peer is absent."""
    no_torch = pytest.mark.skipif(not has("torch"), reason="PyTorch not installed (pip install 'gpubp[bench]')")
    no_jax = pytest.mark.skipif(not has("jax"), reason="JAX not installed (pip install 'gpubp[bench]')")
    no_gpu = pytest.mark.skipif(_cupy is None, reason=f"no GPU backend: {_GPU_MISSING}")
    params = [
        pytest.param(("gpubp", "cpu"), id="gpubp-cpu"),
        pytest.param(("numpy", "cpu"), id="numpy-cpu"),
        pytest.param(("torch", "cpu"), id="torch-cpu", marks=no_torch),
        pytest.param(("jax", "cpu"), id="jax-cpu", marks=no_jax),
    ]
    if include_gpu:
        params += [
            pytest.param(("gpubp", "gpu"), id="gpubp-gpu", marks=no_gpu),
            pytest.param(("torch", "gpu"), id="torch-gpu",
                         marks=pytest.mark.skipif(not _torch_cuda(), reason="PyTorch has no CUDA device")),
            pytest.param(("jax", "gpu"), id="jax-gpu",
                         marks=pytest.mark.skipif(not _jax_gpu(), reason="JAX has no GPU device")),
        ]
    return params


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
        key = (device, m, k, n)
        if key not in _GEMM_CACHE:
            engine = sgemm_engine(device, m, k, n)
            _GEMM_CACHE[key] = 2.0 * m * k * n / _seconds_per_call(engine.step, engine.sync, min_time=1.0) / 1e9
        return _GEMM_CACHE[key]

    return measure


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
