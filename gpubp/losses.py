"""Loss functions, each fused with its gradient with respect to the network output.

A loss object turns user targets into the device-side form its kernel wants
(:meth:`prepare_targets`), computes the batch loss and writes dL/d(output)
into a preallocated buffer in one call (:meth:`forward_backward`), and maps
raw outputs to predictions (:meth:`output_activation_`). Losses keep no state
between calls: whatever depends on the targets is decided from the targets.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInputError


def _as_2d_targets(y, n_outputs, name):
    y = np.asarray(y)
    if y.ndim == 1 and n_outputs == 1:
        y = y.reshape(-1, 1)
    if y.ndim != 2 or y.shape[1] != n_outputs:
        raise InvalidInputError(
            f"y for the {name} loss must have shape (n_samples, {n_outputs})"
            + (" or (n_samples,)" if n_outputs == 1 else "") + f", got {y.shape}"
        )
    return y


def _labels_from_targets(y, n_outputs, name):
    """Integer class labels (n,) from labels or one-hot rows; raises on anything else."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == n_outputs and n_outputs > 1:
        if not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise InvalidInputError(f"2-D y for the {name} loss must hold one-hot rows")
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise InvalidInputError(
            f"y for the {name} loss must be integer labels of shape (n_samples,) or one-hot "
            f"rows of shape (n_samples, {n_outputs}), got shape {y.shape}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise InvalidInputError(f"y for the {name} loss holds non-integer class labels")
        if y.size and (y.min() < 0 or y.max() >= n_outputs):
            raise InvalidInputError(
                f"class labels must lie in [0, {n_outputs - 1}] for a model with {n_outputs} outputs, "
                f"got labels from {y.min():g} to {y.max():g}")
    elif y.dtype.kind not in "iub":
        raise InvalidInputError(f"y for the {name} loss must be numeric class labels, got dtype {y.dtype}")
    labels = y.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_outputs):
        raise InvalidInputError(
            f"class labels must lie in [0, {n_outputs - 1}] for a model with {n_outputs} outputs, "
            f"got labels from {labels.min()} to {labels.max()}"
        )
    return labels


class Loss:
    """Base class: ``name``, ``is_classification`` and the three hooks below."""

    name = ""
    #: True when accuracy is a meaningful metric for this loss.
    is_classification = False
    #: True when accuracy counts every output element (multi-label), not every row.
    accuracy_per_element = False

    def prepare_targets(self, y, n_outputs, dtype):
        """Host targets -> NumPy array in the layout the kernel expects."""
        raise NotImplementedError

    def reports_accuracy(self, y, n_outputs):
        """Whether accuracy means something for the user's targets ``y`` (host array)."""
        return self.is_classification

    def forward_backward(self, kernels, outputs, targets, grad, loss):
        """Write the batch loss into ``loss`` ((1,) float64, on the device) and dL/d(outputs) into ``grad``."""
        raise NotImplementedError

    def output_activation_(self, kernels, outputs):
        """In place: map raw network outputs to predictions."""
        return outputs

    def correct(self, xp, outputs, targets):
        """Number of correct predictions in a batch (a device scalar), for accuracy."""
        raise NotImplementedError


def _labels_given(y, n_outputs):
    """True when ``y`` holds integer class labels for a model with several outputs."""
    y = np.asarray(y)
    return y.ndim == 1 and n_outputs > 1 and y.dtype.kind in "iub"


class MeanSquaredError(Loss):
    """``L = 1/(2B) * sum_b sum_k (o_bk - t_bk)^2``, so ``dL/do = (o - t) / B``.

    Targets are (B, K) floats, (B,) when K == 1, or integer class labels when
    K > 1 (one-hot encoded; accuracy is then reported).
    """

    name = "mse"

    def reports_accuracy(self, y, n_outputs):
        return _labels_given(y, n_outputs)

    def prepare_targets(self, y, n_outputs, dtype):
        y = np.asarray(y)
        if _labels_given(y, n_outputs):
            labels = _labels_from_targets(y, n_outputs, self.name)
            onehot = np.zeros((labels.size, n_outputs), dtype=dtype)
            onehot[np.arange(labels.size), labels] = 1
            return onehot
        return _as_2d_targets(y, n_outputs, self.name).astype(dtype, copy=False)

    def forward_backward(self, kernels, outputs, targets, grad, loss):
        kernels.mse(outputs, targets, grad, loss)

    def correct(self, xp, outputs, targets):
        return xp.count_nonzero(xp.argmax(outputs, axis=1) == xp.argmax(targets, axis=1))


class BinaryCrossEntropy(Loss):
    """Sigmoid + cross-entropy on the logits z, mean over all B*K elements.

    ``L = mean(max(z, 0) - z t + log(1 + exp(-|z|)))``, ``dL/dz = (sigmoid(z) - t) / (B K)``.
    Targets in [0, 1] of shape (B, K), or (B,) when K == 1.
    """

    name = "binary_cross_entropy"
    is_classification = True
    accuracy_per_element = True

    def prepare_targets(self, y, n_outputs, dtype):
        y = _as_2d_targets(y, n_outputs, self.name).astype(dtype)
        if y.size and (np.nanmin(y) < 0 or np.nanmax(y) > 1):
            raise InvalidInputError("targets of the binary_cross_entropy loss must lie in [0, 1]")
        return y

    def forward_backward(self, kernels, outputs, targets, grad, loss):
        kernels.binary_cross_entropy(outputs, targets, grad, loss)

    def output_activation_(self, kernels, outputs):
        kernels.sigmoid_(outputs)
        return outputs

    def correct(self, xp, outputs, targets):
        # outputs are logits: sigmoid(z) > 0.5 <=> z > 0
        return xp.count_nonzero((outputs > 0) == (targets > 0.5))


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy on the logits z, mean over the batch.

    ``L = -1/B * sum_b log softmax(z_b)[t_b]``, ``dL/dz = (softmax(z) - onehot(t)) / B``.
    Targets are integer labels (B,) or one-hot rows (B, K).
    """

    name = "softmax_cross_entropy"
    is_classification = True

    def prepare_targets(self, y, n_outputs, dtype):
        return _labels_from_targets(y, n_outputs, self.name)

    def forward_backward(self, kernels, outputs, targets, grad, loss):
        kernels.softmax_cross_entropy(outputs, targets, grad, loss)

    def output_activation_(self, kernels, outputs):
        kernels.softmax_(outputs)
        return outputs

    def correct(self, xp, outputs, targets):
        return xp.count_nonzero(xp.argmax(outputs, axis=1) == targets)


LOSSES = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "categorical_crossentropy": SoftmaxCrossEntropy,
    "sparse_categorical_crossentropy": SoftmaxCrossEntropy,
}


def get_loss(loss):
    """Return a :class:`Loss` instance from a name or an instance."""
    if isinstance(loss, Loss):
        return loss
    try:
        return LOSSES[loss.lower()]()
    except (KeyError, AttributeError):
        raise InvalidInputError(
            f"unknown loss {loss!r}; valid names are {sorted(LOSSES)}"
        ) from None
