"""Kernels of the DNC's dynamic memory allocation: forward and hand-written backward.

Shapes: B batch, N memory slots, R read heads.  The arrays come from
``dmem.compiled.allocation``, which has validated them (C-contiguous, one
dtype, sizes agreeing).  Each batch row is computed by one thread in a fixed
order, so results do not depend on the thread count.

usage:       u = (u_prev + w − u_prev ∘ w) ∘ Π_r (1 − f_r w_r)
allocation:  û = ε + (1 − ε) u, φ = stable ascending argsort of û,
             a[φ_j] = (1 − û[φ_j]) Π_{i<j} û[φ_i]

``write_weights_forward/backward`` fuse usage, allocation and the DNC's write
weighting ``w = g_w (g_a a + (1 − g_a) c)`` into one call per step, for the
DNC's backpropagation through time (``dmem/_dnc_bptt.py``).
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from dmem._kernels import _simd

cdef extern from "allocation_simd.h" nogil:
    void dmem_usage_forward_d(const double* up, const double* wp, const double* wr,
                              const double* f, double* out, Py_ssize_t n, Py_ssize_t nr)
    void dmem_usage_forward_f(const float* up, const float* wp, const float* wr,
                              const float* f, float* out, Py_ssize_t n, Py_ssize_t nr)
    void dmem_usage_backward_d(const double* up, const double* wp, const double* wr,
                               const double* f, const double* g, double* du, double* dw,
                               double* dwr, double* df, Py_ssize_t n, Py_ssize_t nr)
    void dmem_usage_backward_f(const float* up, const float* wp, const float* wr,
                               const float* f, const float* g, float* du, float* dw,
                               float* dwr, float* df, Py_ssize_t n, Py_ssize_t nr)
    int dmem_allocation_simd_supported()
    int dmem_allocation_set_simd(int level)
    int dmem_allocation_get_simd()


dmem_allocation_set_simd(2)  # the widest this CPU has


def _simd_query(level=None):
    """Set the level of the usage loops (when given); (in force, widest supported)."""
    if level is not None:
        dmem_allocation_set_simd(level)
    return dmem_allocation_get_simd(), dmem_allocation_simd_supported()


SIMD_LEVELS = _simd.SIMD_LEVELS
simd_level, simd_levels_supported, _set_simd = _simd.functions(_simd_query, "usage")


# The ε of the allocation weighting (part of the contract).
cdef double ALLOCATION_EPSILON = 1e-6


# ---------------------------------------------------------------- usage

cdef inline void _usage_row(const floating* usage_prev, const floating* write_prev,
                            const floating* read_prev, const floating* free_gates,
                            floating* out, Py_ssize_t N, Py_ssize_t R) noexcept nogil:
    """out = (u + w − u w) ∘ Π_r (1 − f_r w_r) for one batch row (allocation_simd.h)."""
    if floating is double:
        dmem_usage_forward_d(usage_prev, write_prev, read_prev, free_gates, out, N, R)
    else:
        dmem_usage_forward_f(usage_prev, write_prev, read_prev, free_gates, out, N, R)


def usage_forward(const floating[:, ::1] usage_prev, const floating[:, ::1] write_weights_prev,
                  const floating[:, :, ::1] read_weights_prev, const floating[:, ::1] free_gates,
                  floating[:, ::1] usage, int num_threads=1):
    """usage (B, N) from usage_prev (B, N), write_weights_prev (B, N),
    read_weights_prev (B, R, N) and free_gates (B, R)."""
    cdef Py_ssize_t B = usage_prev.shape[0], N = usage_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _usage_row(&usage_prev[b, 0], &write_weights_prev[b, 0], &read_weights_prev[b, 0, 0],
                       &free_gates[b, 0], &usage[b, 0], N, R)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _usage_row(&usage_prev[b, 0], &write_weights_prev[b, 0],
                           &read_weights_prev[b, 0, 0], &free_gates[b, 0], &usage[b, 0], N, R)


cdef inline void _usage_backward_row(const floating* usage_prev, const floating* write_prev,
                                     const floating* read_prev, const floating* free_gates,
                                     const floating* grad_usage, floating* grad_usage_prev,
                                     floating* grad_write_prev, floating* grad_read_prev,
                                     floating* grad_free, Py_ssize_t N,
                                     Py_ssize_t R) noexcept nogil:
    """Backward of one batch row of the usage update (allocation_simd.h).

    With v = u + w − u w, q_r = 1 − f_r w_r, ψ = Π_r q_r and g the output
    gradient: du = g ψ (1 − w), dw = g ψ (1 − u), and for read head r,
    dq_r = g v Π_{r'≠r} q_{r'}, dw_r = −f_r dq_r, df_r = −Σ_n w_r dq_r.
    Π_{r'≠r} q_{r'} is prefix × suffix over heads (no division by q_r, which
    can be 0).
    """
    if floating is double:
        dmem_usage_backward_d(usage_prev, write_prev, read_prev, free_gates, grad_usage,
                              grad_usage_prev, grad_write_prev, grad_read_prev, grad_free, N, R)
    else:
        dmem_usage_backward_f(usage_prev, write_prev, read_prev, free_gates, grad_usage,
                              grad_usage_prev, grad_write_prev, grad_read_prev, grad_free, N, R)


def usage_backward(const floating[:, ::1] usage_prev, const floating[:, ::1] write_weights_prev,
                   const floating[:, :, ::1] read_weights_prev, const floating[:, ::1] free_gates,
                   const floating[:, ::1] grad_usage, floating[:, ::1] grad_usage_prev,
                   floating[:, ::1] grad_write_weights_prev,
                   floating[:, :, ::1] grad_read_weights_prev, floating[:, ::1] grad_free_gates,
                   int num_threads=1):
    """Gradients of the four inputs of the usage update from grad_usage (B, N)."""
    cdef Py_ssize_t B = usage_prev.shape[0], N = usage_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _usage_backward_row(&usage_prev[b, 0], &write_weights_prev[b, 0],
                                &read_weights_prev[b, 0, 0], &free_gates[b, 0], &grad_usage[b, 0],
                                &grad_usage_prev[b, 0], &grad_write_weights_prev[b, 0],
                                &grad_read_weights_prev[b, 0, 0], &grad_free_gates[b, 0], N, R)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _usage_backward_row(&usage_prev[b, 0], &write_weights_prev[b, 0],
                                    &read_weights_prev[b, 0, 0], &free_gates[b, 0],
                                    &grad_usage[b, 0],
                                    &grad_usage_prev[b, 0], &grad_write_weights_prev[b, 0],
                                    &grad_read_weights_prev[b, 0, 0], &grad_free_gates[b, 0], N, R)


# ---------------------------------------------------------------- allocation

cdef inline void _stable_argsort(const floating* key, int64_t* order, int64_t* tmp,
                                 Py_ssize_t N) noexcept nogil:
    """Stable ascending argsort of key[0:N] into order (tmp: N scratch).

    Insertion sort of runs of 16, then bottom-up merges; ties keep index
    order because the left run wins on equality.  Only indices in [0, N) are
    ever written, whatever the keys (even NaN), so no access goes out of
    bounds.
    """
    cdef Py_ssize_t i, j, lo, mid, hi, width, p, q, out_pos
    cdef int64_t item
    cdef floating v
    cdef int64_t* src = order
    cdef int64_t* dst = tmp
    cdef int64_t* swap
    cdef Py_ssize_t RUN = 16
    for i in range(N):
        order[i] = i
    # insertion sort of each run [lo, lo + RUN)
    lo = 0
    while lo < N:
        hi = lo + RUN
        if hi > N:
            hi = N
        for i in range(lo + 1, hi):
            item = order[i]
            v = key[item]
            j = i
            while j > lo and key[order[j - 1]] > v:
                order[j] = order[j - 1]
                j = j - 1
            order[j] = item
        lo = hi
    # merges of runs of width 16, 32, ...
    width = RUN
    while width < N:
        lo = 0
        while lo < N:
            mid = lo + width
            if mid > N:
                mid = N
            hi = lo + 2 * width
            if hi > N:
                hi = N
            p = lo
            q = mid
            out_pos = lo
            while p < mid and q < hi:
                if key[src[q]] < key[src[p]]:
                    dst[out_pos] = src[q]
                    q = q + 1
                else:
                    dst[out_pos] = src[p]
                    p = p + 1
                out_pos = out_pos + 1
            while p < mid:
                dst[out_pos] = src[p]
                p = p + 1
                out_pos = out_pos + 1
            while q < hi:
                dst[out_pos] = src[q]
                q = q + 1
                out_pos = out_pos + 1
            lo = hi
        swap = src
        src = dst
        dst = swap
        width = 2 * width
    if src != order:
        for i in range(N):
            order[i] = src[i]


cdef inline void _allocation_row(const floating* usage, floating* out, int64_t* order,
                                 floating* prefix, int64_t* tmp,
                                 Py_ssize_t N) noexcept nogil:
    """Allocation weighting of one batch row.

    ``out`` first holds û (the sort keys), then, slot by slot in sorted
    order, the allocation.  ``order`` receives φ and ``prefix`` the exclusive
    products z_j = Π_{i<j} û[φ_i] (in sorted order), both kept for the
    backward.
    """
    cdef Py_ssize_t j
    cdef int64_t slot
    cdef floating eps = <floating> ALLOCATION_EPSILON
    cdef floating keep = 1 - eps
    cdef floating z = 1
    cdef floating u_hat
    for j in range(N):
        out[j] = eps + keep * usage[j]
    _stable_argsort(out, order, tmp, N)
    for j in range(N):
        slot = order[j]
        u_hat = out[slot]
        prefix[j] = z
        out[slot] = (1 - u_hat) * z
        z = z * u_hat


def allocation_forward(const floating[:, ::1] usage, floating[:, ::1] allocation,
                       int64_t[:, ::1] order, floating[:, ::1] prefix, int64_t[:, ::1] work,
                       int num_threads=1):
    """allocation (B, N) from usage (B, N).

    Also fills ``order`` (B, N), the free list φ, and ``prefix`` (B, N), the
    exclusive products in sorted order; ``work`` (B, N) is scratch.
    """
    cdef Py_ssize_t B = usage.shape[0], N = usage.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _allocation_row(&usage[b, 0], &allocation[b, 0], &order[b, 0], &prefix[b, 0],
                            &work[b, 0], N)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _allocation_row(&usage[b, 0], &allocation[b, 0], &order[b, 0], &prefix[b, 0],
                                &work[b, 0], N)


cdef inline void _allocation_backward_row(const floating* usage, const int64_t* order,
                                          const floating* prefix, const floating* grad_out,
                                          floating* grad_usage, Py_ssize_t N) noexcept nogil:
    """Backward of one batch row of the allocation weighting.

    In sorted order, with s_j = û[φ_j], z_j = Π_{i<j} s_i and a_j = (1 − s_j) z_j:
    dL/ds_j = z_j (T_j − g_j), where T_j = Σ_{k>j} g_k (1 − s_k) Π_{j<i<k} s_i
    obeys the suffix recursion T_{N−1} = 0, T_{j−1} = g_j (1 − s_j) + s_j T_j.
    No division (by û or anything else).  Then du = (1 − ε) dû.
    """
    cdef Py_ssize_t j
    cdef int64_t slot
    cdef floating eps = <floating> ALLOCATION_EPSILON
    cdef floating keep = 1 - eps
    cdef floating tail = 0
    cdef floating s, g
    for j in range(N - 1, -1, -1):
        slot = order[j]
        s = eps + keep * usage[slot]
        g = grad_out[slot]
        grad_usage[slot] = keep * (prefix[j] * (tail - g))
        tail = g * (1 - s) + s * tail


def allocation_backward(const floating[:, ::1] usage, const int64_t[:, ::1] order,
                        const floating[:, ::1] prefix, const floating[:, ::1] grad_allocation,
                        floating[:, ::1] grad_usage, int num_threads=1):
    """Gradient of usage (B, N) from grad_allocation (B, N); φ held constant."""
    cdef Py_ssize_t B = usage.shape[0], N = usage.shape[1]
    cdef Py_ssize_t b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _allocation_backward_row(&usage[b, 0], &order[b, 0], &prefix[b, 0],
                                     &grad_allocation[b, 0], &grad_usage[b, 0], N)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _allocation_backward_row(&usage[b, 0], &order[b, 0], &prefix[b, 0],
                                         &grad_allocation[b, 0], &grad_usage[b, 0], N)


# ---------------------------------------------------------------- write weighting (fused)

cdef void _write_weights_row(const floating* usage_prev, const floating* write_prev,
                             const floating* read_prev, const floating* free_gates,
                             floating allocation_gate, floating write_gate,
                             const floating* content, floating* usage,
                             floating* allocation, int64_t* order, floating* prefix,
                             int64_t* tmp, floating* write_weights, Py_ssize_t N,
                             Py_ssize_t R) noexcept nogil:
    """usage, allocation and w = g_w (g_a a + (1 − g_a) c) for one batch row."""
    cdef Py_ssize_t n
    cdef floating keep = 1 - allocation_gate
    _usage_row(usage_prev, write_prev, read_prev, free_gates, usage, N, R)
    _allocation_row(usage, allocation, order, prefix, tmp, N)
    for n in range(N):
        write_weights[n] = write_gate * (allocation_gate * allocation[n] + keep * content[n])


def write_weights_forward(const floating[:, ::1] usage_prev,
                          const floating[:, ::1] write_weights_prev,
                          const floating[:, :, ::1] read_weights_prev,
                          const floating[:, :] free_gates, const floating[:] allocation_gate,
                          const floating[:] write_gate, const floating[:, ::1] content,
                          floating[:, ::1] usage, floating[:, ::1] allocation,
                          int64_t[:, ::1] order, floating[:, ::1] prefix, int64_t[:, ::1] work,
                          floating[:, ::1] write_weights, int num_threads=1):
    """The DNC's write weighting from the previous state, fused (DNC Methods):
    ``usage``, then ``allocation`` of the new usage, then
    ``w = g_w (g_a a + (1 − g_a) c)`` with the content weighting ``c``.

    usage_prev, write_weights_prev, content `(B, N)`; read_weights_prev
    `(B, R, N)`; free_gates `(B, R)`, allocation_gate and write_gate `(B,)`
    (these three may be strided views, e.g. columns of the interface vector).
    Fills usage, allocation, order (φ), prefix (as ``allocation_forward``; work
    is scratch) and write_weights, all `(B, N)`.
    """
    cdef Py_ssize_t B = usage_prev.shape[0], N = usage_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1]
    cdef Py_ssize_t b, r
    cdef floating[:, ::1] gates = _contiguous_gates(free_gates)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        _write_weights_row(&usage_prev[b, 0], &write_weights_prev[b, 0],
                           &read_weights_prev[b, 0, 0], &gates[b, 0], allocation_gate[b],
                           write_gate[b], &content[b, 0], &usage[b, 0], &allocation[b, 0],
                           &order[b, 0], &prefix[b, 0], &work[b, 0], &write_weights[b, 0], N, R)


cdef _contiguous_gates(const floating[:, :] gates):
    """A C-contiguous copy of a (B, R) view (it is small)."""
    cdef Py_ssize_t B = gates.shape[0], R = gates.shape[1], b, r
    cdef floating[:, ::1] out
    if floating is double:
        out = memoryview(bytearray(B * R * sizeof(double))).cast("B").cast("d", (B, R))
    else:
        out = memoryview(bytearray(B * R * sizeof(float))).cast("B").cast("f", (B, R))
    for b in range(B):
        for r in range(R):
            out[b, r] = gates[b, r]
    return out


cdef void _write_weights_backward_row(
        const floating* usage_prev, const floating* write_prev, const floating* read_prev,
        const floating* free_gates, floating allocation_gate, floating write_gate,
        const floating* content, const floating* usage, const floating* allocation,
        const int64_t* order, const floating* prefix, const floating* grad_write_weights,
        const floating* grad_usage, floating* grad_usage_prev, floating* grad_write_prev,
        floating* grad_read_prev, floating* grad_free, floating* grad_allocation_gate,
        floating* grad_write_gate, floating* grad_content, floating* work,
        Py_ssize_t N, Py_ssize_t R) noexcept nogil:
    """Backward of one batch row of write_weights_forward.

    With m = g_a a + (1 − g_a) c and g the gradient of w: dg_w = Σ g m,
    dm = g_w g, dg_a = Σ dm (a − c), dc = (1 − g_a) dm, da = g_a dm; then the
    allocation backward (φ held constant) and the usage backward of
    grad_usage + du_alloc.  work: 2N scratch.
    """
    cdef Py_ssize_t n
    cdef floating keep = 1 - allocation_gate
    cdef floating dgw = 0, dga = 0, dm, mix
    cdef floating* grad_alloc = work
    cdef floating* grad_u = work + N
    for n in range(N):
        mix = allocation_gate * allocation[n] + keep * content[n]
        dgw = dgw + grad_write_weights[n] * mix
        dm = write_gate * grad_write_weights[n]
        dga = dga + dm * (allocation[n] - content[n])
        grad_content[n] = keep * dm
        grad_alloc[n] = allocation_gate * dm
    grad_write_gate[0] = dgw
    grad_allocation_gate[0] = dga
    _allocation_backward_row(usage, order, prefix, grad_alloc, grad_u, N)
    for n in range(N):
        grad_u[n] = grad_u[n] + grad_usage[n]
    _usage_backward_row(usage_prev, write_prev, read_prev, free_gates, grad_u, grad_usage_prev,
                        grad_write_prev, grad_read_prev, grad_free, N, R)


def write_weights_backward(const floating[:, ::1] usage_prev,
                           const floating[:, ::1] write_weights_prev,
                           const floating[:, :, ::1] read_weights_prev,
                           const floating[:, :] free_gates, const floating[:] allocation_gate,
                           const floating[:] write_gate, const floating[:, ::1] content,
                           const floating[:, ::1] usage, const floating[:, ::1] allocation,
                           const int64_t[:, ::1] order, const floating[:, ::1] prefix,
                           const floating[:, ::1] grad_write_weights,
                           const floating[:, ::1] grad_usage,
                           floating[:, ::1] grad_usage_prev,
                           floating[:, ::1] grad_write_weights_prev,
                           floating[:, :, ::1] grad_read_weights_prev,
                           floating[:, :] grad_free_gates, floating[:] grad_allocation_gate,
                           floating[:] grad_write_gate, floating[:, ::1] grad_content,
                           floating[:, ::1] work, int num_threads=1):
    """Gradients of write_weights_forward's inputs from those of the write
    weighting and of the usage (``grad_usage``, from later steps), in input
    order: usage_prev, write_weights_prev `(B, N)`, read_weights_prev
    `(B, R, N)`, free_gates `(B, R)`, allocation_gate, write_gate `(B,)`
    (these three may be strided views), content `(B, N)`.  The saved arrays
    are those of the forward; work is `(B, 2N + R + 2)` scratch.
    """
    cdef Py_ssize_t B = usage_prev.shape[0], N = usage_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1]
    cdef Py_ssize_t b, r
    cdef floating[:, ::1] gates = _contiguous_gates(free_gates)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        # the gate gradients go to the end of the row's scratch, then to their views
        _write_weights_backward_row(
            &usage_prev[b, 0], &write_weights_prev[b, 0], &read_weights_prev[b, 0, 0],
            &gates[b, 0], allocation_gate[b], write_gate[b], &content[b, 0], &usage[b, 0],
            &allocation[b, 0], &order[b, 0], &prefix[b, 0], &grad_write_weights[b, 0],
            &grad_usage[b, 0], &grad_usage_prev[b, 0], &grad_write_weights_prev[b, 0],
            &grad_read_weights_prev[b, 0, 0], &work[b, 2 * N], &work[b, 2 * N + R],
            &work[b, 2 * N + R + 1], &grad_content[b, 0], &work[b, 0], N, R)
    for b in range(B):
        for r in range(R):
            grad_free_gates[b, r] = work[b, 2 * N + r]
        grad_allocation_gate[b] = work[b, 2 * N + R]
        grad_write_gate[b] = work[b, 2 * N + R + 1]
