"""``gpubp.kernels.cuda_device``, the GPU runtime, without a GPU.

Two kinds of checks:

* the entry points it names exist in the real packages: every ``cupy.``
  attribute chain in its source (found by parsing it, so a new call is
  checked too), the CuPy methods it calls on streams, events, memory
  pointers and graphs (with the arguments it passes), numba-cuda's
  ``external_stream`` / ``from_cuda_array_interface`` (the real ones, in a
  process with the simulator off), every ``cublas*`` symbol in the real
  libcublas, and its cuBLAS / CUDA enum values against CuPy's;
* its behaviour, on a fresh copy of the module with test doubles for CuPy,
  numba.cuda and cuBLAS: the double's ``cublasGemmEx`` computes the
  column-major GEMM from the raw pointers it gets, so the row-major GEMM by
  swapped operands is checked against NumPy for every transpose, dtype and
  scale; the cuBLAS handle, numba views, scratch buffers, pinned staging ring,
  chunk staging (its side copy stream and the order of its event records,
  stream waits and copies), ``use_device``, ``stream_handle``, graph capture,
  memory and version reports and the probe are checked too.
"""

import ast
import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gpubp.kernels
from gpubp.kernels.step_monitor import CaptureViolation
from helpers import requires_simulator

pytestmark = pytest.mark.gpu_sim

MODULE_PATH = Path(gpubp.kernels.__path__[0]) / "cuda_device.py"
MODULE_NAME = "gpubp.kernels._cuda_device_under_test"
TREE = ast.parse(MODULE_PATH.read_text())

# cuBLAS / CUDA values the doubles use (cublas_api.h, library_types.h)
OP_N, OP_T = 0, 1
POINTER_MODE_HOST, POINTER_MODE_DEVICE = 0, 1
STATUS_SUCCESS, STATUS_INVALID_VALUE = 0, 7
CUDA_R_32F, CUDA_R_64F = 0, 1
STREAM_CAPTURE_MODE_RELAXED = 2


# --------------------------------------------------------------------------- the module's source
def _dotted(node):
    """``a.b.c`` of an attribute chain rooted at a plain name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id] + parts[::-1])


def _chains(root):
    """Every attribute chain on the module-level name ``root`` in the module, with ``getattr(chain, "name", ...)``
    counted as ``chain.name``."""
    found = set()
    for node in ast.walk(TREE):
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.split(".")[0] == root and "." in dotted:
                found.add(dotted)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            dotted = _dotted(node.args[0])
            if dotted and dotted.split(".")[0] == root:
                found.add(f"{dotted}.{node.args[1].value}")
    return found


def _calls_on(root):
    """``(chain, positional count, keyword names)`` of every call of an attribute chain rooted at ``root``."""
    calls = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            dotted = _dotted(node.func)
            if dotted and dotted.split(".")[0] == root:
                calls.append((dotted, len(node.args), tuple(k.arg for k in node.keywords)))
    return calls


def _method_calls(names):
    """``(method, positional count, keyword names)`` of every call ``<expression>.method(...)`` for ``names``."""
    calls = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names:
            calls.append((node.func.attr, len(node.args), tuple(k.arg for k in node.keywords)))
    return calls


def _resolve(root_object, dotted):
    obj = root_object
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part)
    return obj


def _signature(func):
    """The signature of ``func``; for Cython builtins, the one CuPy embeds as the docstring's first line."""
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        first = (func.__doc__ or "").strip().splitlines()[0]
        match = re.match(r"^[\w.]+\((.*)\)\s*(->.*)?$", first)
        assert match, f"no signature for {func!r}: {first!r}"
        params = []
        for piece in filter(None, (p.strip() for p in match.group(1).split(","))):
            name, _, default = piece.partition("=")
            name = name.split()[-1]  # "size_t size" -> "size"
            params.append(f"{name}={default}" if default else name)
        namespace = {}
        exec(f"def f({', '.join(params)}): pass", namespace)  # noqa: S102 - a signature from CuPy's docs
        return inspect.signature(namespace["f"])


# --------------------------------------------------------------------------- test doubles
def make_fake_cupy():
    """A CuPy stand-in: NumPy arrays whose ``.data.ptr`` is their host address, streams, events and graphs
    that record what is done with them. ``fake.log`` lists the operations in order."""
    fake = SimpleNamespace(log=[], streams=[], events=[], graphs=[], pinned=[], allocations=[], device=0)

    class MemoryPointer:
        def __init__(self, array):
            self._array = array
            self.ptr = array.__array_interface__["data"][0]

        def copy_from_host_async(self, mem, size, stream=None):
            assert size <= self._array.nbytes
            ctypes.memmove(self.ptr, mem, size)
            fake.log.append(("copy", self.ptr, mem, size, stream))

    class ndarray(np.ndarray):  # noqa: N801 - CuPy's name
        @property
        def data(self):
            return MemoryPointer(self)

        @property
        def __cuda_array_interface__(self):
            return {"shape": self.shape, "typestr": self.dtype.str, "version": 3, "stream": 1,
                    "data": (self.__array_interface__["data"][0], False),
                    "strides": None if self.flags.c_contiguous else self.strides}

    def _device(host):
        fake.allocations.append(host.shape)
        return host.view(ndarray)

    class Stream:
        def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
            self.non_blocking = non_blocking
            self.ptr = 0x5000 + 0x10 * len(fake.streams)
            self.synchronized = 0
            self.capturing = False
            self.capture_modes = []
            fake.streams.append(self)

        def synchronize(self):
            self.synchronized += 1

        def wait_event(self, event):
            fake.log.append(("wait", self, event.id))

        def begin_capture(self, mode=None):
            assert not self.capturing
            self.capturing = True
            self.capture_modes.append(mode)

        def end_capture(self):
            assert self.capturing
            self.capturing = False
            graph = Graph()
            fake.graphs.append(graph)
            return graph

    class Graph:
        def __init__(self):
            self.launches = []

        def launch(self, stream=None):
            self.launches.append(stream)

    class Event:
        def __init__(self, block=False, disable_timing=False, interprocess=False):
            self.disable_timing = disable_timing
            self.recorded_on = []
            self.id = len(fake.events)
            fake.events.append(self)

        def record(self, stream=None):
            self.recorded_on.append(stream)
            fake.log.append(("record", self.id, stream))

        def synchronize(self):
            fake.log.append(("sync", self.id))

    def alloc_pinned_memory(size):
        memory = bytearray(size)
        fake.pinned.append(memory)
        return memory

    class Device:
        """The current device (``fake.device``) by default; ``use()`` and ``with`` make it current."""

        def __init__(self, device=None):
            self.id = fake.device if device is None else device
            self._previous = []

        def use(self):
            fake.log.append(("use", self.id))
            fake.device = self.id

        def __enter__(self):
            fake.log.append(("enter", self.id))
            self._previous.append(fake.device)
            fake.device = self.id
            return self

        def __exit__(self, *args):
            fake.device = self._previous.pop()
            fake.log.append(("exit", self.id))

    class MemoryPool:
        total = 5 << 20
        used = 3 << 20

        def total_bytes(self):
            return self.total

        def used_bytes(self):
            return self.used

    pool = MemoryPool()
    fake.ndarray = ndarray
    fake.empty = lambda shape, dtype=float, order="C": _device(np.empty(shape, dtype))
    fake.array = lambda obj, dtype=None, copy=True: _device(np.array(obj, dtype=dtype, copy=True))
    fake.asarray = lambda a, dtype=None: _device(np.array(a, dtype=dtype, copy=True))
    fake.asnumpy = lambda a, stream=None: np.array(a, copy=True)
    fake.get_default_memory_pool = lambda: pool
    fake.pool = pool
    fake.cuda = SimpleNamespace(
        Stream=Stream, Event=Event, MemoryPointer=MemoryPointer, MemoryPool=MemoryPool,
        graph=SimpleNamespace(Graph=Graph), alloc_pinned_memory=alloc_pinned_memory,
        Device=Device,
        runtime=SimpleNamespace(memGetInfo=lambda: (7 << 20, 80 << 30), driverGetVersion=lambda: 12090,
                                runtimeGetVersion=lambda: 12080, getDeviceCount=lambda: 1,
                                streamCaptureModeRelaxed=STREAM_CAPTURE_MODE_RELAXED,
                                CUDA_R_32F=CUDA_R_32F, CUDA_R_64F=CUDA_R_64F),
        nvrtc=SimpleNamespace(getVersion=lambda: (12, 9)),
    )
    return fake


class FakeNumbaCuda:
    """``numba.cuda``'s two entry points the runtime uses, recording their calls."""

    def __init__(self):
        self.external_streams = []
        self.views = []

    def external_stream(self, ptr):
        stream = SimpleNamespace(ptr=ptr)
        self.external_streams.append(stream)
        return stream

    def from_cuda_array_interface(self, desc, owner=None, sync=True):
        view = SimpleNamespace(desc=desc, owner=owner, sync=sync)
        self.views.append(view)
        return view


_CTYPES = {CUDA_R_32F: ctypes.c_float, CUDA_R_64F: ctypes.c_double}
_CARG = type(ctypes.byref(ctypes.c_int()))


def _pointer(arg):
    """A pointer argument as ctypes passes it: only a ``c_void_p`` keeps all 64 bits (a bare int is a C int)."""
    assert isinstance(arg, ctypes.c_void_p), f"pointer passed as {type(arg).__name__}, not c_void_p"
    return arg.value


def _int(arg):
    """An int argument as ctypes converts it without argtypes: a Python int that fits a C int."""
    assert type(arg) is int, f"int argument passed as {type(arg).__name__}"
    assert -2 ** 31 <= arg < 2 ** 31
    return arg


def _column_major(ptr, rows, cols, ld, ctype):
    """The column-major ``rows x cols`` matrix with leading dimension ``ld`` at ``ptr``, as a writable view."""
    if rows == 0 or cols == 0:
        return np.zeros((rows, cols), np.dtype(ctype))
    flat = np.ctypeslib.as_array((ctype * ((cols - 1) * ld + rows)).from_address(ptr))
    return np.lib.stride_tricks.as_strided(flat, (rows, cols), (flat.itemsize, ld * flat.itemsize))


class FakeCublas:
    """libcublas's C API as the runtime calls it (methods named like the C symbols, ctypes argument rules
    checked). ``cublasGemmEx`` computes ``C = alpha op(A) op(B) + beta C`` on column-major matrices at the
    raw addresses it is given, reading alpha and beta at their addresses (pointer mode DEVICE)."""

    HANDLE = 0xCB1A5

    def __init__(self):
        self.created = 0
        self.destroyed = 0
        self.stream = None
        self.pointer_mode = POINTER_MODE_HOST
        self.workspace = None
        self.gemms = []
        self.properties = (12, 9, 1)
        self.property_kinds = []
        self.status = {}  # symbol -> the status it returns

    def _handle(self, handle):
        assert isinstance(handle, ctypes.c_void_p) and handle.value == self.HANDLE, "not the created handle"

    def cublasCreate_v2(self, handle_ref):
        assert isinstance(handle_ref, _CARG) and isinstance(handle_ref._obj, ctypes.c_void_p)
        self.created += 1
        handle_ref._obj.value = self.HANDLE
        return self.status.get("cublasCreate_v2", STATUS_SUCCESS)

    def cublasDestroy_v2(self, handle):
        self._handle(handle)
        self.destroyed += 1
        return STATUS_SUCCESS

    def cublasSetStream_v2(self, handle, stream):
        self._handle(handle)
        self.stream = _pointer(stream)
        return self.status.get("cublasSetStream_v2", STATUS_SUCCESS)

    def cublasSetPointerMode_v2(self, handle, mode):
        self._handle(handle)
        self.pointer_mode = _int(mode)
        return self.status.get("cublasSetPointerMode_v2", STATUS_SUCCESS)

    def cublasSetWorkspace_v2(self, handle, workspace, size):
        self._handle(handle)
        assert isinstance(size, ctypes.c_size_t), "size_t passed as a C int"
        self.workspace = (_pointer(workspace), size.value)
        return self.status.get("cublasSetWorkspace_v2", STATUS_SUCCESS)

    def cublasGemmEx(self, handle, transa, transb, m, n, k, alpha, A, a_type, lda, B, b_type, ldb, beta, C,
                     c_type, ldc, compute_type, algo):
        self._handle(handle)
        transa, transb, m, n, k = map(_int, (transa, transb, m, n, k))
        a_type, lda, b_type, ldb, c_type, ldc = map(_int, (a_type, lda, b_type, ldb, c_type, ldc))
        call = {"transa": transa, "transb": transb, "m": m, "n": n, "k": k, "types": (a_type, b_type, c_type),
                "compute": _int(compute_type), "algo": _int(algo), "pointer_mode": self.pointer_mode,
                "stream": self.stream, "workspace": self.workspace}
        self.gemms.append(call)
        if "cublasGemmEx" in self.status:
            return self.status["cublasGemmEx"]
        if not (a_type == b_type == c_type) or c_type not in _CTYPES or {transa, transb} - {OP_N, OP_T}:
            return STATUS_INVALID_VALUE
        ctype = _CTYPES[c_type]
        assert self.pointer_mode == POINTER_MODE_DEVICE, "alpha and beta are device pointers"
        alpha, beta = ctype.from_address(_pointer(alpha)).value, ctype.from_address(_pointer(beta)).value
        call["alpha"], call["beta"] = alpha, beta
        rows_a, cols_a = (m, k) if transa == OP_N else (k, m)
        rows_b, cols_b = (k, n) if transb == OP_N else (n, k)
        if lda < max(1, rows_a) or ldb < max(1, rows_b) or ldc < max(1, m):
            return STATUS_INVALID_VALUE
        a = _column_major(_pointer(A), rows_a, cols_a, lda, ctype)
        b = _column_major(_pointer(B), rows_b, cols_b, ldb, ctype)
        c = _column_major(_pointer(C), m, n, ldc, ctype)
        product = alpha * ((a if transa == OP_N else a.T) @ (b if transb == OP_N else b.T))
        c[...] = product if beta == 0 else product + beta * c  # beta == 0: C is not read (cuBLAS)
        return STATUS_SUCCESS

    def cublasGetProperty(self, kind, value_ref):
        assert isinstance(value_ref, _CARG) and isinstance(value_ref._obj, ctypes.c_int)
        self.property_kinds.append(_int(kind))
        value_ref._obj.value = self.properties[kind]
        return self.status.get("cublasGetProperty", STATUS_SUCCESS)


def _load_module(monkeypatch, cupy_module):
    """A fresh copy of cuda_device.py, imported with ``cupy_module`` as ``cupy`` (only while it is imported)."""
    spec = importlib.util.spec_from_file_location(MODULE_NAME, MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "cupy", cupy_module)
        spec.loader.exec_module(module)
    return module


@pytest.fixture
def dev(monkeypatch):
    """The runtime on the doubles: ``dev.mod`` the module, ``dev.cupy``, ``dev.numba``, ``dev.lib`` (cuBLAS)
    and ``dev.load_cublas``, the module's own loader."""
    fake = make_fake_cupy()
    mod = _load_module(monkeypatch, fake)
    numba, lib, loads = FakeNumbaCuda(), FakeCublas(), []
    original = mod._load_cublas

    def load():
        loads.append(1)
        return lib

    monkeypatch.setattr(mod, "cuda", numba)
    monkeypatch.setattr(mod, "_load_cublas", load)
    return SimpleNamespace(mod=mod, cupy=fake, numba=numba, lib=lib, loads=loads, load_cublas=original)


def _step_stream(dev):
    (stream,) = dev.cupy.streams
    return stream


def _real_cublas_path():
    from cuda import pathfinder

    return pathfinder.load_nvidia_dynamic_lib("cublas").abs_path


# =========================================================================== (1) the real packages
def test_every_cupy_chain_the_module_names_exists_in_cupy():
    import cupy

    chains = _chains("cupy")
    assert {"cupy.cuda.Stream", "cupy.cuda.runtime.memGetInfo", "cupy.cuda.runtime.streamCaptureModeRelaxed",
            "cupy.cuda.nvrtc.getVersion", "cupy.get_default_memory_pool"} <= chains
    missing = []
    for chain in sorted(chains):
        try:
            _resolve(cupy, chain)
        except AttributeError:
            missing.append(chain)
    assert not missing, f"not in CuPy {cupy.__version__}: {missing}"


def test_the_module_calls_cupy_functions_with_arguments_they_accept():
    import cupy

    calls = _calls_on("cupy")
    assert ("cupy.cuda.Stream", 0, ("non_blocking",)) in calls
    for chain, n_args, keywords in calls:
        signature = _signature(_resolve(cupy, chain))
        signature.bind(*[None] * n_args, **dict.fromkeys(keywords))  # raises TypeError when not accepted


#: methods the module calls on CuPy objects, and where the real ones live
CUPY_METHODS = {
    "begin_capture": ["cupy.cuda.Stream.begin_capture"],
    "end_capture": ["cupy.cuda.Stream.end_capture"],
    "synchronize": ["cupy.cuda.Stream.synchronize", "cupy.cuda.Event.synchronize"],
    "record": ["cupy.cuda.Event.record"],
    "wait_event": ["cupy.cuda.Stream.wait_event"],
    "use": ["cupy.cuda.Device.use"],
    "copy_from_host_async": ["cupy.cuda.MemoryPointer.copy_from_host_async"],
    "launch": ["cupy.cuda.graph.Graph.launch"],
    "total_bytes": ["cupy.cuda.MemoryPool.total_bytes"],
    "used_bytes": ["cupy.cuda.MemoryPool.used_bytes"],
}


def test_cupy_methods_the_module_calls_exist_and_accept_its_arguments():
    import cupy
    import cupy.cuda.graph  # noqa: F401 - Graph's module

    calls = _method_calls(CUPY_METHODS)
    assert {name for name, _, _ in calls} == set(CUPY_METHODS), "a CuPy method call was added or removed"
    for name, n_args, keywords in calls:
        for target in CUPY_METHODS[name]:
            method = _resolve(cupy, target)
            assert callable(method), target
            _signature(method).bind(None, *[None] * n_args, **dict.fromkeys(keywords))  # None: self


def test_cupy_attributes_the_module_reads_exist():
    import cupy

    # instance attributes: the stream's handle, an array's memory pointer and item size, the device id
    assert isinstance(cupy.cuda.Stream.null.ptr, int)
    for attribute in ("data", "itemsize", "__cuda_array_interface__", "shape", "strides", "dtype"):
        assert hasattr(cupy.ndarray, attribute), attribute
    assert hasattr(cupy.cuda.MemoryPointer, "ptr")
    assert hasattr(cupy.cuda.Device, "id")
    # ChunkStage.upload runs under ``with cupy.cuda.Device(id):``
    assert callable(cupy.cuda.Device.__enter__) and callable(cupy.cuda.Device.__exit__)
    assert cupy.cuda.runtime.streamCaptureModeRelaxed == STREAM_CAPTURE_MODE_RELAXED
    # Staged views the pinned memory with np.frombuffer: the pointer type exports the buffer protocol
    pinned = cupy.cuda.PinnedMemoryPointer.__new__(cupy.cuda.PinnedMemoryPointer)
    assert ctypes.pythonapi.PyObject_CheckBuffer(ctypes.py_object(pinned)) == 1


_NUMBA_CHECK = textwrap.dedent("""
    import inspect, json, sys
    from numba import cuda
    from numba.core import config
    out = {"simulator": bool(config.ENABLE_CUDASIM), "missing": [], "rejected": [], "params": {}, "modules": {}}
    for chain, n_args, keywords in json.loads(sys.argv[1]):
        obj = cuda
        try:
            for part in chain.split(".")[1:]:
                obj = getattr(obj, part)
        except AttributeError:
            out["missing"].append(chain)
            continue
        signature = inspect.signature(obj)
        out["params"][chain] = list(signature.parameters)
        out["modules"][chain] = inspect.unwrap(obj).__module__
        if n_args is None:  # read, not called
            continue
        try:
            signature.bind(*[None] * n_args, **dict.fromkeys(keywords))
        except TypeError as exc:
            out["rejected"].append(f"{chain}: {exc}")
    print(json.dumps(out))
""")


def test_numba_cuda_entry_points_exist_in_the_real_numba_cuda():
    """``numba.cuda`` as a GPU machine imports it (the simulator off), in a child process: nothing is
    initialised (no driver is needed to import and inspect it)."""
    calls = _calls_on("cuda")
    assert {"cuda.external_stream", "cuda.from_cuda_array_interface"} <= {chain for chain, _, _ in calls}
    calls += [(chain, None, None) for chain in sorted(_chains("cuda") - {chain for chain, _, _ in calls})]
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="0")
    result = subprocess.run([sys.executable, "-c", _NUMBA_CHECK, json.dumps(calls)], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["simulator"] is False
    assert not found["missing"], found["missing"]
    assert not found["rejected"], found["rejected"]
    # the real implementations, not the simulator's stand-ins
    assert found["modules"]["cuda.from_cuda_array_interface"] == "numba.cuda.api"
    assert found["modules"]["cuda.external_stream"] == "numba.cuda.api"
    assert found["params"]["cuda.from_cuda_array_interface"][:3] == ["desc", "owner", "sync"]
    # the doubles have the real signatures
    for chain, params in found["params"].items():
        assert list(inspect.signature(getattr(FakeNumbaCuda(), chain.split(".")[-1])).parameters) == params


def test_every_cublas_symbol_the_module_calls_is_in_libcublas():
    symbols = {node.attr for node in ast.walk(TREE) if isinstance(node, ast.Attribute)
               and node.attr.startswith("cublas")}
    assert {"cublasCreate_v2", "cublasSetStream_v2", "cublasSetPointerMode_v2", "cublasSetWorkspace_v2",
            "cublasGemmEx", "cublasGetProperty"} <= symbols
    lib = ctypes.CDLL(_real_cublas_path())
    assert [s for s in sorted(symbols) if not hasattr(lib, s)] == []
    assert [s for s in sorted(symbols) if not hasattr(FakeCublas, s)] == []  # the double keeps up


def test_cublas_and_cuda_enums_match_cupys(monkeypatch):
    import cupy

    _real_cublas_path()  # cupy_backends' cuBLAS module imports only once libcublas is loaded
    from cupy_backends.cuda.libs import cublas

    mod = _load_module(monkeypatch, cupy)  # with the real CuPy: the module imports against it
    assert (mod._OP_N, mod._OP_T) == (cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T)
    assert mod._POINTER_MODE_DEVICE == cublas.CUBLAS_POINTER_MODE_DEVICE
    assert mod._GEMM_DEFAULT == cublas.CUBLAS_GEMM_DEFAULT
    assert mod._COMPUTE_64F == cublas.CUBLAS_COMPUTE_64F
    assert mod._COMPUTE_32F == {"highest": cublas.CUBLAS_COMPUTE_32F, "high": cublas.CUBLAS_COMPUTE_32F_FAST_TF32,
                                "medium": cublas.CUBLAS_COMPUTE_32F_FAST_16BF}
    assert mod._DATA_TYPE == {np.dtype(np.float32): cupy.cuda.runtime.CUDA_R_32F,
                              np.dtype(np.float64): cupy.cuda.runtime.CUDA_R_64F}
    # and the doubles use the same values
    assert (OP_N, OP_T, POINTER_MODE_DEVICE) == (cublas.CUBLAS_OP_N, cublas.CUBLAS_OP_T,
                                                 cublas.CUBLAS_POINTER_MODE_DEVICE)
    assert (CUDA_R_32F, CUDA_R_64F) == (cupy.cuda.runtime.CUDA_R_32F, cupy.cuda.runtime.CUDA_R_64F)


def test_load_cublas_finds_the_real_library_and_versions_reads_it(dev, monkeypatch):
    lib = dev.load_cublas()
    assert lib._name == _real_cublas_path()
    monkeypatch.setattr(dev.mod, "_load_cublas", dev.load_cublas)
    found = dev.mod.versions()["cublas"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", found), found
    wheel = importlib.metadata.version("nvidia-cublas-cu12")
    assert found.split(".")[:2] == wheel.split(".")[:2]


def test_the_cupy_double_has_what_the_module_names_with_the_real_signatures():
    import cupy
    import cupy.cuda.graph  # noqa: F401 - Graph's module

    fake = make_fake_cupy()
    assert [c for c in sorted(_chains("cupy")) if not _has_chain(fake, c)] == []
    for target in sorted(t for targets in CUPY_METHODS.values() for t in targets):
        real, double = _signature(_resolve(cupy, target)), inspect.signature(_resolve(fake, target))
        assert list(double.parameters) == list(real.parameters), target
    for target in ("cupy.cuda.Stream", "cupy.cuda.Event", "cupy.cuda.Device"):
        real, double = _signature(_resolve(cupy, target)), inspect.signature(_resolve(fake, target))
        assert list(double.parameters) == list(real.parameters), target


def _has_chain(root, dotted):
    try:
        _resolve(root, dotted)
    except AttributeError:
        return False
    return True


# =========================================================================== (2) behaviour on the doubles
def _operands(rng, dtype, transpose_a, transpose_b, M=3, N=5, K=4):
    a = rng.normal(size=(K, M) if transpose_a else (M, K)).astype(dtype)
    b = rng.normal(size=(N, K) if transpose_b else (K, N)).astype(dtype)
    out = rng.normal(size=(M, N)).astype(dtype)
    return a, b, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("transpose_a", [False, True])
@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_gemm_is_the_row_major_product(dev, dtype, transpose_a, transpose_b, scaled):
    rng = np.random.default_rng(7)
    a, b, out0 = _operands(rng, dtype, transpose_a, transpose_b)
    A, B, out = (dev.cupy.asarray(x) for x in (a, b, out0))
    alpha, beta = -0.25, 0.75
    scale = dev.cupy.array([alpha, beta], dtype) if scaled else None
    dev.mod.gemm(A, B, out, transpose_a, transpose_b, scale)
    product = (a.T if transpose_a else a) @ (b.T if transpose_b else b)
    expected = alpha * product + beta * out0 if scaled else product
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(np.asarray(out), expected, rtol=rtol, atol=rtol)
    np.testing.assert_array_equal(np.asarray(A), a)  # operands untouched
    np.testing.assert_array_equal(np.asarray(B), b)
    (call,) = dev.lib.gemms
    assert (call["alpha"], call["beta"]) == ((alpha, beta) if scaled else (1.0, 0.0))
    assert call["types"] == ((CUDA_R_32F,) if dtype == np.float32 else (CUDA_R_64F,)) * 3
    assert call["algo"] == -1


def test_gemm_refuses_a_scale_of_another_dtype(dev):
    """alpha and beta are read from device memory in the output's dtype: float64 coefficients for a float32
    GEMM would be read as garbage, so they are refused before cuBLAS is called."""
    a, b, out = (dev.cupy.asarray(x) for x in _operands(np.random.default_rng(1), np.float32, False, False))
    with pytest.raises(TypeError, match="float32"):
        dev.mod.gemm(a, b, out, False, False, dev.cupy.array([1.0, 0.0], np.float64))
    assert dev.lib.gemms == []


@pytest.mark.parametrize("precision, compute", [("highest", 68), ("high", 77), ("medium", 75)])
def test_gemm_compute_type_follows_the_matmul_precision(dev, precision, compute):
    rng = np.random.default_rng(0)
    assert dev.mod.matmul_precision() == "highest"
    dev.mod.set_matmul_precision(precision)
    assert dev.mod.matmul_precision() == precision
    for dtype in (np.float32, np.float64):
        a, b, out = (dev.cupy.asarray(x) for x in _operands(rng, dtype, False, False))
        dev.mod.gemm(a, b, out, False, False, None)
    assert [call["compute"] for call in dev.lib.gemms] == [compute, 70]


def test_cublas_handle_is_made_once_bound_to_the_step_stream(dev):
    rng = np.random.default_rng(1)
    for _ in range(3):
        a, b, out = (dev.cupy.asarray(x) for x in _operands(rng, np.float32, False, True))
        dev.mod.gemm(a, b, out, False, True, None)
    assert dev.loads == [1] and dev.lib.created == 1
    stream = _step_stream(dev)
    assert stream.non_blocking is False
    handle = dev.mod._state["cublas"]
    assert handle.workspace.nbytes == dev.mod.CUBLAS_WORKSPACE_BYTES == 32 << 20
    workspace = (handle.workspace.data.ptr, 32 << 20)
    # every GEMM ran with the handle on the step stream, in device pointer mode, with the workspace set
    assert [(c["stream"], c["pointer_mode"], c["workspace"]) for c in dev.lib.gemms] == \
        [(stream.ptr, POINTER_MODE_DEVICE, workspace)] * 3
    # the workspace is the runtime's one fixed allocation, counted once
    assert dev.mod.monitor.allocations == 1
    assert dev.mod.monitor.allocated_bytes == dev.mod.FIXED_BYTES == 32 << 20


@pytest.mark.parametrize("symbol, what", [("cublasCreate_v2", "create"), ("cublasSetStream_v2", "setStream"),
                                          ("cublasSetPointerMode_v2", "setPointerMode"),
                                          ("cublasSetWorkspace_v2", "setWorkspace"), ("cublasGemmEx", "gemm")])
def test_a_failing_cublas_call_raises_with_its_status(dev, symbol, what):
    rng = np.random.default_rng(2)
    a, b, out = (dev.cupy.asarray(x) for x in _operands(rng, np.float32, False, False))
    dev.lib.status[symbol] = 13
    with pytest.raises(RuntimeError, match=f"^cuBLAS {what} failed with status 13$"):
        dev.mod.gemm(a, b, out, False, False, None)
    if symbol != "cublasGemmEx":  # a handle that failed to set up is not kept: the next GEMM tries again
        assert "cublas" not in dev.mod._state
        assert dev.lib.destroyed == (0 if symbol == "cublasCreate_v2" else 1)  # and not leaked
        del dev.lib.status[symbol]
        dev.mod.gemm(a, b, out, False, False, None)
        np.testing.assert_allclose(np.asarray(out), np.asarray(a) @ np.asarray(b), rtol=1e-5)


def test_stream_is_one_blocking_stream_seen_by_numba_once(dev):
    first, second = dev.mod.stream(), dev.mod.stream()
    assert first is second
    stream = _step_stream(dev)
    assert stream.non_blocking is False
    assert [s.ptr for s in dev.numba.external_streams] == [stream.ptr]


def test_synchronize_syncs_the_step_stream(dev):
    dev.mod.synchronize()
    dev.mod.synchronize()
    assert _step_stream(dev).synchronized == 2


def test_kernel_args_makes_one_numba_view_per_buffer_and_keeps_scalars(dev):
    a = dev.cupy.asarray(np.arange(6.0).reshape(2, 3))
    b = dev.cupy.empty((4,), np.float32)
    scalar, integer = 0.5, np.int64(3)
    args = dev.mod.kernel_args((a, scalar, a, integer, b, None))
    assert args[1] is scalar and args[3] is integer and args[5] is None
    view_a, view_b = args[0], args[4]
    assert args[2] is view_a
    assert [v.owner for v in dev.numba.views] == [None, None]  # the cache keeps no array alive
    assert all(v.sync is False for v in dev.numba.views)
    assert view_a.desc["data"][0] == a.data.ptr and view_a.desc["shape"] == (2, 3)
    again = dev.mod.kernel_args((b, a))
    assert again[0] is view_b and again[1] is view_a and len(dev.numba.views) == 2  # made once per buffer
    # the same memory seen with another shape is another view
    flat = a.reshape(6)
    (view_flat,) = dev.mod.kernel_args((flat,))
    assert view_flat is not view_a and view_flat.desc["shape"] == (6,)


def test_the_view_cache_is_bounded(dev, monkeypatch):
    monkeypatch.setattr(dev.mod, "_views", {("dummy", i): object() for i in range(4096)})
    a, b = dev.cupy.empty((2,), np.float64), dev.cupy.empty((3,), np.float64)
    dev.mod.kernel_args((a,))
    assert len(dev.mod._views) == 4097
    dev.mod.kernel_args((b,))
    assert len(dev.mod._views) == 1


def test_scratch_allocates_once_per_key_shape_and_dtype(dev):
    mod = dev.mod
    first = mod.scratch(("row_loss", 4), (4,), np.float64)
    assert isinstance(first, dev.cupy.ndarray) and first.shape == (4,) and first.dtype == np.float64
    assert mod.scratch(("row_loss", 4), (4,), np.float64) is first
    assert mod.monitor.allocations == 1
    other = mod.scratch(("row_loss", 4), [4], np.float32)
    assert other is not first and other.dtype == np.float32
    assert mod.scratch("norm_total", (1,), "float64") is not first
    assert mod.monitor.allocations == 3 and len(dev.cupy.allocations) == 3
    assert mod.monitor.allocated_bytes == 4 * 8 + 4 * 4 + 8


def test_staged_upload_copies_the_host_values_through_the_pinned_ring(dev):
    mod = dev.mod
    initial = np.array([1.5, -2.0, 3.25])
    staged = mod.staged(initial)
    initial[0] = 99.0
    np.testing.assert_array_equal(staged.host, [1.5, -2.0, 3.25])  # its own copy
    np.testing.assert_array_equal(np.asarray(staged.device), [1.5, -2.0, 3.25])
    (memory,) = dev.cupy.pinned
    assert len(memory) == initial.nbytes * mod.STAGING_SLOTS
    base = np.frombuffer(memory, np.uint8).ctypes.data
    for step in range(mod.STAGING_SLOTS):
        staged.host[:] = [step, step + 0.5, -step]
        staged.upload()
        np.testing.assert_array_equal(np.asarray(staged.device), [step, step + 0.5, -step])
    stream = _step_stream(dev)
    copies = [entry for entry in dev.cupy.log if entry[0] == "copy"]
    assert [c[2] for c in copies] == [base + i * initial.nbytes for i in range(mod.STAGING_SLOTS)]
    assert all(c[1] == staged.device.data.ptr and c[3] == initial.nbytes and c[4] is stream for c in copies)
    # each slot keeps its step's values until the ring wraps; one event per slot, recorded after its copy
    slots = np.frombuffer(memory, np.float64).reshape(mod.STAGING_SLOTS, 3)
    np.testing.assert_array_equal(slots[:, 0], np.arange(mod.STAGING_SLOTS))
    assert len(dev.cupy.events) == mod.STAGING_SLOTS
    assert all(e.disable_timing and e.recorded_on == [stream] for e in dev.cupy.events)
    assert [e[0] for e in dev.cupy.log] == ["copy", "record"] * mod.STAGING_SLOTS  # no wait yet
    # the ring wraps: slot 0's event is waited on before slot 0 is refilled, then recorded again
    dev.cupy.log.clear()
    staged.host[:] = [100.0, 200.0, 300.0]
    staged.upload()
    assert [e[:2] for e in dev.cupy.log] == [("sync", 0), ("copy", staged.device.data.ptr), ("record", 0)]
    assert dev.cupy.log[1][2] == base and len(dev.cupy.events) == mod.STAGING_SLOTS
    np.testing.assert_array_equal(np.asarray(staged.device), [100.0, 200.0, 300.0])


def test_staged_upload_waits_before_overwriting_a_slot(dev):
    mod = dev.mod
    staged = mod.staged(np.zeros(2, np.int64))
    (memory,) = dev.cupy.pinned
    slots = np.frombuffer(memory, np.int64).reshape(mod.STAGING_SLOTS, 2)
    seen = []
    for step in range(mod.STAGING_SLOTS):
        staged.host[:] = step
        staged.upload()
    event = dev.cupy.events[1]
    event.synchronize = lambda: seen.append(slots[1].copy())  # what slot 1 holds when the wait happens
    for step in range(2):
        staged.host[:] = 50 + step
        staged.upload()
    (waited,) = seen
    np.testing.assert_array_equal(waited, [1, 1])  # still the value the pending copy reads
    np.testing.assert_array_equal(slots[:2], [[50, 50], [51, 51]])


def _copy_stream_of(dev):
    """The side stream chunk copies run on: the non-blocking one of the streams made."""
    (side,) = [s for s in dev.cupy.streams if s.non_blocking]
    return side


def test_chunk_stage_stages_in_pinned_memory_and_copies_its_rows_on_the_side_stream(dev):
    mod = dev.mod
    target = dev.cupy.asarray(np.full((5, 3), -1.0, np.float32))
    stage = mod.ChunkStage(target)
    (memory,) = dev.cupy.pinned
    assert len(memory) == target.nbytes
    assert stage.host.shape == (5, 3) and stage.host.dtype == np.float32
    assert stage.host.ctypes.data == np.frombuffer(memory, np.uint8).ctypes.data  # .host is the pinned buffer
    side = _copy_stream_of(dev)
    stage.host[...] = np.arange(15, dtype=np.float32).reshape(5, 3)
    dev.cupy.log.clear()
    stage.upload(3)
    copies = [entry for entry in dev.cupy.log if entry[0] == "copy"]
    assert copies == [("copy", target.data.ptr, stage.host.ctypes.data, 3 * 3 * 4, side)]  # 3 rows, not 5
    np.testing.assert_array_equal(np.asarray(target)[:3], np.arange(9).reshape(3, 3))
    np.testing.assert_array_equal(np.asarray(target)[3:], -1.0)  # the rows past ``rows`` are not copied
    (uploaded,) = dev.cupy.events
    assert uploaded.disable_timing and uploaded.recorded_on == [side]
    # the side stream is made once, non-blocking, beside the step's blocking stream, and shared by stages
    mod.ChunkStage(dev.cupy.asarray(np.zeros(4, np.int64)))
    assert [s.non_blocking for s in dev.cupy.streams].count(True) == 1
    assert side is mod._copy_stream() and side is not mod._stream()


def test_chunk_stage_orders_the_copy_after_the_steps_and_the_steps_after_the_copy(dev):
    """A slot's two fills: the side stream waits for ``release``'s event (the steps that read the target)
    before its copy, the step's stream waits for the copy's event, and the host waits for the previous copy
    out of the pinned buffer before overwriting it."""
    mod = dev.mod
    target = dev.cupy.asarray(np.zeros((4, 2), np.float64))
    stage = mod.ChunkStage(target)
    step, side = mod._stream(), _copy_stream_of(dev)
    ptr, host, log = target.data.ptr, stage.host.ctypes.data, dev.cupy.log
    log.clear()

    stage.wait_host()  # nothing copied yet: nothing to wait for
    stage.wait_uploaded()
    assert log == []
    stage.host[...] = 1.0
    stage.upload(4)
    stage.wait_uploaded()
    # ... the steps that read ``target`` are queued on the step's stream, then:
    stage.release()
    assert log == [("enter", 0), ("copy", ptr, host, 64, side), ("record", 0, side), ("exit", 0),
                   ("wait", step, 0),
                   ("record", 1, step)]
    log.clear()

    stage.wait_host()
    stage.host[...] = 2.0
    stage.upload(1)
    stage.wait_uploaded()
    assert log == [("sync", 0),  # the first copy out of the pinned buffer has run
                   ("enter", 0), ("wait", side, 1), ("copy", ptr, host, 16, side), ("record", 2, side), ("exit", 0),
                   ("wait", step, 2)]
    np.testing.assert_array_equal(np.asarray(target), [[2.0, 2.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    assert len(dev.cupy.events) == 3 and all(e.disable_timing for e in dev.cupy.events)


def test_chunk_stage_copies_on_the_device_it_was_made_on(dev):
    """The refilling thread may have another current device: the copy runs under the stage's own."""
    dev.cupy.device = 1
    target = dev.cupy.asarray(np.zeros(3, np.int64))
    stage = dev.mod.ChunkStage(target)
    assert stage.device_id == 1
    dev.cupy.device = 0
    dev.cupy.log.clear()
    stage.host[...] = [7, 8, 9]
    stage.upload(3)
    assert [entry[:2] for entry in dev.cupy.log] == [("enter", 1), ("copy", target.data.ptr), ("record", 0),
                                                     ("exit", 1)]
    assert dev.cupy.device == 0  # and the thread's device is restored
    np.testing.assert_array_equal(np.asarray(target), [7, 8, 9])


def test_chunk_stage_of_an_empty_target_copies_nothing(dev):
    target = dev.cupy.asarray(np.zeros((0, 3), np.float32))
    stage = dev.mod.ChunkStage(target)
    assert len(dev.cupy.pinned[0]) == 1 and stage.host.shape == (0, 3)  # a pinned allocation is never empty
    stage.upload(0)
    assert [entry[3] for entry in dev.cupy.log if entry[0] == "copy"] == [0]


def test_use_device_makes_the_device_current(dev):
    dev.mod.use_device(2)
    assert dev.cupy.log == [("use", 2)] and dev.cupy.device == 2
    assert dev.cupy.streams == []  # no stream made yet: the step's stream is then made on device 2
    buf = dev.mod.scratch("norm_total", (1,), np.float64)
    assert dev.mod._state[(2, "norm_total", (1,), np.dtype(np.float64))] is buf


def test_stream_handle_is_the_step_streams_handle(dev):
    handle = dev.mod.stream_handle()
    stream = _step_stream(dev)
    assert type(handle) is int and handle == stream.ptr
    assert dev.mod.stream_handle() == handle and dev.mod.stream().ptr == handle  # one stream, as numba sees it
    assert len(dev.cupy.streams) == 1


def test_capture_runs_the_body_on_the_capturing_stream_and_launches_on_it(dev):
    mod, kernels = dev.mod, object()
    seen = []

    def body(k):
        stream = _step_stream(dev)
        seen.append((k, stream.capturing, mod.monitor._capturing))

    graph = mod.capture(kernels, body)
    stream = _step_stream(dev)
    assert seen == [(kernels, True, True)]
    assert stream.capture_modes == [STREAM_CAPTURE_MODE_RELAXED]
    assert not stream.capturing and not mod.monitor._capturing
    (captured,) = dev.cupy.graphs
    assert graph.graph is captured and captured.launches == []
    graph.launch()
    graph.launch()
    assert captured.launches == [stream, stream]


def test_capture_without_relaxed_mode_in_cupy_uses_the_default_mode(dev, monkeypatch):
    monkeypatch.delattr(dev.cupy.cuda.runtime, "streamCaptureModeRelaxed")
    calls = []
    graph = dev.mod.capture(None, calls.append)
    assert calls == [None] and _step_stream(dev).capture_modes == [None]
    assert graph.graph is dev.cupy.graphs[0]


def test_an_allocation_inside_a_capture_raises_and_the_capture_is_ended(dev):
    mod = dev.mod

    def body(kernels):
        mod.scratch("made inside the capture", (2,), np.float32)

    with pytest.raises(CaptureViolation, match="allocation inside a captured step"):
        mod.capture(None, body)
    stream = _step_stream(dev)
    assert not stream.capturing and len(dev.cupy.graphs) == 1  # end_capture ran
    assert not mod.monitor._capturing and mod.monitor.allocations == 0
    mod.scratch("after", (2,), np.float32)  # outside a capture, allocating is fine again
    assert mod.monitor.allocations == 1


def test_a_first_gemm_inside_a_capture_raises_since_the_handle_allocates(dev):
    mod, rng = dev.mod, np.random.default_rng(3)
    a, b, out = (dev.cupy.asarray(x) for x in _operands(rng, np.float32, False, False))
    with pytest.raises(CaptureViolation, match="cuBLAS workspace"):
        mod.capture(None, lambda kernels: mod.gemm(a, b, out, False, False, None))
    assert not _step_stream(dev).capturing and dev.lib.gemms == []
    mod.gemm(a, b, out, False, False, None)  # made outside a capture, the handle is then used inside one
    mod.capture(None, lambda kernels: mod.gemm(a, b, out, False, False, None))
    assert len(dev.lib.gemms) == 2 and mod.monitor.allocations == 1


def test_available_memory_counts_free_and_pooled_bytes(dev, monkeypatch):
    monkeypatch.setattr(dev.cupy.cuda.runtime, "memGetInfo", lambda: (1000, 5000))
    dev.cupy.pool.total, dev.cupy.pool.used = 700, 200
    assert dev.mod.available_memory() == 1000 + 700 - 200


def test_versions_formats_each_library(dev):
    assert dev.mod.versions() == {"driver": "12.9", "runtime": "12.8", "nvrtc": "12.9", "cublas": "12.9.1"}
    assert dev.lib.property_kinds == [0, 1, 2]
    dev.cupy.cuda.runtime.driverGetVersion = lambda: 13010
    assert dev.mod.versions()["driver"] == "13.1"


def test_versions_reports_libraries_that_fail(dev, monkeypatch):
    def no_nvrtc():
        raise RuntimeError("libnvrtc.so.12: cannot open shared object file")

    def no_cublas():
        raise OSError("cuBLAS (libcublas) was not found")

    monkeypatch.setattr(dev.cupy.cuda.nvrtc, "getVersion", no_nvrtc)
    monkeypatch.setattr(dev.mod, "_load_cublas", no_cublas)
    found = dev.mod.versions()
    assert found["nvrtc"] == "not found (libnvrtc.so.12: cannot open shared object file)"
    assert found["cublas"] == "not found (cuBLAS (libcublas) was not found)"
    assert found["driver"] == "12.9"
    monkeypatch.setattr(dev.mod, "_load_cublas", lambda: dev.lib)
    dev.lib.status["cublasGetProperty"] = 3
    assert dev.mod.versions()["cublas"] == "not found (cuBLAS getProperty failed with status 3)"


class _Kernels:
    """A kernel module for the probe: ``linear_`` through the runtime's GEMM, ``sigmoid_`` in NumPy."""

    def __init__(self, runtime, sigmoid=True, error=None):
        self.runtime, self.sigmoid, self.error = runtime, sigmoid, error

    def linear_(self, x, w, out):
        if self.error is not None:
            raise self.error
        self.runtime.gemm(x, w, out, transpose_a=False, transpose_b=False, scale=None)

    def sigmoid_(self, out):
        if self.sigmoid:
            out[...] = 1 / (1 + np.exp(-np.asarray(out)))


def test_probe_passes_when_the_kernels_compute_correctly(dev):
    assert dev.mod.probe(_Kernels(dev.mod)) is None
    (call,) = dev.lib.gemms
    assert (call["m"], call["n"], call["k"]) == (2, 3, 4)  # out^T (2 x 3) = w^T x^T
    assert _step_stream(dev).synchronized == 1


def test_probe_reports_wrong_values(dev):
    assert dev.mod.probe(_Kernels(dev.mod, sigmoid=False)) == "a test GEMM + sigmoid on the GPU gave wrong values"


@pytest.mark.parametrize("error, reason", [
    (RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU\nno kernel image for this device\n"),
     "RuntimeError: no kernel image for this device"),
    (OSError(""), "OSError: "),
])
def test_probe_reports_what_raised(dev, error, reason):
    assert dev.mod.probe(_Kernels(dev.mod, error=error)) == reason


def test_probe_reports_a_failing_cublas(dev):
    dev.lib.status["cublasCreate_v2"] = 1
    assert dev.mod.probe(_Kernels(dev.mod)) == "RuntimeError: cuBLAS create failed with status 1"


@requires_simulator
def test_probe_calls_the_real_kernel_module_as_it_is(dev):
    """The probe's calls match ``gpubp.kernels.cuda`` (under the simulator, on its NumPy runtime)."""
    from gpubp.kernels import cuda as kernels

    assert dev.mod.probe(kernels) is None


# --------------------------------------------------------------------------- _load_cublas's fallbacks
class _Loader:
    """``ctypes.CDLL`` that loads only ``works``, recording the names it was asked for."""

    def __init__(self, works=()):
        self.works, self.tried = works, []

    def __call__(self, name, *args, **kwargs):
        self.tried.append(name)
        if name not in self.works:
            raise OSError(f"{name}: cannot open shared object file")
        return SimpleNamespace(name=name)


def _no_pathfinder(monkeypatch):
    from cuda import pathfinder

    def fail(name):
        raise RuntimeError(f"{name} not found by pathfinder")

    monkeypatch.setattr(pathfinder, "load_nvidia_dynamic_lib", fail)


def test_load_cublas_uses_pathfinders_path(dev, monkeypatch):
    from cuda import pathfinder

    monkeypatch.setattr(pathfinder, "load_nvidia_dynamic_lib",
                        lambda name: SimpleNamespace(abs_path=f"/opt/nvidia/{name}/libcublas.so.12"))
    loader = _Loader(works=("/opt/nvidia/cublas/libcublas.so.12",))
    monkeypatch.setattr(ctypes, "CDLL", loader)
    assert dev.load_cublas().name == "/opt/nvidia/cublas/libcublas.so.12"
    assert loader.tried == ["/opt/nvidia/cublas/libcublas.so.12"]


@pytest.mark.parametrize("found_by_ldconfig, works, tried", [
    (None, ("libcublas.so.12",), ["libcublas.so.12"]),
    (None, ("libcublas.so.13",), ["libcublas.so.12", "libcublas.so.13"]),
    ("libcublas.so.11", ("libcublas.so.11",), ["libcublas.so.12", "libcublas.so.13", "libcublas.so.11"]),
])
def test_load_cublas_falls_back_to_the_loaders_search_path(dev, monkeypatch, found_by_ldconfig, works, tried):
    _no_pathfinder(monkeypatch)
    loader = _Loader(works)
    monkeypatch.setattr(ctypes, "CDLL", loader)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: found_by_ldconfig)
    assert dev.load_cublas().name == tried[-1]
    assert loader.tried == tried


@pytest.mark.parametrize("found_by_ldconfig", [None, "libcublas.so"])
def test_load_cublas_says_how_to_install_when_nothing_is_found(dev, monkeypatch, found_by_ldconfig):
    _no_pathfinder(monkeypatch)
    loader = _Loader()
    monkeypatch.setattr(ctypes, "CDLL", loader)
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: found_by_ldconfig)
    with pytest.raises(OSError, match="install the GPU extra, which brings the nvidia-cublas wheel"):
        dev.load_cublas()
    assert loader.tried == ["libcublas.so.12", "libcublas.so.13"] + ([found_by_ldconfig] if found_by_ldconfig
                                                                        else [])
