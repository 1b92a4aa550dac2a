"""Plots of training runs and of 2-D decision boundaries (needs matplotlib: the ``plot`` extra).

Both functions return a :class:`matplotlib.figure.Figure` drawn on the Agg canvas,
independent of pyplot (no GUI, no global figure list to close): save it with
``path=`` or ``fig.savefig(...)``; in Jupyter it shows as a cell's value.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import GpubpError, InvalidInputError

class PlotDependencyError(GpubpError, ImportError):
    """matplotlib, which gpubp.plot needs, is not installed."""


def _new_figure(**kwargs):
    """An empty Figure on the Agg canvas."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotDependencyError("gpubp.plot needs matplotlib: pip install 'gpubp[plot]'") from None
    figure = Figure(layout="constrained", **kwargs)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


# ------------------------------------------------------------------- history
def history(history, path=None, title=None, seconds=None, predictions=None):
    """Loss and accuracy per epoch (or a regression metric, or predicted against true values).

    Parameters
    ----------
    history : gpubp.History or dict
        What ``fit`` returned, or its ``.history`` dict with a ``"loss"`` list and
        optionally ``"val_loss"``, ``"val_accuracy"``, ``"epoch_time"``.
    path : str or path-like, optional
        Write the figure there as a PNG.
    title : str, optional
        Replaces the default "Training history (N epochs, T s)".
    seconds : float, optional
        The training time the title states (the command line passes the time it prints); default: the
        sum of the history's ``epoch_time``.
    predictions : (y_true, y_pred, label), optional
        For a regression run: targets and predictions (e.g. of the test set, named by ``label``) drawn
        as a predicted-against-true scatter in the right panel, which otherwise shows the accuracy, or
        without accuracy the R² or RMSE per epoch when the history has them.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: training/validation loss, and accuracy (training and validation), the scatter of
        ``predictions``, a regression metric, or a note when the history has none of them.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs.get("loss"):
        raise InvalidInputError("history must be a gpubp History (or its .history dict) with a non-empty 'loss' list")
    n_epochs = len(logs["loss"])
    epoch_index = list(getattr(history, "epoch", []))
    epochs = np.asarray(epoch_index if len(epoch_index) == n_epochs else range(n_epochs)) + 1
    for key in [key for key in logs if key not in ("epoch_time", "samples_per_sec")]:
        if len(logs[key]) != n_epochs:
            raise InvalidInputError(f"history[{key!r}] has {len(logs[key])} values but 'loss' has {n_epochs}")
    marker = "o" if n_epochs <= 30 else None

    figure = _new_figure(figsize=(11, 4.2))
    loss_ax, accuracy_ax = figure.subplots(1, 2)

    loss_ax.plot(epochs, logs["loss"], marker=marker, markersize=3, color="C0", label="training")
    if logs.get("val_loss"):
        val_loss = np.asarray(logs["val_loss"], dtype=float)
        loss_ax.plot(epochs, val_loss, marker=marker, markersize=3, color="C1", label="validation")
        best = int(np.nanargmin(val_loss))
        loss_ax.plot(epochs[best], val_loss[best], "*", color="C3", markersize=11,
                     label=f"lowest validation: {val_loss[best]:.4g} (epoch {epochs[best]})")
    if all(v > 0 for v in logs["loss"]) and max(logs["loss"]) / min(logs["loss"]) > 30:
        _log_scale_with_labels(loss_ax)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.grid(alpha=0.3)
    loss_ax.legend()

    metric = next((name for name in ("accuracy", "r2", "rmse", "mae")
                   if logs.get(name) or logs.get(f"val_{name}")), None)
    if predictions is not None and metric != "accuracy":
        y_true, y_pred, label = predictions
        _draw_predicted_vs_true(accuracy_ax, y_true, y_pred, label)
    elif metric is not None:
        metric_keys = [(key, label, color) for key, label, color in
                       [(metric, "training", "C0"), (f"val_{metric}", "validation", "C1")] if logs.get(key)]
        for key, label, color in metric_keys:
            accuracy_ax.plot(epochs, logs[key], marker=marker, markersize=3, color=color, label=label)
        values = np.asarray(logs[metric_keys[-1][0]], dtype=float)
        lower_is_better = metric in ("rmse", "mae")
        best = int(np.nanargmin(values) if lower_is_better else np.nanargmax(values))
        accuracy_ax.plot(epochs[best], values[best], "*", color="C3", markersize=11,
                         label=f"{'lowest' if lower_is_better else 'highest'} {metric_keys[-1][1]}: "
                               f"{values[best]:.4f} (epoch {epochs[best]})")
        name = {"accuracy": "Accuracy", "r2": "R²", "rmse": "RMSE", "mae": "MAE"}[metric]
        accuracy_ax.set(xlabel="epoch", ylabel=metric, title=name)
        accuracy_ax.grid(alpha=0.3)
        accuracy_ax.legend(loc="upper right" if lower_is_better else "lower right")
    else:
        accuracy_ax.set_axis_off()
        accuracy_ax.text(0.5, 0.5, "no accuracy in this history\n(regression targets, or no validation data)",
                         ha="center", va="center", transform=accuracy_ax.transAxes, color="0.4")

    if title is None:
        title = f"Training history ({n_epochs} epoch{'s' if n_epochs != 1 else ''}"
        if seconds is not None:
            title += f", trained in {seconds:.2f} s"
        elif logs.get("epoch_time"):
            title += f", {sum(logs['epoch_time']):.2f} s"
        title += ")"
    figure.suptitle(title)
    return _save(figure, path)


def _log_scale_with_labels(ax):
    """A log y axis labelled at 1, 2 and 5 times each power of ten (plain numbers), so a range of a decade
    or two still reads with several labels rather than two."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _draw_predicted_vs_true(ax, y_true, y_pred, label):
    """Predicted against true values (every output), the identity line, and R² in the title."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(len(y_pred), -1)
    if y_true.shape != y_pred.shape:
        raise InvalidInputError(f"predictions: y_true has shape {y_true.shape} but y_pred {y_pred.shape}")
    size = float(np.clip(3000 / max(len(y_true), 1), 4, 30))
    for k in range(y_true.shape[1]):
        ax.scatter(y_true[:, k], y_pred[:, k], s=size, alpha=0.6, color=f"C{k % 10}",
                   label=f"output {k}" if y_true.shape[1] > 1 else None)
    low = float(min(y_true.min(), y_pred.min()))
    high = float(max(y_true.max(), y_pred.max()))
    ax.plot([low, high], [low, high], color="0.3", linestyle="--", linewidth=1, label="predicted = true")
    residual = ((y_true - y_pred) ** 2).sum(axis=0)
    total = ((y_true - y_true.mean(axis=0)) ** 2).sum(axis=0)
    r2 = float(np.mean(np.where(total > 0, 1 - residual / np.where(total > 0, total, 1), 0.0)))
    ax.set(xlabel="true value", ylabel="predicted value",
           title=f"Predicted vs true, {label} (R² {r2:.3f}, {len(y_true)} samples)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")


def predicted_vs_true(y_true, y_pred, path=None, label="these samples", title=None):
    """A regression model's predictions against the targets (one colour per output), with the identity line.

    Returns a :class:`matplotlib.figure.Figure`; ``path`` writes it as a PNG.
    """
    figure = _new_figure(figsize=(6, 5.4))
    ax = figure.subplots()
    _draw_predicted_vs_true(ax, y_true, y_pred, label)
    if title is not None:
        ax.set_title(title)
    return _save(figure, path)


# --------------------------------------------------------- decision boundary
def decision_boundary(model, X, y, path=None, resolution=300, transform=None, feature_names=("x1", "x2"),
                      title=None):
    """The model's prediction over the plane of two input features, with the data on top.

    Parameters
    ----------
    model : gpubp.Sequential
        A fitted model. Its predictions are read as classes for the cross-entropy
        losses (argmax of softmax probabilities; sigmoid >= 0.5) and for MSE with
        several outputs (argmax); MSE with one output is drawn as a value map,
        except with integer labels ``y``, where the output is thresholded at 0.5.
    X : array (n_samples, 2)
        The points to draw, in the units the axes should show.
    y : array (n_samples,)
        True labels (or one-hot rows), or target values for a regression model.
    path : str or path-like, optional
        Write the figure there as a PNG.
    resolution : int
        Grid points per axis; the grid covers the data with a 10% margin.
    transform : callable, optional
        Maps (m, 2) points in the plotted units to the model's inputs, e.g. a
        fitted ``StandardScaler().transform``; applied to the grid and to X.
    feature_names : (str, str)
        Axis labels.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != 2:
        raise InvalidInputError(f"decision_boundary draws 2-D inputs: X must have shape (n_samples, 2), "
                                f"got {X.shape}")
    if X.shape[0] == 0 or not np.all(np.isfinite(X)):
        raise InvalidInputError("decision_boundary: X must be non-empty and hold finite values")
    y = np.asarray(y)
    if y.shape[:1] != X.shape[:1]:
        raise InvalidInputError(f"decision_boundary: X has {X.shape[0]} samples but y has shape {y.shape}")
    if y.ndim == 2 and y.shape[1] > 1:
        y = y.argmax(axis=1)
    y = y.reshape(X.shape[0])
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 2:
        raise InvalidInputError(f"resolution must be an integer >= 2, got {resolution!r}")
    if transform is not None and not callable(transform):
        raise InvalidInputError(f"transform must be callable (e.g. scaler.transform), got {type(transform).__name__}")
    if len(feature_names) != 2:
        raise InvalidInputError(f"feature_names must name 2 features, got {feature_names!r}")

    grid_x, grid_y = _grid(X, resolution)
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])
    grid_out = _predict(model, grid, transform)
    point_out = _predict(model, X, transform)
    kind = _output_kind(model, grid_out.shape[1], y)

    figure = _new_figure(figsize=(8.6, 5.6))
    ax = figure.subplots()
    if kind == "value":
        default_title = _draw_value_map(figure, ax, grid_x, grid_y, grid_out[:, 0], X, y, point_out[:, 0])
    else:
        n_classes = max(int(np.max(y)) + 1 if y.size else 0, grid_out.shape[1] if kind == "argmax" else 2)
        default_title = _draw_class_map(ax, grid_x, grid_y, _classes(grid_out, kind).reshape(grid_x.shape),
                                        X, y.astype(np.int64), _classes(point_out, kind), n_classes)
    ax.set(xlabel=feature_names[0], ylabel=feature_names[1], xlim=(grid_x.min(), grid_x.max()),
           ylim=(grid_y.min(), grid_y.max()))
    ax.set_title(title or default_title)
    return _save(figure, path)


def _grid(X, resolution):
    low, high = X.min(axis=0), X.max(axis=0)
    margin = np.where(high > low, 0.1 * (high - low), 1.0)
    axes = [np.linspace(low[j] - margin[j], high[j] + margin[j], resolution) for j in range(2)]
    return np.meshgrid(*axes)


def _predict(model, points, transform):
    inputs = points if transform is None else np.asarray(transform(points))
    return np.asarray(model.predict(inputs), dtype=np.float64).reshape(len(points), -1)


def _output_kind(model, n_outputs, y):
    """How to read predictions: "argmax", "threshold" (one probability/score) or "value"."""
    loss = getattr(getattr(model, "loss", None), "name", None)
    if n_outputs > 1:
        if loss == "binary_cross_entropy":
            raise InvalidInputError(f"decision_boundary: a binary_cross_entropy model with {n_outputs} outputs "
                                    f"is multi-label; it draws one class map, so give it a single-output model")
        return "argmax"
    if loss == "binary_cross_entropy" or y.dtype.kind in "biu":
        return "threshold"
    if loss == "softmax_cross_entropy":
        raise InvalidInputError("decision_boundary: a softmax model needs at least 2 outputs")
    return "value"


def _classes(outputs, kind):
    return outputs.argmax(axis=1) if kind == "argmax" else (outputs[:, 0] >= 0.5).astype(np.int64)


def _class_colors(n_classes):
    from matplotlib import colormaps

    palette = colormaps["tab10" if n_classes <= 10 else "tab20"]
    if n_classes > palette.N:
        palette = colormaps["turbo"].resampled(n_classes)
    return np.array([palette(k % palette.N)[:3] for k in range(n_classes)])


def _draw_class_map(ax, grid_x, grid_y, grid_classes, X, y, predicted, n_classes):
    from matplotlib.lines import Line2D

    colors = _class_colors(n_classes)
    light = 0.3 * colors + 0.7  # the class colour blended with white
    levels = np.arange(n_classes + 1) - 0.5
    ax.contourf(grid_x, grid_y, grid_classes, levels=levels, colors=[tuple(c) for c in light])
    ax.contour(grid_x, grid_y, grid_classes, levels=levels[1:-1], colors="0.25", linewidths=0.8)
    size = float(np.clip(6000 / len(X), 6, 40))
    wrong = predicted != y
    for k in range(n_classes):
        rows = y == k
        if rows.any():
            ax.scatter(X[rows, 0], X[rows, 1], s=size, color=colors[k], edgecolors="k", linewidths=0.3)
    if wrong.any():
        ax.scatter(X[wrong, 0], X[wrong, 1], s=size * 3, facecolors="none", edgecolors="k", linewidths=0.9)
    handles = [Line2D([], [], linestyle="", marker="o", markersize=7, markerfacecolor=tuple(colors[k]),
                      markeredgecolor="k", markeredgewidth=0.3, label=f"class {k}")
               for k in range(n_classes) if (y == k).any() or (grid_classes == k).any()]
    handles.append(Line2D([], [], color="0.25", linewidth=0.8, label="decision boundary"))
    if wrong.any():
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=9, markerfacecolor="none",
                              markeredgecolor="k", label=f"misclassified ({int(wrong.sum())})"))
    ax.legend(handles=handles, title="true label (dots)\npredicted class (shading)",
              loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return f"Decision regions - accuracy {1 - wrong.mean():.3f} on these {len(X)} points"


def _draw_value_map(figure, ax, grid_x, grid_y, grid_values, X, y, predicted):
    from matplotlib.colors import Normalize

    y = y.astype(np.float64)
    norm = Normalize(vmin=min(grid_values.min(), y.min()), vmax=max(grid_values.max(), y.max()))
    filled = ax.contourf(grid_x, grid_y, grid_values.reshape(grid_x.shape), levels=20, cmap="viridis", norm=norm)
    size = float(np.clip(6000 / len(X), 6, 40))
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="viridis", norm=norm, s=size, edgecolors="w", linewidths=0.4)
    figure.colorbar(filled, ax=ax, label="predicted value (shading), target (dots)")
    rmse = math.sqrt(float(np.mean((predicted - y) ** 2)))
    return f"Predicted value - RMSE {rmse:.4g} on these {len(X)} points"


# ------------------------------------------------------------ lr range test
def lr_finder(result, path=None, title=None):
    """The loss of the learning-rate range test against the learning rate, the suggestion marked.

    Parameters
    ----------
    result : gpubp.lr_finder.LRFinderResult
        What :func:`gpubp.lr_find` returned (``lrs``, ``losses``, ``smoothed_losses``, ``suggestion``,
        ``suggestion_index``, ``min_loss_index``).
    path : str or path-like, optional
        Write the figure there as a PNG.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        One panel, log learning-rate axis: each step's loss (faint), the smoothed loss, the suggestion
        (star and dashed line) and the lowest smoothed loss.
    """
    lrs = np.asarray(getattr(result, "lrs", ()), dtype=np.float64)
    losses = np.asarray(getattr(result, "losses", ()), dtype=np.float64)
    smoothed = np.asarray(getattr(result, "smoothed_losses", ()), dtype=np.float64)
    if lrs.size < 2 or losses.shape != lrs.shape or smoothed.shape != lrs.shape:
        raise InvalidInputError("lr_finder plots what gpubp.lr_find returned: lrs, losses and smoothed_losses of "
                                "the same length, at least 2 steps")
    figure = _new_figure(figsize=(8, 4.8))
    ax = figure.subplots()
    ax.plot(lrs, losses, color="C0", alpha=0.25, linewidth=0.8, label="loss of each step")
    ax.plot(lrs, smoothed, color="C0", linewidth=1.8, label="smoothed loss")
    best = int(result.min_loss_index)
    ax.plot(lrs[best], smoothed[best], "o", color="C2", markersize=7,
            label=f"lowest smoothed loss {smoothed[best]:.3g} at lr {lrs[best]:.2g}")
    chosen = int(result.suggestion_index)
    ax.axvline(lrs[chosen], color="C3", linestyle="--", linewidth=1)
    ax.plot(lrs[chosen], smoothed[chosen], "*", color="C3", markersize=14,
            label=f"suggestion: lr {result.suggestion:.2g} (steepest descent)")
    ax.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:  # the explosion would squash the curve: show up to a little above the start
        top = max(finite[: max(1, best + 1)].max(), finite[0]) * 1.25
        low = min(np.nanmin(np.where(np.isfinite(losses), losses, np.nan)), finite.min())
        ax.set_ylim(low - 0.05 * (top - low), top)
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper left")
    stopped = " - stopped when the loss exploded" if getattr(result, "stopped_early", False) else ""
    ax.set_title(title or f"Learning-rate range test ({lrs.size} steps{stopped})")
    return _save(figure, path)


# ------------------------------------------------------------ gradient flow
def gradient_flow(monitor, path=None, title=None):
    """Per-layer gradient norms, update-to-weight ratios and saturated or dead units over the steps.

    Parameters
    ----------
    monitor : gpubp.callbacks.GradientMonitor or dict
        The monitor after training, or its ``.history`` dict: ``"step"`` and per-layer lists under
        ``"grad_norm"``, ``"update_ratio"``, ``"saturated"`` and ``"dead"``.
    path : str or path-like, optional
        Write the figure there as a PNG.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        Three panels against the training step, one line per layer (dark: near the input, light: near
        the output): ||dL/dW|| (log), ||ΔW|| / ||W|| (log) and the fraction of saturated sigmoid/tanh
        outputs (solid) or dead ReLU units (dashed).
    """
    logs = getattr(monitor, "history", monitor)
    if not isinstance(logs, dict) or not logs.get("step") or not logs.get("grad_norm"):
        raise InvalidInputError("gradient_flow plots a GradientMonitor (or its .history dict) that has recorded "
                                "at least one step")
    steps = np.asarray(logs["step"], dtype=np.float64)
    n_layers = len(logs["grad_norm"])
    for key in ("grad_norm", "update_ratio", "saturated", "dead"):
        rows = logs.get(key, [])
        if len(rows) != n_layers or any(len(row) != steps.size for row in rows):
            raise InvalidInputError(f"history[{key!r}] must hold {n_layers} per-layer lists of {steps.size} values")
    from matplotlib import colormaps

    colors = colormaps["viridis"](np.linspace(0.0, 0.9, n_layers))
    marker = "o" if steps.size <= 30 else None
    figure = _new_figure(figsize=(14, 4.6))
    grad_ax, update_ax, unit_ax = figure.subplots(1, 3)
    for layer in range(n_layers):
        style = dict(color=colors[layer], marker=marker, markersize=3, label=f"layer {layer + 1}")
        grad_ax.plot(steps, _positive(logs["grad_norm"][layer]), **style)
        update_ax.plot(steps, _positive(logs["update_ratio"][layer]), **style)
        saturated = np.asarray(logs["saturated"][layer], dtype=np.float64)
        dead = np.asarray(logs["dead"][layer], dtype=np.float64)
        if np.isfinite(saturated).any():
            unit_ax.plot(steps, saturated, **style)
        if np.isfinite(dead).any():
            unit_ax.plot(steps, dead, linestyle="--", **style)
    for ax, label, name in ((grad_ax, "||dL/dW||", "Weight-gradient norm"),
                            (update_ax, "||ΔW|| / ||W||", "Update-to-weight ratio")):
        if any(line.get_ydata().size and np.isfinite(line.get_ydata()).any() for line in ax.lines):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=label, title=name)
        ax.grid(alpha=0.3, which="both")
    unit_ax.set(xlabel="step", ylabel="fraction of units", title="Saturated (solid) / dead ReLU (dashed)",
                ylim=(-0.03, 1.03))
    unit_ax.grid(alpha=0.3)
    if not unit_ax.lines:
        unit_ax.text(0.5, 0.5, "no sigmoid, tanh or ReLU layers", ha="center", va="center",
                     transform=unit_ax.transAxes, color="0.4")
    handles, labels = grad_ax.get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", title="layer (input first)")
    figure.suptitle(title or f"Gradient flow over {int(steps[-1]) + 1} steps ({steps.size} records, "
                              f"{n_layers} layers)")
    return _save(figure, path)


def _positive(values):
    """``values`` as floats with zeros and negatives as NaN (gaps on a log axis)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(values > 0, values, np.nan)
