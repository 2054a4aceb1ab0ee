# Scalar activations shared by the fused step kernels (ntm_step.pyx,
# dnc_step.pyx): σ and softplus from libm's exp, and the vectorisable σ and
# tanh built on the arithmetic expm1 of addressing.pxd.  All inline, in double.

from libc.math cimport exp, fabs, log1p
from libc.stdint cimport uint64_t

from dmem._kernels.addressing cimport _expm1_scaled, _from_bits, _to_bits


cdef inline double _sigmoid(double x) noexcept nogil:
    """σ(x), from exp(-|x|) (no overflow)."""
    cdef double e
    if x >= 0.0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


cdef inline double _softplus_sigmoid(double x, double* sig) noexcept nogil:
    """softplus(x) = max(x, 0) + log1p(exp(-|x|)), and σ(x) into ``sig`` (one exp)."""
    cdef double e
    if x >= 0.0:
        e = exp(-x)
        sig[0] = 1.0 / (1.0 + e)
        return x + log1p(e)
    e = exp(x)
    sig[0] = e / (1.0 + e)
    return log1p(e)


# ---------------------------------------------------------------- σ and tanh, vectorisable
#
# libm's tanh and exp are calls the compiler cannot vectorise; these use the
# arithmetic expm1 of addressing.pxd, accurate to 2 ulp, for loops over whole
# rows of gates.  Arguments must lie in [-354, 354] (the callers clamp; σ and
# tanh are then 0, 1 or ±1 to double precision, up to σ(-354) ≈ 2e-154 in
# place of a smaller number).

cdef inline double _sigmoid_clamped(double a) noexcept nogil:
    """σ(a) = (1 if a ≥ 0 else e) / (1 + e), e = exp(−|a|); |a| ≤ 354."""
    cdef double scale
    cdef uint64_t underflow
    cdef double q = _expm1_scaled(-fabs(a), &scale, &underflow)
    cdef double e = scale + scale * q
    cdef uint64_t negative = 0 - (_to_bits(a) >> 63)
    return _from_bits((_to_bits(1.0) & ~negative) | (_to_bits(e) & negative)) / (1.0 + e)


cdef inline double _tanh_clamped(double a) noexcept nogil:
    """tanh(a) = sign(a) · (−m) / (2 + m), m = expm1(−2|a|); |a| ≤ 354."""
    cdef double scale
    cdef uint64_t underflow
    cdef double q = _expm1_scaled(-2.0 * fabs(a), &scale, &underflow)
    cdef double m = scale * q + (scale - 1.0)
    cdef double r = (0.0 - m) / (2.0 + m)
    return _from_bits(_to_bits(r) | (_to_bits(a) & 0x8000000000000000ULL))


cdef inline double _clamp(double x) noexcept nogil:
    """``x`` limited to [-354, 354] (NaN stays NaN)."""
    if x > 354.0:
        return 354.0
    if x < -354.0:
        return -354.0
    return x
