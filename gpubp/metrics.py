"""Evaluation metrics: their definitions, and the device-side sums one evaluation pass accumulates for them.

``model.compile(metrics=[...])`` takes these names (or the objects below):

=================== ==================================================================================
``"accuracy"``      share of correct predictions (of every output element for binary_cross_entropy)
``"precision"``     scikit-learn's ``precision_score``: macro average over the classes, except for one
``"recall"``        sigmoid output (binary_cross_entropy, K = 1), where it is that of the positive class
``"f1"``            (``average="binary"``, scikit-learn's default); several sigmoid outputs (multi-label)
                    average over the outputs. The macro average of a softmax counts the classes that
                    occur in the targets or the predictions (scikit-learn's ``labels=None``); a class
                    never predicted has precision 0, as scikit-learn's ``zero_division``
``"top_k_accuracy"`` share of rows whose true class is among the k highest outputs (k = 5; ties count
                    as hits); ``"top_3_accuracy"`` or ``TopKAccuracy(k=3)`` choose k
``"rmse"``          root mean squared error of each output, averaged over the outputs
``"mae"``           mean absolute error, averaged over the outputs
``"r2"``            coefficient of determination of each output (scikit-learn's ``r2_score``: 1.0 for
                    a constant target predicted exactly, else 0.0), averaged over the outputs
=================== ==================================================================================

The first five need class labels (a cross-entropy loss, or integer labels with a regression loss), the
last three real targets and a regression loss. Every metric is a function of a few sums over the rows
(:class:`Evaluation`): per-class true, predicted and correct counts, top-k hits, and per-output sums of
squared and absolute errors and of the targets and their squares. They are accumulated on the device,
chunk by chunk, in one float64 vector read once at the end, and sums over the ranks of data-parallel
training add up to those of the whole data. R² comes from ``sum(t^2) - sum(t)^2 / n`` in float64 (as
Keras' ``R2Score``), which loses digits only for targets whose mean is many orders of magnitude above
their spread.
"""

from __future__ import annotations

import math
import re

import numpy as np

from .errors import InvalidInputError
from .validation import as_list


class Metric:
    """A metric: its ``name`` (the key of ``evaluate``'s dict and of the History, "val_" + name for the
    validation data) and :meth:`result` from the :class:`Sums` of an evaluation."""

    name = ""
    #: "classification": needs class labels; "regression": real targets and a regression loss
    kind = "classification"

    def result(self, sums):
        raise NotImplementedError

    def get_config(self):
        """The metric as saved with a model: its name (:func:`get_metric` reads it back)."""
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}()"


class Accuracy(Metric):
    name = "accuracy"

    def result(self, sums):
        return sums.hits / (sums.rows * (sums.n_outputs if sums.per_element else 1))


class _ClassCounts(Metric):
    """Precision, recall and F1 from the per-class true, predicted and correct counts."""

    def per_class(self, tp, true, predicted):
        raise NotImplementedError

    def result(self, sums):
        tp, true, predicted = sums.tp, sums.true, sums.predicted
        if sums.binary:  # one sigmoid output: the positive class (scikit-learn's average="binary")
            return float(self.per_class(tp, true, predicted)[0])
        scores = self.per_class(tp, true, predicted)
        if not sums.per_element:  # a softmax: the classes seen in the targets or the predictions
            scores = scores[(true + predicted) > 0]
        return float(scores.mean()) if scores.size else 0.0


def _ratio(numerator, denominator):
    """``numerator / denominator`` element-wise, 0 where the denominator is 0 (scikit-learn's zero_division)."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64),
                     where=denominator > 0)


class Precision(_ClassCounts):
    name = "precision"

    def per_class(self, tp, true, predicted):
        return _ratio(tp, predicted)


class Recall(_ClassCounts):
    name = "recall"

    def per_class(self, tp, true, predicted):
        return _ratio(tp, true)


class F1Score(_ClassCounts):
    name = "f1"

    def per_class(self, tp, true, predicted):
        return _ratio(2 * tp, true + predicted)


class TopKAccuracy(Metric):
    """Share of rows whose true class is among the ``k`` highest outputs (ties count as hits); named
    ``top_<k>_accuracy`` unless ``name`` is given."""

    def __init__(self, k=5, name=None):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"the k of top_k_accuracy must be an integer >= 1, got {k!r}")
        self.k = int(k)
        allowed = [f"top_{self.k}_accuracy"] + (["top_k_accuracy"] if self.k == 5 else [])
        if name is not None and (not isinstance(name, str) or name not in allowed):
            raise InvalidInputError(f"name must be None or one of {allowed} (a compiled model keeps its metrics by "
                                    f"name), got {name!r}")
        self.name = f"top_{self.k}_accuracy" if name is None else name

    def result(self, sums):
        return sums.top_k[self.k] / sums.rows

    def __repr__(self):
        return f"TopKAccuracy(k={self.k})"


class RootMeanSquaredError(Metric):
    name = "rmse"
    kind = "regression"

    def result(self, sums):
        return float(np.sqrt(sums.squared_error / sums.rows).mean())


class MeanAbsoluteError(Metric):
    name = "mae"
    kind = "regression"

    def result(self, sums):
        return float((sums.absolute_error / sums.rows).mean())


class R2Score(Metric):
    name = "r2"
    kind = "regression"

    def result(self, sums):
        n = sums.rows
        total = np.maximum(sums.target_squares - sums.target_sum ** 2 / n, 0.0)
        constant = total <= 1e-12 * np.maximum(sums.target_squares, np.finfo(np.float64).tiny)
        scores = np.where(constant, np.where(sums.squared_error == 0, 1.0, 0.0),
                          1.0 - _ratio(sums.squared_error, np.where(constant, 1.0, total)))
        return float(scores.mean())


METRICS = {"accuracy": Accuracy, "precision": Precision, "recall": Recall, "f1": F1Score,
           "top_k_accuracy": TopKAccuracy, "rmse": RootMeanSquaredError, "mae": MeanAbsoluteError,
           "r2": R2Score}
_TOP_K = re.compile(r"^top_([1-9][0-9]*)_accuracy$")


def metric_names():
    """The names :func:`get_metric` knows (``top_<k>_accuracy`` for any k besides)."""
    return list(METRICS) + ["top_<k>_accuracy"]


def get_metric(metric):
    """A :class:`Metric` from a name or a Metric; InvalidInputError naming an unknown one."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric == "top_k_accuracy":
            return TopKAccuracy(5, name=metric)
        if metric in METRICS:
            return METRICS[metric]()
        match = _TOP_K.match(metric)
        if match:
            return TopKAccuracy(int(match.group(1)))
    raise InvalidInputError(f"unknown metrics [{metric!r}]; valid: {metric_names()}")


def get_metrics(metrics):
    """``compile``'s ``metrics`` as a list of distinct :class:`Metric` objects (each name once, in order):
    None gives [], a single name or Metric a one-element list."""
    metrics = as_list("metrics", metrics, lambda m: isinstance(m, (str, Metric)),
                      "a list of metric names such as ['accuracy'] or gpubp.metrics.Metric objects")
    unknown = [m for m in metrics if not isinstance(m, Metric) and not (isinstance(m, str) and (
        m in METRICS or _TOP_K.match(m)))]
    if unknown:
        raise InvalidInputError(f"unknown metrics {unknown}; valid: {metric_names()}")
    chosen = {}
    for metric in metrics:
        metric = get_metric(metric)
        chosen.setdefault(metric.name, metric)
    return list(chosen.values())


def check_metrics_fit_loss(metrics, loss, n_outputs):
    """InvalidInputError naming the first metric that cannot measure a model with this loss."""
    for metric in metrics:
        if metric.kind == "regression" and loss.is_classification:
            raise InvalidInputError(f"the metric {metric.name!r} measures regression, but the {loss.name} loss "
                                    f"is a classification loss: use 'accuracy', 'precision', 'recall', 'f1'")
        if isinstance(metric, TopKAccuracy) and loss.accuracy_per_element:
            raise InvalidInputError(f"the metric {metric.name!r} ranks the outputs of one class per row, but "
                                    f"the {loss.name} loss predicts each output on its own: use a softmax "
                                    f"(softmax_cross_entropy) or 'accuracy'")


def check_metrics_fit_targets(metrics, loss, with_labels, name="y"):
    """InvalidInputError naming the first classification metric (but accuracy, which is None then) asked of
    real-valued targets (``with_labels`` False)."""
    if with_labels:
        return
    for metric in metrics:
        if metric.kind == "classification" and not isinstance(metric, Accuracy):
            raise InvalidInputError(f"the metric {metric.name!r} needs class labels, but {name} holds "
                                    f"real-valued targets for the {loss.name} loss (integer labels, one per "
                                    f"row, for a model with several outputs); use 'rmse', 'mae' or 'r2'")


class Sums:
    """The host values of an evaluation's sums, by name (see :class:`Evaluation`)."""

    def __init__(self, values, layout, n_outputs, per_element, binary):
        self.n_outputs, self.per_element, self.binary = n_outputs, per_element, binary
        self.rows = float(values[layout["rows"]][0])
        self.loss = float(values[layout["loss"]][0]) / self.rows if self.rows else math.nan
        self.hits = float(values[layout["hits"]][0]) if "hits" in layout else None
        if "counts" in layout:
            self.tp, self.true, self.predicted = values[layout["counts"]].reshape(3, -1)
        self.top_k = {k: float(values[layout[f"top_{k}"]][0]) for k in layout.get("ks", ())}
        if "regression" in layout:
            (self.squared_error, self.absolute_error, self.target_sum,
             self.target_squares) = values[layout["regression"]].reshape(4, -1)


class Evaluation:
    """The sums behind the loss and ``metrics`` of one evaluation, accumulated on the device.

    :meth:`zeros` makes the float64 device vector; :meth:`add_` adds a chunk's rows to it (device work
    only, no host read); :meth:`result` turns the host copy (summed over ranks, when data-parallel) into
    ``{"loss", "accuracy", <metric name>: value ...}``. ``with_labels``: whether the targets are class
    labels (accuracy is None, and classification metrics are left out, otherwise).
    """

    def __init__(self, xp, loss, n_outputs, metrics, with_labels):
        self.xp, self.loss, self.n_outputs, self.with_labels = xp, loss, n_outputs, with_labels
        self.metrics = [m for m in metrics if with_labels or m.kind == "regression"]
        self.per_element = loss.accuracy_per_element
        self.binary = self.per_element and n_outputs == 1
        layout, size = {}, 0

        def take(key, n):
            nonlocal size
            layout[key] = slice(size, size + n)
            size += n

        take("loss", 1)
        take("rows", 1)
        if with_labels:
            take("hits", 1)
        if any(isinstance(m, _ClassCounts) for m in self.metrics):
            take("counts", 3 * n_outputs)
        self.ks = sorted({m.k for m in self.metrics if isinstance(m, TopKAccuracy)})
        if self.ks:
            layout["ks"] = self.ks
            for k in self.ks:
                take(f"top_{k}", 1)
        if any(m.kind == "regression" for m in self.metrics):
            take("regression", 4 * n_outputs)
        self.layout, self.size = layout, size

    def zeros(self):
        return self.xp.zeros(self.size, dtype=np.float64)

    def add_(self, sums, outputs, targets, loss, rows):
        """Add a chunk: its raw outputs (logits for the cross-entropy losses), device targets in the loss's
        layout, its mean loss ((1,) device array) and its number of rows."""
        xp, layout, f64 = self.xp, self.layout, np.float64
        sums[layout["loss"]] += loss * rows
        sums[layout["rows"]] += rows
        if "hits" in layout:
            sums[layout["hits"]] += self.loss.correct(xp, outputs, targets)
        if "counts" in layout or self.ks:
            true, predicted = self.loss.true_and_predicted(xp, outputs, targets)
        if "counts" in layout:
            K = self.n_outputs
            if self.per_element:  # 0/1 per output: column sums
                counts = xp.stack([(true * predicted).sum(axis=0), true.sum(axis=0), predicted.sum(axis=0)])
            else:
                counts = xp.stack([xp.bincount(true, weights=(true == predicted).astype(f64), minlength=K),
                                   xp.bincount(true, minlength=K), xp.bincount(predicted, minlength=K)])
            sums[layout["counts"]] += counts.astype(f64).ravel()
        if self.ks:
            score = xp.take_along_axis(outputs, true.reshape(-1, 1), axis=1)
            rank = xp.count_nonzero(outputs > score, axis=1)  # outputs above the true class's
            for k in self.ks:
                sums[layout[f"top_{k}"]] += xp.count_nonzero(rank < k)
        if "regression" in layout:
            t = targets.astype(f64)
            error = outputs.astype(f64) - t
            sums[layout["regression"]] += xp.concatenate([(error * error).sum(axis=0), xp.abs(error).sum(axis=0),
                                                          t.sum(axis=0), (t * t).sum(axis=0)])

    def result(self, values):
        """``{"loss", "accuracy", <metric>: value, ...}`` from the host sums (accuracy None without labels)."""
        sums = Sums(np.asarray(values, dtype=np.float64), self.layout, self.n_outputs, self.per_element,
                    self.binary)
        result = {"loss": sums.loss, "accuracy": Accuracy().result(sums) if self.with_labels else None}
        for metric in self.metrics:
            result[metric.name] = float(metric.result(sums))
        return result


__all__ = ["Metric", "Accuracy", "Precision", "Recall", "F1Score", "TopKAccuracy", "RootMeanSquaredError",
           "MeanAbsoluteError", "R2Score", "Evaluation", "get_metric", "get_metrics", "metric_names"]
