"""NTM addressing kernels: content weights, shift, sharpen and the fused head step.

Forward and hand-written backward passes of the ops ``content_weights``,
``shift``, ``sharpen`` and ``ntm_address`` (see ``dmem/_opspec.py`` and
``DESIGN.md``).  The arrays come validated from ``dmem/compiled/addressing.py``
(C-contiguous, one float dtype, sizes agreeing); nothing here checks them.

Layout of the work: each batch row ``b`` is computed by one thread (``prange``
over ``B``), heads and slots in a fixed order, so the results do not depend on
the thread count.  Every row works on its own row of a ``double`` work array
given by the wrapper: intermediate quantities are kept in double precision
whatever the dtype of the inputs.  The per-head helpers below are shared by the
separate ops and the fused ``ntm_address``, so that the fused kernel computes
what the chain of separate kernels computes; the shift and sharpening helpers
also by the fused NTM step (``ntm_step.pyx``), and the per-row content
weighting by the fused DNC step (``dnc_step.pyx``), through ``addressing.pxd``.
Several heads of a batch row share one pass over memory in the content
weighting's backward (scratch from ``malloc``; without it, one pass per head).

Instruction sets: the loops of the helpers (the content weighting's passes over
memory, softmax, shift, the sharpening's log and softmax, their backward
passes) are C, in ``addressing_simd.h``, compiled for the build's baseline ISA
(SSE2 on x86-64) and, on x86, also for AVX2/FMA and for AVX-512; the widest
the CPU has runs (:func:`simd_level`).  They round differently, each
deterministically; all are tested against the reference.

Backward passes divide only by the ``√(x·x + ε)`` norms (≥ 1e-3) and, in the
sharpening, by ``w_i + ε`` where the output ``out_i`` is positive (which
implies ``w_i + ε > 0``; the quotient ``out_i / (w_i+ε)`` is at most 1e12).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport free, malloc

from dmem._kernels import _simd

# ---------------------------------------------------------------- content helpers
#
# The loops over memory of the content weighting are C, in addressing_simd.h: rows
# four at a time, one vector of the word at a time, in a baseline version, an
# AVX2/FMA one and an AVX-512 one, the widest the CPU has chosen at import
# (:func:`simd_level`).

cdef extern from "addressing_simd.h" nogil:
    double dmem_content_forward_d(const double* memory, double* norms, int first,
                                  const double* key, double strength, double* cosines,
                                  double* z, Py_ssize_t n, Py_ssize_t w)
    double dmem_content_forward_f(const float* memory, double* norms, int first,
                                  const float* key, double strength, float* cosines,
                                  double* z, Py_ssize_t n, Py_ssize_t w)
    double dmem_content_backward_d(const double* memory, const double* memory_norms,
                                   const double* key, double key_norm, double strength,
                                   const double* cosines, const double* weights,
                                   const double* grad, int first, double* grad_memory,
                                   double* grad_key, double* row_key, double* row_memory,
                                   double* acc, Py_ssize_t n, Py_ssize_t w)
    double dmem_content_backward_f(const float* memory, const float* memory_norms,
                                   const float* key, double key_norm, double strength,
                                   const float* cosines, const float* weights,
                                   const double* grad, int first, float* grad_memory,
                                   float* grad_key, double* row_key, double* row_memory,
                                   double* acc, Py_ssize_t n, Py_ssize_t w)
    void dmem_sharpen_forward(const double* weights, double gamma, double* log_weights,
                              double* out, Py_ssize_t n)
    int dmem_content_backward_heads_d(const double* memory, const double* memory_norms,
                                      const double* keys, const double* key_norms,
                                      const double* strengths, const double* cosines,
                                      const double* weights, const double* grad,
                                      const double* grad_double,
                                      double* grad_memory, double* grad_keys,
                                      double* grad_strengths, Py_ssize_t h, Py_ssize_t n,
                                      Py_ssize_t w)
    int dmem_content_backward_heads_f(const float* memory, const float* memory_norms,
                                      const float* keys, const float* key_norms,
                                      const float* strengths, const float* cosines,
                                      const float* weights, const float* grad,
                                      const double* grad_double,
                                      float* grad_memory, float* grad_keys,
                                      float* grad_strengths, Py_ssize_t h, Py_ssize_t n,
                                      Py_ssize_t w)
    void dmem_shift_forward(const double* weights, const double* shifts, double* out,
                            Py_ssize_t n, Py_ssize_t S)
    void dmem_shift_backward(const double* weights, const double* shifts,
                             const double* grad_out, double* grad_weights,
                             double* grad_shifts, Py_ssize_t n, Py_ssize_t S)
    double dmem_sharpen_backward_d(const double* weights, const double* out,
                                   const double* log_weights, double gamma,
                                   const double* grad_out, double* grad_weights, Py_ssize_t n)
    double dmem_sharpen_backward_f(const double* weights, const float* out,
                                   const double* log_weights, double gamma,
                                   const double* grad_out, double* grad_weights, Py_ssize_t n)
    int dmem_addressing_simd_supported()
    int dmem_addressing_set_simd(int level)
    int dmem_addressing_get_simd()


dmem_addressing_set_simd(2)  # the widest this CPU has


def _simd_query(level=None):
    """Set the level of the addressing loops (when given); (in force, widest supported)."""
    if level is not None:
        dmem_addressing_set_simd(level)
    return dmem_addressing_get_simd(), dmem_addressing_simd_supported()


SIMD_LEVELS = _simd.SIMD_LEVELS
simd_level, simd_levels_supported, _set_simd = _simd.functions(_simd_query, "addressing")


cdef inline double _content_head(const floating* memory, double* memory_norms, bint first,
                                 const floating* key, double strength,
                                 floating* cosines, double* weights,
                                 Py_ssize_t N, Py_ssize_t W) noexcept nogil:
    """One head's content weighting: ``weights = softmax(β cos(k, M_i))``.

    When ``first`` (the first head of a batch row) it also computes the memory
    norms ``√(M_i·M_i + ε)`` into ``memory_norms``, in the same pass over the
    memory as the dot products; later heads read them.  Writes the
    similarities to ``cosines`` (saved for the backward) and returns the key
    norm ``√(k·k + ε)``.  Each row's sums run over the word in a fixed order
    (``addressing_simd.h``), so a row's values do not depend on its position.
    """
    cdef double key_norm
    if floating is double:
        key_norm = dmem_content_forward_d(memory, memory_norms, first, key, strength,
                                          cosines, weights, N, W)
    else:
        key_norm = dmem_content_forward_f(memory, memory_norms, first, key, strength,
                                          cosines, weights, N, W)
    return key_norm


cdef inline double _content_head_backward(const floating* memory, const floating* memory_norms,
                                          const floating* key, double key_norm, double strength,
                                          const floating* cosines, const floating* weights,
                                          const double* grad_weights, bint first,
                                          floating* grad_memory, floating* grad_key,
                                          double* row_key, double* row_memory,
                                          double* grad_key_acc,
                                          Py_ssize_t N, Py_ssize_t W) noexcept nogil:
    """Backward of :func:`_content_head` for one head; return dL/dβ.

    Writes (``first``) or adds (later heads) this head's part of dL/dM to
    ``grad_memory`` and writes dL/dk.  With ``c_i = k·M_i / (|k| |M_i|)``
    (ε-norms), ``dc_i/dk = M_i / (|k||M_i|) - c_i k / |k|²`` and
    ``dc_i/dM_i = k / (|k||M_i|) - c_i M_i / |M_i|²``; the norms are at least
    √ε = 1e-3, so their inverses are finite.  ``row_key``, ``row_memory`` (N)
    and ``grad_key_acc`` (W) are scratch: the per-row factors of ``M_i`` in
    dL/dk and of ``k`` and ``M_i`` in dL/dM_i.  One pass over the memory forms
    dL/dM and accumulates dL/dk (``addressing_simd.h``).
    """
    if floating is double:
        return dmem_content_backward_d(memory, memory_norms, key, key_norm, strength, cosines,
                                       weights, grad_weights, first, grad_memory, grad_key,
                                       row_key, row_memory, grad_key_acc, N, W)
    else:
        return dmem_content_backward_f(memory, memory_norms, key, key_norm, strength, cosines,
                                       weights, grad_weights, first, grad_memory, grad_key,
                                       row_key, row_memory, grad_key_acc, N, W)


cdef inline double _sum_products(const double* a, const double* b, Py_ssize_t n) noexcept nogil:
    """``Σ_i a_i b_i`` with four partial sums (a fixed order, and no chain of
    ``n`` dependent additions)."""
    cdef double s0 = 0.0
    cdef double s1 = 0.0
    cdef double s2 = 0.0
    cdef double s3 = 0.0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        s0 = s0 + a[i] * b[i]
        s1 = s1 + a[i + 1] * b[i + 1]
        s2 = s2 + a[i + 2] * b[i + 2]
        s3 = s3 + a[i + 3] * b[i + 3]
        i = i + 4
    while i < n:
        s0 = s0 + a[i] * b[i]
        i = i + 1
    return (s0 + s1) + (s2 + s3)


cdef void _shift_forward(const double* weights, const double* shifts, double* out,
                         Py_ssize_t N, Py_ssize_t S) noexcept nogil:
    """``out_i = Σ_k s_k w_{(i - (k - r)) mod N}`` (``addressing_simd.h``)."""
    dmem_shift_forward(weights, shifts, out, N, S)


cdef void _shift_backward(const double* weights, const double* shifts,
                          const double* grad_out, double* grad_weights,
                          double* grad_shifts, Py_ssize_t N, Py_ssize_t S) noexcept nogil:
    """Backward of :func:`_shift_forward`: dL/dw into ``grad_weights``, dL/ds into
    ``grad_shifts`` (``addressing_simd.h``)."""
    dmem_shift_backward(weights, shifts, grad_out, grad_weights, grad_shifts, N, S)


cdef void _sharpen_forward(const double* weights, double gamma, double* log_weights,
                           double* out, Py_ssize_t N) noexcept nogil:
    """``out = softmax(γ log(w + ε))``, i.e. ``(w_i+ε)^γ / Σ_j (w_j+ε)^γ``.

    Writes ``log(w+ε)`` to ``log_weights`` (saved for the backward).  The
    logarithm and the softmax's exp are vectorised (``addressing_simd.h``, the
    algorithms of :func:`_log_normal` and :func:`_exp_nonpositive`) unless some
    ``w+ε`` is not a positive normal number (a negative or non-finite weight),
    then the logarithm is libm's.
    """
    dmem_sharpen_forward(weights, gamma, log_weights, out, N)


cdef double _sharpen_backward(const double* weights, const floating* out,
                              const double* log_weights, double gamma,
                              const double* grad_out, double* grad_weights,
                              Py_ssize_t N) noexcept nogil:
    """Backward of :func:`_sharpen_forward` from its output; return dL/dγ.

    With ``ḡ = Σ_j out_j g_j``: ``dL/dγ = Σ_i out_i (g_i - ḡ) log(w_i+ε)`` and
    ``dL/dw_i = γ (g_i - ḡ) out_i / (w_i+ε)``.  The ratio is formed only where
    ``out_i > 0``, which implies ``log(w_i+ε) > -∞``, i.e. ``w_i+ε > 0``; for
    ``w_i ≥ 0`` it is at most ``1/ε = 1e12``.  Elsewhere the ratio is 0 (its
    limit).  The quotient keeps the accuracy of ``out_i``; forming it in log
    space, ``exp((γ-1) log(w_i+ε) - log Σ_j (w_j+ε)^γ)``, loses ``|γ log w|``
    ulps, which large ``γ`` makes visible, and costs an ``exp``.
    """
    if floating is double:
        return dmem_sharpen_backward_d(weights, out, log_weights, gamma, grad_out, grad_weights, N)
    else:
        return dmem_sharpen_backward_f(weights, out, log_weights, gamma, grad_out, grad_weights, N)


cdef bint _JOINT_HEADS = True  # False (tests only): the joint pass reports no scratch


def _set_joint_heads(bint enabled):
    """Tests: with ``False`` the all-heads content backward answers as when its
    scratch cannot be allocated, so that the per-head fallbacks run.  Returns the
    previous setting."""
    global _JOINT_HEADS
    cdef bint previous = _JOINT_HEADS
    _JOINT_HEADS = enabled
    return previous


cdef inline int _content_backward_heads(
        const floating* memory, const floating* memory_norms, const floating* keys,
        const floating* key_norms, const floating* strengths, const floating* cosines,
        const floating* weights, const floating* grad, const double* grad_double,
        floating* grad_memory, floating* grad_keys, floating* grad_strengths,
        Py_ssize_t H, Py_ssize_t N, Py_ssize_t W) noexcept nogil:
    """The content weighting's backward for all ``H`` heads of a row in one pass over
    memory (addressing_simd.h); the cotangent of the weights from ``grad`` or, when
    that is NULL, ``grad_double``.  -1 when its scratch cannot be allocated."""
    if not _JOINT_HEADS:
        return -1
    if floating is double:
        return dmem_content_backward_heads_d(memory, memory_norms, keys, key_norms, strengths,
                                             cosines, weights, grad, grad_double, grad_memory,
                                             grad_keys, grad_strengths, H, N, W)
    else:
        return dmem_content_backward_heads_f(memory, memory_norms, keys, key_norms, strengths,
                                             cosines, weights, grad, grad_double, grad_memory,
                                             grad_keys, grad_strengths, H, N, W)


# ---------------------------------------------------------------- content_weights

cdef void _content_weights_row(const floating* memory, const floating* keys,
                               const floating* strengths, floating* weights,
                               floating* cosines, floating* memory_norms, floating* key_norms,
                               double* work, Py_ssize_t H, Py_ssize_t N,
                               Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double* norms = work
    cdef double* head = work + N
    for h in range(H):
        key_norms[h] = _content_head(memory, norms, h == 0, keys + h * W, strengths[h],
                                     cosines + h * N, head, N, W)
        for i in range(N):
            weights[h * N + i] = head[i]
    for i in range(N):
        memory_norms[i] = norms[i]


def content_weights_forward(const floating[:, :, ::1] memory,
                            const floating[:, :, ::1] keys,
                            const floating[:, ::1] strengths,
                            floating[:, :, ::1] weights,
                            floating[:, :, ::1] cosines,
                            floating[:, ::1] memory_norms,
                            floating[:, ::1] key_norms,
                            double[:, ::1] work,
                            int num_threads):
    """Fill ``weights`` (B,H,N) and the saved ``cosines`` (B,H,N),
    ``memory_norms`` (B,N), ``key_norms`` (B,H).  ``work`` is (B, 2N)."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = keys.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _content_weights_row(&memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0],
                                 &weights[b, 0, 0], &cosines[b, 0, 0], &memory_norms[b, 0],
                                 &key_norms[b, 0], &work[b, 0], H, N, W)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _content_weights_row(&memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0],
                                     &weights[b, 0, 0], &cosines[b, 0, 0], &memory_norms[b, 0],
                                     &key_norms[b, 0], &work[b, 0], H, N, W)


cdef void _content_weights_backward_row(const floating* memory, const floating* keys,
                                        const floating* strengths, const floating* weights,
                                        const floating* cosines, const floating* memory_norms,
                                        const floating* key_norms, const floating* grad,
                                        floating* grad_memory, floating* grad_keys,
                                        floating* grad_strengths, double* work,
                                        Py_ssize_t H, Py_ssize_t N,
                                        Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double* grad_head = work
    cdef double* row_key = work + N
    cdef double* row_memory = work + 2 * N
    cdef double* grad_key_acc = work + 3 * N
    cdef int status
    if H > 1:  # all heads in one pass over memory (addressing_simd.h); -1: no scratch
        status = _content_backward_heads(memory, memory_norms, keys, key_norms, strengths,
                                         cosines, weights, grad, NULL, grad_memory, grad_keys,
                                         grad_strengths, H, N, W)
        if status == 0:
            return
    for h in range(H):
        for i in range(N):
            grad_head[i] = grad[h * N + i]
        grad_strengths[h] = _content_head_backward(
            memory, memory_norms, keys + h * W, key_norms[h], strengths[h],
            cosines + h * N, weights + h * N, grad_head, h == 0,
            grad_memory, grad_keys + h * W, row_key, row_memory, grad_key_acc, N, W)


def content_weights_backward(const floating[:, :, ::1] memory,
                             const floating[:, :, ::1] keys,
                             const floating[:, ::1] strengths,
                             const floating[:, :, ::1] weights,
                             const floating[:, :, ::1] cosines,
                             const floating[:, ::1] memory_norms,
                             const floating[:, ::1] key_norms,
                             const floating[:, :, ::1] grad_weights,
                             floating[:, :, ::1] grad_memory,
                             floating[:, :, ::1] grad_keys,
                             floating[:, ::1] grad_strengths,
                             double[:, ::1] work,
                             int num_threads):
    """Gradients of memory, keys and strengths.  ``work`` is (B, 3N + W)."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = keys.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _content_weights_backward_row(
                &memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0], &weights[b, 0, 0],
                &cosines[b, 0, 0], &memory_norms[b, 0], &key_norms[b, 0], &grad_weights[b, 0, 0],
                &grad_memory[b, 0, 0], &grad_keys[b, 0, 0], &grad_strengths[b, 0],
                &work[b, 0], H, N, W)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _content_weights_backward_row(
                    &memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0], &weights[b, 0, 0],
                    &cosines[b, 0, 0], &memory_norms[b, 0], &key_norms[b, 0],
                    &grad_weights[b, 0, 0],
                    &grad_memory[b, 0, 0], &grad_keys[b, 0, 0], &grad_strengths[b, 0],
                    &work[b, 0], H, N, W)


# ---------------------------------------------------------------- shift

cdef void _shift_row(const floating* weights, const floating* shifts, floating* out,
                     double* work, Py_ssize_t H, Py_ssize_t N, Py_ssize_t S) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double* w = work
    cdef double* o = work + N
    cdef double* s = work + 2 * N
    for h in range(H):
        for i in range(N):
            w[i] = weights[h * N + i]
        for i in range(S):
            s[i] = shifts[h * S + i]
        _shift_forward(w, s, o, N, S)
        for i in range(N):
            out[h * N + i] = o[i]


def shift_forward(const floating[:, :, ::1] weights,
                  const floating[:, :, ::1] shifts,
                  floating[:, :, ::1] out,
                  double[:, ::1] work,
                  int num_threads):
    """Fill ``out`` (B,H,N).  ``work`` is (B, 2N + S)."""
    cdef Py_ssize_t B = weights.shape[0], H = weights.shape[1], N = weights.shape[2]
    cdef Py_ssize_t S = shifts.shape[2]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _shift_row(&weights[b, 0, 0], &shifts[b, 0, 0], &out[b, 0, 0], &work[b, 0], H, N, S)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _shift_row(&weights[b, 0, 0], &shifts[b, 0, 0], &out[b, 0, 0], &work[b, 0], H, N, S)


cdef void _shift_backward_row(const floating* weights, const floating* shifts,
                              const floating* grad, floating* grad_weights,
                              floating* grad_shifts, double* work,
                              Py_ssize_t H, Py_ssize_t N, Py_ssize_t S) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double* w = work
    cdef double* g = work + N
    cdef double* gw = work + 2 * N
    cdef double* s = work + 3 * N
    cdef double* gs = work + 3 * N + S
    for h in range(H):
        for i in range(N):
            w[i] = weights[h * N + i]
            g[i] = grad[h * N + i]
        for i in range(S):
            s[i] = shifts[h * S + i]
        _shift_backward(w, s, g, gw, gs, N, S)
        for i in range(N):
            grad_weights[h * N + i] = gw[i]
        for i in range(S):
            grad_shifts[h * S + i] = gs[i]


def shift_backward(const floating[:, :, ::1] weights,
                   const floating[:, :, ::1] shifts,
                   const floating[:, :, ::1] grad_out,
                   floating[:, :, ::1] grad_weights,
                   floating[:, :, ::1] grad_shifts,
                   double[:, ::1] work,
                   int num_threads):
    """Gradients of weights and shifts.  ``work`` is (B, 3N + 2S)."""
    cdef Py_ssize_t B = weights.shape[0], H = weights.shape[1], N = weights.shape[2]
    cdef Py_ssize_t S = shifts.shape[2]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _shift_backward_row(&weights[b, 0, 0], &shifts[b, 0, 0], &grad_out[b, 0, 0],
                                &grad_weights[b, 0, 0], &grad_shifts[b, 0, 0], &work[b, 0], H, N, S)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _shift_backward_row(&weights[b, 0, 0], &shifts[b, 0, 0], &grad_out[b, 0, 0],
                                    &grad_weights[b, 0, 0], &grad_shifts[b, 0, 0], &work[b, 0],
                                    H, N, S)


# ---------------------------------------------------------------- sharpen

cdef void _sharpen_row(const floating* weights, const floating* gamma, floating* out,
                       double* log_weights, double* work,
                       Py_ssize_t H, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double* w = work
    cdef double* o = work + N
    for h in range(H):
        for i in range(N):
            w[i] = weights[h * N + i]
        _sharpen_forward(w, gamma[h], log_weights + h * N, o, N)
        for i in range(N):
            out[h * N + i] = o[i]


def sharpen_forward(const floating[:, :, ::1] weights,
                    const floating[:, ::1] gamma,
                    floating[:, :, ::1] out,
                    double[:, :, ::1] log_weights,
                    double[:, ::1] work,
                    int num_threads):
    """Fill ``out`` (B,H,N) and the saved ``log_weights`` = log(w+ε) (B,H,N,
    float64).  ``work`` is (B, 2N)."""
    cdef Py_ssize_t B = weights.shape[0], H = weights.shape[1], N = weights.shape[2]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _sharpen_row(&weights[b, 0, 0], &gamma[b, 0], &out[b, 0, 0], &log_weights[b, 0, 0],
                         &work[b, 0], H, N)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _sharpen_row(&weights[b, 0, 0], &gamma[b, 0], &out[b, 0, 0], &log_weights[b, 0, 0],
                             &work[b, 0], H, N)


cdef void _sharpen_backward_row(const floating* weights, const floating* gamma,
                                const floating* out, const double* log_weights,
                                const floating* grad, floating* grad_weights,
                                floating* grad_gamma, double* work,
                                Py_ssize_t H, Py_ssize_t N) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double* w = work
    cdef double* g = work + N
    cdef double* gw = work + 2 * N
    for h in range(H):
        for i in range(N):
            w[i] = weights[h * N + i]
            g[i] = grad[h * N + i]
        grad_gamma[h] = _sharpen_backward(w, out + h * N, log_weights + h * N, gamma[h],
                                          g, gw, N)
        for i in range(N):
            grad_weights[h * N + i] = gw[i]


def sharpen_backward(const floating[:, :, ::1] weights,
                     const floating[:, ::1] gamma,
                     const floating[:, :, ::1] out,
                     const double[:, :, ::1] log_weights,
                     const floating[:, :, ::1] grad_out,
                     floating[:, :, ::1] grad_weights,
                     floating[:, ::1] grad_gamma,
                     double[:, ::1] work,
                     int num_threads):
    """Gradients of weights and gamma from the inputs, the output and the
    log-weights.  ``work`` is (B, 3N)."""
    cdef Py_ssize_t B = out.shape[0], H = out.shape[1], N = out.shape[2]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _sharpen_backward_row(&weights[b, 0, 0], &gamma[b, 0], &out[b, 0, 0],
                                  &log_weights[b, 0, 0], &grad_out[b, 0, 0],
                                  &grad_weights[b, 0, 0], &grad_gamma[b, 0], &work[b, 0], H, N)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _sharpen_backward_row(&weights[b, 0, 0], &gamma[b, 0], &out[b, 0, 0],
                                      &log_weights[b, 0, 0], &grad_out[b, 0, 0],
                                      &grad_weights[b, 0, 0], &grad_gamma[b, 0], &work[b, 0], H, N)


# ---------------------------------------------------------------- ntm_address (fused)

cdef void _ntm_address_row(const floating* memory, const floating* keys,
                           const floating* strengths, const floating* gates,
                           const floating* shifts, const floating* gamma,
                           const floating* weights_prev, floating* out,
                           floating* content, floating* cosines,
                           floating* memory_norms, floating* key_norms,
                           double* log_weights,
                           double* work, Py_ssize_t H, Py_ssize_t N, Py_ssize_t W,
                           Py_ssize_t S) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double g
    cdef double* norms = work
    cdef double* wc = work + N
    cdef double* wg = work + 2 * N
    cdef double* ws = work + 3 * N
    cdef double* s = work + 4 * N
    for h in range(H):
        # content weighting (eq. 5-6), then interpolation (eq. 7)
        key_norms[h] = _content_head(memory, norms, h == 0, keys + h * W, strengths[h],
                                     cosines + h * N, wc, N, W)
        if h == 0:
            for i in range(N):
                memory_norms[i] = norms[i]
        g = gates[h]
        for i in range(N):
            content[h * N + i] = wc[i]
            wg[i] = g * wc[i] + (1.0 - g) * weights_prev[h * N + i]
        # shift (eq. 8), then sharpening (eq. 9)
        for i in range(S):
            s[i] = shifts[h * S + i]
        _shift_forward(wg, s, ws, N, S)
        _sharpen_forward(ws, gamma[h], log_weights + h * N, wc, N)
        for i in range(N):
            out[h * N + i] = wc[i]


def ntm_address_forward(const floating[:, :, ::1] memory,
                        const floating[:, :, ::1] keys,
                        const floating[:, ::1] strengths,
                        const floating[:, ::1] gates,
                        const floating[:, :, ::1] shifts,
                        const floating[:, ::1] gamma,
                        const floating[:, :, ::1] weights_prev,
                        floating[:, :, ::1] out,
                        floating[:, :, ::1] content,
                        floating[:, :, ::1] cosines,
                        floating[:, ::1] memory_norms,
                        floating[:, ::1] key_norms,
                        double[:, :, ::1] log_weights,
                        double[:, ::1] work,
                        int num_threads):
    """Fill ``out`` (B,H,N) and the saved content weighting and cosines (B,H,N),
    ``memory_norms`` (B,N), ``key_norms`` (B,H), and, in float64, the log of the
    shifted weighting plus ε (B,H,N).
    ``work`` is (B, 4N + S)."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = keys.shape[1], S = shifts.shape[2]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _ntm_address_row(&memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0], &gates[b, 0],
                             &shifts[b, 0, 0], &gamma[b, 0], &weights_prev[b, 0, 0],
                             &out[b, 0, 0], &content[b, 0, 0], &cosines[b, 0, 0],
                             &memory_norms[b, 0], &key_norms[b, 0], &log_weights[b, 0, 0],
                             &work[b, 0], H, N, W, S)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _ntm_address_row(&memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0], &gates[b, 0],
                                 &shifts[b, 0, 0], &gamma[b, 0], &weights_prev[b, 0, 0],
                                 &out[b, 0, 0], &content[b, 0, 0], &cosines[b, 0, 0],
                                 &memory_norms[b, 0], &key_norms[b, 0], &log_weights[b, 0, 0],
                                 &work[b, 0], H, N, W, S)


cdef void _ntm_address_backward_row(const floating* memory, const floating* keys,
                                    const floating* strengths, const floating* gates,
                                    const floating* shifts, const floating* gamma,
                                    const floating* weights_prev, const floating* out,
                                    const floating* content,
                                    const floating* cosines, const floating* memory_norms,
                                    const floating* key_norms, const double* log_weights,
                                    const floating* grad,
                                    floating* grad_memory, floating* grad_keys,
                                    floating* grad_strengths, floating* grad_gates,
                                    floating* grad_shifts, floating* grad_gamma,
                                    floating* grad_weights_prev, double* work,
                                    Py_ssize_t H, Py_ssize_t N, Py_ssize_t W,
                                    Py_ssize_t S) noexcept nogil:
    cdef Py_ssize_t h, i
    cdef double g, gwg
    cdef double* wg = work
    cdef double* ws = work + N
    cdef double* gout = work + 2 * N
    cdef double* gws = work + 3 * N
    cdef double* gwc = work + 4 * N       # grad of the interpolated, then of the content weighting
    cdef double* row_key = work + 5 * N
    cdef double* row_memory = work + 6 * N
    cdef double* s = work + 7 * N
    cdef double* gs = work + 7 * N + S
    cdef double* grad_key_acc = work + 7 * N + 2 * S
    # With several heads, the content weighting's backward runs once for all of
    # them (one pass over memory) from their gradients kept in ``all_gwc``.
    cdef double* all_gwc = NULL
    cdef int status = -1
    if H > 1:
        all_gwc = <double*>malloc(H * N * sizeof(double))
    for h in range(H):
        if all_gwc != NULL:
            gwc = all_gwc + h * N
        # Recompute the interpolated and shifted weightings (O(N S)).
        g = gates[h]
        for i in range(N):
            wg[i] = g * content[h * N + i] + (1.0 - g) * weights_prev[h * N + i]
            gout[i] = grad[h * N + i]
        for i in range(S):
            s[i] = shifts[h * S + i]
        _shift_forward(wg, s, ws, N, S)
        # sharpening, then shift
        grad_gamma[h] = _sharpen_backward(ws, out + h * N, log_weights + h * N, gamma[h],
                                          gout, gws, N)
        _shift_backward(wg, s, gws, gwc, gs, N, S)
        for i in range(S):
            grad_shifts[h * S + i] = gs[i]
        # interpolation
        for i in range(N):
            gwg = gwc[i]
            wg[i] = content[h * N + i] - weights_prev[h * N + i]
            grad_weights_prev[h * N + i] = (1.0 - g) * gwg
        grad_gates[h] = _sum_products(gwc, wg, N)
        for i in range(N):
            gwc[i] = g * gwc[i]
        # content weighting
        if all_gwc != NULL:
            continue
        grad_strengths[h] = _content_head_backward(
            memory, memory_norms, keys + h * W, key_norms[h], strengths[h],
            cosines + h * N, content + h * N, gwc, h == 0,
            grad_memory, grad_keys + h * W, row_key, row_memory, grad_key_acc, N, W)
    if all_gwc != NULL:
        status = _content_backward_heads(memory, memory_norms, keys, key_norms, strengths,
                                         cosines, content, NULL, all_gwc, grad_memory,
                                         grad_keys, grad_strengths, H, N, W)
        if status != 0:  # no scratch for the joint pass: one pass per head
            for h in range(H):
                grad_strengths[h] = _content_head_backward(
                    memory, memory_norms, keys + h * W, key_norms[h], strengths[h],
                    cosines + h * N, content + h * N, all_gwc + h * N, h == 0,
                    grad_memory, grad_keys + h * W, row_key, row_memory, grad_key_acc, N, W)
        free(all_gwc)


def ntm_address_backward(const floating[:, :, ::1] memory,
                         const floating[:, :, ::1] keys,
                         const floating[:, ::1] strengths,
                         const floating[:, ::1] gates,
                         const floating[:, :, ::1] shifts,
                         const floating[:, ::1] gamma,
                         const floating[:, :, ::1] weights_prev,
                         const floating[:, :, ::1] out,
                         const floating[:, :, ::1] content,
                         const floating[:, :, ::1] cosines,
                         const floating[:, ::1] memory_norms,
                         const floating[:, ::1] key_norms,
                         const double[:, :, ::1] log_weights,
                         const floating[:, :, ::1] grad_out,
                         floating[:, :, ::1] grad_memory,
                         floating[:, :, ::1] grad_keys,
                         floating[:, ::1] grad_strengths,
                         floating[:, ::1] grad_gates,
                         floating[:, :, ::1] grad_shifts,
                         floating[:, ::1] grad_gamma,
                         floating[:, :, ::1] grad_weights_prev,
                         double[:, ::1] work,
                         int num_threads):
    """Gradients of all seven inputs.  ``work`` is (B, 7N + 2S + W)."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = keys.shape[1], S = shifts.shape[2]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _ntm_address_backward_row(
                &memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0], &gates[b, 0],
                &shifts[b, 0, 0], &gamma[b, 0], &weights_prev[b, 0, 0], &out[b, 0, 0],
                &content[b, 0, 0],
                &cosines[b, 0, 0], &memory_norms[b, 0], &key_norms[b, 0],
                &log_weights[b, 0, 0], &grad_out[b, 0, 0],
                &grad_memory[b, 0, 0], &grad_keys[b, 0, 0], &grad_strengths[b, 0],
                &grad_gates[b, 0], &grad_shifts[b, 0, 0], &grad_gamma[b, 0],
                &grad_weights_prev[b, 0, 0], &work[b, 0], H, N, W, S)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _ntm_address_backward_row(
                    &memory[b, 0, 0], &keys[b, 0, 0], &strengths[b, 0], &gates[b, 0],
                    &shifts[b, 0, 0], &gamma[b, 0], &weights_prev[b, 0, 0], &out[b, 0, 0],
                    &content[b, 0, 0],
                    &cosines[b, 0, 0], &memory_norms[b, 0], &key_norms[b, 0],
                    &log_weights[b, 0, 0], &grad_out[b, 0, 0],
                    &grad_memory[b, 0, 0], &grad_keys[b, 0, 0], &grad_strengths[b, 0],
                    &grad_gates[b, 0], &grad_shifts[b, 0, 0], &grad_gamma[b, 0],
                    &grad_weights_prev[b, 0, 0], &work[b, 0], H, N, W, S)
