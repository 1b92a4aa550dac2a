"""Per-row weights of the loss: ``sample_weight`` times ``class_weight[label]`` (Keras' semantics).

A weighted batch's loss is ``sum_b w_b l_b / B`` (Keras' "sum_over_batch_size"), so row b's gradient is
scaled by w_b; the weights live on the device next to the targets and each step gathers its rows' weights
with its batch (see :class:`gpubp.buffers.EpochBatches`).
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidInputError, InvalidTypeError


def _class_labels(backend, loss, y, name):
    """Host int64 class indices of the device targets ``y`` (softmax labels, or 0/1 targets of a
    one-output binary cross-entropy), for ``class_weight``."""
    if loss.name == "softmax_cross_entropy":
        return backend.to_host(y).astype(np.int64)
    if loss.name == "binary_cross_entropy" and y.ndim == 2 and y.shape[1] == 1:
        t = backend.to_host(y)[:, 0]
        if not np.all((t == 0) | (t == 1)):
            raise InvalidInputError(f"{name} weighs classes, but the binary_cross_entropy targets are not all 0 or 1")
        return t.astype(np.int64)
    raise InvalidInputError(f"{name} needs class labels: it works with the softmax_cross_entropy loss, or "
                            f"binary_cross_entropy with one output, not the {loss.name} loss"
                            + (" with several outputs" if loss.name == "binary_cross_entropy" else ""))


def class_weights(class_weight, labels, n_classes, name="class_weight"):
    """The (n_classes,) float64 weight of each class from ``class_weight``: a dict {class index: weight}
    (classes left out weigh 1) or "balanced", ``n_samples / (n_present_classes * bincount(labels))``
    (scikit-learn's ``compute_class_weight``) for the classes present in ``labels``."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise InvalidInputError(f"{name} must be a dict {{class index: weight}} or 'balanced', got {class_weight!r}")
        present = counts > 0
        weights = np.ones(n_classes)
        weights[present] = labels.size / (np.count_nonzero(present) * counts[present])
        return weights
    if not isinstance(class_weight, dict):
        raise InvalidTypeError(f"{name} must be a dict {{class index: weight}} or 'balanced', "
                               f"got {type(class_weight).__name__}")
    weights = np.ones(n_classes)
    for key, value in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, numbers.Integral) or not 0 <= key < n_classes:
            raise InvalidInputError(f"{name} names the class {key!r}, but the classes are the integers 0 to "
                                    f"{n_classes - 1}")
        if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
                or not np.isfinite(value) or value < 0):
            raise InvalidInputError(f"{name}[{key}] must be a finite number >= 0, got {value!r}")
        weights[int(key)] = float(value)
    return weights


def host_row_weights(sample_weight, n_samples, name="sample_weight"):
    """``sample_weight`` checked: a host (n_samples,) float64 array of finite numbers >= 0."""
    try:
        w = np.asarray(sample_weight)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"{name} must be an array of numbers, got {type(sample_weight).__name__}") from None
    if w.dtype.kind not in "biuf":
        raise InvalidTypeError(f"{name} must hold numbers, got dtype {w.dtype}")
    if w.shape != (n_samples,):
        raise InvalidInputError(f"{name} must have shape ({n_samples},), one weight per sample, got {w.shape}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidInputError(f"{name} must hold finite weights >= 0")
    return w


def row_weights(backend, sample_weight, class_weight, loss, y, n_samples, n_outputs, name="sample_weight"):
    """The rows' loss weights as an (n_samples,) float64 device array, or None when there are none (or all
    are exactly 1: the unweighted loss is the same and runs its own kernel). ``y``: the device targets."""
    if sample_weight is None and class_weight is None:
        return None
    w = np.ones(n_samples) if sample_weight is None else host_row_weights(sample_weight, n_samples, name)
    if class_weight is not None:
        labels = _class_labels(backend, loss, y, "class_weight")
        n_classes = 2 if loss.name == "binary_cross_entropy" else n_outputs
        w = w * class_weights(class_weight, labels, n_classes)[labels]
    if n_samples and not np.any(w > 0):
        raise InvalidInputError(f"{name}{' times class_weight' if class_weight is not None else ''} is zero for "
                                f"every row: the weighted loss would be 0 whatever the model does")
    if np.all(w == 1.0):
        return None
    return backend.asarray(w, np.float64)

