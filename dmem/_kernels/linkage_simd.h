/*
 * dmem: the hot loops of the DNC temporal link (link_step and temporal_weights
 * forward and backward, one batch row at a time), used by dmem/_kernels/linkage.pyx.
 *
 * Equations (DNC Methods; docs in linkage.pyx):
 *
 *     L_ij  = (1 - w_i - w_j) Lp_ij + w_i p_j,   L_ii = 0
 *     f_r,i = sum_j L_ij wr_r,j          b_r,j = sum_i L_ij wr_r,i
 *
 *     G_ij  = dL_ij + sum_r (df_r,i wr_r,j + wr_r,i db_r,j)       (i != j)
 *     dLp_ij = (1 - w_i - w_j) G_ij,    dLp_ii = 0
 *     dw_i  = sum_j G_ij (p_j - Lp_ij) - sum_k G_ki Lp_ki
 *     dp_j  = sum_i G_ij w_i
 *     dwr_r = L^T df_r + L db_r
 *
 * temporal_weights alone takes L as given (any values, diagonal included):
 * the same f, b and dwr, and dL_ij = sum_r (df_r,i wr_r,j + wr_r,i db_r,j)
 * for every i, j (no diagonal zeroing).
 *
 * How: one row i of the link matrix at a time, in chunks of one vector
 * along j (16 bytes in the baseline version, 32 in the AVX2 one, 64 in the
 * AVX-512 one), with GCC/clang vector extensions.  Per-j vectors (w, p, the read weightings, db) are copied once
 * per batch row into zero-padded scratch rows whose length is a multiple of
 * the vector width, so that only the rows of the link matrices need a partial
 * last chunk.  Read heads are handled four per pass (zero heads pad the last
 * group), so a row of L or G is formed once and used for four heads while it
 * is in registers.  Row reductions (f_r,i, the row part of dw_i and dwr_r,i)
 * are vector accumulators summed in a fixed lane order at the end of the row:
 * results do not depend on the thread count (a batch row is one thread's work).
 * The diagonal entry is zeroed in its chunk (one lane), never corrected after.
 *
 * Runtime dispatch (simd.h): on x86 with GCC or clang every function is
 * compiled for the baseline ISA of the build (SSE2 on x86-64), AVX2 + FMA and
 * AVX-512; dmem_linkage_set_simd() selects the versions, never above what the
 * CPU supports, and linkage.pyx asks for the widest at import.  The versions
 * round differently (FMA, lanes of the reductions), each deterministically.
 * Non-temporal stores (nt) are x86 only.
 *
 * In place: the forward may write L over Lp, and the backward dLp over dL (the
 * same array, row for row): each chunk of the input row is read before the same
 * chunk of the output row is written, and nothing else reads that input.  No
 * other output may overlap an input.  NULL stands for a zero Lp or dL, and, in
 * the backward, for a dLp that is not wanted (not stored).
 */

#ifndef DMEM_LINKAGE_SIMD_H
#define DMEM_LINKAGE_SIMD_H

#include "simd.h"

#define DMEM_SIMD_IMPL "linkage_simd_impl.h"
#include "simd_levels.h"

/* ---- dispatch ---- */

/* The level in force (simd.h): 2 AVX-512, 1 AVX2/FMA, 0 the baseline.  Every
 * row function below takes the level to run as its first argument (the
 * callers pass this one, or a lower level for a call that streams from
 * memory), so that a call never changes level half way. */
static int dmem_link_simd = 0;

static int dmem_linkage_simd_supported(void) { return dmem_simd_supported(); }

/* Select the versions to run: the level asked for (0, 1 or 2), or the best
 * supported one below it.  Returns the level in force. */
static int dmem_linkage_set_simd(int level)
{
    dmem_link_simd = dmem_simd_level(level);
    return dmem_link_simd;
}

static int dmem_linkage_get_simd(void) { return dmem_link_simd; }

/* link_step forward of one batch row: L (n x n) from Lp (NULL: zero; may be L
 * itself), and, when nr > 0, f = L wr, bw = L^T wr (nr x n).  nt: store L with
 * non-temporal stores (for matrices too large to stay in cache).  Returns -1
 * when out of memory, else 0. */
static int dmem_link_forward_d(int level, const double *lp, const double *pp, const double *w,
                               const double *wr, double *L, double *f, double *bw,
                               Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_SIMD_CALL(level, link_forward, d, (lp, pp, w, wr, L, f, bw, n, nr, nt));
}

static int dmem_link_forward_f(int level, const float *lp, const float *pp, const float *w,
                               const float *wr, float *L, float *f, float *bw,
                               Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_SIMD_CALL(level, link_forward, f, (lp, pp, w, wr, L, f, bw, n, nr, nt));
}

/* link_step backward of one batch row, without the precedence: dLp (may be dL
 * itself; NULL: not stored), dw, dpp and, when nr > 0, dwr.  Lp and dL may be
 * NULL (zero).  nt: store dLp with non-temporal stores.  Returns -1 when out of
 * memory, else 0. */
static int dmem_link_backward_d(int level, const double *lp, const double *pp, const double *w,
                                const double *wr, const double *dL, const double *df,
                                const double *db, double *dlp, double *dw, double *dpp,
                                double *dwr, Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_SIMD_CALL(level, link_backward, d, (lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n, nr, nt));
}

static int dmem_link_backward_f(int level, const float *lp, const float *pp, const float *w,
                                const float *wr, const float *dL, const float *df,
                                const float *db, float *dlp, float *dw, float *dpp,
                                float *dwr, Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_SIMD_CALL(level, link_backward, f, (lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n, nr, nt));
}

/* (The temporal_weights wrappers are marked unused: dnc_step includes this
 * header for the link loops only.)
 *
 * temporal_weights forward of one batch row: f = L wr, bw = L^T wr (nr x n)
 * for any L (n x n).  Returns -1 when out of memory, else 0. */
static DMEM_MAYBE_UNUSED int dmem_temporal_forward_d(int level, const double *L, const double *wr,
                                                     double *f, double *bw, Py_ssize_t n,
                                                     Py_ssize_t nr)
{
    return DMEM_SIMD_CALL(level, temporal_forward, d, (L, wr, f, bw, n, nr));
}

static DMEM_MAYBE_UNUSED int dmem_temporal_forward_f(int level, const float *L, const float *wr, float *f,
                                                     float *bw, Py_ssize_t n, Py_ssize_t nr)
{
    return DMEM_SIMD_CALL(level, temporal_forward, f, (L, wr, f, bw, n, nr));
}

/* temporal_weights backward of one batch row: dL (n x n, no diagonal zeroing)
 * and dwr (nr x n) from the cotangents df, db of f and bw.  No output may
 * overlap an input.  nt: store dL with non-temporal stores.  Returns -1 when
 * out of memory, else 0. */
static DMEM_MAYBE_UNUSED int dmem_temporal_backward_d(int level, const double *L, const double *wr,
                                                      const double *df, const double *db,
                                                      double *dL, double *dwr, Py_ssize_t n,
                                                      Py_ssize_t nr, int nt)
{
    return DMEM_SIMD_CALL(level, temporal_backward, d, (L, wr, df, db, dL, dwr, n, nr, nt));
}

static DMEM_MAYBE_UNUSED int dmem_temporal_backward_f(int level, const float *L, const float *wr,
                                                      const float *df, const float *db,
                                                      float *dL, float *dwr, Py_ssize_t n,
                                                      Py_ssize_t nr, int nt)
{
    return DMEM_SIMD_CALL(level, temporal_backward, f, (L, wr, df, db, dL, dwr, n, nr, nt));
}

#endif /* DMEM_LINKAGE_SIMD_H */
