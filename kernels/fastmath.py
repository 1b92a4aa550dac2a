"""Scalar math helpers for the numba CPU kernels.

``fast_exp(x)`` and ``fast_tanh(x)`` are resolved at compile time on the
argument type:

* float32 -> a branch-free polynomial exp that LLVM can vectorize (pip's
  llvmlite ships without SVML, so ``math.exp`` would be a scalar libm call);
* float64 (and anything else) -> ``math.exp`` / ``math.tanh`` (full float64
  accuracy).

The float32 version clamps x to [-87.336, 88.376] (the range whose result
is a normal float32), so it never returns 0 or inf: exp(-1e4) gives about
1.2e-38 and exp(1e4) about 2.4e38. NaN propagates. The maximum relative
error is about 2 ulp on the clamped range.

``as_dtype_of(value, like)`` casts a Python scalar to the dtype of an array
(or scalar) so float32 kernels keep float32 arithmetic.
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.np.numpy_support import as_dtype
from numba.extending import intrinsic, overload

__all__ = ["fast_exp", "fast_tanh", "as_dtype_of"]

_LOG2E = 1.4426950408889634
# Cody-Waite split of ln 2: _LN2_HI has few mantissa bits so n * _LN2_HI is
# exact for |n| <= 128.
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_ROUND_MAGIC = 12582912.0
_ROUND_MAGIC_BITS = 0x4B400000
_EXP32_LO = -87.33654
_EXP32_HI = 88.37626


@intrinsic
def _round_to_int32(typingctx, t):
    """Round a float32 |t| < 2**22 to the nearest int32 (ties to even).

    Adding 1.5 * 2**23 pushes the rounded integer into the low mantissa bits;
    the bit pattern is read back through a bitcast, which fast-math
    reassociation cannot fold away.
    """
    if t != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        shifted = builder.fadd(args[0], ir.Constant(ir.FloatType(), _ROUND_MAGIC))
        bits = builder.bitcast(shifted, i32)
        return builder.sub(bits, ir.Constant(i32, _ROUND_MAGIC_BITS))

    return types.int32(types.float32), codegen


@intrinsic
def _pow2_float32(typingctx, n):
    """2.0**n as float32 for an int32 n in [-126, 127], built from its bits."""
    if n != types.int32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        biased = builder.add(args[0], ir.Constant(i32, 127))
        bits = builder.shl(biased, ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _fma32(typingctx, a, b, c):
    """Fused a * b + c in float32 (llvm.fma: exempt from reassociation)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def fast_exp(x):
    """exp(x) for float32 or float64 scalars inside numba kernels."""
    return math.exp(x)


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x == types.float32:
        lo = np.float32(_EXP32_LO)
        hi = np.float32(_EXP32_HI)
        log2e = np.float32(_LOG2E)
        neg_ln2_hi = np.float32(-_LN2_HI)
        neg_ln2_lo = np.float32(-_LN2_LO)
        one = np.float32(1.0)
        # Cephes expf minimax coefficients for exp(r) on |r| <= ln2/2.
        p0 = np.float32(1.9875691500e-4)
        p1 = np.float32(1.3981999507e-3)
        p2 = np.float32(8.3334519073e-3)
        p3 = np.float32(4.1665795894e-2)
        p4 = np.float32(1.6666665459e-1)
        p5 = np.float32(5.0000001201e-1)

        def exp_float32(x):
            # Comparisons written so that a NaN x falls through unchanged.
            x = hi if x > hi else x
            x = lo if x < lo else x
            n = _round_to_int32(x * log2e)
            n_float = np.float32(n)
            r = _fma32(n_float, neg_ln2_hi, x)
            r = _fma32(n_float, neg_ln2_lo, r)
            p = p0 * r + p1
            p = p * r + p2
            p = p * r + p3
            p = p * r + p4
            p = p * r + p5
            p = p * (r * r) + r + one
            scale = _pow2_float32(n)
            return p * scale

        return exp_float32

    if isinstance(x, types.Float):
        def exp_float64(x):
            return math.exp(x)

        return exp_float64
    return None


_TANH32_SMALL = 0.625


def fast_tanh(x):
    """tanh(x) for float32 or float64 scalars inside numba kernels."""
    return math.tanh(x)


@overload(fast_tanh, inline="always")
def _fast_tanh_overload(x):
    if x == types.float32:
        small = np.float32(_TANH32_SMALL)
        one = np.float32(1.0)
        two = np.float32(2.0)
        # Cephes tanhf odd minimax polynomial for |x| < 0.625.
        q0 = np.float32(-5.70498872745e-3)
        q1 = np.float32(2.06390887954e-2)
        q2 = np.float32(-5.37397155531e-2)
        q3 = np.float32(1.33314422036e-1)
        q4 = np.float32(-3.33332819422e-1)

        def tanh_float32(x):
            a = abs(x)
            a2 = a * a
            q = q0 * a2 + q1
            q = q * a2 + q2
            q = q * a2 + q3
            q = q * a2 + q4
            near_zero = q * a2 * a + a
            # 1 - 2 / (exp(2a) + 1); exp saturates at ~2.4e38, giving exactly 1.
            far = one - two / (fast_exp(two * a) + one)
            t = near_zero if a < small else far
            return t if x >= 0 else -t

        return tanh_float32

    if isinstance(x, types.Float):
        def tanh_float64(x):
            return math.tanh(x)

        return tanh_float64
    return None


def as_dtype_of(value, like):
    """Cast the scalar ``value`` to the dtype of the array or scalar ``like``."""
    return value


@overload(as_dtype_of, inline="always")
def _as_dtype_of_overload(value, like):
    target = like.dtype if isinstance(like, types.Array) else like
    scalar_type = as_dtype(target).type

    def cast(value, like):
        return scalar_type(value)

    return cast
