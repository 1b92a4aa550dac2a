"""Training callbacks (Keras-shaped): the hooks, :class:`History`, :class:`EarlyStopping`."""

from __future__ import annotations

import math
import numbers
import os
import warnings

import numpy as np

from .errors import InvalidInputError, InvalidTypeError
from .gradient_monitor import GradientFlowRecorder, GradientFlowWarning  # noqa: F401 (exported)
from .validation import as_list, check_bool, check_number


class Callback:
    """Hooks called by ``fit`` (Keras' names); ``self.model`` is set before training starts.

    Batch-level hooks get ``logs = {"batch": index, "size": rows, "loss": the
    batch loss as a (1,) device array}``: reading the loss on the host waits
    for the device, so a GPU run that reads it every batch runs slower.
    Stateful callbacks return their state from :meth:`state_dict` (JSON values
    and host arrays), which checkpoints save and :meth:`load_state_dict` restores.
    """

    model = None

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

    ``callbacks``: a list of :class:`Callback` objects (see :func:`as_callback_list`).
    """

    def __init__(self, callbacks, model):
        self.callbacks = as_callback_list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)

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
    ``["epoch_time"]`` (seconds) and ``["samples_per_sec"]``; ``history.epoch`` lists epoch indices."""

    def __init__(self):
        self.history = {}
        self.epoch = []
        #: None, or where a Ctrl-C stopped training: {"epoch", "step", "steps_per_epoch"}
        self.interrupted = None
        #: None, or where training diverged with on_divergence="stop": {"epoch", "step", "reason"}
        self.diverged = None

    def on_epoch_end(self, epoch, logs):
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def state_dict(self):
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state):
        self.history = {str(k): list(v) for k, v in dict(state["history"]).items()}
        self.epoch = [int(e) for e in state["epoch"]]

    def __repr__(self):
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


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
        "auto" maximises metrics whose name contains "accuracy", minimises the rest.
    restore_best_weights : bool
        Copy the best epoch's weights back into the model when training stops.
    """

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="auto", restore_best_weights=True):
        if not isinstance(monitor, str):
            raise InvalidTypeError(f"monitor must be the name of a logged metric (a string such as 'val_loss'), "
                                   f"got {monitor!r}")
        if not monitor:
            raise InvalidInputError("monitor must be the name of a logged metric such as 'val_loss', got ''")
        if not isinstance(mode, str) or mode not in ("auto", "min", "max"):
            raise InvalidInputError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
        if isinstance(patience, (bool, np.bool_)) or not isinstance(patience, numbers.Integral) or patience < 0:
            raise InvalidInputError(f"patience must be an integer >= 0, got {patience!r}")
        self.monitor = monitor
        self.patience = int(patience)
        self.min_delta = abs(check_number("min_delta", min_delta))
        self.maximize = mode == "max" or (mode == "auto" and "accuracy" in monitor)
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
            warnings.warn(f"EarlyStopping: metric {self.monitor!r} is not available; "
                          f"available: {sorted(logs)}", stacklevel=2)
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


class ModelCheckpoint(Callback):
    """Save the model to ``directory/model-epochNNNN.npz`` after every ``every`` epochs, keeping the last ``keep``.

    Each file is written atomically (temporary file, fsync, rename), so a crash
    never leaves a truncated newest checkpoint. Holds the architecture, weights,
    loss/optimizer settings and scaler (see ``Sequential.save``); not the optimizer state.
    """

    def __init__(self, directory, every=1, keep=3):
        if not isinstance(directory, (str, os.PathLike)):
            raise InvalidTypeError(f"directory must be a path (str or os.PathLike), got {type(directory).__name__}")
        for name, value in (("every", every), ("keep", keep)):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
                raise InvalidInputError(f"{name} must be an integer >= 1, got {value!r}")
        self.directory, self.every, self.keep = os.fspath(directory), int(every), int(keep)
        self.saved = []

    def on_train_begin(self, logs=None):
        os.makedirs(self.directory, exist_ok=True)

    def on_epoch_end(self, epoch, logs):
        if (epoch + 1) % self.every:
            return
        self.saved.append(self.model.save(os.path.join(self.directory, f"model-epoch{epoch + 1:04d}.npz")))
        while len(self.saved) > self.keep:
            old = self.saved.pop(0)
            if os.path.exists(old):
                os.unlink(old)


class GradientMonitor(GradientFlowRecorder, Callback):
    __doc__ = GradientFlowRecorder.__doc__
