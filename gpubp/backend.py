"""Array backends: NumPy on the CPU, CuPy on a CUDA GPU.

The layer, loss and optimizer code is written once against a :class:`Backend`:
it calls ``backend.xp`` (the NumPy-compatible array module, Chainer's ``xp``
idiom) and ``backend.kernels`` (the fused kernels of that device). Everything
that differs between NumPy and CuPy lives in this file and in ``gpubp.kernels``.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np

from .errors import BackendUnavailableError, InsufficientMemory, InvalidInputError, InvalidTypeError
from .kernels.contract import MATMUL_PRECISIONS
from .launch_environment import device_for_this_rank

logger = logging.getLogger("gpubp")

BACKEND_ALIASES = {"auto": "auto", "cpu": "cpu", "numpy": "cpu", "gpu": "gpu", "cupy": "gpu", "cuda": "gpu",
                   "gpu-sim": "gpu-sim"}
DTYPES = {"float32": np.float32, "float64": np.float64}
GPU_INSTALL_HINT = (
    "install the GPU extra that matches your CUDA driver: pip install 'gpubp[cuda12]' "
    "(driver >= 525) or pip install 'gpubp[cuda13]' (driver >= 580)"
)


class Backend:
    """An array library, its device and its fused kernels.

    Attributes
    ----------
    name : {"cpu", "gpu"}
    xp : module
        ``numpy`` or ``cupy``.
    kernels : module
        ``gpubp.kernels.cpu`` or ``gpubp.kernels.cuda``; same function names.
    device_name : str
        Human-readable device description.
    """

    def __init__(self, name, xp, kernels, device_name, runtime=None):
        self.name = name
        self.xp = xp
        self.kernels = kernels
        self.device_name = device_name
        #: the CUDA runtime (``gpubp.kernels.cuda_device`` or ``cuda_simulated``); None on the CPU
        self.runtime = runtime

    def __repr__(self):
        return f"Backend({self.name!r}, device={self.device_name!r})"

    def asarray(self, a, dtype=None):
        """Copy a host or device array onto this backend's device (no copy if already there)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, a):
        """Return ``a`` as a NumPy array on the host (on a GPU: a copy, which waits for the device)."""
        if self.runtime is not None:
            self.runtime.monitor.host_read(f"to_host of {getattr(a, 'shape', '?')}")
        if isinstance(a, np.ndarray):
            return a
        return self.xp.asnumpy(a)

    def empty(self, shape, dtype):
        self._count_allocation(shape, dtype)
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        self._count_allocation(shape, dtype)
        return self.xp.zeros(shape, dtype=dtype)

    def _count_allocation(self, shape, dtype):
        if self.runtime is not None:
            self.runtime.monitor.allocation(f"array of shape {shape}",
                                            int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)

    def synchronize(self):
        """Block until queued device work has finished (no-op on the CPU)."""
        if self.runtime is not None:
            self.runtime.monitor.host_read("synchronize")
            self.runtime.synchronize()

    def staged(self, initial):
        """A small host array (``.host``) and its device twin (``.device``): the host writes ``host``
        and ``upload()`` queues the copy, without waiting for the device. On the CPU they are one array."""
        if self.runtime is not None:
            return self.runtime.staged(initial)
        return _HostStaged(np.array(initial, copy=True))

    @property
    def captures_steps(self):
        """True where a training step can be captured once and replayed (a CUDA graph)."""
        return self.runtime is not None

    def run_step(self, plan, key, body):
        """Run ``body(kernels)``, the device work of a step on ``plan``, as a captured graph.

        The first call for a (plan, key) runs eagerly (it compiles kernels and
        makes scratch buffers), the second captures the body and every call
        replays it. A capture that fails logs one line and leaves that plan
        on eager steps.
        """
        graph = plan.captured.get(key)
        if graph is None:
            while len(plan.captured) >= MAX_CAPTURED_STEPS:  # oldest first: e.g. the steps of an earlier fit
                del plan.captured[next(iter(plan.captured))]
            plan.captured[key] = _WARMED_UP
            body(self.kernels)
            return
        if graph is _WARMED_UP:
            try:
                graph = self.runtime.capture(self.kernels, body)
            except Exception as exc:  # noqa: BLE001 - any capture failure falls back to eager steps
                logger.warning("gpubp: CUDA graph capture failed (%s: %s); running eager steps",
                               type(exc).__name__, exc)
                graph = _EagerStep(self.kernels, body)
            plan.captured[key] = graph
        graph.launch()

    @staticmethod
    def step_mode(plan):
        """How the training steps on ``plan`` run: "graph" when every step captured on it replays a CUDA
        graph; "eager" otherwise (graphs off, no step captured yet, or a capture that failed and fell back
        to eager steps, which only logs a warning)."""
        steps = list(plan.captured.values())
        graphed = steps and all(s is not _WARMED_UP and not isinstance(s, _EagerStep) for s in steps)
        return "graph" if graphed else "eager"

    def available_memory(self):
        """Bytes free for new allocations on this device (None when unknown).

        CPU (and the simulated GPU): ``MemAvailable`` from /proc/meminfo; GPU:
        free device memory plus what CuPy's pool holds but does not use.
        """
        if hasattr(self.runtime, "available_memory"):
            return self.runtime.available_memory()
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def require_memory(self, needed, what, advice):
        """Raise InsufficientMemory, before anything is allocated, when ``needed`` bytes exceed
        :meth:`available_memory` (no check where that is unknown): "this run needs N MiB <what>, but
        only M MiB are available on <device>; <advice>"."""
        available = self.available_memory()
        if available is not None and needed > available:
            mib = 2 ** 20  # integer arithmetic: a size beyond float's range still gets its message
            raise InsufficientMemory(f"this run needs {int(needed) // mib:,} MiB {what}, but only "
                                     f"{int(available) // mib:,} MiB are available on {self.device_name}; {advice}")

    def host_view(self, a):
        """``a`` itself where device arrays live in host memory (the CPU), else None; None for None."""
        return a if self.runtime is None else None

    def upload(self, a, out=None):
        """``a`` (host or device) as a device array: copied into ``out`` when given (and not ``a`` itself)."""
        if out is None:
            return self.asarray(a)
        if out is not a:
            self.xp.copyto(out, self.asarray(a, out.dtype))
        return out

    def chunk_stage(self, target):
        """Host staging for refilling the device array ``target`` from another thread, while steps read
        other buffers: that thread writes ``.host`` (after ``wait_host()``) and calls ``upload(rows)``; the
        step's thread calls ``wait_uploaded()`` before the steps that read ``target`` and ``release()`` once
        they are queued. On a GPU ``.host`` is pinned and the copy runs on a side stream, ordered by events
        (no thread waits for the device but the refilling one, and only for the copy before its own);
        on the CPU ``.host`` is ``target`` itself and every call is free."""
        if self.runtime is not None:
            return self.runtime.ChunkStage(target)
        return _InPlaceStage(target)

    def copy_into(self, target, source):
        """Copy a host or device array into the device array ``target`` (same shape), cast to its dtype."""
        self.xp.copyto(target, self.asarray(source, target.dtype))

    @property
    def reads_are_free(self):
        """True where reading a device value on the host costs no sync (the CPU)."""
        return self.runtime is None

    def owns(self, a):
        """True when ``a`` is an array of this backend's library."""
        return isinstance(a, self.xp.ndarray)


_WARMED_UP = "warmed up"
#: captured steps kept per plan (each holds device memory for its graph)
MAX_CAPTURED_STEPS = 4


class _HostStaged:
    """Staged values on the CPU: the host array is the device array, so ``upload()`` has nothing to do."""

    def __init__(self, array):
        self.host = self.device = array

    def upload(self):
        pass


class _InPlaceStage:
    """A chunk stage on the CPU: the host array is the device array, so there is nothing to copy or order."""

    def __init__(self, target):
        self.host = target

    def wait_host(self):
        pass

    def upload(self, rows):
        pass

    def wait_uploaded(self):
        pass

    def release(self):
        pass


class _EagerStep:
    """Stands in for a graph that could not be captured: runs the step's device work eagerly."""

    def __init__(self, kernels, body):
        self.kernels, self.body = kernels, body

    def launch(self):
        self.body(self.kernels)


def _cpu_backend():
    from .kernels import cpu

    return Backend("cpu", np, cpu, "CPU (NumPy)")


def probe_cupy():
    """Return ``(cupy, None)`` when CuPy imports and a CUDA device answers, else ``(None, reason)``."""
    try:
        cupy = importlib.import_module("cupy")
    except ModuleNotFoundError as exc:
        if exc.name == "cupy":
            return None, f"CuPy is not installed; {GPU_INSTALL_HINT}"
        return None, f"CuPy is installed but failed to import ({exc}); {GPU_INSTALL_HINT}"
    except Exception as exc:  # a broken CuPy install raises all sorts of errors at import
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        return None, f"CuPy is installed but failed to import ({reason}); {GPU_INSTALL_HINT}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"CuPy is installed but no CUDA device answers ({exc})"
    if count < 1:
        return None, "CuPy is installed but no CUDA device answers (0 devices found)"
    return cupy, None


def simulator_enabled():
    """True when Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1`` before Numba was imported)."""
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def _simulated_gpu_backend():
    """The GPU backend's kernels and training step on Numba's CUDA simulator, with NumPy arrays (for tests)."""
    if not simulator_enabled():
        raise BackendUnavailableError(
            "backend='gpu-sim' runs the GPU kernels in Numba's CUDA simulator: set NUMBA_ENABLE_CUDASIM=1 "
            "before Python starts (and install numba-cuda)")
    from .kernels import cuda, cuda_simulated

    return Backend("gpu-sim", np, cuda, cuda_simulated.DEVICE_NAME, runtime=cuda_simulated)


def probe_gpu():
    """Return ``(backend, None)`` when the GPU computes correctly here, else ``(None, reason)``.

    Beyond :func:`probe_cupy`, a kernel is compiled and run and a small GEMM goes
    through cuBLAS, so a machine with a driver but no NVRTC, NVVM or cuBLAS
    libraries is found out before training starts.
    """
    cupy, reason = probe_cupy()
    if cupy is None:
        return None, reason
    if simulator_enabled():
        return None, "Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1), so GPU kernels cannot run on the device"
    try:
        from .kernels import cuda, cuda_device
    except Exception as exc:  # a missing numba-cuda or CUDA library shows up here
        return None, f"the GPU kernels failed to load ({type(exc).__name__}: {exc}); {GPU_INSTALL_HINT}"
    cuda_device.use_device(device_for_this_rank(cupy.cuda.runtime.getDeviceCount()))
    failure = cuda_device.probe(cuda)
    if failure is not None:
        return None, f"a test kernel and GEMM failed on the GPU ({failure}); {GPU_INSTALL_HINT}"
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return Backend("gpu", cupy, cuda, name, runtime=cuda_device), None


def gpu_library_versions():
    """``({driver, runtime, nvrtc, cublas}, None)`` as found by the GPU runtime, or ``(None, reason)``
    where CuPy or a CUDA device is missing. Libraries that fail to load are named, not raised."""
    cupy, reason = probe_cupy()
    if cupy is None:
        return None, reason
    try:
        from .kernels import cuda_device
    except Exception as exc:  # noqa: BLE001 - a missing numba-cuda shows up here
        return None, f"the GPU runtime failed to load ({type(exc).__name__}: {exc})"
    return cuda_device.versions(), None


_CACHE = {}
_MATMUL_PRECISION = ["highest"]


def set_float32_matmul_precision(precision):
    """Set the precision of float32 GEMMs on the GPU, as PyTorch's function of the same name does.

    ``"highest"`` (default): float32. ``"high"``: TF32 tensor cores (operands
    rounded to 10 mantissa bits, float32 accumulation). ``"medium"``: bf16
    tensor cores (7 mantissa bits) -- bf16 mixed precision with float32
    master weights: parameters, activations, gradients and updates stay
    float32; only GEMM operands are rounded. Every GEMM of a step (forward and
    backward) uses the one setting. CPU GEMMs always run at "highest".
    """
    if precision not in MATMUL_PRECISIONS:
        raise InvalidInputError(
            f"matmul precision must be one of {list(MATMUL_PRECISIONS)}, got {precision!r}")
    _MATMUL_PRECISION[0] = precision
    for backend in _CACHE.values():
        backend.kernels.set_matmul_precision(precision)


def get_float32_matmul_precision():
    """The precision set by :func:`set_float32_matmul_precision` (``"highest"`` until then)."""
    return _MATMUL_PRECISION[0]


def get_backend(name="auto"):
    """Return the :class:`Backend` for ``name``.

    Parameters
    ----------
    name : {"auto", "cpu", "gpu", "numpy", "cupy"} or Backend
        ``"auto"`` picks CuPy when it imports and a CUDA device answers, else
        NumPy (logging one line that says why). ``"gpu"`` raises
        :class:`BackendUnavailableError` naming what is missing.
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise InvalidTypeError(f"backend must be a string such as 'auto', 'cpu' or 'gpu', got {type(name).__name__}")
    key = BACKEND_ALIASES.get(name.lower())
    if key is None:
        raise InvalidInputError(
            f"unknown backend {name!r}; valid names are {sorted(BACKEND_ALIASES)}"
        )
    if key in _CACHE:
        return _CACHE[key]
    if key == "cpu":
        backend = _cpu_backend()
    elif key == "gpu-sim":
        backend = _simulated_gpu_backend()
    else:
        backend, reason = probe_gpu()
        if backend is not None:
            pass
        elif key == "gpu":
            raise BackendUnavailableError(f"backend='gpu' requested but {reason}")
        else:
            logger.info("gpubp: using the CPU backend (%s)", reason)
            backend = get_backend("cpu")
    backend.kernels.set_matmul_precision(_MATMUL_PRECISION[0])
    _CACHE[key] = backend
    return backend


def resolve_dtype(dtype):
    """Map ``"float32"``/``"float64"`` (or the NumPy types) to a NumPy dtype."""
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved is None or resolved.name not in DTYPES:
        raise InvalidInputError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return resolved
