"""Soak test (marked ``soak``, excluded from the default run): 10,000 training steps with validation
every epoch and a checkpoint every 10 epochs; memory stays flat and steps do not slow down.

    python -m pytest -m soak -s tests/test_soak.py
"""

import time

import numpy as np
import pytest

import gpubp as gb
from gpubp.callbacks import Callback
from helpers import requires_gpu

pytestmark = pytest.mark.soak


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("needs Linux /proc to read the RSS")


class Probe(Callback):
    """Records RSS, the CuPy pool size (GPU) and the epoch's step time after every epoch."""

    def __init__(self):
        self.rss, self.pool, self.seconds = [], [], []

    def on_epoch_end(self, epoch, logs):
        self.rss.append(rss_mib())
        self.seconds.append(logs["epoch_time"])
        if self.model.backend.name == "gpu":
            self.pool.append(self.model.backend.xp.get_default_memory_pool().total_bytes())


@pytest.mark.parametrize("backend_name", ["cpu", pytest.param("gpu", marks=[pytest.mark.gpu, requires_gpu])])
def test_ten_thousand_steps_flat_memory_no_slowdown(tmp_path, backend_name):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7040, 128)).astype(np.float32)
    y = (X[:, :8].sum(axis=1) > 0).astype(int) + 2 * (X[:, 8:16].sum(axis=1) > 0)  # 4 classes
    model = gb.Sequential([gb.Dense(256, activation="relu"), gb.Dense(128, activation="tanh"), gb.Dense(4)],
                          input_dim=128, backend=backend_name, seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=1e-3))
    probe = Probe()
    t0 = time.perf_counter()
    history = model.fit(X[:6400], y[:6400], batch_size=64, epochs=100, validation_data=(X[6400:], y[6400:]),
                        callbacks=[probe], checkpoint_dir=tmp_path, checkpoint_every=10, verbose=0)
    wall = time.perf_counter() - t0
    assert model.optimizer.iterations == 10_000
    early, late = np.median(probe.seconds[5:15]), np.median(probe.seconds[-10:])
    growth = max(probe.rss[10:]) - probe.rss[10]
    print(f"\nsoak {backend_name}: 10,000 steps in {wall:.1f} s; RSS after epoch 10 {probe.rss[10]:.1f} MiB, "
          f"max growth after that {growth:.2f} MiB; median epoch time epochs 6-15 {early * 1e3:.1f} ms, "
          f"last 10 {late * 1e3:.1f} ms; final val_accuracy {history.history['val_accuracy'][-1]:.3f}"
          + (f"; CuPy pool {probe.pool[10]} -> {probe.pool[-1]} bytes" if probe.pool else ""))
    assert growth < 5.0
    assert late < 1.25 * early
    if probe.pool:
        assert probe.pool[-1] == probe.pool[10]
