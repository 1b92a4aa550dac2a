"""State files: ``.npz`` archives of plain arrays plus JSON metadata, written atomically, read without pickle.

One writer and one reader serve model files and training checkpoints alike.
A file holds ``__meta__`` (uint8 bytes of UTF-8 JSON: the format name and
version, the gpubp version, the model config, a ``state`` tree whose arrays
are replaced by ``{"__array__": key}`` references, and a SHA-256 digest of
every array, and ``meta_sha256``, a SHA-256 digest of the rest of the
metadata) and one array per reference, named by its path in the tree
(``model.params``, ``optimizer.state.m``, ...). A model file's tree is
``{"model": model.state_dict()}``; a checkpoint adds the optimizer's and the
callbacks' state (see :mod:`gpubp.checkpoint`).

Reading never trusts the file: only a regular file is opened (never a FIFO,
device or directory); the zip must hold uniquely, plainly named ``.npy``
members; the metadata is at most :data:`META_LIMIT` bytes nested at most
:data:`META_DEPTH` deep; every array's ``.npy`` header is read and checked
(numeric dtype, byte order, a size that its model configuration allows and
that its zip entry agrees with) before any array data is, and data is read
in bounded chunks, so a crafted file costs neither unbounded time nor memory.
Every fault is a one-line :class:`ModelFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile

import numpy as np

from .errors import ModelFileError
from .npz_archive import CHUNK, NUMERIC_KINDS, one_line, open_npz, require_host_memory
from .output_paths import check_path
from .version import __version__

FORMAT_NAME = "gpubp-model"
#: 2: the state-tree layout; 1: one array per W and b (still read)
FORMAT_VERSION = 2

#: the most bytes the metadata record may hold
META_LIMIT = 16 * 2 ** 20
#: the deepest nesting of arrays and objects the metadata may have
META_DEPTH = 64
#: the most bytes any array may hold when its model configuration allows less
MIN_ARRAY_LIMIT = 16 * 2 ** 20
#: the metadata key of the metadata's own digest
META_DIGEST = "meta_sha256"



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


_KEY = re.compile(r"^[A-Za-z0-9_-]+$")  # no ".": it joins the keys of a path into an array name


def digest(a):
    """SHA-256 of an array's bytes."""
    return hashlib.sha256(np.ascontiguousarray(a).view(np.uint8).reshape(-1).data).hexdigest()


def flatten_state(tree, prefix=""):
    """``(json_tree, {key: array})``: every NumPy array of ``tree`` moved out and replaced by a reference."""
    arrays = {}

    def walk(node, path):
        if isinstance(node, np.ndarray):
            if node.dtype.kind not in NUMERIC_KINDS:
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


def _meta_digest(meta):
    """SHA-256 of the metadata's JSON without :data:`META_DIGEST` and the arrays' digests (``sha256``), which
    need no cover: a changed array digest no longer matches its array."""
    covered = {key: value for key, value in meta.items() if key not in (META_DIGEST, "sha256")}
    return hashlib.sha256(json.dumps(covered, allow_nan=True).encode("utf-8")).hexdigest()


def write_state_file(path, format_name, format_version, meta, state, tmp_prefix=".tmp-"):
    """Write ``meta`` (JSON-able) and the ``state`` tree (JSON values and host arrays) to ``path`` atomically."""
    json_state, arrays = flatten_state(state)
    meta = dict(meta, format=format_name, format_version=format_version, gpubp_version=__version__,
                state=json_state, sha256={key: digest(a) for key, a in arrays.items()})
    try:
        meta[META_DIGEST] = _meta_digest(meta)
        encoded = json.dumps(meta, allow_nan=True).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ModelFileError(f"the state to save is not JSON-able: {exc}") from None
    arrays["__meta__"] = np.frombuffer(encoded, dtype=np.uint8)
    atomic_savez(path, arrays, tmp_prefix=tmp_prefix)
    return path


def _json_depth(raw):
    """The deepest nesting of arrays and objects in the JSON bytes ``raw``, found without recursion and in
    1 MiB chunks: escape pairs are dropped, then brackets outside quotes are counted."""
    plain = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = deepest = quotes = 0
    for start in range(0, len(plain), CHUNK):
        chunk = np.frombuffer(plain, np.uint8, min(CHUNK, len(plain) - start), start)
        quoted = (np.cumsum(chunk == ord('"'), dtype=np.int64) + quotes) % 2 == 1
        steps = np.isin(chunk, (ord("["), ord("{"))).astype(np.int64) - np.isin(chunk, (ord("]"), ord("}")))
        levels = depth + np.cumsum(np.where(quoted, 0, steps))
        deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
        quotes += int(np.count_nonzero(chunk == ord('"')))
    return deepest


def _read_meta(archive, path, what):
    """The metadata: a JSON object of at most :data:`META_LIMIT` bytes nested at most :data:`META_DEPTH` deep."""
    if "__meta__" not in archive.files:
        raise ModelFileError(f"{path!r} is not a gpubp {what} (no valid __meta__ record)")
    header = archive.header("__meta__", META_LIMIT, "a metadata record may hold")
    if header.dtype != np.uint8 or len(header.shape) != 1:
        raise ModelFileError(f"{path!r}: the metadata record is not a uint8 vector ({header.dtype} of shape "
                             f"{header.shape})")
    raw = archive.read(header).tobytes()
    if _json_depth(raw) > META_DEPTH:
        raise ModelFileError(f"{path!r} has {what} metadata nested deeper than {META_DEPTH} levels")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ModelFileError(f"{path!r} has unreadable {what} metadata ({type(exc).__name__}: "
                             f"{one_line(exc)})") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"{path!r} has unreadable {what} metadata (not a JSON object)")
    return meta


def _check_format(path, what, meta, formats):
    """The file's format version, once its format is one of ``formats`` and its version one this gpubp reads."""
    fmt, version = meta.get("format"), meta.get("format_version")
    if not isinstance(fmt, str) or fmt not in formats:
        raise ModelFileError(f"{path!r} is not a gpubp {what} (format {fmt!r})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path!r} has an invalid format version {version!r}")
    if version > formats[fmt]:
        raise ModelFileError(f"{path!r} has format version {version}, newer than this gpubp understands "
                             f"({formats[fmt]}); upgrade gpubp")
    return version


def parameter_count(config, path):
    """The number of parameters of the architecture in a saved ``config``, computed before anything is
    built; ModelFileError unless it has a positive integer ``input_dim`` and Dense layers of positive
    ``units`` (a layer of ``"type": "Dropout"`` has none and keeps the width)."""
    layers = config.get("layers") if isinstance(config, dict) else None
    if not isinstance(layers, list) or not layers or not all(isinstance(layer, dict) for layer in layers):
        raise ModelFileError(f"{path!r} has an invalid model configuration (it needs a non-empty list of "
                             f"layer objects)")
    kinds = [layer.get("type", "Dense") for layer in layers]
    if any(kind not in ("Dense", "Dropout") for kind in kinds):
        raise ModelFileError(f"{path!r} has an invalid model configuration (layer types {kinds}; expected "
                             f"'Dense' or 'Dropout')")
    widths = [config.get("input_dim")] + [layer.get("units") for layer, kind in zip(layers, kinds)
                                          if kind == "Dense"]
    for i, width in enumerate(widths):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            name = "input_dim" if i == 0 else f"layer {i - 1}'s units"
            raise ModelFileError(f"{path!r} has an invalid model configuration ({name} must be a positive "
                                 f"integer, got {width!r})")
    return sum((fan_in + 1) * units for fan_in, units in zip(widths, widths[1:]))


def _check_array_names(path, meta, version, names):
    """The arrays' digests, once the member ``names`` are those the metadata names: every digested array is
    present and, from format 2 on, every array is digested and referenced by the state tree."""
    digests = meta.get("sha256", {})
    if not isinstance(digests, dict):
        raise ModelFileError(f"{path!r} has invalid checksums")
    names = set(names) - {"__meta__"}
    missing = sorted(set(digests) - names)
    if missing:
        raise ModelFileError(f"{path!r} lacks the arrays {missing}")
    if version < 2:  # format 1 model files carried no digests and no state tree
        return digests
    if names - set(digests):
        raise ModelFileError(f"{path!r} holds arrays without checksums {sorted(names - set(digests))}")
    tree = meta.get("state")
    if not isinstance(tree, dict):
        raise ModelFileError(f"{path!r} holds no state object")
    referenced = list(flatten_references(tree))
    if not all(isinstance(r, str) for r in referenced):
        raise ModelFileError(f"{path!r} holds a malformed state tree (an array reference is not a string)")
    if set(referenced) != names:
        raise ModelFileError(f"{path!r} holds unexpected arrays {sorted(names - set(referenced))} or lacks "
                             f"{sorted(set(referenced) - names)}")
    return digests


def _check_meta_digest(path, meta):
    """Refuse metadata that does not match its digest (files written before digests existed have none)."""
    expected = meta.get(META_DIGEST)
    if expected is not None and expected != _meta_digest(meta):
        raise ModelFileError(f"{path!r}: the metadata does not match its checksum (corrupted or edited file)")


def read_state_file(path, what, formats, content=None):
    """Read a state file completely and check it; returns ``(meta, arrays)``, or ``content(path, meta, arrays)``.

    ``formats`` maps each accepted format name to the newest version this gpubp
    reads. Checks, in order: the archive and its metadata (see :class:`NpzArchive`);
    a known format and version; a model configuration (``config``) whose
    architecture bounds the size of each array; each array's header; that the
    arrays present are those the metadata names and that they fit in memory;
    then reads every array and checks its digest.
    ``content`` checks what the caller needs and returns it; the metadata digest is
    checked last, so a file is refused for what is wrong in it before it is
    refused as merely corrupted. Raises ModelFileError naming the file and the fault.
    """
    path = os.fspath(path)
    with open_npz(path, what) as archive:
        meta = _read_meta(archive, path, what)
        version = _check_format(path, what, meta, formats)
        # any array may hold as many bytes as the parameters in float64, or MIN_ARRAY_LIMIT
        limit = max(8 * parameter_count(meta.get("config"), path), MIN_ARRAY_LIMIT)
        headers = [archive.header(key, limit, "its model configuration allows")
                   for key in archive.files if key != "__meta__"]
        digests = _check_array_names(path, meta, version, archive.files)
        require_host_memory(sum(h.nbytes for h in headers), path)
        arrays = {}
        for header in headers:
            arrays[header.key] = archive.read(header)
            if header.key in digests and digests[header.key] != digest(arrays[header.key]):
                raise ModelFileError(f"{path!r}: array {header.key!r} does not match its checksum (corrupted file)")
    result = (meta, arrays) if content is None else content(path, meta, arrays)
    _check_meta_digest(path, meta)
    return result


def read_state_tree(path, meta, arrays):
    """The ``state`` tree of a file read by :func:`read_state_file` (which checked its references), arrays in place."""
    return unflatten_state(meta["state"], arrays)


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
    path = check_path("path", path)
    if not model.built:
        raise ModelFileError("cannot save a model without weights: build or fit it first")
    if not path.endswith(".npz"):
        path += ".npz"
    state = model.state_dict()
    return write_state_file(path, FORMAT_NAME, FORMAT_VERSION, {"config": model.get_config()},
                            {"model": {"params": state["params"], "scaler": state["scaler"]}})


def read_model_file(path):
    """``(config, params or None, weights or None, scaler dict or None)`` from a model file of any version.

    Version 2 holds the flat parameter vector; version 1 files (``W0, b0, ...``)
    are read into per-layer weights. The parameters held must be as many as the
    configuration's architecture has.
    """
    return read_state_file(path, "model file", {FORMAT_NAME: FORMAT_VERSION}, content=_model_content)


def _model_content(path, meta, arrays):
    config = meta["config"]
    count = parameter_count(config, path)
    if meta["format_version"] == 1:
        expected = [f"{kind}{i}" for i in range(len(config["layers"])) for kind in "Wb"]
        if sorted(arrays) != sorted(expected):
            raise ModelFileError(f"{path!r} holds the arrays {sorted(arrays)}, expected {expected}")
        params, weights, scaler = None, [arrays[key] for key in expected], meta.get("scaler")
        held = sum(w.size for w in weights)
    else:
        model_state = read_state_tree(path, meta, arrays).get("model")
        if not isinstance(model_state, dict) or not isinstance(model_state.get("params"), np.ndarray):
            raise ModelFileError(f"{path!r} holds no model parameters")
        params, weights, scaler = model_state["params"], None, model_state.get("scaler")
        if params.ndim != 1 or params.dtype.kind != "f":
            raise ModelFileError(f"{path!r}: the parameters must be a flat float vector, got {params.dtype} "
                                 f"of shape {params.shape}")
        held = params.size
    if held != count:
        raise ModelFileError(f"{path!r} holds {held} parameters, its architecture has {count}")
    return config, params, weights, scaler
