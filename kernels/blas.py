"""Direct CBLAS ``?gemm`` calls for the GEMMs of the CPU training step and of inference.

Two libraries can serve them, both through their ILP64 CBLAS entry points
(64-bit integers, row-major), called from a Numba wrapper with about 1 us of
overhead and no temporaries:

* ``"openblas"``: the OpenBLAS that NumPy ships (``numpy.libs``/``.dylibs``).
  It serves the weight-gradient GEMM, whose BLAS form ``C = alpha A^T B + beta C``
  NumPy cannot express (the fused SGD step: ``W = (1 - lr wd) W - lr x^T delta``);
  the other GEMMs stay on ``numpy.matmul``, which calls the same library.
* ``"mkl"``: Intel oneMKL's ``libmkl_rt`` from the ``mkl`` wheel (the ``mkl``
  extra). It serves every GEMM: forward, input gradient and weight gradient.

``GPUBP_BLAS=openblas|mkl`` chooses; the default is OpenBLAS, also when oneMKL
is installed: on the machine gpubp is benchmarked on (a 2-core AMD EPYC, Zen 5,
AVX-512) whole ``fit`` runs measured 3% to 37% slower with oneMKL serving every
GEMM (its threading costs most at small batches, and its sgemm peaked at 185 to
196 GFLOP/s against OpenBLAS's 200 to 203 at 1024 x 1024 x 1024). The choice is
made once per process and holds for every shape, so results are deterministic
for a given library and thread count (a run resumed under another library is
equal up to rounding, not bit for bit).
``GPUBP_DISABLE_CBLAS=1`` turns direct calls off (``matmul`` everywhere).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import warnings

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: ILP64 (single, double) gemm entry points of NumPy's OpenBLAS builds
_OPENBLAS_SYMBOLS = (("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"), ("cblas_sgemm64_", "cblas_dgemm64_"))
_OPENBLAS_THREADS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")
_MKL_SYMBOLS = ("cblas_sgemm_64", "cblas_dgemm_64")
LIBRARIES = ("openblas", "mkl")

_POINTER = ctypes.c_size_t  # pointers as integers, so numba passes ``array.ctypes.data`` as is


def _prototype(real):
    return ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_int64, real, _POINTER, ctypes.c_int64, _POINTER, ctypes.c_int64, real,
                            _POINTER, ctypes.c_int64)


def _gemms(lib, single, double):
    """``{dtype: ctypes gemm}`` for the two entry points of ``lib``; AttributeError when one is missing."""
    addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in (single, double)]
    return {np.dtype(np.float32): _prototype(ctypes.c_float)(addresses[0]),
            np.dtype(np.float64): _prototype(ctypes.c_double)(addresses[1])}


class Library:
    """A loaded CBLAS: its ``name`` (one of :data:`LIBRARIES`), file, gemm entry points and thread count."""

    def __init__(self, name, path, lib, gemm, threads, version=None):
        self.name, self.path, self.gemm, self.version = name, path, gemm, version
        self._lib, self._threads = lib, threads

    def __repr__(self):
        return f"Library({self.name!r}, {self.path!r})"

    def num_threads(self):
        """The threads this library computes with, or None when it cannot be asked."""
        try:
            return int(self._threads())
        except (OSError, AttributeError, TypeError):
            return None


def _numpy_openblas_files():
    root = os.path.dirname(os.path.dirname(np.__file__))
    found = []
    for folder in ("numpy.libs", os.path.join("numpy", ".dylibs")):
        found += glob.glob(os.path.join(root, folder, "*openblas*"))
    return found


def load_openblas():
    """NumPy's OpenBLAS as a :class:`Library`, or None when it has no ILP64 CBLAS."""
    for path in _numpy_openblas_files():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for single, double in _OPENBLAS_SYMBOLS:
            try:
                gemm = _gemms(lib, single, double)
            except AttributeError:
                continue
            threads = next((getattr(lib, name) for name in _OPENBLAS_THREADS if hasattr(lib, name)), None)
            return Library("openblas", path, lib, gemm, threads)
    return None


def _mkl_files():
    """``libmkl_rt`` where the ``mkl`` wheel puts it (``<prefix>/lib``), then the loader's search path."""
    found = []
    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX") or sys.prefix)):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
    return found + ["libmkl_rt.so.3", "libmkl_rt.so.2"]


def load_mkl():
    """oneMKL's ``libmkl_rt`` as a :class:`Library`, or None when it is not installed."""
    for path in _mkl_files():
        try:
            lib = ctypes.CDLL(path)
            gemm = _gemms(lib, *_MKL_SYMBOLS)
        except (OSError, AttributeError):
            continue
        version = None
        if hasattr(lib, "mkl_get_version_string"):
            text = ctypes.create_string_buffer(256)
            lib.mkl_get_version_string(text, 256)
            words = text.value.decode(errors="replace").split()  # "Intel(R) oneAPI ... Version 2026.2-Product ..."
            version = next((words[i + 1].split("-")[0] for i, w in enumerate(words[:-1]) if w == "Version"), None)
        return Library("mkl", path, lib, gemm, getattr(lib, "MKL_Get_Max_Threads", None), version)
    return None


def _choose():
    """The library of this process: ``GPUBP_BLAS`` (oneMKL when it is ``mkl`` and installed), else NumPy's
    OpenBLAS."""
    if os.environ.get("GPUBP_DISABLE_CBLAS"):
        return None
    asked = os.environ.get("GPUBP_BLAS", "").strip().lower()
    if asked and asked not in LIBRARIES:
        warnings.warn(f"GPUBP_BLAS={asked!r} is not one of {list(LIBRARIES)}; choosing the default", RuntimeWarning,
                      stacklevel=2)
        asked = ""
    if asked == "mkl":
        mkl = load_mkl()
        if mkl is not None:
            return mkl
        if asked == "mkl":
            warnings.warn("GPUBP_BLAS=mkl, but oneMKL (libmkl_rt) is not installed: pip install 'gpubp[mkl]'; "
                          "using NumPy's OpenBLAS", RuntimeWarning, stacklevel=2)
    return load_openblas()


#: The CBLAS serving the step's GEMMs, or None (``numpy.matmul`` for every GEMM).
LIBRARY = _choose()
#: True when a CBLAS gemm is callable directly (the weight-gradient GEMM and the fused SGD step use it).
AVAILABLE = LIBRARY is not None
#: True when every GEMM of a step goes to :data:`LIBRARY` (oneMKL), not only the weight gradient.
SERVES_ALL_GEMMS = AVAILABLE and LIBRARY.name == "mkl"
_JITTED = {}
_LOADERS = {}


def use(name):
    """Serve the CPU step's GEMMs with ``"openblas"``, ``"mkl"`` or ``"numpy"`` (``matmul`` only) from now on
    in this process, as ``GPUBP_BLAS`` does at start (for comparisons in one process; results then differ
    from the other library's by rounding). Raises ValueError for an unknown or uninstalled library."""
    global LIBRARY, AVAILABLE, SERVES_ALL_GEMMS
    if name not in LIBRARIES + ("numpy",):
        raise ValueError(f"unknown BLAS {name!r}; expected one of {list(LIBRARIES) + ['numpy']}")
    library = None
    if name != "numpy":
        if name not in _LOADERS:
            _LOADERS[name] = load_mkl() if name == "mkl" else load_openblas()
        library = _LOADERS[name]
        if library is None:
            raise ValueError(f"{name} has no ILP64 CBLAS gemm here" + (" (pip install 'gpubp[mkl]')"
                                                                       if name == "mkl" else ""))
    LIBRARY, AVAILABLE, SERVES_ALL_GEMMS = library, library is not None, name == "mkl"


def name():
    """``"mkl"``, ``"openblas"`` or ``"numpy"`` (no direct CBLAS: ``matmul`` for every GEMM)."""
    return LIBRARY.name if AVAILABLE else "numpy"


def num_threads():
    """Threads of the library serving the step's GEMMs (of NumPy's OpenBLAS without one), or None."""
    if AVAILABLE:
        return LIBRARY.num_threads()
    openblas = load_openblas()
    return None if openblas is None else openblas.num_threads()


def _jitted(dtype):
    """A numba wrapper around the ctypes gemm: no per-call Python objects, about 1 us of overhead.

    Compiled at first use in each process (numba cannot cache code that holds a
    ctypes function pointer): about 0.4 s per dtype.
    """
    key = (LIBRARY.name, dtype)
    fn = _JITTED.get(key)
    if fn is None:
        import numba

        gemm = LIBRARY.gemm[dtype]

        @numba.njit(nogil=True)
        def call(a, b, c, trans_a, trans_b, alpha, beta):
            M, N = c.shape
            K = a.shape[0] if trans_a else a.shape[1]
            gemm(_ROW_MAJOR, _TRANS if trans_a else _NO_TRANS, _TRANS if trans_b else _NO_TRANS, M, N, K, alpha,
                 a.ctypes.data, a.strides[0] // a.itemsize, b.ctypes.data, b.strides[0] // b.itemsize, beta,
                 c.ctypes.data, N)

        fn = _JITTED[key] = call
    return fn


def _unit_inner_stride(a):
    return a.ndim == 2 and a.strides[1] == a.itemsize and a.strides[0] % a.itemsize == 0 \
        and a.strides[0] >= a.shape[1] * a.itemsize


def gemm_(a, b, c, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """``c = alpha op(a) @ op(b) + beta c`` in place, op = transpose where asked; c (M, N), one float dtype.

    Returns False (and does nothing) when no CBLAS is available, the arrays are
    not row-major with unit inner stride, or an operand is empty; the caller
    then falls back to ``matmul``.
    """
    dtype = c.dtype
    if (not AVAILABLE or dtype not in LIBRARY.gemm or a.dtype != dtype or b.dtype != dtype
            or not c.flags.c_contiguous or not (_unit_inner_stride(a) and _unit_inner_stride(b)) or a.size == 0
            or c.size == 0):
        return False
    _jitted(dtype)(a, b, c, bool(trans_a), bool(trans_b), alpha, beta)
    return True


def gemm_at_b_(a, b, c, alpha, beta):
    """``c = alpha * a^T @ b + beta * c`` in place; a (K, M), b (K, N), c (M, N) (see :func:`gemm_`)."""
    return gemm_(a, b, c, True, False, alpha, beta)
