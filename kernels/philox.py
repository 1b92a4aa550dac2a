"""Philox4x32-10, the counter-based random generator of Salmon et al. (SC'11, "Random123"), in plain scalar code.

``philox4x32(c0, c1, c2, c3, k0, k1)`` maps a 128-bit counter and a 64-bit
key, each given as 32-bit words held in unsigned 64-bit integers, to four
random 32-bit words. It is a pure function: the same counter and key give the
same words on every device, in any order and on any number of threads, so a
random stream needs no state, only a counter (cuRAND's and PyTorch's GPU
generators are Philox4x32-10 too).

Written once and compiled by ``numba.njit`` (``gpubp.kernels.cpu``) and
``numba.cuda.jit(device=True)`` (``gpubp.kernels.cuda``); Numba's CUDA
simulator and the NumPy reference run it as Python, on NumPy ``uint64``
scalars or arrays. Every operand is an unsigned 64-bit value below 2**32
before each multiplication, so no product overflows (a 32x32-bit product fits
in 64 bits) and no literal changes the integer type: the constants are
``numpy.uint64`` module values.
"""

import numpy as np

PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = np.uint64(0x9E3779B9)
PHILOX_W1 = np.uint64(0xBB67AE85)
LOW32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)


def philox4x32(c0, c1, c2, c3, k0, k1):
    """Ten Philox rounds on the counter ``(c0, c1, c2, c3)`` with the key ``(k0, k1)``; four 32-bit words."""
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> SHIFT32) ^ c1 ^ k0, p1 & LOW32, (p0 >> SHIFT32) ^ c3 ^ k1, p0 & LOW32
        k0 = (k0 + PHILOX_W0) & LOW32
        k1 = (k1 + PHILOX_W1) & LOW32
    return c0, c1, c2, c3


def dropout_threshold(rate):
    """The uint64 ``floor(rate * 2**32)``: an element is kept when its random word is at least this."""
    return np.uint64(min(int(rate * 2 ** 32), 2 ** 32 - 1))
