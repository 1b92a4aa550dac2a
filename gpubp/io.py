"""Model files: ``.npz`` archives of plain arrays plus JSON metadata, loaded without pickle.

Layout: ``__meta__`` (uint8 bytes of UTF-8 JSON: format name and version, gpubp
version, architecture, dtype, seed, loss and optimizer settings) and one array
per parameter, ``W0, b0, W1, b1, ...``.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import ModelFileError

FORMAT_NAME = "gpubp-model"
FORMAT_VERSION = 1


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (no-op where directories cannot be fsynced)."""
    if os.name == "nt":  # Windows cannot open a directory for fsync
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_savez(path, arrays, tmp_prefix=".tmp-"):
    """Write ``arrays`` as an ``.npz`` to ``path`` durably: a temporary file in the same directory,
    flush + fsync, ``os.replace``, then fsync of the directory. A crash leaves the old file or the
    new one, never a truncated one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix, suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def save_model(model, path):
    """Save ``model`` to ``path`` (``.npz`` appended when missing); returns the path written."""
    from . import __version__

    if not model.built:
        raise ModelFileError("cannot save a model without weights: build or fit it first")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "gpubp_version": __version__,
            "config": model.get_config(),
            "scaler": None if model.scaler is None else model.scaler.to_dict()}
    arrays = {"__meta__": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)}
    for i, w in enumerate(model.get_weights()):
        arrays[("W" if i % 2 == 0 else "b") + str(i // 2)] = w
    atomic_savez(path, arrays)
    return path


def open_npz(path, what):
    """``np.load(path, allow_pickle=False)`` as an ``NpzFile``; ModelFileError (naming ``what``)
    for a missing, unreadable or bare ``.npy`` file."""
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelFileError(f"{what} {path!r} does not exist") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelFileError(f"{path!r} is not a readable gpubp {what} ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{path!r} is a bare .npy array, not a gpubp {what}")
    return archive


def read_model_file(path):
    """Return ``(meta, weights)`` from a model file, rejecting anything unexpected."""
    archive = open_npz(path, "model file")
    with archive:
        try:
            meta = json.loads(bytes(archive["__meta__"]).decode("utf-8"))
            version = meta["format_version"]
            if meta.get("format") != FORMAT_NAME:
                raise KeyError("format")
        except ValueError as exc:  # includes pickled object arrays refused by allow_pickle=False
            raise ModelFileError(f"{path!r} has unreadable metadata ({exc})") from None
        except (KeyError, TypeError, UnicodeDecodeError):
            raise ModelFileError(f"{path!r} is not a gpubp model file (no valid __meta__ record)") from None
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ModelFileError(
                f"{path!r} has format version {version}, newer than this gpubp understands "
                f"({FORMAT_VERSION}); upgrade gpubp")
        n_layers = len(meta["config"]["layers"])
        weights = []
        try:
            for i in range(n_layers):
                weights += [archive[f"W{i}"], archive[f"b{i}"]]
        except KeyError as exc:
            raise ModelFileError(f"{path!r} lacks the array {exc}") from None
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelFileError(f"{path!r} holds a corrupted or non-numeric array ({exc})") from None
    return meta, weights


def model_from_config(config, backend, path, metrics=()):
    """Rebuild a (compiled, when it was) Sequential from a saved ``config``; ModelFileError when invalid."""
    from .layers import Dense
    from .model import Sequential
    from .optim import optimizer_from_config

    try:
        layers = [Dense(**layer) for layer in config["layers"]]
        model = Sequential(layers, input_dim=config["input_dim"], backend=backend,
                           dtype=config["dtype"], seed=config["seed"])
        if config.get("loss"):
            optimizer = optimizer_from_config(config["optimizer"]) if config.get("optimizer") else "adam"
            model.compile(loss=config["loss"], optimizer=optimizer, metrics=metrics or ())
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path!r} has an invalid model configuration ({exc})") from None
    return model


def load_model(path, backend="auto"):
    """Rebuild a saved model on ``backend``, compiled again when it was compiled when saved."""
    meta, weights = read_model_file(path)
    model = model_from_config(meta["config"], backend, path)
    try:
        model.set_weights(weights)
        if meta.get("scaler"):
            from .data import StandardScaler

            model.set_scaler(StandardScaler.from_dict(meta["scaler"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path!r} holds weights or a scaler that do not fit its architecture: {exc}") from None
    return model
