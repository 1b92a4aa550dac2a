"""fit's lifecycle around errors: callbacks, an unread divergence, state files and resumes that must not lie."""

import json
import warnings

import numpy as np
import pytest

import gpubp as gb
from gpubp.checkpoint import read_checkpoint
from gpubp.io import digest
from helpers import random_batch


def make_model(optimizer="adam", seed=0):
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(3)], input_dim=5, backend="cpu", seed=seed)
    return model.compile(loss="softmax_cross_entropy", optimizer=optimizer)


DATA = random_batch(np.random.default_rng(0), 64, 5, 3, "softmax_cross_entropy")


class Boom(gb.Callback):
    def on_batch_end(self, batch, logs=None):
        if batch == 5:
            raise RuntimeError("boom")


def test_an_aborted_fit_leaves_no_unread_failure_behind():
    """A failure recorded but not yet read when fit raises: the step count is rewound to it."""
    model = make_model(gb.optim.Adam(lr=1e38))
    before = model.params.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(RuntimeError, match="boom"):
            model.fit(*DATA, batch_size=8, verbose=0, callbacks=[Boom()], check_every=100)
    assert model.status.read() is None
    # Adam's first step overflows float32 at lr=1e38: the run's state is the one before it
    assert model.optimizer.iterations == 0
    np.testing.assert_array_equal(model.params, before)


class BadBegin(gb.Callback):
    def on_train_begin(self, logs=None):
        raise RuntimeError("begin failed")


class BadEnd(gb.Callback):
    def on_train_end(self, logs=None):
        raise RuntimeError("end failed")


class Record(gb.Callback):
    ended = False

    def on_train_end(self, logs=None):
        self.ended = True


def test_the_first_error_is_the_one_raised():
    with pytest.raises(RuntimeError, match="begin failed"):
        make_model().fit(*DATA, verbose=0, callbacks=[BadBegin(), gb.EarlyStopping(monitor="loss")])
    record = Record()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(gb.TrainingDiverged), pytest.warns(RuntimeWarning, match="end failed"):
            make_model(gb.optim.Adam(lr=1e38)).fit(*DATA, epochs=20, verbose=0, callbacks=[BadEnd(), record])
    assert record.ended  # later callbacks still ended
    with pytest.raises(RuntimeError, match="end failed"):
        make_model().fit(*DATA, verbose=0, callbacks=[BadEnd()])


def test_callback_state_keys_cannot_collide(tmp_path):
    class Mine(gb.Callback):
        def state_dict(self):
            return {"a.b": np.zeros(2), "a": {"b": np.ones(2)}}

    with pytest.raises(gb.InvalidInputError, match="state keys"):
        make_model().fit(*DATA, verbose=0, callbacks=[Mine()], checkpoint_dir=tmp_path)


def test_resuming_an_early_stopped_run_trains_no_further(tmp_path):
    X, y = DATA
    straight = make_model()
    stop = gb.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
    history = straight.fit(X, y, epochs=5, verbose=0, callbacks=[stop], checkpoint_dir=tmp_path)
    assert len(history.epoch) == 2
    resumed = make_model(seed=9)
    history = resumed.fit(X, y, epochs=5, verbose=0, checkpoint_dir=tmp_path, resume=True,
                          callbacks=[gb.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)])
    assert len(history.epoch) == 2
    np.testing.assert_array_equal(resumed.params, straight.params)


def _rewrite_meta(path, change):
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(bytes(arrays["__meta__"]).decode())
    change(meta, arrays)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize("change", [
    lambda m, a: m["state"]["model"].update(params={"__array__": [1]}),
    lambda m, a: m.update(state=[]),
    lambda m, a: m["state"].update(deep=json.loads("[" * 900 + "]" * 900)),
    lambda m, a: m.update(config=dict(m["config"], input_dim=10 ** 9)),
    lambda m, a: (a.update({"model.params": a["model.params"].astype(np.complex64)}),
                  m["sha256"].update({"model.params": digest(a["model.params"])})),
    lambda m, a: a.update({"stray": np.zeros(3)}),  # an array without a checksum
])
def test_crafted_model_files_are_refused_as_model_file_errors(tmp_path, change):
    model = make_model()
    path = model.save(tmp_path / "m.npz")
    _rewrite_meta(path, change)
    with pytest.raises(gb.ModelFileError):
        gb.load(path, backend="cpu")


def test_a_checkpoint_with_non_finite_state_is_refused_and_moved_away_resumes_from_the_one_before(tmp_path):
    X, y = DATA
    model = make_model()
    model.fit(X, y, epochs=2, verbose=0, checkpoint_dir=tmp_path, checkpoint_keep=2)
    newest = tmp_path / "ckpt-epoch000002.npz"

    def poison(meta, arrays):
        arrays["optimizer.state.m"] = arrays["optimizer.state.m"].copy()
        arrays["optimizer.state.m"][0] = np.nan
        meta["sha256"]["optimizer.state.m"] = digest(arrays["optimizer.state.m"])

    _rewrite_meta(newest, poison)
    poisoned = newest.read_bytes()
    with pytest.raises(gb.ModelFileError, match="ckpt-epoch000002.npz.*move it away to resume from "
                                                "ckpt-epoch000001.npz"):
        make_model().fit(X, y, epochs=3, verbose=0, checkpoint_dir=tmp_path, resume=True)
    assert newest.read_bytes() == poisoned  # never overwritten
    newest.rename(tmp_path / "poisoned.npz")
    history = make_model().fit(X, y, epochs=3, verbose=0, checkpoint_dir=tmp_path, resume=True)
    assert history.epoch == [0, 1, 2]  # resumed after epoch 1, from the older, good checkpoint
    assert read_checkpoint(tmp_path / "ckpt-epoch000003.npz")[0]["epoch"] == 3


def test_a_scaler_that_makes_features_non_finite_is_refused():
    from gpubp.data import StandardScaler

    X, y = DATA
    scaler = StandardScaler().fit(X)
    scaler.scale_ = np.full_like(scaler.scale_, 1e-300)  # 0 in float32
    model = make_model().set_scaler(scaler)
    with pytest.raises(gb.InvalidInputError, match="standardised by the model's scaler"):
        model.predict(X)


def test_stop_training_in_on_batch_end_stops_after_that_batch():
    class StopAtThird(gb.Callback):
        batches = 0

        def on_batch_end(self, batch, logs=None):
            self.batches += 1
            if batch == 2:
                self.model.stop_training = True

    stopper = StopAtThird()
    history = make_model().fit(*DATA, batch_size=8, epochs=3, verbose=0, callbacks=[stopper])
    assert stopper.batches == 3 and history.epoch == [0] and np.isfinite(history.history["loss"][0])


def test_deeply_nested_metadata_is_refused(tmp_path):
    path = tmp_path / "deep.npz"
    np.savez(path, __meta__=np.frombuffer(("[" * 100000 + "]" * 100000).encode(), dtype=np.uint8))
    with pytest.raises(gb.ModelFileError, match="metadata"):
        gb.load(path, backend="cpu")


def test_a_restored_state_is_not_rewound_by_an_older_unread_failure(tmp_path):
    X, y = DATA
    make_model().fit(X, y, epochs=3, batch_size=8, verbose=0, checkpoint_dir=tmp_path)  # 24 steps
    model = make_model(gb.optim.Adam(lr=1e38))
    plan_x, plan_y, _ = model.prepare(X[:8] * 1e30, y[:8])
    plan = model.batch_plan(8, plan_y)
    plan.load(plan_x, plan_y)
    model.train_step(plan)  # fails on the device; nobody reads the record
    assert model.status.read() is not None
    model.optimizer.schedule = gb.schedules.Constant(1e-3)
    history = model.fit(X, y, epochs=4, batch_size=8, verbose=0, checkpoint_dir=tmp_path, resume=True)
    assert history.epoch == [0, 1, 2, 3] and model.optimizer.iterations == 32


def test_non_finite_early_stopping_weights_in_a_checkpoint_are_refused(tmp_path):
    X, y = DATA
    make_model().fit(X, y, epochs=2, verbose=0, checkpoint_dir=tmp_path,
                     callbacks=[gb.EarlyStopping(monitor="loss", patience=5)])
    path = tmp_path / "ckpt-epoch000002.npz"

    def poison(meta, arrays):
        key = "callbacks.EarlyStopping_1.best_params"
        arrays[key] = np.full_like(arrays[key], np.nan)
        meta["sha256"][key] = digest(arrays[key])

    _rewrite_meta(path, poison)
    with pytest.raises(gb.ModelFileError, match="callback state"):
        make_model().fit(X, y, epochs=3, verbose=0, checkpoint_dir=tmp_path, resume=True,
                         callbacks=[gb.EarlyStopping(monitor="loss", patience=5)])


def test_warnings_as_errors_do_not_hide_the_error_in_flight():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(gb.TrainingDiverged):
            make_model(gb.optim.Adam(lr=1e38)).fit(*DATA, epochs=2, verbose=0, callbacks=[BadEnd()])
