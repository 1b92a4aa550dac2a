"""Saving and loading models: round trips, and files that must be refused."""

import json

import numpy as np
import pytest

import gpubp as gb
from gpubp.io import digest


@pytest.fixture
def trained(moons):
    Xtr, Xte, ytr, yte = moons
    model = gb.Sequential([gb.Dense(16, activation="relu"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.SGD(lr=0.05, momentum=0.9, nesterov=True))
    model.fit(Xtr, ytr, epochs=2, verbose=0)
    return model, Xte


def test_round_trip_keeps_predictions_and_settings(trained, tmp_path):
    model, Xte = trained
    path = model.save(tmp_path / "m")
    assert path.endswith("m.npz")
    loaded = gb.load(path, backend="cpu")
    np.testing.assert_array_equal(loaded.predict(Xte), model.predict(Xte))
    assert loaded.loss.name == "softmax_cross_entropy"
    assert isinstance(loaded.optimizer, gb.optim.SGD) and loaded.optimizer.nesterov
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]


def test_file_holds_no_pickle(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"__meta__", "model.params"}
        assert all(archive[k].dtype != object for k in archive.files)


def _rewrite(path, **replace):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays.update(replace)
    np.savez(path, **arrays)


def test_pickled_object_array_is_refused_not_executed(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    _rewrite(path, W0=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(gb.ModelFileError, match="corrupted or non-numeric"):
        gb.load(path, backend="cpu")


def test_future_format_version_is_refused(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as archive:
        meta = json.loads(bytes(archive["__meta__"]))
    meta["format_version"] = 99
    _rewrite(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    with pytest.raises(gb.ModelFileError, match="format version 99"):
        gb.load(path, backend="cpu")


def test_truncated_and_foreign_files_are_refused(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    data = open(path, "rb").read()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(gb.ModelFileError):
        gb.load(tmp_path / "cut.npz", backend="cpu")
    np.savez(tmp_path / "other.npz", X=np.zeros(3))
    with pytest.raises(gb.ModelFileError, match="not a gpubp model file"):
        gb.load(tmp_path / "other.npz", backend="cpu")
    with pytest.raises(gb.ModelFileError, match="does not exist"):
        gb.load(tmp_path / "missing.npz", backend="cpu")


def test_wrong_weight_shape_in_file_is_refused(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as archive:
        params, meta = archive["model.params"], json.loads(bytes(archive["__meta__"]).decode())
    meta["sha256"]["model.params"] = digest(params[:-1])  # a well-formed file whose parameter vector is too short
    _rewrite(path, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **{"model.params": params[:-1]})
    with pytest.raises(gb.ModelFileError, match=r"parameters"):
        gb.load(path, backend="cpu")


def test_flipped_parameter_byte_is_refused(trained, tmp_path):
    model, _ = trained
    path = model.save(tmp_path / "m.npz")
    with np.load(path) as archive:
        params = archive["model.params"].copy()
    params[0] += 1
    _rewrite(path, **{"model.params": params})
    with pytest.raises(gb.ModelFileError, match="checksum"):
        gb.load(path, backend="cpu")


def test_set_weights_validates_count_shape_and_values():
    model = gb.Sequential([gb.Dense(3), gb.Dense(1)], input_dim=2, backend="cpu")
    good = model.get_weights()
    with pytest.raises(gb.InvalidInputError, match="expects 4 arrays"):
        model.set_weights(good[:2])
    with pytest.raises(gb.InvalidInputError, match=r"weights\[2\] \(W_2\) must have shape \(3, 1\)"):
        model.set_weights(good[:2] + [np.zeros((1, 3)), good[3]])
    with pytest.raises(gb.InvalidInputError, match="NaN or Inf"):
        model.set_weights([np.full((2, 3), np.nan)] + good[1:])
    with pytest.raises(gb.InvalidTypeError, match="numbers"):
        model.set_weights([np.full((2, 3), "a")] + good[1:])
    model.set_weights([w + 1 for w in good])
    np.testing.assert_array_equal(model.get_weights()[0], good[0] + 1)
