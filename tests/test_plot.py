"""Training-history and decision-boundary figures (skipped without matplotlib)."""

import builtins

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import gpubp as gb  # noqa: E402
from gpubp import plot  # noqa: E402
from gpubp.data import StandardScaler, load_builtin, train_test_split  # noqa: E402
from gpubp.errors import GpubpError, InvalidInputError  # noqa: E402


@pytest.fixture(scope="module")
def trained_moons():
    """A moons model trained on standardized features, its History, raw test points and the scaler."""
    X, y = load_builtin("moons", n_samples=600, noise=0.2, seed=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, seed=0)
    scaler = StandardScaler().fit(X_train)
    model = gb.Sequential([gb.Dense(16, activation="tanh"), gb.Dense(2)], input_dim=2, backend="cpu", seed=0)
    model.compile(loss="softmax_cross_entropy", optimizer=gb.optim.Adam(lr=0.02))
    history = model.fit(scaler.transform(X_train), y_train, batch_size=32, epochs=15, verbose=0,
                        validation_data=(scaler.transform(X_test), y_test))
    return model, history, X_test, y_test, scaler


def legend_texts(ax):
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_history_figure(trained_moons, tmp_path):
    _, history, _, _, _ = trained_moons
    path = tmp_path / "history.png"
    figure = plot.history(history, path=path)
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss_ax, accuracy_ax = figure.axes
    assert (loss_ax.get_xlabel(), loss_ax.get_ylabel()) == ("epoch", "loss")
    assert (accuracy_ax.get_xlabel(), accuracy_ax.get_ylabel()) == ("epoch", "accuracy")
    assert legend_texts(loss_ax)[:2] == ["training", "validation"]
    assert "validation" in legend_texts(accuracy_ax)
    assert len(loss_ax.lines[0].get_xdata()) == 15
    assert "15 epochs" in figure.get_suptitle()


def test_history_without_accuracy_says_so():
    figure = plot.history({"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6]})
    assert "no accuracy" in " ".join(t.get_text() for t in figure.axes[1].texts)
    with pytest.raises(InvalidInputError, match="'loss'"):
        plot.history({"val_loss": [1.0]})
    with pytest.raises(InvalidInputError, match="val_loss"):
        plot.history({"loss": [1.0, 0.5], "val_loss": [1.0]})


def test_decision_boundary_figure(trained_moons, tmp_path):
    model, _, X_test, y_test, scaler = trained_moons
    path = tmp_path / "boundary.png"
    figure = plot.decision_boundary(model, X_test, y_test, path=path, resolution=120, transform=scaler.transform,
                                    feature_names=("first", "second"))
    assert path.stat().st_size > 10_000
    ax = figure.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("first", "second")
    assert {"class 0", "class 1", "decision boundary"} <= set(legend_texts(ax))
    # the grid covers the data (in original units) with a margin
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < X_test[:, 0].min() and x1 > X_test[:, 0].max()
    assert y0 < X_test[:, 1].min() and y1 > X_test[:, 1].max()
    accuracy = float(ax.get_title().split("accuracy ")[1].split()[0])
    assert accuracy == pytest.approx(model.evaluate(scaler.transform(X_test), y_test)["accuracy"], abs=1e-3)
    assert accuracy >= 0.9


def test_decision_boundary_of_binary_and_regression_models():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 2))
    labels = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    binary = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(1)], input_dim=2, backend="cpu", seed=0)
    binary.compile(loss="binary_cross_entropy", optimizer="adam")
    figure = plot.decision_boundary(binary, X, labels, resolution=40)
    assert "class 1" in legend_texts(figure.axes[0])
    regression = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(1)], input_dim=2, backend="cpu", seed=0)
    regression.compile(loss="mse", optimizer="adam")
    figure = plot.decision_boundary(regression, X, X.sum(axis=1), resolution=40)
    assert len(figure.axes) == 2 and "RMSE" in figure.axes[0].get_title()  # the plot and its colorbar
    assert "predicted value" in figure.axes[1].get_ylabel()


def test_decision_boundary_rejects_bad_input(trained_moons):
    model, _, X_test, y_test, _ = trained_moons
    with pytest.raises(InvalidInputError, match=r"shape \(n_samples, 2\), got \(150, 3\)"):
        plot.decision_boundary(model, np.ones((150, 3)), y_test)
    with pytest.raises(InvalidInputError, match="y has shape"):
        plot.decision_boundary(model, X_test, y_test[:-1])
    with pytest.raises(InvalidInputError, match="resolution"):
        plot.decision_boundary(model, X_test, y_test, resolution=1)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'gpubp\[plot\]'") as info:
        plot.history({"loss": [1.0]})
    assert isinstance(info.value, GpubpError)
