"""Training on data streamed from .npy files chunk by chunk (gpubp.streaming, gpubp.data.NpyDataset)."""

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gpubp as gb
from gpubp.cli import main
from gpubp.data import NpyDataset
from helpers import gpu_sim


def data(n=600, d=5, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)


def files(tmp_path, X, y):
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    return str(tmp_path / "X.npy"), str(tmp_path / "y.npy")


def model(seed=1, backend="cpu", d=5):
    m = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=d, backend=backend, seed=seed)
    return m.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.01))


def same_weights(a, b):
    return all(np.array_equal(p, q) for p, q in zip(a.get_weights(), b.get_weights()))


def test_a_set_of_one_chunk_trains_exactly_as_in_memory(tmp_path):
    X, y = data()
    x_path, y_path = files(tmp_path, X, y)
    val = data(100, seed=5)
    in_memory = model()
    h_memory = in_memory.fit(X, y, batch_size=32, epochs=3, validation_data=val, verbose=0)
    streamed = model()
    h_streamed = streamed.fit(x_path, y_path, batch_size=32, epochs=3, validation_data=val, verbose=0)
    mapped = model()
    mapped.fit(np.load(x_path, mmap_mode="r"), np.load(y_path, mmap_mode="r"), batch_size=32, epochs=3,
               validation_data=val, verbose=0)
    assert same_weights(in_memory, streamed) and same_weights(in_memory, mapped)
    assert h_streamed.history["loss"] == h_memory.history["loss"]
    assert h_streamed.history["val_loss"] == h_memory.history["val_loss"]


def test_without_shuffling_many_chunks_train_exactly_as_in_memory(tmp_path):
    X, y = data(610)
    x_path, y_path = files(tmp_path, X, y)
    in_memory = model()
    h_memory = in_memory.fit(X, y, batch_size=32, epochs=2, shuffle=False, validation_split=0.1, verbose=0)
    streamed = model()
    h_streamed = streamed.fit(NpyDataset(x_path, y_path, chunk_rows=100), None, batch_size=32, epochs=2,
                              shuffle=False, validation_split=0.1, verbose=0)
    assert same_weights(in_memory, streamed)
    assert h_streamed.history == {**h_streamed.history, "loss": h_memory.history["loss"],
                                  "val_loss": h_memory.history["val_loss"]}


def batches_seen(x_path, n, chunk_rows, batch_size, epochs, seed):
    """The rows of every batch of every epoch, read off a linear model whose output is its input (the row
    number) and its target too, so that it learns nothing (its gradients are 0)."""
    m = gb.Sequential([gb.Dense(1)], input_dim=1, backend="cpu", dtype="float64", seed=seed)
    m.compile(loss="mse", optimizer=gb.optim.SGD(lr=0.01))
    m.set_weights([np.ones((1, 1)), np.zeros(1)])
    seen = []

    class Rows(gb.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append([])

        def on_batch_end(self, batch, logs=None):
            seen[-1].append(m.layer_outputs()[-1][:, 0].astype(int).tolist())

    m.fit(NpyDataset(x_path, chunk_rows=chunk_rows), np.arange(n, dtype=np.float64), batch_size=batch_size,
          epochs=epochs, callbacks=[Rows()], verbose=0)
    return seen


def test_chunks_are_visited_in_a_seeded_random_order_and_rows_shuffled_within_each(tmp_path):
    n, chunk_rows, batch_size = 1000, 120, 40  # 9 chunks, the last one of 40 rows
    np.save(tmp_path / "rows.npy", np.arange(n, dtype=np.float64).reshape(-1, 1))
    x_path = str(tmp_path / "rows.npy")
    seen = batches_seen(x_path, n, chunk_rows, batch_size, 3, seed=3)
    orders = []
    for epoch in seen:
        rows = [r for batch in epoch for r in batch]
        assert sorted(rows) == list(range(n))  # every row once per epoch
        assert rows != sorted(rows)
        for batch in epoch:
            assert len({r // chunk_rows for r in batch}) == 1  # a batch never straddles two chunks
        chunks = [r // chunk_rows for r in rows]
        order = [c for i, c in enumerate(chunks) if i == 0 or c != chunks[i - 1]]
        assert sorted(order) == list(range(9))  # each chunk's rows come together
        orders.append(order)
    assert orders[0] != list(range(9)) and orders[0] != orders[1]
    assert batches_seen(x_path, n, chunk_rows, batch_size, 3, seed=3) == seen  # the seed decides it all
    assert batches_seen(x_path, n, chunk_rows, batch_size, 1, seed=4)[0] != seen[0]


def test_a_resumed_streamed_run_is_bit_identical(tmp_path):
    X, y = data(500)
    x_path, y_path = files(tmp_path, X, y)
    dataset = NpyDataset(x_path, y_path, chunk_rows=64)
    straight = model()
    h_straight = straight.fit(dataset, None, batch_size=32, epochs=4, validation_split=0.2, verbose=0)
    model().fit(dataset, None, batch_size=32, epochs=2, validation_split=0.2, verbose=0,
                checkpoint_dir=tmp_path / "ckpt")
    resumed = model(seed=99)
    h_resumed = resumed.fit(dataset, None, batch_size=32, epochs=4, validation_split=0.2, verbose=0,
                            checkpoint_dir=tmp_path / "ckpt", resume=True)
    assert same_weights(straight, resumed)
    assert h_resumed.history["loss"] == h_straight.history["loss"]


def test_a_nan_in_the_middle_of_the_file_is_raised_with_its_row(tmp_path):
    X, y = data(3000)
    X[2345, 3] = np.nan
    x_path, y_path = files(tmp_path, X, y)
    with pytest.raises(gb.InvalidInputError, match=r"X \('.*X\.npy'\), rows 2000 to 2499, holds NaN or Inf "
                                                   r"values in 1 of 500 rows \(first: row 2345\)"):
        model().fit(NpyDataset(x_path, y_path, chunk_rows=500), None, batch_size=50, epochs=1, verbose=0)


def test_a_bad_label_is_raised_with_its_row(tmp_path):
    X, y = data(3000)
    y[1777] = 7
    x_path, y_path = files(tmp_path, X, y)
    with pytest.raises(gb.InvalidInputError, match=r"y \('.*y\.npy'\), rows 1500 to 1999,: class labels must "
                                                   r"lie in \[0, 1\].*\(first: row 1777\)"):
        model().fit(NpyDataset(x_path, y_path, chunk_rows=500), None, batch_size=50, epochs=2, verbose=0)


@pytest.mark.parametrize("fault", ["deleted", "truncated"])
def test_a_file_deleted_or_truncated_during_training_is_raised_naming_it(tmp_path, fault):
    X, y = data(3000)
    x_path, y_path = files(tmp_path, X, y)

    class Vandal(gb.callbacks.Callback):  # after the first step, while the reader reads the next chunks
        def on_batch_end(self, batch, logs=None):
            if os.path.exists(x_path):
                if fault == "deleted":
                    os.remove(x_path)
                else:
                    with open(x_path, "r+b") as f:
                        f.truncate(1000)

    message = r"cannot read rows" if fault == "deleted" else r"the file ends before row"
    with pytest.raises(gb.InvalidInputError, match=r"X \('.*X\.npy'\).*" + message):
        model().fit(NpyDataset(x_path, y_path, chunk_rows=500), None, batch_size=50, epochs=2, verbose=0,
                    callbacks=[Vandal()])


def test_the_next_chunk_is_read_while_the_current_one_trains(tmp_path, monkeypatch):
    X, y = data(4 * 96)
    x_path, y_path = files(tmp_path, X, y)
    read, stepped = [], []
    slow_read = NpyDataset.read

    def read_slowly(self, start, stop, out=None):
        read.append((time.perf_counter(), start))
        time.sleep(0.15)
        return slow_read(self, start, stop, out)

    class SlowSteps(gb.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            time.sleep(0.05)
            stepped.append(time.perf_counter())

    monkeypatch.setattr(NpyDataset, "read", read_slowly)
    history = model().fit(NpyDataset(x_path, y_path, chunk_rows=96), None, batch_size=32, epochs=1,
                          callbacks=[SlowSteps()], verbose=0)
    # 4 chunks of 3 steps: 0.15 s of reading and 0.15 s of steps each; 1.2 s one after the other
    assert history.history["epoch_time"][0] < 0.95
    reads = [t for t, _ in read[1:]]  # the first read is fit's look at the targets' layout
    assert len(reads) == 4 and len(stepped) == 12
    for chunk in range(2, 4):  # read from the first step of the chunk before on, not after its last one
        assert reads[chunk] < stepped[3 * (chunk - 1)]


def test_the_cli_trains_on_npy_files(tmp_path, capsys):
    X, y = data(1000)
    x_path, y_path = files(tmp_path, X, y)
    assert main(["train", "--dataset", x_path, "--target", y_path, "--epochs", "2", "--backend", "cpu",
                 "--json"]) == 0
    out = capsys.readouterr().out
    assert '"test_accuracy"' in out


@pytest.mark.parametrize("shuffle", [pytest.param(False, marks=gpu_sim), pytest.param(True, marks=gpu_sim)])
def test_streaming_on_the_simulated_gpu_matches_the_cpu(tmp_path, shuffle):
    X, y = data(90)
    x_path, y_path = files(tmp_path, X, y)
    results = []
    for backend in ("cpu", "gpu-sim"):
        m = model(backend=backend)
        m.fit(NpyDataset(x_path, y_path, chunk_rows=32), None, batch_size=16, epochs=2, shuffle=shuffle, verbose=0)
        results.append(m.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import gpubp as gb
    from gpubp.data import NpyDataset

    def status(key):  # kB, from /proc/self/status
        return int(next(line for line in open("/proc/self/status") if line.startswith(key)).split()[1])

    x_path, y_path = sys.argv[1:3]
    m = gb.Sequential([gb.Dense(8, activation="relu"), gb.Dense(2)], input_dim=128, backend="cpu", seed=0)
    m.compile(loss="softmax_cross_entropy", optimizer="adam")
    m.fit(np.zeros((4096, 128), np.float32), np.zeros(4096, np.int64), batch_size=1024, verbose=0)  # warm up
    before = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the memory in use now
    history = m.fit(NpyDataset(x_path, y_path, chunk_rows=8192), None, batch_size=1024, epochs=1, verbose=0)
    print(before // 1024, status("VmHWM:") // 1024, history.history["samples_per_sec"][0])
""")


def test_a_set_larger_than_the_memory_limit_trains_within_it(tmp_path):
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to measure the peak memory of fit alone")
    n, d = 1_200_000, 128  # 614 MB of float32 on disk
    X = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(0)
    for start in range(0, n, 100_000):
        X[start:start + 100_000] = rng.standard_normal((100_000, d), dtype=np.float32)
    X.flush()
    del X
    np.save(tmp_path / "y.npy", rng.integers(0, 2, n))
    run = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "X.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    before, peak, speed = run.stdout.split()
    # a chunk is 4 MiB; the limit: 64 MiB above the memory in use before fit, a tenth of the file
    assert int(peak) - int(before) < 64, run.stdout
    print(f"RSS {before} MiB before fit, peak {peak} MiB during it; {float(speed):,.0f} samples/s")
