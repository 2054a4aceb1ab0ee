/*
 * Body of the usage loops of allocation_simd.h, compiled by simd_levels.h once
 * per dtype and instruction set (parameters and helpers: simd_begin.h).
 * Not meant to be included on its own.
 */

/* One chunk (lanes j .. j+m-1) of the usage forward: out = v psi. */
DMEM_INLINE DMEM_ATTR void FN(usage_chunk)(const T_ *up, const T_ *wp, const T_ *wr,
                                            const T_ *f, T_ *out, Py_ssize_t n,
                                            Py_ssize_t nr, Py_ssize_t j, Py_ssize_t m)
{
    VT_ u = FN(v_load)(up + j, m), w = FN(v_load)(wp + j, m);
    VT_ psi = FN(v_splat)(1);
    Py_ssize_t r;
    for (r = 0; r < nr; r++)
        psi = psi * (1 - FN(v_splat)(f[r]) * FN(v_load)(wr + r * n + j, m));
    FN(v_store)(out + j, (u + w - u * w) * psi, m);
}

static DMEM_ATTR void FN(usage_forward)(const T_ *up, const T_ *wp, const T_ *wr,
                                        const T_ *f, T_ *out, Py_ssize_t n, Py_ssize_t nr)
{
    Py_ssize_t j, nfull = n / V_ * V_;
    for (j = 0; j < nfull; j += V_)
        FN(usage_chunk)(up, wp, wr, f, out, n, nr, j, V_);
    if (nfull < n)
        FN(usage_chunk)(up, wp, wr, f, out, n, nr, nfull, n - nfull);
}

/*
 * One chunk of the usage backward.  Up the heads, q_r = 1 - f_r wr_r and the
 * prefix products P_r = prod_{r' < r} q_r' (kept at pre + r ps); down the
 * heads, the suffix S_r = prod_{r' > r} q_r' and dq_r = g v P_r S_r, left in
 * dwr_r for FN(usage_bwd_head).
 */
DMEM_INLINE DMEM_ATTR void FN(usage_bwd_chunk)(const T_ *up, const T_ *wp, const T_ *wr,
                                                const T_ *f, const T_ *gp, T_ *du, T_ *dw,
                                                T_ *dwr, T_ *pre, Py_ssize_t ps, Py_ssize_t n,
                                                Py_ssize_t nr, Py_ssize_t j, Py_ssize_t m)
{
    VT_ u = FN(v_load)(up + j, m), w = FN(v_load)(wp + j, m), g = FN(v_load)(gp + j, m);
    VT_ gv = g * (u + w - u * w), p = FN(v_splat)(1), suf = FN(v_splat)(1);
    Py_ssize_t r;
    for (r = 0; r < nr; r++) {
        FN(v_store)(pre + r * ps, p, m);
        p = p * (1 - FN(v_splat)(f[r]) * FN(v_load)(wr + r * n + j, m));
    }
    /* p is psi now */
    FN(v_store)(du + j, g * p * (1 - w), m);
    FN(v_store)(dw + j, g * p * (1 - u), m);
    for (r = nr - 1; r >= 0; r--) {
        VT_ x = FN(v_load)(wr + r * n + j, m);
        FN(v_store)(dwr + r * n + j, gv * (FN(v_load)(pre + r * ps, m) * suf), m);
        suf = suf * (1 - FN(v_splat)(f[r]) * x);
    }
}

/* Head r, from dq_r in dwr_r: df_r = -sum_n wr_r dq_r and dwr_r = -f_r dq_r.
 * Four vector accumulators (vectors 4k, 4k+1, ... of the row; their latency
 * chains overlap), added in a fixed order with the lanes at the end. */
DMEM_INLINE DMEM_ATTR T_ FN(usage_bwd_head)(const T_ *wr, T_ f, T_ *dwr, Py_ssize_t n)
{
    VT_ acc[4], mf = FN(v_splat)(-f), dq;
    Py_ssize_t j, k, nfull = n / V_ * V_, n4 = n / (4 * V_) * (4 * V_);
    for (k = 0; k < 4; k++)
        acc[k] = FN(v_splat)(0);
    for (j = 0; j < n4; j += 4 * V_)
        for (k = 0; k < 4; k++) {
            dq = LD_(dwr + j + k * V_);
            acc[k] += LD_(wr + j + k * V_) * dq;
            ST_(dwr + j + k * V_, mf * dq);
        }
    for (j = n4; j < nfull; j += V_) {
        dq = LD_(dwr + j);
        acc[0] += LD_(wr + j) * dq;
        ST_(dwr + j, mf * dq);
    }
    if (nfull < n) {
        dq = FN(v_load)(dwr + nfull, n - nfull);
        acc[1] += FN(v_load)(wr + nfull, n - nfull) * dq;
        FN(v_store)(dwr + nfull, mf * dq, n - nfull);
    }
    return -FN(v_hsum)((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

/* The prefix products of up to this many heads stay in a buffer on the stack;
 * more heads keep them in dwr (whose rows, n apart, can alias in the CPU's
 * store-to-load checks: 4 KiB apart at n = 512 and 1024). */
#ifndef DMEM_USAGE_STACK_HEADS
#define DMEM_USAGE_STACK_HEADS 16
#endif

static DMEM_ATTR void FN(usage_backward)(const T_ *up, const T_ *wp, const T_ *wr,
                                         const T_ *f, const T_ *g, T_ *du, T_ *dw, T_ *dwr,
                                         T_ *df, Py_ssize_t n, Py_ssize_t nr)
{
    T_ stack[DMEM_USAGE_STACK_HEADS * V_];
    T_ *pre = nr <= DMEM_USAGE_STACK_HEADS ? stack : dwr;
    Py_ssize_t j, r, ps = nr <= DMEM_USAGE_STACK_HEADS ? V_ : n, nfull = n / V_ * V_;
    for (j = 0; j < nfull; j += V_)
        FN(usage_bwd_chunk)(up, wp, wr, f, g, du, dw, dwr, pre == stack ? pre : pre + j, ps, n,
                            nr, j, V_);
    if (nfull < n)
        FN(usage_bwd_chunk)(up, wp, wr, f, g, du, dw, dwr, pre == stack ? pre : pre + nfull, ps,
                            n, nr, nfull, n - nfull);
    for (r = 0; r < nr; r++)
        df[r] = FN(usage_bwd_head)(wr + r * n, f[r], dwr + r * n, n);
}
