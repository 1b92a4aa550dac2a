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

from .buffers import INFERENCE_BATCH, plan_bytes
from .callbacks import Callback, CallbackList, History, as_callback_list
from .checkpoint import TrainingCheckpoint, check_resumed_run, checkpoint_files, resume_from_latest, run_record
from .communicator import GradientAllReduce, agreed, get_communicator
from .launch_environment import launched_ranks
from .data import StandardScaler
from .directory_lock import locked
from .divergence import Divergence
from .errors import DistributedAbort, InvalidInputError, InvalidTypeError, ModelFileError, TrainingDiverged
from .kernels.contract import STATUS_GRADIENT
from .output_paths import check_writable_directory
from .progress import ProgressLogger
from .streaming import StreamedSet, as_dataset, epoch_batches, split_streamed
from .validation import check_bool, check_positive_int
from .weights import row_weights


#: Seconds a Ctrl-C stop waits for a second Ctrl-C before fit returns (a double press is one gesture).
SECOND_PRESS_GRACE = 0.05


class _StopOnInterrupt:
    """Within ``with``: the first Ctrl-C (SIGINT) asks training to stop after the current step;
    a second one interrupts at once. Only in the main thread (signal handlers live there).

    A stop requested by Ctrl-C keeps the handler :data:`SECOND_PRESS_GRACE` seconds longer, so the
    second press of a quick double Ctrl-C raises KeyboardInterrupt from ``fit`` rather than landing
    in the caller's code after ``fit`` returned."""

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

    def __exit__(self, exc_type, *exc):
        if self._previous is None:
            return
        try:
            if self.requested and exc_type is None:
                deadline = time.monotonic() + SECOND_PRESS_GRACE
                while time.monotonic() < deadline:
                    time.sleep(0.005)  # the handler runs here, between sleeps
        finally:
            signal.signal(signal.SIGINT, self._previous)


def training_bytes(model, batch_sizes, y, n_steps):
    """Device memory ``fit`` allocates once the data is on the device: a batch plan per batch size,
    the epoch's order and step losses (:class:`~gpubp.buffers.EpochBatches`) and the kernels' scratch."""
    widths = [layer.units for layer in model.layers]
    keeps_pre_activation = [layer.keeps_pre_activation for layer in model.layers]
    plans = sum(plan_bytes(b, model.input_dim, widths, model.dtype.itemsize, y.shape[1:], y.dtype.itemsize,
                           keeps_pre_activation) for b in batch_sizes)
    epoch = 8 * (y.shape[0] + n_steps)
    return plans + epoch + model.backend.kernels.scratch_bytes(batch_sizes, widths[-1], model.params.size)


def _check_memory(model, batch_sizes, y, n_steps, evaluated_rows):
    """Raise InsufficientMemory before training when the buffers of :func:`training_bytes`, and those of
    evaluating ``evaluated_rows`` rows at a time after each epoch (0: none), would not fit."""
    needed = training_bytes(model, batch_sizes, y, n_steps)
    if evaluated_rows:
        needed += model.inference_plan_bytes(evaluated_rows, y)
    held = model.params.nbytes * (2 + len(model.optimizer.state_names)) / 2.0 ** 20
    model.backend.require_memory(
        needed, f"for the activations, gradients, batch and evaluation buffers and kernel scratch of "
                f"batch_size={max(batch_sizes)} (parameters, gradients and optimizer state already take "
                f"{held:,.0f} MiB)", "lower batch_size")


def _split_validation(model, X, y, validation_data, validation_split, sample_weight=None, class_weight=None):
    """Validated device arrays ``(X, y, X_val, y_val, with_accuracy, weights, val_weights)``; the validation
    pair may be None, and the rows' loss weights (see :func:`gpubp.weights.row_weights`) are None when
    there are none."""
    if validation_data is not None and validation_split:
        raise InvalidInputError("give either validation_data or validation_split, not both")
    if isinstance(validation_split, bool) or not isinstance(validation_split, numbers.Real):
        raise InvalidInputError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if not 0.0 <= validation_split < 1.0:
        raise InvalidInputError(f"validation_split must lie in [0, 1), got {validation_split!r}")
    dataset = as_dataset(X, y)
    if dataset is not None:  # streamed from its files, chunk by chunk (see gpubp.streaming)
        if sample_weight is not None or class_weight is not None:
            raise InvalidInputError("sample_weight and class_weight need X and y in memory, not streamed from files")
        return split_streamed(model, dataset, validation_data, validation_split) + (None, None)
    X, y, with_accuracy = model.prepare(X, y)
    weights = row_weights(model.backend, sample_weight, class_weight, model.loss, y, X.shape[0], model.n_outputs)
    if validation_split:
        # like Keras: the last fraction of the samples, before any shuffling
        n_val = int(round(X.shape[0] * validation_split))
        if n_val < 1 or n_val >= X.shape[0]:
            raise InvalidInputError(
                f"validation_split={validation_split} leaves {n_val} of {X.shape[0]} samples for validation")
        return (X[:-n_val], y[:-n_val], X[-n_val:], y[-n_val:], with_accuracy,
                None if weights is None else weights[:-n_val], None if weights is None else weights[-n_val:])
    if validation_data is None:
        return X, y, None, None, with_accuracy, weights, None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
        raise InvalidInputError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, "
                                "sample_weight_val)")
    X_val, y_val, _ = model.prepare(*validation_data[:2], name_x="validation_data X", name_y="validation_data y")
    val_weights = None
    if len(validation_data) == 3:
        val_weights = row_weights(model.backend, validation_data[2], None, model.loss, y_val, X_val.shape[0],
                                  model.n_outputs, "validation_data sample_weight")
    return X, y, X_val, y_val, with_accuracy, weights, val_weights


def _check_arguments(batch_size, epochs, verbose, resume, checkpoint_dir, checkpoint_every, checkpoint_keep,
                     on_divergence, check_every, shuffle=True, callbacks=None):
    """Check fit's keyword arguments before any work; returns ``(batch_size, epochs, callbacks)``.

    ``callbacks`` comes back as a list: None gives ``[]``, a single Callback a one-element list.
    """
    batch_size = check_positive_int("batch_size", batch_size)
    epochs = check_positive_int("epochs", epochs)
    if (not isinstance(verbose, (numbers.Real, np.bool_)) or isinstance(verbose, np.ndarray)
            or verbose not in (0, 1, 2)):
        raise InvalidInputError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    check_bool("shuffle", shuffle)
    resume = check_bool("resume", resume)
    callbacks = as_callback_list(callbacks)
    if resume and checkpoint_dir is None:
        raise InvalidInputError("resume=True needs checkpoint_dir")
    if checkpoint_dir is not None:
        if not isinstance(checkpoint_dir, (str, os.PathLike)):
            raise InvalidTypeError(f"checkpoint_dir must be a path, got {type(checkpoint_dir).__name__}")
        path = os.fspath(checkpoint_dir)
        if not isinstance(path, str) or not path or "\0" in path:
            raise InvalidInputError(f"checkpoint_dir must be a non-empty directory path without NUL "
                                    f"characters, got {checkpoint_dir!r}")
        check_writable_directory(path, "checkpoint_dir")
    check_positive_int("checkpoint_every", checkpoint_every)
    check_positive_int("checkpoint_keep", checkpoint_keep)
    if not isinstance(on_divergence, str) or on_divergence not in ("raise", "stop"):
        raise InvalidInputError(f"on_divergence must be 'raise' or 'stop', got {on_divergence!r}")
    if check_every is not None:
        check_positive_int("check_every", check_every)
    if checkpoint_dir is not None and not resume and checkpoint_files(checkpoint_dir):
        raise InvalidInputError(
            f"checkpoint_dir {os.fspath(checkpoint_dir)!r} already holds checkpoints of an earlier run "
            f"(readable or not): pass resume=True to continue it, or choose an empty directory")
    return batch_size, epochs, callbacks


def fit(model, X, y, batch_size=32, epochs=1, validation_data=None, validation_split=0.0,
        shuffle=True, callbacks=None, verbose=1, on_divergence="raise", checkpoint_dir=None,
        checkpoint_every=1, checkpoint_keep=3, resume=False, check_every=None, distributed=None,
        sample_weight=None, class_weight=None):
    """Train ``model`` on (X, y) with mini-batches drawn without replacement.

    Parameters
    ----------
    X : array (n_samples, n_features); or, streamed from disk chunk by chunk, the path of a ``.npy``
        file, an array ``np.load(path, mmap_mode="r")`` returned or a :class:`gpubp.data.NpyDataset`
    y : targets in the layout the loss expects (class labels, one-hot rows or values); with streamed
        X also a ``.npy`` path, and None when the NpyDataset holds its targets
    batch_size : int
        Rows per step; the last batch of an epoch holds the remainder.
    epochs : int
    validation_data : (X_val, y_val) or (X_val, y_val, sample_weight_val), optional
        Evaluated after every epoch (``val_loss``, ``val_accuracy``; the weights weigh ``val_loss``).
    validation_split : float
        Fraction of the samples (the last ones) held out for validation instead.
    shuffle : bool
        Draw a new seeded permutation each epoch.
    callbacks : list of gpubp.callbacks.Callback, e.g. ``[EarlyStopping(patience=5)]``
    verbose : {0, 1, 2}
    on_divergence : {"raise", "stop"}
        When a step's loss, gradient or update is NaN/Inf: raise
        :class:`gpubp.TrainingDiverged`, or warn and stop. Either way every
        parameter and optimizer state is that from before the step that first
        went bad, and ``history.diverged = {"epoch", "step", "reason"}``.
    check_every : int, optional
        Read the device's divergence record every this many steps (it is
        always read at the end of an epoch). Default: every step on the CPU,
        where the read is free; once per epoch on a GPU, so that steps never
        wait for the host. Steps after the one that went bad change nothing.
    checkpoint_dir : path, optional
        Write a full training checkpoint (the model's, the optimizer's and the
        callbacks' state, the epoch) atomically every ``checkpoint_every``
        epochs, keeping the newest ``checkpoint_keep`` (see :mod:`gpubp.checkpoint`).
    resume : bool
        Continue from the newest complete checkpoint in ``checkpoint_dir`` up to
        ``epochs`` in total; on the CPU the result is bit-identical to an
        uninterrupted run.
    distributed : None, "mpi" or gpubp.communicator.Communicator
        Data-parallel training over the ranks of ``mpiexec -n N`` (see
        :mod:`gpubp.communicator`); None trains in this process alone. Every
        rank calls ``fit`` with the same data and arguments; ``batch_size`` is
        the global batch, of which each rank takes an even share (the first
        ``batch % N`` ranks one row more), and the ranks' gradients are
        combined weighted by their shares, so the result is that of one
        process on the whole batch, up to rounding. Rank 0's parameters,
        optimizer state and shuffle generator (or, with ``resume``, its
        checkpoint) are broadcast first; the logged loss and metrics are those
        of the whole data; divergence, early stopping, ``stop_training`` and
        Ctrl-C on any rank stop every rank after the same step (the ranks agree
        after every step, so ``check_every`` is 1). Only rank 0 writes
        checkpoints and shows progress (the other ranks run with
        ``checkpoint_dir=None, verbose=0``); callbacks run on every rank, and
        each callback's ``rank`` tells it which (CSVLogger and ModelCheckpoint
        write on rank 0 only).

    The training set is copied to the device once; each epoch's permutation is
    drawn on the host from the model's seeded generator (so every backend sees
    the same batches) and uploaded once per epoch; each batch is gathered into a
    preallocated buffer, so the steady-state step allocates nothing.

    Streamed X (a path, a memory map or an NpyDataset) is never copied whole:
    the device holds two chunks of rows, and a reader thread reads, checks and
    uploads the next while the steps train on the current one. Each epoch
    visits the chunks in a shuffled order and the rows of each chunk in a
    shuffled order (not a permutation of the whole set; see
    :mod:`gpubp.streaming`); a set of one chunk trains exactly as in memory.
    ``validation_data`` and the rows ``validation_split`` holds out are in memory.

    A Ctrl-C (SIGINT) during ``fit`` stops training cleanly after the current
    step (the weights are those of a whole step) and sets
    ``history.interrupted = {"epoch", "step", "steps_per_epoch"}``; a second
    Ctrl-C raises ``KeyboardInterrupt`` at once.

    sample_weight : array (n_samples,), optional
        Finite weights >= 0 of the rows' losses (Keras' semantics): a batch's loss is ``sum_b w_b l_b / B``,
        so each row's gradient is scaled by its weight; the logged ``loss`` is ``sum_i w_i l_i / n``.
        ``validation_split`` holds out the last rows' weights with them.
    class_weight : dict {class index: weight} or "balanced", optional
        Multiplies each row's weight by its class's (classes left out weigh 1); "balanced" is
        ``n_samples / (n_classes * bincount(y))`` (scikit-learn's). For softmax_cross_entropy, and
        binary_cross_entropy with one output. Neither weight works with streamed X; with ``distributed``
        each rank weighs its share of the rows.

    Returns
    -------
    History
    """
    model.require_compiled()
    communicator = get_communicator(distributed, on_gpu=model.backend.runtime is not None)
    if communicator.size == 1 and launched_ranks() > 1:
        warnings.warn(f"this process is one of {launched_ranks()} that the launcher started, but fit was not asked "
                      f"to train data-parallel: {launched_ranks()} independent copies are training; pass "
                      f"distributed='mpi' (gpubp train --distributed)", RuntimeWarning, stacklevel=3)
    if not communicator.is_root:  # rank 0 alone writes and prints; the others resume from what it sends
        checkpoint_dir, verbose = None, 0
    with contextlib.ExitStack() as stack:

        def checked():
            # the other ranks check resume but read no directory: rank 0 sends them its checkpoint
            reads_checkpoint = check_bool("resume", resume) and communicator.is_root
            arguments = _check_arguments(batch_size, epochs, verbose, reads_checkpoint, checkpoint_dir,
                                         checkpoint_every, checkpoint_keep, on_divergence, check_every, shuffle,
                                         callbacks)
            if checkpoint_dir is not None:
                stack.enter_context(locked(checkpoint_dir, exclusive=True))
            return arguments

        batch_size, epochs, callbacks = agreed(communicator, checked)
        return _fit(model, X, y, batch_size, epochs, validation_data, validation_split, shuffle, callbacks, verbose,
                    on_divergence, checkpoint_dir, checkpoint_every, checkpoint_keep, resume, check_every,
                    communicator, sample_weight, class_weight)


def _fit(model, X, y, batch_size, epochs, validation_data, validation_split, shuffle, callbacks, verbose,
         on_divergence, checkpoint_dir, checkpoint_every, checkpoint_keep, resume, check_every, communicator,
         sample_weight=None, class_weight=None):
    """:func:`fit` once its arguments are checked (and the checkpoint directory is locked)."""
    shared = communicator.size > 1

    def restore():
        restored = all_reduce = None
        if model.built:
            model.read_divergence()  # a failure an aborted run left unread: rewinds the step count to it
        if resume or shared:  # before the data is prepared: the checkpoint's scaler applies to it
            model.build_for(as_dataset(X, y) or X)
        if shared:
            all_reduce = GradientAllReduce(communicator, model.backend, model.status.array)
        if resume and checkpoint_dir is not None:
            restored = resume_from_latest(checkpoint_dir, model)
        return restored, all_reduce

    restored, all_reduce = agreed(communicator, restore)
    if shared:
        restored = _share_root_state(communicator, model, restored)
    X, y, X_val, y_val, with_accuracy, weights, val_weights = agreed(
        communicator, lambda: _split_validation(model, X, y, validation_data, validation_split, sample_weight,
                                                class_weight))

    n = X.shape[0]
    batch_size = min(batch_size, n)
    starts = list(range(0, n, batch_size))
    run = run_record(n, model.input_dim, batch_size)  # what each checkpoint records of this run
    if restored is not None:
        check_resumed_run(restored, run)  # other data or batches than the checkpoint's: refused before any step
    sizes = np.array([min(batch_size, n - s) for s in starts], dtype=np.float64)
    shares = [share_of_rows(int(b), communicator.size, communicator.rank) for b in sizes]
    evaluation = EpochEvaluation(X, y, X_val, y_val, with_accuracy, communicator, weights, val_weights)
    evaluation.set_model(model)
    evaluated = evaluation.rows_per_epoch()

    def allocate():
        rows = sorted({max(count, 1) for _, count in shares})  # a rank with no rows of a batch runs one, weighted 0
        _check_memory(model, rows, y, len(starts), min(evaluated, INFERENCE_BATCH))
        return {b: model.batch_plan(b, y) for b in rows}

    plans = agreed(communicator, allocate)
    if check_every is None or shared:
        check_every = 1 if model.backend.reads_are_free or shared else len(starts)

    history = History()
    callbacks = CallbackList([history] + list(callbacks or []) +
                             [ProgressLogger(int(verbose), epochs, len(starts))], model, rank=communicator.rank)
    if checkpoint_dir is not None:
        callbacks.callbacks.append(TrainingCheckpoint(checkpoint_dir, checkpoint_every, checkpoint_keep, callbacks,
                                                      run=run))
        callbacks.callbacks[-1].set_model(model)
    model.stop_training = False
    started = []
    loop = None
    model.optimizer.set_all_reduce(all_reduce)
    try:
        agreed(communicator, lambda: callbacks.on_train_begin(started=started))
        if restored is not None:
            _load_callback_state(callbacks, restored, checkpoint_dir)
        loop = _EpochLoop(model, X, y, starts, sizes, plans, shuffle, check_every, callbacks, communicator,
                          shares, all_reduce, weights, with_accuracy)
        first_epoch = 0 if restored is None else (epochs if restored["stopped"] else restored["epoch"])
        # NaN/Inf from a diverging step is the guard's to report (TrainingDiverged): NumPy's GEMM overflow
        # warnings would only print it first, less clearly
        with _StopOnInterrupt() as interrupt, np.errstate(over="ignore", invalid="ignore"):
            for epoch in range(first_epoch, epochs):
                agreed(communicator, lambda: callbacks.on_epoch_begin(epoch))  # an error on one rank: on all
                t0 = time.perf_counter()
                divergence, steps_done = loop.run(interrupt)
                if divergence is not None:
                    _diverged(model, history, epoch, divergence, loop, on_divergence, len(starts))
                    break
                if interrupt.requested:
                    history.interrupted = {"epoch": epoch, "step": steps_done, "steps_per_epoch": len(starts)}
                    break
                logs = {"loss": loop.mean_loss(steps_done)}  # all steps, or those before stop_training
                model.backend.synchronize()
                elapsed = time.perf_counter() - t0
                evaluation.on_epoch_end(epoch, logs)
                logs["epoch_time"] = elapsed
                samples = int(loop.sizes[:steps_done].sum())
                logs["samples_per_sec"] = samples / elapsed if elapsed > 0 else float("inf")
                agreed(communicator, lambda: callbacks.on_epoch_end(epoch, logs))
                if communicator.agree(model.stop_training):
                    model.stop_training = True
                    break
    except BaseException:
        model.read_divergence()  # the state stays that from before any step that went bad
        callbacks.on_train_end(only=started, keep_going=True)  # never hides the error in flight
        raise
    finally:
        model.optimizer.set_all_reduce(None)
        if loop is not None:
            loop.batches.close()
    callbacks.on_train_end(only=started)
    return history


def share_of_rows(rows, ranks, rank):
    """``(offset, count)``: the contiguous share of ``rank`` in ``rows`` rows split over ``ranks`` ranks as
    evenly as possible (the first ``rows % ranks`` ranks take one row more); offset 0 for an empty share."""
    base, extra = divmod(rows, ranks)
    count = base + (rank < extra)
    return (rank * base + min(rank, extra) if count else 0), count


def _share_root_state(communicator, model, restored):
    """Make every rank start from rank 0's state: its parameters and optimizer state (broadcast in place),
    its step count and learning-rate scale, shuffle generator and scaler, and what it restored from a checkpoint (returned)."""
    for array in [model.params] + [model.optimizer.state[name] for name in model.optimizer.state_names]:
        communicator.broadcast_(array)
    scaler = model.scaler
    shared = communicator.broadcast_object(
        {"iterations": model.optimizer.iterations, "lr_scale": model.optimizer.lr_scale,
         "shuffle_rng": model.shuffle_rng.bit_generator.state,
         "scaler": None if scaler is None else scaler.to_dict(), "restored": restored}
        if communicator.is_root else None)
    if not communicator.is_root:
        model.optimizer.iterations, model.optimizer.lr_scale = shared["iterations"], shared["lr_scale"]
        model.shuffle_rng.bit_generator.state = shared["shuffle_rng"]
        model.set_scaler(None if shared["scaler"] is None else StandardScaler.from_dict(shared["scaler"]))
    return shared["restored"]


class EpochEvaluation(Callback):
    """fit's evaluation at the end of each epoch, run before every other callback so that they (History,
    progress, early stopping, checkpoints) see its logs: the compiled metrics over the training data
    (when any apply to its targets) and ``val_loss`` and the validation metrics (when there is validation
    data), one evaluation pass each, every rank evaluating its share of the rows.

    (X, y) and (X_val, y_val): prepared device arrays (or a streamed set; X_val None without validation
    data); ``weights``/``val_weights``: their rows' loss weights or None."""

    def __init__(self, X, y, X_val, y_val, with_accuracy, communicator, weights=None, val_weights=None):
        self.X, self.y, self.X_val, self.y_val = X, y, X_val, y_val
        self.with_accuracy, self.communicator = with_accuracy, communicator
        self.weights, self.val_weights = weights, val_weights

    def _training_metrics(self):
        return bool(self.model.evaluation(self.with_accuracy).metrics)  # the compiled metrics these targets have

    def rows_per_epoch(self):
        """The most rows one evaluation pass reads (0: none), for the memory check."""
        return max(self.X.shape[0] if self._training_metrics() else 0,
                   0 if self.X_val is None else self.X_val.shape[0])

    def on_epoch_end(self, epoch, logs):
        model = self.model
        if self._training_metrics():  # one pass over the training data for all of them
            logs.update(_metric_logs(model, _evaluate(model, self.X, self.y, self.with_accuracy, self.communicator,
                                                      self.weights)))
        if self.X_val is not None:
            val = _evaluate(model, self.X_val, self.y_val, self.with_accuracy, self.communicator, self.val_weights)
            logs["val_loss"] = val["loss"]
            logs.update(_metric_logs(model, val, "val_"))


def _metric_logs(model, result, prefix=""):
    """The epoch logs of an evaluation ``result``: the compiled metrics it has, named ``prefix`` + name;
    on validation data (``prefix`` "val_") accuracy too whenever the targets are labels."""
    names = (["accuracy"] if prefix else []) + list(model.metrics)
    return {prefix + name: result[name] for name in dict.fromkeys(names) if result.get(name) is not None}


def _evaluate(model, X, y, with_accuracy, communicator, weights=None):
    """:meth:`Sequential.evaluate_prepared` on (X, y), each rank evaluating its share of the rows: the
    ranks' sums (loss, counts, errors; see :class:`gpubp.metrics.Evaluation`) add up to those of all rows."""
    if isinstance(X, StreamedSet):  # every rank all the rows, a chunk at a time
        return X.evaluate(model, with_accuracy)
    if communicator.size == 1:
        return model.evaluate_prepared(X, y, with_accuracy, weights=weights)
    offset, count = share_of_rows(X.shape[0], communicator.size, communicator.rank)
    evaluation = model.evaluation(with_accuracy)
    sums = np.zeros(evaluation.size)
    if count:
        sums = model.evaluation_sums(evaluation, X[offset:offset + count], y[offset:offset + count],
                                     weights=None if weights is None else weights[offset:offset + count])
    return evaluation.result(communicator.allreduce_scalars(sums))


def _load_callback_state(callbacks, restored, directory):
    try:
        callbacks.load_state_dict(restored["callbacks"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ModelFileError(f"the newest checkpoint in {os.fspath(directory)!r} holds callback state that "
                             f"does not fit these callbacks ({type(exc).__name__}: {exc})") from None


class _EpochLoop:
    """One epoch of steps over the device data; reads the divergence record every ``check_every`` steps.

    ``sizes`` are the global batch sizes, ``shares`` this rank's ``(offset, count)`` in each batch (the
    whole batch in one process) and ``all_reduce`` the gradient hook of data-parallel training (or None),
    whose weight is set to this rank's share before each step.
    """

    def __init__(self, model, X, y, starts, sizes, plans, shuffle, check_every, callbacks, communicator, shares,
                 all_reduce, weights=None, with_accuracy=False):
        self.model, self.X, self.y = model, X, y
        self.starts, self.sizes, self.plans = starts, sizes, plans
        self.shuffle, self.check_every, self.callbacks = shuffle, check_every, callbacks
        self.communicator, self.all_reduce = communicator, all_reduce
        self.offsets = [offset for offset, _ in shares]
        #: rows of each batch in this rank's share (0: it runs one row, weighted 0)
        self.counts = np.array([count for _, count in shares], dtype=np.float64)
        self.weights = self.counts / sizes
        #: the batches in row order; ``sizes``, ``counts`` and ``weights`` are those of the steps of the
        #: epoch running, in the order they run (a streamed set's shuffled chunks reorder them)
        self.by_batch = (sizes, self.counts, self.weights)
        self.batches = epoch_batches(model, X, y, int(sizes[0]), len(starts), weights)
        self.first_iteration = 0
        #: the error a batch-level callback raised on this rank, until the ranks agree to stop
        self.failure = None
        #: the compiled metrics' running sums for callbacks that ask for them (``Callback.batch_metrics``)
        wanted = model.metrics and any(getattr(callback, "batch_metrics", False) for callback in callbacks)
        self.batch_evaluation = model.evaluation(with_accuracy) if wanted else None

    def run(self, interrupt):
        """Run the epoch's steps; returns ``(divergence or None, steps run)``."""
        model = self.model
        batches = self.batches.begin_epoch(model.shuffle_rng if self.shuffle else None)
        self.sizes, self.counts, self.weights = (a[batches] for a in self.by_batch)
        self.first_iteration = model.optimizer.iterations
        batch_sums = None if self.batch_evaluation is None else [self.batch_evaluation.zeros(), 0]
        last = len(self.starts) - 1
        for i, batch in enumerate(batches):
            plan = self.plans[max(int(self.counts[i]), 1)]
            self._call(self.callbacks.on_batch_begin, i)
            self.batches.select(self.starts[batch] + self.offsets[batch], i)
            if self.all_reduce is not None:
                self.all_reduce.weight = float(self.weights[i])
                model.set_dropout_first_row(self.offsets[i])
            model.train_step(plan, batches=self.batches)
            loss = self.batches.losses[i:i + 1]
            logs = {"batch": i, "size": plan.batch_size, "loss": loss}
            if batch_sums is not None:
                logs.update(self._running_metrics(batch_sums, plan, loss, int(self.counts[i])))
            self._call(self.callbacks.on_batch_end, i, logs)
            stop = interrupt.requested or model.stop_training
            if (i + 1) % self.check_every == 0 or i == last or stop:
                divergence, stop = self._agree(model.read_divergence(), interrupt, stop)
                if divergence is not None:
                    return divergence, i + 1
            if stop:
                return None, i + 1
        return None, len(self.starts)

    def _running_metrics(self, sums, plan, loss, rows):
        """Add the step's batch (its logits, left in the plan by the forward pass) to the epoch's running
        metric sums ``[device sums, rows]``; returns the compiled metrics so far (one host read), or none
        while this rank has had no rows."""
        if rows:  # a rank with no rows of this batch ran one row weighted 0
            self.batch_evaluation.add_(sums[0], plan.outputs[-1], plan.y, loss, rows)
            sums[1] += rows
        if not sums[1]:
            return {}
        return _metric_logs(self.model, self.batch_evaluation.result(self.model.backend.to_host(sums[0])))

    def _call(self, callback, *args):
        """A batch-level callback. Over several ranks an error it raises waits for the step's all-reduce and
        :meth:`_agree`, and then leaves every rank (this one with the error, the others with
        :class:`DistributedAbort`), so that no rank is left waiting in the all-reduce."""
        if self.communicator.size == 1:
            callback(*args)
        elif self.failure is None:
            try:
                callback(*args)
            except Exception as exc:  # noqa: BLE001 - raised after the ranks agree
                self.failure = exc

    def _agree(self, divergence, interrupt, stop):
        """``(divergence, stop)`` agreed by every rank: a divergence, a Ctrl-C or ``stop_training`` on any
        rank stops them all after this step (one small all-reduce; nothing to agree in one process)."""
        if self.communicator.size == 1:
            return divergence, stop
        diverged, interrupted, stopped, failed = self.communicator.allreduce_scalars(
            [divergence is not None, interrupt.requested, self.model.stop_training, self.failure is not None]) > 0
        if failed:
            failure, self.failure = self.failure, None
            if failure is not None:
                raise failure
            raise DistributedAbort("a callback raised an error on another rank (reported by that rank)")
        interrupt.requested = interrupt.requested or bool(interrupted)
        self.model.stop_training = self.model.stop_training or bool(stopped)
        if diverged and divergence is None:
            # every rank's update sees a rank's non-finite gradient through the all-reduce and refuses
            # the same step; this stands for that step should a rank not have recorded it
            divergence = Divergence(self.model.optimizer.iterations - 1, STATUS_GRADIENT)
            self.model.optimizer.iterations = divergence.iteration
        return divergence, bool(interrupted or stopped)

    def mean_loss(self, steps):
        """The training loss of the epoch's first ``steps`` steps, weighted by batch size (one host read;
        over every rank's share in data-parallel training)."""
        losses = self.model.backend.to_host(self.batches.losses)[:steps]
        total, rows = self.communicator.allreduce_scalars([losses @ self.counts[:steps], self.counts[:steps].sum()])
        return float(total) / float(rows)


def _diverged(model, history, epoch, divergence, loop, on_divergence, steps_per_epoch):
    step = divergence.iteration - loop.first_iteration + 1
    history.diverged = {"epoch": epoch, "step": step, "reason": divergence.reason}
    message = (f"training diverged at epoch {epoch + 1}, step {step} of {steps_per_epoch}: {divergence.reason}; "
               f"the model keeps the weights and optimizer state from before that step. "
               f"{model.divergence_advice()}")
    if on_divergence == "raise":
        raise TrainingDiverged(message, epoch=epoch, step=step, iteration=divergence.iteration,
                               reason=divergence.reason)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
