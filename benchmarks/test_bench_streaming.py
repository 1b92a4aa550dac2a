"""Training on data streamed from a ``.npy`` file against the same data in memory.

400,000 x 128 float32 rows (205 MB) of a synthetic two-class problem, a 128-64-2 ReLU net, Adam, batch
512: gpubp's ``fit`` on the arrays in memory, on the file streamed in 8,192-row chunks and on the file
streamed in the default chunks, alternating run by run (``fit_engines.alternating_runs``, rotated order,
a pause before each run) over ``ROUNDS`` rounds of ``EPOCHS`` epochs. Each test's ``extra_info`` holds
every mode's median seconds per epoch and samples per second (``streaming_seconds_per_epoch``,
``streaming_samples_per_sec``). With benchmarks disabled (the default test run) each mode trains one
epoch on a 4,096-row file, as a test.
"""

import numpy as np
import pytest

from fit_engines import alternating_runs

import gpubp as gb
from gpubp.data import NpyDataset

ROWS, FEATURES, BATCH = 400_000, 128, 512
EPOCHS, ROUNDS = 2, 5
MODES = ("in_memory", "streamed_8192", "streamed_default")


def write_data(directory, rows):
    """``X.npy`` (rows, FEATURES) float32 and ``y.npy`` int64 labels of a noisy linear rule."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, FEATURES), dtype=np.float32)
    y = (X[:, :8].sum(axis=1) + 0.5 * rng.standard_normal(rows) > 0).astype(np.int64)
    np.save(directory / "X.npy", X)
    np.save(directory / "y.npy", y)
    return directory / "X.npy", directory / "y.npy"


class StreamingRun:
    """One mode's training run: ``run(X, y, epochs)`` fits a fresh model on ``source()`` (the mode's own
    data; the arguments of :func:`alternating_runs` are ignored) and returns it."""

    def __init__(self, source):
        self.source = source

    def run(self, X, y, epochs):
        model = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(2)], input_dim=FEATURES,
                              backend="cpu", seed=0)
        model.compile(optimizer=gb.optim.Adam(1e-3))
        model.fit(*self.source(), batch_size=BATCH, epochs=epochs, verbose=0)
        return model


def runs(x_path, y_path):
    X, y = np.load(x_path), np.load(y_path)
    return {"in_memory": StreamingRun(lambda: (X, y)),
            "streamed_8192": StreamingRun(lambda: (NpyDataset(x_path, y_path, chunk_rows=8192), None)),
            "streamed_default": StreamingRun(lambda: (NpyDataset(x_path, y_path), None))}


_MEASURED = {}


def alternating(directory):
    if not _MEASURED:
        modes = runs(*write_data(directory, ROWS))
        times, _ = alternating_runs(modes, None, None, EPOCHS, ROUNDS)
        for name, seconds in times.items():
            median = sorted(seconds)[len(seconds) // 2]
            _MEASURED[name] = {"seconds_per_epoch": median, "samples_per_sec": ROWS / median,
                               "range_samples_per_sec": [ROWS / max(seconds), ROWS / min(seconds)]}
    return _MEASURED


@pytest.mark.parametrize("mode", MODES)
def test_streaming_fit(benchmark, tmp_path_factory, mode):
    benchmark.group = "fit streamed from .npy vs in memory"
    directory = tmp_path_factory.mktemp("streaming")
    if benchmark.disabled:  # a smoke pass: one epoch of a small file
        model = benchmark.pedantic(runs(*write_data(directory, 4096))[mode].run, args=(None, None, 1),
                                   rounds=1, iterations=1)
        assert model.built
        return
    measured = alternating(directory)
    run = runs(*write_data(directory, ROWS))[mode]
    benchmark.pedantic(run.run, args=(None, None, 1), rounds=1, iterations=1)
    benchmark.extra_info.update({
        "mode": mode, "rows": ROWS, "batch": BATCH, "epochs": EPOCHS, "rounds": ROUNDS,
        "streaming_seconds_per_epoch": {name: m["seconds_per_epoch"] for name, m in measured.items()},
        "streaming_samples_per_sec": {name: m["samples_per_sec"] for name, m in measured.items()},
        "streaming_range_samples_per_sec": {name: m["range_samples_per_sec"] for name, m in measured.items()}})
