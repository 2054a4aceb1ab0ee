"""Kernels of the memory reads and writes: forward and hand-written backward.

Shapes: B batch, N memory slots, W word size, H heads.  The arrays come from
``dmem.compiled.memory``, which has validated them (C-contiguous, one dtype,
sizes agreeing).  Each batch row is computed by one thread in a fixed order,
so results do not depend on the thread count.

read:   r_h = Σ_i w_{h,i} M_i
write:  M' = M ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ

The loops of one batch row are C, in ``memory_simd.h`` (sums over slots in
registers, the word in vectors of 16, 32 or 64 bytes), compiled for the
build's baseline ISA and, on x86, for AVX2/FMA and AVX-512; the widest the CPU
has runs (:func:`simd_level`).  The versions round differently, each
deterministically.
"""

from cython cimport floating
from cython.parallel cimport prange

from dmem._kernels import _simd


cdef extern from "memory_simd.h" nogil:
    void dmem_memory_read_d(const double* memory, const double* weights, double* reads,
                            Py_ssize_t n, Py_ssize_t h, Py_ssize_t w)
    void dmem_memory_read_f(const float* memory, const float* weights, float* reads,
                            Py_ssize_t n, Py_ssize_t h, Py_ssize_t w)
    void dmem_memory_read_backward_d(const double* memory, const double* weights,
                                     const double* grad_reads, double* grad_memory,
                                     double* grad_weights, Py_ssize_t n, Py_ssize_t h,
                                     Py_ssize_t w)
    void dmem_memory_read_backward_f(const float* memory, const float* weights,
                                     const float* grad_reads, float* grad_memory,
                                     float* grad_weights, Py_ssize_t n, Py_ssize_t h,
                                     Py_ssize_t w)
    void dmem_memory_write_d(const double* memory, const double* weights, const double* erase,
                             const double* add, double* out, Py_ssize_t n, Py_ssize_t h,
                             Py_ssize_t w)
    void dmem_memory_write_f(const float* memory, const float* weights, const float* erase,
                             const float* add, float* out, Py_ssize_t n, Py_ssize_t h,
                             Py_ssize_t w)
    void dmem_memory_write_backward_d(const double* memory, const double* weights,
                                      const double* erase, const double* add,
                                      const double* grad_out, double* grad_memory,
                                      double* grad_weights, double* grad_erase,
                                      double* grad_add, double* scratch, Py_ssize_t n,
                                      Py_ssize_t h, Py_ssize_t w)
    void dmem_memory_write_backward_f(const float* memory, const float* weights,
                                      const float* erase, const float* add,
                                      const float* grad_out, float* grad_memory,
                                      float* grad_weights, float* grad_erase,
                                      float* grad_add, float* scratch, Py_ssize_t n,
                                      Py_ssize_t h, Py_ssize_t w)
    int dmem_memory_simd_supported()
    int dmem_memory_set_simd(int level)
    int dmem_memory_get_simd()


dmem_memory_set_simd(2)  # the widest this CPU has


def _simd_query(level=None):
    """Set the level of the read and write loops (when given); (in force, widest supported)."""
    if level is not None:
        dmem_memory_set_simd(level)
    return dmem_memory_get_simd(), dmem_memory_simd_supported()


SIMD_LEVELS = _simd.SIMD_LEVELS
simd_level, simd_levels_supported, _set_simd = _simd.functions(_simd_query, "read and write")


# ---------------------------------------------------------------- read

cdef void _read_row(const floating* memory, const floating* weights,
                    floating* reads, Py_ssize_t N, Py_ssize_t H,
                    Py_ssize_t W) noexcept nogil:
    """reads[h, :] = Σ_n weights[h, n] memory[n, :] for one batch row."""
    if floating is double:
        dmem_memory_read_d(memory, weights, reads, N, H, W)
    else:
        dmem_memory_read_f(memory, weights, reads, N, H, W)


def read_forward(const floating[:, :, ::1] memory, const floating[:, :, ::1] weights,
                 floating[:, :, ::1] reads, int num_threads=1):
    """reads (B, H, W) = weights (B, H, N) @ memory (B, N, W)."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = weights.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _read_row(&memory[b, 0, 0], &weights[b, 0, 0], &reads[b, 0, 0], N, H, W)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _read_row(&memory[b, 0, 0], &weights[b, 0, 0], &reads[b, 0, 0], N, H, W)


cdef void _read_backward_row(const floating* memory, const floating* weights,
                             const floating* grad_reads, floating* grad_memory,
                             floating* grad_weights, Py_ssize_t N, Py_ssize_t H,
                             Py_ssize_t W) noexcept nogil:
    """dM[n, :] = Σ_h w[h, n] g[h, :];  dw[h, n] = g[h, :] · M[n, :]."""
    if floating is double:
        dmem_memory_read_backward_d(memory, weights, grad_reads, grad_memory, grad_weights,
                                    N, H, W)
    else:
        dmem_memory_read_backward_f(memory, weights, grad_reads, grad_memory, grad_weights,
                                    N, H, W)


def read_backward(const floating[:, :, ::1] memory, const floating[:, :, ::1] weights,
                  const floating[:, :, ::1] grad_reads, floating[:, :, ::1] grad_memory,
                  floating[:, :, ::1] grad_weights, int num_threads=1):
    """Gradients of memory (B, N, W) and weights (B, H, N) from grad_reads (B, H, W)."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = weights.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _read_backward_row(&memory[b, 0, 0], &weights[b, 0, 0], &grad_reads[b, 0, 0],
                               &grad_memory[b, 0, 0], &grad_weights[b, 0, 0], N, H, W)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _read_backward_row(&memory[b, 0, 0], &weights[b, 0, 0], &grad_reads[b, 0, 0],
                                   &grad_memory[b, 0, 0], &grad_weights[b, 0, 0], N, H, W)


# ---------------------------------------------------------------- write

cdef void _write_row(const floating* memory, const floating* weights,
                     const floating* erase, const floating* add, floating* out,
                     Py_ssize_t N, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """out = M ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ for one batch row."""
    if floating is double:
        dmem_memory_write_d(memory, weights, erase, add, out, N, H, W)
    else:
        dmem_memory_write_f(memory, weights, erase, add, out, N, H, W)


def write_forward(const floating[:, :, ::1] memory, const floating[:, :, ::1] weights,
                  const floating[:, :, ::1] erase, const floating[:, :, ::1] add,
                  floating[:, :, ::1] out, int num_threads=1):
    """out (B, N, W): memory after the erase and add of every head."""
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = weights.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _write_row(&memory[b, 0, 0], &weights[b, 0, 0], &erase[b, 0, 0], &add[b, 0, 0],
                       &out[b, 0, 0], N, H, W)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _write_row(&memory[b, 0, 0], &weights[b, 0, 0], &erase[b, 0, 0], &add[b, 0, 0],
                           &out[b, 0, 0], N, H, W)


cdef void _write_backward_row(const floating* memory, const floating* weights,
                              const floating* erase, const floating* add,
                              const floating* grad_out, floating* grad_memory,
                              floating* grad_weights, floating* grad_erase,
                              floating* grad_add, floating* scratch,
                              Py_ssize_t N, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    """Backward of one batch row of the write.

    With q_h = 1 − w_h e_hᵀ (per entry) and g the output gradient:
    dM = g ∘ Π_h q_h;  for head h, t_h = g ∘ M ∘ Π_{h'≠h} q_{h'} and
    dw_h[n] = Σ_k (g[n, k] a_h[k] − e_h[k] t_h[n, k]),
    de_h[k] = −Σ_n w_h[n] t_h[n, k],  da_h[k] = Σ_n w_h[n] g[n, k].
    Π_{h'≠h} q_{h'} is prefix × suffix over heads (no division by q, which
    can be 0).  Up to four heads, everything is in registers, two slots at a
    time (``memory_simd.h``).  With more heads, ``scratch`` ((H + 1) × W)
    holds in rows 0..H−2 the suffix products Π_{h'>h} q_{h'} of the current
    slot, the prefix product of a slot is kept in its row of grad_memory
    until the slot's gradient replaces it, and one pass over the word per
    head forms t_h, de_h, da_h and dw_h[n] together.
    """
    if floating is double:
        dmem_memory_write_backward_d(memory, weights, erase, add, grad_out, grad_memory,
                                     grad_weights, grad_erase, grad_add, scratch, N, H, W)
    else:
        dmem_memory_write_backward_f(memory, weights, erase, add, grad_out, grad_memory,
                                     grad_weights, grad_erase, grad_add, scratch, N, H, W)


def write_backward(const floating[:, :, ::1] memory, const floating[:, :, ::1] weights,
                   const floating[:, :, ::1] erase, const floating[:, :, ::1] add,
                   const floating[:, :, ::1] grad_out, floating[:, :, ::1] grad_memory,
                   floating[:, :, ::1] grad_weights, floating[:, :, ::1] grad_erase,
                   floating[:, :, ::1] grad_add, floating[:, :, ::1] work,
                   int num_threads=1):
    """Gradients of memory, weights, erase, add from grad_out (B, N, W).

    ``work`` is (B, H + 1, W) scratch, overwritten.
    """
    cdef Py_ssize_t B = memory.shape[0], N = memory.shape[1], W = memory.shape[2]
    cdef Py_ssize_t H = weights.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _write_backward_row(&memory[b, 0, 0], &weights[b, 0, 0], &erase[b, 0, 0],
                                &add[b, 0, 0], &grad_out[b, 0, 0], &grad_memory[b, 0, 0],
                                &grad_weights[b, 0, 0], &grad_erase[b, 0, 0],
                                &grad_add[b, 0, 0], &work[b, 0, 0], N, H, W)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _write_backward_row(&memory[b, 0, 0], &weights[b, 0, 0], &erase[b, 0, 0],
                                    &add[b, 0, 0], &grad_out[b, 0, 0], &grad_memory[b, 0, 0],
                                    &grad_weights[b, 0, 0], &grad_erase[b, 0, 0],
                                    &grad_add[b, 0, 0], &work[b, 0, 0], N, H, W)
