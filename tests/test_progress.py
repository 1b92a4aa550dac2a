"""The progress display of fit, and the history plot of a run."""

import io
import re

import numpy as np
import pytest

import gpubp as gb
from gpubp.progress import EpochProgress

ANSI = re.compile(r"\x1b\[[0-9]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def screen_lines(text):
    """Every line a terminal shows while the display redraws (escape codes removed)."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", text)) if line]


def test_one_live_display_for_the_run_fits_in_80_columns():
    stream = Terminal()
    progress = EpochProgress(1, 200, 40, stream=stream, width=120)  # a wide terminal: still 80 columns
    reads = []
    logs = {"loss": 0.25, "top_k_accuracy": 0.99, "val_loss": 0.2, "val_accuracy": 0.95, "val_f1": 0.9412,
            "val_top_k_accuracy": 0.99, "val_precision": 0.95, "epoch_time": 0.01, "samples_per_sec": 1e6}
    for epoch in range(200):
        progress.start_epoch(epoch)
        for _ in range(40):
            progress.step(64, np.array([0.5]), lambda loss: reads.append(1) or loss)
        progress.end_epoch(epoch, logs)
    progress.close()
    text = stream.getvalue()
    lines = screen_lines(text)
    assert max(len(line) for line in lines) <= 80
    assert text.count("\n") <= 2 * 200 + 1 and "epoch 1/200" not in text.split("\n")[-2]  # redrawn, not appended
    assert lines[-2].startswith("epoch 200/200 ") and "100% step 8,000/8,000" in lines[-2]
    assert "last val: loss 0.2000 accuracy 0.9500" in lines[-1] and "samples/s" in lines[-1]
    assert len(reads) < 8000 / 10  # the running loss is read now and then, not every step


def test_fit_draws_on_a_terminal_and_prints_a_line_per_epoch_elsewhere(monkeypatch, capsys):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 3)), rng.integers(0, 3, 200)
    model = gb.Sequential([gb.Dense(8, "tanh"), gb.Dense(3)], input_dim=3, backend="cpu", seed=0)
    model.compile(metrics=["f1"])
    model.fit(X, y, epochs=5, batch_size=20, validation_split=0.2, verbose=1)
    out = capsys.readouterr().out  # not a terminal: one plain line per epoch, every value
    assert out.count("\n") == 5 and all(line.startswith(f"epoch {i + 1}/5 - ") and "val_f1" in line
                                        for i, line in enumerate(out.splitlines()))
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    model.fit(X, y, epochs=5, batch_size=20, validation_split=0.2, verbose=1)
    lines = screen_lines(terminal.getvalue())
    assert lines and max(len(line) for line in lines) <= 80 and lines[-2].startswith("epoch 5/5 ")


def test_history_plot_states_the_given_time_and_labels_a_log_axis():
    pytest.importorskip("matplotlib")
    from gpubp import plot

    logs = {"loss": list(np.geomspace(3.0, 0.05, 20)), "epoch_time": [0.01] * 20}
    figure = plot.history(logs, seconds=12.345)
    assert "trained in 12.35 s" in figure._suptitle.get_text()
    figure.canvas.draw()
    loss_ax = figure.axes[0]
    low, high = loss_ax.get_ylim()
    labelled = [t for t in loss_ax.yaxis.get_majorticklabels()
                if t.get_text() and low <= t.get_position()[1] <= high]
    assert loss_ax.get_yscale() == "log" and len(labelled) >= 4


def test_history_plot_of_a_regression_run_scatters_predictions():
    pytest.importorskip("matplotlib")
    from gpubp import plot

    rng = np.random.default_rng(1)
    y = rng.normal(size=50)
    logs = {"loss": [1.0, 0.5, 0.4], "rmse": [0.9, 0.7, 0.6], "r2": [0.1, 0.4, 0.5]}
    figure = plot.history(logs, predictions=(y, y + 0.1 * rng.normal(size=50), "test set"))
    right = figure.axes[1]
    assert right.get_xlabel() == "true value" and "Predicted vs true, test set" in right.get_title()
    figure = plot.history(logs)  # no predictions: the R² per epoch
    assert figure.axes[1].get_ylabel() == "r2"


def test_small_values_keep_their_digits(capsys):
    """A learning rate of 1e-5 (ReduceLROnPlateau's lr) or a tiny loss shows its digits, not 0.0000."""
    progress = EpochProgress(1, 1, 1, stream=io.StringIO())
    progress.end_epoch(0, {"loss": 3.2e-7, "lr": 1e-5, "val_loss": 0.0, "accuracy": 0.98765, "epoch_time": 0.5})
    text = progress.stream.getvalue()
    assert "loss 3.2e-07" in text and "lr 1e-05" in text and "val_loss 0.0000" in text
    assert "accuracy 0.9877" in text
