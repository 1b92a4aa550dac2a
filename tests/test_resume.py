"""fit(checkpoint_dir=..., resume=True): a run stopped after k epochs and resumed ends bit-identical."""

import numpy as np
import pytest

import gpubp as gb


def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    return X, (X[:, 0] * X[:, 1] > 0).astype(int)


def model(seed, optimizer):
    m = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=4, backend="cpu", seed=seed)
    return m.compile(loss="softmax_cross_entropy", optimizer=optimizer())


@pytest.mark.parametrize("optimizer", [lambda: gb.optim.Adam(lr=0.01),
                                       lambda: gb.optim.SGD(lr=0.05, momentum=0.9, nesterov=True),
                                       lambda: gb.optim.SGD(lr=gb.schedules.Cosine(0.1, total_steps=50))])
def test_resumed_run_is_bit_identical(tmp_path, optimizer):
    X, y = data()
    straight = model(1, optimizer)
    h_straight = straight.fit(X, y, batch_size=32, epochs=5, validation_split=0.2, verbose=0)

    first = model(1, optimizer)
    first.fit(X, y, batch_size=32, epochs=2, validation_split=0.2, verbose=0, checkpoint_dir=tmp_path)
    resumed = model(99, optimizer)  # a fresh process would build a fresh model; the seed does not matter
    h_resumed = resumed.fit(X, y, batch_size=32, epochs=5, validation_split=0.2, verbose=0,
                            checkpoint_dir=tmp_path, resume=True)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        assert np.array_equal(a, b)
    assert h_resumed.epoch == h_straight.epoch == [0, 1, 2, 3, 4]
    assert h_resumed.history["loss"] == h_straight.history["loss"]
    assert resumed.optimizer.iterations == straight.optimizer.iterations


def test_resume_keeps_early_stopping_state(tmp_path):
    X, y = data()
    adam = lambda: gb.optim.Adam(lr=0.01)  # noqa: E731
    first = model(1, adam)
    stopper = gb.EarlyStopping(patience=50)
    first.fit(X, y, epochs=3, validation_split=0.2, verbose=0, callbacks=[stopper], checkpoint_dir=tmp_path)
    again = gb.EarlyStopping(patience=50)
    model(1, adam).fit(X, y, epochs=3, validation_split=0.2, verbose=0, callbacks=[again],
                       checkpoint_dir=tmp_path, resume=True)  # nothing left to run: state restored only
    assert (again.best, again.best_epoch, again.wait) == (stopper.best, stopper.best_epoch, stopper.wait)


def test_resume_without_checkpoint_starts_fresh_and_needs_a_directory(tmp_path):
    X, y = data()
    h = model(1, lambda: gb.optim.Adam()).fit(X, y, epochs=1, verbose=0, checkpoint_dir=tmp_path, resume=True)
    assert h.epoch == [0]
    with pytest.raises(gb.InvalidInputError, match="checkpoint_dir"):
        model(1, lambda: gb.optim.Adam()).fit(X, y, verbose=0, resume=True)


def test_resume_restores_the_scaler_before_the_data_is_prepared(tmp_path):
    from gpubp.data import StandardScaler

    X, y = data()
    X = X * 5 + 3
    adam = lambda: gb.optim.Adam(lr=0.01)  # noqa: E731
    straight = model(1, adam).set_scaler(StandardScaler().fit(X))
    straight.fit(X, y, epochs=4, verbose=0)
    first = model(1, adam).set_scaler(StandardScaler().fit(X))
    first.fit(X, y, epochs=2, verbose=0, checkpoint_dir=tmp_path)
    resumed = model(1, adam)  # no scaler set: it comes from the checkpoint
    resumed.fit(X, y, epochs=4, verbose=0, checkpoint_dir=tmp_path, resume=True)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        assert np.array_equal(a, b)


def test_a_fresh_run_refuses_a_directory_with_older_checkpoints(tmp_path):
    X, y = data()
    model(1, lambda: gb.optim.Adam()).fit(X, y, epochs=2, verbose=0, checkpoint_dir=tmp_path)
    with pytest.raises(gb.InvalidInputError, match="already holds checkpoints.*resume=True"):
        model(2, lambda: gb.optim.Adam()).fit(X, y, epochs=2, verbose=0, checkpoint_dir=tmp_path)


def _files(directory):
    """``{name: bytes}`` of every file in ``directory`` (the lock file's holder pid left out)."""
    from gpubp.directory_lock import LOCK_NAME

    return {p.name: b"" if p.name == LOCK_NAME else p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("other, differs", [
    (lambda: gb.Sequential([gb.Dense(32, activation="tanh"), gb.Dense(2)], input_dim=4, backend="cpu", seed=1)
     .compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.01)), r"\(layers: checkpoint .*'units': 16"),
    (lambda: model(1, lambda: gb.optim.Adam(lr=0.05)), r"\(optimizer: checkpoint .*'lr': 0\.01.* vs model .*0\.05"),
], ids=["hidden size", "learning rate"])
def test_a_mismatched_resume_is_refused_naming_the_difference_and_keeps_every_checkpoint(tmp_path, other, differs):
    X, y = data()
    model(1, lambda: gb.optim.Adam(lr=0.01)).fit(X, y, epochs=4, verbose=0, checkpoint_dir=tmp_path)
    before = _files(tmp_path)
    assert [n for n in before if n.startswith("ckpt-")] == [f"ckpt-epoch00000{k}.npz" for k in (2, 3, 4)]
    resumed = other()
    with pytest.raises(gb.ModelFileError, match=differs):
        resumed.fit(X, y, epochs=6, verbose=0, checkpoint_dir=tmp_path, resume=True)
    assert resumed.optimizer.iterations == 0
    assert _files(tmp_path) == before


def _resume_with(tmp_path, X, y, batch_size):
    return model(1, lambda: gb.optim.Adam(lr=0.01)).fit(X, y, batch_size=batch_size, epochs=4, verbose=0,
                                                         checkpoint_dir=tmp_path, resume=True)


def test_a_resume_on_other_data_or_batches_is_refused_naming_them(tmp_path):
    X, y = data()
    model(1, lambda: gb.optim.Adam(lr=0.01)).fit(X, y, batch_size=32, epochs=2, verbose=0, checkpoint_dir=tmp_path)
    before = _files(tmp_path)
    with pytest.raises(gb.ModelFileError, match=r"training rows: checkpoint 300 vs this run 200"):
        _resume_with(tmp_path, X[:200], y[:200], 32)
    with pytest.raises(gb.ModelFileError, match=r"batch size: checkpoint 32 vs this run 7; steps per epoch: "
                                                 r"checkpoint 10 vs this run 43"):
        _resume_with(tmp_path, X, y, 7)
    assert _files(tmp_path) == before
    assert _resume_with(tmp_path, X, y, 32).epoch == [0, 1, 2, 3]  # the same data and batches resume
