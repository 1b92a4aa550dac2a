"""Built-in data sets, file loaders and the standard scaler."""

import json
import time

import numpy as np
import pytest

import gpubp as gb
from gpubp.data import (BUILTIN, StandardScaler, dataset_info, load_builtin, load_csv, load_csv_features,
                        load_dataset, load_npz, make_spirals, make_xor, task_of, train_test_split)
from gpubp.errors import InvalidInputError

GENERATED = [name for name in BUILTIN if name != "digits"]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_shapes_dtypes_and_classes(name):
    info = dataset_info(name)
    X, y = load_builtin(name, n_samples=300, noise=0.1, seed=3)
    n = 1797 if name == "digits" else 300
    assert X.shape == (n, info.n_features) and X.dtype == np.float64 and np.all(np.isfinite(X))
    assert y.shape == (n,)
    assert task_of(name) == info.task
    if info.task == "classification":
        assert y.dtype == np.int64
        assert set(np.unique(y)) == set(range(info.n_classes))
    else:
        assert y.dtype == np.float64 and info.n_classes is None and np.std(y) > 0


@pytest.mark.parametrize("name", GENERATED)
def test_builtin_is_deterministic_for_a_seed(name):
    X1, y1 = load_builtin(name, n_samples=200, noise=0.2, seed=5)
    X2, y2 = load_builtin(name, n_samples=200, noise=0.2, seed=5)
    X3, _ = load_builtin(name, n_samples=200, noise=0.2, seed=6)
    np.testing.assert_array_equal(X1, X2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(X1, X3)


@pytest.mark.parametrize("name", GENERATED)
def test_noise_is_honoured(name):
    X0, y0 = load_builtin(name, n_samples=200, noise=0.0, seed=0)
    X1, y1 = load_builtin(name, n_samples=200, noise=0.3, seed=0)
    assert not np.allclose(X0, X1) or not np.allclose(y0, y1)


def test_spirals_and_xor_geometry():
    X, y = make_spirals(301, noise=0.0, seed=0)
    assert np.bincount(y).tolist() == [101, 100, 100]
    assert np.all(np.linalg.norm(X, axis=1) <= 1.0 + 1e-12)
    X, y = make_xor(400, noise=0.0, seed=0)
    np.testing.assert_array_equal(y, (X[:, 0] * X[:, 1] < 0).astype(np.int64))
    assert sorted(map(tuple, np.unique(X, axis=0))) == [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)]


def test_spirals_are_learnable_by_a_small_model():
    X, y = load_builtin("spirals", n_samples=1500, noise=0.2, seed=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, seed=0)
    scaler = StandardScaler().fit(X_train)
    model = gb.Sequential([gb.Dense(64, activation="relu"), gb.Dense(64, activation="relu"), gb.Dense(3)],
                          input_dim=2, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.01))
    start = time.perf_counter()
    model.fit(scaler.transform(X_train), y_train, batch_size=32, epochs=60, verbose=0)
    assert time.perf_counter() - start < 20
    assert model.evaluate(scaler.transform(X_test), y_test)["accuracy"] >= 0.9


@pytest.mark.parametrize("kwargs, word", [
    ({"n_samples": 0}, "n_samples"), ({"n_samples": 2.5}, "n_samples"), ({"noise": -1}, "noise"),
    ({"noise": float("nan")}, "noise"), ({"seed": -1}, "seed"),
])
@pytest.mark.parametrize("name", ["spirals", "xor", "regression"])
def test_bad_generator_arguments_are_named(name, kwargs, word):
    with pytest.raises(InvalidInputError, match=word):
        load_builtin(name, **kwargs)


def test_unknown_names():
    with pytest.raises(InvalidInputError, match="built-in names"):
        load_builtin("swirls")
    with pytest.raises(InvalidInputError, match="built-in names"):
        task_of("swirls")
    with pytest.raises(InvalidInputError, match="no such file"):
        load_dataset("swirls")


# ---------------------------------------------------------------- files
def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_load_csv_reads_features_and_target(tmp_path):
    X, y = load_csv(write(tmp_path, "a,label,b\n1,0,2\n\n3,1,4\n"), "label")
    np.testing.assert_array_equal(X, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(y, [0, 1])


@pytest.mark.parametrize("text, target, message", [
    ("", "y", "is empty"),
    ("x,y\n", "y", "header but no data rows"),
    ("x,y\n1,2\n", None, "name the label column"),
    ("x,y\n1,2\n", "label", "no column named 'label'"),
    ("1,2\n3,4\n", "y", "needs a header row"),
    ("x,x,y\n1,2,3\n", "y", "line 1: the header names columns \\['x'\\] more than once"),
    ("x,y,z\n1,2,3\n4,5\n", "y", "line 3: 2 values, header has 3"),
    ("x,y\n1,2\n3,\n", "y", "line 3, column 'y': '' is not a number"),
    ("x,y\n1,2\nnan,1\n", "y", "line 3, column 'x': 'nan' is not a finite number"),
    ("x,y\n1,0\n2,1\n3,nan\n", "y", "line 4, column 'y': 'nan' is not a finite number or a label"),
    ("x,y\n1,0\n2,NaN\n", "y", "line 3, column 'y': 'NaN' is not a finite number or a label"),
    ("x,y\n1,cat\n2,inf\n", "y", "line 3, column 'y': 'inf' is not a finite number or a label"),
    ("x,y\n1,0\n2, \n", "y", "line 3, column 'y': '' is not a number or a label"),
    ("y\n0\n1\n", "y", "the data set is empty: it has no feature columns"),
])
def test_load_csv_errors_name_file_line_and_column(tmp_path, text, target, message):
    path = write(tmp_path, text)
    with pytest.raises(InvalidInputError, match=message) as info:
        load_csv(path, target)
    assert path in str(info.value)


def test_load_npz(tmp_path):
    np.savez(tmp_path / "ok.npz", X=np.ones((3, 2)), y=np.arange(3))
    X, y = load_npz(tmp_path / "ok.npz")
    assert X.shape == (3, 2) and y.tolist() == [0, 1, 2]
    np.savez(tmp_path / "bad.npz", X=np.ones((3, 2)))
    with pytest.raises(InvalidInputError, match=r"missing \['y'\]"):
        load_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(InvalidInputError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")
    with pytest.raises(InvalidInputError, match="no such file"):
        load_npz(tmp_path / "absent.npz")


def test_text_labels_still_load_but_missing_labels_do_not_make_a_class(tmp_path):
    X, y = load_csv(write(tmp_path, "x,y\n1,cat\n2,dog\n3,cat\n"), "y")
    assert y.tolist() == ["cat", "dog", "cat"] and X.shape == (3, 1)


@pytest.mark.parametrize("shape", [(0, 3), (4, 0)])
def test_an_empty_npz_data_set_is_refused_naming_the_file(tmp_path, shape):
    np.savez(tmp_path / "e.npz", X=np.zeros(shape), y=np.zeros(shape[0], int))
    with pytest.raises(InvalidInputError, match=r"e\.npz: the data set is empty") as info:
        load_dataset(str(tmp_path / "e.npz"))
    assert ("no samples" if shape[0] == 0 else "no feature columns") in str(info.value)


# --------------------------------------------------------------- scaler
def test_scaler_round_trip_through_json():
    X = np.random.default_rng(0).normal(loc=[1.0, -5.0, 3.0], scale=[2.0, 0.5, 1.0], size=(100, 3))
    X[:, 2] = 7.0  # a constant feature keeps scale 1
    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    np.testing.assert_allclose(Z[:, :2].mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(Z[:, :2].std(axis=0), 1, atol=1e-12)
    state = json.loads(json.dumps(scaler.to_dict()))
    assert set(state) == {"mean", "scale"} and state["scale"][2] == 1.0
    restored = StandardScaler.from_dict(state)
    np.testing.assert_array_equal(restored.transform(X), Z)
    np.testing.assert_allclose(restored.inverse_transform(Z), X, rtol=1e-12, atol=1e-12)


def test_scaler_on_a_target_vector():
    y = np.array([1.0, 2.0, 3.0, 6.0])
    scaler = StandardScaler().fit(y)
    restored = StandardScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    np.testing.assert_allclose(restored.inverse_transform(restored.transform(y)), y)


def test_scaler_errors():
    with pytest.raises(InvalidInputError, match="not fitted"):
        StandardScaler().transform(np.ones((2, 2)))
    scaler = StandardScaler().fit(np.ones((4, 3)))
    with pytest.raises(InvalidInputError, match=r"shape \(n, 3\)"):
        scaler.transform(np.ones((4, 2)))
    with pytest.raises(InvalidInputError, match="keys 'mean' and 'scale'"):
        StandardScaler.from_dict({"mean": [0.0]})
    with pytest.raises(InvalidInputError, match="'scale' has 1"):
        StandardScaler.from_dict({"mean": [0.0, 1.0], "scale": [1.0]})
    with pytest.raises(InvalidInputError, match="> 0"):
        StandardScaler.from_dict({"mean": [0.0], "scale": [0.0]})


def test_load_csv_features_reads_every_column(tmp_path):
    X = load_csv_features(write(tmp_path, "a,b,c\n1,2,3\n4,5,6\n"))
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, [[1, 2, 3], [4, 5, 6]])
    with pytest.raises(InvalidInputError, match="line 3, column 'b': 'x' is not a number"):
        load_csv_features(write(tmp_path, "a,b\n1,2\n3,x\n"))


def test_features_without_a_header_row_are_refused_not_silently_shortened(tmp_path):
    from gpubp.data import load_csv_features

    path = tmp_path / "x.csv"
    path.write_text("0.5,1.5\n2.5,3.5\n")
    with pytest.raises(gb.InvalidInputError, match="line 1 looks like data"):
        load_csv_features(path)
    path.write_text("a,b\n0.5,1.5\n2.5,3.5\n")
    assert load_csv_features(path).shape == (2, 2)
