"""Host kernels used by every backend: a batch validated while it is copied, in one pass.

User data arrives as host arrays. Checking it for NaN/Inf and for values a
float32 cannot hold, casting it, standardising it and copying it into the
buffer the device will read are one pass over memory here, instead of one
NumPy pass each (on a 2-core CPU the passes also run beside OpenBLAS threads
still spinning from the last step, which slows every extra pass).
"""

import numba
import numpy as np

__all__ = ["FAST_DTYPES", "copy_rows_checked"]

#: Source dtypes with a compiled fast path; others take NumPy's passes.
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
def _copy_rows_checked(src, dst, limit, shift, scale):
    bad_rows = 0
    for i in range(src.shape[0]):
        bad = 0
        for j in range(src.shape[1]):
            v = src[i, j]
            w = (dst.dtype.type(v) - shift[j]) / scale[j]
            bad += 0 if abs(v) <= limit else 1  # False for NaN, Inf and |v| > limit
            bad += 0 if abs(w) <= limit else 1  # the standardised value, too
            dst[i, j] = w
        bad_rows += 1 if bad else 0
    return bad_rows


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
def _copy_rows_checked_unscaled(src, dst, limit):
    bad_rows = 0
    for i in range(src.shape[0]):
        bad = 0
        for j in range(src.shape[1]):
            v = src[i, j]
            bad += 0 if abs(v) <= limit else 1
            dst[i, j] = v
        bad_rows += 1 if bad else 0
    return bad_rows


def copy_rows_checked(src, dst, shift=None, scale=None):
    """``dst[:] = (src - shift) / scale`` (or ``src``) cast to dst's dtype, in one pass; returns the
    number of rows holding NaN/Inf or values beyond dst's dtype's largest finite value, before or
    after standardising.

    src: (n, f) float32/float64; dst: (n, f) C-contiguous float32/float64;
    shift, scale: (f,) of dst's dtype. The arithmetic is dst's dtype, as
    ``(src.astype(dst.dtype) - shift) / scale`` in NumPy.
    """
    limit = src.dtype.type(min(np.finfo(src.dtype).max, np.finfo(dst.dtype).max))
    if shift is None:
        return int(_copy_rows_checked_unscaled(src, dst, limit))
    return int(_copy_rows_checked(src, dst, limit, shift, scale))
