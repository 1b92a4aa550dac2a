"""The steady-state training step allocates nothing (CPU: traced memory; GPU: CuPy pool size)."""

import tracemalloc

import numpy as np
import pytest

import gpubp as gb
from helpers import requires_gpu


def _model_and_plan(backend_name, optimizer):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(256, 32)), rng.integers(0, 10, size=256)
    model = gb.Sequential([gb.Dense(64, activation="sigmoid"), gb.Dense(64, activation="relu"),
                           gb.Dense(64, activation="tanh"), gb.Dense(10)], input_dim=32, backend=backend_name, seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=optimizer)
    X, y, _ = model.prepare(X, y)
    plan = model.batch_plan(64, y)
    plan.gather(X, y, model.backend.xp.arange(64))
    return model, plan


@pytest.mark.parametrize("optimizer", [lambda: gb.optim.Adam(weight_decay=1e-4),
                                       lambda: gb.optim.SGD(lr=0.01, momentum=0.9, nesterov=True),
                                       lambda: gb.optim.SGD(lr=0.01, weight_decay=1e-4)])
def test_cpu_step_does_not_grow_traced_memory(optimizer):
    model, plan = _model_and_plan("cpu", optimizer())
    for _ in range(10):  # warm-up: compile kernels, fill caches
        model.train_step(plan)
    tracemalloc.start()
    try:
        for _ in range(100):  # traced warm-up: interpreter free lists and ctypes caches settle
            model.train_step(plan)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(1000):
            model.train_step(plan)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a leak of even one byte per step would show as >= 1000 bytes; the interpreter's
    # free lists move a few dozen bytes either way
    assert current - base < 256, f"traced memory grew by {current - base} bytes over 1000 steps"
    assert peak - base < 4096, f"a step allocated {peak - base} bytes transiently"


@pytest.mark.gpu
@requires_gpu
def test_gpu_step_keeps_the_memory_pool_constant():
    import cupy

    model, plan = _model_and_plan("gpu", gb.optim.Adam())
    for _ in range(10):
        model.train_step(plan)
    cupy.cuda.Device().synchronize()
    pool = cupy.get_default_memory_pool()
    before = pool.total_bytes()
    for _ in range(100):
        model.train_step(plan)
    cupy.cuda.Device().synchronize()
    assert pool.total_bytes() == before
