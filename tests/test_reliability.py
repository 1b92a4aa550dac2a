"""Reliability around training: old model files still load, backend fallback, memory checked up front."""

import logging
from pathlib import Path

import numpy as np
import pytest

import gpubp as gb
from gpubp import backend as backend_module
from gpubp.buffers import BatchPlan, plan_bytes

FIXTURE = Path(__file__).parent / "fixtures" / "model-format-v1.npz"


def test_format_v1_fixture_still_loads_and_predicts_the_same():
    """A model file written by gpubp 0.1.0 (format version 1); later versions must keep reading it."""
    model = gb.load(FIXTURE, backend="cpu")
    assert isinstance(model.optimizer, gb.optim.SGD) and model.optimizer.momentum == 0.9
    assert model.scaler is not None
    probe = np.array([[0.5, -1.0, 2.0], [-0.3, 0.2, 0.1]])
    np.testing.assert_allclose(model.predict(probe), [[0.49521035, 0.5047896], [0.5590088, 0.44099113]], atol=1e-6)


def test_saved_files_get_normal_permissions(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = gb.load(FIXTURE, backend="cpu").save(tmp_path / "m.npz")
    finally:
        os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o644


def test_auto_falls_back_when_no_device_answers(monkeypatch, caplog):
    monkeypatch.setattr(backend_module, "probe_cupy",
                        lambda: (None, "CuPy is installed but no CUDA device answers (0 devices found)"))
    monkeypatch.setattr(backend_module, "_CACHE", {})
    with caplog.at_level(logging.INFO, logger="gpubp"):
        model = gb.Sequential([gb.Dense(2)], input_dim=2, backend="auto")
    assert model.backend.name == "cpu"
    assert len(caplog.records) == 1 and "no CUDA device answers" in caplog.records[0].getMessage()


def test_plan_bytes_matches_the_buffers_a_plan_allocates():
    b = gb.get_backend("cpu")
    plan = BatchPlan(b, 37, 11, [13, 7, 5], np.dtype(np.float32), (), np.dtype(np.int64))
    allocated = sum(a.nbytes for a in [plan.x, plan.y, plan.loss_grad, plan.loss, *plan.outputs]) + plan.scratch[0].base.nbytes
    assert plan_bytes(37, 11, [13, 7, 5], 4, (), 8) == allocated


def test_a_run_that_cannot_fit_says_so_before_it_starts(monkeypatch):
    model = gb.Sequential([gb.Dense(1024, activation="relu"), gb.Dense(10)], input_dim=784, backend="cpu")
    model.compile(loss="softmax_cross_entropy", optimizer="adam")
    monkeypatch.setattr(type(model.backend), "available_memory", lambda self: 100 * 2**20)
    X = np.zeros((20000, 784), np.float32)
    with pytest.raises(gb.InsufficientMemory, match=r"needs [\d,]+ MiB .* batch_size=20000 .* only 100 MiB"):
        model.fit(X, np.zeros(20000, int), batch_size=20000, verbose=0)
    assert model.optimizer.iterations == 0
    model.fit(X[:64], np.zeros(64, int), batch_size=64, verbose=0)  # a batch that fits trains
