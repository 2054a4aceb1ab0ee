"""The DNC's time step, fused, for backpropagation through time.

:class:`DNCSequence` holds the time-major arrays of one DNC forward/backward
pass (``dmem/_dnc_bptt.py``), checked once when it is made (shapes, dtypes,
C-contiguity, no overlap), and runs one time step per call over every batch
row.  Between the calls numpy's BLAS does the controller's and the interface's
matrix products; the calls do everything else:

* ``cell_forward(t)``: the controller's activations (LSTM gates and cell, or
  the tanh layer), from ``gates[t] = zh[t]·W``;
* ``memory_forward(t)``: from ``xi[t] = h_t·W``, the interface's bias and
  activations, the write content weighting on ``M_t``, usage, allocation and
  write weighting, the write, the link step, the read content weightings on
  ``M_{t+1}``, the read weighting and the read;
* ``memory_backward(t)`` and ``cell_backward(t)``: their backward passes,
  carrying the cotangents of the state from step t + 1 to step t.

Each piece is the row kernel of its tested op (``memory.pxd``,
``allocation.pxd``, ``addressing.pxd``, the link loops of ``linkage_simd.h``),
so the fused step computes what the ops compute.  Interface vector of a row
(``xi[t, b]``, columns grouped by activation, as in ``dmem/_dnc_bptt.py``)::

    read keys (R, W) | write key (W) | write vector (W)            linear
    read strengths (R) | write strength                            oneplus
    erase (W) | free gates (R) | allocation gate | write gate      σ
    read modes (R, 3)                                              softmax

``act[t, b]`` holds the activated columns from the read strengths on.

Link equations (DNC Methods, as in :mod:`dmem._kernels.linkage`)::

    p    = (1 − Σ_i w_i) p_prev + w
    L_ij = (1 − w_i − w_j) L_prev,ij + w_i p_prev,j,   L_ii = 0
    f_r  = L w_r,   b_r = Lᵀ w_r

Storage (training): ``link[t − 2]`` holds ``L_t`` for ``2 <= t <= T − 1``;
``L_0 = L_1 = 0`` are not stored, and ``L_T`` (read by nothing) goes to
``link_grad``, the buffer that then carries the link cotangent backwards, in
place.  The stored matrices are not read again before the backward pass: when
they take at least :data:`STREAM_MIN_BYTES` in all they are written with
non-temporal stores, which skip reading the destination lines first.  Every
``k``-th memory is kept (``memory``), the others of the current segment in
``memory_segment``, recomputed by :meth:`DNCSequence.recompute_memory`.  With
``link_segments`` the link matrices are kept the same way: ``link`` holds
``L_k, L_2k, ...`` and ``link_segment`` the others of the current segment,
recomputed with the memories (the link update alone; ``T/k + k`` matrices
instead of ``T − 1``).
Inference: ``link_grad`` holds ``L_t`` and two memories alternate, updated in
place.

Every batch row is one thread's work (``prange`` over rows) in a fixed order:
results do not depend on the thread count.
"""

from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp
from libc.stdint cimport int64_t

from dmem._kernels._buffers import check_buffers, check_disjoint
from dmem._kernels.activations cimport (
    _clamp, _sigmoid, _sigmoid_clamped, _softplus_sigmoid, _tanh_clamped)
from dmem._kernels.addressing cimport _content_weights_row, _content_weights_backward_row
from dmem._kernels.allocation cimport _write_weights_row, _write_weights_backward_row
from dmem._kernels.memory cimport _read_row, _read_backward_row, _write_row, _write_backward_row
from dmem._kernels.linkage_simd cimport (
    dmem_link_forward_d, dmem_link_forward_f, dmem_link_backward_d, dmem_link_backward_f,
    dmem_linkage_simd_supported, dmem_linkage_set_simd, dmem_linkage_get_simd)


dmem_linkage_set_simd(2)  # the widest this CPU has

STREAM_MIN_BYTES = 32 * 1024 * 1024
"""Stored link matrices taking at least this many bytes in all (``(T − 2)·B·N²``
values) are written with non-temporal stores."""


# ----------------------------------------------------------------------------
# One batch row
# ----------------------------------------------------------------------------

cdef inline floating _keep(const floating* w, Py_ssize_t n) noexcept nogil:
    """1 − Σ_i w_i, summed in index order."""
    cdef floating s = 0
    cdef Py_ssize_t i
    for i in range(n):
        s = s + w[i]
    return 1 - s


cdef int _forward_row(const floating* lp, const floating* pp, const floating* w,
                      const floating* wr, floating* L, floating* p, floating* f,
                      floating* bw, Py_ssize_t n, Py_ssize_t nr, int nt,
                      int simd) noexcept nogil:
    """Link step of one batch row; -1 when scratch memory cannot be allocated."""
    cdef int status
    cdef floating keep
    cdef Py_ssize_t j
    if floating is double:
        status = dmem_link_forward_d(simd, lp, pp, w, wr, L, f, bw, n, nr, nt)
    else:
        status = dmem_link_forward_f(simd, lp, pp, w, wr, L, f, bw, n, nr, nt)
    keep = _keep(w, n)
    for j in range(n):
        p[j] = keep * pp[j] + w[j]
    return status


cdef int _backward_row(const floating* lp, const floating* pp, const floating* w,
                       const floating* wr, const floating* dL, const floating* dp,
                       const floating* df, const floating* db, floating* dlp,
                       floating* dpp, floating* dw, floating* dwr, Py_ssize_t n,
                       Py_ssize_t nr, int simd) noexcept nogil:
    """Backward of the link step of one batch row (link, then precedence added)."""
    cdef int status
    cdef floating keep, shared = 0
    cdef Py_ssize_t j
    if floating is double:
        status = dmem_link_backward_d(simd, lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n,
                                      nr, 0)
    else:
        status = dmem_link_backward_f(simd, lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n,
                                      nr, 0)
    # precedence: dp_prev += (1 − Σw) dp ;  dw += dp − dp·p_prev
    keep = _keep(w, n)
    for j in range(n):
        shared = shared + dp[j] * pp[j]
    for j in range(n):
        dpp[j] = dpp[j] + keep * dp[j]
        dw[j] = dw[j] + (dp[j] - shared)
    return status


# ----------------------------------------------------------------------------
# The sequence
# ----------------------------------------------------------------------------

cdef struct Sizes:
    Py_ssize_t T, B, I, N, W, R, C, RW, Z, ZH, K, A, G, HR
    Py_ssize_t o_wk, o_wv, o_rs, o_ws, o_er, o_fg, o_ga, o_gw, o_md
    Py_ssize_t k, segments          # every k-th memory kept (training)
    Py_ssize_t link_k               # every link_k-th link matrix kept; 0: all of them
    Py_ssize_t fwork, dwork         # per-row scratch: model dtype, double
    bint lstm, train, stream
    int simd                        # the SIMD level of the link loops (linkage_simd.h)


cdef struct Buffers:
    void* zh
    void* gates
    void* cell
    void* tcell
    void* bc
    void* xi
    void* bi
    void* act
    void* usage
    void* ww
    void* alloc
    int64_t* order
    void* prefix
    void* cw
    void* cw_cos
    void* cw_mnorm
    void* cw_knorm
    void* cr
    void* cr_cos
    void* cr_mnorm
    void* cr_knorm
    void* prec
    void* fwd
    void* bwd
    void* link
    void* link_seg
    void* link_grad
    void* mem_ck
    void* mem_seg
    void* wr
    void* dhr
    void* dzh
    void* dxi
    void* dh
    void* da
    void* dcell
    void* d_mem
    void* d_wr
    void* d_ww
    void* d_u
    void* d_p
    void* fwork
    double* dwork
    int64_t* iwork


cdef void _set_sizes(Sizes* n, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t N,
                     Py_ssize_t W, Py_ssize_t R, Py_ssize_t C, bint lstm, bint train,
                     Py_ssize_t k, bint link_segments) noexcept:
    n.T, n.B, n.I, n.N, n.W, n.R, n.C = T, B, I, N, W, R, C
    n.lstm, n.train = lstm, train
    n.RW = R * W
    n.Z = I + n.RW
    n.ZH = n.Z + C
    n.G = 4 * C if lstm else C
    n.HR = n.RW + C
    n.o_wk = n.RW
    n.o_wv = n.o_wk + W
    n.o_rs = n.o_wv + W
    n.o_ws = n.o_rs + R
    n.o_er = n.o_ws + 1
    n.o_fg = n.o_er + W
    n.o_ga = n.o_fg + R
    n.o_gw = n.o_ga + 1
    n.o_md = n.o_gw + 1
    n.K = n.o_md + 3 * R
    n.A = n.K - n.o_rs
    n.k = k if train else 1
    n.segments = (T + n.k - 1) // n.k
    n.link_k = n.k if (train and link_segments) else 0
    n.fwork = 8 * R * N + 3 * N * W + 9 * N + n.RW + 2 * W
    n.dwork = max(3 * N + W, n.G + C)
    n.stream = 0


cdef dict _dnc_shapes(Sizes* n):
    """Expected shape of every buffer given by the caller (``order`` is int64, the
    others of the model's dtype); training buffers only when training."""
    T, B, N, W, R, C = n.T, n.B, n.N, n.W, n.R, n.C
    shapes = {
        "zh": (T + 1, B, n.ZH), "gates": (T, B, n.G), "cell": (T + 1, B, C),
        "tcell": (T, B, C), "controller_b": (n.G,), "xi": (T, B, n.K),
        "interface_b": (n.K,), "act": (T, B, n.A), "usage": (T + 1, B, N),
        "write_weights": (T + 1, B, N), "allocation": (T, B, N), "order": (T, B, N),
        "prefix": (T, B, N), "cw": (T, B, N), "cw_cos": (T, B, N), "cw_mnorm": (T, B, N),
        "cw_knorm": (T, B), "cr": (T, B, R, N), "cr_cos": (T, B, R, N),
        "cr_mnorm": (T, B, N), "cr_knorm": (T, B, R), "precedence": (T + 1, B, N),
        "forward_weights": (T, B, R, N), "backward_weights": (T, B, R, N),
        "link_grad": (B, N, N), "read_weights": (2, B, R, N),
    }
    if n.train:
        shapes.update({
            "link": (max(T - 2, 0), B, N, N) if n.link_k == 0 else ((T - 1) // n.k, B, N, N),
            "link_segment": (0 if n.link_k == 0 else n.k - 1, B, N, N),
            "memory": (n.segments + 1, B, N, W),
            "memory_segment": (n.k - 1, B, N, W), "dhr": (T, B, n.HR), "dzh": (B, n.ZH),
            "dxi": (T, B, n.K), "dh": (B, C), "da": (T, B, n.G), "dcell": (B, C),
            "d_memory": (B, N, W), "d_read_weights": (B, R, N), "d_write_weights": (B, N),
            "d_usage": (B, N), "d_precedence": (B, N),
        })
    else:
        shapes["memory"] = (2, B, N, W)
    return shapes


def sequence_shapes(Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t N, Py_ssize_t W,
                    Py_ssize_t R, Py_ssize_t C, bint lstm, bint train, Py_ssize_t k=1,
                    bint link_segments=False):
    """``{name: shape}`` of the buffers a :class:`DNCSequence` of these sizes takes
    (``order`` int64, the others of the model's dtype).  When training, every
    ``k``-th memory is kept (the others are recomputed), and with
    ``link_segments`` every ``k``-th link matrix too (else all of them)."""
    cdef Sizes n
    _set_sizes(&n, T, B, I, N, W, R, C, lstm, train, k, link_segments)
    return _dnc_shapes(&n)


cdef void* _address(object array):
    """Address of the first element of a validated C-contiguous array (NULL if empty)."""
    cdef unsigned char[::1] raw
    if array.size == 0:
        return NULL
    raw = array.reshape(-1).view("u1")
    return <void*>&raw[0]


cdef void* _address_in(dict buffers, str name):
    """Address of ``buffers[name]`` (NULL when absent: inference has no backward buffers)."""
    if name not in buffers:
        return NULL
    return _address(buffers[name])


# ---------------------------------------------------------------- rows

cdef inline floating* _memory_at(Sizes* n, Buffers* p, Py_ssize_t j,
                                 floating tag) noexcept nogil:
    """The memory ``M_j`` (all rows): kept checkpoints and the current segment
    (training), or two alternating buffers (inference)."""
    cdef Py_ssize_t size = n.B * n.N * n.W
    if not n.train:
        return <floating*>p.mem_ck + (j % 2) * size
    if j == n.T:
        return <floating*>p.mem_ck + n.segments * size
    if j % n.k == 0:
        return <floating*>p.mem_ck + (j // n.k) * size
    return <floating*>p.mem_seg + (j % n.k - 1) * size


cdef inline floating* _link_at(Sizes* n, Buffers* p, Py_ssize_t j,
                               floating tag) noexcept nogil:
    """The link matrix ``L_j`` (all rows) of a training sequence: NULL for the zero
    ``L_0``, ``L_1``; ``link_grad`` for ``L_T``; else its stored place (every one,
    or the checkpoints ``L_{ik}`` and the current segment)."""
    cdef Py_ssize_t size = n.B * n.N * n.N
    if j < 2:
        return NULL
    if j == n.T:
        return <floating*>p.link_grad
    if n.link_k == 0:
        return <floating*>p.link + (j - 2) * size
    if j % n.link_k == 0:
        return <floating*>p.link + (j // n.link_k - 1) * size
    return <floating*>p.link_seg + (j % n.link_k - 1) * size


cdef void _cell_forward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                            floating tag) noexcept nogil:
    """LSTM: ``[i, f, o, g]`` = σ, σ, σ, tanh of ``gates + b`` (in place),
    ``c = f c_prev + i g``, ``h = o tanh(c)``; tanh layer: ``h = tanh(gates + b)``
    (kept in ``gates``).  ``h`` goes to the controller input of step t + 1.
    Each loop runs over a whole row in double scratch, so that the compiler
    vectorises the activations."""
    cdef Py_ssize_t u, C = n.C, G = n.G, tb = t * n.B + b
    cdef floating* gates = <floating*>p.gates + tb * G
    cdef const floating* bias = <floating*>p.bc
    cdef const floating* cell_prev = <floating*>p.cell + tb * C
    cdef floating* cell = <floating*>p.cell + (tb + n.B) * C
    cdef floating* tcell = <floating*>p.tcell + tb * C
    cdef floating* h = <floating*>p.zh + (tb + n.B) * n.ZH + n.Z
    cdef double* a = p.dwork + b * n.dwork          # G: pre-activations, then activations
    cdef double* c = a + G                          # C: the cell, then its tanh
    for u in range(G):
        a[u] = _clamp(gates[u] + bias[u])
    if not n.lstm:
        for u in range(C):
            a[u] = _tanh_clamped(a[u])
        for u in range(C):
            gates[u] = a[u]
            h[u] = a[u]
        return
    for u in range(3 * C):
        a[u] = _sigmoid_clamped(a[u])
    for u in range(3 * C, 4 * C):
        a[u] = _tanh_clamped(a[u])
    for u in range(G):
        gates[u] = a[u]
    for u in range(C):
        cell[u] = gates[C + u] * cell_prev[u] + gates[u] * gates[3 * C + u]
    for u in range(C):
        c[u] = _clamp(cell[u])
    for u in range(C):
        c[u] = _tanh_clamped(c[u])
    for u in range(C):
        tcell[u] = c[u]
    for u in range(C):
        h[u] = gates[2 * C + u] * tcell[u]


cdef void _cell_backward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                             floating tag) noexcept nogil:
    """dL/dh_t = ``dh`` (from the interface) + ``dhr[t]`` (from the output) + the
    controller input of step t + 1 (``dzh``); dL/d(pre-activations) into
    ``da[t]``; ``dcell`` carries dL/dc_t in and dL/dc_{t-1} out."""
    cdef Py_ssize_t u, C = n.C, tb = t * n.B + b
    cdef const floating* gates = <floating*>p.gates + tb * n.G
    cdef const floating* cell_prev = <floating*>p.cell + tb * C
    cdef const floating* tcell = <floating*>p.tcell + tb * C
    cdef const floating* dhr = <floating*>p.dhr + tb * n.HR + n.RW
    cdef const floating* dh_next = <floating*>p.dzh + b * n.ZH + n.Z
    cdef floating* dh = <floating*>p.dh + b * C
    cdef floating* dcell = <floating*>p.dcell + b * C
    cdef floating* da = <floating*>p.da + tb * n.G
    cdef floating dc
    for u in range(C):
        dh[u] = (dh[u] + dhr[u]) + dh_next[u]
    if not n.lstm:
        for u in range(C):
            da[u] = dh[u] * (1 - gates[u] * gates[u])
        return
    for u in range(C):
        dc = dh[u] * (gates[2 * C + u] * (1 - tcell[u] * tcell[u])) + dcell[u]
        da[u] = dc * (gates[3 * C + u] * (gates[u] * (1 - gates[u])))
        da[C + u] = dc * (cell_prev[u] * (gates[C + u] * (1 - gates[C + u])))
        da[2 * C + u] = dh[u] * (tcell[u] * (gates[2 * C + u] * (1 - gates[2 * C + u])))
        da[3 * C + u] = dc * (gates[u] * (1 - gates[3 * C + u] * gates[3 * C + u]))
        dcell[u] = dc * gates[C + u]


cdef inline void _mix(const floating* modes, const floating* bwd, const floating* content,
                      const floating* fwd, floating* out, Py_ssize_t R,
                      Py_ssize_t N) noexcept nogil:
    """Read weighting ``w_r = π_r,0 b_r + π_r,1 c_r + π_r,2 f_r`` of one row."""
    cdef Py_ssize_t r, i, o
    cdef floating pb, pc, pf
    for r in range(R):
        pb = modes[3 * r]
        pc = modes[3 * r + 1]
        pf = modes[3 * r + 2]
        o = r * N
        for i in range(N):
            out[o + i] = (pb * bwd[o + i] + pc * content[o + i]) + pf * fwd[o + i]


cdef int _memory_forward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                             const floating* lp, floating* lout, int nt,
                             floating tag) noexcept nogil:
    """Interface to read vectors of step ``t``, one batch row (module comment above).
    -1 when the link kernel cannot allocate its scratch, else 0."""
    cdef Py_ssize_t N = n.N, W = n.W, R = n.R, B = n.B, K = n.K, j, r
    cdef Py_ssize_t tb = t * B + b, a0 = n.o_rs
    cdef Py_ssize_t rowN = tb * N, nextN = (tb + B) * N, rowRN = tb * R * N
    cdef floating* xi = <floating*>p.xi + tb * K
    cdef const floating* bias = <floating*>p.bi
    cdef floating* act = <floating*>p.act + tb * n.A
    cdef const floating* modes = act + (n.o_md - a0)
    cdef floating* m_prev = _memory_at(n, p, t, tag) + b * N * W
    cdef floating* m = _memory_at(n, p, t + 1, tag) + b * N * W
    cdef floating* wr_prev = <floating*>p.wr + ((t % 2) * B + b) * R * N
    cdef floating* wr = <floating*>p.wr + (((t + 1) % 2) * B + b) * R * N
    cdef floating* ww = <floating*>p.ww
    cdef floating* usage = <floating*>p.usage
    cdef floating* cw = <floating*>p.cw + rowN
    cdef floating* cr = <floating*>p.cr + rowRN
    cdef floating* prec = <floating*>p.prec
    cdef double* dwork = p.dwork + b * n.dwork
    cdef double sig, top, e0, e1, e2, total
    cdef int status
    # interface: bias; oneplus = 1 + softplus; σ; softmax over each head's 3 modes
    for j in range(K):
        xi[j] = xi[j] + bias[j]
    for j in range(a0, n.o_er):
        act[j - a0] = 1.0 + _softplus_sigmoid(xi[j], &sig)
    for j in range(n.o_er, n.o_md):
        act[j - a0] = _sigmoid(xi[j])
    for r in range(R):
        j = n.o_md + 3 * r
        top = xi[j]
        if xi[j + 1] > top:
            top = xi[j + 1]
        if xi[j + 2] > top:
            top = xi[j + 2]
        e0 = exp(xi[j] - top)
        e1 = exp(xi[j + 1] - top)
        e2 = exp(xi[j + 2] - top)
        total = (e0 + e1) + e2
        act[j - a0] = e0 / total
        act[j - a0 + 1] = e1 / total
        act[j - a0 + 2] = e2 / total
    if t == 0:
        for j in range(R * N):
            wr_prev[j] = 0
    # write head: content weighting on M_t, usage, allocation, write weighting, write
    _content_weights_row(m_prev, xi + n.o_wk, act + (n.o_ws - a0), cw,
                         <floating*>p.cw_cos + rowN, <floating*>p.cw_mnorm + rowN,
                         <floating*>p.cw_knorm + tb, dwork, 1, N, W)
    _write_weights_row(usage + rowN, ww + rowN, wr_prev, act + (n.o_fg - a0),
                       act[n.o_ga - a0], act[n.o_gw - a0], cw, usage + nextN,
                       <floating*>p.alloc + rowN, p.order + rowN, <floating*>p.prefix + rowN,
                       p.iwork + b * N, ww + nextN, N, R)
    _write_row(m_prev, ww + nextN, act + (n.o_er - a0), xi + n.o_wv, m, N, 1, W)
    # temporal linkage: L_{t+1}, p_{t+1}, forward and backward weightings
    status = _forward_row((lp + b * N * N) if lp != NULL else NULL, prec + rowN,
                          ww + nextN, wr_prev, lout + b * N * N, prec + nextN,
                          <floating*>p.fwd + rowRN, <floating*>p.bwd + rowRN, N, R, nt, n.simd)
    # read heads: content weightings on M_{t+1}, read weighting, read
    _content_weights_row(m, xi, act, cr, <floating*>p.cr_cos + rowRN,
                         <floating*>p.cr_mnorm + rowN, <floating*>p.cr_knorm + tb * R,
                         dwork, R, N, W)
    _mix(modes, <floating*>p.bwd + rowRN, cr, <floating*>p.fwd + rowRN, wr, R, N)
    _read_row(m, wr, <floating*>p.zh + (tb + B) * n.ZH + n.I, N, R, W)
    return status


cdef int _memory_backward_row(Sizes* n, Buffers* p, Py_ssize_t t, Py_ssize_t b,
                              const floating* lp, const floating* dl, floating* dlp,
                              floating tag) noexcept nogil:
    """Backward of :func:`_memory_forward_row`: writes ``dxi[t, b]`` (every column,
    pre-activation) and carries the state cotangents (memory, read and write
    weightings, usage, precedence; the link's in ``link_grad``) from step t + 1
    to step t."""
    cdef Py_ssize_t N = n.N, W = n.W, R = n.R, B = n.B, K = n.K, j, r
    cdef Py_ssize_t NW = N * W, RN = R * N
    cdef Py_ssize_t tb = t * B + b, a0 = n.o_rs
    cdef Py_ssize_t rowN = tb * N, nextN = (tb + B) * N, rowRN = tb * RN
    cdef const floating* xi = <floating*>p.xi + tb * K
    cdef const floating* act = <floating*>p.act + tb * n.A
    cdef const floating* modes = act + (n.o_md - a0)
    cdef floating* dx = <floating*>p.dxi + tb * K
    cdef const floating* m_prev = _memory_at(n, p, t, tag) + b * NW
    cdef const floating* m = _memory_at(n, p, t + 1, tag) + b * NW
    cdef const floating* ww = <floating*>p.ww
    cdef const floating* usage = <floating*>p.usage
    cdef const floating* cw = <floating*>p.cw + rowN
    cdef const floating* cr = <floating*>p.cr + rowRN
    cdef const floating* fwd = <floating*>p.fwd + rowRN
    cdef const floating* bwd = <floating*>p.bwd + rowRN
    cdef const floating* dhr = <floating*>p.dhr + tb * n.HR
    cdef const floating* dzh = <floating*>p.dzh + b * n.ZH + n.I
    cdef double* dwork = p.dwork + b * n.dwork
    # state cotangents (of the values after step t)
    cdef floating* d_mem = <floating*>p.d_mem + b * NW
    cdef floating* d_wr_next = <floating*>p.d_wr + b * RN
    cdef floating* d_ww_next = <floating*>p.d_ww + b * N
    cdef floating* d_u_next = <floating*>p.d_u + b * N
    cdef floating* d_p = <floating*>p.d_p + b * N
    # scratch of the row
    cdef floating* f = <floating*>p.fwork + b * n.fwork
    cdef floating* wr_cur = f
    cdef floating* wr_prev = f + RN
    cdef floating* d_wr = f + 2 * RN
    cdef floating* d_back = f + 3 * RN
    cdef floating* d_content = f + 4 * RN
    cdef floating* d_fwd = f + 5 * RN
    cdef floating* d_wr_link = f + 6 * RN
    cdef floating* d_wr_usage = f + 7 * RN
    cdef floating* d_mem_r = f + 8 * RN
    cdef floating* d_mem_c = d_mem_r + NW
    cdef floating* d_mem_prev = d_mem_c + NW
    cdef floating* d_ww_link = d_mem_prev + NW
    cdef floating* d_ww = d_ww_link + N
    cdef floating* d_u_prev = d_ww + N
    cdef floating* d_ww_prev = d_u_prev + N
    cdef floating* d_p_prev = d_ww_prev + N
    cdef floating* d_cw = d_p_prev + N
    cdef floating* d_ww_write = d_cw + N
    cdef floating* ww_work = d_ww_write + N          # 2N
    cdef floating* d_reads = ww_work + 2 * N         # RW
    cdef floating* write_work = d_reads + n.RW       # 2W
    cdef floating pb, pc, pf, g, sb, sc, sf, dot, s
    cdef double sig
    cdef int status
    # the read weightings of steps t and t - 1, recomputed
    _mix(modes, bwd, cr, fwd, wr_cur, R, N)
    if t > 0:
        _mix(<floating*>p.act + (tb - B) * n.A + (n.o_md - a0), bwd - B * RN, cr - B * RN,
             fwd - B * RN, wr_prev, R, N)
    else:
        for j in range(RN):
            wr_prev[j] = 0
    # read: its cotangent from the output and from the controller of step t + 1
    for j in range(n.RW):
        d_reads[j] = dhr[j] + dzh[j]
    _read_backward_row(m, wr_cur, d_reads, d_mem_r, d_wr, N, R, W)
    for j in range(RN):
        d_wr[j] = d_wr[j] + d_wr_next[j]
    # read weighting, then the softmax of the modes
    for r in range(R):
        pb = modes[3 * r]
        pc = modes[3 * r + 1]
        pf = modes[3 * r + 2]
        sb = 0
        sc = 0
        sf = 0
        for j in range(r * N, r * N + N):
            g = d_wr[j]
            sb = sb + g * bwd[j]
            sc = sc + g * cr[j]
            sf = sf + g * fwd[j]
            d_back[j] = pb * g
            d_content[j] = pc * g
            d_fwd[j] = pf * g
        dot = (pb * sb + pc * sc) + pf * sf
        dx[n.o_md + 3 * r] = pb * (sb - dot)
        dx[n.o_md + 3 * r + 1] = pc * (sc - dot)
        dx[n.o_md + 3 * r + 2] = pf * (sf - dot)
    # read content weightings (keys and strengths of the interface)
    _content_weights_backward_row(m, xi, act, cr, <floating*>p.cr_cos + rowRN,
                                  <floating*>p.cr_mnorm + rowN,
                                  <floating*>p.cr_knorm + tb * R, d_content, d_mem_c, dx,
                                  dx + n.o_rs, dwork, R, N, W)
    for j in range(NW):
        d_mem[j] = (d_mem[j] + d_mem_r[j]) + d_mem_c[j]
    # link step: the link cotangent of L_{t+1} becomes that of L_t, in place
    status = _backward_row(lp, <floating*>p.prec + rowN, ww + nextN, wr_prev, dl, d_p,
                           d_fwd, d_back, dlp, d_p_prev, d_ww_link, d_wr_link, N, R, n.simd)
    for j in range(N):
        d_p[j] = d_p_prev[j]
    # write: erase and write vector of the interface
    _write_backward_row(m_prev, ww + nextN, act + (n.o_er - a0), xi + n.o_wv, d_mem,
                        d_mem_prev, d_ww_write, dx + n.o_er, dx + n.o_wv, write_work, N, 1, W)
    for j in range(N):
        d_ww[j] = (d_ww_link[j] + d_ww_write[j]) + d_ww_next[j]
    # usage, allocation and write weighting: gates of the interface
    _write_weights_backward_row(usage + rowN, ww + rowN, wr_prev, act + (n.o_fg - a0),
                                act[n.o_ga - a0], act[n.o_gw - a0], cw, usage + nextN,
                                <floating*>p.alloc + rowN, p.order + rowN,
                                <floating*>p.prefix + rowN, d_ww, d_u_next, d_u_prev,
                                d_ww_prev, d_wr_usage, dx + n.o_fg, dx + n.o_ga, dx + n.o_gw,
                                d_cw, ww_work, N, R)
    for j in range(N):
        d_u_next[j] = d_u_prev[j]
        d_ww_next[j] = d_ww_prev[j]
    # write content weighting on M_t
    _content_weights_backward_row(m_prev, xi + n.o_wk, act + (n.o_ws - a0), cw,
                                  <floating*>p.cw_cos + rowN, <floating*>p.cw_mnorm + rowN,
                                  <floating*>p.cw_knorm + tb, d_cw, d_mem_c, dx + n.o_wk,
                                  dx + n.o_ws, dwork, 1, N, W)
    for j in range(NW):
        d_mem[j] = d_mem_prev[j] + d_mem_c[j]
    for j in range(RN):
        d_wr_next[j] = d_wr_link[j] + d_wr_usage[j]
    # derivatives of the activations: oneplus' = σ, σ' = σ (1 − σ)
    for j in range(a0, n.o_er):
        dx[j] = dx[j] * _sigmoid(xi[j])
    for j in range(n.o_er, n.o_md):
        s = act[j - a0]
        dx[j] = dx[j] * (s * (1 - s))
    return status


cdef int _recompute_row(Sizes* n, Buffers* p, Py_ssize_t start, Py_ssize_t stop,
                        Py_ssize_t b, floating tag) noexcept nogil:
    """``M_{start+1} .. M_{stop-1}`` of one row, rewritten from ``M_start``, and, when
    the link matrices are kept by segments, ``L_{start+1} .. L_{stop-1}`` from
    ``L_start`` (the link update alone).  -1 when the link kernel cannot
    allocate its scratch, else 0."""
    cdef Py_ssize_t t, tb, N = n.N, NW = n.N * n.W, NN = n.N * n.N
    cdef const floating* lp
    cdef floating* out
    cdef int status = 0
    for t in range(start, stop - 1):
        tb = t * n.B + b
        _write_row(_memory_at(n, p, t, tag) + b * NW, <floating*>p.ww + (tb + n.B) * N,
                   <floating*>p.act + tb * n.A + (n.o_er - n.o_rs),
                   <floating*>p.xi + tb * n.K + n.o_wv, _memory_at(n, p, t + 1, tag) + b * NW,
                   N, 1, n.W)
        if n.link_k == 0 or t + 1 < 2:
            continue
        lp = _link_at(n, p, t, tag)
        out = _link_at(n, p, t + 1, tag) + b * NN
        if floating is double:
            status |= dmem_link_forward_d(n.simd, (lp + b * NN) if lp != NULL else NULL,
                                          <double*>p.prec + tb * N,
                                          <double*>p.ww + (tb + n.B) * N, NULL, out,
                                          NULL, NULL, N, 0, 0)
        else:
            status |= dmem_link_forward_f(n.simd, (lp + b * NN) if lp != NULL else NULL,
                                          <float*>p.prec + tb * N,
                                          <float*>p.ww + (tb + n.B) * N, NULL, out,
                                          NULL, NULL, N, 0, 0)
    return status


# ---------------------------------------------------------------- over the batch

cdef int _run(Sizes* n, Buffers* p, int what, Py_ssize_t t, Py_ssize_t t2, int num_threads,
              floating tag) noexcept nogil:
    """``what``: 0 cell forward, 1 memory forward, 2 memory backward, 3 cell backward,
    4 recompute memories ``t .. t2``; every batch row, ``num_threads`` threads.
    Returns the number of rows whose link kernel could not allocate its scratch."""
    cdef Py_ssize_t b, B = n.B, T = n.T, NN = n.N * n.N
    cdef const floating* lp = NULL
    cdef floating* lout = <floating*>p.link_grad
    cdef const floating* dl = NULL
    cdef floating* dlp = NULL
    cdef int nt = 0, failed = 0
    if what == 1:
        if n.train:
            lp = _link_at(n, p, t, tag)
            if t + 1 >= 2:
                lout = _link_at(n, p, t + 1, tag)
            # matrices kept until the backward pass: not read again soon
            if 2 <= t + 1 <= T - 1 and (n.link_k == 0 or (t + 1) % n.link_k == 0):
                nt = n.stream
        elif t >= 1:
            lp = lout          # inference: in place (L_1 is written over a zero start)
    elif what == 2:
        lp = _link_at(n, p, t, tag)
        if t < T - 1:
            dl = <floating*>p.link_grad
        if t > 0:
            dlp = <floating*>p.link_grad
    if num_threads <= 1:
        for b in range(B):
            failed += _row(n, p, what, t, t2, b, lp, lout, nt, dl, dlp, tag)
    else:
        for b in prange(B, schedule="static", num_threads=num_threads):
            failed += _row(n, p, what, t, t2, b, lp, lout, nt, dl, dlp, tag)
    return failed


cdef inline int _row(Sizes* n, Buffers* p, int what, Py_ssize_t t, Py_ssize_t t2, Py_ssize_t b,
                     const floating* lp, floating* lout, int nt, const floating* dl,
                     floating* dlp, floating tag) noexcept nogil:
    cdef Py_ssize_t NN = n.N * n.N
    if what == 0:
        _cell_forward_row(n, p, t, b, tag)
    elif what == 1:
        return _memory_forward_row(n, p, t, b, lp, lout, nt, tag) != 0
    elif what == 2:
        return _memory_backward_row(n, p, t, b, (lp + b * NN) if lp != NULL else NULL,
                                    (dl + b * NN) if dl != NULL else NULL,
                                    (dlp + b * NN) if dlp != NULL else NULL, tag) != 0
    elif what == 3:
        _cell_backward_row(n, p, t, b, tag)
    else:
        return _recompute_row(n, p, t, t2, b, tag) != 0
    return 0


cdef class DNCSequence:
    """The buffers of one DNC sequence and the fused step kernels that run on them.

    ``DNCSequence(T, B, I, N, W, R, C, lstm, train, k, buffers,
    link_segments=False)``: ``buffers`` is a dict of numpy arrays with the
    shapes of :func:`sequence_shapes` (same ``k`` and ``link_segments``), all
    of one float dtype (``order`` int64), C-contiguous, writeable and pairwise
    disjoint.  Everything is checked here, once; the step methods then only
    check the step index.  The sequence keeps references to the arrays, and
    its own scratch.

    Per step ``t`` (``dmem/_dnc_bptt.py`` runs the matrix products between):
    ``cell_forward(t)`` after ``gates[t] = zh[t] · controller_W``;
    ``memory_forward(t)`` after ``xi[t] = h_t · interface_W`` (bias added
    here); then, backwards, ``memory_backward(t)`` (writes ``dxi[t]``),
    ``cell_backward(t)`` after ``dh = dxi[t] · interface_Wᵀ`` (writes
    ``da[t]``).  ``begin_backward()`` zeroes the carried cotangents first.
    """

    cdef Sizes n
    cdef Buffers p
    cdef bint is_double
    cdef int simd
    cdef readonly dict buffers
    cdef object _scratch

    def __init__(self, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t N, Py_ssize_t W,
                 Py_ssize_t R, Py_ssize_t C, bint lstm, bint train, Py_ssize_t k,
                 dict buffers, bint link_segments=False):
        import numpy as np

        for name, value in (("T", T), ("B", B), ("I", I), ("N", N), ("W", W), ("R", R),
                            ("C", C), ("k", k)):
            if value < 1:
                raise ValueError(f"DNCSequence: {name} must be positive, got {value}")
        if train and k > T:
            raise ValueError(f"DNCSequence: k must be at most T = {T}, got {k}")
        if train and link_segments and k < 2:
            raise ValueError(f"DNCSequence: link segments need k >= 2, got {k}")
        _set_sizes(&self.n, T, B, I, N, W, R, C, lstm, train, k, link_segments)
        shapes = _dnc_shapes(&self.n)
        dtype = check_buffers("DNCSequence", buffers, shapes, "memory", {"order": np.int64})
        check_disjoint("DNCSequence", [(buffers[name], name) for name in shapes])
        self.is_double = dtype == np.float64
        self.buffers = dict(buffers)
        fwork = np.zeros((B, self.n.fwork), dtype=dtype)
        dwork = np.zeros((B, self.n.dwork), dtype=np.float64)
        iwork = np.zeros((B, N), dtype=np.int64)
        self._scratch = (fwork, dwork, iwork)
        if train and buffers["link"].nbytes >= STREAM_MIN_BYTES:
            self.n.stream = 1
        self.simd = dmem_linkage_get_simd()
        cdef Buffers* p = &self.p
        p.zh = _address(buffers["zh"])
        p.gates = _address(buffers["gates"])
        p.cell = _address(buffers["cell"])
        p.tcell = _address(buffers["tcell"])
        p.bc = _address(buffers["controller_b"])
        p.xi = _address(buffers["xi"])
        p.bi = _address(buffers["interface_b"])
        p.act = _address(buffers["act"])
        p.usage = _address(buffers["usage"])
        p.ww = _address(buffers["write_weights"])
        p.alloc = _address(buffers["allocation"])
        p.order = <int64_t*>_address(buffers["order"])
        p.prefix = _address(buffers["prefix"])
        p.cw = _address(buffers["cw"])
        p.cw_cos = _address(buffers["cw_cos"])
        p.cw_mnorm = _address(buffers["cw_mnorm"])
        p.cw_knorm = _address(buffers["cw_knorm"])
        p.cr = _address(buffers["cr"])
        p.cr_cos = _address(buffers["cr_cos"])
        p.cr_mnorm = _address(buffers["cr_mnorm"])
        p.cr_knorm = _address(buffers["cr_knorm"])
        p.prec = _address(buffers["precedence"])
        p.fwd = _address(buffers["forward_weights"])
        p.bwd = _address(buffers["backward_weights"])
        p.link_grad = _address(buffers["link_grad"])
        p.mem_ck = _address(buffers["memory"])
        p.wr = _address(buffers["read_weights"])
        p.link = _address_in(buffers, "link")
        p.link_seg = _address_in(buffers, "link_segment")
        p.mem_seg = _address_in(buffers, "memory_segment")
        p.dhr = _address_in(buffers, "dhr")
        p.dzh = _address_in(buffers, "dzh")
        p.dxi = _address_in(buffers, "dxi")
        p.dh = _address_in(buffers, "dh")
        p.da = _address_in(buffers, "da")
        p.dcell = _address_in(buffers, "dcell")
        p.d_mem = _address_in(buffers, "d_memory")
        p.d_wr = _address_in(buffers, "d_read_weights")
        p.d_ww = _address_in(buffers, "d_write_weights")
        p.d_u = _address_in(buffers, "d_usage")
        p.d_p = _address_in(buffers, "d_precedence")
        p.fwork = _address(fwork)
        p.dwork = <double*>_address(dwork)
        p.iwork = <int64_t*>_address(iwork)

    def use_simd(self, int level):
        """The instruction set of the link loops: 0 baseline, 1 AVX2/FMA, 2 AVX-512
        (a level this CPU lacks gives the best below it)."""
        self.simd = min(max(level, 0), dmem_linkage_simd_supported())

    cdef int _go(self, int what, Py_ssize_t t, Py_ssize_t t2, int num_threads) except -1:
        cdef int failed
        if what == 2 or what == 3:
            if not self.n.train:
                raise ValueError("DNCSequence: the backward needs a training sequence")
        if what == 4:
            if not (0 <= t < t2 <= self.n.T):
                raise IndexError(f"DNCSequence: segment [{t}, {t2}) out of range for "
                                 f"{self.n.T} steps")
        elif t < 0 or t >= self.n.T:
            raise IndexError(f"DNCSequence: step {t} out of range for a sequence of "
                             f"{self.n.T} steps")
        if num_threads < 1:
            num_threads = 1
        self.n.simd = self.simd
        with nogil:
            if self.is_double:
                failed = _run(&self.n, &self.p, what, t, t2, num_threads, <double>0)
            else:
                failed = _run(&self.n, &self.p, what, t, t2, num_threads, <float>0)
        if failed:
            raise MemoryError("dmem.dnc_step: could not allocate the kernel's scratch rows")
        return 0

    def cell_forward(self, Py_ssize_t t, int num_threads=1):
        """Controller activations of step ``t`` (``gates[t]`` holds ``zh[t]·W``)."""
        self._go(0, t, 0, num_threads)

    def memory_forward(self, Py_ssize_t t, int num_threads=1):
        """Interface to reads of step ``t`` (``xi[t]`` holds ``h_t·W``, without bias)."""
        self._go(1, t, 0, num_threads)

    def memory_backward(self, Py_ssize_t t, int num_threads=1):
        """Backward of :meth:`memory_forward` (step ``t``; ``dzh`` holds the cotangent
        of the controller input of step t + 1): writes ``dxi[t]``."""
        self._go(2, t, 0, num_threads)

    def cell_backward(self, Py_ssize_t t, int num_threads=1):
        """Backward of :meth:`cell_forward` (``dh`` holds ``dxi[t]·Wᵀ``): writes ``da[t]``."""
        self._go(3, t, 0, num_threads)

    def recompute_memory(self, Py_ssize_t start, Py_ssize_t stop, int num_threads=1):
        """The memories ``M_{start+1} .. M_{stop-1}``, rewritten from ``M_start`` (and
        the link matrices ``L_{start+1} .. L_{stop-1}`` from ``L_start`` when they
        are kept by segments)."""
        self._go(4, start, stop, num_threads)

    def begin_backward(self):
        """Zero the cotangents carried between steps (memory, weightings, usage,
        precedence, cell, controller input)."""
        if not self.n.train:
            raise ValueError("DNCSequence: the backward needs a training sequence")
        for name in ("d_memory", "d_read_weights", "d_write_weights", "d_usage",
                     "d_precedence", "dcell", "dzh"):
            self.buffers[name].fill(0)
