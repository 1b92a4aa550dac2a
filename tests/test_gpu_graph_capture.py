"""fit's steps really run as captured graphs: a capture that fails only logs a warning and leaves the plan on
eager steps (see ``Backend.run_step``), which gives the same numbers, so nothing else would notice it.

On a real GPU (``gpu``, skipped without one) the plans must hold ``cuda_device.DeviceGraph``s after a fit;
the same test on Numba's CUDA simulator (``gpu_sim``) checks the test itself, with ``SimulatedGraph``s.
"""

import logging

import numpy as np
import pytest

import gpubp as gb
from helpers import gpu_sim, requires_gpu

#: the class of a captured step in each backend's runtime
GRAPH_CLASS = {"gpu": "DeviceGraph", "gpu-sim": "SimulatedGraph"}
BACKENDS = [pytest.param("gpu", marks=[pytest.mark.gpu, requires_gpu]), pytest.param("gpu-sim", marks=gpu_sim)]


def _fit(backend, cuda_graphs, epochs=3):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((20, 5)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)
    model = gb.Sequential([gb.Dense(6, "tanh"), gb.Dense(3)], backend=backend, seed=3)
    model.cuda_graphs = cuda_graphs
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(0.02))
    # batches of 8, 8 and 4: two plans, each stepped at least 3 times (eager warm-up, capture, replays)
    history = model.fit(X, y, batch_size=8, epochs=epochs, verbose=0)
    return model, history.history["loss"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_a_few_fit_steps_every_plan_holds_a_captured_graph(backend, caplog):
    with caplog.at_level(logging.WARNING, logger="gpubp"):
        model, losses = _fit(backend, cuda_graphs=True)
    assert "CUDA graph capture failed" not in caplog.text
    graph_class = getattr(model.backend.runtime, GRAPH_CLASS[backend])
    y = model.prepare(np.zeros((1, 5)), np.zeros(1, dtype=int))[1]
    plans = [model.batch_plan(rows, y) for rows in (8, 4)]  # fit's plans, from the model's cache
    for plan in plans:
        assert plan.captured, "no step of this plan was captured"
        kinds = [type(graph).__name__ for graph in plan.captured.values()]
        assert all(type(graph) is graph_class for graph in plan.captured.values()), \
            f"expected {graph_class.__name__}s, got {kinds} (an eager stand-in: the capture failed and fell back)"
        assert model.backend.step_mode(plan) == "graph"
    # the replayed steps computed what eager steps compute
    eager_model, eager_losses = _fit(backend, cuda_graphs=False)
    y = eager_model.prepare(np.zeros((1, 5)), np.zeros(1, dtype=int))[1]
    assert all(eager_model.backend.step_mode(eager_model.batch_plan(rows, y)) == "eager" for rows in (8, 4))
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-5)
    np.testing.assert_allclose(_host(model), _host(eager_model), rtol=1e-5, atol=1e-6)


def _host(model):
    return np.concatenate([np.ravel(w) for w in model.get_weights()])
