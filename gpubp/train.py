"""The mini-batch training loop behind :meth:`gpubp.Sequential.fit`."""

from __future__ import annotations

import contextlib
import numbers
import os
import signal
import threading
import time
import warnings

import numpy as np

from .callbacks import EarlyStopping, History
from .buffers import plan_bytes
from .errors import InsufficientMemory, InvalidInputError, TrainingDiverged
from .progress import EpochProgress
from .validation import check_positive_int


class _StopOnInterrupt:
    """Within ``with``: the first Ctrl-C (SIGINT) asks training to stop after the current step;
    a second one interrupts at once. Only in the main thread (signal handlers live there)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _check_memory(model, batch_sizes, y):
    """Raise InsufficientMemory before training when the batch buffers would not fit."""
    widths = [layer.units for layer in model.layers]
    needed = sum(plan_bytes(b, model.input_dim, widths, model.dtype.itemsize, y.shape[1:], y.dtype.itemsize)
                 for b in batch_sizes)
    available = model.backend.available_memory()
    if available is not None and needed > available:
        mib = 2.0 ** 20
        raise InsufficientMemory(
            f"this run needs {needed / mib:,.0f} MiB for the activations, gradients and batch buffers of "
            f"batch_size={max(batch_sizes)} (parameters, gradients and optimizer state already take "
            f"{model._params.nbytes * (2 + len(model.optimizer.state_names)) / mib:,.0f} MiB), but only "
            f"{available / mib:,.0f} MiB are available on {model.backend.device_name}; lower batch_size")


def _checkpoint(model, directory, epochs_done, history, stoppers, keep):
    from .checkpoint import save_checkpoint

    extra = {"history": history.history, "history_epoch": history.epoch,
             "early_stopping": [{"best": s.best, "best_epoch": s.best_epoch, "wait": s.wait} for s in stoppers]}
    arrays = {f"best_params_{i}": model.backend.to_host(s._best_params)
              for i, s in enumerate(stoppers) if s._best_params is not None}
    save_checkpoint(directory, model, epochs_done, extra=extra, keep=keep, arrays=arrays or None)


def _resume(model, directory, history, stoppers):
    """Restore the newest complete checkpoint into ``model``; returns the number of epochs done (0 if none)."""
    from .checkpoint import latest_checkpoint, restore_checkpoint

    path = latest_checkpoint(directory, model=model)
    if path is None:
        return 0
    info = restore_checkpoint(path, model)
    extra = info["extra"] or {}
    history.history = {k: list(v) for k, v in extra.get("history", {}).items()}
    history.epoch = list(extra.get("history_epoch", []))
    for i, (stopper, state) in enumerate(zip(stoppers, extra.get("early_stopping", []))):
        stopper.best, stopper.best_epoch, stopper.wait = state["best"], state["best_epoch"], state["wait"]
        saved = info["arrays"].get(f"best_params_{i}")
        if saved is not None:
            stopper._best_params = model.backend.asarray(saved, model.dtype)
    return info["epoch"]


def _split_validation(model, X, y, validation_data, validation_split):
    """Validated device arrays ``(X, y, X_val, y_val)``; the validation pair may be None."""
    if validation_data is not None and validation_split:
        raise InvalidInputError("give either validation_data or validation_split, not both")
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real):
        raise InvalidInputError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if not 0.0 <= validation_split < 1.0:
        raise InvalidInputError(f"validation_split must lie in [0, 1), got {validation_split!r}")
    X, y = model._prepare(X, y)
    if validation_split:
        # like Keras: the last fraction of the samples, before any shuffling
        n_val = int(round(X.shape[0] * validation_split))
        if n_val < 1 or n_val >= X.shape[0]:
            raise InvalidInputError(
                f"validation_split={validation_split} leaves {n_val} of {X.shape[0]} samples for validation")
        return X[:-n_val], y[:-n_val], X[-n_val:], y[-n_val:]
    if validation_data is None:
        return X, y, None, None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise InvalidInputError("validation_data must be a pair (X_val, y_val)")
    X_val, y_val = model._prepare(*validation_data, name_x="validation_data X", name_y="validation_data y")
    return X, y, X_val, y_val


def fit(model, X, y, batch_size=32, epochs=1, validation_data=None, validation_split=0.0,
        shuffle=True, callbacks=None, verbose=1, on_divergence="raise", checkpoint_dir=None,
        checkpoint_every=1, checkpoint_keep=3, resume=False):
    """Train ``model`` on (X, y) with mini-batches drawn without replacement.

    Parameters
    ----------
    X : array (n_samples, n_features)
    y : targets in the layout the loss expects (class labels, one-hot rows or values)
    batch_size : int
        Rows per step; the last batch of an epoch holds the remainder.
    epochs : int
    validation_data : (X_val, y_val), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``).
    validation_split : float
        Fraction of the samples (the last ones) held out for validation instead.
    shuffle : bool
        Draw a new seeded permutation each epoch.
    callbacks : list of gpubp.callbacks.Callback, e.g. ``[EarlyStopping(patience=5)]``
    verbose : {0, 1, 2}
    on_divergence : {"raise", "stop"}
        When a step's loss (or, with gradient clipping, its gradient norm) is
        NaN/Inf: raise :class:`gpubp.TrainingDiverged`, or warn and stop. Either
        way the model keeps the weights from before that step and
        ``history.diverged = {"epoch", "step", "reason"}``.
    checkpoint_dir : path, optional
        Write a full training checkpoint (weights, optimizer state and step
        count, shuffling RNG state, epoch, history, early-stopping state,
        scaler) atomically every ``checkpoint_every`` epochs, keeping the
        newest ``checkpoint_keep`` (see :mod:`gpubp.checkpoint`).
    resume : bool
        Continue from the newest complete checkpoint in ``checkpoint_dir`` up to
        ``epochs`` in total; on the CPU the result is bit-identical to an
        uninterrupted run.

    The training set is copied to the device once; each epoch's permutation is
    drawn on the host from the model's seeded generator (so every backend sees
    the same batches) and uploaded once per epoch; each batch is gathered into a
    preallocated buffer, so the steady-state step allocates nothing.

    A Ctrl-C (SIGINT) during ``fit`` stops training cleanly after the current
    step (the weights are those of a whole step) and sets
    ``history.interrupted = {"epoch", "step", "steps_per_epoch"}``; a second
    Ctrl-C raises ``KeyboardInterrupt`` at once.

    Returns
    -------
    History
    """
    model._require_compiled()
    batch_size = check_positive_int("batch_size", batch_size)
    epochs = check_positive_int("epochs", epochs)
    if isinstance(verbose, np.ndarray) or verbose not in (0, 1, 2, True, False):
        raise InvalidInputError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    if resume and checkpoint_dir is None:
        raise InvalidInputError("resume=True needs checkpoint_dir")
    checkpoint_every = check_positive_int("checkpoint_every", checkpoint_every)
    checkpoint_keep = check_positive_int("checkpoint_keep", checkpoint_keep)
    if on_divergence not in ("raise", "stop"):
        raise InvalidInputError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")
    if checkpoint_dir is not None and not resume:
        from .checkpoint import latest_checkpoint

        if latest_checkpoint(checkpoint_dir) is not None:
            raise InvalidInputError(
                f"checkpoint_dir {os.fspath(checkpoint_dir)!r} already holds checkpoints of an earlier run: "
                f"pass resume=True to continue it, or choose an empty directory")

    history = History()
    callbacks = [history] + list(callbacks or [])
    for callback in callbacks:
        callback.set_model(model)
        callback.on_train_begin()
    stoppers = [c for c in callbacks if isinstance(c, EarlyStopping)]
    start_epoch = 0
    if resume:  # before the data is prepared: the checkpoint's scaler applies to it
        model._require_built(X)
        start_epoch = _resume(model, checkpoint_dir, history, stoppers)
    X, y, X_val, y_val = _split_validation(model, X, y, validation_data, validation_split)

    backend = model.backend
    xp = backend.xp
    n = X.shape[0]
    batch_size = min(batch_size, n)
    starts = list(range(0, n, batch_size))
    sizes = np.array([min(batch_size, n - s) for s in starts], dtype=np.float64)
    _check_memory(model, sorted(set(sizes.astype(int))), y)
    step_losses = xp.empty(len(starts), dtype=np.float64)
    plans = {b: model._plan(int(b), y) for b in set(sizes.astype(int))}

    progress = EpochProgress(int(verbose), epochs, len(starts))
    model.stop_training = False
    order = xp.arange(n)
    with _StopOnInterrupt() as interrupt, contextlib.closing(progress):
        for epoch in range(start_epoch, epochs):
            progress.start_epoch(epoch)
            t0 = time.perf_counter()
            if shuffle:
                order = backend.asarray(model.shuffle_rng.permutation(n))
            for i, start in enumerate(starts):
                plan = plans[int(sizes[i])]
                idx = order[start:start + plan.batch_size]
                xp.take(X, idx, axis=0, out=plan.x)
                xp.take(y, idx, axis=0, out=plan.y)
                try:
                    step_losses[i] = model._train_step(plan)
                except ArithmeticError as exc:
                    history.diverged = {"epoch": epoch, "step": i + 1, "reason": str(exc)}
                    message = (f"training diverged at epoch {epoch + 1}, step {i + 1} of {len(starts)}: {exc}; "
                               f"the model keeps the weights from before that step. Try a smaller learning "
                               f"rate (now {model.optimizer.lr:g}) or gradient clipping (clip_norm=...)")
                    if on_divergence == "raise":
                        raise TrainingDiverged(message, epoch=epoch, step=i + 1) from None
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
                    break
                progress.step(plan.batch_size)
                if interrupt.requested:
                    history.interrupted = {"epoch": epoch, "step": i + 1, "steps_per_epoch": len(starts)}
                    break
            if interrupt.requested or history.diverged:
                break
            train_loss = float(backend.to_host(step_losses) @ sizes) / n
            backend.synchronize()
            elapsed = time.perf_counter() - t0
            logs = {"loss": train_loss}
            if "accuracy" in model.metrics:
                accuracy = model._evaluate_on_device(X, y)["accuracy"]
                if accuracy is not None:
                    logs["accuracy"] = accuracy
            if X_val is not None:
                val = model._evaluate_on_device(X_val, y_val)
                logs["val_loss"] = val["loss"]
                if val["accuracy"] is not None:
                    logs["val_accuracy"] = val["accuracy"]
            logs["epoch_time"] = elapsed
            logs["samples_per_sec"] = n / elapsed if elapsed > 0 else float("inf")
            progress.end_epoch(epoch, logs)
            for callback in callbacks:
                callback.on_epoch_end(epoch, logs)
            if checkpoint_dir is not None and (epoch + 1) % checkpoint_every == 0:
                _checkpoint(model, checkpoint_dir, epoch + 1, history, stoppers, checkpoint_keep)
            if model.stop_training:
                break
    for callback in callbacks:
        callback.on_train_end()
    return history
