"""The runtime of ``gpubp.kernels.cuda`` under Numba's CUDA simulator: NumPy arrays on the host.

It stands in for ``gpubp.kernels.cuda_device`` (CuPy, cuBLAS, CUDA graphs) so
that CI executes every GPU kernel and the whole GPU training step on a CPU.
Small blocks keep the simulator (a Python thread per CUDA thread) fast, and
exercise the kernels' grid-stride loops and partial blocks.

It is also the instrument for the step's "fast by construction" promises: it
counts allocations and host reads, and its :class:`SimulatedGraph` records a
step's kernel calls once, refusing any allocation or host read while it
records (as CUDA stream capture would), and replays exactly those calls, with
their scalar arguments frozen, as a CUDA graph does.
"""

import inspect
import threading
import traceback

import numpy as np
from numba.core import types
from numba.cuda.simulator import kernelapi
from numba.np import numpy_support

from .reference import round_to_precision
from .step_monitor import Monitor

THREADS = 8
MAX_BLOCKS = 2
ROW_THREADS = 4
DEVICE_NAME = "CUDA simulator (Numba), NumPy arrays"
#: device memory the runtime allocates once, beyond per-shape scratch (none: NumPy stands in for cuBLAS)
FIXED_BYTES = 0


monitor = Monitor()


_shared_allocation = threading.Lock()


def _shared_array(self, shape, dtype, alignment=None):
    """``cuda.shared.array`` in the simulator, as numba-cuda 0.30 writes it (one array per block and source
    line, made by the first thread that reaches the line), with that check-then-store under a lock: without
    it two of a block's threads (Python threads) can each make an array under load, and the block computes
    on two "shared" arrays."""
    if alignment is not None:
        raise RuntimeError("Array alignment is not supported in cudasim")
    if isinstance(dtype, types.Type):
        dtype = numpy_support.as_dtype(dtype)
    if shape == 0:  # dynamic shared memory: one buffer for the block
        return np.frombuffer(self._dynshared.data, dtype=dtype, count=self._dynshared_size // dtype.itemsize)
    caller = traceback.extract_stack(inspect.currentframe())[-2][0:2]
    with _shared_allocation:
        array = self._allocations.get(caller)
        if array is None:
            array = self._allocations[caller] = np.empty(shape, dtype)
    return array


kernelapi.FakeCUDAShared.array = _shared_array
_scratch = {}
_settings = {"precision": "highest"}


def stream():
    return 0


def stream_handle():
    return 0


def synchronize():
    pass


def kernel_args(args):
    return args


def scratch(key, shape, dtype):
    """A buffer of ``shape``/``dtype`` made once per ``key`` (and shape), reused by every later call."""
    key = (key, tuple(shape), np.dtype(dtype))
    buf = _scratch.get(key)
    if buf is None:
        monitor.allocation(f"scratch {key}", int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        buf = _scratch[key] = np.empty(shape, dtype)
    return buf


def set_matmul_precision(precision):
    _settings["precision"] = precision


def matmul_precision():
    return _settings["precision"]


def gemm(a, b, out, transpose_a, transpose_b, scale):
    """``out = alpha op(a) op(b) + beta out``, ``[alpha, beta] = scale`` or 1, 0 (NumPy stands in for cuBLAS).

    TF32 and bf16 tensor-core GEMMs are emulated by rounding float32 operands to their mantissa first."""
    if out.dtype == np.float32 and _settings["precision"] != "highest":
        a, b = round_to_precision(a, _settings["precision"]), round_to_precision(b, _settings["precision"])
    a = a.T if transpose_a else a
    b = b.T if transpose_b else b
    if scale is None:
        np.matmul(a, b, out=out)
        return
    product = np.matmul(a, b)
    product *= scale[0]
    out *= scale[1]
    out += product


class Recorder:
    """Stands in for the kernel module while a step is captured: records each call, runs nothing."""

    def __init__(self, kernels, calls):
        self._kernels = kernels
        self._calls = calls

    def __getattr__(self, name):
        kernel = getattr(self._kernels, name)

        def record(*args):
            self._calls.append((kernel, args))
        return record


class SimulatedGraph:
    """A step captured once (its kernel calls, arguments frozen) and replayed by :meth:`launch`."""

    def __init__(self, kernels, body):
        self.calls = []
        with monitor.capturing():
            body(Recorder(kernels, self.calls))

    def launch(self):
        for kernel, args in self.calls:
            kernel(*args)


def capture(kernels, body):
    return SimulatedGraph(kernels, body)


def staged(initial):
    """A host array and its "device" twin; ``upload()`` copies the host values over."""
    return Staged(np.array(initial, copy=True), np.array(initial, copy=True))


class Staged:
    def __init__(self, host, device):
        self.host, self.device = host, device

    def upload(self):
        np.copyto(self.device, self.host)


class ChunkStage:
    """Host staging of a chunk (see ``Backend.chunk_stage``): a host array copied into the "device" one.

    The copy runs in the steps' thread, in ``wait_uploaded()``: the simulator copies a kernel's array
    arguments in and back out around each kernel, which would undo a write from another thread meanwhile."""

    def __init__(self, target):
        self.target = target
        self.host = np.empty_like(target)
        self._rows = 0

    def wait_host(self):
        pass

    def upload(self, rows):
        self._rows = rows

    def wait_uploaded(self):
        np.copyto(self.target[:self._rows], self.host[:self._rows])

    def release(self):
        pass
