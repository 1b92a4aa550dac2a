"""Direct CBLAS ``?gemm`` calls into the OpenBLAS that NumPy ships, for GEMMs NumPy cannot express.

``numpy.matmul`` always computes ``C = A @ B``; the fused SGD step needs
``C = alpha * A^T B + beta * C`` (BLAS's own form), which lets the weight
gradient land directly in the weights: ``W = (1 - lr*wd) W - lr * x^T delta``.
The library is located next to NumPy (``numpy.libs``/``.dylibs``) and only its
ILP64 CBLAS entry points (64-bit integers) are used; when none is found (a
NumPy built against another BLAS), :data:`AVAILABLE` is False and callers fall
back to ``matmul`` plus a separate update pass.
"""

from __future__ import annotations

import ctypes
import glob
import os

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SYMBOLS = {  # (single, double) entry points, all with 64-bit BLAS integers
    "scipy": ("scipy_cblas_sgemm64_", "scipy_cblas_dgemm64_"),
    "openblas64": ("cblas_sgemm64_", "cblas_dgemm64_"),
}


_POINTER = ctypes.c_size_t  # pointers as integers, so numba passes ``array.ctypes.data`` as is


def _prototype(real):
    return ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_int64, real, _POINTER, ctypes.c_int64, _POINTER, ctypes.c_int64, real,
                            _POINTER, ctypes.c_int64)


def _load():
    """``{dtype: ctypes gemm}`` from NumPy's OpenBLAS, or {} when it has no ILP64 CBLAS."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    candidates = []
    for folder in ("numpy.libs", os.path.join("numpy", ".dylibs")):
        candidates += glob.glob(os.path.join(root, folder, "*openblas*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for single, double in _SYMBOLS.values():
            try:
                addresses = (ctypes.cast(getattr(lib, single), ctypes.c_void_p).value,
                             ctypes.cast(getattr(lib, double), ctypes.c_void_p).value)
            except AttributeError:
                continue
            return {np.dtype(np.float32): _prototype(ctypes.c_float)(addresses[0]),
                    np.dtype(np.float64): _prototype(ctypes.c_double)(addresses[1])}
    return {}


_CBLAS = {} if os.environ.get("GPUBP_DISABLE_CBLAS") else _load()


def num_threads():
    """Threads of NumPy's OpenBLAS, or None when it cannot be asked."""
    root = os.path.dirname(os.path.dirname(np.__file__))
    for path in glob.glob(os.path.join(root, "numpy.libs", "*openblas*")):
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            try:
                return int(getattr(ctypes.CDLL(path), name)())
            except (OSError, AttributeError):
                continue
    return None
#: True when NumPy's OpenBLAS answered with its CBLAS gemm entry points.
AVAILABLE = bool(_CBLAS)
_JITTED = {}


def _jitted(dtype):
    """A numba wrapper around the ctypes gemm: no per-call Python objects, about 1 us of overhead.

    Compiled at first use in each process (numba cannot cache code that holds a
    ctypes function pointer): about 0.4 s per dtype.
    """
    fn = _JITTED.get(dtype)
    if fn is None:
        import numba

        gemm = _CBLAS[dtype]

        @numba.njit(nogil=True)
        def at_b(a, b, c, alpha, beta):
            K, M = a.shape
            N = b.shape[1]
            gemm(_ROW_MAJOR, _TRANS, _NO_TRANS, M, N, K, alpha, a.ctypes.data, a.strides[0] // a.itemsize,
                 b.ctypes.data, b.strides[0] // b.itemsize, beta, c.ctypes.data, N)

        fn = _JITTED[dtype] = at_b
    return fn


def _unit_inner_stride(a):
    return a.ndim == 2 and a.strides[1] == a.itemsize and a.strides[0] % a.itemsize == 0 \
        and a.strides[0] >= a.shape[1] * a.itemsize


def gemm_at_b_(a, b, c, alpha, beta):
    """``c = alpha * a^T @ b + beta * c`` in place; a (K, M), b (K, N), c (M, N), one float dtype.

    Returns False (and does nothing) when no CBLAS is available or the arrays
    are not row-major with unit inner stride; the caller then falls back.
    """
    dtype = a.dtype
    if (dtype not in _CBLAS or b.dtype != dtype or c.dtype != dtype or not c.flags.c_contiguous
            or not (_unit_inner_stride(a) and _unit_inner_stride(b)) or a.shape[0] == 0 or c.size == 0):
        return False
    _jitted(dtype)(a, b, c, alpha, beta)
    return True
