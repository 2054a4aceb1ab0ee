# What the NTM addressing kernels share with the fused NTM step
# (dmem/_kernels/ntm_step.pyx): vectorisable exp and log and the softmax built
# on them (defined here, inline), and the per-head shift and sharpening helpers
# (defined and documented in addressing.pyx).  Each works on one head of one
# batch row, keeps its intermediates in double, and is called from nogil code
# on arrays already validated by the caller.  The per-row content weighting and
# its backward are also declared here, for the fused DNC step (dnc_step.pyx).
# The loops behind the helpers are C (addressing_simd.h, baseline and AVX2/FMA
# versions, chosen at run time); the exp and log below remain for ntm_step.pyx.

from cython cimport floating
from libc.stdint cimport uint64_t


# ---------------------------------------------------------------- elementary functions
#
# exp and log as plain arithmetic, for loops the compiler vectorises (libm's
# are calls it cannot): Cody-Waite argument reduction, polynomials, and the
# power of two read from or written to the exponent bits.  Accurate to 1-2 ulp
# over the stated domains; shared by the addressing kernels and the fused NTM
# step (ntm_step.pyx).

cdef union _bits:
    double d
    uint64_t u


cdef inline double _from_bits(uint64_t u) noexcept nogil:
    cdef _bits b
    b.u = u
    return b.d


cdef inline uint64_t _to_bits(double d) noexcept nogil:
    cdef _bits b
    b.d = d
    return b.u


cdef inline double _expm1_scaled(double x, double* scale, uint64_t* underflow) noexcept nogil:
    """``q`` with ``exp(x) = s (1 + q)``, ``expm1(x) = s q + (s − 1)``, ``s = 2^k`` into
    ``scale``, for ``x`` in [-1000, 709].  ``underflow`` is all ones when
    ``k < −1022`` (``x`` below about −708.4, where ``s`` is not a normal number)
    and 0 otherwise.  ``|r| ≤ ln2/2`` after the reduction; the degree-13 Taylor
    polynomial of expm1 (Estrin's scheme) is exact to 2^-60 there."""
    cdef double t, kd, r, r2, r4
    t = x * 1.44269504088896338700e+00 + 6755399441055744.0   # 1.5·2^52: round(x/ln2) in the low bits
    kd = t - 6755399441055744.0
    scale[0] = _from_bits((_to_bits(t) + 1023) << 52)
    underflow[0] = 0 - ((_to_bits(t) - 0x4338000000000000ULL + 1022) >> 63)
    r = (x - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10
    r2 = r * r
    r4 = r2 * r2
    return r + r2 * ((0.5 + r * (1.0 / 6.0)) + r2 * (1.0 / 24.0 + r * (1.0 / 120.0))
                     + r4 * ((1.0 / 720.0 + r * (1.0 / 5040.0))
                             + r2 * (1.0 / 40320.0 + r * (1.0 / 362880.0)))
                     + (r4 * r4) * ((1.0 / 3628800.0 + r * (1.0 / 39916800.0))
                                    + r2 * (1.0 / 479001600.0 + r * (1.0 / 6227020800.0))))


cdef inline double _exp_nonpositive(double x) noexcept nogil:
    """exp(x) for ``x`` in [-1000, 0] (or NaN): 0 below about −708.4, where libm gives a
    subnormal number or 0."""
    cdef double scale
    cdef uint64_t underflow
    cdef double q = _expm1_scaled(x, &scale, &underflow)
    return _from_bits(_to_bits(scale + scale * q) & ~underflow) + (x - x)


cdef inline double _log_normal(double x) noexcept nogil:
    """log(x) for positive normal ``x`` (fdlibm's e_log.c polynomial; the reduction to
    [√2/2, √2) of musl's, in integer arithmetic)."""
    cdef uint64_t b = _to_bits(x) + 0x00095f6200000000ULL
    cdef double m = _from_bits((b & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL)
    cdef double dk = (_from_bits((b >> 52) | 0x4330000000000000ULL) - 4503599627370496.0) - 1023.0
    cdef double f = m - 1.0
    cdef double hfsq = 0.5 * f * f
    cdef double s = f / (2.0 + f)
    cdef double z = s * s
    cdef double w = z * z
    cdef double R = (z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                          + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
                     + w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                            + w * 1.531383769920937332e-01)))
    return dk * 6.93147180369123816490e-01 - ((hfsq - (s * (hfsq + R) + dk * 1.90821492927058770002e-10)) - f)


cdef inline void _softmax(double* z, Py_ssize_t n) noexcept nogil:
    """Softmax of ``z[:n]`` in place, the maximum subtracted first."""
    cdef Py_ssize_t i
    cdef double top = z[0]
    cdef double bottom = z[0]
    cdef double t0 = 0.0
    cdef double t1 = 0.0
    cdef double t2 = 0.0
    cdef double t3 = 0.0
    cdef double inverse
    for i in range(1, n):
        if z[i] > top:
            top = z[i]
        if z[i] < bottom:
            bottom = z[i]
    if bottom - top >= -1000.0:
        for i in range(n):
            z[i] = z[i] - top
    else:
        for i in range(n):
            z[i] = z[i] - top
            if z[i] < -1000.0:
                z[i] = -1000.0
    for i in range(n):
        z[i] = _exp_nonpositive(z[i])
    i = 0
    while i + 4 <= n:
        t0 = t0 + z[i]
        t1 = t1 + z[i + 1]
        t2 = t2 + z[i + 2]
        t3 = t3 + z[i + 3]
        i = i + 4
    while i < n:
        t0 = t0 + z[i]
        i = i + 1
    inverse = 1.0 / ((t0 + t1) + (t2 + t3))
    for i in range(n):
        z[i] = z[i] * inverse


# ---------------------------------------------------------------- per-head helpers

cdef void _shift_forward(const double* weights, const double* shifts, double* out,
                         Py_ssize_t N, Py_ssize_t S) noexcept nogil

cdef void _shift_backward(const double* weights, const double* shifts,
                          const double* grad_out, double* grad_weights,
                          double* grad_shifts, Py_ssize_t N, Py_ssize_t S) noexcept nogil

cdef void _sharpen_forward(const double* weights, double gamma, double* log_weights,
                           double* out, Py_ssize_t N) noexcept nogil

cdef double _sharpen_backward(const double* weights, const floating* out,
                              const double* log_weights, double gamma,
                              const double* grad_out, double* grad_weights,
                              Py_ssize_t N) noexcept nogil

cdef void _content_weights_row(const floating* memory, const floating* keys,
                               const floating* strengths, floating* weights,
                               floating* cosines, floating* memory_norms, floating* key_norms,
                               double* work, Py_ssize_t H, Py_ssize_t N,
                               Py_ssize_t W) noexcept nogil

cdef void _content_weights_backward_row(const floating* memory, const floating* keys,
                                        const floating* strengths, const floating* weights,
                                        const floating* cosines, const floating* memory_norms,
                                        const floating* key_norms, const floating* grad,
                                        floating* grad_memory, floating* grad_keys,
                                        floating* grad_strengths, double* work,
                                        Py_ssize_t H, Py_ssize_t N,
                                        Py_ssize_t W) noexcept nogil
