"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural Networks").

:func:`lr_find` trains a copy of a model for a few hundred steps while the
learning rate grows exponentially from ``start_lr`` to ``end_lr``, records the
loss of every step, stops once the loss explodes and suggests a learning rate
from the curve (the procedure of fastai's ``lr_find`` and Lightning's
``Tuner.lr_find``). The model itself is left as it was, bit for bit.

The learning rate reaches the step the way every schedule does: the optimizer
evaluates :class:`ExponentialRange` on the host and stages the value to the
device before the step, so the steps read nothing back and run as captured
CUDA graphs on the GPU; the losses are read in blocks between steps.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from .buffers import EpochBatches
from .errors import InvalidInputError
from .layers import layer_from_config
from .model import Sequential
from .schedules import Schedule, check_positive
from .validation import check_positive_int

#: Steps between reads of the losses on a device whose reads are not free (every step on the CPU).
GPU_READ_EVERY = 10


class ExponentialRange(Schedule):
    """``start_lr * (end_lr / start_lr) ** (step / (steps - 1))``: from ``start_lr`` at step 0 to ``end_lr``
    at step ``steps - 1``, the same factor every step (evenly spaced on a log axis)."""

    def __init__(self, start_lr, end_lr, steps):
        self.start_lr = check_positive("start_lr", start_lr)
        self.end_lr = check_positive("end_lr", end_lr)
        if self.end_lr <= self.start_lr:
            raise InvalidInputError(f"end_lr must be greater than start_lr, got start_lr={start_lr!r} and "
                                    f"end_lr={end_lr!r}")
        self.steps = check_positive_int("steps", steps)
        if self.steps < 2:
            raise InvalidInputError(f"steps must be at least 2, got {steps!r}")

    def __call__(self, step):
        fraction = min(step, self.steps - 1) / (self.steps - 1)  # in logs: end_lr / start_lr may overflow
        if fraction in (0.0, 1.0):
            return self.end_lr if fraction else self.start_lr
        return math.exp(math.log(self.start_lr) + fraction * (math.log(self.end_lr) - math.log(self.start_lr)))


class LRFinderResult:
    """What :func:`lr_find` found.

    Attributes
    ----------
    lrs : ndarray
        The learning rate of each step run.
    losses : ndarray
        Each step's batch loss (before its update).
    smoothed_losses : ndarray
        The exponential moving average of ``losses`` (weight ``smoothing`` on the past, bias-corrected).
    suggestion : float
        The suggested learning rate (see :data:`SUGGESTION_RULE`).
    suggestion_index : int
        Its step.
    min_loss_lr : float
        The learning rate at the lowest smoothed loss (a tenth of it is the older rule of thumb).
    stopped_early : bool
        True when the loss exploded (non-finite, or above ``diverge_threshold`` times the lowest smoothed
        loss) before ``end_lr``; the last step recorded is the one that exploded.
    """

    def __init__(self, lrs, losses, smoothed_losses, stopped_early, settings):
        self.lrs = np.asarray(lrs, dtype=np.float64)
        self.losses = np.asarray(losses, dtype=np.float64)
        self.smoothed_losses = np.asarray(smoothed_losses, dtype=np.float64)
        self.stopped_early = bool(stopped_early)
        self.settings = dict(settings)
        self.suggestion_index, self.min_loss_index = suggest(self.lrs, self.smoothed_losses)
        self.suggestion = float(self.lrs[self.suggestion_index])
        self.min_loss_lr = float(self.lrs[self.min_loss_index])

    @property
    def steps(self):
        return len(self.lrs)

    def plot(self, path=None, title=None):
        """Loss against learning rate (log axis) with the suggestion marked: see :func:`gpubp.plot.lr_finder`."""
        from .plot import lr_finder

        return lr_finder(self, path=path, title=title)

    def summary(self):
        """A few lines for people: the suggestion, the lowest loss and where the test stopped."""
        stop = (f"stopped at step {self.steps} of {self.settings['steps']}: the loss exploded at lr "
                f"{self.lrs[-1]:.3g}" if self.stopped_early else f"ran all {self.steps} steps up to lr "
                                                                  f"{self.lrs[-1]:.3g}")
        return (f"suggested learning rate: {self.suggestion:.3g} (steepest descent of the smoothed loss)\n"
                f"lowest smoothed loss {self.smoothed_losses[self.min_loss_index]:.4g} at lr {self.min_loss_lr:.3g} "
                f"(a tenth of it: {self.min_loss_lr / 10:.3g})\n{stop}")

    def __repr__(self):
        return (f"LRFinderResult(suggestion={self.suggestion:.3g}, min_loss_lr={self.min_loss_lr:.3g}, "
                f"steps={self.steps}, stopped_early={self.stopped_early})")


#: How :func:`suggest` picks the learning rate, in words.
SUGGESTION_RULE = ("the learning rate where the smoothed loss falls fastest against log(lr) (its most negative "
                   "slope), searched from the 10th step (or the first tenth of the steps, if fewer) up to the "
                   "lowest smoothed loss; a tenth of the learning rate at the lowest loss when that stretch "
                   "holds fewer than 3 steps")


def suggest(lrs, smoothed_losses):
    """``(suggestion index, lowest-loss index)`` into the steps of the curve ``smoothed_losses`` over the
    learning rates ``lrs`` (evenly spaced in log(lr)): see :data:`SUGGESTION_RULE`. The fallback is the
    step whose learning rate is nearest to a tenth of that at the lowest loss."""
    lrs, losses = np.asarray(lrs, dtype=np.float64), np.asarray(smoothed_losses, dtype=np.float64)
    finite = np.isfinite(losses)
    if not finite.any():
        return 0, 0
    lowest = int(np.nanargmin(np.where(finite, losses, np.nan)))
    skip = min(10, max(1, len(losses) // 10))
    if lowest - skip >= 2:
        slope = np.gradient(losses[:lowest + 1])  # per step, so per equal step of log(lr)
        return skip + int(np.argmin(slope[skip:lowest + 1])), lowest
    return int(np.argmin(np.abs(np.log(lrs[:lowest + 1]) - np.log(lrs[lowest] / 10)))), lowest


def lr_find(model: Sequential, X: ArrayLike, y: ArrayLike, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, batch_size: int = 32, smoothing: float = 0.9,
            diverge_threshold: float = 4.0) -> LRFinderResult:
    """The learning-rate range test on a copy of ``model``; returns an :class:`LRFinderResult`.

    Parameters
    ----------
    model : gpubp.Sequential
        A compiled model. Its weights, optimizer state and step count, shuffle generator and scaler are left
        untouched: a copy with the same architecture, weights and optimizer settings (its state starts
        afresh, as it would for training from these weights) runs the test.
    X, y : the training data, as for ``fit``.
    start_lr, end_lr : float
        The learning rate of the first and of the last step; it grows by the same factor every step.
    steps : int
        Optimizer steps (batches drawn without replacement, reshuffled each pass over the data); 100 to 300
        is usual.
    batch_size : int
        Rows per step; use the batch size you will train with (the best learning rate depends on it).
    smoothing : float in [0, 1)
        Weight of the past in the moving average of the loss (0: none).
    diverge_threshold : float
        Stop once the smoothed loss exceeds this many times its lowest value, or a loss is not finite.

    The suggestion is :data:`SUGGESTION_RULE`. Try it, or something between it and a tenth of
    ``min_loss_lr``; with a schedule, it is a good peak learning rate.
    """
    model.require_compiled()
    schedule = ExponentialRange(start_lr, end_lr, steps)
    batch_size = check_positive_int("batch_size", batch_size)
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
        raise InvalidInputError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
    threshold = check_positive("diverge_threshold", diverge_threshold)
    if threshold <= 1:
        raise InvalidInputError(f"diverge_threshold must be greater than 1, got {diverge_threshold!r}")
    # the steps' losses (device) and learning rates, losses and smoothed losses (host): before any allocation
    model.backend.require_memory(32 * schedule.steps, f"for the losses of {schedule.steps:,} range-test steps",
                                 "lower steps")

    trial = training_copy(model, X, schedule)
    X, y, _ = trial.prepare(X, y)
    n = X.shape[0]
    batch = min(batch_size, n)
    per_pass = n // batch
    plan = trial.batch_plan(batch, y)
    batches = EpochBatches(trial.backend, X, y, schedule.steps)
    read_every = 1 if trial.backend.reads_are_free else GPU_READ_EVERY
    curve = _Curve(smoothing, threshold)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging step is the curve's to judge
        for step in range(schedule.steps):
            if step % per_pass == 0:
                batches.set_order(trial.shuffle_rng.permutation(n))
            batches.select((step % per_pass) * batch, step)
            trial.train_step(plan, batches=batches)
            if (step + 1) % read_every == 0 or step == schedule.steps - 1:
                if curve.extend(trial.backend.to_host(batches.losses[curve.count:step + 1])):
                    break
    lrs = [schedule(i) for i in range(curve.count)]
    settings = {"start_lr": schedule.start_lr, "end_lr": schedule.end_lr, "steps": schedule.steps,
                "batch_size": batch, "smoothing": float(smoothing), "diverge_threshold": threshold}
    return LRFinderResult(lrs, curve.losses, curve.centred(), curve.exploded, settings)


class _Curve:
    """The losses read so far, their moving average, and whether the loss has exploded."""

    def __init__(self, smoothing, threshold):
        self.smoothing, self.threshold = smoothing, threshold
        self.losses, self.smoothed = [], []
        self.average, self.best, self.exploded = 0.0, math.inf, False

    @property
    def count(self):
        return len(self.losses)

    def extend(self, losses):
        """Add a block of step losses (stopping at the first one that explodes); True once exploded."""
        for loss in np.asarray(losses, dtype=np.float64):
            self.average = self.smoothing * self.average + (1 - self.smoothing) * loss
            smoothed = self.average / (1 - self.smoothing ** (len(self.losses) + 1))
            self.losses.append(float(loss))
            self.smoothed.append(float(smoothed))
            if not math.isfinite(smoothed) or smoothed > self.threshold * self.best:
                self.exploded = True
                return True
            self.best = min(self.best, smoothed)
        return False

    def centred(self):
        """The losses smoothed without lag: the moving average run forward, then backward over the result
        (bias-corrected at both ends). Losses above ``threshold`` times the lowest running average (the
        explosion) count as that bound, so the explosion cannot leak into the steps before it."""
        bound = self.threshold * self.best if math.isfinite(self.best) else math.inf
        losses = np.asarray(self.losses, dtype=np.float64)
        losses = np.where(np.isfinite(losses), np.minimum(losses, bound), bound)
        return _moving_average(_moving_average(losses, self.smoothing)[::-1], self.smoothing)[::-1]


def _moving_average(values, smoothing):
    """The bias-corrected exponential moving average of ``values`` with weight ``smoothing`` on the past."""
    out, average = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        average = smoothing * average + (1 - smoothing) * value
        out[i] = average / (1 - smoothing ** (i + 1))
    return out


def training_copy(model, X, schedule):
    """A new model with ``model``'s architecture, weights, shuffle generator state and scaler, compiled with
    the same loss and an optimizer of the same kind and settings whose learning rate is ``schedule``.

    ``model`` is read only (an unbuilt model stays unbuilt: the copy is built from ``X``)."""
    layers = [layer_from_config(layer.get_config()) for layer in model.layers]
    trial = type(model)(layers, backend=model.backend, dtype=model.dtype, seed=model.seed)
    config = model.optimizer.get_config()
    config.pop("name")
    config["lr"] = schedule
    trial.compile(loss=model.loss, optimizer=type(model.optimizer)(**config))
    trial.cuda_graphs = model.cuda_graphs
    if model.built:
        trial.build(model.input_dim)
        trial.load_state_dict(model.state_dict(), scaler=model.scaler)
    else:
        trial.build_for(X)
    return trial
