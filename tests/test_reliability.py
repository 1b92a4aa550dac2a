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
    allocated = sum(a.nbytes for a in [plan.x, plan.y, plan.weights, plan.loss_grad, plan.loss, *plan.outputs]) \
        + plan.scratch[0].base.nbytes
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


def _memory_of(model, mib, monkeypatch):
    monkeypatch.setattr(type(model.backend), "available_memory", lambda self: mib * 2**20)


def test_a_model_too_large_to_build_is_refused_before_its_weights_are_drawn(monkeypatch):
    model = gb.Sequential([gb.Dense(40000), gb.Dense(10)], backend="cpu")
    _memory_of(model, 100, monkeypatch)
    with pytest.raises(gb.InsufficientMemory, match=r"needs [\d,]+ MiB for the 1,600,440,010 parameters of a "
                                                     r"40000 -> 40000 -> 10 model, but only 100 MiB"):
        model.build(40000)
    assert not model.built


def test_validation_that_would_not_fit_is_refused_before_training(monkeypatch):
    """Evaluating 5000 validation rows takes a 4096-row plan: counted before the first step, not after an epoch."""
    model = gb.Sequential([gb.Dense(3000, "relu"), gb.Dense(10)], input_dim=20, backend="cpu", seed=0)
    model.compile(optimizer="sgd")
    X, y = np.zeros((256, 20), np.float32), np.zeros(256, int)
    needed_without_validation = model.inference_plan_bytes(64, np.zeros(64, int)) * 1.5
    _memory_of(model, 40, monkeypatch)
    assert needed_without_validation < 40 * 2**20 < model.inference_plan_bytes(4096, np.zeros(1, int))
    with pytest.raises(gb.InsufficientMemory, match="evaluation buffers"):
        model.fit(X, y, batch_size=64, verbose=0, validation_data=(np.zeros((5000, 20)), np.zeros(5000, int)))
    assert model.optimizer.iterations == 0
    model.fit(X, y, batch_size=64, verbose=0)  # without the validation it fits


def test_predict_with_a_batch_that_would_not_fit_is_refused(monkeypatch):
    model = gb.Sequential([gb.Dense(3000, "relu"), gb.Dense(10)], input_dim=20, backend="cpu", seed=0)
    _memory_of(model, 40, monkeypatch)
    with pytest.raises(gb.InsufficientMemory, match="a batch of 4096 rows.*pass a smaller batch_size"):
        model.predict(np.zeros((5000, 20)))
    assert model.predict(np.zeros((5000, 20)), batch_size=256).shape == (5000, 10)


_DOUBLE_CTRL_C = """
import os, signal, threading, time
import numpy as np
import gpubp as gb

X = np.random.default_rng(0).random((4000, 20)); y = (X[:, 0] > .5).astype(int)
model = gb.Sequential([gb.Dense(64, "relu"), gb.Dense(2)], input_dim=20, backend="cpu", seed=0)
model.compile(optimizer="adam")

class DoublePress(gb.Callback):
    def on_batch_end(self, batch, logs=None):
        if batch == 3:
            def press_twice():
                os.kill(os.getpid(), signal.SIGINT); time.sleep(0.001); os.kill(os.getpid(), signal.SIGINT)
            threading.Thread(target=press_twice).start()
            time.sleep(0.01)

try:
    model.fit(X, y, epochs=5, batch_size=32, verbose=0, callbacks=[DoublePress()])
    outcome = "returned"
    try:
        time.sleep(0.5)
    except KeyboardInterrupt:
        outcome = "KeyboardInterrupt in the caller's code"
except KeyboardInterrupt:
    outcome = "fit raised KeyboardInterrupt"
print(outcome, model.optimizer.iterations)
"""


def test_a_quick_double_ctrl_c_interrupts_fit_not_the_code_after_it():
    import subprocess
    import sys

    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _DOUBLE_CTRL_C], capture_output=True, text=True, timeout=120)
        assert done.stdout.split()[:4] == ["fit", "raised", "KeyboardInterrupt", "4"], done.stdout + done.stderr
