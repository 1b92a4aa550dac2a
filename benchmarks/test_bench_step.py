"""One SGD training step of a 784 -> [width]*depth -> 10 ReLU MLP (softmax cross-entropy, float32)
across batch sizes and depths, gpubp beside plain NumPy, PyTorch eager and JAX jit.

Each cell is timed twice: by pytest-benchmark, one engine after another, and
round-robin across all engines of the device at once (``interleaved_ms`` in
every test's ``extra_info``), which is the fairer comparison on a shared machine.
"""

import math

import pytest

from conftest import ENGINES, engine_params, interleaved_seconds, missing, run_timed, sgemm_by_blas
from engines import flops_per_step, gpubp_engine, jax_engine, numpy_engine, torch_engine

N_IN, N_OUT = 784, 10
BATCHES = [32, 128, 512, 2048, 8192]
GRID = [(1024, d, b) for d in (1, 2, 4, 8) for b in BATCHES] + [(64, d, b) for d in (2, 4) for b in BATCHES]


def build(engine, device, batch, width, depth):
    if engine == "gpubp":
        return gpubp_engine(device, batch, N_IN, width, depth, N_OUT)
    if engine == "numpy":
        return numpy_engine(batch, N_IN, width, depth, N_OUT)
    if engine == "torch":
        return torch_engine(device, batch, N_IN, width, depth, N_OUT)
    return jax_engine(device, batch, N_IN, width, depth, N_OUT)


_INTERLEAVED = {}


def interleaved_ms(device, width, depth, batch):
    """ms per step of every engine available on ``device`` for one cell, timed round-robin
    (see ``interleaved_seconds``); measured once per cell, at its first timed test."""
    key = (device, width, depth, batch)
    if key not in _INTERLEAVED:
        engines = {name: build(name, dev, batch, width, depth)
                   for name, dev in ENGINES if dev == device and missing(name, dev) is None}
        _INTERLEAVED[key] = {name: s * 1e3 for name, s in interleaved_seconds(engines).items()}
    return _INTERLEAVED[key]


@pytest.mark.parametrize("engine_device", engine_params())
@pytest.mark.parametrize("width,depth,batch", GRID, ids=[f"w{w}-d{d}-b{b}" for w, d, b in GRID])
def test_sgd_step(benchmark, sgemm_gflops, engine_device, width, depth, batch):
    engine_name, device = engine_device
    if benchmark.disabled and batch > 512 and (depth, batch) != (1, BATCHES[-1]):
        pytest.skip("large cells run with --benchmark-enable; the smoke pass runs batches up to 512 and one "
                    "of the largest batch")
    engine = build(engine_name, device, batch, width, depth)
    benchmark.group = f"step width={width} depth={depth} batch={batch}"
    loss, seconds = run_timed(benchmark, engine)
    assert math.isfinite(float(loss.reshape(-1)[0]) if getattr(loss, "ndim", 0) else float(loss))
    if seconds is None:
        return
    flops = flops_per_step(batch, N_IN, width, depth, N_OUT)
    peak = sgemm_gflops(device, batch, width, width)
    benchmark.extra_info.update({
        "engine": engine_name, "device": device, "width": width, "depth": depth, "batch": batch,
        "flops_per_step": flops, "gflops": flops / seconds / 1e9, "samples_per_s": batch / seconds,
        "sgemm_gflops": peak, "gemm_fraction": flops / seconds / 1e9 / peak,
        "sgemm_by_blas": sgemm_by_blas(batch, width, width) if device == "cpu" else {},
        "interleaved_ms": interleaved_ms(device, width, depth, batch),
    })
