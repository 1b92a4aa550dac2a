"""State files: ``.npz`` archives of plain arrays plus JSON metadata, written atomically, read without pickle.

One writer and one reader serve model files and training checkpoints alike.
A file holds ``__meta__`` (uint8 bytes of UTF-8 JSON: the format name and
version, the gpubp version, the model config, a ``state`` tree whose arrays
are replaced by ``{"__array__": key}`` references, and a SHA-256 digest of
every array) and one array per reference, named by its path in the tree
(``model.params``, ``optimizer.state.m``, ...). A model file's tree is
``{"model": model.state_dict()}``; a checkpoint adds the optimizer's and the
callbacks' state (see :mod:`gpubp.checkpoint`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import zipfile

import numpy as np

from .errors import ModelFileError
from .version import __version__

FORMAT_NAME = "gpubp-model"
#: 2: the state-tree layout; 1: one array per W and b (still read)
FORMAT_VERSION = 2


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


def _remove_orphans(directory, tmp_prefix):
    """Delete ``<tmp_prefix><pid>-*.tmp`` files in ``directory`` whose writer process no longer exists."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(tmp_prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(tmp_prefix):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        except OSError:  # alive, owned by another user
            pass


def atomic_savez(path, arrays, tmp_prefix=".tmp-"):
    """Write ``arrays`` as an ``.npz`` to ``path`` durably: a temporary file in the same directory,
    flush + fsync, ``os.replace``, then fsync of the directory. A crash leaves the old file or the
    new one, never a truncated one.

    A symbolic link at ``path`` is followed (its target is written; the link stays). Temporary files
    carry the writer's process id; those of writers that no longer run are deleted after a save."""
    path = os.path.realpath(path)
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{tmp_prefix}{os.getpid()}-", suffix=".tmp", dir=directory)
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
    _remove_orphans(directory, tmp_prefix)


_NUMERIC_KINDS = "biufc"
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # no ".": it joins the keys of a path into an array name


def digest(a):
    """SHA-256 of an array's bytes."""
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest()


def flatten_state(tree, prefix=""):
    """``(json_tree, {key: array})``: every NumPy array of ``tree`` moved out and replaced by a reference."""
    arrays = {}

    def walk(node, path):
        if isinstance(node, np.ndarray):
            if node.dtype.kind not in _NUMERIC_KINDS:
                raise ModelFileError(f"state array {path!r} must be numeric, got dtype {node.dtype}")
            arrays[path] = np.ascontiguousarray(node)
            return {"__array__": path}
        if isinstance(node, dict):
            for key in node:
                if not isinstance(key, str) or not _KEY.match(key):
                    raise ModelFileError(f"state keys must be [A-Za-z0-9_-] strings, got {key!r} in {path!r}")
            return {key: walk(value, f"{path}.{key}" if path else key) for key, value in node.items()}
        if isinstance(node, (list, tuple)):
            return [walk(value, f"{path}.{i}") for i, value in enumerate(node)]
        return node

    return walk(tree, prefix), arrays


def unflatten_state(tree, arrays):
    """The inverse of :func:`flatten_state`."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            return arrays[tree["__array__"]]
        return {key: unflatten_state(value, arrays) for key, value in tree.items()}
    if isinstance(tree, list):
        return [unflatten_state(value, arrays) for value in tree]
    return tree


def write_state_file(path, format_name, format_version, meta, state, tmp_prefix=".tmp-"):
    """Write ``meta`` (JSON-able) and the ``state`` tree (JSON values and host arrays) to ``path`` atomically."""
    json_state, arrays = flatten_state(state)
    meta = dict(meta, format=format_name, format_version=format_version, gpubp_version=__version__,
                state=json_state, sha256={key: digest(a) for key, a in arrays.items()})
    try:
        encoded = json.dumps(meta, allow_nan=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the state to save is not JSON-able: {exc}") from None
    arrays["__meta__"] = np.frombuffer(encoded, dtype=np.uint8)
    atomic_savez(path, arrays, tmp_prefix=tmp_prefix)
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


def _read_meta(archive, path, what):
    try:
        raw = archive["__meta__"]
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise TypeError("__meta__ is not a uint8 vector")
        meta = json.loads(bytes(raw).decode("utf-8"))
        if not isinstance(meta, dict):
            raise TypeError("metadata is not a JSON object")
    except KeyError:
        raise ModelFileError(f"{path!r} is not a gpubp {what} (no valid __meta__ record)") from None
    except (ValueError, TypeError, UnicodeDecodeError, OSError, zipfile.BadZipFile, EOFError, RecursionError) as exc:
        # ValueError includes pickled object arrays refused by allow_pickle=False
        raise ModelFileError(f"{path!r} has unreadable {what} metadata ({type(exc).__name__}: {exc})") from None
    return meta


def read_state_file(path, what, formats):
    """Read a state file completely and check it; returns ``(meta, arrays)``.

    ``formats`` maps each accepted format name to the newest version this gpubp
    reads. Checks: metadata is a JSON object of a known format and version;
    every array is numeric, present and unexpected in none; every array with a
    digest matches it. Raises ModelFileError naming the file and the fault.
    """
    path = os.fspath(path)
    with open_npz(path, what) as archive:
        meta = _read_meta(archive, path, what)
        fmt, version = meta.get("format"), meta.get("format_version")
        if fmt not in formats:
            raise ModelFileError(f"{path!r} is not a gpubp {what} (format {fmt!r})")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ModelFileError(f"{path!r} has an invalid format version {version!r}")
        if version > formats[fmt]:
            raise ModelFileError(f"{path!r} has format version {version}, newer than this gpubp understands "
                                 f"({formats[fmt]}); upgrade gpubp")
        digests = meta.get("sha256", {})
        if not isinstance(digests, dict):
            raise ModelFileError(f"{path!r} has invalid checksums")
        arrays = {}
        for key in archive.files:
            if key == "__meta__":
                continue
            try:
                a = archive[key]
            except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                raise ModelFileError(f"{path!r} holds a corrupted or non-numeric array {key!r} ({exc})") from None
            if a.dtype.kind not in _NUMERIC_KINDS:
                raise ModelFileError(f"{path!r}: array {key!r} has non-numeric dtype {a.dtype}")
            if key in digests and digests[key] != digest(a):
                raise ModelFileError(f"{path!r}: array {key!r} does not match its checksum (corrupted file)")
            arrays[key] = a
    missing = sorted(set(digests) - set(arrays))
    if missing:
        raise ModelFileError(f"{path!r} lacks the arrays {missing}")
    if version >= 2 and set(arrays) - set(digests):  # format 1 model files carried no digests
        raise ModelFileError(f"{path!r} holds arrays without checksums {sorted(set(arrays) - set(digests))}")
    return meta, arrays


def read_state_tree(path, meta, arrays):
    """The ``state`` tree of a file read by :func:`read_state_file`, arrays in place; refuses strays.

    The tree must be a JSON object whose array references are strings naming arrays of the file.
    """
    tree = meta.get("state")
    if not isinstance(tree, dict):
        raise ModelFileError(f"{path!r} holds no state object")
    try:
        referenced = list(flatten_references(tree))
        if not all(isinstance(r, str) for r in referenced):
            raise TypeError("an array reference is not a string")
        unexpected = sorted(set(arrays) - set(referenced))
        missing = sorted(set(referenced) - set(arrays))
        if unexpected or missing:
            raise ModelFileError(f"{path!r} holds unexpected arrays {unexpected} or lacks {missing}")
        return unflatten_state(tree, arrays)
    except (TypeError, RecursionError) as exc:
        raise ModelFileError(f"{path!r} holds a malformed state tree ({type(exc).__name__}: {exc})") from None


def flatten_references(tree):
    """Every ``__array__`` reference in a JSON state tree."""
    if isinstance(tree, dict):
        if set(tree) == {"__array__"}:
            yield tree["__array__"]
            return
        for value in tree.values():
            yield from flatten_references(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from flatten_references(value)


def save_model(model, path):
    """Save ``model``'s config, parameters and scaler to ``path`` (``.npz`` appended when missing)."""
    if not model.built:
        raise ModelFileError("cannot save a model without weights: build or fit it first")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    state = model.state_dict()
    return write_state_file(path, FORMAT_NAME, FORMAT_VERSION, {"config": model.get_config()},
                            {"model": {"params": state["params"], "scaler": state["scaler"]}})


def read_model_file(path):
    """``(config, params or None, weights or None, scaler dict or None)`` from a model file of any version.

    Version 2 holds the flat parameter vector; version 1 files (``W0, b0, ...``)
    are read into per-layer weights.
    """
    meta, arrays = read_state_file(path, "model file", {FORMAT_NAME: FORMAT_VERSION})
    config = meta.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ModelFileError(f"{path!r} has an invalid model configuration")
    if meta["format_version"] == 1:
        expected = [f"{kind}{i}" for i in range(len(config["layers"])) for kind in "Wb"]
        if sorted(arrays) != sorted(expected):
            raise ModelFileError(f"{path!r} holds the arrays {sorted(arrays)}, expected {expected}")
        return config, None, [arrays[key] for key in expected], meta.get("scaler")
    model_state = read_state_tree(path, meta, arrays).get("model")
    if not isinstance(model_state, dict) or not isinstance(model_state.get("params"), np.ndarray):
        raise ModelFileError(f"{path!r} holds no model parameters")
    params = model_state["params"]
    if params.ndim != 1 or params.dtype.kind != "f":
        raise ModelFileError(f"{path!r}: the parameters must be a flat float vector, got {params.dtype} "
                             f"of shape {params.shape}")
    return config, params, None, model_state.get("scaler")
