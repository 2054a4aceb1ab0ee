"""Kernels of the memory reads and writes: forward and hand-written backward.

Shapes: B batch, N memory slots, W word size, H heads.  The arrays come from
``dmem.compiled.memory``, which has validated them (C-contiguous, one dtype,
sizes agreeing).  Each batch row is computed by one thread in a fixed order,
so results do not depend on the thread count.

read:   r_h = Σ_i w_{h,i} M_i
write:  M' = M ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ
"""

from cython cimport floating
from cython.parallel cimport prange


cdef inline floating _dot(const floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    """x · y with four partial sums (shorter dependency chains; a fixed order)."""
    cdef Py_ssize_t k
    cdef floating a0 = 0, a1 = 0, a2 = 0, a3 = 0
    cdef Py_ssize_t n4 = n - n % 4
    for k in range(0, n4, 4):
        a0 += x[k] * y[k]
        a1 += x[k + 1] * y[k + 1]
        a2 += x[k + 2] * y[k + 2]
        a3 += x[k + 3] * y[k + 3]
    for k in range(n4, n):
        a0 += x[k] * y[k]
    return (a0 + a1) + (a2 + a3)


# ---------------------------------------------------------------- read

cdef void _read_row(const floating* memory, const floating* weights,
                    floating* reads, Py_ssize_t N, Py_ssize_t H,
                    Py_ssize_t W) noexcept nogil:
    """reads[h, :] = Σ_n weights[h, n] memory[n, :] for one batch row."""
    cdef Py_ssize_t h, n, k
    cdef floating wn
    cdef floating* out
    cdef const floating* row
    for h in range(H):
        out = reads + h * W
        for k in range(W):
            out[k] = 0
        for n in range(N):
            wn = weights[h * N + n]
            row = memory + n * W
            for k in range(W):
                out[k] += wn * row[k]


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
    cdef Py_ssize_t h, n, k
    cdef floating wn
    cdef floating* dm
    cdef const floating* row
    cdef const floating* g
    for n in range(N):
        dm = grad_memory + n * W
        row = memory + n * W
        wn = weights[n]
        for k in range(W):
            dm[k] = wn * grad_reads[k]
        for h in range(1, H):
            wn = weights[h * N + n]
            g = grad_reads + h * W
            for k in range(W):
                dm[k] += wn * g[k]
        for h in range(H):
            grad_weights[h * N + n] = _dot(grad_reads + h * W, row, W)


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
    cdef Py_ssize_t h, n, k
    cdef floating wn
    cdef floating* o
    cdef const floating* m
    cdef const floating* e
    cdef const floating* a
    for n in range(N):
        o = out + n * W
        m = memory + n * W
        wn = weights[n]
        for k in range(W):
            o[k] = m[k] * (1 - wn * erase[k])
        for h in range(1, H):
            wn = weights[h * N + n]
            e = erase + h * W
            for k in range(W):
                o[k] *= 1 - wn * e[k]
        for h in range(H):
            wn = weights[h * N + n]
            a = add + h * W
            for k in range(W):
                o[k] += wn * a[k]


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
    can be 0).  ``scratch`` is (H + 1) × W: rows 0..H−1 the suffix products
    Π_{h'>h} q_{h'} of the current slot (row H−1 is all ones), row H the
    t of the current head.  The prefix product of a slot is kept in its row
    of grad_memory until the slot's gradient replaces it.
    """
    cdef Py_ssize_t h, n, k
    cdef floating wn
    cdef floating* prefix
    cdef floating* s
    cdef floating* s_next
    cdef floating* t = scratch + H * W
    cdef const floating* m
    cdef const floating* g
    cdef const floating* e
    cdef const floating* a
    cdef floating* de
    cdef floating* da
    for k in range(H * W):
        grad_erase[k] = 0
        grad_add[k] = 0
    s = scratch + (H - 1) * W
    for k in range(W):
        s[k] = 1
    for n in range(N):
        m = memory + n * W
        g = grad_out + n * W
        prefix = grad_memory + n * W
        # scratch[h, k] = Π_{h' > h} q_{h'}[n, k]
        for h in range(H - 1, 0, -1):
            wn = weights[h * N + n]
            e = erase + h * W
            s = scratch + (h - 1) * W
            s_next = scratch + h * W
            for k in range(W):
                s[k] = s_next[k] * (1 - wn * e[k])
        for h in range(H):
            wn = weights[h * N + n]
            e = erase + h * W
            a = add + h * W
            de = grad_erase + h * W
            da = grad_add + h * W
            s = scratch + h * W
            if h == 0:
                for k in range(W):
                    t[k] = g[k] * m[k] * s[k]
                    prefix[k] = 1 - wn * e[k]
            else:
                for k in range(W):
                    t[k] = g[k] * m[k] * (prefix[k] * s[k])
                    prefix[k] *= 1 - wn * e[k]
            for k in range(W):
                de[k] -= wn * t[k]
                da[k] += wn * g[k]
            grad_weights[h * N + n] = _dot(g, a, W) - _dot(e, t, W)
        for k in range(W):
            prefix[k] = g[k] * prefix[k]


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
