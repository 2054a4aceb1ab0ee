"""Temporal link matrix of the DNC: forward and backward kernels.

The ops (``dmem/_opspec.py``): ``precedence``, ``link``, ``temporal_weights``
and the fused ``link_step``.  Equations (DNC Methods)::

    p    = (1 − Σ_i w_i) p_prev + w
    L_ij = (1 − w_i − w_j) L_prev,ij + w_i p_prev,j,   L_ii = 0
    f_r  = L w_r,   b_r = Lᵀ w_r

Every batch row is handled by one thread (``prange`` over B), rows of the link
matrix in increasing order, so results do not depend on the thread count.
Arrays arrive validated and C-contiguous from ``dmem.compiled.linkage``.

Memory traffic is what costs at large N (B=16, N=1024 float64: 128 MiB per
link matrix), so the fused ``link_step`` works one row ``i`` of the link
matrix at a time: the forward reads ``L_prev[i]`` once and writes ``L[i]``
once, and gets ``f_r,i = L[i]·w_r`` (a dot product) and ``b_r += w_r,i L[i]``
(an axpy into a per-batch vector) from the row while it is in L1 cache.  The
backward reads ``L_prev[i]`` and the cotangent ``dL[i]`` once and writes
``dL_prev[i]`` once; it forms the total cotangent of the row,
``G_ij = dL_ij + Σ_r (df_r,i w_r,j + w_r,i db_r,j)``, and the new row
``L[i]`` in per-thread scratch rows instead of materialising them.

Backward of the link update (``i ≠ j``; the diagonal carries no gradient)::

    dL_prev,ij = (1 − w_i − w_j) G_ij
    dw_k      += Σ_{j≠k} G_kj (p_prev,j − L_prev,kj) − Σ_{i≠k} G_ik L_prev,ik
    dp_prev,j += Σ_{i≠j} G_ij w_i

Backward of the precedence: ``dp_prev = (1 − Σw) dp``,
``dw_k += dp_k − Σ_i dp_i p_prev,i``.  Backward of the temporal weights:
``dL_ij = Σ_r (df_r,i w_r,j + w_r,i db_r,j)``, ``dw_r = Lᵀ df_r + L db_r``.

The link, link_step and temporal_weights loops (forward and backward of one
batch row) are C, in ``linkage_simd.h``: one row of the link matrix at a time
(temporal_weights: of its input L, read once per four heads), one vector of
columns per step (16 bytes in the baseline version, 32 with AVX2, 64 with
AVX-512), read heads four per pass, row reductions in vector accumulators
summed in a fixed lane order.  They are compiled three times on x86 (the
build's baseline ISA, AVX2 + FMA and AVX-512 through function attributes) and
the widest version the CPU has runs (:func:`simd_level`); no ``-march`` flag
is needed.  Outputs of at
least 32 MiB are written with non-temporal stores (unless in place).
``precedence`` and the read weighting stay in Cython below: every helper is
one simple loop over a row, a reduction is a dot product with eight
accumulators in a fixed order.

For the DNC's backpropagation through time (``dmem/_dnc_bptt.py``), which
calls these functions directly on arrays it allocated:

* ``link_step_forward`` takes ``link_prev=None`` (the zero matrix) and may
  write ``link`` over ``link_prev`` (in place);
* ``link_step_backward`` takes ``link_prev=None`` and ``grad_link=None``
  (zero), ``grad_link_prev=None`` (not wanted), and may write
  ``grad_link_prev`` over ``grad_link``: one ``(B, N, N)`` buffer carries the
  link cotangent through all the steps.  Any other overlap of an output with
  an input is an error;
* ``read_weights_forward/backward``: the read weighting
  ``w_r = π_b b_r + π_c c_r + π_f f_r`` and its gradient, in one call.
"""

from cython cimport floating
from cython.parallel cimport prange
from dmem._kernels.linkage_simd cimport (
    dmem_link_forward_d, dmem_link_forward_f, dmem_link_backward_d, dmem_link_backward_f,
    dmem_temporal_forward_d, dmem_temporal_forward_f, dmem_temporal_backward_d,
    dmem_temporal_backward_f,
    dmem_linkage_simd_supported, dmem_linkage_set_simd, dmem_linkage_get_simd)

from dmem._kernels import _simd


dmem_linkage_set_simd(2)  # the widest this CPU has


def _simd_query(level=None):
    """Set the level of the link loops (when given); (in force, widest supported)."""
    if level is not None:
        dmem_linkage_set_simd(level)
    return dmem_linkage_get_simd(), dmem_linkage_simd_supported()


# Link outputs of at least this many bytes (all batch rows) are written with
# non-temporal stores, unless in place: they cannot stay in cache until they are
# read again, and the stores then skip reading the destination lines first
# (about 10% at B=16, N=1024).  In place, the lines are in cache already, and
# non-temporal stores to them are several times slower.
cdef Py_ssize_t STREAM_MIN_BYTES = 32 * 1024 * 1024


cdef inline int _stream(Py_ssize_t B, Py_ssize_t N, Py_ssize_t itemsize) noexcept:
    return 1 if B * N * N * itemsize >= STREAM_MIN_BYTES else 0


# Link matrices of at least this many bytes (all batch rows) are run with the
# AVX2 loops when AVX-512 is in force: see _level.
cdef Py_ssize_t WIDE_MAX_BYTES = 32 * 1024 * 1024


cdef inline int _level(Py_ssize_t B, Py_ssize_t N, Py_ssize_t itemsize) noexcept:
    """The SIMD level of one call: the level in force, but AVX2 rather than AVX-512
    for link matrices of WIDE_MAX_BYTES or more.  Those stream from memory, and
    there the 64-byte vectors, which cross a cache line at every load of a numpy
    array (its data starts 16 bytes into a line), made link_step at B=16, N=1024
    slower than AVX2 (31.8 against 28.2 ms fwd+bwd, in place, 2 threads); from
    cache (N <= 256) they are faster (backward 500 against 645 µs at N=256)."""
    cdef int level = dmem_linkage_get_simd()
    if level > 1 and B * N * N * itemsize >= WIDE_MAX_BYTES:
        return 1
    return level


SIMD_LEVELS = _simd.SIMD_LEVELS
simd_level, simd_levels_supported, _set_simd = _simd.functions(
    _simd_query, "link, link_step and temporal_weights")


# ----------------------------------------------------------------------------
# Row helpers: raw pointers to contiguous rows of length n
# ----------------------------------------------------------------------------

cdef inline floating _dot(const floating* x, const floating* y, Py_ssize_t n) noexcept nogil:
    """Σ_j x_j y_j, with eight accumulators in a fixed order."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t j = 0
    while j + 8 <= n:
        s0 = s0 + x[j] * y[j]
        s1 = s1 + x[j + 1] * y[j + 1]
        s2 = s2 + x[j + 2] * y[j + 2]
        s3 = s3 + x[j + 3] * y[j + 3]
        s4 = s4 + x[j + 4] * y[j + 4]
        s5 = s5 + x[j + 5] * y[j + 5]
        s6 = s6 + x[j + 6] * y[j + 6]
        s7 = s7 + x[j + 7] * y[j + 7]
        j = j + 8
    while j < n:
        s0 = s0 + x[j] * y[j]
        j = j + 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


cdef inline floating _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Σ_j x_j in order (short vectors only: used on `(N,)` rows once per batch row)."""
    cdef floating s = 0
    cdef Py_ssize_t j
    for j in range(n):
        s = s + x[j]
    return s


# ----------------------------------------------------------------------------
# One batch row
# ----------------------------------------------------------------------------

cdef void _precedence_batch(const floating* pp, const floating* w, floating* p,
                            Py_ssize_t n) noexcept nogil:
    """p = (1 − Σw) p_prev + w."""
    cdef floating keep = 1 - _sum(w, n)
    cdef Py_ssize_t j
    for j in range(n):
        p[j] = keep * pp[j] + w[j]


cdef void _precedence_backward_batch(const floating* pp, const floating* w, const floating* dp,
                                     floating* dpp, floating* dw, Py_ssize_t n,
                                     bint accumulate) noexcept nogil:
    """dp_prev (+)= (1 − Σw) dp ;  dw (+)= dp − (dp·p_prev)."""
    cdef floating keep = 1 - _sum(w, n)
    cdef floating shared = _dot(dp, pp, n)
    cdef Py_ssize_t j
    if accumulate:
        for j in range(n):
            dpp[j] = dpp[j] + keep * dp[j]
            dw[j] = dw[j] + (dp[j] - shared)
    else:
        for j in range(n):
            dpp[j] = keep * dp[j]
            dw[j] = dp[j] - shared


cdef inline int _link_step_batch(const floating* lp, const floating* pp, const floating* w,
                                 const floating* wr, floating* L, floating* p, floating* f,
                                 floating* bw, Py_ssize_t n, Py_ssize_t nr,
                                 bint with_precedence, int nt, int level) noexcept nogil:
    """New link matrix, and precedence (when with_precedence) and temporal weights
    (when nr > 0) of one batch row.  Returns -1 when scratch memory cannot be
    allocated, else 0.
    """
    cdef int status
    if floating is double:
        status = dmem_link_forward_d(level, lp, pp, w, wr, L, f, bw, n, nr, nt)
    else:
        status = dmem_link_forward_f(level, lp, pp, w, wr, L, f, bw, n, nr, nt)
    if with_precedence:
        _precedence_batch(pp, w, p, n)
    return status


cdef inline int _link_step_backward_batch(const floating* lp, const floating* pp,
                                          const floating* w, const floating* wr,
                                          const floating* dL, const floating* dp,
                                          const floating* df, const floating* db,
                                          floating* dlp, floating* dpp, floating* dw,
                                          floating* dwr, Py_ssize_t n, Py_ssize_t nr,
                                          bint with_precedence, int nt,
                                          int level) noexcept nogil:
    """Backward of link (+ precedence, temporal weights when nr > 0) for one batch row.

    dL may be NULL (a zero cotangent) or equal to dlp (in place).  Returns -1
    when scratch memory cannot be allocated, else 0.
    """
    cdef int status
    if floating is double:
        status = dmem_link_backward_d(level, lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n,
                                      nr, nt)
    else:
        status = dmem_link_backward_f(level, lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n,
                                      nr, nt)
    if with_precedence:
        _precedence_backward_batch(pp, w, dp, dpp, dw, n, True)
    return status


# ----------------------------------------------------------------------------
# Python entry points (arrays validated by dmem.compiled.linkage)
# ----------------------------------------------------------------------------

cdef _zeros_int(Py_ssize_t n):
    """A writable buffer of n C ints, all 0 (one status per batch row)."""
    return memoryview(bytearray(n * sizeof(int))).cast("i")


cdef _check_status(int[::1] status):
    cdef Py_ssize_t b
    for b in range(status.shape[0]):
        if status[b] != 0:
            raise MemoryError("dmem.linkage: could not allocate the kernel's scratch rows")


def precedence_forward(const floating[:, ::1] precedence_prev,
                       const floating[:, ::1] write_weights,
                       floating[:, ::1] precedence, int num_threads=1):
    """``precedence[b] = (1 − Σ_i w_b,i) p_prev[b] + w[b]``; arrays `(B, N)`."""
    cdef Py_ssize_t B = precedence_prev.shape[0], N = precedence_prev.shape[1], b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _precedence_batch(&precedence_prev[b, 0], &write_weights[b, 0], &precedence[b, 0], N)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _precedence_batch(&precedence_prev[b, 0], &write_weights[b, 0], &precedence[b, 0],
                                  N)


def precedence_backward(const floating[:, ::1] precedence_prev,
                        const floating[:, ::1] write_weights,
                        const floating[:, ::1] grad_precedence,
                        floating[:, ::1] grad_precedence_prev,
                        floating[:, ::1] grad_write_weights, int num_threads=1):
    """Gradients of ``precedence`` w.r.t. ``precedence_prev`` and ``write_weights``."""
    cdef Py_ssize_t B = precedence_prev.shape[0], N = precedence_prev.shape[1], b
    if num_threads > 1:
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            _precedence_backward_batch(&precedence_prev[b, 0], &write_weights[b, 0],
                                       &grad_precedence[b, 0], &grad_precedence_prev[b, 0],
                                       &grad_write_weights[b, 0], N, False)
    else:  # no OpenMP team for one thread (about 0.7 us a call)
        with nogil:
            for b in range(B):
                _precedence_backward_batch(&precedence_prev[b, 0], &write_weights[b, 0],
                                           &grad_precedence[b, 0], &grad_precedence_prev[b, 0],
                                           &grad_write_weights[b, 0], N, False)


def link_forward(const floating[:, :, ::1] link_prev, const floating[:, ::1] write_weights,
                 const floating[:, ::1] precedence_prev, floating[:, :, ::1] link,
                 int num_threads=1):
    """``link[b]`` from ``link_prev[b]`` `(B, N, N)`, ``write_weights``, ``precedence_prev`` `(B, N)`."""
    cdef Py_ssize_t B = link_prev.shape[0], N = link_prev.shape[1], b
    cdef int nt = _stream(B, N, sizeof(floating))
    cdef int level = _level(B, N, sizeof(floating))
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_batch(&link_prev[b, 0, 0], &precedence_prev[b, 0],
                                     &write_weights[b, 0], NULL, &link[b, 0, 0], NULL, NULL,
                                     NULL, N, 0, False, nt, level)
    _check_status(status)


def link_backward(const floating[:, :, ::1] link_prev, const floating[:, ::1] write_weights,
                  const floating[:, ::1] precedence_prev, const floating[:, :, ::1] grad_link,
                  floating[:, :, ::1] grad_link_prev, floating[:, ::1] grad_write_weights,
                  floating[:, ::1] grad_precedence_prev, int num_threads=1):
    """Gradients of ``link`` w.r.t. ``link_prev``, ``write_weights``, ``precedence_prev``."""
    cdef Py_ssize_t B = link_prev.shape[0], N = link_prev.shape[1], b
    cdef int nt = _stream(B, N, sizeof(floating))
    cdef int level = _level(B, N, sizeof(floating))
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_backward_batch(
            &link_prev[b, 0, 0], &precedence_prev[b, 0], &write_weights[b, 0], NULL,
            &grad_link[b, 0, 0], NULL, NULL, NULL, &grad_link_prev[b, 0, 0],
            &grad_precedence_prev[b, 0], &grad_write_weights[b, 0], NULL, N, 0, False, nt,
            level)
    _check_status(status)


def temporal_weights_forward(const floating[:, :, ::1] link,
                             const floating[:, :, ::1] read_weights_prev,
                             floating[:, :, ::1] forward_weights,
                             floating[:, :, ::1] backward_weights, int num_threads=1):
    """``f_r = L w_r``, ``b_r = Lᵀ w_r``; link `(B, N, N)`, weights `(B, R, N)`."""
    cdef Py_ssize_t B = link.shape[0], N = link.shape[1], R = read_weights_prev.shape[1], b
    cdef int level = _level(B, N, sizeof(floating))
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        if floating is double:
            status[b] = dmem_temporal_forward_d(level, &link[b, 0, 0], &read_weights_prev[b, 0, 0],
                                                &forward_weights[b, 0, 0],
                                                &backward_weights[b, 0, 0], N, R)
        else:
            status[b] = dmem_temporal_forward_f(level, &link[b, 0, 0], &read_weights_prev[b, 0, 0],
                                                &forward_weights[b, 0, 0],
                                                &backward_weights[b, 0, 0], N, R)
    _check_status(status)


def temporal_weights_backward(const floating[:, :, ::1] link,
                              const floating[:, :, ::1] read_weights_prev,
                              const floating[:, :, ::1] grad_forward,
                              const floating[:, :, ::1] grad_backward,
                              floating[:, :, ::1] grad_link,
                              floating[:, :, ::1] grad_read_weights_prev, int num_threads=1):
    """Gradients of ``temporal_weights`` w.r.t. ``link`` and ``read_weights_prev``."""
    cdef Py_ssize_t B = link.shape[0], N = link.shape[1], R = read_weights_prev.shape[1], b
    cdef int nt = _stream(B, N, sizeof(floating))
    cdef int level = _level(B, N, sizeof(floating))
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        if floating is double:
            status[b] = dmem_temporal_backward_d(level, &link[b, 0, 0], &read_weights_prev[b, 0, 0],
                                                 &grad_forward[b, 0, 0], &grad_backward[b, 0, 0],
                                                 &grad_link[b, 0, 0],
                                                 &grad_read_weights_prev[b, 0, 0], N, R, nt)
        else:
            status[b] = dmem_temporal_backward_f(level, &link[b, 0, 0], &read_weights_prev[b, 0, 0],
                                                 &grad_forward[b, 0, 0], &grad_backward[b, 0, 0],
                                                 &grad_link[b, 0, 0],
                                                 &grad_read_weights_prev[b, 0, 0], N, R, nt)
    _check_status(status)


cdef _check_square(const Py_ssize_t* shape, Py_ssize_t B, Py_ssize_t N, name):
    """An optional (B, N, N) argument, converted here, must have that shape."""
    if shape[0] != B or shape[1] != N or shape[2] != N:
        raise ValueError(f"{name} must have shape ({B}, {N}, {N}), "
                         f"got ({shape[0]}, {shape[1]}, {shape[2]})")


cdef _check_same_or_disjoint(const void* first, const void* second, size_t nbytes, name):
    """Two (B, N, N) arrays must be one and the same or not overlap at all."""
    cdef size_t a = <size_t> first, b = <size_t> second
    if a != b and a < b + nbytes and b < a + nbytes:
        raise ValueError(f"{name}: an output may be its input itself, but must not partly overlap it")


def link_step_forward(link_prev,
                      const floating[:, ::1] precedence_prev,
                      const floating[:, ::1] write_weights,
                      const floating[:, :, ::1] read_weights_prev,
                      floating[:, :, ::1] link, floating[:, ::1] precedence,
                      floating[:, :, ::1] forward_weights, floating[:, :, ::1] backward_weights,
                      int num_threads=1):
    """Fused ``link``, ``precedence`` and ``temporal_weights`` (of the new link).

    ``link_prev`` (a C-contiguous `(B, N, N)` array of the dtype of the others,
    like every argument) may be None, the zero matrix, or the array ``link``
    itself (updated in place); a partial overlap raises ``ValueError``.
    """
    cdef Py_ssize_t B = precedence_prev.shape[0], N = precedence_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1], b
    cdef Py_ssize_t stride = N * N
    cdef const floating[:, :, ::1] lp_view
    cdef const floating* lp = NULL
    cdef int nt = _stream(B, N, sizeof(floating))
    cdef int level = _level(B, N, sizeof(floating))
    cdef int[::1] status = _zeros_int(B)
    if link_prev is not None:
        lp_view = link_prev
        _check_square(&lp_view.shape[0], B, N, "link_prev")
        lp = &lp_view[0, 0, 0]
        _check_same_or_disjoint(lp, &link[0, 0, 0], <size_t> (B * stride) * sizeof(floating),
                                "link_step_forward")
        if lp == &link[0, 0, 0]:
            nt = 0  # in place: the lines are in cache already
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_batch((lp + b * stride) if lp != NULL else NULL,
                                     &precedence_prev[b, 0], &write_weights[b, 0],
                                     &read_weights_prev[b, 0, 0], &link[b, 0, 0],
                                     &precedence[b, 0], &forward_weights[b, 0, 0],
                                     &backward_weights[b, 0, 0], N, R, True, nt, level)
    _check_status(status)


def link_step_backward(link_prev,
                       const floating[:, ::1] precedence_prev,
                       const floating[:, ::1] write_weights,
                       const floating[:, :, ::1] read_weights_prev,
                       grad_link,
                       const floating[:, ::1] grad_precedence,
                       const floating[:, :, ::1] grad_forward,
                       const floating[:, :, ::1] grad_backward,
                       grad_link_prev,
                       floating[:, ::1] grad_precedence_prev,
                       floating[:, ::1] grad_write_weights,
                       floating[:, :, ::1] grad_read_weights_prev, int num_threads=1):
    """Gradients of ``link_step`` w.r.t. its four inputs, in input order.

    ``link_prev``, ``grad_link`` and ``grad_link_prev`` are C-contiguous
    `(B, N, N)` arrays of the dtype of the others, or None: ``link_prev`` and
    ``grad_link`` None are zero, ``grad_link_prev`` None is not computed.
    ``grad_link_prev`` may be the array ``grad_link`` itself (computed in place);
    a partial overlap raises ``ValueError``.
    """
    cdef Py_ssize_t B = precedence_prev.shape[0], N = precedence_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1], b
    cdef Py_ssize_t stride = N * N
    cdef const floating[:, :, ::1] lp_view
    cdef const floating[:, :, ::1] dl_view
    cdef floating[:, :, ::1] dlp_view
    cdef const floating* lp = NULL
    cdef const floating* dl = NULL
    cdef floating* dlp = NULL
    cdef int nt = _stream(B, N, sizeof(floating))
    cdef int level = _level(B, N, sizeof(floating))
    cdef int[::1] status = _zeros_int(B)
    if link_prev is not None:
        lp_view = link_prev
        _check_square(&lp_view.shape[0], B, N, "link_prev")
        lp = &lp_view[0, 0, 0]
    if grad_link_prev is not None:
        dlp_view = grad_link_prev
        _check_square(&dlp_view.shape[0], B, N, "grad_link_prev")
        dlp = &dlp_view[0, 0, 0]
    if grad_link is not None:
        dl_view = grad_link
        _check_square(&dl_view.shape[0], B, N, "grad_link")
        dl = &dl_view[0, 0, 0]
        if dlp != NULL:
            _check_same_or_disjoint(dl, dlp, <size_t> (B * stride) * sizeof(floating),
                                    "link_step_backward")
            if dl == dlp:
                nt = 0  # in place: the lines are in cache already
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_backward_batch(
            (lp + b * stride) if lp != NULL else NULL, &precedence_prev[b, 0],
            &write_weights[b, 0], &read_weights_prev[b, 0, 0],
            (dl + b * stride) if dl != NULL else NULL, &grad_precedence[b, 0],
            &grad_forward[b, 0, 0], &grad_backward[b, 0, 0],
            (dlp + b * stride) if dlp != NULL else NULL, &grad_precedence_prev[b, 0],
            &grad_write_weights[b, 0], &grad_read_weights_prev[b, 0, 0], N, R, True, nt,
            level)
    _check_status(status)


# ----------------------------------------------------------------------------
# Read weighting: the read modes mix the temporal and content weightings
# ----------------------------------------------------------------------------

def read_weights_forward(const floating[:, :, :] modes,
                         const floating[:, :, ::1] backward_weights,
                         const floating[:, :, ::1] content_weights,
                         const floating[:, :, ::1] forward_weights,
                         floating[:, :, ::1] read_weights, int num_threads=1):
    """``w_r = π_r,0 b_r + π_r,1 c_r + π_r,2 f_r`` (DNC Methods, read weighting;
    modes ordered backward, content, forward).

    modes `(B, R, 3)` (may be a strided view), the three weightings and
    read_weights `(B, R, N)`.
    """
    cdef Py_ssize_t B = modes.shape[0], R = modes.shape[1], N = content_weights.shape[2]
    cdef Py_ssize_t b, r, n
    cdef floating pb, pc, pf
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        for r in range(R):
            pb = modes[b, r, 0]
            pc = modes[b, r, 1]
            pf = modes[b, r, 2]
            for n in range(N):
                read_weights[b, r, n] = ((pb * backward_weights[b, r, n]
                                          + pc * content_weights[b, r, n])
                                         + pf * forward_weights[b, r, n])


def read_weights_backward(const floating[:, :, :] modes,
                          const floating[:, :, ::1] backward_weights,
                          const floating[:, :, ::1] content_weights,
                          const floating[:, :, ::1] forward_weights,
                          const floating[:, :, ::1] grad_read_weights,
                          floating[:, :, :] grad_modes,
                          floating[:, :, ::1] grad_backward_weights,
                          floating[:, :, ::1] grad_content_weights,
                          floating[:, :, ::1] grad_forward_weights, int num_threads=1):
    """Gradients of read_weights_forward's inputs, in input order, from that of
    the read weighting `(B, R, N)`: dπ_r,k = Σ_n g_r,n x_k,r,n, dx_k = π_k g.
    modes and grad_modes may be strided views."""
    cdef Py_ssize_t B = modes.shape[0], R = modes.shape[1], N = content_weights.shape[2]
    cdef Py_ssize_t b, r, n
    cdef floating pb, pc, pf, g, sb, sc, sf
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        for r in range(R):
            pb = modes[b, r, 0]
            pc = modes[b, r, 1]
            pf = modes[b, r, 2]
            sb = 0
            sc = 0
            sf = 0
            for n in range(N):
                g = grad_read_weights[b, r, n]
                sb = sb + g * backward_weights[b, r, n]
                sc = sc + g * content_weights[b, r, n]
                sf = sf + g * forward_weights[b, r, n]
                grad_backward_weights[b, r, n] = pb * g
                grad_content_weights[b, r, n] = pc * g
                grad_forward_weights[b, r, n] = pf * g
            grad_modes[b, r, 0] = sb
            grad_modes[b, r, 1] = sc
            grad_modes[b, r, 2] = sf


def _set_stream_min_bytes(Py_ssize_t nbytes):
    """Set the size from which link outputs use non-temporal stores (for tests and
    benchmarks); returns the previous value."""
    global STREAM_MIN_BYTES
    cdef Py_ssize_t previous = STREAM_MIN_BYTES
    STREAM_MIN_BYTES = nbytes
    return previous


def _set_wide_max_bytes(Py_ssize_t nbytes):
    """Set the size from which link matrices run the AVX2 loops rather than the
    AVX-512 ones (for tests and benchmarks); returns the previous value."""
    global WIDE_MAX_BYTES
    cdef Py_ssize_t previous = WIDE_MAX_BYTES
    WIDE_MAX_BYTES = nbytes
    return previous
