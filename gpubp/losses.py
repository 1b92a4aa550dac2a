"""Loss functions, each fused with its gradient with respect to the network output.

A loss object turns user targets into the device-side form its kernel wants
(:meth:`prepare_targets`), computes the batch loss and writes dL/d(output)
into a preallocated buffer in one call (:meth:`forward_backward`), and maps
raw outputs to predictions (:meth:`output_activation_`). Losses keep no state
between calls: whatever depends on the targets is decided from the targets.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import InvalidInputError, InvalidTypeError
from .validation import check_number


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
    """Base class: ``name``, ``is_classification`` and the three hooks below.

    A loss with parameters (``Huber(delta=...)``, ``SoftmaxCrossEntropy(label_smoothing=...)``) lists them
    in :meth:`parameters`; :meth:`get_config` and :func:`get_loss` round-trip them through saved models.
    """

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

    def forward_backward(self, kernels, outputs, targets, grad, loss, weights=None):
        """Write the batch loss into ``loss`` ((1,) float64, on the device) and dL/d(outputs) into ``grad``.

        ``weights`` ((B,) float64 on the device, or None) weights row b by w_b: the loss is
        ``sum_b w_b l_b / B`` and row b of the gradient is w_b times the unweighted one (the kernel
        ``weighted_loss``); None runs the unweighted kernel."""
        raise NotImplementedError

    def kernel_parameter(self):
        """The scalar parameter of this loss's kernel (label smoothing, delta; 0.0 for none)."""
        return 0.0

    def output_activation_(self, kernels, outputs):
        """In place: map raw network outputs to predictions."""
        return outputs

    def correct(self, xp, outputs, targets):
        """Number of correct predictions in a batch (a device scalar), for accuracy."""
        raise NotImplementedError

    def true_and_predicted(self, xp, outputs, targets):
        """``(true, predicted)`` class indices of a batch on the device, for the classification metrics:
        (B,) integer arrays, or (B, K) 0/1 arrays of a multi-label (element-wise) loss."""
        raise NotImplementedError

    def parameters(self):
        """``{name: value}`` of this loss's parameters (empty for a loss without any)."""
        return {}

    def get_config(self):
        """The loss as saved in a model configuration: its name, or ``{"name": name, **parameters}``
        when a parameter differs from its default (so a default loss saves as before: a name)."""
        parameters = self.parameters()
        if not parameters or parameters == type(self)().parameters():
            return self.name
        return {"name": self.name, **parameters}

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.parameters().items())
        return f"{type(self).__name__}({arguments})"


def _labels_given(y, n_outputs):
    """True when ``y`` holds integer class labels for a model with several outputs."""
    y = np.asarray(y)
    return y.ndim == 1 and n_outputs > 1 and y.dtype.kind in "iub"


class RegressionLoss(Loss):
    """A loss on (B, K) float targets, (B,) when K == 1, or integer class labels when K > 1 (one-hot
    encoded; accuracy is then reported)."""

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

    def correct(self, xp, outputs, targets):
        return xp.count_nonzero(xp.argmax(outputs, axis=1) == xp.argmax(targets, axis=1))

    def true_and_predicted(self, xp, outputs, targets):
        return xp.argmax(targets, axis=1), xp.argmax(outputs, axis=1)


class MeanSquaredError(RegressionLoss):
    """``L = 1/(2B) * sum_b sum_k (o_bk - t_bk)^2``, so ``dL/do = (o - t) / B``.

    Half the sum of squares per sample (scikit-learn's MLP convention), not PyTorch's MSELoss mean over
    the B K elements: for K outputs it is K/2 times that. Targets as :class:`RegressionLoss`.
    """

    name = "mse"

    def forward_backward(self, kernels, outputs, targets, grad, loss, weights=None):
        if weights is not None:
            kernels.weighted_loss(self.name, outputs, targets, weights, grad, loss, self.kernel_parameter())
        else:
            kernels.mse(outputs, targets, grad, loss)


class Huber(RegressionLoss):
    """Huber loss, the mean over all B*K elements (PyTorch's ``HuberLoss(delta=delta)``, Keras' ``Huber``).

    With ``r = o - t``: ``L = mean(r^2 / 2 if |r| <= delta else delta (|r| - delta / 2))``, so
    ``dL/do = clip(r, -delta, delta) / (B K)``. Quadratic near the target, linear beyond ``delta``
    (> 0, default 1.0), so outliers pull with at most ``delta``. Targets as :class:`RegressionLoss`.
    """

    name = "huber"

    def __init__(self, delta=1.0):
        self.delta = check_number("delta", delta, minimum=0.0, strict=True)

    def parameters(self):
        return {"delta": self.delta}

    def kernel_parameter(self):
        return self.delta

    def forward_backward(self, kernels, outputs, targets, grad, loss, weights=None):
        if weights is not None:
            kernels.weighted_loss(self.name, outputs, targets, weights, grad, loss, self.kernel_parameter())
        else:
            kernels.huber(outputs, targets, grad, loss, self.delta)


class MeanAbsoluteError(RegressionLoss):
    """Mean absolute error over all B*K elements (PyTorch's ``L1Loss``, Keras' ``MeanAbsoluteError``).

    ``L = mean |o - t|``, ``dL/do = sign(o - t) / (B K)``, taken as 0 where o == t (as PyTorch's).
    Targets as :class:`RegressionLoss`.
    """

    name = "mae"

    def forward_backward(self, kernels, outputs, targets, grad, loss, weights=None):
        if weights is not None:
            kernels.weighted_loss(self.name, outputs, targets, weights, grad, loss, self.kernel_parameter())
        else:
            kernels.mae(outputs, targets, grad, loss)


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

    def forward_backward(self, kernels, outputs, targets, grad, loss, weights=None):
        if weights is not None:
            kernels.weighted_loss(self.name, outputs, targets, weights, grad, loss, self.kernel_parameter())
        else:
            kernels.binary_cross_entropy(outputs, targets, grad, loss)

    def output_activation_(self, kernels, outputs):
        kernels.sigmoid_(outputs)
        return outputs

    def correct(self, xp, outputs, targets):
        # outputs are logits: sigmoid(z) > 0.5 <=> z > 0
        return xp.count_nonzero((outputs > 0) == (targets > 0.5))

    def true_and_predicted(self, xp, outputs, targets):
        return (targets > 0.5).astype(xp.int64), (outputs > 0).astype(xp.int64)


class SoftmaxCrossEntropy(Loss):
    """Softmax + cross-entropy on the logits z, mean over the batch.

    ``L = -1/B * sum_b sum_k q_bk log softmax(z_b)_k``, ``dL/dz = (softmax(z) - q) / B``, with the target
    ``q = (1 - eps) onehot(t) + eps / K`` for ``label_smoothing`` eps in [0, 1) (default 0: the one-hot;
    PyTorch's ``CrossEntropyLoss(label_smoothing=eps)`` and Keras' ``label_smoothing``).
    Targets are integer labels (B,) or one-hot rows (B, K).
    """

    name = "softmax_cross_entropy"
    is_classification = True

    def __init__(self, label_smoothing=0.0):
        if isinstance(label_smoothing, (bool, np.bool_)) or not isinstance(label_smoothing, numbers.Real):
            raise InvalidTypeError(f"label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        if not 0.0 <= label_smoothing < 1.0:  # NaN fails too; an int beyond float's range compares exactly
            raise InvalidInputError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}: it is the "
                                    f"weight moved from the true class to a uniform target")
        self.label_smoothing = float(label_smoothing)

    def parameters(self):
        return {"label_smoothing": self.label_smoothing}

    def kernel_parameter(self):
        return self.label_smoothing

    def prepare_targets(self, y, n_outputs, dtype):
        return _labels_from_targets(y, n_outputs, self.name)

    def forward_backward(self, kernels, outputs, targets, grad, loss, weights=None):
        if weights is not None:
            kernels.weighted_loss(self.name, outputs, targets, weights, grad, loss, self.kernel_parameter())
        else:
            kernels.softmax_cross_entropy(outputs, targets, grad, loss, self.label_smoothing)

    def output_activation_(self, kernels, outputs):
        kernels.softmax_(outputs)
        return outputs

    def correct(self, xp, outputs, targets):
        return xp.count_nonzero(xp.argmax(outputs, axis=1) == targets)

    def true_and_predicted(self, xp, outputs, targets):
        return targets, xp.argmax(outputs, axis=1)


LOSSES = {
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce": BinaryCrossEntropy,
    "softmax_cross_entropy": SoftmaxCrossEntropy,
    "cross_entropy": SoftmaxCrossEntropy,
    "categorical_crossentropy": SoftmaxCrossEntropy,
    "sparse_categorical_crossentropy": SoftmaxCrossEntropy,
    "huber": Huber,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "l1": MeanAbsoluteError,
}


def get_loss(loss):
    """Return a :class:`Loss` instance from a name, a saved configuration (:meth:`Loss.get_config`: a name
    or ``{"name": name, **parameters}``) or an instance."""
    if isinstance(loss, Loss):
        return loss
    parameters = {}
    if isinstance(loss, dict):
        parameters = dict(loss)
        loss = parameters.pop("name", None)
    try:
        cls = LOSSES[loss.lower()]
    except (KeyError, AttributeError):
        raise InvalidInputError(
            f"unknown loss {loss!r}; valid names are {sorted(LOSSES)}"
        ) from None
    try:
        return cls(**parameters)
    except TypeError:
        raise InvalidInputError(f"the {cls.name} loss takes the parameters {sorted(cls().parameters())}, "
                                f"got {sorted(parameters)}") from None
