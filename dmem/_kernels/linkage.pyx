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

How the loops are written, for speed without -ffast-math or -march flags:

* every helper is one simple loop over a row, which the C compiler
  vectorises; element-wise loops and reductions are kept apart;
* a reduction is a dot product with eight accumulators in a fixed order: it
  vectorises without reassociation and does not depend on the thread count;
* read heads are handled four per pass (the head count is padded with zero
  heads to a multiple of four), so that a row of L or G is formed once and
  used for four heads while it is in registers;
* the backward forms G[i] and uses it at once (dL_prev[i], the column sums of
  dw and dp_prev) in the same pass, over j < i and j > i (the diagonal entry
  is skipped, never computed and corrected);
* scratch rows (column sums, G[i], the new row L[i], copies of w_r and db_r)
  are allocated by the batch function itself (``malloc``), so the compiler
  knows that they overlap no input or output and the loops need no run-time
  overlap checks; the column sums are copied to the outputs at the end.

With R = 4 the loops are bound by loads from L1/L2 (eight per-head vectors
per element of the backward), more than by DRAM.
"""

from libc.stdlib cimport free, malloc
from cython cimport floating
from cython.parallel cimport prange


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


cdef inline floating _dot_diff(const floating* g, const floating* p, const floating* q,
                               Py_ssize_t n) noexcept nogil:
    """Σ_j g_j (p_j − q_j), with eight accumulators in a fixed order."""
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t j = 0
    while j + 8 <= n:
        s0 = s0 + g[j] * (p[j] - q[j])
        s1 = s1 + g[j + 1] * (p[j + 1] - q[j + 1])
        s2 = s2 + g[j + 2] * (p[j + 2] - q[j + 2])
        s3 = s3 + g[j + 3] * (p[j + 3] - q[j + 3])
        s4 = s4 + g[j + 4] * (p[j + 4] - q[j + 4])
        s5 = s5 + g[j + 5] * (p[j + 5] - q[j + 5])
        s6 = s6 + g[j + 6] * (p[j + 6] - q[j + 6])
        s7 = s7 + g[j + 7] * (p[j + 7] - q[j + 7])
        j = j + 8
    while j < n:
        s0 = s0 + g[j] * (p[j] - q[j])
        j = j + 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


cdef inline floating _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    """Σ_j x_j in order (short vectors only: used on `(N,)` rows once per batch row)."""
    cdef floating s = 0
    cdef Py_ssize_t j
    for j in range(n):
        s = s + x[j]
    return s


cdef inline void _fill(floating* x, floating value, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        x[j] = value


cdef inline void _copy(floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = x[j]


cdef inline floating _coef(const floating* coef, Py_ssize_t r, Py_ssize_t n,
                           Py_ssize_t nr) noexcept nogil:
    """coef[r n] for a real head r < nr, 0 for the padding heads of the last group of four."""
    if r < nr:
        return coef[r * n]
    return 0


cdef inline Py_ssize_t _padded(Py_ssize_t nr) noexcept nogil:
    """nr rounded up to a multiple of four: heads are processed four at a time."""
    return (nr + 3) // 4 * 4


cdef inline void _axpy4(floating* y, Py_ssize_t stride, floating a0, floating a1, floating a2,
                        floating a3, const floating* x, Py_ssize_t n) noexcept nogil:
    """y[k] += a_k x for the four rows y[k] = y + k stride."""
    cdef Py_ssize_t j
    for j in range(n):
        y[j] = y[j] + a0 * x[j]
        y[stride + j] = y[stride + j] + a1 * x[j]
        y[2 * stride + j] = y[2 * stride + j] + a2 * x[j]
        y[3 * stride + j] = y[3 * stride + j] + a3 * x[j]


cdef inline void _axpy_heads(floating* y, const floating* coef, const floating* x,
                             Py_ssize_t n, Py_ssize_t first, Py_ssize_t nr) noexcept nogil:
    """y_r += coef[r n] x for the heads first <= r < nr, four per pass (y_r = y + r n;
    y has rows up to the padded head count)."""
    cdef Py_ssize_t r = first
    while r < nr:
        _axpy4(y + r * n, n, _coef(coef, r, n, nr), _coef(coef, r + 1, n, nr),
               _coef(coef, r + 2, n, nr), _coef(coef, r + 3, n, nr), x, n)
        r = r + 4


cdef inline void _link_values(floating* out, const floating* lp, const floating* w,
                              const floating* pp, floating keep, floating wi,
                              Py_ssize_t n) noexcept nogil:
    """out_j = (keep − w_j) lp_j + wi pp_j: a row of the link update."""
    cdef Py_ssize_t j
    for j in range(n):
        out[j] = (keep - w[j]) * lp[j] + wi * pp[j]


cdef inline void _link_values_axpy4(floating* out, const floating* lp, const floating* w,
                                    const floating* pp, floating keep, floating wi,
                                    floating* y, Py_ssize_t stride, floating a0, floating a1,
                                    floating a2, floating a3, Py_ssize_t n) noexcept nogil:
    """out_j = (keep − w_j) lp_j + wi pp_j and y[k] += a_k out for four rows y[k] = y + k stride."""
    cdef floating x
    cdef Py_ssize_t j
    for j in range(n):
        x = (keep - w[j]) * lp[j] + wi * pp[j]
        out[j] = x
        y[j] = y[j] + a0 * x
        y[stride + j] = y[stride + j] + a1 * x
        y[2 * stride + j] = y[2 * stride + j] + a2 * x
        y[3 * stride + j] = y[3 * stride + j] + a3 * x


cdef inline void _link_row_axpy(floating* out, const floating* lp, const floating* w,
                                const floating* pp, Py_ssize_t i, const floating* coef,
                                floating* y, Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    """Row i of the new link matrix, out_j = (1 − w_i − w_j) lp_j + w_i p_j with out_i = 0,
    and y_r += coef[r n] out for each head r < nr (y_r = y + r n), the first four heads
    in the same pass."""
    cdef floating wi = w[i]
    cdef floating keep = 1 - wi
    cdef floating a0, a1, a2, a3
    if nr == 0:
        _link_values(out, lp, w, pp, keep, wi, n)
        out[i] = 0
        return
    a0 = _coef(coef, 0, n, nr)
    a1 = _coef(coef, 1, n, nr)
    a2 = _coef(coef, 2, n, nr)
    a3 = _coef(coef, 3, n, nr)
    # j < i, then j > i: the diagonal entry is the constant 0
    _link_values_axpy4(out, lp, w, pp, keep, wi, y, n, a0, a1, a2, a3, i)
    _link_values_axpy4(out + i + 1, lp + i + 1, w + i + 1, pp + i + 1, keep, wi, y + i + 1, n,
                       a0, a1, a2, a3, n - i - 1)
    out[i] = 0
    _axpy_heads(y, coef, out, n, 4, nr)


cdef inline void _cotangent4(floating* g, const floating* src, const floating* wr,
                             const floating* db, Py_ssize_t stride, floating a0, floating a1,
                             floating a2, floating a3, floating c0, floating c1, floating c2,
                             floating c3, Py_ssize_t n) noexcept nogil:
    """g = src + Σ_{k<4} (a_k wr[k] + c_k db[k]) for four heads (rows k stride apart)."""
    cdef Py_ssize_t j
    for j in range(n):
        g[j] = src[j] + (((a0 * wr[j] + c0 * db[j])
                          + (a1 * wr[stride + j] + c1 * db[stride + j]))
                         + ((a2 * wr[2 * stride + j] + c2 * db[2 * stride + j])
                            + (a3 * wr[3 * stride + j] + c3 * db[3 * stride + j])))


cdef inline void _cotangent_heads(floating* g, const floating* src, Py_ssize_t i,
                                  const floating* wrh, const floating* dbh, const floating* wr,
                                  const floating* df, Py_ssize_t n, Py_ssize_t first,
                                  Py_ssize_t nr) noexcept nogil:
    """g = src + Σ_{first <= r < nr} (df_r,i w_r + w_r,i db_r), four heads per pass.

    wrh and dbh are copies of w_r and db_r, padded with zero rows to a multiple
    of four heads; the coefficients come from wr and df.  src may be g itself
    only when first + 4 < nr (later passes add into g).
    """
    cdef Py_ssize_t r = first
    cdef const floating* s = src
    while r < nr:
        _cotangent4(g, s, wrh + r * n, dbh + r * n, n,
                    _coef(df + i, r, n, nr), _coef(df + i, r + 1, n, nr),
                    _coef(df + i, r + 2, n, nr), _coef(df + i, r + 3, n, nr),
                    _coef(wr + i, r, n, nr), _coef(wr + i, r + 1, n, nr),
                    _coef(wr + i, r + 2, n, nr), _coef(wr + i, r + 3, n, nr), n)
        s = g
        r = r + 4


cdef inline void _link_grads(const floating* x, floating* dlp, const floating* w, floating keep,
                             const floating* lp, floating wi, floating* dw_col, floating* dpp,
                             Py_ssize_t n) noexcept nogil:
    """From the cotangent x of a link row: dlp_j = (keep − w_j) x_j, dw_col_j −= x_j lp_j,
    dpp_j += x_j w_i."""
    cdef Py_ssize_t j
    for j in range(n):
        dlp[j] = (keep - w[j]) * x[j]
        dw_col[j] = dw_col[j] - x[j] * lp[j]
        dpp[j] = dpp[j] + x[j] * wi


cdef inline void _cotangent4_link_grads(floating* g, const floating* src, const floating* wr,
                                        const floating* db, Py_ssize_t stride, floating a0,
                                        floating a1, floating a2, floating a3, floating c0,
                                        floating c1, floating c2, floating c3, floating* dlp,
                                        const floating* w, floating keep, const floating* lp,
                                        floating wi, floating* dw_col, floating* dpp,
                                        Py_ssize_t n) noexcept nogil:
    """The last four heads of the cotangent, x = src + Σ_{k<4} (a_k wr[k] + c_k db[k]),
    stored in g and used at once as in _link_grads."""
    cdef floating x
    cdef Py_ssize_t j
    for j in range(n):
        x = src[j] + (((a0 * wr[j] + c0 * db[j])
                       + (a1 * wr[stride + j] + c1 * db[stride + j]))
                      + ((a2 * wr[2 * stride + j] + c2 * db[2 * stride + j])
                         + (a3 * wr[3 * stride + j] + c3 * db[3 * stride + j])))
        g[j] = x
        dlp[j] = (keep - w[j]) * x
        dw_col[j] = dw_col[j] - x * lp[j]
        dpp[j] = dpp[j] + x * wi


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


cdef int _link_step_batch(const floating* lp, const floating* pp, const floating* w,
                          const floating* wr, floating* L, floating* p, floating* f,
                          floating* bw, Py_ssize_t n, Py_ssize_t nr,
                          bint with_precedence) noexcept nogil:
    """New link matrix, and precedence (when with_precedence) and temporal weights
    (when nr > 0) of one batch row.  Returns -1 when scratch memory cannot be
    allocated, else 0.
    """
    cdef floating* bw_acc = <floating*> malloc((_padded(nr) * n + 1) * sizeof(floating))
    cdef Py_ssize_t i, r
    if bw_acc == NULL:
        return -1
    _fill(bw_acc, 0, _padded(nr) * n)
    for i in range(n):
        _link_row_axpy(L + i * n, lp + i * n, w, pp, i, (wr + i) if nr > 0 else wr,
                       bw_acc, n, nr)
        for r in range(nr):
            f[r * n + i] = _dot(L + i * n, wr + r * n, n)
    _copy(bw, bw_acc, nr * n)
    free(bw_acc)
    if with_precedence:
        _precedence_batch(pp, w, p, n)
    return 0


cdef int _temporal_batch(const floating* L, const floating* wr, floating* f, floating* bw,
                         Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    """Temporal weights of one batch row.  Returns -1 when out of memory, else 0."""
    cdef floating* bw_acc = <floating*> malloc(_padded(nr) * n * sizeof(floating))
    cdef Py_ssize_t i, r
    if bw_acc == NULL:
        return -1
    _fill(bw_acc, 0, _padded(nr) * n)
    for i in range(n):
        _axpy_heads(bw_acc, wr + i, L + i * n, n, 0, nr)
        for r in range(nr):
            f[r * n + i] = _dot(L + i * n, wr + r * n, n)
    _copy(bw, bw_acc, nr * n)
    free(bw_acc)
    return 0


cdef int _link_step_backward_batch(const floating* lp, const floating* pp, const floating* w,
                                   const floating* wr, const floating* dL, const floating* dp,
                                   const floating* df, const floating* db,
                                   floating* dlp, floating* dpp, floating* dw, floating* dwr,
                                   Py_ssize_t n, Py_ssize_t nr,
                                   bint with_precedence) noexcept nogil:
    """Backward of link (+ precedence, temporal weights when nr > 0) for one batch row.

    Per-thread scratch: the new row L[i] and its total cotangent G[i]; column
    sums for dw, dp_prev and (one row per head) dw_r; copies of w_r and db_r
    padded to a multiple of four heads.  Returns -1 when they cannot be
    allocated, else 0.
    """
    cdef Py_ssize_t nr4 = _padded(nr)
    cdef floating* lrow = <floating*> malloc(n * sizeof(floating))
    cdef floating* g = <floating*> malloc(n * sizeof(floating))
    cdef floating* dw_col = <floating*> malloc(n * sizeof(floating))
    cdef floating* dpp_acc = <floating*> malloc(n * sizeof(floating))
    cdef floating* dwr_col = <floating*> malloc((nr4 * n + 1) * sizeof(floating))
    cdef floating* wrh = <floating*> malloc((nr4 * n + 1) * sizeof(floating))
    cdef floating* dbh = <floating*> malloc((nr4 * n + 1) * sizeof(floating))
    cdef const floating* lpi
    cdef const floating* dli
    cdef floating* dlpi
    cdef floating wi, keep, s
    cdef Py_ssize_t i, j, r, k
    if (lrow == NULL or g == NULL or dw_col == NULL or dpp_acc == NULL or dwr_col == NULL
            or wrh == NULL or dbh == NULL):
        free(lrow)
        free(g)
        free(dw_col)
        free(dpp_acc)
        free(dwr_col)
        free(wrh)
        free(dbh)
        return -1
    _fill(dw_col, 0, n)
    _fill(dpp_acc, 0, n)
    _fill(dwr_col, 0, nr4 * n)
    _copy(wrh, wr, nr * n)
    _copy(dbh, db, nr * n)
    _fill(wrh + nr * n, 0, (nr4 - nr) * n)
    _fill(dbh + nr * n, 0, (nr4 - nr) * n)
    for i in range(n):
        lpi = lp + i * n
        dli = dL + i * n
        dlpi = dlp + i * n
        wi = w[i]
        keep = 1 - wi
        if nr > 0:
            # dw_r = Lᵀ df_r + L db_r, with the new row L[i]
            _link_row_axpy(lrow, lpi, w, pp, i, df + i, dwr_col, n, nr)
            for r in range(nr):
                dwr[r * n + i] = _dot(lrow, db + r * n, n)
        # G[i] = dL[i] + Σ_r (df_r,i w_r + w_r,i db_r), and from it dL_prev[i],
        # dp_prev and the column part of dw.  The diagonal entry is skipped
        # (L_ii is the constant 0): j < i, then j > i.
        if nr == 0:
            _link_grads(dli, dlpi, w, keep, lpi, wi, dw_col, dpp_acc, i)
            _link_grads(dli + i + 1, dlpi + i + 1, w + i + 1, keep, lpi + i + 1, wi,
                        dw_col + i + 1, dpp_acc + i + 1, n - i - 1)
            s = _dot_diff(dli, pp, lpi, i)
            s = s + _dot_diff(dli + i + 1, pp + i + 1, lpi + i + 1, n - i - 1)
        else:
            if nr > 4:
                _cotangent_heads(g, dli, i, wrh, dbh, wr, df, n, 4, nr)
            for k in range(2):
                j = 0 if k == 0 else i + 1
                if nr > 4:
                    _cotangent4_link_grads(
                        g + j, g + j, wrh + j, dbh + j, n, df[i], _coef(df + i, 1, n, nr),
                        _coef(df + i, 2, n, nr), _coef(df + i, 3, n, nr), wr[i],
                        _coef(wr + i, 1, n, nr), _coef(wr + i, 2, n, nr),
                        _coef(wr + i, 3, n, nr), dlpi + j, w + j, keep, lpi + j, wi,
                        dw_col + j, dpp_acc + j, (i if k == 0 else n - i - 1))
                else:
                    _cotangent4_link_grads(
                        g + j, dli + j, wrh + j, dbh + j, n, df[i], _coef(df + i, 1, n, nr),
                        _coef(df + i, 2, n, nr), _coef(df + i, 3, n, nr), wr[i],
                        _coef(wr + i, 1, n, nr), _coef(wr + i, 2, n, nr),
                        _coef(wr + i, 3, n, nr), dlpi + j, w + j, keep, lpi + j, wi,
                        dw_col + j, dpp_acc + j, (i if k == 0 else n - i - 1))
            s = _dot_diff(g, pp, lpi, i)
            s = s + _dot_diff(g + i + 1, pp + i + 1, lpi + i + 1, n - i - 1)
        dlpi[i] = 0
        # dw_i = Σ_{j≠i} G_ij (p_prev,j − L_prev,ij)  (+ the column part at the end)
        dw[i] = s
    for j in range(n):
        dw[j] = dw[j] + dw_col[j]
    _copy(dpp, dpp_acc, n)
    for j in range(nr * n):
        dwr[j] = dwr[j] + dwr_col[j]
    if with_precedence:
        _precedence_backward_batch(pp, w, dp, dpp, dw, n, True)
    free(lrow)
    free(g)
    free(dw_col)
    free(dpp_acc)
    free(dwr_col)
    free(wrh)
    free(dbh)
    return 0


cdef int _temporal_backward_batch(const floating* L, const floating* wr, const floating* df,
                                  const floating* db, floating* dL, floating* dwr,
                                  Py_ssize_t n, Py_ssize_t nr) noexcept nogil:
    """dL_ij = Σ_r (df_r,i w_r,j + w_r,i db_r,j);  dw_r = Lᵀ df_r + L db_r.

    Returns -1 when scratch memory cannot be allocated, else 0.
    """
    cdef Py_ssize_t nr4 = _padded(nr)
    cdef floating* zero = <floating*> malloc(n * sizeof(floating))
    cdef floating* g = <floating*> malloc(n * sizeof(floating))
    cdef floating* dwr_col = <floating*> malloc(nr4 * n * sizeof(floating))
    cdef floating* wrh = <floating*> malloc(nr4 * n * sizeof(floating))
    cdef floating* dbh = <floating*> malloc(nr4 * n * sizeof(floating))
    cdef const floating* li
    cdef Py_ssize_t i, j, r
    if zero == NULL or g == NULL or dwr_col == NULL or wrh == NULL or dbh == NULL:
        free(zero)
        free(g)
        free(dwr_col)
        free(wrh)
        free(dbh)
        return -1
    _fill(zero, 0, n)
    _fill(dwr_col, 0, nr4 * n)
    _copy(wrh, wr, nr * n)
    _copy(dbh, db, nr * n)
    _fill(wrh + nr * n, 0, (nr4 - nr) * n)
    _fill(dbh + nr * n, 0, (nr4 - nr) * n)
    for i in range(n):
        li = L + i * n
        _cotangent_heads(g, zero, i, wrh, dbh, wr, df, n, 0, nr)
        _copy(dL + i * n, g, n)
        _axpy_heads(dwr_col, df + i, li, n, 0, nr)
        for r in range(nr):
            dwr[r * n + i] = _dot(li, db + r * n, n)
    for j in range(nr * n):
        dwr[j] = dwr[j] + dwr_col[j]
    free(zero)
    free(g)
    free(dwr_col)
    free(wrh)
    free(dbh)
    return 0


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
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        _precedence_batch(&precedence_prev[b, 0], &write_weights[b, 0], &precedence[b, 0], N)


def precedence_backward(const floating[:, ::1] precedence_prev,
                        const floating[:, ::1] write_weights,
                        const floating[:, ::1] grad_precedence,
                        floating[:, ::1] grad_precedence_prev,
                        floating[:, ::1] grad_write_weights, int num_threads=1):
    """Gradients of ``precedence`` w.r.t. ``precedence_prev`` and ``write_weights``."""
    cdef Py_ssize_t B = precedence_prev.shape[0], N = precedence_prev.shape[1], b
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        _precedence_backward_batch(&precedence_prev[b, 0], &write_weights[b, 0],
                                   &grad_precedence[b, 0], &grad_precedence_prev[b, 0],
                                   &grad_write_weights[b, 0], N, False)


def link_forward(const floating[:, :, ::1] link_prev, const floating[:, ::1] write_weights,
                 const floating[:, ::1] precedence_prev, floating[:, :, ::1] link,
                 int num_threads=1):
    """``link[b]`` from ``link_prev[b]`` `(B, N, N)`, ``write_weights``, ``precedence_prev`` `(B, N)`."""
    cdef Py_ssize_t B = link_prev.shape[0], N = link_prev.shape[1], b
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_batch(&link_prev[b, 0, 0], &precedence_prev[b, 0],
                                     &write_weights[b, 0], NULL, &link[b, 0, 0], NULL, NULL,
                                     NULL, N, 0, False)
    _check_status(status)


def link_backward(const floating[:, :, ::1] link_prev, const floating[:, ::1] write_weights,
                  const floating[:, ::1] precedence_prev, const floating[:, :, ::1] grad_link,
                  floating[:, :, ::1] grad_link_prev, floating[:, ::1] grad_write_weights,
                  floating[:, ::1] grad_precedence_prev, int num_threads=1):
    """Gradients of ``link`` w.r.t. ``link_prev``, ``write_weights``, ``precedence_prev``."""
    cdef Py_ssize_t B = link_prev.shape[0], N = link_prev.shape[1], b
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_backward_batch(
            &link_prev[b, 0, 0], &precedence_prev[b, 0], &write_weights[b, 0], NULL,
            &grad_link[b, 0, 0], NULL, NULL, NULL, &grad_link_prev[b, 0, 0],
            &grad_precedence_prev[b, 0], &grad_write_weights[b, 0], NULL, N, 0, False)
    _check_status(status)


def temporal_weights_forward(const floating[:, :, ::1] link,
                             const floating[:, :, ::1] read_weights_prev,
                             floating[:, :, ::1] forward_weights,
                             floating[:, :, ::1] backward_weights, int num_threads=1):
    """``f_r = L w_r``, ``b_r = Lᵀ w_r``; link `(B, N, N)`, weights `(B, R, N)`."""
    cdef Py_ssize_t B = link.shape[0], N = link.shape[1], R = read_weights_prev.shape[1], b
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _temporal_batch(&link[b, 0, 0], &read_weights_prev[b, 0, 0],
                                    &forward_weights[b, 0, 0], &backward_weights[b, 0, 0], N, R)
    _check_status(status)


def temporal_weights_backward(const floating[:, :, ::1] link,
                              const floating[:, :, ::1] read_weights_prev,
                              const floating[:, :, ::1] grad_forward,
                              const floating[:, :, ::1] grad_backward,
                              floating[:, :, ::1] grad_link,
                              floating[:, :, ::1] grad_read_weights_prev, int num_threads=1):
    """Gradients of ``temporal_weights`` w.r.t. ``link`` and ``read_weights_prev``."""
    cdef Py_ssize_t B = link.shape[0], N = link.shape[1], R = read_weights_prev.shape[1], b
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _temporal_backward_batch(&link[b, 0, 0], &read_weights_prev[b, 0, 0],
                                             &grad_forward[b, 0, 0], &grad_backward[b, 0, 0],
                                             &grad_link[b, 0, 0],
                                             &grad_read_weights_prev[b, 0, 0], N, R)
    _check_status(status)


def link_step_forward(const floating[:, :, ::1] link_prev,
                      const floating[:, ::1] precedence_prev,
                      const floating[:, ::1] write_weights,
                      const floating[:, :, ::1] read_weights_prev,
                      floating[:, :, ::1] link, floating[:, ::1] precedence,
                      floating[:, :, ::1] forward_weights, floating[:, :, ::1] backward_weights,
                      int num_threads=1):
    """Fused ``link``, ``precedence`` and ``temporal_weights`` (of the new link)."""
    cdef Py_ssize_t B = link_prev.shape[0], N = link_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1], b
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_batch(&link_prev[b, 0, 0], &precedence_prev[b, 0],
                                     &write_weights[b, 0], &read_weights_prev[b, 0, 0],
                                     &link[b, 0, 0], &precedence[b, 0],
                                     &forward_weights[b, 0, 0], &backward_weights[b, 0, 0],
                                     N, R, True)
    _check_status(status)


def link_step_backward(const floating[:, :, ::1] link_prev,
                       const floating[:, ::1] precedence_prev,
                       const floating[:, ::1] write_weights,
                       const floating[:, :, ::1] read_weights_prev,
                       const floating[:, :, ::1] grad_link,
                       const floating[:, ::1] grad_precedence,
                       const floating[:, :, ::1] grad_forward,
                       const floating[:, :, ::1] grad_backward,
                       floating[:, :, ::1] grad_link_prev,
                       floating[:, ::1] grad_precedence_prev,
                       floating[:, ::1] grad_write_weights,
                       floating[:, :, ::1] grad_read_weights_prev, int num_threads=1):
    """Gradients of ``link_step`` w.r.t. its four inputs, in input order."""
    cdef Py_ssize_t B = link_prev.shape[0], N = link_prev.shape[1]
    cdef Py_ssize_t R = read_weights_prev.shape[1], b
    cdef int[::1] status = _zeros_int(B)
    for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
        status[b] = _link_step_backward_batch(
            &link_prev[b, 0, 0], &precedence_prev[b, 0], &write_weights[b, 0],
            &read_weights_prev[b, 0, 0], &grad_link[b, 0, 0], &grad_precedence[b, 0],
            &grad_forward[b, 0, 0], &grad_backward[b, 0, 0], &grad_link_prev[b, 0, 0],
            &grad_precedence_prev[b, 0], &grad_write_weights[b, 0],
            &grad_read_weights_prev[b, 0, 0], N, R, True)
    _check_status(status)
