"""Training checkpoints (gpubp.checkpoint): round trip, bit-identical resume, rotation,
crash safety and rejection of bad files. CPU only."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gpubp as gb
from gpubp.checkpoint import latest_checkpoint, read_checkpoint, restore_checkpoint, save_checkpoint
from gpubp.directory_lock import LOCK_NAME
from gpubp.loading import load_checkpoint_model
from gpubp.data import StandardScaler
from gpubp.errors import InvalidInputError, ModelFileError


def make_moons(n=400, noise=0.2, seed=0):
    """Two interleaving half circles, numpy only."""
    rng = np.random.default_rng(seed)
    n0 = n // 2
    t0 = rng.uniform(0, np.pi, n0)
    t1 = rng.uniform(0, np.pi, n - n0)
    X = np.concatenate([np.c_[np.cos(t0), np.sin(t0)], np.c_[1 - np.cos(t1), 0.5 - np.sin(t1)]])
    X += rng.normal(scale=noise, size=X.shape)
    y = np.r_[np.zeros(n0, dtype=np.int64), np.ones(n - n0, dtype=np.int64)]
    return X, y


def make_optimizer(kind):
    if kind == "adam":
        return gb.optim.Adam(lr=0.01)
    return gb.optim.SGD(lr=0.05, momentum=0.9, nesterov=True)


def make_model(kind="adam", seed=0, hidden=16):
    model = gb.Sequential([gb.Dense(hidden, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu", seed=seed)
    model.compile(loss="softmax_cross_entropy", optimizer=make_optimizer(kind))
    return model


@pytest.fixture(scope="module")
def data():
    return make_moons()


def test_round_trip_restores_everything(tmp_path, data):
    X, y = data
    model = make_model("adam")
    model.set_scaler(StandardScaler().fit(X))
    history = model.fit(X, y, batch_size=32, epochs=2, verbose=0)
    path = save_checkpoint(tmp_path, model, 2, callbacks={"History_0": history.state_dict(), "Big_1": {"n": 2 ** 100}})
    assert os.path.basename(path) == "ckpt-epoch000002.npz"
    assert latest_checkpoint(tmp_path) == path

    fresh = make_model("adam", seed=123)  # a different seed: weights and rng are restored anyway
    assert not np.array_equal(fresh.params, model.params)
    info = restore_checkpoint(path, fresh)
    assert info["epoch"] == 2
    assert info["callbacks"]["Big_1"]["n"] == 2 ** 100
    assert info["callbacks"]["History_0"]["history"]["loss"] == history.history["loss"]
    assert np.array_equal(fresh.params, model.params)
    for w_fresh, w in zip(fresh.get_weights(), model.get_weights()):
        assert np.array_equal(w_fresh, w)
    for name in ("m", "v"):
        assert np.array_equal(fresh.optimizer.state[name], model.optimizer.state[name])
    assert fresh.optimizer.iterations == model.optimizer.iterations == 2 * 13
    assert fresh.shuffle_rng.bit_generator.state == model.shuffle_rng.bit_generator.state
    assert fresh.shuffle_rng.permutation(50).tolist() == model.shuffle_rng.permutation(50).tolist()
    assert (fresh.scaler is None) == (model.scaler is None)
    if model.scaler is not None:
        assert np.array_equal(fresh.scaler.mean_, model.scaler.mean_)
    np.testing.assert_array_equal(fresh.predict(X), model.predict(X))

    loaded = load_checkpoint_model(path, backend="cpu")
    assert np.array_equal(loaded.params, model.params)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.checkpoint_info["epoch"] == 2


def test_callback_arrays_round_trip(tmp_path, data):
    model = make_model("adam")
    best = model.params.copy() * 2
    state = {"EarlyStopping_1": {"best": float("inf"), "wait": 1, "best_params": best}}
    path = save_checkpoint(tmp_path, model, 0, callbacks=state)
    info = restore_checkpoint(path, make_model("adam"))
    restored = info["callbacks"]["EarlyStopping_1"]
    assert np.array_equal(restored.pop("best_params"), best)
    assert restored == {"best": float("inf"), "wait": 1}


@pytest.mark.parametrize("kind", ["adam", "sgd_momentum"])
def test_resume_is_bit_identical(tmp_path, data, kind):
    X, y = data
    straight = make_model(kind, seed=7)
    straight.fit(X, y, batch_size=32, epochs=4, verbose=0)

    first = make_model(kind, seed=7)
    first.fit(X, y, batch_size=32, epochs=2, verbose=0)
    save_checkpoint(tmp_path, first, 2)
    del first
    resumed = make_model(kind, seed=99)
    info = restore_checkpoint(latest_checkpoint(tmp_path), resumed)
    assert info["epoch"] == 2
    resumed.fit(X, y, batch_size=32, epochs=2, verbose=0)

    assert np.array_equal(resumed.params, straight.params)
    for name in straight.optimizer.state_names:
        assert np.array_equal(resumed.optimizer.state[name], straight.optimizer.state[name])
    assert resumed.optimizer.iterations == straight.optimizer.iterations


def test_without_restore_the_runs_differ(tmp_path, data):
    """Sanity check of the test above: resuming without the checkpoint does not match."""
    X, y = data
    straight = make_model("adam", seed=7)
    straight.fit(X, y, batch_size=32, epochs=4, verbose=0)
    first = make_model("adam", seed=7)
    first.fit(X, y, batch_size=32, epochs=2, verbose=0)
    resumed = make_model("adam", seed=7)
    resumed.set_weights(first.get_weights())  # weights only, like a plain model file
    resumed.fit(X, y, batch_size=32, epochs=2, verbose=0)
    assert not np.array_equal(resumed.params, straight.params)


def test_keep_rotation(tmp_path):
    model = make_model("adam")
    paths = [save_checkpoint(tmp_path, model, epoch, keep=3) for epoch in range(1, 7)]
    names = sorted(n for n in os.listdir(tmp_path) if n != LOCK_NAME)
    assert names == ["ckpt-epoch000004.npz", "ckpt-epoch000005.npz", "ckpt-epoch000006.npz"]
    assert latest_checkpoint(tmp_path) == paths[-1]
    # keep=1 keeps only the one just written, even when it is not the highest epoch
    path = save_checkpoint(tmp_path, model, 2, keep=1)
    assert [n for n in os.listdir(tmp_path) if n != LOCK_NAME] == ["ckpt-epoch000002.npz"]
    assert latest_checkpoint(tmp_path) == path
    with pytest.raises(InvalidInputError):
        save_checkpoint(tmp_path, model, 3, keep=0)
    with pytest.raises(InvalidInputError):
        save_checkpoint(tmp_path, model, 3, callbacks={"X_0": {"x": object()}})


def test_latest_skips_truncated_corrupted_and_temp_files(tmp_path):
    model = make_model("adam")
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    good = save_checkpoint(tmp_path, model, 1, keep=None)
    newer = save_checkpoint(tmp_path, model, 2, keep=None)
    with open(newer, "rb") as f:
        blob = f.read()
    with open(newer, "wb") as f:  # truncated newest
        f.write(blob[: len(blob) // 2])
    # a stray temp file and a foreign file that sort as newer
    with open(tmp_path / ".ckpt-tmp-abc.tmp", "wb") as f:
        f.write(blob)
    with open(tmp_path / "ckpt-epoch000009.npz", "wb") as f:
        f.write(b"not a zip file at all")
    # a flipped byte in the parameters of an otherwise complete archive
    corrupt = bytearray(blob)
    start = bytes(corrupt).find(b"model.params.npy")
    corrupt[start + 300] ^= 0xFF
    with open(tmp_path / "ckpt-epoch000003.npz", "wb") as f:
        f.write(bytes(corrupt))
    with pytest.raises(ModelFileError):
        restore_checkpoint(tmp_path / "ckpt-epoch000003.npz", make_model("adam"))
    with pytest.raises(ModelFileError):
        restore_checkpoint(newer, make_model("adam"))
    assert latest_checkpoint(tmp_path) == good
    # a mismatching model makes latest_checkpoint(model=...) skip everything
    assert latest_checkpoint(tmp_path, model=make_model("adam", hidden=8)) is None
    assert latest_checkpoint(tmp_path, model=make_model("adam")) == good


CRASH_WRITER = textwrap.dedent("""
    import sys
    import gpubp as gb
    from gpubp.checkpoint import latest_checkpoint, read_checkpoint, restore_checkpoint, save_checkpoint

    model = gb.Sequential([gb.Dense(512, activation="relu"), gb.Dense(4)], input_dim=256, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer="adam")
    path = latest_checkpoint(sys.argv[1])  # resume like fit(resume=True) would
    epoch = restore_checkpoint(path, model)["epoch"] if path else 0
    print("ready", flush=True)
    while True:
        epoch += 1
        model.params[:1] = epoch
        save_checkpoint(sys.argv[1], model, epoch, callbacks={"Writer_0": {"epoch": epoch}}, keep=2)
""")


def test_crash_safety_under_sigkill(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(CRASH_WRITER)
    directory = tmp_path / "ckpts"
    rnd = random.Random(1234)
    model = gb.Sequential([gb.Dense(512, activation="relu"), gb.Dense(4)], input_dim=256, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer="adam")
    seen, last_epoch = 0, 0
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(directory)], stdout=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"ready"  # past the imports
            time.sleep(rnd.uniform(0.05, 0.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        path = latest_checkpoint(directory)
        if path is None:  # killed before the first write finished: no checkpoint file at all
            assert not directory.exists() or not any(n.startswith("ckpt-") for n in os.listdir(directory))
            continue
        seen += 1
        info = restore_checkpoint(path, model)
        assert info["callbacks"]["Writer_0"]["epoch"] == info["epoch"]
        assert model.params[0] == info["epoch"]
        assert info["epoch"] >= last_epoch  # every restart resumed from the last good checkpoint
        last_epoch = info["epoch"]
    assert seen >= 4
    assert last_epoch > 8


def _rewrite_meta(src, dst, change):
    with np.load(src, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    change(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


def test_rejects_bad_files(tmp_path):
    model = make_model("adam")
    path = save_checkpoint(tmp_path / "c", model, 1)

    # a pickled object array, as meta and as params: refused, never unpickled
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"format": "gpubp-checkpoint"}], dtype=object))
    with pytest.raises(ModelFileError, match="metadata"):
        restore_checkpoint(pickled, model)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["params"] = np.array([object()] * 3, dtype=object)
    np.savez(tmp_path / "pickled2.npz", **arrays)
    with pytest.raises(ModelFileError):
        restore_checkpoint(tmp_path / "pickled2.npz", model)

    # a future format version
    future = _rewrite_meta(path, tmp_path / "future.npz", lambda m: m.update(format_version=99))
    with pytest.raises(ModelFileError, match="newer"):
        restore_checkpoint(future, model)

    # a different architecture, dtype or optimizer
    with pytest.raises(ModelFileError, match="configuration"):
        restore_checkpoint(path, make_model("adam", hidden=8))
    with pytest.raises(ModelFileError, match="configuration"):
        restore_checkpoint(path, make_model("sgd_momentum"))
    other = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu",
                          dtype="float64", seed=0).compile(optimizer=gb.optim.Adam(lr=0.01))
    with pytest.raises(ModelFileError, match="configuration"):
        restore_checkpoint(path, other)
    uncompiled = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu")
    with pytest.raises(ModelFileError, match="uncompiled"):
        restore_checkpoint(path, uncompiled)

    # a plain model file from io.save
    model_file = model.save(str(tmp_path / "model.npz"))
    with pytest.raises(ModelFileError, match="model file, not a training checkpoint"):
        restore_checkpoint(model_file, model)

    # garbage, a missing file, a bare .npy
    (tmp_path / "junk.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelFileError):
        restore_checkpoint(tmp_path / "junk.npz", model)
    with pytest.raises(ModelFileError, match="does not exist"):
        restore_checkpoint(tmp_path / "nope.npz", model)
    np.save(tmp_path / "bare.npy", np.zeros(3))
    with pytest.raises(ModelFileError, match="bare"):
        restore_checkpoint(tmp_path / "bare.npy", model)


def test_failed_restore_leaves_model_untouched(tmp_path, data):
    X, y = data
    trained = make_model("adam")
    trained.fit(X, y, batch_size=32, epochs=1, verbose=0)
    path = save_checkpoint(tmp_path, trained, 1)
    bad = _rewrite_meta(path, tmp_path / "bad.npz",
                        lambda m: m["state"]["model"].update(shuffle_rng={"bit_generator": "MT19937", "state": {}}))
    model = make_model("adam", seed=5)
    before = model.params.copy(), model.shuffle_rng.bit_generator.state
    with pytest.raises(ModelFileError, match="shuffle"):
        restore_checkpoint(bad, model)
    assert np.array_equal(model.params, before[0])
    assert model.shuffle_rng.bit_generator.state == before[1]
    assert model.optimizer.iterations == 0


# --------------------------------------------------------------------------- one writer per directory
_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from gpubp.directory_lock import locked
    with locked(sys.argv[1], exclusive=True):
        print("locked", flush=True)
        time.sleep(60)
""")


def _lock_in_another_process(directory):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_and_a_killed_one_leaves_no_stuck_lock(tmp_path):
    """While one process trains into a directory, another one's fit and save_checkpoint are refused (naming
    the holder) and its files are untouched; once the holder is killed (SIGKILL), the directory is usable."""
    model = make_model("adam")
    first = save_checkpoint(tmp_path, model, 1)
    holder = _lock_in_another_process(tmp_path)
    try:
        with open(tmp_path / f".ckpt-tmp-{holder.pid}-inflight.tmp", "wb") as f:
            f.write(b"the holder's in-flight write")
        with pytest.raises(InvalidInputError, match=f"in use by another training run \\(process {holder.pid}\\)"):
            save_checkpoint(tmp_path, model, 2)
        X, y = make_moons()
        with pytest.raises(InvalidInputError, match="in use by another training run"):
            model.fit(X, y, epochs=1, verbose=0, checkpoint_dir=tmp_path, resume=True)
        assert (tmp_path / f".ckpt-tmp-{holder.pid}-inflight.tmp").exists()
        assert latest_checkpoint(tmp_path) == first
    finally:
        holder.kill()
        holder.wait()
    assert save_checkpoint(tmp_path, model, 2).endswith("ckpt-epoch000002.npz")
    assert not any(name.startswith(".ckpt-tmp-") for name in os.listdir(tmp_path))  # the dead writer's leftover


def test_two_fits_in_one_process_on_one_directory_are_refused(tmp_path):
    model, other = make_model("adam"), make_model("adam")
    X, y = make_moons()

    class FitAnother(gb.Callback):
        def on_epoch_end(self, epoch, logs=None):
            with pytest.raises(InvalidInputError, match="in this process"):
                other.fit(X, y, epochs=1, verbose=0, checkpoint_dir=tmp_path, resume=True)

    model.fit(X, y, epochs=1, verbose=0, checkpoint_dir=tmp_path, callbacks=[FitAnother()])
    assert latest_checkpoint(tmp_path) is not None


def test_saving_through_a_symlink_writes_its_target_and_dead_writers_leftovers_go(tmp_path):
    model = make_model("adam")
    target = tmp_path / "models" / "current.npz"
    target.parent.mkdir()
    link = tmp_path / "model.npz"
    link.symlink_to(target)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftover = target.parent / f".tmp-{dead}-killed.tmp"
    leftover.write_bytes(b"x" * 100)
    live = target.parent / f".tmp-{os.getpid()}-writing.tmp"
    live.write_bytes(b"y")
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    gb.load(target, backend="cpu")
    assert not leftover.exists() and live.exists()  # only the leftover of a writer that is gone


# --------------------------------------------------------------------------- the run record
def _meta_and_iterations(path):
    meta, state = read_checkpoint(path)
    return meta, state["optimizer"]["iterations"]


def test_an_inconsistent_step_count_is_refused_without_the_metadata_digest(tmp_path, data):
    """1 epoch of 4 steps then ``iterations`` 999999, the metadata digest dropped: refused, never resumed."""
    X, y = data
    make_model("adam").fit(X[:128], y[:128], batch_size=32, epochs=1, verbose=0, checkpoint_dir=tmp_path / "c")
    path = latest_checkpoint(tmp_path / "c")
    assert _meta_and_iterations(path)[0]["run"].items() >= {"features": 2, "steps_per_epoch": 4,
                                                            "start_iterations": 0}.items()

    def tamper(meta):
        meta.pop("meta_sha256")
        meta["state"]["optimizer"]["iterations"] = 999999

    _rewrite_meta(path, path, tamper)
    with pytest.raises(ModelFileError, match=r"step count of 999999 after 1 epochs of 4 steps from step 0: expected 4"):
        restore_checkpoint(path, make_model("adam"))
    assert latest_checkpoint(tmp_path / "c") is None


class _StopAt(gb.Callback):
    def __init__(self, epoch, batch):
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            self.model.stop_training = True


class _ExtraStep(gb.Callback):
    """Moves the step count outside the epochs' steps: a record of the first step cannot hold then."""

    def on_epoch_end(self, epoch, logs):
        self.model.train_on_batch(self.X, self.y)


def test_runs_that_stop_early_or_start_trained_record_a_consistent_step_count(tmp_path, data):
    X, y = data  # 400 rows in batches of 32: 13 steps per epoch
    model = make_model("adam")
    model.fit(X, y, batch_size=32, epochs=1, verbose=0)  # trained before: the run's epoch 0 begins at step 13
    model.fit(X, y, batch_size=32, epochs=5, verbose=0, checkpoint_dir=tmp_path / "a", callbacks=[_StopAt(1, 2)])
    meta, iterations = _meta_and_iterations(latest_checkpoint(tmp_path / "a"))
    assert (meta["epoch"], meta["stopped"], iterations) == (2, True, 13 + 13 + 3)
    assert meta["run"].items() >= {"features": 2, "steps_per_epoch": 13, "start_iterations": 13}.items()

    first = make_model("adam").fit(X, y, batch_size=32, epochs=3, verbose=0, checkpoint_dir=tmp_path / "b",
                                   callbacks=[_StopAt(0, 4)])
    meta, iterations = _meta_and_iterations(latest_checkpoint(tmp_path / "b"))
    assert first.epoch == [0] and (meta["epoch"], iterations) == (1, 5)
    # no epoch ran whole: unless fit says, the steps per epoch are unknown
    assert meta["run"].get("steps_per_epoch") in (None, 13) and meta["run"].get("start_iterations", 0) == 0

    extra = _ExtraStep()
    extra.X, extra.y = X[:8], y[:8]
    make_model("adam").fit(X, y, batch_size=32, epochs=2, verbose=0, checkpoint_dir=tmp_path / "c", callbacks=[extra])
    meta, iterations = _meta_and_iterations(latest_checkpoint(tmp_path / "c"))
    assert iterations == 2 * 14 and meta["run"]["steps_per_epoch"] == 13 and "start_iterations" not in meta["run"]


def test_save_checkpoint_refuses_a_run_record_its_state_contradicts(tmp_path, data):
    from gpubp.checkpoint import run_record

    X, y = data
    model = make_model("adam")
    model.fit(X, y, batch_size=32, epochs=2, verbose=0)
    run = dict(run_record(400, 2, 32), start_iterations=0)
    assert run == {"rows": 400, "features": 2, "batch_size": 32, "steps_per_epoch": 13, "start_iterations": 0}
    path = save_checkpoint(tmp_path, model, 2, run=run)
    info = restore_checkpoint(path, make_model("adam"))
    assert info["run"] == run and info["path"] == path
    for epoch, bad, message in [(3, run, "expected 39 \\(inconsistent iterations\\)"),
                                (2, dict(run, batch_size=64), "batches of 64 rows and 13 steps per epoch for 400"),
                                (2, dict(run, features=3), "3 features for a model of input_dim 2"),
                                (2, dict(run, shuffled=True), "invalid run record")]:
        with pytest.raises(InvalidInputError, match="cannot checkpoint this run: the run record .*" + message):
            save_checkpoint(tmp_path, model, epoch, run=bad)
    assert sorted(os.listdir(tmp_path)) == sorted([LOCK_NAME, os.path.basename(path)])
    assert run_record(10, 2, 64) == {"rows": 10, "features": 2, "batch_size": 10, "steps_per_epoch": 1}


def test_check_resumed_run_names_every_value_that_differs():
    from gpubp.checkpoint import check_resumed_run, run_record

    restored = {"path": "ck/ckpt-epoch000002.npz", "run": dict(run_record(1600, 2, 64), start_iterations=0)}
    check_resumed_run(restored, run_record(1600, 2, 64))  # the same run
    check_resumed_run(restored, run_record(1600, 2, 64) | {"start_iterations": 9})  # only the data and batches count
    check_resumed_run({"path": "old.npz", "run": {}}, run_record(5, 3, 1))  # an older gpubp's: nothing to compare
    with pytest.raises(ModelFileError, match=r"checkpoint 'ck/ckpt-epoch000002.npz' was written by a run on other "
                                             r"data or batches \(batch size: checkpoint 64 vs this run 7; steps per "
                                             r"epoch: checkpoint 25 vs this run 229\): resume with the same"):
        check_resumed_run(restored, run_record(1600, 2, 7))
    with pytest.raises(ModelFileError, match=r"\(training rows: checkpoint 1600 vs this run 1500; steps per epoch: "
                                             r"checkpoint 25 vs this run 24\)"):
        check_resumed_run(restored, run_record(1500, 2, 64))
    with pytest.raises(ModelFileError, match=r"\(features: checkpoint 2 vs this run 3\)"):
        check_resumed_run(restored, run_record(1600, 3, 64))
    with pytest.raises(ModelFileError, match=r"\(steps per epoch: checkpoint 25 vs this run 13\)"):
        check_resumed_run({"run": {"features": 2, "steps_per_epoch": 25}}, run_record(1600, 2, 128))


def test_checkpoint_files_that_do_not_read_back_are_never_overwritten_by_a_new_run(tmp_path):
    """Checkpoints of a newer format (or damaged) are refused, not skipped, by a fresh run and by a resume
    that finds nothing else: starting over would overwrite and rotate them away."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 4)), rng.integers(0, 3, 64)
    directory = tmp_path / "ck"
    directory.mkdir()
    for epoch in range(1, 5):
        (directory / f"ckpt-epoch{epoch:06d}.npz").write_bytes(b"PK\x03\x04 from a newer version" * epoch)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    def fit(resume):
        model = gb.Sequential([gb.Dense(8, "tanh"), gb.Dense(3)], input_dim=4, backend="cpu", seed=0)
        model.compile(optimizer=gb.optim.Adam())
        model.fit(X, y, epochs=2, batch_size=16, verbose=0, checkpoint_dir=directory, resume=resume,
                  checkpoint_keep=2)

    with pytest.raises(InvalidInputError, match="already holds checkpoints"):
        fit(resume=False)
    with pytest.raises(ModelFileError, match="cannot resume from the newest checkpoint"):
        fit(resume=True)
    assert {p.name: p.read_bytes() for p in directory.iterdir() if p.name.startswith("ckpt")} == before
