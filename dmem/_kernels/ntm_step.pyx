"""The NTM's time step, fused: controller cell, interface and memory access,
forward and backward.

``dmem/_ntm_bptt.py`` runs the NTM over a sequence with one Python loop over
time.  A step forward is one BLAS product (numpy: the controller's
pre-activations from the previous reads and ``h``) and one call of
:meth:`NTMSequence.forward`; backward, one call of
:meth:`NTMSequence.backward` and one BLAS product (the gradient of the
previous reads and ``h``).  An :class:`NTMSequence` holds every buffer of one
sequence (allocated by the caller, validated here once), so a step's call
passes only ``t``.  See ``docs/models.md`` for the computation.  Per batch row:

* ``forward(t)``: the controller cell — LSTM (or tanh layer) from
  ``gates[t] = zh[t, :, I:] · controller_W[I:]`` (the caller's product) and
  ``xw[t] = x_t · controller_W[:I] + controller_b`` — then the interface
  ``ξ_t = h_t · interface_W + interface_b``, the head activations (β =
  softplus, g = σ, s = softmax, γ = 1 + softplus, erase = σ), ``ntm_address``
  of the write heads on ``M_{t-1}``, ``write``, ``ntm_address`` of the read
  heads on ``M_t`` and ``read``.  ``h_t`` and the reads go to ``hr[t]`` and to
  the controller input ``zh[t + 1]``.
* ``backward(t)``: the hand-written backward of the same, in reverse order,
  carrying dL/dM, dL/dw and dL/dc from step ``t + 1`` to ``t`` in buffers of
  the sequence; writes dL/dξ_t and dL/d(pre-activations) for the caller's
  weight gradients.

The memory access of a row makes three passes over the memory forward (the
write keys' similarities; the write, then the norms of ``M_t`` and the read
keys' similarities; the read) and three backward (the read weights' gradient;
the gradient of ``M_t`` — carried, read, read heads' similarities — with the
write's backward; the write keys' gradient, the write heads' part of
dL/dM_{t-1} being added by the next step's second pass).  Between the passes,
each head's weighting runs through the per-head helpers of ``addressing.pxd``
(shift, sharpen, and vectorisable exp and log), in double precision; the LSTM
gates use vectorisable σ and tanh.  The equations are those of the separate
kernels (``addressing.pyx``, ``memory.pyx``), which the tests compare with.

Threads: the rows go in groups (4 rows when ``B ≥ 8``, else 2), a group to a
thread (``prange`` over the groups); the interface products of two rows of a
group share each load of the weights.  A row is computed by the same
operations in the same order whatever its group and thread: results do not
depend on the thread count.

Buffers (``T`` steps, ``B`` rows; ``H = Hw + R`` heads, write heads first;
``K`` the interface size; ``A = H·W + 3H + H·S + 2Hw·W + 2H`` the activated
heads' size; ``Z = I + R·W``; ``ZH = Z + C`` (LSTM) or ``Z`` (tanh layer);
``G = 4C`` (LSTM) or ``C``; ``CR = C + R·W``)::

    xw (T, B, G)            x_t · controller_W[:I] + controller_b        input
    interface_W (C, K), interface_WT (K, C), interface_b (K,)            input
    zh (T, B, ZH)           [x_t, reads_{t-1}, h_{t-1}]; the caller fills t = 0
    gates (T, B, G)         pre-activations in (the caller's product), activations out
    cell (T + 1, B, C)      c_t (LSTM; the caller sets c_0)
    tcell (T, B, C)         tanh(c_t)
    hr (T, B, CR)           [h_t, reads_t]
    act (T, B, A)           the activated heads (see below)
    memory (T + 1, B, N, W) M_t; the caller sets M_0
    weights (T + 1, B, H, N) [ww_t, wr_t]; the caller sets the initial weightings
    content, cosines (T, B, H, N), memory_norms (T, B, 2, N), key_norms (T, B, H),
    log_weights (T, B, H, N) float64: the addressing's saved state
    dhr (T, B, CR)          dL/d[h_t, reads_t] from the output layer      input
    dxi (T, B, K)           dL/dξ_t                                       output
    dzh (B, ZH - I)         da[t+1] · controller_W[I:]ᵀ, from the caller  input (zero at T-1)
    da (T, B, G)            dL/d(pre-activations)                         output
    dcell (B, C)            dL/dc carried back                            (zero at T-1)
    dmemory (2, B, N, W)    dL/dM carried back; dmemory[T % 2] zero at T-1
    dweights (B, H, N)      dL/dw carried back                            (zero at T-1)

After the backward of step 0, ``dmemory[0]`` is dL/dM_0, ``dweights`` dL/dw_0
and ``dzh[:, :R·W]`` (after the caller's product) dL/dreads_0.  The activated
heads of a row, ``act[t, b]``, are laid out by quantity: ``keys (H, W) |
strengths (H) | gates (H) | gamma (H) | shifts (H, S) | erase (Hw, W) |
add (Hw, W) | σ(β raw) (H) | σ(γ raw) (H)``.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, fabs, log1p, sqrt
from libc.stdint cimport uint64_t

from dmem._kernels._buffers import check_buffers
from dmem._kernels.activations cimport (
    _clamp, _sigmoid, _sigmoid_clamped, _softplus_sigmoid, _tanh_clamped)
from dmem._kernels.addressing cimport (
    _expm1_scaled, _from_bits, _to_bits, _softmax,
    _shift_forward, _shift_backward, _sharpen_forward, _sharpen_backward)

cdef double COSINE_EPSILON = 1e-6


cdef struct Sizes:
    Py_ssize_t T, B, I, N, W, R, Hw, H, C, S, K, A, Z, ZH, G, CR
    Py_ssize_t write_head, read_head          # raw interface entries of one head
    Py_ssize_t o_keys, o_strengths, o_gates, o_gamma, o_shifts, o_erase, o_add
    Py_ssize_t o_sig_beta, o_sig_gamma        # offsets in a row of ``act``
    Py_ssize_t work                           # per-row double scratch
    Py_ssize_t group                          # rows per parallel task (B alone decides)
    bint lstm


cdef struct Buffers:
    void* xw
    void* interface_W
    void* interface_WT
    void* interface_b
    void* zh
    void* gates
    void* cell
    void* tcell
    void* hr
    void* act
    void* memory
    void* weights
    void* content
    void* cosines
    void* memory_norms
    void* key_norms
    double* log_weights
    double* norm_cache
    double* pending
    void* dhr
    void* dxi
    void* dzh
    void* da
    void* dcell
    void* dmemory
    void* dweights
    double* work


# ---------------------------------------------------------------- scalar helpers

cdef inline Py_ssize_t _raw_offset(Sizes* n, Py_ssize_t h) noexcept nogil:
    """Start of head ``h`` in the interface vector (write heads first)."""
    if h < n.Hw:
        return h * n.write_head
    return n.Hw * n.write_head + (h - n.Hw) * n.read_head


# ---------------------------------------------------------------- controller

cdef void _lstm_forward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b, double* work,
                            floating tag) noexcept nogil:
    """``[i, f, o, g]`` = σ, σ, σ, tanh of ``gates + xw``; ``c = f c_prev + i g``,
    ``h = o tanh(c)``.  The activations replace the pre-activations; ``h`` goes
    to ``hr[t]`` and to the controller input of step t + 1.  Each loop is over
    a whole row, so that the compiler vectorises the activations.  ``work`` is
    5C doubles."""
    cdef Py_ssize_t u, C = n.C, tb = t * n.B + b
    cdef const floating* xw = <floating*>p.xw + tb * n.G
    cdef floating* gates = <floating*>p.gates + tb * n.G
    cdef const floating* cell_prev = <floating*>p.cell + tb * C
    cdef floating* cell = <floating*>p.cell + (tb + n.B) * C
    cdef floating* tcell = <floating*>p.tcell + tb * C
    cdef floating* h_out = <floating*>p.hr + tb * n.CR
    cdef floating* h_next
    cdef double* a = work              # 4C: pre-activations, then activations
    cdef double* tc = work + 4 * C     # C: c, then tanh(c)
    cdef floating c
    for u in range(4 * C):
        a[u] = _clamp(gates[u] + xw[u])
    for u in range(3 * C):
        a[u] = _sigmoid_clamped(a[u])
    for u in range(3 * C, 4 * C):
        a[u] = _tanh_clamped(a[u])
    for u in range(4 * C):
        gates[u] = a[u]
    for u in range(C):
        c = gates[C + u] * cell_prev[u] + gates[u] * gates[3 * C + u]
        cell[u] = c
        tc[u] = _clamp(c)
    for u in range(C):
        tc[u] = _tanh_clamped(tc[u])
    for u in range(C):
        tcell[u] = tc[u]
    for u in range(C):
        h_out[u] = gates[2 * C + u] * tcell[u]
    if t + 1 < n.T:
        h_next = <floating*>p.zh + (tb + n.B) * n.ZH + n.Z
        for u in range(C):
            h_next[u] = h_out[u]


cdef void _tanh_layer_forward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                                  double* work, floating tag) noexcept nogil:
    """``h = tanh(gates + xw)``, kept in ``gates`` for the backward.  ``work`` is C doubles."""
    cdef Py_ssize_t u, tb = t * n.B + b
    cdef const floating* xw = <floating*>p.xw + tb * n.G
    cdef floating* gates = <floating*>p.gates + tb * n.G
    cdef floating* h_out = <floating*>p.hr + tb * n.CR
    for u in range(n.C):
        work[u] = _clamp(gates[u] + xw[u])
    for u in range(n.C):
        work[u] = _tanh_clamped(work[u])
    for u in range(n.C):
        gates[u] = work[u]
        h_out[u] = gates[u]


cdef void _lstm_backward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                             double* dh, floating tag) noexcept nogil:
    """``dh`` (C, in: dL/dh from the interface; overwritten) plus ``dhr`` and the
    controller input of step t + 1 is dL/dh_t; dL/d(pre-activations) into
    ``da[t]``; ``dcell`` carries dL/dc_t in and dL/dc_{t-1} out.  Loops over
    few arrays each, so that the compiler vectorises them."""
    cdef Py_ssize_t u, C = n.C, tb = t * n.B + b
    cdef const floating* gates = <floating*>p.gates + tb * n.G
    cdef const floating* cell_prev = <floating*>p.cell + tb * C
    cdef const floating* tcell = <floating*>p.tcell + tb * C
    cdef const floating* dhr = <floating*>p.dhr + tb * n.CR
    cdef const floating* dh_next = <floating*>p.dzh + b * (n.ZH - n.I) + n.R * n.W
    cdef floating* dcell = <floating*>p.dcell + b * C
    cdef floating* da = <floating*>p.da + tb * n.G
    cdef double* dc = dh + C
    for u in range(C):
        dh[u] = (dhr[u] + dh[u]) + dh_next[u]
    for u in range(C):
        dc[u] = dcell[u] + dh[u] * gates[2 * C + u] * (1.0 - tcell[u] * tcell[u])
    for u in range(C):
        da[2 * C + u] = dh[u] * tcell[u] * gates[2 * C + u] * (1.0 - gates[2 * C + u])
    for u in range(C):
        da[u] = dc[u] * gates[3 * C + u] * gates[u] * (1.0 - gates[u])
    for u in range(C):
        da[C + u] = dc[u] * cell_prev[u] * gates[C + u] * (1.0 - gates[C + u])
    for u in range(C):
        da[3 * C + u] = dc[u] * gates[u] * (1.0 - gates[3 * C + u] * gates[3 * C + u])
    for u in range(C):
        dcell[u] = dc[u] * gates[C + u]


cdef void _tanh_layer_backward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                                   const double* dh_interface, floating tag) noexcept nogil:
    cdef Py_ssize_t u, tb = t * n.B + b
    cdef const floating* h = <floating*>p.gates + tb * n.G
    cdef const floating* dhr = <floating*>p.dhr + tb * n.CR
    cdef floating* da = <floating*>p.da + tb * n.G
    for u in range(n.C):
        da[u] = (dhr[u] + dh_interface[u]) * (1.0 - h[u] * h[u])


# ---------------------------------------------------------------- interface

ctypedef fused vector_type:
    float
    double


cdef void _matvec_rows(const vector_type* x, const floating* rows, Py_ssize_t m,
                       Py_ssize_t n, double* out) noexcept nogil:
    """``out (n) = Σ_c x_c rows[c]`` for ``rows`` (m × n, m ≥ 1), in double; four rows
    at a time (one pass over ``out`` per four rows; a fixed order)."""
    cdef Py_ssize_t c, j
    cdef double x0, x1, x2, x3
    cdef const floating* r0
    cdef const floating* r1
    cdef const floating* r2
    cdef const floating* r3
    if m >= 4:
        x0 = x[0]
        x1 = x[1]
        x2 = x[2]
        x3 = x[3]
        r0 = rows
        r1 = r0 + n
        r2 = r1 + n
        r3 = r2 + n
        for j in range(n):
            out[j] = (x0 * r0[j] + x1 * r1[j]) + (x2 * r2[j] + x3 * r3[j])
        c = 4
    else:
        x0 = x[0]
        for j in range(n):
            out[j] = x0 * rows[j]
        c = 1
    while c + 4 <= m:
        x0 = x[c]
        x1 = x[c + 1]
        x2 = x[c + 2]
        x3 = x[c + 3]
        r0 = rows + c * n
        r1 = r0 + n
        r2 = r1 + n
        r3 = r2 + n
        for j in range(n):
            out[j] = out[j] + ((x0 * r0[j] + x1 * r1[j]) + (x2 * r2[j] + x3 * r3[j]))
        c = c + 4
    while c < m:
        x0 = x[c]
        r0 = rows + c * n
        for j in range(n):
            out[j] = out[j] + x0 * r0[j]
        c = c + 1


# ---------------------------------------------------------------- heads

cdef void _activate_row(Sizes* n, const double* raw, const floating* bias,
                        floating* act, double* work) noexcept nogil:
    """The heads' activations (NTM paper §3.3) of one row of ``ξ = raw + interface_b``.
    ``work`` is S doubles."""
    cdef Py_ssize_t h, j, base, W = n.W, S = n.S
    cdef double x, sig, top, total
    cdef floating* shifts
    for h in range(n.H):
        base = _raw_offset(n, h)
        for j in range(W):
            act[n.o_keys + h * W + j] = raw[base + j] + bias[base + j]
        x = raw[base + W] + bias[base + W]
        act[n.o_strengths + h] = _softplus_sigmoid(x, &sig)
        act[n.o_sig_beta + h] = sig
        act[n.o_gates + h] = _sigmoid(raw[base + W + 1] + bias[base + W + 1])
        # softmax over the S shifts
        for j in range(S):
            work[j] = raw[base + W + 2 + j] + bias[base + W + 2 + j]
        top = work[0]
        for j in range(1, S):
            if work[j] > top:
                top = work[j]
        total = 0.0
        for j in range(S):
            work[j] = exp(work[j] - top)
            total = total + work[j]
        shifts = act + n.o_shifts + h * S
        for j in range(S):
            shifts[j] = work[j] / total
        x = raw[base + W + 2 + S] + bias[base + W + 2 + S]
        act[n.o_gamma + h] = 1.0 + _softplus_sigmoid(x, &sig)
        act[n.o_sig_gamma + h] = sig
        if h < n.Hw:
            base = base + W + 3 + S
            for j in range(W):
                act[n.o_erase + h * W + j] = _sigmoid(raw[base + j] + bias[base + j])
                act[n.o_add + h * W + j] = raw[base + W + j] + bias[base + W + j]


cdef void _activate_backward_row(Sizes* n, const floating* act, const double* dparams,
                                 const double* dkeys, const double* derase,
                                 const double* dadd, floating* dxi) noexcept nogil:
    """dL/dξ of one row from the gradients of the activated quantities.

    ``dparams`` holds per head ``dβ, dg, dγ, ds (S)``; ``dkeys (H, W)``,
    ``derase``, ``dadd (Hw, W)``.
    """
    cdef Py_ssize_t h, j, base, W = n.W, S = n.S
    cdef const double* d
    cdef const floating* s
    cdef double g, e, mean
    for h in range(n.H):
        base = _raw_offset(n, h)
        d = dparams + h * (S + 3)
        for j in range(W):
            dxi[base + j] = dkeys[h * W + j]
        dxi[base + W] = d[0] * act[n.o_sig_beta + h]
        g = act[n.o_gates + h]
        dxi[base + W + 1] = d[1] * g * (1.0 - g)
        s = act + n.o_shifts + h * S
        mean = 0.0
        for j in range(S):
            mean = mean + s[j] * d[3 + j]
        for j in range(S):
            dxi[base + W + 2 + j] = s[j] * (d[3 + j] - mean)
        dxi[base + W + 2 + S] = d[2] * act[n.o_sig_gamma + h]
        if h < n.Hw:
            base = base + W + 3 + S
            for j in range(W):
                e = act[n.o_erase + h * W + j]
                dxi[base + j] = derase[h * W + j] * e * (1.0 - e)
                dxi[base + W + j] = dadd[h * W + j]


# ---------------------------------------------------------------- small loops

cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """``Σ_j a_j b_j`` in double, with four partial sums (a fixed order)."""
    cdef double s0 = 0.0
    cdef double s1 = 0.0
    cdef double s2 = 0.0
    cdef double s3 = 0.0
    cdef Py_ssize_t j = 0
    while j + 4 <= n:
        s0 = s0 + <double>a[j] * b[j]
        s1 = s1 + <double>a[j + 1] * b[j + 1]
        s2 = s2 + <double>a[j + 2] * b[j + 2]
        s3 = s3 + <double>a[j + 3] * b[j + 3]
        j = j + 4
    while j < n:
        s0 = s0 + <double>a[j] * b[j]
        j = j + 1
    return (s0 + s1) + (s2 + s3)


cdef inline double _dot_mixed(const double* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """As :func:`_dot`, for a double and a typed vector."""
    cdef double s0 = 0.0
    cdef double s1 = 0.0
    cdef double s2 = 0.0
    cdef double s3 = 0.0
    cdef Py_ssize_t j = 0
    while j + 4 <= n:
        s0 = s0 + a[j] * b[j]
        s1 = s1 + a[j + 1] * b[j + 1]
        s2 = s2 + a[j + 2] * b[j + 2]
        s3 = s3 + a[j + 3] * b[j + 3]
        j = j + 4
    while j < n:
        s0 = s0 + a[j] * b[j]
        j = j + 1
    return (s0 + s1) + (s2 + s3)


cdef inline double _dot_difference(const double* g, const floating* a, const floating* e,
                                   const floating* m, Py_ssize_t n) noexcept nogil:
    """``Σ_j g_j (a_j − e_j m_j)`` in double, with four partial sums."""
    cdef double s0 = 0.0
    cdef double s1 = 0.0
    cdef double s2 = 0.0
    cdef double s3 = 0.0
    cdef Py_ssize_t j = 0
    while j + 4 <= n:
        s0 = s0 + g[j] * (a[j] - <double>e[j] * m[j])
        s1 = s1 + g[j + 1] * (a[j + 1] - <double>e[j + 1] * m[j + 1])
        s2 = s2 + g[j + 2] * (a[j + 2] - <double>e[j + 2] * m[j + 2])
        s3 = s3 + g[j + 3] * (a[j + 3] - <double>e[j + 3] * m[j + 3])
        j = j + 4
    while j < n:
        s0 = s0 + g[j] * (a[j] - <double>e[j] * m[j])
        j = j + 1
    return (s0 + s1) + (s2 + s3)


cdef void _dots_rows(const vector_type* key, const floating* rows, Py_ssize_t N,
                     Py_ssize_t W, double* out) noexcept nogil:
    """``out_i = key · rows_i`` for the N rows (N × W) of ``rows``, in double: four
    rows at a time (one load of the key for four rows), two partial sums each."""
    cdef Py_ssize_t i = 0, k
    cdef double a0, a1, b0, b1, c0, c1, d0, d1, k0, k1
    cdef const floating* m0
    cdef const floating* m1
    cdef const floating* m2
    cdef const floating* m3
    while i + 4 <= N:
        m0 = rows + i * W
        m1 = m0 + W
        m2 = m1 + W
        m3 = m2 + W
        a0 = 0.0
        a1 = 0.0
        b0 = 0.0
        b1 = 0.0
        c0 = 0.0
        c1 = 0.0
        d0 = 0.0
        d1 = 0.0
        k = 0
        while k + 2 <= W:
            k0 = key[k]
            k1 = key[k + 1]
            a0 = a0 + k0 * m0[k]
            a1 = a1 + k1 * m0[k + 1]
            b0 = b0 + k0 * m1[k]
            b1 = b1 + k1 * m1[k + 1]
            c0 = c0 + k0 * m2[k]
            c1 = c1 + k1 * m2[k + 1]
            d0 = d0 + k0 * m3[k]
            d1 = d1 + k1 * m3[k + 1]
            k = k + 2
        if k < W:
            k0 = key[k]
            a0 = a0 + k0 * m0[k]
            b0 = b0 + k0 * m1[k]
            c0 = c0 + k0 * m2[k]
            d0 = d0 + k0 * m3[k]
        out[i] = a0 + a1
        out[i + 1] = b0 + b1
        out[i + 2] = c0 + c1
        out[i + 3] = d0 + d1
        i = i + 4
    while i < N:
        m0 = rows + i * W
        a0 = 0.0
        a1 = 0.0
        k = 0
        while k + 2 <= W:
            a0 = a0 + key[k] * m0[k]
            a1 = a1 + key[k + 1] * m0[k + 1]
            k = k + 2
        if k < W:
            a0 = a0 + key[k] * m0[k]
        out[i] = a0 + a1
        i = i + 1


cdef void _norms_rows(const floating* rows, Py_ssize_t N, Py_ssize_t W,
                      double* out) noexcept nogil:
    """``out_i = √(rows_i · rows_i + ε)`` for the N rows of ``rows`` (the cosine's
    ε-norms), with :func:`_dots_rows`'s order of summation."""
    cdef Py_ssize_t i = 0, k
    cdef double a0, a1, b0, b1, c0, c1, d0, d1, x0, x1
    cdef const floating* m0
    cdef const floating* m1
    cdef const floating* m2
    cdef const floating* m3
    while i + 4 <= N:
        m0 = rows + i * W
        m1 = m0 + W
        m2 = m1 + W
        m3 = m2 + W
        a0 = 0.0
        a1 = 0.0
        b0 = 0.0
        b1 = 0.0
        c0 = 0.0
        c1 = 0.0
        d0 = 0.0
        d1 = 0.0
        k = 0
        while k + 2 <= W:
            x0 = m0[k]
            x1 = m0[k + 1]
            a0 = a0 + x0 * x0
            a1 = a1 + x1 * x1
            x0 = m1[k]
            x1 = m1[k + 1]
            b0 = b0 + x0 * x0
            b1 = b1 + x1 * x1
            x0 = m2[k]
            x1 = m2[k + 1]
            c0 = c0 + x0 * x0
            c1 = c1 + x1 * x1
            x0 = m3[k]
            x1 = m3[k + 1]
            d0 = d0 + x0 * x0
            d1 = d1 + x1 * x1
            k = k + 2
        if k < W:
            x0 = m0[k]
            a0 = a0 + x0 * x0
            x0 = m1[k]
            b0 = b0 + x0 * x0
            x0 = m2[k]
            c0 = c0 + x0 * x0
            x0 = m3[k]
            d0 = d0 + x0 * x0
        out[i] = a0 + a1
        out[i + 1] = b0 + b1
        out[i + 2] = c0 + c1
        out[i + 3] = d0 + d1
        i = i + 4
    while i < N:
        m0 = rows + i * W
        a0 = 0.0
        a1 = 0.0
        k = 0
        while k + 2 <= W:
            x0 = m0[k]
            x1 = m0[k + 1]
            a0 = a0 + x0 * x0
            a1 = a1 + x1 * x1
            k = k + 2
        if k < W:
            x0 = m0[k]
            a0 = a0 + x0 * x0
        out[i] = a0 + a1
        i = i + 1
    for i in range(N):
        out[i] = sqrt(out[i] + COSINE_EPSILON)


# ---------------------------------------------------------------- fused slot loop (float64, one read and one write head)
#
# The NTM of the paper has one read and one write head.  For it, and in float64,
# the backward's work at a memory slot is one loop over the word whose arrays
# are declared ``__restrict`` (they never overlap), so that the compiler
# vectorises it without run-time overlap checks.  Other configurations and
# float32 run the general loops, which compute the same.

cdef extern from *:
    ctypedef double* double_restrict "double *__restrict"
    ctypedef const double* const_double_restrict "const double *__restrict"


cdef inline double _backward_slot(const_double_restrict grad_next,
                                  const_double_restrict vectors,
                                  const_double_restrict memory,
                                  const_double_restrict memory_prev,
                                  const_double_restrict erase_add,
                                  double_restrict terms, double_restrict grad_read_key,
                                  double_restrict grad_memory_prev,
                                  double_restrict grad_erase_add,
                                  double f_read, double f_key, double f_key_next,
                                  double f_memory, double w, Py_ssize_t W) noexcept nogil:
    """Slot ``i`` of pass 2 of the backward (see :func:`_memory_backward_row`).

    ``vectors`` is ``[dreads | k_r | k_w' (of step t+1)]`` (3W), ``erase_add``
    ``[e | a]`` (2W) and ``grad_erase_add`` their gradients (2W): few arrays, so
    that the loop keeps its pointers in registers.  ``g = dL/dM_t,i =
    grad_next + f_read dreads + f_key k_r + f_key_next k_w' − f_memory M_t,i``;
    adds ``f_key M_t,i`` to dL/dk_r; the write's backward: dL/dM_{t-1},i =
    g ∘ (1 − w e), dL/de −= w g ∘ M_{t-1},i, dL/da += w g; returns
    ``Σ g ∘ (a − e ∘ M_{t-1},i)`` (dL/dww_i), its terms in ``terms``."""
    cdef Py_ssize_t k
    cdef double g, t
    cdef double s0 = 0.0
    cdef double s1 = 0.0
    cdef double s2 = 0.0
    cdef double s3 = 0.0
    for k in range(W):
        g = grad_next[k] + ((f_read * vectors[k] + f_key * vectors[W + k])
                            + (f_key_next * vectors[2 * W + k] - f_memory * memory[k]))
        t = g * memory_prev[k]
        terms[k] = g * erase_add[W + k] - erase_add[k] * t
        grad_read_key[k] = grad_read_key[k] + f_key * memory[k]
        grad_memory_prev[k] = g * (1.0 - w * erase_add[k])
        grad_erase_add[k] = grad_erase_add[k] - w * t
        grad_erase_add[W + k] = grad_erase_add[W + k] + w * g
    k = 0
    while k + 4 <= W:
        s0 = s0 + terms[k]
        s1 = s1 + terms[k + 1]
        s2 = s2 + terms[k + 2]
        s3 = s3 + terms[k + 3]
        k = k + 4
    while k < W:
        s0 = s0 + terms[k]
        k = k + 1
    return (s0 + s1) + (s2 + s3)


cdef void _matvec_rows2(const_double_restrict x_a, const_double_restrict x_b,
                       const_double_restrict rows, Py_ssize_t m, Py_ssize_t n,
                       double_restrict out_a, double_restrict out_b) noexcept nogil:
    """:func:`_matvec_rows` for two vectors ``x`` at once (float64): every output
    entry is computed as there, by the same operations in the same order, and
    each row of ``rows`` is loaded once for the two."""
    cdef Py_ssize_t c, j
    cdef double a0, a1, a2, a3, b0, b1, b2, b3, w0, w1, w2, w3
    cdef const double* r0
    cdef const double* r1
    cdef const double* r2
    cdef const double* r3
    if m < 4:
        a0 = x_a[0]
        b0 = x_b[0]
        for j in range(n):
            out_a[j] = a0 * rows[j]
            out_b[j] = b0 * rows[j]
        c = 1
    else:
        a0, a1, a2, a3 = x_a[0], x_a[1], x_a[2], x_a[3]
        b0, b1, b2, b3 = x_b[0], x_b[1], x_b[2], x_b[3]
        r0 = rows
        r1 = r0 + n
        r2 = r1 + n
        r3 = r2 + n
        for j in range(n):
            w0 = r0[j]
            w1 = r1[j]
            w2 = r2[j]
            w3 = r3[j]
            out_a[j] = (a0 * w0 + a1 * w1) + (a2 * w2 + a3 * w3)
            out_b[j] = (b0 * w0 + b1 * w1) + (b2 * w2 + b3 * w3)
        c = 4
    while c + 4 <= m:
        a0, a1, a2, a3 = x_a[c], x_a[c + 1], x_a[c + 2], x_a[c + 3]
        b0, b1, b2, b3 = x_b[c], x_b[c + 1], x_b[c + 2], x_b[c + 3]
        r0 = rows + c * n
        r1 = r0 + n
        r2 = r1 + n
        r3 = r2 + n
        for j in range(n):
            w0 = r0[j]
            w1 = r1[j]
            w2 = r2[j]
            w3 = r3[j]
            out_a[j] = out_a[j] + ((a0 * w0 + a1 * w1) + (a2 * w2 + a3 * w3))
            out_b[j] = out_b[j] + ((b0 * w0 + b1 * w1) + (b2 * w2 + b3 * w3))
        c = c + 4
    while c < m:
        a0 = x_a[c]
        b0 = x_b[c]
        r0 = rows + c * n
        for j in range(n):
            out_a[j] = out_a[j] + a0 * r0[j]
            out_b[j] = out_b[j] + b0 * r0[j]
        c = c + 1


# ---------------------------------------------------------------- one head's weighting

cdef void _address_head(Sizes* n, const floating* act, Py_ssize_t h, const double* dots,
                        const double* norms, const floating* weights_prev, floating* weights,
                        floating* content, floating* cosines, floating* key_norms,
                        double* log_weights, double* work) noexcept nogil:
    """``ntm_address`` of head ``h`` from the similarities ``dots_i = k·M_i`` and the
    memory norms (NTM eqs. 5-9): content weighting, interpolation, shift,
    sharpening.  Saves the content weighting, the cosines, the key norm and
    ``log(w_s + ε)``.  ``work`` is 3N + S doubles.  Arrays indexed by head are
    those of the whole row."""
    cdef Py_ssize_t i, N = n.N, W = n.W, S = n.S
    cdef const floating* key = act + n.o_keys + h * W
    cdef double strength = act[n.o_strengths + h]
    cdef double g = act[n.o_gates + h]
    cdef double key_norm, x
    cdef double* wc = work
    cdef double* wg = work + N
    cdef double* ws = work + 2 * N
    cdef double* s = work + 3 * N
    key_norm = sqrt(_dot(key, key, W) + COSINE_EPSILON)
    key_norms[h] = key_norm
    for i in range(N):
        x = dots[i] / (key_norm * norms[i])
        cosines[h * N + i] = x
        wc[i] = strength * x
    _softmax(wc, N)
    for i in range(N):
        content[h * N + i] = wc[i]
        wg[i] = g * wc[i] + (1.0 - g) * weights_prev[h * N + i]
    for i in range(S):
        s[i] = act[n.o_shifts + h * S + i]
    _shift_forward(wg, s, ws, N, S)
    _sharpen_forward(ws, act[n.o_gamma + h], log_weights + h * N, wc, N)
    for i in range(N):
        weights[h * N + i] = wc[i]


cdef double _address_head_backward(Sizes* n, const floating* act, Py_ssize_t h,
                                   const floating* memory_norms,
                                   const floating* weights_prev, const floating* weights,
                                   const floating* content, const floating* cosines,
                                   const floating* key_norms, const double* log_weights,
                                   const double* grad_weights, double* row_key,
                                   double* row_memory, double* dparams,
                                   floating* grad_weights_prev, double* work) noexcept nogil:
    """Backward of :func:`_address_head` down to the similarities.

    From dL/dw (``grad_weights``, N) writes ``dβ, dg, dγ, ds`` to ``dparams``
    and dL/dw_prev to ``grad_weights_prev`` (head ``h``'s row), and the factors
    of the memory's and the key's gradients: with ``c_i = k·M_i / (|k| |M_i|)``
    (ε-norms) and ``gc_i`` = dL/dc_i, ``dL/dM_i = row_key_i k − row_memory_i M_i``
    and ``dL/dk = Σ_i row_key_i M_i − (Σ_i gc_i c_i) k / |k|²``; returns
    ``Σ_i gc_i c_i``.  The norms are at least √ε = 1e-3.  ``work`` is 5N + 2S
    doubles.
    """
    cdef Py_ssize_t i, N = n.N, S = n.S
    cdef double g = act[n.o_gates + h]
    cdef double strength = act[n.o_strengths + h]
    cdef double inverse_key_norm = 1.0 / key_norms[h]
    cdef double grad_g, gwg, mean, gz, gc, u, grad_strength, cos_dot
    cdef double* wg = work
    cdef double* ws = work + N
    cdef double* gws = work + 2 * N
    cdef double* gwc = work + 3 * N
    cdef double* s = work + 4 * N
    cdef double* gs = work + 4 * N + S
    cdef const floating* wc = content + h * N
    cdef const floating* cosine = cosines + h * N
    # recompute the interpolated and shifted weightings (O(N S))
    for i in range(N):
        wg[i] = g * wc[i] + (1.0 - g) * weights_prev[h * N + i]
    for i in range(S):
        s[i] = act[n.o_shifts + h * S + i]
    _shift_forward(wg, s, ws, N, S)
    # sharpening, then shift
    dparams[2] = _sharpen_backward(ws, weights + h * N, log_weights + h * N,
                                   act[n.o_gamma + h], grad_weights, gws, N)
    _shift_backward(wg, s, gws, gwc, gs, N, S)
    for i in range(S):
        dparams[3 + i] = gs[i]
    # interpolation
    grad_g = 0.0
    for i in range(N):
        gwg = gwc[i]
        grad_g = grad_g + gwg * (wc[i] - weights_prev[h * N + i])
        grad_weights_prev[h * N + i] = (1.0 - g) * gwg
        gwc[i] = g * gwg
    dparams[1] = grad_g
    # content weighting: softmax, then β·cos
    mean = 0.0
    for i in range(N):
        mean = mean + wc[i] * gwc[i]
    grad_strength = 0.0
    cos_dot = 0.0
    for i in range(N):
        gz = wc[i] * (gwc[i] - mean)
        grad_strength = grad_strength + gz * cosine[i]
        gc = gz * strength
        cos_dot = cos_dot + gc * cosine[i]
        u = 1.0 / memory_norms[i]
        row_key[i] = gc * inverse_key_norm * u
        row_memory[i] = gc * cosine[i] * u * u
    dparams[0] = grad_strength
    return cos_dot


# ---------------------------------------------------------------- memory access of a step

cdef void _memory_forward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                              bint fresh_norms, double* row_work, floating tag) noexcept nogil:
    """The memory access of row ``b`` at step ``t`` from its activated heads."""
    cdef Py_ssize_t B = n.B, N = n.N, W = n.W, H = n.H, Hw = n.Hw, R = n.R
    cdef Py_ssize_t tb = t * B + b, NW = N * W, i, k, h
    cdef floating* act = <floating*>p.act + tb * n.A
    cdef const floating* memory_prev = <floating*>p.memory + tb * NW
    cdef floating* memory = <floating*>p.memory + (tb + B) * NW
    cdef const floating* weights_prev = <floating*>p.weights + tb * H * N
    cdef floating* weights = <floating*>p.weights + (tb + B) * H * N
    cdef floating* content = <floating*>p.content + tb * H * N
    cdef floating* cosines = <floating*>p.cosines + tb * H * N
    cdef floating* memory_norms = <floating*>p.memory_norms + tb * 2 * N
    cdef floating* key_norms = <floating*>p.key_norms + tb * H
    cdef double* log_weights = p.log_weights + tb * H * N
    cdef double* norms = p.norm_cache + b * N
    cdef double* dots = row_work                         # H N
    cdef double* reads_acc = dots + H * N                # R W
    cdef double* work = reads_acc + R * W                # 3N + S
    cdef floating* reads = <floating*>p.hr + tb * n.CR + n.C
    cdef floating* zh_next
    cdef const floating* mp
    cdef floating* mt
    cdef const floating* e
    cdef const floating* a
    cdef double w

    # 1. the write keys' similarities with M_{t-1}; its norms are those the read
    #    heads of step t-1 computed, unless this is the first step
    for h in range(Hw):
        _dots_rows(act + n.o_keys + h * W, memory_prev, N, W, dots + h * N)
    if fresh_norms:
        _norms_rows(memory_prev, N, W, norms)
    for i in range(N):
        memory_norms[i] = norms[i]
    for h in range(Hw):
        _address_head(n, act, h, dots + h * N, norms, weights_prev, weights, content,
                      cosines, key_norms, log_weights, work)

    # 2. M_t = M_{t-1} ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ, its norms and the read
    #    keys' similarities with it
    for i in range(N):
        mp = memory_prev + i * W
        mt = memory + i * W
        w = weights[i]
        e = act + n.o_erase
        a = act + n.o_add
        if Hw == 1:
            for k in range(W):
                mt[k] = mp[k] * (1.0 - w * e[k]) + w * a[k]
        else:
            for k in range(W):
                mt[k] = mp[k] * (1.0 - w * e[k])
            for h in range(1, Hw):
                w = weights[h * N + i]
                e = act + n.o_erase + h * W
                for k in range(W):
                    mt[k] = mt[k] * (1.0 - w * e[k])
            for h in range(Hw):
                w = weights[h * N + i]
                a = act + n.o_add + h * W
                for k in range(W):
                    mt[k] = mt[k] + w * a[k]
    _norms_rows(memory, N, W, norms)
    for h in range(Hw, H):
        _dots_rows(act + n.o_keys + h * W, memory, N, W, dots + h * N)
    for i in range(N):
        memory_norms[N + i] = norms[i]
    for h in range(Hw, H):
        _address_head(n, act, h, dots + h * N, norms, weights_prev, weights, content,
                      cosines, key_norms, log_weights, work)

    # 3. reads_t = Σ_i wr_i M_t,i
    for h in range(R):
        _matvec_rows(weights + (Hw + h) * N, memory, N, W, reads_acc + h * W)
    for k in range(R * W):
        reads[k] = reads_acc[k]
    if t + 1 < n.T:
        zh_next = <floating*>p.zh + (tb + B) * n.ZH + n.I
        for k in range(R * W):
            zh_next[k] = reads[k]


cdef void _write_backward_slot(const floating* memory_prev, const floating* weights,
                               const floating* erase, const floating* add,
                               const double* grad, const floating* grad_weights_next,
                               floating* grad_memory_prev, double* grad_weights,
                               double* grad_erase, double* grad_add, double* scratch,
                               Py_ssize_t i, Py_ssize_t N, Py_ssize_t Hw,
                               Py_ssize_t W) noexcept nogil:
    """The write's backward at slot ``i`` (``memory.pyx``, ``_write_backward_row``).

    ``grad`` is dL/dM_t,i (W); writes dL/dM_{t-1},i, dL/dww_h,i (plus the
    gradient carried from step t+1) and adds to dL/de_h, dL/da_h.  With
    ``q_h = 1 − ww_h,i e_h`` and ``t_h = grad ∘ M_{t-1},i ∘ Π_{h'≠h} q_{h'}``:
    ``dww_h,i = grad·a_h − e_h·t_h``, ``de_h −= ww_h,i t_h``,
    ``da_h += ww_h,i grad``; the products over the other heads are prefix ×
    suffix (no division by q).  ``scratch`` is (Hw + 2) W doubles.  Each loop
    touches few arrays, so that the compiler vectorises it.
    """
    cdef Py_ssize_t h, k
    cdef double w
    cdef const floating* mp = memory_prev + i * W
    cdef const floating* e
    cdef const floating* a
    cdef double* de
    cdef double* da
    cdef double* tr = scratch                     # t_h
    cdef double* prefix = scratch + W
    cdef double* suffix = scratch + 2 * W         # Hw × W: Π_{h'>h} q_{h'}
    cdef floating* out = grad_memory_prev + i * W
    if Hw == 1:
        w = weights[i]
        for k in range(W):
            out[k] = grad[k] * (1.0 - w * erase[k])
        for k in range(W):
            grad_erase[k] = grad_erase[k] - w * (grad[k] * mp[k])
            grad_add[k] = grad_add[k] + w * grad[k]
        grad_weights[i] = _dot_difference(grad, add, erase, mp, W) + grad_weights_next[i]
        return
    for k in range(W):
        suffix[(Hw - 1) * W + k] = 1.0
        prefix[k] = 1.0
    for h in range(Hw - 1, 0, -1):
        w = weights[h * N + i]
        e = erase + h * W
        for k in range(W):
            suffix[(h - 1) * W + k] = suffix[h * W + k] * (1.0 - w * e[k])
    for h in range(Hw):
        w = weights[h * N + i]
        e = erase + h * W
        a = add + h * W
        de = grad_erase + h * W
        da = grad_add + h * W
        for k in range(W):
            tr[k] = grad[k] * mp[k] * (prefix[k] * suffix[h * W + k])
        for k in range(W):
            prefix[k] = prefix[k] * (1.0 - w * e[k])
        for k in range(W):
            de[k] = de[k] - w * tr[k]
            da[k] = da[k] + w * grad[k]
        grad_weights[h * N + i] = (_dot_mixed(grad, a, W) - _dot_mixed(tr, e, W)
                                   + grad_weights_next[h * N + i])
    for k in range(W):
        out[k] = grad[k] * prefix[k]


cdef void _memory_backward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                               double* row_work, floating tag) noexcept nogil:
    """Backward of the memory access of row ``b`` at step ``t``: writes dL/dξ_t.

    The write heads' similarity terms of dL/dM_{t-1}, ``row_key_i k_w −
    row_memory_i M_{t-1},i``, are left in ``pending`` and added by the next
    call (step t − 1) in its pass over M_{t-1}; step 0 adds its own.
    """
    cdef Py_ssize_t B = n.B, N = n.N, W = n.W, H = n.H, Hw = n.Hw, R = n.R, S = n.S
    cdef Py_ssize_t tb = t * B + b, NW = N * W, i, k, h
    cdef const floating* act = <floating*>p.act + tb * n.A
    cdef const floating* memory_prev = <floating*>p.memory + tb * NW
    cdef const floating* memory = <floating*>p.memory + (tb + B) * NW
    cdef const floating* weights_prev = <floating*>p.weights + tb * H * N
    cdef const floating* weights = <floating*>p.weights + (tb + B) * H * N
    cdef const floating* content = <floating*>p.content + tb * H * N
    cdef const floating* cosines = <floating*>p.cosines + tb * H * N
    cdef const floating* memory_norms = <floating*>p.memory_norms + tb * 2 * N
    cdef const floating* key_norms = <floating*>p.key_norms + tb * H
    cdef const double* log_weights = p.log_weights + tb * H * N
    cdef const floating* dhr = <floating*>p.dhr + tb * n.CR + n.C
    cdef const floating* dzh = <floating*>p.dzh + b * (n.ZH - n.I)
    # dL/dM_t (from step t + 1) in, dL/dM_{t-1} out
    cdef const floating* dmemory = <floating*>p.dmemory + ((t + 1) % 2 * B + b) * NW
    cdef floating* dmemory_prev = <floating*>p.dmemory + (t % 2 * B + b) * NW
    cdef floating* dweights = <floating*>p.dweights + b * H * N
    # the write heads' similarity factors of step t + 1 (in), of step t (out)
    cdef bint pending = t + 1 < n.T
    cdef double* pending_key = p.pending + b * 2 * Hw * N     # Hw N
    cdef double* pending_memory = pending_key + Hw * N       # Hw N
    cdef const floating* act_next = act                      # step t + 1, if pending
    cdef double* dreads = row_work                       # R W
    cdef double* dw = dreads + R * W                     # H N  dL/d[ww_t, wr_t]
    cdef double* row_key = dw + H * N                    # H N
    cdef double* row_memory = row_key + H * N            # H N
    cdef double* cos_dot = row_memory + H * N            # H
    cdef double* dkeys = cos_dot + H                     # H W
    cdef double* derase = dkeys + H * W                  # Hw W
    cdef double* dadd = derase + Hw * W                  # Hw W
    cdef double* dparams = dadd + Hw * W                 # H (S + 3)
    cdef double* grad = dparams + H * (S + 3)            # W: dL/dM_t,i
    cdef double* scratch = grad + W                      # max((Hw + 2) W, 3W, 5N + 2S)
    cdef double* write_key_factor = pending_key          # where the write heads' factors go
    cdef double* write_memory_factor = pending_memory
    cdef const floating* mp
    cdef const floating* mt
    cdef const floating* key
    cdef const floating* dm
    cdef floating* dmp
    cdef double f0, f1, f2, f3, scale
    if pending:
        act_next = act + B * n.A
    if t == 0:
        write_key_factor = row_key
        write_memory_factor = row_memory
    for k in range(R * W):
        dreads[k] = dhr[k] + dzh[k]

    # 1. read: dL/dwr_i = dreads · M_t,i, plus what step t+1 carried back
    for h in range(R):
        _dots_rows(dreads + h * W, memory, N, W, dw + (Hw + h) * N)
    for i in range(Hw * N, H * N):
        dw[i] = dw[i] + dweights[i]
    for h in range(Hw, H):
        cos_dot[h] = _address_head_backward(
            n, act, h, memory_norms + N, weights_prev, weights, content, cosines, key_norms,
            log_weights, dw + h * N, row_key + h * N, row_memory + h * N,
            dparams + h * (S + 3), dweights, scratch)
    for k in range(H * W):
        dkeys[k] = 0.0
    for k in range(Hw * W):
        derase[k] = 0.0
        dadd[k] = 0.0

    # 2. dL/dM_t,i = carried + the write heads' similarities of step t+1 + read +
    #    the read heads' similarities; then the write's backward
    if floating is double:
        if Hw == 1 and R == 1:
            # [dreads | k_r | k_w of step t+1] side by side (erase and add, and
            # their gradients, are already)
            for k in range(W):
                scratch[k] = dreads[k]
                scratch[W + k] = act[n.o_keys + W + k]
                scratch[2 * W + k] = act_next[n.o_keys + k]
            for i in range(N):
                f2 = row_memory[N + i]
                f3 = 0.0
                if pending:
                    f3 = pending_key[i]
                    f2 = f2 + pending_memory[i]
                dw[i] = _backward_slot(
                    dmemory + i * W, scratch, memory + i * W, memory_prev + i * W,
                    act + n.o_erase, grad, dkeys + W, dmemory_prev + i * W, derase,
                    weights[N + i], row_key[N + i], f3, f2, weights[i], W) + dweights[i]
    if not (floating is double and Hw == 1 and R == 1):
        for i in range(N):
            mt = memory + i * W
            dm = dmemory + i * W
            for k in range(W):
                grad[k] = dm[k]
            if pending:
                for h in range(Hw):
                    f1 = pending_key[h * N + i]
                    f2 = pending_memory[h * N + i]
                    key = act_next + n.o_keys + h * W
                    for k in range(W):
                        grad[k] = grad[k] + (f1 * key[k] - f2 * mt[k])
            for h in range(R):
                f0 = weights[(Hw + h) * N + i]
                f1 = row_key[(Hw + h) * N + i]
                f2 = row_memory[(Hw + h) * N + i]
                key = act + n.o_keys + (Hw + h) * W
                for k in range(W):
                    grad[k] = grad[k] + ((f0 * dreads[h * W + k] + f1 * key[k]) - f2 * mt[k])
                    dkeys[(Hw + h) * W + k] = dkeys[(Hw + h) * W + k] + f1 * mt[k]
            _write_backward_slot(memory_prev, weights, act + n.o_erase, act + n.o_add, grad,
                                 dweights, dmemory_prev, dw, derase, dadd, scratch, i, N, Hw, W)
    for h in range(Hw, H):
        key = act + n.o_keys + h * W
        scale = cos_dot[h] / (<double>key_norms[h] * key_norms[h])
        for k in range(W):
            dkeys[h * W + k] = dkeys[h * W + k] - scale * key[k]
    for h in range(Hw):
        cos_dot[h] = _address_head_backward(
            n, act, h, memory_norms, weights_prev, weights, content, cosines, key_norms,
            log_weights, dw + h * N, write_key_factor + h * N, write_memory_factor + h * N,
            dparams + h * (S + 3), dweights, scratch)

    # 3. the write heads' similarities with M_{t-1}: dL/dk_w here; their part of
    #    dL/dM_{t-1} at step t - 1, or now at step 0
    for h in range(Hw):
        _matvec_rows(write_key_factor + h * N, memory_prev, N, W, grad)
        for k in range(W):
            dkeys[h * W + k] = dkeys[h * W + k] + grad[k]
    if t == 0:
        for i in range(N):
            mp = memory_prev + i * W
            dmp = dmemory_prev + i * W
            for h in range(Hw):
                f1 = row_key[h * N + i]
                f2 = row_memory[h * N + i]
                key = act + n.o_keys + h * W
                for k in range(W):
                    dmp[k] = dmp[k] + (f1 * key[k] - f2 * mp[k])
    for h in range(Hw):
        key = act + n.o_keys + h * W
        scale = cos_dot[h] / (<double>key_norms[h] * key_norms[h])
        for k in range(W):
            dkeys[h * W + k] = dkeys[h * W + k] - scale * key[k]
    _activate_backward_row(n, act, dparams, dkeys, derase, dadd, <floating*>p.dxi + tb * n.K)


# ---------------------------------------------------------------- a step of a row

cdef void _interface_rows(Sizes* n, const floating* x, Py_ssize_t x_stride,
                          const floating* weights, Py_ssize_t m, Py_ssize_t k,
                          Py_ssize_t b0, Py_ssize_t b1, double* work,
                          Py_ssize_t work_stride) noexcept nogil:
    """``work[b] (k) = x[b] · weights`` (m × k) for the rows ``b0 ≤ b < b1``; in
    float64 two rows at a time.  A row's result does not depend on the others."""
    cdef Py_ssize_t b = b0
    if floating is double:
        while b + 2 <= b1:
            _matvec_rows2(x + b * x_stride, x + (b + 1) * x_stride, weights, m, k,
                          work + b * work_stride, work + (b + 1) * work_stride)
            b = b + 2
    while b < b1:
        _matvec_rows(x + b * x_stride, weights, m, k, work + b * work_stride)
        b = b + 1


cdef void _forward_rows(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b0, Py_ssize_t b1,
                        bint fresh_norms, floating tag) noexcept nogil:
    """Step ``t`` forward for the rows ``b0 ≤ b < b1``."""
    cdef Py_ssize_t b, tb
    cdef double* work
    for b in range(b0, b1):
        work = p.work + b * n.work
        if n.lstm:
            _lstm_forward_row(n, p, t, b, work, tag)
        else:
            _tanh_layer_forward_row(n, p, t, b, work, tag)
    # ξ_t = h_t · interface_W (+ interface_b in the activations)
    _interface_rows(n, <floating*>p.hr + t * n.B * n.CR, n.CR, <floating*>p.interface_W,
                    n.C, n.K, b0, b1, p.work, n.work)
    for b in range(b0, b1):
        tb = t * n.B + b
        work = p.work + b * n.work
        _activate_row(n, work, <floating*>p.interface_b, <floating*>p.act + tb * n.A,
                      work + n.K)
        _memory_forward_row(n, p, t, b, fresh_norms, work, tag)


cdef void _backward_rows(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b0, Py_ssize_t b1,
                         floating tag) noexcept nogil:
    """Step ``t`` backward for the rows ``b0 ≤ b < b1``."""
    cdef Py_ssize_t b
    cdef double* work
    for b in range(b0, b1):
        _memory_backward_row(n, p, t, b, p.work + b * n.work, tag)
    # dL/dh_t from the interface: dxi_t · interface_Wᵀ
    _interface_rows(n, <floating*>p.dxi + t * n.B * n.K, n.K, <floating*>p.interface_WT,
                    n.K, n.C, b0, b1, p.work, n.work)
    for b in range(b0, b1):
        work = p.work + b * n.work
        if n.lstm:
            _lstm_backward_row(n, p, t, b, work, tag)
        else:
            _tanh_layer_backward_row(n, p, t, b, work, tag)


cdef void _forward(Sizes* n, Buffers* p, Py_ssize_t t, bint fresh_norms, int num_threads,
                   floating tag) noexcept nogil:
    cdef Py_ssize_t g, G = n.group
    for g in prange((n.B + G - 1) // G, schedule="static", num_threads=num_threads):
        _forward_rows(n, p, t, g * G, min(n.B, g * G + G), fresh_norms, tag)


cdef void _backward(Sizes* n, Buffers* p, Py_ssize_t t, int num_threads,
                    floating tag) noexcept nogil:
    cdef Py_ssize_t g, G = n.group
    for g in prange((n.B + G - 1) // G, schedule="static", num_threads=num_threads):
        _backward_rows(n, p, t, g * G, min(n.B, g * G + G), tag)


# ---------------------------------------------------------------- the sequence

cdef dict _shapes(Sizes* n):
    """Expected shape of every buffer given by the caller."""
    T, B, N, W, H, C = n.T, n.B, n.N, n.W, n.H, n.C
    return {
        "xw": (T, B, n.G), "interface_W": (C, n.K), "interface_WT": (n.K, C),
        "interface_b": (n.K,), "zh": (T, B, n.ZH), "gates": (T, B, n.G),
        "cell": (T + 1, B, C), "tcell": (T, B, C), "hr": (T, B, n.CR),
        "act": (T, B, n.A), "memory": (T + 1, B, N, W), "weights": (T + 1, B, H, N),
        "content": (T, B, H, N), "cosines": (T, B, H, N), "memory_norms": (T, B, 2, N),
        "key_norms": (T, B, H), "log_weights": (T, B, H, N),
        "dhr": (T, B, n.CR), "dxi": (T, B, n.K), "dzh": (B, n.ZH - n.I), "da": (T, B, n.G),
        "dcell": (B, C), "dmemory": (2, B, N, W), "dweights": (B, H, N),
    }


def buffer_shapes(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t N, Py_ssize_t W,
                  Py_ssize_t R, Py_ssize_t Hw, Py_ssize_t C, Py_ssize_t S, bint lstm):
    """``{name: shape}`` of the buffers an :class:`NTMSequence` of these sizes takes
    (``log_weights`` is float64, the others of the model's dtype)."""
    cdef Sizes n
    _set_sizes(&n, T, B, I, N, W, R, Hw, C, S, lstm)
    return _shapes(&n)


DOUBLE_BUFFERS = ("log_weights",)
"""Buffers that are float64 whatever the dtype of the model."""


cdef void _set_sizes(Sizes* n, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t N,
                     Py_ssize_t W, Py_ssize_t R, Py_ssize_t Hw, Py_ssize_t C, Py_ssize_t S,
                     bint lstm) noexcept:
    cdef Py_ssize_t H = R + Hw
    cdef Py_ssize_t forward_work, backward_work
    n.T, n.B, n.I, n.N, n.W, n.R, n.Hw, n.C, n.S = T, B, I, N, W, R, Hw, C, S
    n.H = H
    n.lstm = lstm
    n.write_head = 3 * W + S + 3
    n.read_head = W + S + 3
    n.K = Hw * n.write_head + R * n.read_head
    n.A = H * W + 3 * H + H * S + 2 * Hw * W + 2 * H
    n.Z = I + R * W
    n.ZH = n.Z + C if lstm else n.Z
    n.G = 4 * C if lstm else C
    n.CR = C + R * W
    n.o_keys = 0
    n.o_strengths = H * W
    n.o_gates = n.o_strengths + H
    n.o_gamma = n.o_gates + H
    n.o_shifts = n.o_gamma + H
    n.o_erase = n.o_shifts + H * S
    n.o_add = n.o_erase + Hw * W
    n.o_sig_beta = n.o_add + Hw * W
    n.o_sig_gamma = n.o_sig_beta + H
    # forward: ξ (K) and the shifts' softmax (S), then the memory access;
    # backward: the memory access, then dL/dh and dL/dc (2C)
    forward_work = max(5 * C, n.K + S, H * N + R * W + 3 * N + S)
    backward_work = max(2 * C, R * W + 3 * H * N + H + H * W + 2 * Hw * W + H * (S + 3) + W
                        + max((Hw + 2) * W, 3 * W, 5 * N + 2 * S))
    n.work = max(forward_work, backward_work)
    # Rows are processed in groups sharing the interface weights' loads; the group
    # size depends on B only (a row's results do not depend on it anyway).
    n.group = 4 if B >= 8 else (2 if B >= 2 else 1)


cdef void* _pointer(object array, bint is_double):
    """Address of the first element of a validated C-contiguous array."""
    cdef double[::1] d
    cdef float[::1] f
    flat = array.reshape(-1)
    if is_double:
        d = flat
        return <void*>&d[0]
    f = flat
    return <void*>&f[0]


cdef class NTMSequence:
    """The buffers of one sequence and the fused step kernels that run on them.

    ``NTMSequence(T, B, I, N, W, R, Hw, C, S, lstm, buffers, num_threads)``:
    ``buffers`` is a dict of numpy arrays with the shapes of
    :func:`buffer_shapes`, all of one float dtype (``log_weights`` float64),
    C-contiguous and writeable; ``num_threads`` the OpenMP threads of the
    step kernels.  Everything is checked here, once; the step methods then
    only check ``t``.  The sequence keeps references to the arrays, and its
    own scratch.
    """

    cdef Sizes n
    cdef Buffers p
    cdef bint is_double
    cdef int num_threads
    cdef Py_ssize_t next_forward
    cdef readonly dict buffers
    cdef object _scratch

    def __init__(self, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t N, Py_ssize_t W,
                 Py_ssize_t R, Py_ssize_t Hw, Py_ssize_t C, Py_ssize_t S, bint lstm,
                 dict buffers, int num_threads):
        import numpy as np

        for name, value in (("T", T), ("B", B), ("I", I), ("N", N), ("W", W), ("R", R),
                            ("Hw", Hw), ("C", C), ("S", S), ("num_threads", num_threads)):
            if value < 1:
                raise ValueError(f"NTMSequence: {name} must be positive, got {value}")
        if S % 2 != 1:
            raise ValueError(f"NTMSequence: the shift width S must be odd, got {S}")
        _set_sizes(&self.n, T, B, I, N, W, R, Hw, C, S, lstm)
        shapes = _shapes(&self.n)
        dtype = check_buffers("NTMSequence", buffers, shapes, "memory",
                              {name: np.float64 for name in DOUBLE_BUFFERS})
        self.is_double = dtype == np.float64
        self.buffers = dict(buffers)
        norm_cache = np.zeros((B, N), dtype=np.float64)
        pending = np.zeros((B, 2 * Hw * N), dtype=np.float64)
        work = np.zeros((B, self.n.work), dtype=np.float64)
        self._scratch = (norm_cache, pending, work)
        cdef Buffers* p = &self.p
        cdef bint dbl = self.is_double
        p.xw = _pointer(buffers["xw"], dbl)
        p.interface_W = _pointer(buffers["interface_W"], dbl)
        p.interface_WT = _pointer(buffers["interface_WT"], dbl)
        p.interface_b = _pointer(buffers["interface_b"], dbl)
        p.zh = _pointer(buffers["zh"], dbl)
        p.gates = _pointer(buffers["gates"], dbl)
        p.cell = _pointer(buffers["cell"], dbl)
        p.tcell = _pointer(buffers["tcell"], dbl)
        p.hr = _pointer(buffers["hr"], dbl)
        p.act = _pointer(buffers["act"], dbl)
        p.memory = _pointer(buffers["memory"], dbl)
        p.weights = _pointer(buffers["weights"], dbl)
        p.content = _pointer(buffers["content"], dbl)
        p.cosines = _pointer(buffers["cosines"], dbl)
        p.memory_norms = _pointer(buffers["memory_norms"], dbl)
        p.key_norms = _pointer(buffers["key_norms"], dbl)
        p.log_weights = <double*>_pointer(buffers["log_weights"], True)
        p.dhr = _pointer(buffers["dhr"], dbl)
        p.dxi = _pointer(buffers["dxi"], dbl)
        p.dzh = _pointer(buffers["dzh"], dbl)
        p.da = _pointer(buffers["da"], dbl)
        p.dcell = _pointer(buffers["dcell"], dbl)
        p.dmemory = _pointer(buffers["dmemory"], dbl)
        p.dweights = _pointer(buffers["dweights"], dbl)
        p.norm_cache = <double*>_pointer(norm_cache, True)
        p.pending = <double*>_pointer(pending, True)
        p.work = <double*>_pointer(work, True)
        self.num_threads = num_threads
        self.next_forward = 0

    cdef int _check_step(self, Py_ssize_t t) except -1:
        if t < 0 or t >= self.n.T:
            raise IndexError(f"step {t} out of range for a sequence of {self.n.T} steps")
        return 0

    def forward(self, Py_ssize_t t):
        """Step ``t`` forward: controller cell, interface, memory access (module docstring)."""
        self._check_step(t)
        # The norms of M_{t-1} are those the read heads of step t-1 computed.
        cdef bint fresh = t != self.next_forward or t == 0
        with nogil:
            if self.is_double:
                _forward(&self.n, &self.p, t, fresh, self.num_threads, <double>0)
            else:
                _forward(&self.n, &self.p, t, fresh, self.num_threads, <float>0)
        self.next_forward = t + 1

    def backward(self, Py_ssize_t t):
        """Step ``t`` backward: writes ``dxi[t]`` and ``da[t]`` (module docstring)."""
        self._check_step(t)
        with nogil:
            if self.is_double:
                _backward(&self.n, &self.p, t, self.num_threads, <double>0)
            else:
                _backward(&self.n, &self.p, t, self.num_threads, <float>0)
