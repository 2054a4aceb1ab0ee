/*
 * dmem: the loops of the DNC usage update (one batch row at a time), used by
 * dmem/_kernels/allocation.pyx (usage, and through allocation.pxd the fused
 * write weighting of the DNC step):
 *
 *     u    = v psi,   v = u_prev + w - u_prev w,   psi = prod_r q_r,
 *     q_r  = 1 - f_r wr_r
 *     du_prev = g psi (1 - w),   dw = g psi (1 - u_prev),
 *     dq_r = g v prod_{r' != r} q_r',   dwr_r = -f_r dq_r,   df_r = -sum_n wr_r dq_r
 *
 * How: the slots in vectors (16, 32 or 64 bytes: simd.h), every read head of a
 * vector of slots in registers; the product over the other heads is prefix x
 * suffix (no division by q_r, which can be 0); dq_r waits in dwr_r, and a pass
 * per head forms df_r (one vector accumulator, its lanes added in a fixed
 * order) and dwr_r.  Results depend on the instruction set, never on the
 * thread count.  No output may overlap an input; dwr is
 * scratch before it is written.
 */

#ifndef DMEM_ALLOCATION_SIMD_H
#define DMEM_ALLOCATION_SIMD_H

#include "simd.h"

#define DMEM_SIMD_IMPL "allocation_simd_impl.h"
#include "simd_levels.h"

/* The level in force (simd.h): 2 AVX-512, 1 AVX2/FMA, 0 the baseline. */
static int dmem_allocation_simd = 0;

static int dmem_allocation_simd_supported(void) { return dmem_simd_supported(); }

static int dmem_allocation_set_simd(int level)
{
    dmem_allocation_simd = dmem_simd_level(level);
    return dmem_allocation_simd;
}

static int dmem_allocation_get_simd(void) { return dmem_allocation_simd; }

#define DMEM_USAGE_CALL(name, suffix, args) \
    DMEM_SIMD_CALL(dmem_allocation_simd, name, suffix, args)

static void dmem_usage_forward_d(const double *up, const double *wp, const double *wr,
                                 const double *f, double *out, Py_ssize_t n, Py_ssize_t nr)
{
    DMEM_USAGE_CALL(usage_forward, d, (up, wp, wr, f, out, n, nr));
}

static void dmem_usage_forward_f(const float *up, const float *wp, const float *wr,
                                 const float *f, float *out, Py_ssize_t n, Py_ssize_t nr)
{
    DMEM_USAGE_CALL(usage_forward, f, (up, wp, wr, f, out, n, nr));
}

static void dmem_usage_backward_d(const double *up, const double *wp, const double *wr,
                                  const double *f, const double *g, double *du, double *dw,
                                  double *dwr, double *df, Py_ssize_t n, Py_ssize_t nr)
{
    DMEM_USAGE_CALL(usage_backward, d, (up, wp, wr, f, g, du, dw, dwr, df, n, nr));
}

static void dmem_usage_backward_f(const float *up, const float *wp, const float *wr,
                                  const float *f, const float *g, float *du, float *dw,
                                  float *dwr, float *df, Py_ssize_t n, Py_ssize_t nr)
{
    DMEM_USAGE_CALL(usage_backward, f, (up, wp, wr, f, g, du, dw, dwr, df, n, nr));
}

#endif /* DMEM_ALLOCATION_SIMD_H */
