/*
 * Body of the link_step and temporal_weights row loops, compiled by
 * simd_levels.h (included from linkage_simd.h) once per dtype and instruction
 * set, with its parameters DMEM_T, DMEM_SUFFIX, DMEM_V, DMEM_VT, DMEM_VTU,
 * DMEM_ATTR, DMEM_ISA and DMEM_STREAM defined, and the short names and vector
 * helpers of simd_begin.h (T_, V_, VT_, FN, LD_, ST_, FN(v_load), ...).
 *
 * Every function here is static and named dmem_<name>_<suffix>_<isa>.
 * Not meant to be included on its own.
 */

/*
 * Distance between the scratch rows (per-j vectors, column sums) of a batch
 * row: n rounded up to whole vectors, plus one cache line or two.  Without the
 * extra lines, rows 4 KiB apart (n = 512, 1024, ...) fall in the same L1 sets
 * and alias in the store-to-load checks: the backward ran 8x slower at n = 1024.
 */
DMEM_INLINE DMEM_ATTR Py_ssize_t FN(stride)(Py_ssize_t n)
{
    return (n + V_ - 1) / V_ * V_ + 128 / (Py_ssize_t)sizeof(T_);
}

/* The first 64-byte boundary in a block from malloc(size + 64). */
DMEM_INLINE DMEM_ATTR T_ *FN(aligned)(void *block)
{
    return (T_ *)(((size_t)block + 63) & ~(size_t)63);
}

/* Store an output chunk: with nt, a full chunk goes around the caches
 * (non-temporal store, when the address is aligned for it; x86 only). */
DMEM_INLINE DMEM_ATTR void FN(store_out)(T_ *p, VT_ v, Py_ssize_t m, int nt)
{
#if DMEM_X86
    if (nt && m == V_ && DMEM_STREAM_OK(p)) {
        DMEM_STREAM(p, v);
        return;
    }
#else
    (void)nt;
#endif
    FN(v_store)(p, v, m);
}

/* dst[0:n] = src[0:n], dst[n:np_] = 0 */
DMEM_INLINE DMEM_ATTR void FN(pad)(T_ *DMEM_RESTRICT dst, const T_ *DMEM_RESTRICT src,
                                   Py_ssize_t n, Py_ssize_t np_)
{
    Py_ssize_t j;
    for (j = 0; j < n; j++)
        dst[j] = src[j];
    for (j = n; j < np_; j++)
        dst[j] = 0;
}

/* ---------------------------------------------------------------- forward */

/*
 * One chunk (lanes j .. j+m-1) of row i.  first: form the new link values
 * x = (keep - w_j) lp_ij + w_i p_j (lane dlane, the diagonal, set to 0; -1:
 * none) and store them in Li; otherwise load them back from Li (a later group
 * of heads).  heads: add x to the four row dots acc[k] += x wr_k and the four
 * column sums bg_k += c_k x (rows of bg and wrg are np_ apart).
 */
DMEM_INLINE DMEM_ATTR void FN(fwd_chunk)(
    const T_ *lpi, const T_ *DMEM_RESTRICT wpad, const T_ *DMEM_RESTRICT ppad,
    T_ *Li, const T_ *DMEM_RESTRICT wrg, T_ *DMEM_RESTRICT bg, Py_ssize_t np_,
    Py_ssize_t j, VT_ keep, VT_ wi, const VT_ *cs, VT_ *acc, int heads, int first,
    Py_ssize_t dlane, Py_ssize_t m, int nt)
{
    VT_ x;
    if (first) {
        x = (keep - LD_(wpad + j)) * FN(v_load)(lpi + j, m) + wi * LD_(ppad + j);
        if (dlane >= 0)
            ZLANE_(x, dlane);
        FN(store_out)(Li + j, x, m, nt);
    } else {
        x = FN(v_load)(Li + j, m);
    }
    if (heads) {
        acc[0] += x * LD_(wrg + j);
        acc[1] += x * LD_(wrg + np_ + j);
        acc[2] += x * LD_(wrg + 2 * np_ + j);
        acc[3] += x * LD_(wrg + 3 * np_ + j);
        ST_(bg + j, LD_(bg + j) + cs[0] * x);
        ST_(bg + np_ + j, LD_(bg + np_ + j) + cs[1] * x);
        ST_(bg + 2 * np_ + j, LD_(bg + 2 * np_ + j) + cs[2] * x);
        ST_(bg + 3 * np_ + j, LD_(bg + 3 * np_ + j) + cs[3] * x);
    }
}

/* All chunks of row i: full chunks before the diagonal's, the diagonal's,
 * full chunks after it, then the partial last chunk (rem lanes) if any.
 * dj: first index of the diagonal's chunk, dl: its lane. */
DMEM_INLINE DMEM_ATTR void FN(fwd_row)(
    const T_ *lpi, const T_ *DMEM_RESTRICT wpad, const T_ *DMEM_RESTRICT ppad,
    T_ *Li, const T_ *DMEM_RESTRICT wrg, T_ *DMEM_RESTRICT bg, Py_ssize_t np_,
    T_ keep_s, T_ wi_s, const VT_ *cs, VT_ *acc, int heads, int first, Py_ssize_t dj,
    Py_ssize_t dl, Py_ssize_t nfull, Py_ssize_t rem, int nt)
{
    VT_ keep = FN(v_splat)(keep_s), wi = FN(v_splat)(wi_s);
    Py_ssize_t j, stop = dj < nfull ? dj : nfull;
    for (j = 0; j < stop; j += V_)
        FN(fwd_chunk)(lpi, wpad, ppad, Li, wrg, bg, np_, j, keep, wi, cs, acc, heads, first, -1, V_, nt);
    if (dj < nfull) {
        FN(fwd_chunk)(lpi, wpad, ppad, Li, wrg, bg, np_, dj, keep, wi, cs, acc, heads, first, dl, V_, nt);
        for (j = dj + V_; j < nfull; j += V_)
            FN(fwd_chunk)(lpi, wpad, ppad, Li, wrg, bg, np_, j, keep, wi, cs, acc, heads, first, -1,
                          V_, nt);
    }
    if (rem)
        FN(fwd_chunk)(lpi, wpad, ppad, Li, wrg, bg, np_, nfull, keep, wi, cs, acc, heads, first,
                      dj == nfull ? dl : -1, rem, nt);
}

static DMEM_ATTR int FN(link_forward)(const T_ *lp, const T_ *DMEM_RESTRICT pp,
                                      const T_ *DMEM_RESTRICT w, const T_ *DMEM_RESTRICT wr,
                                      T_ *L, T_ *DMEM_RESTRICT f,
                                      T_ *DMEM_RESTRICT bw, Py_ssize_t n, Py_ssize_t nr, int nt)
{
    Py_ssize_t np_ = FN(stride)(n), nfull = n / V_ * V_, rem = n - nfull;
    Py_ssize_t ng = (nr + 3) / 4, nr4 = 4 * ng;
    Py_ssize_t i, j, r, g, k;
    T_ *wpad, *ppad, *zrow, *wrpad, *bacc;
    VT_ cs[4], acc[4];
    void *scratch = malloc(sizeof(T_) * (size_t)((3 + 2 * nr4) * np_) + 64);

    if (scratch == NULL)
        return -1;
    wpad = FN(aligned)(scratch);
    ppad = wpad + np_;
    zrow = ppad + np_;
    wrpad = zrow + np_;
    bacc = wrpad + nr4 * np_;
    FN(pad)(wpad, w, n, np_);
    FN(pad)(ppad, pp, n, np_);
    FN(pad)(zrow, w, 0, np_);
    for (r = 0; r < nr4; r++) {
        if (r < nr)
            FN(pad)(wrpad + r * np_, wr + r * n, n, np_);
        else
            FN(pad)(wrpad + r * np_, wr, 0, np_);
        FN(pad)(bacc + r * np_, wr, 0, np_);
    }
    for (i = 0; i < n; i++) {
        const T_ *lpi = lp != NULL ? lp + i * n : zrow;
        T_ *Li = L + i * n;
        T_ wi = w[i], keep = 1 - wi;
        Py_ssize_t dj = i / V_ * V_, dl = i - dj;
        if (nr == 0) {
            FN(fwd_row)(lpi, wpad, ppad, Li, wrpad, bacc, np_, keep, wi, cs, acc, 0, 1, dj, dl,
                        nfull, rem, nt);
            continue;
        }
        for (g = 0; g < ng; g++) {
            for (k = 0; k < 4; k++) {
                r = 4 * g + k;
                cs[k] = FN(v_splat)(r < nr ? wr[r * n + i] : (T_)0);
                acc[k] = FN(v_splat)(0);
            }
            if (g == 0)
                FN(fwd_row)(lpi, wpad, ppad, Li, wrpad, bacc, np_, keep, wi, cs, acc, 1, 1, dj, dl,
                            nfull, rem, nt);
            else
                FN(fwd_row)(lpi, wpad, ppad, Li, wrpad + 4 * g * np_, bacc + 4 * g * np_, np_, keep,
                            wi, cs, acc, 1, 0, dj, dl, nfull, rem, nt);
            for (k = 0; k < 4 && 4 * g + k < nr; k++)
                f[(4 * g + k) * n + i] = FN(v_hsum)(acc[k]);
        }
    }
    for (r = 0; r < nr; r++)
        for (j = 0; j < n; j++)
            bw[r * n + j] = bacc[r * np_ + j];
    free(scratch);
#if DMEM_X86
    if (nt)
        _mm_sfence();
#endif
    return 0;
}

/* ---------------------------------------------------------------- backward */

/* The end of a backward: dwr += its column parts (rows np_ apart in dwrcol),
 * the scratch block freed, the non-temporal stores (nt) fenced. */
DMEM_INLINE DMEM_ATTR void FN(bwd_finish)(T_ *DMEM_RESTRICT dwr,
                                          const T_ *DMEM_RESTRICT dwrcol, Py_ssize_t n,
                                          Py_ssize_t nr, Py_ssize_t np_, void *scratch, int nt)
{
    Py_ssize_t r, j;
    for (r = 0; r < nr; r++)
        for (j = 0; j < n; j++)
            dwr[r * n + j] = dwr[r * n + j] + dwrcol[r * np_ + j];
    free(scratch);
#if DMEM_X86
    if (nt)
        _mm_sfence();
#else
    (void)nt;
#endif
}

/*
 * The four heads of a group at one chunk of a row of the backward, for the
 * link values x of the chunk (lanes j ..): the column part of dwr,
 * dwrg_k += a_k x; the row dots accr[k] += x db_k; and the cotangent chunk g
 * plus this group's rank-1 terms, returned: g + sum_k (a_k wr_k + c_k db_k).
 */
DMEM_INLINE DMEM_ATTR VT_ FN(bwd_heads)(VT_ x, VT_ g, const T_ *DMEM_RESTRICT wrg,
                                        const T_ *DMEM_RESTRICT dbg, T_ *DMEM_RESTRICT dwrg,
                                        Py_ssize_t np_, Py_ssize_t j, const VT_ *as,
                                        const VT_ *cs, VT_ *accr)
{
    VT_ d0 = LD_(dbg + j), d1 = LD_(dbg + np_ + j), d2 = LD_(dbg + 2 * np_ + j),
        d3 = LD_(dbg + 3 * np_ + j);
    ST_(dwrg + j, LD_(dwrg + j) + as[0] * x);
    ST_(dwrg + np_ + j, LD_(dwrg + np_ + j) + as[1] * x);
    ST_(dwrg + 2 * np_ + j, LD_(dwrg + 2 * np_ + j) + as[2] * x);
    ST_(dwrg + 3 * np_ + j, LD_(dwrg + 3 * np_ + j) + as[3] * x);
    accr[0] += x * d0;
    accr[1] += x * d1;
    accr[2] += x * d2;
    accr[3] += x * d3;
    return g + (((as[0] * LD_(wrg + j) + cs[0] * d0) + (as[1] * LD_(wrg + np_ + j) + cs[1] * d1))
                + ((as[2] * LD_(wrg + 2 * np_ + j) + cs[2] * d2)
                   + (as[3] * LD_(wrg + 3 * np_ + j) + cs[3] * d3)));
}

/*
 * One chunk (lanes j .. j+m-1) of row i of the backward.  src: the cotangent
 * row (dL[i], or the partial G[i] of earlier groups of heads).  heads: recompute
 * the new link values x, add the column part of dwr (dwrg_k += a_k x) and the
 * row dots accr[k] += x db_k, and add this group's rank-1 terms to the
 * cotangent, g = src + sum_k (a_k wr_k + c_k db_k).  final == 0: store g in
 * grow (a later pass continues it).  final: the cotangent is complete; zero its
 * diagonal lane, store dLp = (keep - w_j) g (dlpi may be src itself), and add
 * g's part of dw (column: dwcol -= g lp; row: accw += g (p - lp)) and of dp
 * (dpacc += g w_i).
 */
DMEM_INLINE DMEM_ATTR void FN(bwd_chunk)(
    const T_ *DMEM_RESTRICT lpi, const T_ *src, T_ *dlpi, T_ *grow,
    const T_ *DMEM_RESTRICT wpad, const T_ *DMEM_RESTRICT ppad, const T_ *DMEM_RESTRICT wrg,
    const T_ *DMEM_RESTRICT dbg, T_ *DMEM_RESTRICT dwrg, T_ *DMEM_RESTRICT dwcol,
    T_ *DMEM_RESTRICT dpacc, Py_ssize_t np_, Py_ssize_t j, VT_ keep, VT_ wi, const VT_ *as,
    const VT_ *cs, VT_ *accr, VT_ *accw, int heads, int final, Py_ssize_t dlane, Py_ssize_t m,
    int nt)
{
    VT_ lv = FN(v_load)(lpi + j, m);
    VT_ pv = LD_(ppad + j);
    VT_ k = keep - LD_(wpad + j);
    VT_ g = FN(v_load)(src + j, m);
    if (heads) {
        VT_ x = k * lv + wi * pv;
        if (dlane >= 0)
            ZLANE_(x, dlane);
        g = FN(bwd_heads)(x, g, wrg, dbg, dwrg, np_, j, as, cs, accr);
    }
    if (!final) {
        ST_(grow + j, g);
        return;
    }
    if (dlane >= 0)
        ZLANE_(g, dlane);
    FN(store_out)(dlpi + j, k * g, m, nt);
    ST_(dwcol + j, LD_(dwcol + j) - g * lv);
    ST_(dpacc + j, LD_(dpacc + j) + g * wi);
    *accw += g * (pv - lv);
}

DMEM_INLINE DMEM_ATTR void FN(bwd_row)(
    const T_ *DMEM_RESTRICT lpi, const T_ *src, T_ *dlpi, T_ *grow,
    const T_ *DMEM_RESTRICT wpad, const T_ *DMEM_RESTRICT ppad, const T_ *DMEM_RESTRICT wrg,
    const T_ *DMEM_RESTRICT dbg, T_ *DMEM_RESTRICT dwrg, T_ *DMEM_RESTRICT dwcol,
    T_ *DMEM_RESTRICT dpacc, Py_ssize_t np_, T_ keep_s, T_ wi_s, const VT_ *as, const VT_ *cs,
    VT_ *accr, VT_ *accw, int heads, int final, Py_ssize_t dj, Py_ssize_t dl, Py_ssize_t nfull,
    Py_ssize_t rem, int nt)
{
    VT_ keep = FN(v_splat)(keep_s), wi = FN(v_splat)(wi_s);
    Py_ssize_t j, stop = dj < nfull ? dj : nfull;
    for (j = 0; j < stop; j += V_)
        FN(bwd_chunk)(lpi, src, dlpi, grow, wpad, ppad, wrg, dbg, dwrg, dwcol, dpacc, np_, j, keep,
                      wi, as, cs, accr, accw, heads, final, -1, V_, nt);
    if (dj < nfull) {
        FN(bwd_chunk)(lpi, src, dlpi, grow, wpad, ppad, wrg, dbg, dwrg, dwcol, dpacc, np_, dj, keep,
                      wi, as, cs, accr, accw, heads, final, dl, V_, nt);
        for (j = dj + V_; j < nfull; j += V_)
            FN(bwd_chunk)(lpi, src, dlpi, grow, wpad, ppad, wrg, dbg, dwrg, dwcol, dpacc, np_, j,
                          keep, wi, as, cs, accr, accw, heads, final, -1, V_, nt);
    }
    if (rem)
        FN(bwd_chunk)(lpi, src, dlpi, grow, wpad, ppad, wrg, dbg, dwrg, dwcol, dpacc, np_, nfull,
                      keep, wi, as, cs, accr, accw, heads, final, dj == nfull ? dl : -1, rem, nt);
}

static DMEM_ATTR int FN(link_backward)(const T_ *lp, const T_ *DMEM_RESTRICT pp,
                                       const T_ *DMEM_RESTRICT w, const T_ *DMEM_RESTRICT wr,
                                       const T_ *dL, const T_ *DMEM_RESTRICT df,
                                       const T_ *DMEM_RESTRICT db, T_ *dlp, T_ *DMEM_RESTRICT dw,
                                       T_ *DMEM_RESTRICT dpp, T_ *DMEM_RESTRICT dwr, Py_ssize_t n,
                                       Py_ssize_t nr, int nt)
{
    Py_ssize_t np_ = FN(stride)(n), nfull = n / V_ * V_, rem = n - nfull;
    Py_ssize_t ng = (nr + 3) / 4, nr4 = 4 * ng;
    Py_ssize_t i, j, r, g, k;
    T_ *wpad, *ppad, *zrow, *sink, *grow, *dwcol, *dpacc, *wrpad, *dbpad, *dwrcol;
    VT_ as[4], cs[4], accr[4], accw;
    void *scratch = malloc(sizeof(T_) * (size_t)((7 + 3 * nr4) * np_) + 64);

    if (scratch == NULL)
        return -1;
    wpad = FN(aligned)(scratch);
    ppad = wpad + np_;
    zrow = ppad + np_;
    sink = zrow + np_;
    grow = sink + np_;
    dwcol = grow + np_;
    dpacc = dwcol + np_;
    wrpad = dpacc + np_;
    dbpad = wrpad + nr4 * np_;
    dwrcol = dbpad + nr4 * np_;
    FN(pad)(wpad, w, n, np_);
    FN(pad)(ppad, pp, n, np_);
    FN(pad)(zrow, w, 0, np_);
    FN(pad)(grow, w, 0, np_);
    FN(pad)(dwcol, w, 0, np_);
    FN(pad)(dpacc, w, 0, np_);
    for (r = 0; r < nr4; r++) {
        FN(pad)(wrpad + r * np_, r < nr ? wr + r * n : wr, r < nr ? n : 0, np_);
        FN(pad)(dbpad + r * np_, r < nr ? db + r * n : db, r < nr ? n : 0, np_);
        FN(pad)(dwrcol + r * np_, w, 0, np_);
    }
    for (k = 0; k < 4; k++)
        as[k] = cs[k] = accr[k] = FN(v_splat)(0);
    for (i = 0; i < n; i++) {
        const T_ *lpi = lp != NULL ? lp + i * n : zrow;
        const T_ *src = dL != NULL ? dL + i * n : zrow;
        T_ *dlpi = dlp != NULL ? dlp + i * n : sink;
        T_ wi = w[i], keep = 1 - wi;
        Py_ssize_t dj = i / V_ * V_, dl = i - dj;
        accw = FN(v_splat)(0);
        if (nr == 0) {
            FN(bwd_row)(lpi, src, dlpi, grow, wpad, ppad, wrpad, dbpad, dwrcol, dwcol, dpacc, np_,
                        keep, wi, as, cs, accr, &accw, 0, 1, dj, dl, nfull, rem, nt);
            dw[i] = FN(v_hsum)(accw);
            continue;
        }
        /* groups of heads after the first: continue the cotangent in grow */
        for (g = 1; g < ng; g++) {
            for (k = 0; k < 4; k++) {
                r = 4 * g + k;
                as[k] = FN(v_splat)(r < nr ? df[r * n + i] : (T_)0);
                cs[k] = FN(v_splat)(r < nr ? wr[r * n + i] : (T_)0);
                accr[k] = FN(v_splat)(0);
            }
            FN(bwd_row)(lpi, src, dlpi, grow, wpad, ppad, wrpad + 4 * g * np_, dbpad + 4 * g * np_,
                        dwrcol + 4 * g * np_, dwcol, dpacc, np_, keep, wi, as, cs, accr, &accw, 1,
                        0, dj, dl, nfull, rem, nt);
            for (k = 0; k < 4 && 4 * g + k < nr; k++)
                dwr[(4 * g + k) * n + i] = FN(v_hsum)(accr[k]);
            src = grow;
        }
        for (k = 0; k < 4; k++) {
            as[k] = FN(v_splat)(k < nr ? df[k * n + i] : (T_)0);
            cs[k] = FN(v_splat)(k < nr ? wr[k * n + i] : (T_)0);
            accr[k] = FN(v_splat)(0);
        }
        FN(bwd_row)(lpi, src, dlpi, grow, wpad, ppad, wrpad, dbpad, dwrcol, dwcol, dpacc, np_, keep,
                    wi, as, cs, accr, &accw, 1, 1, dj, dl, nfull, rem, nt);
        for (k = 0; k < 4 && k < nr; k++)
            dwr[k * n + i] = FN(v_hsum)(accr[k]);
        dw[i] = FN(v_hsum)(accw);
    }
    for (j = 0; j < n; j++) {
        dw[j] = dw[j] + dwcol[j];
        dpp[j] = dpacc[j];
    }
    FN(bwd_finish)(dwr, dwrcol, n, nr, np_, scratch, nt);
    return 0;
}

/* ---------------------------------------------------------------- temporal weights */

/*
 * temporal_weights forward of one batch row: f_r = L wr_r, bw_r = L^T wr_r for
 * an arbitrary L (n x n; no diagonal zeroing).  The link forward's row loop
 * with first = 0: row i of L is loaded once per group of four heads (read
 * only), its dots with wr_k are f_k,i and its multiples wr_k,i L[i] are summed
 * into the padded scratch rows bacc_k.
 */
static DMEM_ATTR int FN(temporal_forward)(const T_ *L, const T_ *DMEM_RESTRICT wr,
                                          T_ *DMEM_RESTRICT f, T_ *DMEM_RESTRICT bw,
                                          Py_ssize_t n, Py_ssize_t nr)
{
    Py_ssize_t np_ = FN(stride)(n), nfull = n / V_ * V_, rem = n - nfull;
    Py_ssize_t ng = (nr + 3) / 4, nr4 = 4 * ng;
    Py_ssize_t i, j, r, g, k;
    T_ *wrpad, *bacc;
    VT_ cs[4], acc[4];
    void *scratch = malloc(sizeof(T_) * (size_t)(2 * nr4 * np_) + 64);

    if (scratch == NULL)
        return -1;
    wrpad = FN(aligned)(scratch);
    bacc = wrpad + nr4 * np_;
    for (r = 0; r < nr4; r++) {
        FN(pad)(wrpad + r * np_, r < nr ? wr + r * n : wr, r < nr ? n : 0, np_);
        FN(pad)(bacc + r * np_, wr, 0, np_);
    }
    for (i = 0; i < n; i++) {
        /* first = 0: fwd_row only loads from the row, never stores into it */
        T_ *Li = (T_ *)(L + i * n);
        for (g = 0; g < ng; g++) {
            for (k = 0; k < 4; k++) {
                r = 4 * g + k;
                cs[k] = FN(v_splat)(r < nr ? wr[r * n + i] : (T_)0);
                acc[k] = FN(v_splat)(0);
            }
            FN(fwd_row)(NULL, NULL, NULL, Li, wrpad + 4 * g * np_, bacc + 4 * g * np_, np_, 0,
                        0, cs, acc, 1, 0, nfull, -1, nfull, rem, 0);
            for (k = 0; k < 4 && 4 * g + k < nr; k++)
                f[(4 * g + k) * n + i] = FN(v_hsum)(acc[k]);
        }
    }
    for (r = 0; r < nr; r++)
        for (j = 0; j < n; j++)
            bw[r * n + j] = bacc[r * np_ + j];
    free(scratch);
    return 0;
}

/*
 * One chunk (lanes j .. j+m-1) of row i of the temporal_weights backward, for
 * one group of four heads: x = L[i] chunk; the column part of dwr,
 * dwrg_k += a_k x (a_k = df_k,i); the row dots accr[k] += x db_k; and the
 * cotangent g = src + sum_k (a_k wr_k + c_k db_k) (c_k = wr_k,i), stored in
 * dst (with store_out when final, else a plain store into a scratch row).
 */
DMEM_INLINE DMEM_ATTR void FN(tbwd_chunk)(
    const T_ *DMEM_RESTRICT Li, const T_ *src, T_ *dst, const T_ *DMEM_RESTRICT wrg,
    const T_ *DMEM_RESTRICT dbg, T_ *DMEM_RESTRICT dwrg, Py_ssize_t np_, Py_ssize_t j,
    const VT_ *as, const VT_ *cs, VT_ *accr, int final, Py_ssize_t m, int nt)
{
    VT_ g = FN(bwd_heads)(FN(v_load)(Li + j, m), FN(v_load)(src + j, m), wrg, dbg, dwrg, np_,
                          j, as, cs, accr);
    if (final)
        FN(store_out)(dst + j, g, m, nt);
    else
        ST_(dst + j, g);
}

/*
 * temporal_weights backward of one batch row:
 *
 *     dL_ij  = sum_r (df_r,i wr_r,j + wr_r,i db_r,j)
 *     dwr_r  = L^T df_r + L db_r
 *
 * Row i of L is read once per group of four heads.  As in the link backward,
 * the groups after the first run first and carry the partial cotangent row in
 * the scratch row grow (padded: full-vector stores); the first group finishes
 * it into dL[i] (non-temporal stores with nt).
 */
static DMEM_ATTR int FN(temporal_backward)(const T_ *DMEM_RESTRICT L,
                                           const T_ *DMEM_RESTRICT wr,
                                           const T_ *DMEM_RESTRICT df,
                                           const T_ *DMEM_RESTRICT db, T_ *DMEM_RESTRICT dL,
                                           T_ *DMEM_RESTRICT dwr, Py_ssize_t n, Py_ssize_t nr,
                                           int nt)
{
    Py_ssize_t np_ = FN(stride)(n), nfull = n / V_ * V_, rem = n - nfull;
    Py_ssize_t ng = (nr + 3) / 4, nr4 = 4 * ng;
    Py_ssize_t i, j, r, g, k;
    T_ *zrow, *grow, *wrpad, *dbpad, *dwrcol;
    VT_ as[4], cs[4], accr[4];
    void *scratch = malloc(sizeof(T_) * (size_t)((2 + 3 * nr4) * np_) + 64);

    if (scratch == NULL)
        return -1;
    zrow = FN(aligned)(scratch);
    grow = zrow + np_;
    wrpad = grow + np_;
    dbpad = wrpad + nr4 * np_;
    dwrcol = dbpad + nr4 * np_;
    FN(pad)(zrow, wr, 0, np_);
    FN(pad)(grow, wr, 0, np_);
    for (r = 0; r < nr4; r++) {
        FN(pad)(wrpad + r * np_, r < nr ? wr + r * n : wr, r < nr ? n : 0, np_);
        FN(pad)(dbpad + r * np_, r < nr ? db + r * n : db, r < nr ? n : 0, np_);
        FN(pad)(dwrcol + r * np_, wr, 0, np_);
    }
    for (i = 0; i < n; i++) {
        const T_ *Li = L + i * n;
        const T_ *src = zrow;
        T_ *dLi = dL + i * n;
        for (g = ng - 1; g >= 0; g--) {
            const T_ *wrg = wrpad + 4 * g * np_, *dbg = dbpad + 4 * g * np_;
            T_ *dwrg = dwrcol + 4 * g * np_;
            int final = g == 0;
            T_ *dst = final ? dLi : grow;
            for (k = 0; k < 4; k++) {
                r = 4 * g + k;
                as[k] = FN(v_splat)(r < nr ? df[r * n + i] : (T_)0);
                cs[k] = FN(v_splat)(r < nr ? wr[r * n + i] : (T_)0);
                accr[k] = FN(v_splat)(0);
            }
            for (j = 0; j < nfull; j += V_)
                FN(tbwd_chunk)(Li, src, dst, wrg, dbg, dwrg, np_, j, as, cs, accr, final, V_,
                               nt);
            if (rem)
                FN(tbwd_chunk)(Li, src, dst, wrg, dbg, dwrg, np_, nfull, as, cs, accr, final, rem,
                               nt);
            for (k = 0; k < 4 && 4 * g + k < nr; k++)
                dwr[(4 * g + k) * n + i] = FN(v_hsum)(accr[k]);
            src = grow;
        }
    }
    FN(bwd_finish)(dwr, dwrcol, n, nr, np_, scratch, nt);
    return 0;
}
