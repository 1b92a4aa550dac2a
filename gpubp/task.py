"""What a command-line run learns, decided from its targets and flags, and said out loud.

Whole numbers are not always class labels (a ``price`` column): :func:`decide_task`
picks classification only for text labels or small non-negative whole numbers,
regression otherwise, and refuses a class count that no softmax should have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InvalidInputError

#: Whole-number targets below this read as class labels when no loss is given.
MAX_INFERRED_CLASSES = 100
#: Most classes a softmax output may have (labels 0 .. MAX_CLASSES - 1).
MAX_CLASSES = 10_000
#: Regression targets beyond this magnitude get a warning in the task line.
LARGE_TARGET = 1e3


@dataclass(frozen=True)
class Task:
    loss: str
    n_outputs: int
    description: str  # one line: what was decided and why


def _is_whole(y):
    return y.dtype.kind in "iub" or (y.dtype.kind == "f" and bool(np.all(np.isfinite(y))) and
                                     bool(np.all(y == np.round(y))))


def decide_task(y, loss=None):
    """The :class:`Task` for targets ``y`` (host array) and the loss the user named (None: decide).

    Without a loss: classification (softmax cross-entropy) when ``y`` is 1-D and
    holds text labels or whole numbers from 0 to :data:`MAX_INFERRED_CLASSES` - 1,
    else regression (MSE); 2-D targets are regressed. A softmax gets one output
    per distinct label (the caller maps labels to 0 .. K-1). Raises
    InvalidInputError for fractional class labels, fewer than 2 or more than
    :data:`MAX_CLASSES` classes, and text targets for any loss but a softmax.
    """
    y = np.asarray(y)
    text = y.dtype.kind in "US"
    if loss is None:
        if y.ndim != 1:
            loss, why = "mse", f"the target has {y.shape[1]} columns"
        elif text:
            loss, why = "softmax_cross_entropy", "the target holds text labels"
        elif not _is_whole(y):
            loss, why = "mse", "the target has fractional values"
        else:
            distinct = np.unique(y)
            if distinct.min() < 0 or distinct.max() >= MAX_INFERRED_CLASSES:
                loss = "mse"
                why = (f"the target has {distinct.size:,} distinct whole numbers"
                       + (" including negative ones" if distinct.min() < 0 else
                          f" up to {distinct.max():g}, not class labels 0..{MAX_INFERRED_CLASSES - 1}"))
            else:
                loss, why = "softmax_cross_entropy", f"the target holds {distinct.size} distinct whole numbers"
        why += "; --loss to choose"
    else:
        why = "as --loss asks"
    if loss == "softmax_cross_entropy" and y.ndim == 1:
        if not text and not _is_whole(y):
            raise InvalidInputError("softmax cross-entropy needs class labels: the target has fractional values "
                                    "(for numeric targets pass --loss mse)")
        n_classes = np.unique(y).size
        if n_classes > MAX_CLASSES:
            raise InvalidInputError(f"the target holds {n_classes:,} distinct labels, which would make a "
                                    f"{n_classes:,}-way softmax (at most {MAX_CLASSES:,}); is the target column "
                                    f"right? For numeric targets pass --loss mse")
        if n_classes < 2:
            raise InvalidInputError("softmax cross-entropy needs at least two classes; the target holds one")
        return Task(loss, n_classes, f"task: classification into {n_classes} classes ({why})")
    if text:
        raise InvalidInputError(f"the target holds text labels, which only softmax_cross_entropy can learn, "
                                f"not {loss}")
    n_outputs = 1 if y.ndim == 1 else y.shape[1]
    kind = "classification" if "entropy" in loss else "regression"
    description = f"task: {kind}, {n_outputs} output{'s' if n_outputs > 1 else ''} ({why})"
    spread = float(np.max(np.abs(y))) if y.size and kind == "regression" else 0.0
    if spread > LARGE_TARGET:
        description += (f"; targets reach {spread:.3g} and are used as given (gpubp does not scale regression "
                        f"targets): standardize them for MSE to train well")
    return Task(loss, n_outputs, description)
