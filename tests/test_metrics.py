"""The compiled metrics against scikit-learn's, on the CPU and the simulated GPU, and where they show up."""

import numpy as np
import pytest
from sklearn import metrics as sk

import gpubp as gb
from gpubp.backend import simulator_enabled
from gpubp.loading import load_checkpoint_model

CLASSIFICATION = ["accuracy", "precision", "recall", "f1"]
REGRESSION = ["rmse", "mae", "r2"]
DEVICES = ["cpu", pytest.param("gpu-sim", marks=[pytest.mark.gpu_sim, pytest.mark.skipif(
    not simulator_enabled(), reason="Numba's CUDA simulator is off")])]


def random_model(device, n_in, n_out, loss, metrics, seed=0):
    """An untrained model: its predictions are random, and so every class count differs."""
    dtype = "float64" if device == "cpu" else "float32"
    model = gb.Sequential([gb.Dense(7, "tanh"), gb.Dense(n_out)], input_dim=n_in, backend=device, dtype=dtype,
                          seed=seed)
    return model.compile(loss=loss, optimizer="sgd", metrics=metrics)


def rows(device):
    return 300 if device == "cpu" else 30  # the simulator runs a Python thread per CUDA thread


@pytest.mark.parametrize("device", DEVICES)
def test_multiclass_metrics_match_scikit_learn(device):
    rng = np.random.default_rng(1)
    n = rows(device)
    X, y = rng.normal(size=(n, 4)), rng.integers(0, 7, n)
    model = random_model(device, 4, 7, "softmax_cross_entropy",
                         CLASSIFICATION + ["top_k_accuracy", gb.metrics.TopKAccuracy(k=2)])
    result = model.evaluate(X, y, batch_size=n // 3 + 1)  # several chunks
    proba = model.predict(X)
    predicted = proba.argmax(axis=1)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
    for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert result[name] == pytest.approx(score(y, predicted, average="macro", zero_division=0)), name
    assert result["top_k_accuracy"] == pytest.approx(sk.top_k_accuracy_score(y, proba, k=5, labels=range(7)))
    assert result["top_2_accuracy"] == pytest.approx(sk.top_k_accuracy_score(y, proba, k=2, labels=range(7)))
    assert result["loss"] == pytest.approx(sk.log_loss(y, proba, labels=range(7)), rel=1e-5)


def test_macro_average_counts_the_classes_seen_in_targets_or_predictions():
    model = random_model("cpu", 3, 6, "softmax_cross_entropy", ["precision", "recall", "f1"], seed=3)
    X = np.random.default_rng(2).normal(size=(40, 3))
    y = np.where(np.arange(40) % 2 == 0, 0, 5)  # four classes never occur as targets
    result = model.evaluate(X, y)
    predicted = model.predict(X).argmax(axis=1)
    for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert result[name] == pytest.approx(score(y, predicted, average="macro", zero_division=0)), name


@pytest.mark.parametrize("device", DEVICES)
def test_one_sigmoid_output_scores_the_positive_class_and_several_are_macro_averaged(device):
    rng = np.random.default_rng(2)
    n = rows(device)
    X = rng.normal(size=(n, 3))
    y = rng.integers(0, 2, n)
    model = random_model(device, 3, 1, "binary_cross_entropy", CLASSIFICATION)
    result = model.evaluate(X, y)
    predicted = (model.predict(X)[:, 0] > 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(sk.accuracy_score(y, predicted))
    for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert result[name] == pytest.approx(score(y, predicted, zero_division=0)), name  # average="binary"

    Y = rng.integers(0, 2, (n, 3)).astype(float)
    Y[:, 2] = 0  # a label never true
    model = random_model(device, 3, 3, "binary_cross_entropy", CLASSIFICATION, seed=5)
    result = model.evaluate(X, Y, batch_size=n // 2)
    predicted = (model.predict(X) > 0.5).astype(int)
    assert result["accuracy"] == pytest.approx((predicted == Y).mean())
    for name, score in (("precision", sk.precision_score), ("recall", sk.recall_score), ("f1", sk.f1_score)):
        assert result[name] == pytest.approx(score(Y, predicted, average="macro", zero_division=0)), name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n_out", [1, 3])
def test_regression_metrics_match_scikit_learn(device, n_out):
    rng = np.random.default_rng(3)
    n = rows(device)
    X = rng.normal(size=(n, 4))
    T = rng.normal(size=(n, n_out)) * np.array([2.0, 0.5, 1.0])[:n_out] + np.array([1.0, -3.0, 0.0])[:n_out]
    model = random_model(device, 4, n_out, "mse", REGRESSION)
    result = model.evaluate(X, T if n_out > 1 else T[:, 0], batch_size=n // 3 + 1)
    P = model.predict(X).astype(np.float64)
    T = T.astype(model.dtype).astype(np.float64)  # the targets as the model sees them
    assert result["accuracy"] is None
    assert result["rmse"] == pytest.approx(sk.root_mean_squared_error(T, P), rel=1e-9)
    assert result["mae"] == pytest.approx(sk.mean_absolute_error(T, P), rel=1e-9)
    assert result["r2"] == pytest.approx(sk.r2_score(T, P), rel=1e-8)


def test_r2_of_a_constant_target_is_scikit_learns():
    model = random_model("cpu", 2, 2, "mse", ["r2"])
    X = np.random.default_rng(4).normal(size=(20, 2))
    T = np.column_stack([np.full(20, 3.0), np.arange(20.0)])
    assert model.evaluate(X, T)["r2"] == pytest.approx(sk.r2_score(T, model.predict(X)))


def test_sums_of_row_shares_combine_into_the_metrics_of_all_rows():
    """Data-parallel evaluation adds the ranks' sums: two halves give the metrics of the whole."""
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(101, 4)), rng.integers(0, 4, 101)
    model = random_model("cpu", 4, 4, "softmax_cross_entropy", CLASSIFICATION + ["top_2_accuracy"])
    X_device, y_device, labels = model.prepare(X, y)
    evaluation = model.evaluation(labels)
    halves = [model.evaluation_sums(evaluation, X_device[s], y_device[s]) for s in (slice(0, 40), slice(40, None))]
    combined = evaluation.result(halves[0] + halves[1])
    whole = model.evaluate(X, y)
    assert combined.keys() == whole.keys()
    for key in whole:
        assert combined[key] == pytest.approx(whole[key]), key


def test_history_and_evaluate_name_every_metric():
    rng = np.random.default_rng(6)
    X, y = rng.normal(size=(120, 3)), rng.integers(0, 3, 120)
    model = random_model("cpu", 3, 3, "softmax_cross_entropy", ["f1", "precision", "top_2_accuracy"])
    history = model.fit(X, y, epochs=2, batch_size=32, validation_split=0.25, verbose=0)
    assert list(history.history) == ["loss", "f1", "precision", "top_2_accuracy", "val_loss", "val_accuracy",
                                     "val_f1", "val_precision", "val_top_2_accuracy", "epoch_time",
                                     "samples_per_sec"]
    assert history.history["val_f1"][-1] == pytest.approx(model.evaluate(X[-30:], y[-30:])["f1"])
    assert history.history["f1"][-1] == pytest.approx(model.evaluate(X[:90], y[:90])["f1"])

    T = X @ rng.normal(size=(3, 2))
    model = random_model("cpu", 3, 2, "huber", ["r2", "rmse"])
    history = model.fit(X, T, epochs=1, validation_data=(X, T), verbose=0)
    assert {"r2", "rmse", "val_r2", "val_rmse"} <= set(history.history) and "val_accuracy" not in history.history
    assert set(model.evaluate(X, T)) == {"loss", "accuracy", "r2", "rmse"}


def test_metrics_round_trip_through_model_files_and_checkpoints(tmp_path):
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(60, 3)), rng.integers(0, 3, 60)
    model = random_model("cpu", 3, 3, "softmax_cross_entropy", ["f1", "top_2_accuracy"])
    model.fit(X, y, epochs=1, verbose=0, checkpoint_dir=tmp_path / "ckpt")
    assert model.get_config()["metrics"] == ["f1", "top_2_accuracy"]
    loaded = gb.load(model.save(tmp_path / "m.npz"), backend="cpu")
    assert loaded.metrics == ["f1", "top_2_accuracy"]
    assert loaded.evaluate(X, y) == pytest.approx(model.evaluate(X, y))
    restored = load_checkpoint_model(next((tmp_path / "ckpt").glob("ckpt-*.npz")), backend="cpu")
    assert restored.metrics == ["f1", "top_2_accuracy"]
    assert "metrics" not in random_model("cpu", 3, 3, "softmax_cross_entropy", None).get_config()


@pytest.mark.parametrize("loss,metrics,pattern", [
    ("softmax_cross_entropy", ["f1", "f2"], r"unknown metrics \['f2'\]"),
    ("softmax_cross_entropy", ["top_0_accuracy"], r"unknown metrics \['top_0_accuracy'\]"),
    ("softmax_cross_entropy", ["r2"], r"metric 'r2' measures regression.*softmax_cross_entropy"),
    ("binary_cross_entropy", ["rmse"], r"metric 'rmse' measures regression"),
    ("binary_cross_entropy", ["top_k_accuracy"], r"metric 'top_k_accuracy' ranks the outputs"),
])
def test_compile_names_the_metric_it_refuses(loss, metrics, pattern):
    model = gb.Sequential([gb.Dense(3)], input_dim=2, backend="cpu")
    with pytest.raises(gb.InvalidInputError, match=pattern):
        model.compile(loss=loss, metrics=metrics)
    assert model.loss is None and model.metrics == []


def test_classification_metrics_on_real_targets_fail_before_training():
    rng = np.random.default_rng(8)
    X, T = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    model = random_model("cpu", 2, 2, "mse", ["precision"])
    before = model.get_weights()
    with pytest.raises(gb.InvalidInputError, match="metric 'precision' needs class labels.*mse"):
        model.fit(X, T, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_weights()[0], before[0])
    labels = rng.integers(0, 2, 30)  # with labels, a regression loss has classes: precision is defined
    assert 0.0 <= model.evaluate(X, labels)["precision"] <= 1.0
