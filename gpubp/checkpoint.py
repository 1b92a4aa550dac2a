"""Training checkpoints: everything needed to resume ``fit`` bit-identically.

A checkpoint is a state file (see :mod:`gpubp.io`) named
``ckpt-epochNNNNNN.npz`` whose tree is the training state::

    {"model": model.state_dict(),          # parameters, shuffle generator, scaler
     "optimizer": optimizer.state_dict(),  # step count (the schedule's position), m, v, velocity ...
     "callbacks": {name: state}}           # History, EarlyStopping (with its best weights), ...

and whose metadata holds the model config, the compile metrics, the
number of completed epochs and what ``fit`` records of the run (``run``: the
training rows, features and batch size, the steps per epoch and the step
count the run's first epoch began at), against which a resume and the
optimizer's step count are checked. Files are written atomically (temporary file in
the same directory, fsync, ``os.replace``, fsync of the directory), so a crash
leaves either the previous set of checkpoints or the new one, never a
truncated newest file; :func:`latest_checkpoint` skips any file that does not
read back completely.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from .callbacks import Callback
from .data import StandardScaler
from .directory_lock import locked
from .errors import InvalidInputError, ModelFileError
from .io import FORMAT_NAME as MODEL_FORMAT_NAME
from .io import parameter_count, read_state_file, read_state_tree, write_state_file
from .npz_archive import is_regular_file

FORMAT_NAME = "gpubp-checkpoint"
#: 2: the state-tree layout (version 1 checkpoints are refused with a clear message)
FORMAT_VERSION = 2

_NAME_RE = re.compile(r"^ckpt-epoch(\d{6,})\.npz$")
_TMP_PREFIX = ".ckpt-tmp-"


def checkpoint_name(epoch):
    """The file name of the checkpoint after ``epoch`` completed epochs."""
    return f"ckpt-epoch{epoch:06d}.npz"


def _list_checkpoints(directory):
    """``[(epoch, path)]`` of the checkpoint files in ``directory``, newest (highest epoch) first.

    Only regular files (or links to them) count: a FIFO, device or directory with a checkpoint's name is
    never opened nor rotated away."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), os.path.join(directory, name)) for name in names if (m := _NAME_RE.match(name))]
    found = [(epoch, path) for epoch, path in found if is_regular_file(path)]
    found.sort(reverse=True)
    return found


def save_checkpoint(directory, model, epoch, callbacks=None, keep=3, run=None):
    """Write the training state of ``model`` after ``epoch`` completed epochs; returns the path.

    Parameters
    ----------
    directory : str or path
        Created when missing. The file is ``directory/ckpt-epochNNNNNN.npz``.
    model : Sequential
        Built and compiled.
    epoch : int
        Number of completed epochs (>= 0).
    callbacks : dict, optional
        The callbacks' state (``CallbackList.state_dict()``: JSON values and
        host arrays), returned by :func:`restore_checkpoint`.
    keep : int or None
        Keep only the newest ``keep`` checkpoints (by epoch number) in ``directory``;
        the one just written is never deleted. None keeps all.
    run : dict, optional
        What the run records (see :func:`run_record`; ``start_iterations``: the optimizer's step count
        when the run's epoch 0 began); every key optional, each value checked against ``epoch``, the
        step count and ``model.stop_training`` as a reader will check it.
    """
    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise InvalidInputError(f"epoch must be an integer >= 0, got {epoch!r}")
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise InvalidInputError(f"keep must be an integer >= 1 or None, got {keep!r}")
    if not model.built:
        raise InvalidInputError("cannot checkpoint a model without weights: build or fit it first")
    if model.loss is None or model.optimizer is None:
        raise InvalidInputError("cannot checkpoint an uncompiled model: call compile() first")
    callbacks = {} if callbacks is None else callbacks
    if not isinstance(callbacks, dict):
        raise InvalidInputError(f"callbacks must be a dict of callback states, got {type(callbacks).__name__}")
    state = {"model": model.state_dict(), "optimizer": model.optimizer.state_dict(), "callbacks": callbacks}
    meta = {"config": model.get_config(), "metrics": list(model.metrics), "epoch": int(epoch),
            "stopped": bool(model.stop_training)}
    if run:
        meta["run"] = dict(run)
        try:
            _check_run("the run record", meta, model.optimizer.iterations)
        except ModelFileError as exc:
            raise InvalidInputError(f"cannot checkpoint this run: {exc}") from None
    directory = os.fspath(directory)
    with locked(directory):
        return _write_checkpoint(directory, int(epoch), meta, state, keep)


def _write_checkpoint(directory, epoch, meta, state, keep):
    """Write and rotate, with the directory's lock held: so every temporary file but ours is a leftover of a
    writer killed mid-write, and no other run's checkpoint is rotated away."""
    path = os.path.join(directory, checkpoint_name(epoch))
    try:
        write_state_file(path, FORMAT_NAME, FORMAT_VERSION, meta, state, tmp_prefix=_TMP_PREFIX)
    except ModelFileError as exc:
        raise InvalidInputError(f"cannot checkpoint this state: {exc}") from None

    for name in os.listdir(directory):
        if name.startswith(_TMP_PREFIX):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
    if keep is not None:
        others = [p for _, p in _list_checkpoints(directory) if os.path.abspath(p) != os.path.abspath(path)]
        for old in others[keep - 1:]:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
    return path


def read_checkpoint(path):
    """``(meta, state)`` of a checkpoint file, fully read and checked; raises ModelFileError."""
    return read_state_file(path, "checkpoint", {FORMAT_NAME: FORMAT_VERSION, MODEL_FORMAT_NAME: 99},
                           content=_checkpoint_content)


#: the bit generators a shuffle generator state may name
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
#: the largest epoch or step count a checkpoint may hold (exact as a float, for schedules)
_MAX_COUNT = 2 ** 53


def _checkpoint_content(path, meta, arrays):
    """``(meta, state)`` once the training state is complete and well-formed (see :func:`read_checkpoint`)."""
    if meta["format"] == MODEL_FORMAT_NAME:
        raise ModelFileError(f"{path!r} is a gpubp model file, not a training checkpoint; "
                             "load it with gpubp.load()")
    if meta["format_version"] < FORMAT_VERSION:
        raise ModelFileError(f"{path!r} is a checkpoint of format {meta['format_version']}, written by an "
                             f"older gpubp; this gpubp resumes format {FORMAT_VERSION} only")
    state = read_state_tree(path, meta, arrays)
    try:
        model_state, optimizer_state, callbacks = state["model"], state["optimizer"], state["callbacks"]
        params, iterations = model_state["params"], optimizer_state["iterations"]
        model_state["shuffle_rng"], optimizer_state["state"]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path!r} has an incomplete checkpoint state ({exc!r})") from None
    _check_count(path, "epoch", meta.get("epoch"))
    _check_count(path, "iterations", iterations)
    if not isinstance(meta.get("stopped", False), bool):
        raise ModelFileError(f"{path!r} has an invalid 'stopped' flag {meta.get('stopped')!r}")
    metrics = meta.get("metrics", [])
    if metrics is not None and not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise ModelFileError(f"{path!r} has invalid metrics {metrics!r} (a list of names)")
    if not isinstance(callbacks, dict):
        raise ModelFileError(f"{path!r} has invalid checkpoint metadata (callbacks must be an object)")
    if not isinstance(params, np.ndarray) or params.ndim != 1 or params.dtype.kind != "f":
        raise ModelFileError(f"{path!r}: params must be a flat float vector")
    count = parameter_count(meta["config"], path)
    if params.size != count:
        raise ModelFileError(f"{path!r} holds {params.size} parameters, its architecture has {count}")
    _check_optimizer_buffers(path, optimizer_state["state"], params)
    _check_shuffle_state(path, model_state["shuffle_rng"])
    _check_run(repr(path), meta, iterations)
    return meta, state


def _check_count(path, name, value):
    """Refuse an epoch or step count that is not an integer from 0 to 2**53."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_COUNT:
        raise ModelFileError(f"{path!r} has an invalid {name} {value!r} (an integer from 0 to 2**53)")


#: what a run records in its checkpoints (``meta["run"]``), every key optional (older checkpoints have none)
RUN_KEYS = {"rows": "training rows", "features": "features", "batch_size": "batch size",
            "steps_per_epoch": "steps per epoch", "start_iterations": "first step"}


def run_record(n_rows, n_features, batch_size):
    """What ``fit`` records of a run in its checkpoints: ``{"rows", "features", "batch_size",
    "steps_per_epoch"}`` (``batch_size`` as trained, at most ``n_rows``)."""
    batch_size = min(int(batch_size), int(n_rows))
    return {"rows": int(n_rows), "features": int(n_features), "batch_size": batch_size,
            "steps_per_epoch": -(-int(n_rows) // batch_size)}


def _check_run(where, meta, iterations):
    """Refuse a run record (``meta["run"]``) that is malformed, or that the epoch count, the ``stopped`` flag
    and the optimizer's step count ``iterations`` contradict: after ``epoch`` epochs of ``steps_per_epoch``
    steps from step ``start_iterations`` the count is ``start + epoch * steps``, or for a run that stopped
    early at least ``start + (epoch - 1) * steps + 1``. ``where`` names the file in messages."""
    run = meta.get("run")
    if run is None:
        return
    if not isinstance(run, dict) or not set(run) <= set(RUN_KEYS):
        raise ModelFileError(f"{where} has an invalid run record {run!r} (an object of {sorted(RUN_KEYS)})")
    for key, value in run.items():
        if isinstance(value, bool) or not isinstance(value, int) or not (key == "start_iterations" or value >= 1) \
                or not 0 <= value <= _MAX_COUNT:
            raise ModelFileError(f"{where} records an invalid {RUN_KEYS[key]} {value!r} (an integer from "
                                 f"{0 if key == 'start_iterations' else 1} to 2**53)")
    rows, features, batch, steps, start = (run.get(key) for key in RUN_KEYS)
    if features is not None and features != meta["config"].get("input_dim"):
        raise ModelFileError(f"{where} records {features} features for a model of input_dim "
                             f"{meta['config'].get('input_dim')!r}")
    if rows is not None and batch is not None and (batch > rows or (steps is not None
                                                                    and steps != -(-rows // batch))):
        raise ModelFileError(f"{where} records batches of {batch} rows and {steps} steps per epoch for {rows} "
                             f"training rows")
    if steps is None or start is None:
        return
    epoch = meta["epoch"]
    highest = start + epoch * steps
    lowest = start + (epoch - 1) * steps + 1 if meta.get("stopped") and epoch else highest
    if not lowest <= iterations <= highest:
        expected = f"{highest}" if lowest == highest else f"from {lowest} to {highest}"
        raise ModelFileError(f"{where} holds an optimizer step count of {iterations} after {epoch} epochs of "
                             f"{steps} steps from step {start}: expected {expected} (inconsistent iterations)")


def check_resumed_run(restored, run):
    """Refuse to resume from a checkpoint whose run trained on other data or in other batches.

    ``restored`` is what :func:`restore_checkpoint` returned and ``run`` the resuming run's
    :func:`run_record`. Raises ModelFileError naming the checkpoint and every recorded value that
    differs (training rows, features, batch size, steps per epoch); a checkpoint that records none of
    them (written by an older gpubp) is resumed as it is.
    """
    recorded = restored.get("run") or {}
    diffs = [f"{RUN_KEYS[key]}: checkpoint {recorded[key]} vs this run {run[key]}"
             for key in ("rows", "features", "batch_size", "steps_per_epoch")
             if key in recorded and key in run and recorded[key] != run[key]]
    if diffs:
        raise ModelFileError(f"checkpoint {restored.get('path')!r} was written by a run on other data or batches "
                             f"({'; '.join(diffs)}): resume with the same training data and batch size, or "
                             f"train afresh in an empty checkpoint directory")


def _check_optimizer_buffers(path, buffers, params):
    """Refuse optimizer state that is not an object of arrays shaped and typed like the parameters."""
    if not isinstance(buffers, dict):
        raise ModelFileError(f"{path!r} has an invalid optimizer state (not an object of arrays)")
    for name, a in buffers.items():
        if not isinstance(a, np.ndarray) or a.shape != params.shape or a.dtype != params.dtype:
            raise ModelFileError(f"{path!r}: optimizer state {name!r} does not match the parameters")


def _check_shuffle_state(path, rng_state):
    """Refuse a shuffle generator state that its bit generator (one of numpy's) does not accept."""
    name = rng_state.get("bit_generator") if isinstance(rng_state, dict) else None
    if not isinstance(name, str) or name not in _BIT_GENERATORS:
        raise ModelFileError(f"{path!r} holds an invalid shuffle generator state (bit generator {name!r})")
    try:
        getattr(np.random, name)().state = rng_state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ModelFileError(f"{path!r} holds an invalid shuffle generator state ({exc!r})") from None


def _check_compatible(path, meta, state, model):
    """Raise ModelFileError unless the checkpoint (checked by :func:`read_checkpoint`) fits ``model``;
    returns the scaler to restore."""
    if not model.built:
        raise ModelFileError("cannot restore a checkpoint into a model without weights: "
                             "build it (input_dim=...) and compile it first")
    if model.loss is None or model.optimizer is None:
        raise ModelFileError("cannot restore a checkpoint into an uncompiled model: call compile() first")
    saved = dict(meta["config"])
    current = json.loads(json.dumps(model.get_config()))
    # the seed only chose the initial weights and the shuffle stream, both restored; metrics change no state
    for key in ("seed", "metrics"):
        saved.pop(key, None)
        current.pop(key, None)
    if saved != current:
        diffs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}" for k in diffs)
        raise ModelFileError(f"checkpoint {path!r} does not match the model's configuration ({details})")
    params = state["model"]["params"]
    if params.shape != tuple(model.params.shape) or params.dtype != model.dtype:
        raise ModelFileError(f"checkpoint {path!r} holds {params.shape} {params.dtype} parameters, "
                             f"the model has {tuple(model.params.shape)} {model.dtype}")
    arrays = state["optimizer"]["state"]
    if sorted(arrays) != sorted(model.optimizer.state_names):
        raise ModelFileError(f"checkpoint {path!r} holds optimizer state {sorted(arrays)}, "
                             f"the model's optimizer keeps {sorted(model.optimizer.state_names)}")
    for name, a in [("parameters", params)] + [(f"optimizer state {n!r}", a) for n, a in arrays.items()]:
        if not np.isfinite(a).all():
            raise ModelFileError(f"checkpoint {path!r} holds NaN or Inf {name}")
    generator = type(model.shuffle_rng.bit_generator).__name__
    if state["model"]["shuffle_rng"]["bit_generator"] != generator:
        raise ModelFileError(f"checkpoint {path!r} holds a {state['model']['shuffle_rng']['bit_generator']} "
                             f"shuffle generator state, the model shuffles with {generator}")
    scaler = state["model"].get("scaler")
    if scaler is None:
        return None
    try:
        scaler = StandardScaler.from_dict(scaler)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelFileError(f"checkpoint {path!r} holds an invalid scaler ({exc})") from None
    if len(scaler.mean_) != model.input_dim:
        raise ModelFileError(f"checkpoint {path!r} holds a scaler for {len(scaler.mean_)} features, "
                             f"the model expects {model.input_dim}")
    return scaler


def restore_checkpoint(path, model):
    """Restore the training state saved in ``path`` into ``model`` (built and compiled with the
    same architecture, dtype, loss and optimizer settings; the seed may differ).

    Restores the parameters, the shuffle generator, the scaler, the optimizer's
    state buffers and step count. Everything is read and checked before the
    model is touched, so a failed restore leaves the model as it was.

    Returns ``{"epoch": completed epochs, "callbacks": the callbacks' state, "metrics": the compile
    metrics, "stopped": whether training had stopped early (a callback set ``stop_training``), "run": what
    the run recorded (see :func:`run_record`; ``{}`` when nothing), "path": the checkpoint}``.
    Raises :class:`gpubp.errors.ModelFileError` for missing, corrupted, foreign, pickled,
    future-version or mismatching files.
    """
    path = os.fspath(path)
    meta, state = read_checkpoint(path)
    scaler = _check_compatible(path, meta, state, model)
    model.load_state_dict(state["model"], scaler=scaler)
    model.optimizer.load_state_dict(state["optimizer"])
    model.backend.synchronize()
    return {"epoch": meta["epoch"], "callbacks": state["callbacks"], "metrics": meta.get("metrics") or [],
            "stopped": bool(meta.get("stopped", False)), "run": dict(meta.get("run") or {}), "path": path}


def checkpoint_files(directory):
    """The paths of the checkpoint-named regular files in ``directory``, newest (highest epoch) first,
    whether they read back or not."""
    return [path for _, path in _list_checkpoints(os.fspath(directory))]


def latest_checkpoint(directory, model=None):
    """The path of the newest checkpoint in ``directory`` that reads back completely, or None.

    Files are tried newest (highest epoch) first; truncated, corrupted or foreign files
    and leftover temporary files are skipped. With ``model``, a checkpoint must also
    fit that model (see :func:`restore_checkpoint`).
    """
    for _, path in _list_checkpoints(os.fspath(directory)):
        try:
            meta, state = read_checkpoint(path)
            if model is not None:
                _check_compatible(path, meta, state, model)
        except ModelFileError:
            continue
        return path
    return None


def resume_from_latest(directory, model):
    """Restore the newest checkpoint in ``directory`` into ``model``; None when the directory holds none.

    Only the newest checkpoint file (the highest epoch) is resumed from. One that does not read back (a
    newer format, damage) or does not fit the model (another run's) is refused with a ModelFileError
    naming the fault and the file, never skipped: the resumed run would write its later epochs over it and
    rotate it away. Moving it out of the directory resumes from the one before.
    """
    files = checkpoint_files(directory)
    if not files:
        return None
    try:
        return restore_checkpoint(files[0], model)
    except ModelFileError as exc:
        older = f"; move it away to resume from {os.path.basename(files[1])}" if len(files) > 1 else ""
        raise ModelFileError(f"cannot resume from the newest checkpoint, which the run would overwrite: {exc}"
                             f"{older}") from None


class TrainingCheckpoint(Callback):
    """Writes a checkpoint of the model, its optimizer and ``callbacks`` every ``every`` epochs (``fit``'s
    ``checkpoint_dir``); runs after the other callbacks so their end-of-epoch state is saved.

    Each checkpoint records ``run`` (``fit``'s :func:`run_record`) and the step count the run's epoch 0
    began at, so that a reader can check the optimizer's step count against the epoch."""

    def __init__(self, directory, every, keep, callbacks, run):
        self.directory, self.every, self.keep, self.callbacks = directory, every, keep, callbacks
        self.run = dict(run)
        self._epoch_start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.model.optimizer.iterations

    def on_epoch_end(self, epoch, logs):
        self._observe(epoch)
        if (epoch + 1) % self.every == 0:
            save_checkpoint(self.directory, self.model, epoch + 1, callbacks=self.callbacks.state_dict(),
                            keep=self.keep, run=self.run)

    def _observe(self, epoch):
        """Record ``start_iterations`` from the epoch that just ended; leave it out should anything but the
        epochs' steps have moved the step count (a callback's own ``train_on_batch``, say)."""
        run, steps = self.run, self.run["steps_per_epoch"]
        run.pop("start_iterations", None)
        if self._epoch_start is None or self._epoch_start < epoch * steps:
            return
        run["start_iterations"] = self._epoch_start - epoch * steps
        try:
            _check_run("this run", {"run": run, "epoch": epoch + 1, "stopped": self.model.stop_training,
                                    "config": {"input_dim": self.model.input_dim}}, self.model.optimizer.iterations)
        except ModelFileError:
            del run["start_iterations"]
