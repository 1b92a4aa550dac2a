"""Training checkpoints: everything needed to resume ``fit`` bit-identically.

A checkpoint is an ``.npz`` archive (loaded with ``allow_pickle=False``) named
``ckpt-epochNNNNNN.npz`` holding

* ``__meta__``: uint8 bytes of UTF-8 JSON: format name ``"gpubp-checkpoint"`` and
  version, the model config (architecture, dtype, seed, loss, optimizer settings
  including the learning-rate schedule), the scaler, the compile metrics, the
  number of completed epochs, ``optimizer.iterations``, the state of the
  model's shuffle generator (``bit_generator.state``, big ints are fine in JSON),
  the caller's JSON-able ``extra`` dict and a SHA-256 digest of every array;
* ``params``: the flat parameter buffer (weights then biases);
* ``state__<name>``: every optimizer state buffer (``m``, ``v``, ``velocity``, ...);
* ``array__<name>``: optional extra numeric arrays given by the caller (e.g. the
  best weights an ``EarlyStopping`` callback keeps).

Files are written atomically (temporary file in the same directory, fsync,
``os.replace``, fsync of the directory), so a crash leaves either the previous
set of checkpoints or the new one, never a truncated newest file; and
:func:`latest_checkpoint` skips any file that does not read back completely.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile

import numpy as np

from .errors import InvalidInputError, ModelFileError
from .io import FORMAT_NAME as MODEL_FORMAT_NAME
from .io import atomic_savez, model_from_config, open_npz

FORMAT_NAME = "gpubp-checkpoint"
FORMAT_VERSION = 1

_NAME_RE = re.compile(r"^ckpt-epoch(\d{6,})\.npz$")
_TMP_PREFIX = ".ckpt-tmp-"
_STATE_PREFIX = "state__"
_ARRAY_PREFIX = "array__"
_NUMERIC_KINDS = "biufc"


def checkpoint_name(epoch):
    """The file name of the checkpoint after ``epoch`` completed epochs."""
    return f"ckpt-epoch{epoch:06d}.npz"


def _digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest()


def _normalised_config(config):
    """The config as it reads back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(config))


def _list_checkpoints(directory):
    """``[(epoch, path)]`` of the checkpoint files in ``directory``, newest (highest epoch) first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _NAME_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    found.sort(reverse=True)
    return found


def save_checkpoint(directory, model, epoch, extra=None, keep=3, arrays=None):
    """Write the training state of ``model`` after ``epoch`` completed epochs; returns the path.

    Parameters
    ----------
    directory : str or path
        Created when missing. The file is ``directory/ckpt-epochNNNNNN.npz``.
    model : Sequential
        Built and compiled.
    epoch : int
        Number of completed epochs (>= 0).
    extra : dict, optional
        JSON-able data of the caller (history so far, early-stopping counters, ...),
        returned as is by :func:`restore_checkpoint` (tuples read back as lists).
    keep : int or None
        Keep only the newest ``keep`` checkpoints (by epoch number) in ``directory``;
        the one just written is never deleted. None keeps all.
    arrays : dict of str -> array, optional
        Extra numeric arrays (host or device), returned as host arrays under
        ``"arrays"`` by :func:`restore_checkpoint`.
    """
    from . import __version__

    if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
        raise InvalidInputError(f"epoch must be an integer >= 0, got {epoch!r}")
    epoch = int(epoch)
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise InvalidInputError(f"keep must be an integer >= 1 or None, got {keep!r}")
    if not model.built:
        raise InvalidInputError("cannot checkpoint a model without weights: build or fit it first")
    if model.loss is None or model.optimizer is None:
        raise InvalidInputError("cannot checkpoint an uncompiled model: call compile() first")
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
        raise InvalidInputError(f"extra must be a dict, got {type(extra).__name__}")
    try:
        extra = json.loads(json.dumps(extra))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"extra must be JSON-able: {exc}") from None

    backend = model.backend
    optimizer = model.optimizer
    host = {"params": np.ascontiguousarray(backend.to_host(model._params))}
    state_names = list(optimizer.state_names)
    for name in state_names:
        host[_STATE_PREFIX + name] = np.ascontiguousarray(backend.to_host(optimizer.state[name]))
    extra_array_names = []
    for name, a in (arrays or {}).items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise InvalidInputError(f"array names must be non-empty [A-Za-z0-9_.-] strings, got {name!r}")
        a = np.ascontiguousarray(backend.to_host(a) if hasattr(a, "__cuda_array_interface__") else np.asarray(a))
        if a.dtype.kind not in _NUMERIC_KINDS:
            raise InvalidInputError(f"extra array {name!r} must be numeric, got dtype {a.dtype}")
        host[_ARRAY_PREFIX + name] = a
        extra_array_names.append(name)

    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "gpubp_version": __version__,
        "config": model.get_config(),
        "scaler": None if model.scaler is None else model.scaler.to_dict(),
        "metrics": list(model.metrics),
        "epoch": epoch,
        "iterations": int(optimizer.iterations),
        "state_names": state_names,
        "array_names": extra_array_names,
        "shuffle_rng": model.shuffle_rng.bit_generator.state,
        "extra": extra,
        "sha256": {key: _digest(a) for key, a in host.items()},
    }
    host["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, checkpoint_name(epoch))
    atomic_savez(path, host, tmp_prefix=_TMP_PREFIX)

    # leftovers of writers killed mid-write (one writer per directory is assumed)
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


def _read_checkpoint(path):
    """``(meta, arrays)`` of a checkpoint file, fully read and checked; raises ModelFileError."""
    path = os.fspath(path)
    archive = open_npz(path, "checkpoint")
    with archive:
        try:
            raw = archive["__meta__"]
            if raw.dtype != np.uint8 or raw.ndim != 1:
                raise TypeError("__meta__ is not a uint8 vector")
            meta = json.loads(bytes(raw).decode("utf-8"))
            if not isinstance(meta, dict):
                raise TypeError("metadata is not a JSON object")
            fmt, version = meta.get("format"), meta["format_version"]
        except KeyError:
            raise ModelFileError(f"{path!r} is not a gpubp checkpoint (no valid __meta__ record)") from None
        except (ValueError, TypeError, UnicodeDecodeError, OSError, zipfile.BadZipFile, EOFError) as exc:
            # ValueError includes pickled object arrays refused by allow_pickle=False
            raise ModelFileError(f"{path!r} has unreadable checkpoint metadata ({exc})") from None
        if fmt == MODEL_FORMAT_NAME:
            raise ModelFileError(f"{path!r} is a gpubp model file, not a training checkpoint; "
                                 "load it with gpubp.load()")
        if fmt != FORMAT_NAME:
            raise ModelFileError(f"{path!r} is not a gpubp checkpoint (format {fmt!r})")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelFileError(f"{path!r} has an invalid checkpoint format version {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path!r} has checkpoint format version {version}, newer than this gpubp understands "
                f"({FORMAT_VERSION}); upgrade gpubp")
        try:
            state_names = [str(n) for n in meta["state_names"]]
            array_names = [str(n) for n in meta["array_names"]]
            digests = dict(meta["sha256"])
            for key in ("config", "epoch", "iterations", "shuffle_rng", "extra", "scaler"):
                meta[key]
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFileError(f"{path!r} has incomplete checkpoint metadata ({exc!r})") from None
        expected = ["params"] + [_STATE_PREFIX + n for n in state_names] + [_ARRAY_PREFIX + n for n in array_names]
        unexpected = sorted(set(archive.files) - set(expected) - {"__meta__"})
        if unexpected:
            raise ModelFileError(f"{path!r} holds unexpected arrays {unexpected}")
        arrays = {}
        for key in expected:
            try:
                a = archive[key]
            except KeyError:
                raise ModelFileError(f"{path!r} lacks the array {key!r}") from None
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise ModelFileError(f"{path!r} holds a corrupted or non-numeric array {key!r} ({exc})") from None
            if a.dtype.kind not in _NUMERIC_KINDS:
                raise ModelFileError(f"{path!r}: array {key!r} has non-numeric dtype {a.dtype}")
            if digests.get(key) != _digest(a):
                raise ModelFileError(f"{path!r}: array {key!r} does not match its checksum (corrupted file)")
            arrays[key] = a
    epoch, iterations = meta["epoch"], meta["iterations"]
    for name, value in (("epoch", epoch), ("iterations", iterations)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ModelFileError(f"{path!r} has an invalid {name} {value!r}")
    params = arrays["params"]
    if params.ndim != 1:
        raise ModelFileError(f"{path!r}: params must be a flat vector, got shape {params.shape}")
    for name in state_names:
        a = arrays[_STATE_PREFIX + name]
        if a.shape != params.shape or a.dtype != params.dtype:
            raise ModelFileError(f"{path!r}: optimizer state {name!r} has shape {a.shape} dtype {a.dtype}, "
                                 f"expected {params.shape} {params.dtype}")
    if not isinstance(meta["extra"], dict) or not isinstance(meta["config"], dict):
        raise ModelFileError(f"{path!r} has invalid checkpoint metadata (config/extra must be objects)")
    return meta, arrays


def _check_compatible(path, meta, arrays, model):
    """Raise ModelFileError unless the checkpoint fits ``model``; returns the restored pieces
    that need building (rng state, scaler) without touching the model."""
    if not model.built:
        raise ModelFileError("cannot restore a checkpoint into a model without weights: "
                             "build it (input_dim=...) and compile it first")
    if model.loss is None or model.optimizer is None:
        raise ModelFileError("cannot restore a checkpoint into an uncompiled model: call compile() first")
    saved = dict(meta["config"])
    current = _normalised_config(model.get_config())
    # the seed only chose the initial weights and the shuffle stream, both restored
    saved.pop("seed", None)
    current.pop("seed", None)
    if saved != current:
        diffs = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        details = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs model {current.get(k)!r}" for k in diffs)
        raise ModelFileError(f"checkpoint {path!r} does not match the model's configuration ({details})")
    params = arrays["params"]
    if params.shape != tuple(model._params.shape) or params.dtype != model.dtype:
        raise ModelFileError(f"checkpoint {path!r} holds {params.shape} {params.dtype} parameters, "
                             f"the model has {tuple(model._params.shape)} {model.dtype}")
    if list(meta["state_names"]) != list(model.optimizer.state_names):
        raise ModelFileError(f"checkpoint {path!r} holds optimizer state {meta['state_names']}, "
                             f"the model's optimizer keeps {list(model.optimizer.state_names)}")
    for name in model.optimizer.state_names:
        if name not in model.optimizer.state:
            raise ModelFileError("the model's optimizer has no state buffers yet (compile the built model)")
    # try the RNG state on a scratch generator of the same kind first
    rng_state = meta["shuffle_rng"]
    try:
        scratch = type(model.shuffle_rng.bit_generator)()
        scratch.state = rng_state
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelFileError(f"checkpoint {path!r} holds an invalid shuffle generator state ({exc})") from None
    scaler = None
    if meta["scaler"] is not None:
        from .data import StandardScaler

        try:
            scaler = StandardScaler.from_dict(meta["scaler"])
        except (ValueError, TypeError, KeyError) as exc:
            raise ModelFileError(f"checkpoint {path!r} holds an invalid scaler ({exc})") from None
        if len(scaler.mean_) != model.input_dim:
            raise ModelFileError(f"checkpoint {path!r} holds a scaler for {len(scaler.mean_)} features, "
                                 f"the model expects {model.input_dim}")
    return rng_state, scaler


def restore_checkpoint(path, model):
    """Restore the training state saved in ``path`` into ``model`` (built and compiled with the
    same architecture, dtype, loss and optimizer settings; the seed may differ).

    Restores the parameters, the optimizer state buffers and ``iterations``, the shuffle
    generator state and the scaler. Everything is read and checked before the model is
    touched, so a failed restore leaves the model as it was.

    Returns ``{"epoch": completed epochs, "extra": dict, "arrays": dict of host arrays}``.
    Raises :class:`gpubp.errors.ModelFileError` for missing, corrupted, foreign, pickled,
    future-version or mismatching files.
    """
    path = os.fspath(path)
    meta, arrays = _read_checkpoint(path)
    rng_state, scaler = _check_compatible(path, meta, arrays, model)
    backend = model.backend
    xp = backend.xp
    xp.copyto(model._params, backend.asarray(arrays["params"], model.dtype))
    for name in model.optimizer.state_names:
        xp.copyto(model.optimizer.state[name], backend.asarray(arrays[_STATE_PREFIX + name], model.dtype))
    model.optimizer.iterations = meta["iterations"]
    model.shuffle_rng.bit_generator.state = rng_state
    model.set_scaler(scaler)
    backend.synchronize()
    extra_arrays = {name: arrays[_ARRAY_PREFIX + name] for name in meta["array_names"]}
    return {"epoch": meta["epoch"], "extra": meta["extra"], "arrays": extra_arrays}


def latest_checkpoint(directory, model=None):
    """The path of the newest checkpoint in ``directory`` that reads back completely, or None.

    Files are tried newest (highest epoch) first; truncated, corrupted or foreign files
    and leftover temporary files are skipped. With ``model``, a checkpoint must also
    fit that model (see :func:`restore_checkpoint`).
    """
    for _, path in _list_checkpoints(os.fspath(directory)):
        try:
            meta, arrays = _read_checkpoint(path)
            if model is not None:
                _check_compatible(path, meta, arrays, model)
        except ModelFileError:
            continue
        return path
    return None


def load_checkpoint_model(path, backend="auto"):
    """A new compiled model built from the checkpoint's configuration, with its state restored.

    Like :func:`gpubp.load`, for a checkpoint: the number of completed epochs and the
    ``extra`` data are available from :func:`restore_checkpoint` or ``model.checkpoint_info``.
    """
    path = os.fspath(path)
    meta, _ = _read_checkpoint(path)
    model = model_from_config(meta["config"], backend, path, metrics=meta.get("metrics"))
    model.checkpoint_info = restore_checkpoint(path, model)
    return model
