"""The Keras-shaped callbacks: CSVLogger, ReduceLROnPlateau, LearningRateScheduler, ModelCheckpoint and the
batch-loss helpers. CPU only."""

import csv
import math
import os

import numpy as np
import pytest

import gpubp as gb
from gpubp.callbacks import Callback, CallbackList, RunningLoss, batch_loss
from helpers import random_batch

X, Y = random_batch(np.random.default_rng(0), 48, 4, 3, "softmax_cross_entropy")
XV, YV = random_batch(np.random.default_rng(1), 24, 4, 3, "softmax_cross_entropy")


def make_model(optimizer=None, dtype="float32", seed=0):
    model = gb.Sequential([gb.Dense(6, activation="tanh"), gb.Dense(3)], input_dim=4, backend="cpu", dtype=dtype,
                          seed=seed)
    return model.compile(loss="softmax_cross_entropy", optimizer=optimizer or gb.optim.SGD(lr=0.1),
                         metrics=["accuracy"])


class Script(gb.Callback):
    """Logs ``values[epoch]`` as ``key`` (list it before the callback that reads it)."""

    def __init__(self, values, key="score"):
        self.values, self.key = values, key

    def on_epoch_end(self, epoch, logs):
        logs[self.key] = self.values[epoch]


class FakeModel:
    """What the learning-rate callbacks use of a model: its optimizer."""

    def __init__(self, lr=1.0):
        self.optimizer = gb.optim.SGD(lr=lr)


def read_rows(path, separator=","):
    with open(path, newline="") as f:
        return list(csv.reader(f, delimiter=separator))


# ---------------------------------------------------------------- CSVLogger
def test_csv_logger_writes_one_row_per_epoch_with_every_history_key(tmp_path):
    path = tmp_path / "log.csv"
    history = make_model().fit(X, Y, epochs=3, batch_size=16, validation_data=(XV, YV), verbose=0,
                               callbacks=[gb.CSVLogger(path)])
    rows = read_rows(path)
    assert rows[0] == ["epoch"] + list(history.history)
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time", "samples_per_sec"} <= set(rows[0])
    assert [row[0] for row in rows[1:]] == ["0", "1", "2"]
    for key, column in zip(rows[0][1:], list(zip(*rows[1:]))[1:]):
        assert [float(v) for v in column] == history.history[key], key  # repr: floats round-trip exactly


def test_csv_logger_appends_under_one_header_and_keeps_a_last_line_without_a_line_break(tmp_path):
    path = tmp_path / "log.csv"
    model = make_model()
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[gb.CSVLogger(path, separator=";")])
    with open(path, "a") as f:
        f.write("2;0.5")  # a line CSVLogger never wrote, without a line break: kept as it is
    before = path.read_bytes()
    model.fit(X, Y, epochs=2, verbose=0, callbacks=[gb.CSVLogger(path, separator=";", append=True)])
    after = path.read_bytes()
    assert after.startswith(before + b"\n")
    rows = read_rows(path, ";")
    assert rows[0][0] == "epoch" and [row[0] for row in rows] == ["epoch", "0", "1", "2", "0", "1"]
    assert rows[3] == ["2", "0.5"]
    assert all(len(row) == len(rows[0]) for row in rows if row[0] != "2")
    # without append the file starts over
    model.fit(X, Y, epochs=1, verbose=0, callbacks=[gb.CSVLogger(path, separator=";")])
    assert [row[0] for row in read_rows(path, ";")] == ["epoch", "0"]


class KillAt(gb.Callback):
    """Raises at the end of epoch ``epoch``, after reading what the CSV file holds at that moment."""

    def __init__(self, epoch, path):
        self.epoch, self.path, self.seen = epoch, path, None

    def on_epoch_end(self, epoch, logs):
        if epoch == self.epoch:
            self.seen = read_rows(self.path)
            raise RuntimeError("killed")


def test_a_killed_run_leaves_a_valid_file_of_the_finished_epochs(tmp_path):
    path = tmp_path / "log.csv"
    kill = KillAt(2, path)
    with pytest.raises(RuntimeError, match="killed"):
        make_model().fit(X, Y, epochs=5, verbose=0, validation_data=(XV, YV), callbacks=[gb.CSVLogger(path), kill])
    for rows in (kill.seen, read_rows(path)):  # before any on_train_end closed the file, and after
        assert [row[0] for row in rows] == ["epoch", "0", "1", "2"]
        assert all(len(row) == len(rows[0]) for row in rows)
        assert all(math.isfinite(float(v)) for row in rows[1:] for v in row)


def test_a_resumed_run_continues_the_file_with_each_epoch_once(tmp_path):
    path, directory = tmp_path / "log.csv", tmp_path / "ckpt"
    make_model().fit(X, Y, epochs=3, verbose=0, checkpoint_dir=directory, checkpoint_every=2,
                     callbacks=[gb.CSVLogger(path, append=True)])
    assert [row[0] for row in read_rows(path)] == ["epoch", "0", "1", "2"]
    # the newest checkpoint is after epoch 2 of 3: the resumed run redoes the third epoch
    make_model().fit(X, Y, epochs=4, verbose=0, checkpoint_dir=directory, resume=True,
                     callbacks=[gb.CSVLogger(path, append=True)])
    rows = read_rows(path)
    assert [row[0] for row in rows] == ["epoch", "0", "1", "2", "3"]


def test_only_rank_0_writes_the_csv_file(tmp_path):
    logger = gb.CSVLogger(tmp_path / "log.csv")
    callbacks = CallbackList([logger], make_model(), rank=1)
    callbacks.on_train_begin()
    callbacks.on_epoch_end(0, {"loss": 1.0})
    callbacks.on_train_end()
    assert logger.rank == 1 and not (tmp_path / "log.csv").exists()


@pytest.mark.parametrize("kwargs", [{"separator": ""}, {"separator": ",,"}, {"separator": '"'}, {"append": "yes"}])
def test_csv_logger_refuses_bad_arguments(tmp_path, kwargs):
    with pytest.raises((gb.InvalidInputError, gb.InvalidTypeError)):
        gb.CSVLogger(tmp_path / "log.csv", **kwargs)


def test_csv_logger_refuses_a_directory_as_path(tmp_path):
    with pytest.raises(gb.InvalidInputError, match="path .* is a directory"):
        gb.CSVLogger(tmp_path)


def test_csv_logger_append_writes_a_header_into_an_empty_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes(b"")
    make_model().fit(X, Y, epochs=2, verbose=0, callbacks=[gb.CSVLogger(path, append=True)])
    assert [row[0] for row in read_rows(path)] == ["epoch", "0", "1"]


@pytest.mark.parametrize("content,pattern", [
    (b"epoch;loss;accuracy;epoch_time;samples_per_sec\n0;1.0;0.5;0.1;100.0\n", "separator=','"),  # another separator
    (b"time,value\n1,2\n", "is not a header"),  # not a CSVLogger file
    (b"\xff\xfeepoch,loss\n\x80\x81\n", "not UTF-8"),
])
def test_csv_logger_append_refuses_a_file_it_cannot_continue_and_leaves_it_unchanged(tmp_path, content, pattern):
    path = tmp_path / "log.csv"
    path.write_bytes(content)
    with pytest.raises(gb.InvalidInputError, match=pattern) as info:
        make_model().fit(X, Y, epochs=1, verbose=0, callbacks=[gb.CSVLogger(path, append=True)])
    assert "path" in str(info.value)
    assert path.read_bytes() == content


def test_csv_logger_append_refuses_other_columns_and_leaves_the_file_unchanged(tmp_path):
    path = tmp_path / "log.csv"
    content = b"epoch,loss,other\n0,1.0,2.0"  # no line break at the end either
    path.write_bytes(content)
    with pytest.raises(gb.InvalidInputError, match="columns"):
        make_model().fit(X, Y, epochs=1, verbose=0, callbacks=[gb.CSVLogger(path, append=True)])
    assert path.read_bytes() == content


# ---------------------------------------------------------------- ReduceLROnPlateau
def run_plateau(callback, values, lr=1.0):
    """Feed ``values`` as val_loss; returns (the lr logged each epoch, the lr after each epoch)."""
    model = FakeModel(lr)
    callback.set_model(model)
    callback.on_train_begin()
    logged, after = [], []
    for epoch, value in enumerate(values):
        logs = {"val_loss": value}
        callback.on_epoch_end(epoch, logs)
        logged.append(logs["lr"])
        after.append(model.optimizer.lr)
    return logged, after


def test_reduce_lr_on_plateau_reduces_when_keras_would():
    values = [1.0, 0.9, 0.9, 0.9, 0.95, 0.95, 0.95, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6]
    callback = gb.ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_delta=0.0, min_lr=0.2)
    logged, after = run_plateau(callback, values)
    assert after == [1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2]
    assert logged == [1, 1, 1, 1, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2]  # before the epoch's reduction
    assert callback.wait == 3 and callback.best == 0.5  # at min_lr the wait grows on


@pytest.mark.parametrize("cooldown,reduced_at", [(0, [1, 2, 3, 4, 5]), (2, [1, 3, 5])])
def test_reduce_lr_on_plateau_respects_cooldown(cooldown, reduced_at):
    _, after = run_plateau(gb.ReduceLROnPlateau(factor=0.5, patience=1, cooldown=cooldown), [1.0] * 6)
    lrs = [1.0] + after
    assert [e for e in range(6) if lrs[e + 1] < lrs[e]] == reduced_at


def test_reduce_lr_on_plateau_counts_min_delta_and_maximises_accuracy():
    # improvements smaller than min_delta do not count
    _, after = run_plateau(gb.ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.1), [1.0, 0.95, 0.91, 0.85])
    assert after == [1, 1, 0.5, 0.5]
    callback = gb.ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1)
    callback.set_model(FakeModel())
    callback.on_train_begin()
    for epoch, value in enumerate([0.5, 0.6, 0.7]):
        callback.on_epoch_end(epoch, {"val_accuracy": value})
    assert callback.model.optimizer.lr == 1.0 and callback.best == 0.7


def test_reduce_lr_on_plateau_scales_a_schedule():
    model = FakeModel()
    model.optimizer = gb.optim.SGD(lr=gb.schedules.StepDecay(1.0, step_size=10, gamma=0.1))
    callback = gb.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0)
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 1.0})  # patience 0: a reduction after every non-improving epoch
    callback.on_epoch_end(1, {"loss": 1.0})
    assert model.optimizer.lr_scale == 0.5
    model.optimizer.iterations = 10  # the schedule goes on, scaled
    assert model.optimizer.lr == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs", [{"factor": 1.0}, {"factor": 0.0}, {"factor": -0.5}, {"patience": -1},
                                    {"cooldown": 1.5}, {"min_lr": -1.0}, {"mode": "up"}, {"monitor": ""},
                                    {"verbose": 3}])
def test_reduce_lr_on_plateau_refuses_bad_arguments(kwargs):
    with pytest.raises((gb.InvalidInputError, gb.InvalidTypeError)):
        gb.ReduceLROnPlateau(**kwargs)


class Steps(gb.Callback):
    """Records the weight change of each step of epoch ``epoch`` and the weights before it."""

    def __init__(self, epoch):
        self.epoch, self.before, self.after = epoch, None, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.before = self.model.get_weights()

    def on_batch_end(self, batch, logs=None):
        if self.before is not None and self.after is None:
            self.after = self.model.get_weights()


def sgd_delta(weights, lr):
    """The weight change of one plain-SGD step of ``lr`` from ``weights`` on the whole of (X, Y)."""
    twin = make_model(gb.optim.SGD(lr=lr), dtype="float64")
    twin.set_weights(weights)
    twin.train_on_batch(X, Y)
    return [a - b for a, b in zip(twin.get_weights(), weights)]


def test_the_reduced_lr_drives_the_next_steps():
    steps = Steps(2)
    model = make_model(gb.optim.SGD(lr=0.1), dtype="float64")
    # score stalls at epoch 1 (patience 1): the rate halves for epoch 2
    callbacks = [Script([1.0, 2.0, 2.0]), gb.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1), steps]
    history = model.fit(X, Y, epochs=3, batch_size=len(X), shuffle=False, verbose=0, callbacks=callbacks)
    assert history.history["lr"] == [0.1, 0.1, 0.05]
    delta = [a - b for a, b in zip(steps.after, steps.before)]
    full = sgd_delta(steps.before, 0.1)
    for d, f in zip(delta, full):
        np.testing.assert_allclose(d, 0.5 * f, rtol=1e-9, atol=1e-15)


def fit_with_plateau(directory=None, epochs=6, resume=False):
    model = make_model(gb.optim.SGD(lr=0.1, momentum=0.5))
    plateau = gb.ReduceLROnPlateau(monitor="score", factor=0.5, patience=1, cooldown=2)
    history = model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0, checkpoint_dir=directory, resume=resume,
                        callbacks=[Script([1.0, 2.0, 2.0, 2.0, 2.0, 2.0]), plateau])
    return model, plateau, history


def test_a_resumed_run_continues_the_plateau_state(tmp_path):
    straight, plateau, history = fit_with_plateau()
    assert history.history["lr"] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    fit_with_plateau(tmp_path, epochs=3)  # stops in a cooldown
    resumed, plateau_resumed, history_resumed = fit_with_plateau(tmp_path, resume=True)
    assert history_resumed.history["lr"] == history.history["lr"]
    assert (plateau_resumed.wait, plateau_resumed.cooldown_counter, plateau_resumed.best) == \
        (plateau.wait, plateau.cooldown_counter, plateau.best)
    assert resumed.optimizer.lr_scale == straight.optimizer.lr_scale == 0.125
    for a, b in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- LearningRateScheduler
class LrSeen(gb.Callback):
    def __init__(self):
        self.lrs = []

    def on_batch_begin(self, batch, logs=None):
        self.lrs.append(self.model.optimizer.lr)


def test_learning_rate_scheduler_sets_each_epochs_rate():
    seen = LrSeen()
    calls = []

    def schedule(epoch, lr):
        calls.append((epoch, lr))
        return 0.1 if epoch == 0 else lr * 0.5

    history = make_model(gb.optim.SGD(lr=0.1)).fit(
        X, Y, epochs=3, batch_size=24, verbose=0, callbacks=[gb.callbacks.LearningRateScheduler(schedule), seen])
    assert [e for e, _ in calls] == [0, 1, 2]
    assert seen.lrs == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert history.history["lr"] == pytest.approx([0.1, 0.05, 0.025])


def test_learning_rate_scheduler_refuses_a_step_schedule_and_bad_rates():
    model = make_model(gb.optim.SGD(lr=gb.schedules.StepDecay(0.1, step_size=5)))
    with pytest.raises(gb.InvalidInputError, match="step schedule StepDecay"):
        model.fit(X, Y, verbose=0, callbacks=[gb.LearningRateScheduler(lambda epoch, lr: lr)])
    with pytest.raises(gb.InvalidInputError, match="finite number"):
        make_model().fit(X, Y, verbose=0, callbacks=[gb.LearningRateScheduler(lambda epoch, lr: math.nan)])
    with pytest.raises(gb.InvalidTypeError, match="schedule must be a function"):
        gb.LearningRateScheduler(0.1)


def test_learning_rate_scheduler_accepts_a_function_of_the_epoch_alone():
    seen = LrSeen()
    history = make_model(gb.optim.SGD(lr=0.1)).fit(
        X, Y, epochs=2, batch_size=24, verbose=0,
        callbacks=[gb.LearningRateScheduler(lambda epoch: 0.2 / (epoch + 1)), seen])
    assert seen.lrs == pytest.approx([0.2, 0.2, 0.1, 0.1])
    assert history.history["lr"] == pytest.approx([0.2, 0.1])
    # defaults and *args still take the two-argument form
    calls = []
    make_model().fit(X, Y, epochs=1, verbose=0, callbacks=[
        gb.LearningRateScheduler(lambda epoch, lr=None, *rest: calls.append((epoch, lr)) or 0.1)])
    assert calls == [(0, pytest.approx(0.1))]


@pytest.mark.parametrize("schedule", [lambda: 0.1, lambda epoch, lr, extra: 0.1, lambda *, epoch: 0.1])
def test_learning_rate_scheduler_refuses_a_function_of_another_form(schedule):
    with pytest.raises(gb.InvalidInputError, match="schedule must be a function"):
        gb.LearningRateScheduler(schedule)


@pytest.mark.parametrize("value", [math.inf, -0.1, "0.1", None, 10 ** 400],
                         ids=["inf", "negative", "text", "none", "huge_int"])
def test_learning_rate_scheduler_names_the_epoch_of_a_bad_rate(value):
    scheduler = gb.LearningRateScheduler(lambda epoch: 0.1 if epoch < 1 else value)
    with pytest.raises(gb.InvalidInputError, match=r"at epoch 1, schedule\(1\) must return a finite number"):
        make_model().fit(X, Y, epochs=2, verbose=0, callbacks=[scheduler])


# ---------------------------------------------------------------- ModelCheckpoint
class SaveEvery(gb.Callback):
    def __init__(self, directory):
        self.directory = directory

    def on_epoch_end(self, epoch, logs):
        self.model.save(os.path.join(self.directory, f"epoch{epoch}.npz"))


def test_model_checkpoint_keeps_the_best_epochs_model(tmp_path):
    best = tmp_path / "best.npz"
    checkpoint = gb.ModelCheckpoint(best, monitor="score", save_best_only=True)
    model = make_model()
    model.fit(X, Y, epochs=6, batch_size=16, verbose=0,
              callbacks=[Script([3.0, 1.0, 2.0, 0.5, 4.0, 1.0]), checkpoint, SaveEvery(tmp_path)])
    assert checkpoint.best == 0.5 and checkpoint.best_epoch == 3 and checkpoint.last_saved == str(best)
    loaded = gb.load(best, backend="cpu")
    for a, b in zip(loaded.get_weights(), gb.load(tmp_path / "epoch3.npz").get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), model.get_weights()))
    np.testing.assert_array_equal(loaded.predict(X), gb.load(tmp_path / "epoch3.npz").predict(X))


def test_model_checkpoint_formats_the_path_and_saves_every_epoch(tmp_path):
    pattern = str(tmp_path / "models" / "e{epoch:02d}-{val_loss:.4f}")
    model = make_model()
    history = model.fit(X, Y, epochs=2, verbose=0, validation_data=(XV, YV),
                        callbacks=[gb.ModelCheckpoint(pattern)])
    names = sorted(os.listdir(tmp_path / "models"))
    assert names == [f"e{e + 1:02d}-{v:.4f}.npz" for e, v in enumerate(history.history["val_loss"])]
    last = gb.load(tmp_path / "models" / names[-1])
    np.testing.assert_array_equal(last.predict(X), model.predict(X))


def test_model_checkpoint_saves_every_n_batches_and_names_unknown_fields(tmp_path):
    checkpoint = gb.ModelCheckpoint(tmp_path / "b{epoch}-{batch}.npz", save_freq=2)
    make_model().fit(X, Y, epochs=2, batch_size=16, verbose=0, callbacks=[checkpoint])  # 3 batches an epoch
    assert sorted(os.listdir(tmp_path)) == ["b1-2.npz", "b2-1.npz", "b2-3.npz"]
    with pytest.raises(gb.InvalidInputError, match="nope"):
        make_model().fit(X, Y, verbose=0, callbacks=[gb.ModelCheckpoint(tmp_path / "m{nope}.npz")])


@pytest.mark.parametrize("template,kwargs", [
    ("ck_{loss[0]}.npz", {}),  # TypeError: a float is not subscriptable
    ("ck_{epoch.foo}.npz", {}),  # AttributeError
    ("ck_{loss:d}.npz", {}),  # ValueError: a float has no 'd' format
    ("ck_{}.npz", {}),  # positional field
    ("ck_{epoch.npz", {}),  # unbalanced brace
    ("ck_{batch}.npz", {}),  # no batch with save_freq='epoch'
])
def test_model_checkpoint_refuses_a_bad_template_at_construction(tmp_path, template, kwargs):
    with pytest.raises(gb.InvalidInputError, match="path"):
        gb.ModelCheckpoint(str(tmp_path / template), **kwargs)


@pytest.mark.parametrize("template", ["ck_{epoch:>300}.npz", "missing-file/sub/ck.npz"])
def test_model_checkpoint_names_a_path_it_cannot_save_to(tmp_path, template):
    (tmp_path / "missing-file").write_text("a file, so no directory can be made under it")
    checkpoint = gb.ModelCheckpoint(str(tmp_path / template))
    with pytest.raises(gb.InvalidInputError, match="cannot save the model to path") as info:
        make_model().fit(X, Y, epochs=1, verbose=0, callbacks=[checkpoint])
    assert "ck" in str(info.value) and not isinstance(info.value, OSError)


def test_model_checkpoint_best_survives_a_resume(tmp_path):
    def run(epochs, resume):
        checkpoint = gb.ModelCheckpoint(tmp_path / "best.npz", monitor="score", save_best_only=True)
        make_model().fit(X, Y, epochs=epochs, verbose=0, checkpoint_dir=tmp_path / "ckpt", resume=resume,
                         callbacks=[Script([2.0, 0.5, 1.0, 3.0]), checkpoint])
        return checkpoint

    run(2, False)
    resumed = run(4, True)  # epochs 2 and 3 score worse than epoch 1: nothing new is saved
    assert resumed.best == 0.5 and resumed.best_epoch == 1 and resumed.last_saved == str(tmp_path / "best.npz")


# ---------------------------------------------------------------- batch logs
class Running(gb.Callback):
    def __init__(self):
        self.running, self.pairs, self.first = RunningLoss(), [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.running.reset()

    def on_batch_end(self, batch, logs=None):
        assert isinstance(logs["loss"], np.ndarray) and logs["loss"].shape == (1,)
        self.running.update(logs)
        if self.first is None:
            self.first = batch_loss(logs)

    def on_epoch_end(self, epoch, logs):
        self.pairs.append((self.running.result(), logs["loss"]))


def test_running_loss_matches_the_epoch_loss():
    running = Running()
    make_model().fit(X, Y, epochs=2, batch_size=20, verbose=0, callbacks=[running])  # batches of 20, 20, 8
    assert isinstance(running.first, float)
    for mean, epoch_loss in running.pairs:
        assert mean == pytest.approx(epoch_loss, rel=1e-12)
    assert math.isnan(RunningLoss().result())


class _BatchMetricsRecorder(Callback):
    batch_metrics = True

    def __init__(self):
        self.logs = []

    def on_batch_end(self, batch, logs=None):
        self.logs.append({k: v for k, v in logs.items() if k not in ("loss", "batch", "size")})


def test_on_batch_end_gets_running_metrics_when_a_callback_asks():
    """At a learning rate too small to change float32 weights, the running metrics after batch k are those of
    the first k + 1 batches, and after the last batch those of the whole training set."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(3)], input_dim=4, backend="cpu", seed=0)
    model.compile(optimizer=gb.optim.SGD(1e-30), metrics=["accuracy", "f1"])
    recorder = _BatchMetricsRecorder()
    model.fit(X, y, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[recorder])
    assert len(recorder.logs) == 8 and set(recorder.logs[0]) == {"accuracy", "f1"}
    for k, stop in enumerate([32, 64, 96, 100]):
        expected = model.evaluate(X[:stop], y[:stop])
        for name in ("accuracy", "f1"):
            assert recorder.logs[k][name] == pytest.approx(expected[name]), (k, name)
            assert recorder.logs[4 + k][name] == pytest.approx(expected[name]), (k, name)  # reset each epoch
    assert recorder.logs[0]["accuracy"] != recorder.logs[3]["accuracy"]
    plain = _BatchMetricsRecorder()
    plain.batch_metrics = False  # nobody asks: no metrics, no host reads per step
    model.fit(X, y, batch_size=32, epochs=1, verbose=0, callbacks=[plain])
    assert plain.logs == [{}] * 4
