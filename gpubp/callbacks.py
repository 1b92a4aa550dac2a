"""Training callbacks (Keras-shaped): the hooks, :class:`History`, :class:`EarlyStopping`,
:class:`ReduceLROnPlateau`, :class:`LearningRateScheduler`, :class:`CSVLogger`, :class:`ModelCheckpoint`.

Two ways to keep a model on disk, for two jobs. :class:`ModelCheckpoint` writes the MODEL FILE
(architecture, weights, loss and optimizer settings, scaler: what ``model.save`` writes and
``gpubp.load`` reads), every epoch or only when ``monitor`` improves: use it to keep the best model.
``fit(checkpoint_dir=..., resume=True)`` writes TRAINING checkpoints (the model's, the optimizer's and
every callback's state, and the epoch; see :mod:`gpubp.checkpoint`): use them to continue a run that
stopped, exactly where it stopped.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import numbers
import os
import string
import warnings

import numpy as np

from .errors import InvalidInputError, InvalidTypeError
from .gradient_monitor import GradientFlowRecorder, GradientFlowWarning  # noqa: F401 (exported)
from .output_paths import check_path
from .schedules import Constant
from .validation import as_list, check_bool, check_number


class Callback:
    """Hooks called by ``fit`` (Keras' names); ``self.model`` is set before training starts.

    Batch-level hooks get ``logs = {"batch": index, "size": rows, "loss": the
    batch loss as a (1,) float64 device array}`` (a NumPy array on the CPU, a
    CuPy array on a GPU), so that steps never wait for the host. Reading it
    (``float(logs["loss"][0])``, or :func:`batch_loss`) is free on the CPU but
    waits for the device on a GPU: a GPU run that reads it every batch runs
    slower. :class:`RunningLoss` sums the batch losses on the device and reads
    once, when asked. Epoch-level hooks get host floats (``loss``, ``val_*``,
    the metrics, ``epoch_time``, ``samples_per_sec``); keys a callback adds to
    them (ReduceLROnPlateau's ``lr``) are recorded in the History too.

    A callback whose ``batch_metrics`` is True also gets the compiled metrics
    in every ``on_batch_end``'s logs, as host floats: running values over the
    epoch's batches so far (Keras' semantics), from each step's own forward
    pass (before its update), unweighted, over this rank's rows in
    data-parallel training. They cost one host read per step (a wait for the
    device on a GPU), so fit computes them only when a callback asks.

    Stateful callbacks return their state from :meth:`state_dict` (JSON values
    and host arrays), which checkpoints save and :meth:`load_state_dict` restores.
    """

    model = None
    #: True: ``on_batch_end``'s logs hold the compiled metrics too (see above)
    batch_metrics = False
    #: this process's rank in data-parallel training (``fit(distributed=...)``), 0 in one process;
    #: callbacks that write files write on rank 0 only
    rank = 0

    def set_model(self, model):
        self.model = model

    def on_train_begin(self, logs=None):
        pass

    def on_epoch_begin(self, epoch, logs=None):
        pass

    def on_batch_begin(self, batch, logs=None):
        pass

    def on_batch_end(self, batch, logs=None):
        pass

    def on_epoch_end(self, epoch, logs):
        pass

    def on_train_end(self, logs=None):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def as_callback_list(callbacks, name="callbacks"):
    """``callbacks`` as a new list of :class:`Callback` objects.

    None gives an empty list and a single callback a one-element list (as in
    Keras); any other iterable must hold Callback instances only. Raises
    InvalidTypeError naming the argument (and the position of a bad entry).
    """
    callbacks = as_list(name, callbacks, lambda c: isinstance(c, Callback),
                        "a list of gpubp.callbacks.Callback objects")
    for i, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise InvalidTypeError(f"{name}[{i}] must be a gpubp.callbacks.Callback (subclass it to write your "
                                   f"own), got {type(callback).__name__}")
    return callbacks


class CallbackList:
    """Calls every callback's hook in order; ``fit`` talks to this alone.

    ``callbacks``: a list of :class:`Callback` objects (see :func:`as_callback_list`); ``rank``: this
    process's rank in data-parallel training, set as each callback's :attr:`Callback.rank`.
    """

    def __init__(self, callbacks, model, rank=0):
        self.callbacks = as_callback_list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)
            callback.rank = int(rank)

    def __iter__(self):
        return iter(self.callbacks)

    def on_train_begin(self, logs=None, started=None):
        """Calls each ``on_train_begin`` in order, appending each callback that ran to ``started``."""
        for callback in self.callbacks:
            callback.on_train_begin(logs)
            if started is not None:
                started.append(callback)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_batch_begin(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_batch_begin(batch, logs)

    def on_batch_end(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs):
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None, only=None, keep_going=False):
        """Calls each ``on_train_end`` (of the callbacks in ``only``, when given) in order.

        Every callback's hook runs even when an earlier one raises; the first
        error is then raised, or, with ``keep_going`` (an error is already in
        flight), reported as a warning.
        """
        first_error = None
        for callback in self.callbacks:
            if only is not None and callback not in only:
                continue
            try:
                callback.on_train_end(logs)
            except Exception as exc:  # noqa: BLE001 - re-raised or reported below
                if first_error is None:
                    first_error = exc
        if first_error is not None:
            if not keep_going:
                raise first_error
            try:
                warnings.warn(f"a callback's on_train_end failed while training was stopping on an error: "
                              f"{type(first_error).__name__}: {first_error}", RuntimeWarning, stacklevel=3)
            except Exception:  # noqa: BLE001 - warnings turned into errors must not hide the error in flight
                pass

    def state_dict(self):
        """``{key: state}`` of every stateful callback, keyed by class name and position."""
        return {f"{type(c).__name__}_{i}": c.state_dict() for i, c in enumerate(self.callbacks) if c.state_dict()}

    def load_state_dict(self, states):
        for i, callback in enumerate(self.callbacks):
            state = states.get(f"{type(callback).__name__}_{i}")
            if state is not None:
                callback.load_state_dict(state)


class History(Callback):
    """Per-epoch metrics: ``history.history["loss"]``, ``["accuracy"]`` (with ``metrics=["accuracy"]``),
    ``["val_loss"]``, ``["val_accuracy"]``,
    ``["epoch_time"]`` (seconds) and ``["samples_per_sec"]``; ``history.epoch`` lists epoch indices.

    ``fit`` runs it first, yet keys that later callbacks add to an epoch's logs (ReduceLROnPlateau's
    and LearningRateScheduler's ``lr``) are recorded for that epoch too, as in Keras."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        #: None, or where a Ctrl-C stopped training: {"epoch", "step", "steps_per_epoch"}
        self.interrupted = None
        #: None, or where training diverged with on_divergence="stop": {"epoch", "step", "reason"}
        self.diverged = None

    @property
    def history(self):
        """``{key: [value per epoch]}``."""
        self._record_added_keys()
        return self._history

    @history.setter
    def history(self, value):
        self._history = value
        self._open_logs, self._recorded = None, set()

    def _record_added_keys(self):
        """Record the keys added to the newest epoch's logs since :meth:`on_epoch_end` read them."""
        logs = self._open_logs
        if logs is None:
            return
        for key in [k for k in logs if k not in self._recorded]:
            self._history.setdefault(key, []).append(logs[key])
            self._recorded.add(key)

    def on_epoch_end(self, epoch, logs):
        self._record_added_keys()
        self.epoch.append(epoch)
        for key, value in logs.items():
            self._history.setdefault(key, []).append(value)
        self._open_logs, self._recorded = logs, set(logs)

    def on_train_end(self, logs=None):
        self._record_added_keys()
        self._open_logs = None

    def state_dict(self):
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.history = {str(k): list(v) for k, v in dict(state["history"]).items()}
        self.epoch = [int(e) for e in state["epoch"]]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


#: names (after any "val_" prefix) of the metrics for which higher is better, besides any "...accuracy"
HIGHER_IS_BETTER = ("precision", "recall", "f1", "r2")


def _check_monitor(monitor):
    if not isinstance(monitor, str):
        raise InvalidTypeError(f"monitor must be the name of a logged metric (a string such as 'val_loss'), "
                               f"got {monitor!r}")
    if not monitor:
        raise InvalidInputError("monitor must be the name of a logged metric such as 'val_loss', got ''")
    return monitor


def _maximizes(monitor, mode):
    """Whether ``monitor`` improves upwards: mode "max", or "auto" and an accuracy, precision, recall, F1
    or R² metric."""
    if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
        raise InvalidInputError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    name = monitor[4:] if monitor.startswith("val_") else monitor
    return mode == "max" or (mode == "auto" and ("accuracy" in name or name in HIGHER_IS_BETTER))


def _check_count(name, value):
    """An integer >= 0 (not a bool), as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
        raise InvalidInputError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_verbose(verbose):
    if not isinstance(verbose, (numbers.Integral, np.bool_)) or verbose not in (0, 1):
        raise InvalidInputError(f"verbose must be 0 or 1, got {verbose!r}")
    return int(verbose)


def _missing(callback, monitor, logs):
    warnings.warn(f"{callback}: metric {monitor!r} is not available; available: {sorted(logs)}", stacklevel=3)


def batch_loss(logs):
    """The batch loss of ``on_batch_end``'s ``logs`` as a float: free on the CPU, one wait for the
    device on a GPU (the step's work must finish first)."""
    return float(logs["loss"][0])


class RunningLoss:
    """The mean loss of the batches since :meth:`reset`, weighted by their rows, summed on the device.

    :meth:`update` (call it from ``on_batch_end``) adds ``loss * size`` on the device without
    reading anything back; :meth:`result` reads the sum once. So a callback that shows a running
    loss every 100 steps waits for the device once per 100 steps, not every step::

        class Every100(gb.Callback):
            def __init__(self):
                self.running = gb.callbacks.RunningLoss()

            def on_batch_end(self, batch, logs=None):
                self.running.update(logs)
                if (batch + 1) % 100 == 0:
                    print(batch + 1, self.running.result())
                    self.running.reset()

    In data-parallel training the batch losses are those of this rank's share of each batch.
    """

    def __init__(self):
        self.reset()

    def reset(self):
        self._total = None
        #: rows of the batches summed since the last reset
        self.rows = 0

    def update(self, logs):
        weighted = logs["loss"] * logs["size"]
        self._total = weighted if self._total is None else self._total + weighted
        self.rows += int(logs["size"])

    def result(self):
        """The mean loss (a float; NaN before any update): one host read."""
        if self._total is None or not self.rows:
            return math.nan
        return float(self._total[0]) / self.rows


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A key of the epoch logs: "val_loss" (default), "val_accuracy", "loss", ...
    patience : int >= 0
        Epochs without improvement to wait before stopping.
    min_delta : float
        Smallest change that counts as an improvement; its absolute value is
        used (as in Keras), so -0.01 and 0.01 mean the same.
    mode : {"auto", "min", "max"}
        "auto" maximises accuracies (names containing "accuracy"), precision,
        recall, f1 and r2 (with or without "val_"), and minimises the rest.
    restore_best_weights : bool
        Copy the best epoch's weights back into the model when training stops.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best_weights=True):
        self.monitor = _check_monitor(monitor)
        self.maximize = _maximizes(monitor, mode)
        self.patience = _check_count("patience", patience)
        self.min_delta = abs(check_number("min_delta", min_delta))
        self.restore_best_weights = check_bool("restore_best_weights", restore_best_weights)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = None
        self.wait = 0
        self.stopped_epoch = None
        self._best_params = None

    def _improved(self, value):
        if self.maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs):
        value = logs.get(self.monitor)
        if value is None:
            _missing("EarlyStopping", self.monitor, logs)
            return
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                params = self.model.params
                if self._best_params is None:
                    self._best_params = params.copy()
                else:
                    self.model.backend.xp.copyto(self._best_params, params)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None and self.restore_best_weights and self._best_params is not None:
            self.model.backend.xp.copyto(self.model.params, self._best_params)

    def state_dict(self):
        state = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                 "stopped_epoch": self.stopped_epoch}
        if self._best_params is not None:
            state["best_params"] = self.model.backend.to_host(self._best_params).copy()
        return state

    def load_state_dict(self, state):
        for key in ("best_epoch", "stopped_epoch"):
            value = state.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{key} must be an integer or None, got {value!r}")
        best_params = state.get("best_params")
        if best_params is not None:
            if tuple(best_params.shape) != tuple(self.model.params.shape):
                raise ValueError(f"best_params has shape {tuple(best_params.shape)}, "
                                 f"the model's parameters {tuple(self.model.params.shape)}")
            if best_params.dtype.kind != "f" or not np.isfinite(best_params).all():
                raise ValueError("best_params must hold finite floats")
        self.best, self.best_epoch, self.wait = float(state["best"]), state["best_epoch"], int(state["wait"])
        self.stopped_epoch = state.get("stopped_epoch")
        if best_params is not None:
            self._best_params = self.model.backend.asarray(best_params, self.model.dtype)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs
    (Keras' ``ReduceLROnPlateau``, same arguments and decisions).

    After each epoch: in cooldown, the cooldown counts down and nothing waits; an improvement (by more
    than ``min_delta``) resets the wait; otherwise, out of cooldown, the wait grows, and when it reaches
    ``patience`` a learning rate above ``min_lr`` becomes ``max(lr * factor, min_lr)``, the wait restarts
    and ``cooldown`` epochs of cooldown begin.

    The rate changes through the optimizer's ``lr_scale``, which multiplies its learning rate: a
    constant ``lr`` simply becomes the new rate; with a schedule (``lr=gb.schedules.Cosine(...)``) the
    schedule goes on and its output is scaled, so each reduction lowers the rest of the curve by
    ``factor`` (``min_lr`` bounds the rate at the reduction; a decaying schedule can take it lower
    later). The new rate reaches the device like every step's rate: staged by the host before each
    step, never read back. The epoch logs (and the History) get ``lr``, the rate the epoch ended with
    (before any reduction at its end, as in Keras); ``verbose=1`` prints a line at each reduction.
    ``state_dict`` holds the wait, the cooldown, the best value and the learning-rate scale, so a
    resumed run continues them.

    Parameters
    ----------
    monitor : str
        A key of the epoch logs: "val_loss" (default), "loss", "val_accuracy", ...
    factor : float in (0, 1)
    patience : int >= 0
    min_delta : float
        Smallest change that counts as an improvement (its absolute value).
    cooldown : int >= 0
        Epochs after a reduction during which no epoch counts towards ``patience``.
    min_lr : float >= 0
    mode : {"auto", "min", "max"}
        As in :class:`EarlyStopping`.
    verbose : {0, 1}
    """

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, min_delta=1e-4, cooldown=0, min_lr=0.0,
                 mode="auto", verbose=0):
        self.monitor = _check_monitor(monitor)
        self.maximize = _maximizes(monitor, mode)
        self.factor = check_number("factor", factor, minimum=0.0, strict=True)
        if self.factor >= 1.0:
            raise InvalidInputError(f"ReduceLROnPlateau does not increase the learning rate: factor must be "
                                    f"< 1, got {factor!r}")
        self.patience = _check_count("patience", patience)
        self.min_delta = abs(check_number("min_delta", min_delta))
        self.cooldown = _check_count("cooldown", cooldown)
        self.min_lr = check_number("min_lr", min_lr, minimum=0.0)
        self.verbose = _check_verbose(verbose)
        self.on_train_begin()

    def on_train_begin(self, logs=None):
        self.best = -math.inf if self.maximize else math.inf
        self.wait = 0
        self.cooldown_counter = 0

    def _improved(self, value):
        if self.maximize:
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch, logs):
        optimizer = self.model.optimizer
        lr = optimizer.lr
        logs["lr"] = lr
        value = logs.get(self.monitor)
        if value is None:
            _missing("ReduceLROnPlateau", self.monitor, logs)
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience and lr > self.min_lr:
            if lr * self.factor >= self.min_lr:
                new_lr, optimizer.lr_scale = lr * self.factor, optimizer.lr_scale * self.factor
            else:
                new_lr, optimizer.lr_scale = self.min_lr, optimizer.lr_scale * (self.min_lr / lr)
            if self.verbose and self.rank == 0:
                print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new_lr:.6g}.", flush=True)
            self.cooldown_counter = self.cooldown
            self.wait = 0

    def state_dict(self):
        return {"best": None if math.isinf(self.best) else float(self.best), "wait": self.wait,
                "cooldown_counter": self.cooldown_counter, "lr_scale": float(self.model.optimizer.lr_scale)}

    def load_state_dict(self, state):
        best, scale = state["best"], float(state["lr_scale"])
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"lr_scale must be a finite number >= 0, got {state['lr_scale']!r}")
        self.best = (-math.inf if self.maximize else math.inf) if best is None else float(best)
        self.wait, self.cooldown_counter = int(state["wait"]), int(state["cooldown_counter"])
        self.model.optimizer.lr_scale = scale


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (Keras' callback):
    ``epoch`` counts from 0, ``lr`` is the current rate, and the returned number (finite, >= 0) holds for
    every step of the epoch. A function of the epoch alone, ``schedule(epoch)`` (older Keras' form), is
    accepted too: which form is read from the function's signature.

    This is the epoch-level alternative to the step-level schedules of :mod:`gpubp.schedules` passed
    as ``lr=`` (``gb.optim.SGD(lr=gb.schedules.StepDecay(0.1, step_size=1000))``), which change the rate
    every optimizer step and are saved with the model. Use one or the other: with a schedule as ``lr=``
    the callback refuses to start. The rate reaches the device as every step's rate does (staged by the
    host, never read back); the epoch logs (and the History) get ``lr``; ``verbose=1`` prints the rate
    each epoch. The optimizer's checkpointed state holds the rate, so a resumed run continues from it.
    """

    def __init__(self, schedule, verbose=0):
        if not callable(schedule):
            raise InvalidTypeError(f"schedule must be a function (epoch, lr) -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self._takes_lr = _schedule_takes_lr(schedule)
        self.verbose = _check_verbose(verbose)

    def on_train_begin(self, logs=None):
        given = self.model.optimizer.schedule
        if not isinstance(given, Constant):
            raise InvalidInputError(f"LearningRateScheduler sets the learning rate per epoch, but the optimizer "
                                    f"already follows the step schedule {type(given).__name__}: pass a number as "
                                    f"lr=, or drop the callback")

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.model.optimizer
        lr = self.schedule(epoch, optimizer.lr) if self._takes_lr else self.schedule(epoch)
        if isinstance(lr, np.ndarray) and lr.size == 1:
            lr = lr.reshape(()).item()
        if (isinstance(lr, (bool, np.bool_)) or not isinstance(lr, numbers.Real)
                or not math.isfinite(_as_float(lr)) or lr < 0):
            call = f"schedule({epoch}, lr)" if self._takes_lr else f"schedule({epoch})"
            raise InvalidInputError(f"LearningRateScheduler: at epoch {epoch}, {call} must return a finite "
                                    f"number >= 0 (the learning rate), got {lr!r}")
        optimizer.lr_scale = float(lr) / optimizer.schedule.lr
        if self.verbose and self.rank == 0:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {float(lr):.6g}.", flush=True)

    def on_epoch_end(self, epoch, logs):
        logs["lr"] = self.model.optimizer.lr


def _schedule_takes_lr(schedule):
    """True if ``schedule`` is called ``schedule(epoch, lr)``, False if ``schedule(epoch)``; a function
    that takes neither is refused. Without a readable signature (some builtins) it is called with both."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):
        return True
    for args in ((0, 1.0), (0,)):
        try:
            signature.bind(*args)
        except TypeError:
            continue
        return len(args) == 2
    raise InvalidInputError(f"schedule must be a function schedule(epoch, lr) -> lr or schedule(epoch) -> lr, "
                            f"got {getattr(schedule, '__name__', type(schedule).__name__)}{signature}")


def _as_float(value):
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


class CSVLogger(Callback):
    """Write one row per epoch to the CSV file ``path``: ``epoch`` (from 0), then every key of the
    epoch logs (as the History holds them: ``loss``, the metrics, ``val_*``, ``epoch_time``,
    ``samples_per_sec``, and ``lr`` from a learning-rate callback listed before this one).

    The header is written once (the columns of the first epoch logged; a key missing from a later
    epoch is written ``NA``). Each row is written whole and flushed to disk at the end of its epoch,
    so a run that is killed leaves a valid file of the epochs it finished. ``append=True`` adds rows
    after what an existing file holds and never changes it (as Keras: the header is written only when
    the file is new or empty; a line break first if its last line has none); a file whose header is
    not this logger's (``epoch`` then the logged keys, with this ``separator``, UTF-8) is refused.
    With ``fit(checkpoint_dir=..., resume=True)`` the rows this logger wrote after the checkpoint the
    run resumes from are dropped, so every epoch appears once. In data-parallel training only rank 0
    writes.
    """

    def __init__(self, path, separator=",", append=False):
        self.path = check_path("path", path)
        if os.path.isdir(self.path):
            raise InvalidInputError(f"path {self.path!r} is a directory; CSVLogger needs a file path")
        if not isinstance(separator, str) or len(separator) != 1 or separator in '"\r\n':
            raise InvalidInputError(f"separator must be one character (not a quote or a line break), "
                                    f"got {separator!r}")
        self.separator = separator
        self.append = check_bool("append", append)
        self.keys = None
        #: data rows in the file after the newest row this logger wrote
        self.rows = 0
        self._file = None
        #: an appended file's last line has no line break: one is written before the first row
        self._newline = False
        #: the keys come from an appended file's header: the first row's logs must have them
        self._check_columns = False

    def _read_lines(self):
        with open(self.path, "rb") as f:
            return f.read().splitlines(keepends=True)

    def _keep(self, lines):
        """Truncate the file to its first ``lines`` (each ending in a line break)."""
        os.truncate(self.path, sum(len(line) for line in lines))

    def on_train_begin(self, logs=None):
        self.keys, self.rows = None, 0
        if self.rank != 0:
            return
        self._newline = self._check_columns = False
        try:
            if self.append and os.path.isfile(self.path):
                lines = self._read_lines()
                if lines:
                    self.keys, self._check_columns = self._header(lines[0]), True
                    self.rows = len(lines) - 1
                    self._newline = not lines[-1].endswith((b"\n", b"\r"))
            self._file = open(self.path, "a" if self.append else "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise InvalidInputError(f"CSVLogger cannot write path {self.path!r}: "
                                    f"{exc.strerror or exc}") from None

    def _header(self, line):
        """The logged keys of an existing file's header ``line``; InvalidInputError unless a CSVLogger
        header written with this separator."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInputError(f"CSVLogger(append=True) cannot continue path {self.path!r}: it is not "
                                    f"UTF-8 text; give another path or append=False") from None
        header = next(csv.reader([text.rstrip("\r\n")], delimiter=self.separator), [])
        if not header or header[0] != "epoch":
            raise InvalidInputError(f"CSVLogger(append=True) cannot continue path {self.path!r}: its first line "
                                    f"{text.rstrip()[:80]!r} is not a header 'epoch{self.separator}...' "
                                    f"with separator={self.separator!r}; give another path, the file's "
                                    f"separator, or append=False")
        return header[1:]

    def on_epoch_end(self, epoch, logs):
        if self._file is None:
            return
        text = io.StringIO()
        writer = csv.writer(text, delimiter=self.separator, lineterminator="\n")
        if self.keys is None:
            self.keys = list(logs)
            writer.writerow(["epoch"] + self.keys)
        elif self._check_columns:  # the first row under an existing header: its columns must be this run's
            if set(logs) != set(self.keys):
                raise InvalidInputError(f"CSVLogger(append=True): path {self.path!r} has the columns "
                                        f"{self.keys}, but this run logs {list(logs)}; give another path or "
                                        f"append=False")
        writer.writerow([epoch] + [_csv_value(logs.get(key)) for key in self.keys])
        self._file.write(("\n" if self._newline else "") + text.getvalue())  # the whole row at once
        self._newline = self._check_columns = False
        self._file.flush()
        os.fsync(self._file.fileno())
        self.rows += 1

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None

    def state_dict(self):
        return {"rows": self.rows}

    def load_state_dict(self, state):
        rows = state["rows"]
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ValueError(f"rows must be an integer >= 0, got {rows!r}")
        if self._file is None or rows >= self.rows:
            return
        self._keep(self._read_lines()[:rows + 1])  # the header and the rows up to the checkpoint
        self.rows, self._newline = rows, False


def _csv_value(value):
    if value is None:
        return "NA"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    return value


class ModelCheckpoint(Callback):
    """Save the model file (what ``model.save`` writes and ``gpubp.load`` reads: architecture, weights,
    loss and optimizer settings, scaler) to ``path`` after every epoch, or only when ``monitor``
    improves (Keras' ``ModelCheckpoint``, same arguments).

    ``path`` may hold ``{epoch}`` (counting from 1, as in Keras), ``{batch}`` and any key of the epoch
    logs with a format, e.g. ``"models/epoch{epoch:03d}-{val_loss:.4f}.npz"``; ``.npz`` is appended
    when missing and missing directories are created. Each file is written atomically (temporary
    file, fsync, rename), so a crash never leaves a truncated model.

    This keeps the best (or every) MODEL; to continue an interrupted run, use the resumable TRAINING
    checkpoints of ``fit(checkpoint_dir=..., resume=True)``, which also hold the optimizer's and the
    callbacks' state (this callback's best value among them). In data-parallel training only rank 0 writes.

    Parameters
    ----------
    path : str or os.PathLike
    monitor : str
        The epoch-log key that decides "best" with ``save_best_only``: "val_loss" (default), "loss", ...
    save_best_only : bool
        Save only when ``monitor`` is better than at every earlier save (a fixed ``path`` then always
        holds the best model so far).
    mode : {"auto", "min", "max"}
        As in :class:`EarlyStopping`.
    save_freq : "epoch" or int
        Save at the end of every epoch, or every this many batches (then the logs are the batch's:
        ``loss``, read from the device once per save).
    verbose : {0, 1}
        Print a line for each save.

    After training, :attr:`best`, :attr:`best_epoch` and :attr:`last_saved` (the path of the newest file).
    """

    def __init__(self, path, monitor="val_loss", save_best_only=False, mode="auto", save_freq="epoch", verbose=0):
        self.path = check_path("path", path)
        self.monitor = _check_monitor(monitor)
        self.maximize = _maximizes(monitor, mode)
        self.save_best_only = check_bool("save_best_only", save_best_only)
        per_epoch = isinstance(save_freq, str) and save_freq == "epoch"
        if not per_epoch and (isinstance(save_freq, (bool, np.bool_)) or not isinstance(save_freq, numbers.Integral)
                              or save_freq < 1):
            raise InvalidInputError(f"save_freq must be 'epoch' or an integer >= 1 (batches), got {save_freq!r}")
        self.save_freq = "epoch" if per_epoch else int(save_freq)
        self._check_template()
        self.verbose = _check_verbose(verbose)
        self.best = -math.inf if self.maximize else math.inf
        self.best_epoch = None
        self.last_saved = None
        self._epoch = 0
        self._batches = 0

    def on_train_begin(self, logs=None):
        self._batches = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.save_freq == "epoch" or self.rank != 0:
            return
        self._batches += 1
        if self._batches % self.save_freq == 0:
            self._save(self._epoch, {"loss": batch_loss(logs)}, batch)

    def on_epoch_end(self, epoch, logs):
        if self.save_freq == "epoch" and self.rank == 0:
            self._save(epoch, logs)

    def _check_template(self):
        """Format ``path`` once with epoch=1, batch=1 and a float for every other field it names: a
        template that could never be formatted is refused now rather than after an epoch's training."""
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.path) if name is not None}
        except ValueError as exc:  # unbalanced braces
            raise InvalidInputError(f"path {self.path!r} is not a valid format template ({exc})") from None
        roots = {name.split(".", 1)[0].split("[", 1)[0] for name in names}
        if "batch" in roots and self.save_freq == "epoch":
            raise InvalidInputError(f"path {self.path!r} holds {{batch}}, which only save_freq=<number of "
                                    f"batches> provides; with save_freq='epoch' use {{epoch}} and the logged keys")
        fields = dict.fromkeys(roots, 0.5)
        fields.update(epoch=1, batch=1)
        self._format_fields(fields, "its fields may be epoch, batch and the logged keys (floats)")

    def _format_fields(self, fields, which):
        try:
            return self.path.format(**fields)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError) as exc:
            raise InvalidInputError(f"ModelCheckpoint cannot format path {self.path!r} ({type(exc).__name__}: "
                                    f"{exc}); {which}") from None

    def _format(self, epoch, logs, batch):
        fields = dict(logs)
        fields["epoch"] = epoch + 1
        if batch is not None:
            fields["batch"] = batch + 1
        return self._format_fields(fields, f"its fields may be epoch{', batch' if batch is not None else ''} "
                                           f"and the logged {sorted(logs)}")

    def _save(self, epoch, logs, batch=None):
        if self.save_best_only:
            value = logs.get(self.monitor)
            if value is None:
                _missing("ModelCheckpoint", self.monitor, logs)
                return
            if not (value > self.best if self.maximize else value < self.best):
                return
            self.best, self.best_epoch = float(value), epoch
        path = self._format(epoch, logs, batch)
        try:
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self.last_saved = self.model.save(path)
        except OSError as exc:
            raise InvalidInputError(f"ModelCheckpoint cannot save the model to path {path!r} (formatted from "
                                    f"{self.path!r}): {exc.strerror or exc}") from None
        if self.verbose:
            print(f"Epoch {epoch + 1}: ModelCheckpoint saved the model to {self.last_saved}", flush=True)

    def state_dict(self):
        return {"best": None if math.isinf(self.best) else self.best, "best_epoch": self.best_epoch,
                "last_saved": self.last_saved}

    def load_state_dict(self, state):
        best, best_epoch = state["best"], state.get("best_epoch")
        if best_epoch is not None and (isinstance(best_epoch, bool) or not isinstance(best_epoch, int)):
            raise TypeError(f"best_epoch must be an integer or None, got {best_epoch!r}")
        self.best = (-math.inf if self.maximize else math.inf) if best is None else float(best)
        self.best_epoch, self.last_saved = best_epoch, state.get("last_saved")


class GradientMonitor(GradientFlowRecorder, Callback):
    __doc__ = GradientFlowRecorder.__doc__
