"""What a command-line run learns, decided from its targets and flags, and said out loud.

Whole numbers are not always class labels (a ``price`` column), and labels are not
always small (an id column): :func:`decide_task` picks classification only for a
modest number of non-negative whole-number labels, regression otherwise, and
refuses a class count that no softmax should have.
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

    Classification (softmax cross-entropy) when ``y`` is 1-D and holds whole
    numbers from 0 to :data:`MAX_INFERRED_CLASSES` - 1, else
    regression (MSE); 2-D targets are regressed (or, with a named cross-entropy
    loss, used as given). Raises InvalidInputError for class labels that are
    negative, fractional or that would need more than :data:`MAX_CLASSES` outputs.
    """
    y = np.asarray(y)
    if loss is None:
        if y.ndim != 1:
            loss, why = "mse", f"the target has {y.shape[1]} columns"
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
    if loss in ("softmax_cross_entropy", "cross_entropy") and y.ndim == 1:
        if not _is_whole(y) or y.min() < 0:
            raise InvalidInputError("softmax cross-entropy needs class labels 0, 1, 2, ...: the target has "
                                    "negative or fractional values")
        n_classes = int(y.max()) + 1
        if n_classes > MAX_CLASSES:
            raise InvalidInputError(f"the labels go up to {int(y.max()):,}, which would make a {n_classes:,}-way "
                                    f"softmax (at most {MAX_CLASSES:,}); is the target column right? For "
                                    f"numeric targets pass --loss mse")
        if n_classes < 2:
            raise InvalidInputError("softmax cross-entropy needs at least two classes; the target holds only 0")
        return Task(loss, n_classes, f"task: classification into {n_classes} classes ({why})")
    n_outputs = 1 if y.ndim == 1 else y.shape[1]
    kind = "classification" if "entropy" in loss else "regression"
    description = f"task: {kind}, {n_outputs} output{'s' if n_outputs > 1 else ''} ({why})"
    spread = float(np.max(np.abs(y))) if y.size and kind == "regression" else 0.0
    if spread > LARGE_TARGET:
        description += (f"; targets reach {spread:.3g} and are used as given (gpubp does not scale regression "
                        f"targets): standardize them for MSE to train well")
    return Task(loss, n_outputs, description)
