"""The runtime of ``gpubp.kernels.cuda`` on a real GPU: every CuPy- and cuBLAS-specific call of gpubp.

What lives here and nowhere else: the step's CUDA stream, numba views of
CuPy arrays (made once per buffer), scratch buffers, cuBLAS GEMMs, pinned
staging of per-step values and of streamed chunks of training rows, CUDA graph
capture, and the probe that decides whether the GPU is usable at all.

GEMMs call cuBLAS through its C API (ctypes, as ``gpubp.kernels.blas`` calls
CBLAS) on a handle of our own, bound once to the step's stream, in device
pointer mode (alpha and beta are read from device memory, so a replayed graph
sees the current learning rate) and with a fixed workspace (so cuBLAS
allocates nothing while a graph is captured). CuPy's own cuBLAS wrappers
cannot be used inside a capture: they reset the handle's stream on every call
and raise while the stream is capturing (cupy/cupy#6290).

This module imports CuPy; it is imported only when a GPU is used (and, in CI,
by a test that checks every CuPy and cuBLAS entry point it names exists).
"""

import ctypes
import ctypes.util

import cupy
import numpy as np
from numba import cuda

from .step_monitor import Monitor

THREADS = 256
ROW_THREADS = 32
MAX_BLOCKS = 65535
#: cuBLAS workspace given to the handle up front (cuBLAS documents 32 MiB as enough on Hopper)
CUBLAS_WORKSPACE_BYTES = 32 << 20
#: device memory the runtime allocates once, beyond per-shape scratch: the cuBLAS workspace
FIXED_BYTES = CUBLAS_WORKSPACE_BYTES
#: pinned host slots per staged array: the host refills a slot only after its copy has run
STAGING_SLOTS = 16

# cuBLAS and CUDA enums (cublas_api.h, library_types.h)
_OP_N, _OP_T = 0, 1
_POINTER_MODE_DEVICE = 1
_GEMM_DEFAULT = -1
_DATA_TYPE = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}  # CUDA_R_32F, CUDA_R_64F
_COMPUTE_64F = 70
#: float32 compute type per matmul precision: CUBLAS_COMPUTE_32F, _32F_FAST_TF32, _32F_FAST_16BF
_COMPUTE_32F = {"highest": 68, "high": 77, "medium": 75}

monitor = Monitor()
_state = {"precision": "highest"}


def use_device(index):
    """Make GPU ``index`` this process's device (before the step's stream or any buffer is made on it)."""
    cupy.cuda.Device(index).use()


def stream_handle():
    """The step's stream as an integer handle (``cudaStream_t``), as NCCL takes it."""
    return _stream().ptr


def _stream():
    """The blocking stream every step kernel and GEMM runs on (blocking: ordered with CuPy's default stream)."""
    s = _state.get("stream")
    if s is None:
        s = _state["stream"] = cupy.cuda.Stream(non_blocking=False)
    return s


def stream():
    """The step's stream as numba sees it."""
    s = _state.get("numba_stream")
    if s is None:
        s = _state["numba_stream"] = cuda.external_stream(_stream().ptr)
    return s


def synchronize():
    _stream().synchronize()


_views = {}


def _view(a):
    key = (a.data.ptr, a.shape, a.strides, a.dtype.str)
    view = _views.get(key)
    if view is None:
        if len(_views) > 4096:
            _views.clear()
        # sync=False: the step orders its own work on one stream; a sync here would break capture.
        # No owner: the cache must not keep arrays alive, and a view is only a descriptor of memory that an
        # array of this very pointer, shape, strides and dtype occupies whenever the key is looked up.
        view = _views[key] = cuda.from_cuda_array_interface(a.__cuda_array_interface__, owner=None, sync=False)
    return view


def kernel_args(args):
    """CuPy arrays as numba device arrays (made once per buffer); scalars unchanged."""
    return tuple(_view(a) if isinstance(a, cupy.ndarray) else a for a in args)


def scratch(key, shape, dtype):
    """A device buffer made once per key, shape and dtype."""
    key = (cupy.cuda.Device().id, key, tuple(shape), np.dtype(dtype))
    buf = _state.get(key)
    if buf is None:
        monitor.allocation(f"scratch {key}", int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        buf = _state[key] = cupy.empty(shape, dtype)
    return buf


# --------------------------------------------------------------------------- cuBLAS
def _load_cublas():
    try:
        from cuda import pathfinder

        return ctypes.CDLL(pathfinder.load_nvidia_dynamic_lib("cublas").abs_path)
    except Exception:  # noqa: BLE001 - fall back to the loader's search path
        for name in ("libcublas.so.12", "libcublas.so.13", ctypes.util.find_library("cublas")):
            if name:
                try:
                    return ctypes.CDLL(name)
                except OSError:
                    continue
    raise OSError("cuBLAS (libcublas) was not found: install the GPU extra, which brings the nvidia-cublas wheel")


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"cuBLAS {what} failed with status {status}")


class _Cublas:
    """One cuBLAS handle bound to the step's stream, device pointer mode, fixed workspace."""

    def __init__(self):
        self.lib = lib = _load_cublas()
        handle = ctypes.c_void_p()
        _check(lib.cublasCreate_v2(ctypes.byref(handle)), "create")
        self.handle = handle
        try:
            _check(lib.cublasSetStream_v2(handle, ctypes.c_void_p(_stream().ptr)), "setStream")
            _check(lib.cublasSetPointerMode_v2(handle, _POINTER_MODE_DEVICE), "setPointerMode")
            monitor.allocation("cuBLAS workspace", CUBLAS_WORKSPACE_BYTES)
            self.workspace = cupy.empty(CUBLAS_WORKSPACE_BYTES, np.uint8)
            _check(lib.cublasSetWorkspace_v2(handle, ctypes.c_void_p(self.workspace.data.ptr),
                                             ctypes.c_size_t(CUBLAS_WORKSPACE_BYTES)), "setWorkspace")
        except BaseException:
            lib.cublasDestroy_v2(handle)  # a handle that failed to set up is not kept, so it must not leak
            raise
        self.ones = {np.dtype(t): cupy.array([1.0, 0.0], t) for t in (np.float32, np.float64)}


def _cublas():
    handle = _state.get("cublas")
    if handle is None:
        handle = _state["cublas"] = _Cublas()
    return handle


def set_matmul_precision(precision):
    """The compute type of every later float32 GEMM (a captured graph keeps the one it was captured with)."""
    _state["precision"] = precision


def matmul_precision():
    return _state["precision"]


def gemm(a, b, out, transpose_a, transpose_b, scale):
    """Row-major ``out (M, N) = alpha op(a) op(b) + beta out`` as the column-major
    ``out^T = op(b)^T op(a)^T``; ``[alpha, beta] = scale`` on the device, or 1, 0.

    One ``cublasGemmEx`` whose compute type carries the matmul precision (TF32
    or bf16 tensor cores for float32 when asked), so every GEMM of a step runs
    at the same precision."""
    h = _cublas()
    M, N = out.shape
    K = a.shape[0] if transpose_a else a.shape[1]
    if scale is not None and scale.dtype != out.dtype:
        raise TypeError(f"GEMM scale must be {out.dtype}, like its output, got {scale.dtype}")
    coefficients = h.ones[out.dtype] if scale is None else scale
    alpha = ctypes.c_void_p(coefficients.data.ptr)
    beta = ctypes.c_void_p(coefficients.data.ptr + coefficients.itemsize)
    data_type = _DATA_TYPE[out.dtype]
    compute = _COMPUTE_64F if out.dtype == np.float64 else _COMPUTE_32F[_state["precision"]]
    _check(h.lib.cublasGemmEx(
        h.handle, _OP_T if transpose_b else _OP_N, _OP_T if transpose_a else _OP_N, N, M, K, alpha,
        ctypes.c_void_p(b.data.ptr), data_type, b.shape[1], ctypes.c_void_p(a.data.ptr), data_type, a.shape[1],
        beta, ctypes.c_void_p(out.data.ptr), data_type, N, compute, _GEMM_DEFAULT), "gemm")


# --------------------------------------------------------------------------- staging and graphs
class Staged:
    """A host array and its device twin; ``upload()`` copies through a ring of pinned slots, asynchronously."""

    def __init__(self, initial):
        initial = np.asarray(initial)
        self.host = np.array(initial, copy=True)
        self.device = cupy.asarray(initial)
        nbytes = initial.nbytes
        self._memory = cupy.cuda.alloc_pinned_memory(nbytes * STAGING_SLOTS)
        flat = np.frombuffer(self._memory, initial.dtype, initial.size * STAGING_SLOTS)
        self._slots = flat.reshape((STAGING_SLOTS,) + initial.shape)
        self._events = [None] * STAGING_SLOTS
        self._next = 0

    def upload(self):
        i = self._next
        self._next = (i + 1) % STAGING_SLOTS
        if self._events[i] is not None:
            self._events[i].synchronize()  # waits only when the GPU is STAGING_SLOTS steps behind
        self._slots[i][...] = self.host
        s = _stream()
        self.device.data.copy_from_host_async(self._slots[i].ctypes.data, self.host.nbytes, s)
        event = self._events[i] or cupy.cuda.Event(disable_timing=True)
        event.record(s)
        self._events[i] = event


def staged(initial):
    return Staged(initial)


def _copy_stream():
    """The non-blocking side stream chunk uploads run on, beside the step's stream."""
    s = _state.get("copy_stream")
    if s is None:
        s = _state["copy_stream"] = cupy.cuda.Stream(non_blocking=True)
    return s


class ChunkStage:
    """Host staging of a chunk of training rows (see ``Backend.chunk_stage``): a pinned host array, copied
    asynchronously into ``target`` on the side stream once the steps that read ``target`` before have run.

    Events order the streams: ``release()`` records one on the step's stream after the last step that reads
    ``target``; ``upload()`` makes the side stream wait for it, copies and records ``uploaded``;
    ``wait_uploaded()`` makes the step's stream wait for that; ``wait_host()`` waits (on the host, in the
    refilling thread) for the previous copy out of the pinned array before it is overwritten."""

    def __init__(self, target):
        self.target = target
        self.device_id = cupy.cuda.Device().id
        self._memory = cupy.cuda.alloc_pinned_memory(max(target.nbytes, 1))
        self.host = np.frombuffer(self._memory, target.dtype, target.size).reshape(target.shape)
        self._copy_stream = _copy_stream()
        self._released = self._uploaded = None

    def wait_host(self):
        if self._uploaded is not None:
            self._uploaded.synchronize()

    def upload(self, rows):
        with cupy.cuda.Device(self.device_id):
            s = self._copy_stream
            if self._released is not None:
                s.wait_event(self._released)
            nbytes = rows * (self.target.nbytes // max(self.target.shape[0], 1))
            self.target.data.copy_from_host_async(self.host.ctypes.data, nbytes, s)
            event = cupy.cuda.Event(disable_timing=True)
            event.record(s)
            self._uploaded = event

    def wait_uploaded(self):
        if self._uploaded is not None:
            _stream().wait_event(self._uploaded)

    def release(self):
        event = cupy.cuda.Event(disable_timing=True)
        event.record(_stream())
        self._released = event


class DeviceGraph:
    """A captured step: one ``cudaGraphLaunch`` per replay."""

    def __init__(self, graph):
        self.graph = graph

    def launch(self):
        self.graph.launch(_stream())


def capture(kernels, body):
    """Capture ``body(kernels)`` on the step's stream as one CUDA graph (relaxed mode: other threads may use
    CUDA meanwhile). Any allocation or host read inside raises before the capture is used."""
    s = _stream()
    mode = getattr(cupy.cuda.runtime, "streamCaptureModeRelaxed", None)
    s.begin_capture() if mode is None else s.begin_capture(mode)
    try:
        with monitor.capturing():
            body(kernels)
    finally:
        graph = s.end_capture()
    return DeviceGraph(graph)


def available_memory():
    free, _ = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return free + pool.total_bytes() - pool.used_bytes()


def _cuda_version(number):
    return f"{number // 1000}.{number % 1000 // 10}"


def versions():
    """Driver, runtime, NVRTC and cuBLAS versions as strings (what ``gpubp info`` shows); a library that
    cannot be loaded shows as "not found (reason)"."""
    found = {"driver": _cuda_version(cupy.cuda.runtime.driverGetVersion()),
             "runtime": _cuda_version(cupy.cuda.runtime.runtimeGetVersion())}
    try:
        found["nvrtc"] = "%d.%d" % cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        found["nvrtc"] = f"not found ({exc})"
    try:
        lib, parts = _load_cublas(), []
        for kind in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL (library_types.h)
            value = ctypes.c_int()
            _check(lib.cublasGetProperty(kind, ctypes.byref(value)), "getProperty")
            parts.append(str(value.value))
        found["cublas"] = ".".join(parts)
    except Exception as exc:  # noqa: BLE001
        found["cublas"] = f"not found ({exc})"
    return found


def probe(gpu_kernels):
    """None when the GPU computes correctly here, else the reason: a numba kernel of ``gpu_kernels``
    (``gpubp.kernels.cuda``) is compiled and run, and a small GEMM goes through cuBLAS, both checked
    against NumPy."""
    try:
        x = cupy.asarray(np.arange(12, dtype=np.float32).reshape(3, 4) / 10)
        w = cupy.asarray(np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2))
        out = cupy.empty((3, 2), np.float32)
        gpu_kernels.linear_(x, w, out)
        gpu_kernels.sigmoid_(out)
        synchronize()
        expected = 1 / (1 + np.exp(-(cupy.asnumpy(x) @ cupy.asnumpy(w))))
        if not np.allclose(cupy.asnumpy(out), expected, rtol=1e-5, atol=1e-6):
            return "a test GEMM + sigmoid on the GPU gave wrong values"
    except Exception as exc:  # noqa: BLE001 - any failure means: not usable
        text = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {text[-1] if text else ''}"
    return None
