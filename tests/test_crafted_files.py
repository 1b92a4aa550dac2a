"""Crafted and corrupted model and checkpoint files: each one is refused with a one-line ModelFileError
naming the file and the fault, within a second and 100 MiB, whichever way it is read (``gb.load``,
``load_checkpoint_model``, ``latest_checkpoint``, ``fit(resume=True)``). CPU only."""

import io
import json
import os
import shutil
import struct
import threading
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpubp as gb
from gpubp.checkpoint import latest_checkpoint, read_checkpoint
from gpubp.errors import ModelFileError
from gpubp.npz_archive import open_npz
from gpubp.loading import load_checkpoint_model

FIXTURE = Path(__file__).parent / "fixtures" / "model-format-v1.npz"
GIB = 2 ** 30
MIB = 2 ** 20


# --------------------------------------------------------------------------- writing crafted files by hand
def _npy(array):
    """``array`` as the bytes of an ``.npy`` file."""
    out = io.BytesIO()
    np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def _npy_header(shape, descr="<f4"):
    """The header alone of an ``.npy`` file that declares ``shape`` and ``descr``."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _meta_npy(meta):
    """A ``__meta__`` member holding ``meta`` (a dict, or JSON text) as uint8 bytes."""
    text = meta if isinstance(meta, str) else json.dumps(meta)
    return _npy(np.frombuffer(text.encode(), dtype=np.uint8))


def _entry(name, data, method=0, crc=None, size=None, flags=0, payload=None):
    """One zip member: ``data`` uncompressed (``payload`` its stored bytes when given); sizes and crc may lie."""
    payload = data if payload is None else payload
    return (name.encode(), payload, method, zlib.crc32(data) if crc is None else crc,
            len(data) if size is None else size, flags)


def _zip(entries):
    """A zip archive of ``entries`` (see :func:`_entry`), written by hand so that names, sizes and flags can lie."""
    body, central = bytearray(), bytearray()
    for name, payload, method, crc, size, flags in entries:
        fields = struct.pack("<HHHHHIIIHH", 20, flags, method, 0, 0x21, crc, len(payload), size, len(name), 0)
        central += b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack("<HHHII", 0, 0, 0, 0, len(body)) + name
        body += b"PK\x03\x04" + fields + name + payload
    end = struct.pack("<HHHHIIH", 0, 0, len(entries), len(entries), len(central), len(body), 0)
    return bytes(body + central + b"PK\x05\x06" + end)


def _members(path):
    """``{name: bytes}`` of the members of a valid archive, in order."""
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _meta(path):
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(bytes(archive["__meta__"]).decode())


def _write(dst, members):
    """Write ``members`` (``{name: bytes}`` or a list of entries) as a stored zip at ``dst``."""
    entries = [_entry(n, d) for n, d in members.items()] if isinstance(members, dict) else members
    Path(dst).write_bytes(_zip(entries))
    return dst


def _edit(src, dst, change, keep_digest=False):
    """Copy ``src`` to ``dst`` with ``change(meta, members)`` applied, dropping the arrays the state no longer
    references; the metadata digest is dropped unless kept, so that what is tested is the check of the
    changed value, not the digest."""
    meta, members = _meta(src), _members(src)
    if not keep_digest:
        meta.pop("meta_sha256", None)
    change(meta, members)
    referenced = json.dumps(meta.get("state"))
    for key in [k for k in meta.get("sha256", {}) if f'"{k}"' not in referenced]:
        del meta["sha256"][key], members[f"{key}.npy"]
    members["__meta__.npy"] = _meta_npy(meta)
    return _write(dst, members)


def _zeros_deflated(prefix, n_zeros):
    """``(deflate stream, crc)`` of ``prefix`` followed by ``n_zeros`` (a multiple of 16 MiB) zero bytes,
    built from one compressed 16 MiB block repeated: about 1 MiB for 1 GiB."""
    block = 16 * MIB
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    zeros = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = head + zeros * (n_zeros // block) + compressor.flush()
    crc = zlib.crc32(prefix)
    chunk = bytes(block)
    for _ in range(n_zeros // block):
        crc = zlib.crc32(chunk, crc)
    return stream, crc


def _bomb(src, dst, key, header, lie_about_size=False):
    """``src`` with member ``key`` replaced by ``header`` plus 1 GiB of zeros, deflated to about 1 MiB."""
    stream, crc = _zeros_deflated(header, GIB)
    entries = [_entry(n, d) for n, d in _members(src).items() if n != key]
    size = len(_members(src)[key]) if lie_about_size else len(header) + GIB
    entries.append(_entry(key, b"", method=8, crc=crc, size=size, payload=stream))
    Path(dst).write_bytes(_zip(entries))
    return dst


# --------------------------------------------------------------------------- running bounded
def _within(seconds, call):
    """``call()``'s result (or its exception raised here); fails when it has not returned after ``seconds``."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    assert time.perf_counter() - start < seconds
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _refused(call, phrase, path, error=ModelFileError, seconds=1.0, max_mib=100):
    """``call`` raises ``error`` within ``seconds`` and ``max_mib`` MiB (traced peak), with a one-line message
    that holds ``phrase`` and names ``path``."""
    tracemalloc.start()
    try:
        with pytest.raises(error) as info:
            _within(seconds, call)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert phrase in message, message
    assert "\n" not in message and os.fspath(path) in message, message
    assert peak < max_mib * MIB, f"peak {peak / MIB:.0f} MiB"
    return message


# --------------------------------------------------------------------------- valid files to craft from
rng = np.random.default_rng(0)
X = rng.normal(size=(64, 3))
Y = (X[:, 0] > 0).astype(np.int64)


def _model(seed=0):
    model = gb.Sequential([gb.Dense(8, activation="tanh"), gb.Dense(2)], input_dim=3, backend="cpu", seed=seed)
    return model.compile(loss="softmax_cross_entropy", optimizer="adam")


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    """A model file and a checkpoint directory (epochs 1 and 2, History and EarlyStopping state)."""
    root = tmp_path_factory.mktemp("valid")
    model = _model()
    model.fit(X, Y, epochs=2, verbose=0, checkpoint_dir=root / "ckpts",
              callbacks=[gb.EarlyStopping(monitor="loss", patience=5)])
    model.save(root / "model.npz")
    return SimpleNamespace(model=root / "model.npz", ckpts=root / "ckpts", loaded=model)


def _checkpoints(valid, tmp_path):
    """A copy of the valid checkpoint directory: ``(directory, newest, older)``."""
    directory = tmp_path / "ckpts"
    shutil.copytree(valid.ckpts, directory)
    return directory, directory / "ckpt-epoch000002.npz", os.path.join(directory, "ckpt-epoch000001.npz")


def _resume(directory, epochs=3):
    return _model(seed=5).fit(X, Y, epochs=epochs, verbose=0, checkpoint_dir=directory, resume=True,
                              callbacks=[gb.EarlyStopping(monitor="loss", patience=5)])


def _resume_refuses_the_newest(directory, newest, phrase="cannot resume from the newest checkpoint"):
    """A resume refuses a newest checkpoint it cannot use (it would write its later epochs over it), within
    bounded time and memory, naming it; moved away, the run resumes from the one before. Returns that run's
    History."""
    _refused(lambda: _resume(directory), phrase, newest, seconds=5.0)
    os.rename(newest, os.fspath(newest) + ".moved")
    return _resume(directory)


# --------------------------------------------------------------------------- archive-level crafts
def _replace(key, data):
    return lambda src, dst: _write(dst, dict(_members(src), **{key: data}))


def _params_header(shape, descr="<f4"):
    return _replace("model.params.npy", _npy_header(shape, descr))


def _renamed(old, new):
    return lambda src, dst: _write(dst, {new if n == old else n: d for n, d in _members(src).items()})


def _extra(name, data):
    return lambda src, dst: _write(dst, dict(_members(src), **{name: data}))


def _duplicate(src, dst):
    members = _members(src)
    entries = [_entry(n, d) for n, d in members.items()]
    return _write(dst, entries + [_entry("model.params.npy", members["model.params.npy"])])


def _many_members(src, dst):
    extra = {f"x{i}.npy": _npy(np.zeros(1)) for i in range(5000)}
    return _write(dst, dict(_members(src), **extra))


def _flagged(flags=0, method=0):
    return lambda src, dst: _write(dst, [_entry(n, d, flags=flags if n == "model.params.npy" else 0,
                                                method=method if n == "model.params.npy" else 0)
                                         for n, d in _members(src).items()])


def _short_params(src, dst):
    members = _members(src)
    whole = np.lib.format.read_array(io.BytesIO(members["model.params.npy"]))
    header = _npy_header(whole.shape, whole.dtype.str)
    members["model.params.npy"] = header + whole[:-1].tobytes()  # the header promises one more float
    return _write(dst, members)


def _big_endian_params(src, dst):
    members = _members(src)
    data = members["model.params.npy"]
    members["model.params.npy"] = data.replace(b"'<f4'", b"'>f4'", 1)
    return _write(dst, members)


def _huge_header_length(src, dst):
    members = _members(src)
    members["model.params.npy"] = b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{" * 100
    return _write(dst, members)


def _meta_text(text):
    return lambda src, dst: _write(dst, dict(_members(src), **{"__meta__.npy": _meta_npy(text)}))


def _meta_array(array):
    return lambda src, dst: _write(dst, dict(_members(src), **{"__meta__.npy": _npy(array)}))


def _large_meta(src, dst):
    meta = _meta(src)
    meta["padding"] = "x" * (17 * MIB)
    return _write(dst, dict(_members(src), **{"__meta__.npy": _meta_npy(meta)}))


def _deep_state(src, dst):
    return _edit(src, dst, lambda meta, _: meta["state"].update(deep=json.loads("[" * 900 + "]" * 900)))


def _without_meta(src, dst):
    return _write(dst, {n: d for n, d in _members(src).items() if n != "__meta__.npy"})


def _symlink_loop(src, dst):
    os.symlink(dst, dst)


ARCHIVE_CASES = {
    # not an archive at all
    "empty file": (lambda src, dst: dst.write_bytes(b""), "is empty"),
    "not a zip": (lambda src, dst: dst.write_bytes(b"not a zip file at all " * 40), "not a zip archive"),
    "truncated": (lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), "not a zip archive"),
    "truncated end": (lambda src, dst: dst.write_bytes(src.read_bytes()[:-5]), "not a zip archive"),
    "bare .npy": (lambda src, dst: dst.write_bytes(_npy(np.zeros(3))), "bare .npy"),
    "foreign .npz": (lambda src, dst: np.savez(dst, X=np.zeros(3)), "not a gpubp"),
    # not a regular file
    "fifo": (lambda src, dst: os.mkfifo(dst), "not a regular file"),
    "directory": (lambda src, dst: dst.mkdir(), "not a regular file"),
    "device": (lambda src, dst: dst.symlink_to("/dev/zero"), "not a regular file"),
    "symlink loop": (_symlink_loop, "cannot be opened"),
    # zip members
    "duplicate member": (_duplicate, "twice"),
    "parent path": (_renamed("model.params.npy", "../model.params.npy"), "member named"),
    "absolute path": (_renamed("model.params.npy", "/tmp/model.params.npy"), "member named"),
    "backslash": (_renamed("model.params.npy", "a\\model.params.npy"), "member named"),
    "not an .npy": (_extra("readme.txt", b"hello"), "member named"),
    "too many members": (_many_members, "members"),
    "encrypted member": (_flagged(flags=1), "encrypted"),
    "unknown compression": (_flagged(method=99), "compression"),
    # metadata
    "no metadata": (_without_meta, "no valid __meta__"),
    "int64 metadata": (_meta_array(np.arange(10)), "metadata"),
    "2-d metadata": (_meta_array(np.zeros((2, 3), np.uint8)), "metadata"),
    "metadata not UTF-8": (_meta_array(np.frombuffer(b"\xff\xfe{", np.uint8)), "metadata"),
    "metadata a list": (_meta_text("[1, 2]"), "metadata"),
    "metadata nested 100k deep": (_meta_text("[" * 100000 + "]" * 100000), "nested deeper than 64"),
    "state nested 900 deep": (_deep_state, "nested deeper than 64"),
    "metadata of 17 MiB": (_large_meta, "metadata record"),
    "metadata header of 1 TB": (_replace("__meta__.npy", _npy_header((10 ** 12,), "|u1")), "metadata record"),
    # array headers
    "params header of 4 TB": (_params_header((10 ** 12,)), "configuration allows"),
    "params header of 2**80": (_params_header((2 ** 40, 2 ** 40)), "configuration allows"),
    "negative shape": (_params_header((-1,)), "shape"),
    "object dtype": (_params_header((3,), "|O"), "non-numeric"),
    "structured dtype": (_params_header((3,), [("a", "<f4")]), "non-numeric"),
    "big-endian params": (_big_endian_params, "byte order"),
    "header length 2 GiB": (_huge_header_length, "header"),
    "unknown .npy version": (_replace("model.params.npy", b"\x93NUMPY\x03\x07" + b"\x00" * 30), "header"),
    "fewer bytes than the header declares": (_short_params, "its header declares"),
}


@pytest.mark.parametrize("craft, phrase", ARCHIVE_CASES.values(), ids=ARCHIVE_CASES.keys())
def test_crafted_model_file_is_refused(valid, tmp_path, craft, phrase):
    path = tmp_path / "m.npz"
    craft(valid.model, path)
    _refused(lambda: gb.load(path, backend="cpu"), phrase, path)


@pytest.mark.parametrize("craft, phrase", ARCHIVE_CASES.values(), ids=ARCHIVE_CASES.keys())
def test_crafted_checkpoint_is_refused_and_skipped(valid, tmp_path, craft, phrase):
    directory, newest, older = _checkpoints(valid, tmp_path)
    source = tmp_path / "source.npz"
    shutil.copy(newest, source)
    newest.unlink()
    craft(source, newest)
    _refused(lambda: load_checkpoint_model(newest, backend="cpu"), phrase, newest)
    assert _within(1.0, lambda: latest_checkpoint(directory)) == older


@pytest.mark.parametrize("name", ["fifo", "directory", "device", "metadata nested 100k deep", "params header of 4 TB"])
def test_resume_skips_a_crafted_newest_checkpoint(valid, tmp_path, name):
    directory, newest, _ = _checkpoints(valid, tmp_path)
    craft = ARCHIVE_CASES[name][0]
    crafted = directory / "ckpt-epoch000009.npz"  # sorts newest; resuming writes epoch 3
    craft(newest, crafted)
    if os.path.isfile(crafted):  # a regular file: refused, never skipped (the run would overwrite it)
        history = _resume_refuses_the_newest(directory, crafted)
    else:  # a FIFO, directory or device is no checkpoint: never opened, never rotated away
        history = _within(5.0, lambda: _resume(directory))
    assert history.epoch == [0, 1, 2]  # resumed after epoch 2


# --------------------------------------------------------------------------- deflate bombs
@pytest.fixture(scope="module")
def params_header(valid):
    return _npy_header(valid.loaded.params.shape)


BOMBS = {
    # the header declares the real parameter count, the zip entry 1 GiB more
    "params, honest zip size": (lambda src, dst, h: _bomb(src, dst, "model.params.npy", h), "its header declares"),
    # the header itself declares 1 GiB
    "params, 1 GiB header": (lambda src, dst, h: _bomb(src, dst, "model.params.npy", _npy_header((GIB // 4,))),
                             "configuration allows"),
    # the zip entry claims the real size: reading stops there and the CRC (of 1 GiB) does not match
    "params, lying zip size": (lambda src, dst, h: _bomb(src, dst, "model.params.npy", h, lie_about_size=True),
                               "corrupted"),
    "metadata, honest zip size": (lambda src, dst, h: _bomb(src, dst, "__meta__.npy", _npy_header((100,), "|u1")),
                                  "its header declares"),
}


@pytest.mark.parametrize("craft, phrase", BOMBS.values(), ids=BOMBS.keys())
def test_deflate_bomb_is_refused_without_inflating_it(valid, tmp_path, params_header, craft, phrase):
    path = craft(valid.model, tmp_path / "bomb.npz", params_header)
    assert path.stat().st_size < 2 * MIB
    _refused(lambda: gb.load(path, backend="cpu"), phrase, path)


# --------------------------------------------------------------------------- model configuration
def _config(change):
    return lambda meta, _: change(meta["config"])


def _layer(i, **values):
    return _config(lambda c: c["layers"][i].update(values))


CONFIG_CASES = {
    "no config": lambda meta, _: meta.pop("config"),
    "config a list": lambda meta, _: meta.update(config=[1, 2]),
    "no layers": _config(lambda c: c.pop("layers")),
    "layers a dict": _config(lambda c: c.update(layers={"units": 8})),
    "no layer": _config(lambda c: c.update(layers=[])),
    "layer a number": _config(lambda c: c["layers"].__setitem__(0, 8)),
    "units a string": _layer(0, units="8"),
    "units a float": _layer(0, units=8.0),
    "units zero": _layer(0, units=0),
    "units true": _layer(1, units=True),
    "activation a number": _layer(0, activation=5),
    "activation unknown": _layer(0, activation="swish"),
    "init a list": _layer(0, init=[1]),
    "unknown layer key": _layer(0, dropout=0.5),
    "no input_dim": _config(lambda c: c.pop("input_dim")),
    "input_dim a string": _config(lambda c: c.update(input_dim="3")),
    "input_dim negative": _config(lambda c: c.update(input_dim=-3)),
    "dtype object": _config(lambda c: c.update(dtype="object")),
    "dtype a list": _config(lambda c: c.update(dtype=["float32"])),
    "seed a string": _config(lambda c: c.update(seed="x")),
    "loss a number": _config(lambda c: c.update(loss=5)),
    "loss unknown": _config(lambda c: c.update(loss="hinge")),
    "optimizer a list": _config(lambda c: c.update(optimizer=[1])),
    "optimizer a string": _config(lambda c: c.update(optimizer="adam")),
    "optimizer unknown": _config(lambda c: c.update(optimizer={"name": "Nope"})),
    "optimizer name a list": _config(lambda c: c.update(optimizer={"name": []})),
    "optimizer bad lr": _config(lambda c: c["optimizer"].update(lr=[1])),
    "optimizer bad beta": _config(lambda c: c["optimizer"].update(beta1="x")),
}


@pytest.mark.parametrize("change", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_invalid_configuration_in_a_model_file(valid, tmp_path, change):
    path = _edit(valid.model, tmp_path / "m.npz", change)
    _refused(lambda: gb.load(path, backend="cpu"), "configuration", path)


@pytest.mark.parametrize("change", CONFIG_CASES.values(), ids=CONFIG_CASES.keys())
def test_invalid_configuration_in_a_checkpoint(valid, tmp_path, change):
    directory, newest, _ = _checkpoints(valid, tmp_path)
    _edit(newest, newest, change)
    _refused(lambda: load_checkpoint_model(newest, backend="cpu"), "configuration", newest)
    if change is CONFIG_CASES["seed a string"]:  # the one field a resume does not use: it resumes from it
        assert _resume(directory).epoch == [0, 1, 2]
    else:
        assert _resume_refuses_the_newest(directory, newest).epoch == [0, 1, 2]  # from epoch 1


def _dense(units, activation="relu"):
    return {"units": units, "activation": activation, "init": "he"}


HUGE = {
    "units 10**5 x 10**5": _config(lambda c: c.update(input_dim=10 ** 5, layers=[_dense(10 ** 5), _dense(10 ** 5)])),
    "input_dim 10**12": _config(lambda c: c.update(input_dim=10 ** 12)),
    "10**4 layers": _config(lambda c: c.update(layers=[_dense(4)] * 10 ** 4)),
}


@pytest.mark.parametrize("change", HUGE.values(), ids=HUGE.keys())
def test_huge_architecture_with_few_parameters_is_refused_before_building(valid, tmp_path, change):
    path = _edit(valid.model, tmp_path / "m.npz", change)
    _refused(lambda: gb.load(path, backend="cpu"), "parameters, its architecture has", path)
    directory, newest, older = _checkpoints(valid, tmp_path)
    _edit(newest, newest, change)
    _refused(lambda: load_checkpoint_model(newest, backend="cpu"), "parameters, its architecture has", newest)
    assert latest_checkpoint(directory) == older


def test_a_model_larger_than_the_memory_available_is_insufficient_memory(valid, monkeypatch):
    monkeypatch.setattr(type(gb.get_backend("cpu")), "available_memory", lambda self: 100)
    _refused(lambda: gb.load(valid.model, backend="cpu"), "MiB", valid.model, error=gb.InsufficientMemory)


# --------------------------------------------------------------------------- versions, counters, callbacks
@pytest.mark.parametrize("version", [True, -5, 0, 1.0, "2", None, [2]])
def test_invalid_format_version(valid, tmp_path, version):
    path = _edit(valid.model, tmp_path / "m.npz", lambda meta, _: meta.update(format_version=version))
    _refused(lambda: gb.load(path, backend="cpu"), "invalid format version", path)
    directory, newest, older = _checkpoints(valid, tmp_path)
    _edit(newest, newest, lambda meta, _: meta.update(format_version=version))
    _refused(lambda: load_checkpoint_model(newest, backend="cpu"), "invalid format version", newest)
    assert latest_checkpoint(directory) == older


def _optimizer_state(**values):
    return lambda meta, _: meta["state"]["optimizer"].update(values)


def _run(**values):
    return lambda meta, _: meta["run"].update(values)


COUNTERS = {
    "iterations negative": (_optimizer_state(iterations=-1), "invalid iterations"),
    "iterations a float": (_optimizer_state(iterations=4.0), "invalid iterations"),
    "iterations true": (_optimizer_state(iterations=True), "invalid iterations"),
    "iterations a string": (_optimizer_state(iterations="4"), "invalid iterations"),
    "iterations 2**53 + 1": (_optimizer_state(iterations=2 ** 53 + 1), "invalid iterations"),
    "iterations 2**70": (_optimizer_state(iterations=2 ** 70), "invalid iterations"),
    "epoch negative": (lambda meta, _: meta.update(epoch=-2), "invalid epoch"),
    "epoch 2**60": (lambda meta, _: meta.update(epoch=2 ** 60), "invalid epoch"),
    "stopped a string": (lambda meta, _: meta.update(stopped="no"), "stopped"),
    "shuffle state empty": (lambda meta, _: meta["state"]["model"].update(shuffle_rng={}), "shuffle"),
    "shuffle generator unknown": (lambda meta, _: meta["state"]["model"]["shuffle_rng"].update(
        bit_generator="os.system"), "shuffle"),
    "optimizer state a list": (_optimizer_state(state=[]), "optimizer state"),
    "callbacks a list": (lambda meta, _: meta["state"].update(callbacks=[]), "callbacks"),
    "metrics a number": (lambda meta, _: meta.update(metrics=5), "metrics"),
    # the run record (2 epochs of 2 steps from step 0) against the step count and the epoch
    "iterations 999999 after 2 epochs of 2 steps": (_optimizer_state(iterations=999999), "inconsistent iterations"),
    "iterations a step short": (_optimizer_state(iterations=3), "expected 4 (inconsistent iterations)"),
    "epoch moved ahead": (lambda meta, _: meta.update(epoch=5), "after 5 epochs of 2 steps from step 0: expected 10"),
    "first step moved": (_run(start_iterations=7), "inconsistent iterations"),
    "run record a list": (lambda meta, _: meta.update(run=[2]), "invalid run record"),
    "run record with an unknown key": (_run(epochs=3), "invalid run record"),
    "steps per epoch 0": (_run(steps_per_epoch=0), "invalid steps per epoch 0"),
    "steps per epoch a float": (_run(steps_per_epoch=2.0), "invalid steps per epoch"),
    "first step negative": (_run(start_iterations=-4), "invalid first step"),
    "features other than input_dim": (_run(features=7), "records 7 features for a model of input_dim 3"),
    "rows, batch size and steps disagree": (_run(rows=64, batch_size=16), "records batches of 16 rows and 2 steps"),
    "batch larger than the rows": (_run(rows=10, batch_size=32, steps_per_epoch=1), "records batches of 32"),
}


@pytest.mark.parametrize("change, phrase", COUNTERS.values(), ids=COUNTERS.keys())
def test_invalid_checkpoint_state(valid, tmp_path, change, phrase):
    directory, newest, older = _checkpoints(valid, tmp_path)
    _edit(newest, newest, change)
    _refused(lambda: load_checkpoint_model(newest, backend="cpu"), phrase, newest)
    assert latest_checkpoint(directory) == older
    assert _resume_refuses_the_newest(directory, newest).epoch == [0, 1, 2]  # resumed after epoch 1


def _callback(key, value):
    return lambda meta, _: meta["state"]["callbacks"].update({key: value})


CALLBACKS = {
    "history a list": _callback("History_0", [1, 2]),
    "history's history a list": _callback("History_0", {"history": [1, 2], "epoch": [0, 1]}),
    "history's metric a number": _callback("History_0", {"history": {"loss": 5}, "epoch": [0, 1]}),
    "history's epoch a string": _callback("History_0", {"history": {}, "epoch": "ab"}),
    "history without epoch": _callback("History_0", {"history": {}}),
    "early stopping a number": _callback("EarlyStopping_1", 5),
    "early stopping without best_epoch": _callback("EarlyStopping_1", {"best": 0.5, "wait": 0}),
    "early stopping best_epoch a string": _callback("EarlyStopping_1", {"best": 0.5, "best_epoch": "1", "wait": 0}),
    "early stopping wait a list": _callback("EarlyStopping_1", {"best": 0.5, "best_epoch": 1, "wait": []}),
    "early stopping best a string": _callback("EarlyStopping_1", {"best": "low", "best_epoch": 1, "wait": 0}),
}


@pytest.mark.parametrize("change", CALLBACKS.values(), ids=CALLBACKS.keys())
def test_callback_state_that_does_not_fit_is_a_model_file_error(valid, tmp_path, change):
    directory, newest, _ = _checkpoints(valid, tmp_path)
    _edit(newest, newest, change)
    _refused(lambda: _resume(directory), "callback state", directory, seconds=5.0)


# --------------------------------------------------------------------------- the metadata digest
def test_written_files_carry_a_metadata_digest(valid):
    digest = _meta(valid.model).get("meta_sha256")
    assert isinstance(digest, str) and len(digest) == 64


@pytest.mark.parametrize("change", [
    lambda meta, _: meta["config"]["optimizer"]["lr"].update(lr=0.5),
    lambda meta, _: meta["config"]["layers"][0].update(activation="relu"),
    lambda meta, _: meta.update(gpubp_version="9.9"),
    lambda meta, _: meta.update(comment="edited"),
], ids=["learning rate", "activation", "version", "added key"])
def test_edited_metadata_is_refused_by_its_digest(valid, tmp_path, change):
    path = _edit(valid.model, tmp_path / "m.npz", change, keep_digest=True)
    _refused(lambda: gb.load(path, backend="cpu"), "metadata does not match its checksum", path)
    directory, newest, older = _checkpoints(valid, tmp_path)
    _edit(newest, newest, change, keep_digest=True)
    _refused(lambda: load_checkpoint_model(newest, backend="cpu"), "metadata does not match its checksum", newest)
    assert latest_checkpoint(directory) == older


def test_files_without_a_metadata_digest_still_load(valid, tmp_path):
    path = _edit(valid.model, tmp_path / "m.npz", lambda meta, _: None)
    assert "meta_sha256" not in _meta(path)
    np.testing.assert_array_equal(gb.load(path, backend="cpu").params, valid.loaded.params)
    model = gb.load(FIXTURE, backend="cpu")
    assert model.count_params() == 3 * 4 + 4 + 4 * 2 + 2


# --------------------------------------------------------------------------- what stays readable
def test_plain_npz_archives_read_like_numpy(tmp_path):
    """The bounded reader reads what numpy writes: deflated, Fortran order, empty, any numeric dtype."""
    arrays = {"X": np.asfortranarray(np.arange(12.0).reshape(3, 4)), "empty": np.zeros((0, 5), np.int16),
              "c": np.array([1 + 2j], np.complex64), "big": np.arange(3 * MIB, dtype=np.int32)}
    np.savez_compressed(tmp_path / "in.npz", **arrays)
    with open_npz(tmp_path / "in.npz", "input file") as archive:
        assert archive.files == list(arrays)
        for key, expected in arrays.items():
            np.testing.assert_array_equal(archive[key], expected)
            assert archive[key].dtype == expected.dtype


# --------------------------------------------------------------------------- random corruption
@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("corrupted")


def _corrupted(data, draw):
    """``data`` truncated, or with one byte changed, as ``draw`` chooses."""
    position = draw(st.integers(0, len(data) - 1))
    if draw(st.booleans()):
        return data[:position]
    return data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1:]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_a_flipped_byte_or_truncation_of_a_model_file_is_refused_or_harmless(valid, scratch, data):
    path = scratch / "m.npz"
    path.write_bytes(_corrupted(valid.model.read_bytes(), data.draw))
    try:
        model = _within(1.0, lambda: gb.load(path, backend="cpu"))
    except ModelFileError as exc:
        assert "\n" not in str(exc) and os.fspath(path) in str(exc)
        return
    np.testing.assert_array_equal(model.params, valid.loaded.params)
    assert model.get_config() == valid.loaded.get_config()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.data())
def test_a_flipped_byte_or_truncation_of_a_checkpoint_is_refused_or_harmless(valid, scratch, data):
    original = valid.ckpts / "ckpt-epoch000002.npz"
    path = scratch / "ckpt.npz"
    path.write_bytes(_corrupted(original.read_bytes(), data.draw))
    try:
        meta, state = _within(1.0, lambda: read_checkpoint(path))
    except ModelFileError as exc:
        assert "\n" not in str(exc) and os.fspath(path) in str(exc)
        return
    expected_meta, expected_state = read_checkpoint(original)
    assert meta == expected_meta
    np.testing.assert_array_equal(state["model"]["params"], expected_state["model"]["params"])
    for name in ("m", "v"):
        np.testing.assert_array_equal(state["optimizer"]["state"][name], expected_state["optimizer"]["state"][name])
