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
 * Runtime dispatch: on x86 with GCC or clang every function is compiled three
 * times, for the baseline ISA of the build (SSE2 on x86-64), with
 * __attribute__((target("avx2,fma"))) and with AVX-512 F/VL/DQ;
 * dmem_linkage_set_simd() picks the widest the CPU (and OS) support, or a
 * lower level asked for.  No -march flag is needed and the extension runs on
 * any x86-64.  The versions round differently (FMA, lanes of the reductions),
 * each deterministically.  Elsewhere (aarch64: NEON) one version, for the
 * baseline ISA.  Compilers without vector extensions get scalar loops.
 *
 * In place: the forward may write L over Lp, and the backward dLp over dL (the
 * same array, row for row): each chunk of the input row is read before the same
 * chunk of the output row is written, and nothing else reads that input.  No
 * other output may overlap an input.  NULL stands for a zero Lp or dL, and, in
 * the backward, for a dLp that is not wanted (not stored).
 */

#ifndef DMEM_LINKAGE_SIMD_H
#define DMEM_LINKAGE_SIMD_H

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__)
#define DMEM_LINK_VECTORS 1
#define DMEM_RESTRICT __restrict__
#define DMEM_INLINE static inline __attribute__((always_inline))
#define DMEM_MAYBE_UNUSED __attribute__((unused))
#else
#define DMEM_LINK_VECTORS 0
#define DMEM_RESTRICT
#define DMEM_INLINE static inline
#define DMEM_MAYBE_UNUSED
#endif

#if DMEM_LINK_VECTORS && (defined(__x86_64__) || defined(__i386__)) && !defined(DMEM_NO_SIMD_DISPATCH)
#define DMEM_LINK_DISPATCH 1
#else
#define DMEM_LINK_DISPATCH 0
#endif

/* Non-temporal stores of the outputs of very large link matrices (x86). */
#if DMEM_LINK_VECTORS && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#define DMEM_LINK_STREAM 1
#include <immintrin.h>
#else
#define DMEM_LINK_STREAM 0
#endif

#if DMEM_LINK_VECTORS
/* 16-byte vectors for the baseline ISA (SSE2, NEON), 32-byte ones for AVX2,
 * 64-byte ones for AVX-512. */
typedef double dmem_vd2 __attribute__((vector_size(16)));
typedef double dmem_vd2_u __attribute__((vector_size(16), aligned(sizeof(double)), may_alias));
typedef double dmem_vd4 __attribute__((vector_size(32)));
typedef double dmem_vd4_u __attribute__((vector_size(32), aligned(sizeof(double)), may_alias));
typedef double dmem_vd8 __attribute__((vector_size(64)));
typedef double dmem_vd8_u __attribute__((vector_size(64), aligned(sizeof(double)), may_alias));
typedef float dmem_vf4 __attribute__((vector_size(16)));
typedef float dmem_vf4_u __attribute__((vector_size(16), aligned(sizeof(float)), may_alias));
typedef float dmem_vf8 __attribute__((vector_size(32)));
typedef float dmem_vf8_u __attribute__((vector_size(32), aligned(sizeof(float)), may_alias));
typedef float dmem_vf16 __attribute__((vector_size(64)));
typedef float dmem_vf16_u __attribute__((vector_size(64), aligned(sizeof(float)), may_alias));
#endif

/* Each block below defines the parameters of linkage_simd_impl.h for one
 * (dtype, instruction set) and includes it; the impl undefines them. */

/* ---- double, baseline ---- */
#define DMEM_T double
#define DMEM_T_SIZE 8
#define DMEM_STREAM128(p, v) _mm_stream_pd((p), (__m128d)(v))
#define DMEM_SUFFIX d
#define DMEM_ATTR
#define DMEM_ISA base
#if DMEM_LINK_VECTORS
#define DMEM_V 2
#define DMEM_VT dmem_vd2
#define DMEM_VTU dmem_vd2_u
#else
#define DMEM_V 1
#endif
#include "linkage_simd_impl.h"

/* ---- float, baseline ---- */
#define DMEM_T float
#define DMEM_T_SIZE 4
#define DMEM_STREAM128(p, v) _mm_stream_ps((p), (__m128)(v))
#define DMEM_SUFFIX f
#define DMEM_ATTR
#define DMEM_ISA base
#if DMEM_LINK_VECTORS
#define DMEM_V 4
#define DMEM_VT dmem_vf4
#define DMEM_VTU dmem_vf4_u
#else
#define DMEM_V 1
#endif
#include "linkage_simd_impl.h"

#if DMEM_LINK_DISPATCH
/* ---- double, AVX2 + FMA ---- */
#define DMEM_T double
#define DMEM_T_SIZE 8
#define DMEM_STREAM256(p, v) _mm256_stream_pd((p), (__m256d)(v))
#define DMEM_STREAM128_HALVES(p, v)                                        \
    (_mm_stream_pd((p), _mm256_castpd256_pd128((__m256d)(v))),             \
     _mm_stream_pd((p) + 2, _mm256_extractf128_pd((__m256d)(v), 1)))
#define DMEM_SUFFIX d
#define DMEM_ATTR __attribute__((target("avx2,fma")))
#define DMEM_ISA avx2
#define DMEM_V 4
#define DMEM_VT dmem_vd4
#define DMEM_VTU dmem_vd4_u
#include "linkage_simd_impl.h"

/* ---- float, AVX2 + FMA ---- */
#define DMEM_T float
#define DMEM_T_SIZE 4
#define DMEM_STREAM256(p, v) _mm256_stream_ps((p), (__m256)(v))
#define DMEM_STREAM128_HALVES(p, v)                                        \
    (_mm_stream_ps((p), _mm256_castps256_ps128((__m256)(v))),              \
     _mm_stream_ps((p) + 4, _mm256_extractf128_ps((__m256)(v), 1)))
#define DMEM_SUFFIX f
#define DMEM_ATTR __attribute__((target("avx2,fma")))
#define DMEM_ISA avx2
#define DMEM_V 8
#define DMEM_VT dmem_vf8
#define DMEM_VTU dmem_vf8_u
#include "linkage_simd_impl.h"

/* ---- double, AVX-512 (F, VL, DQ) + FMA ---- */
#define DMEM_T double
#define DMEM_T_SIZE 8
#define DMEM_STREAM512(p, v) _mm512_stream_pd((p), (__m512d)(v))
#define DMEM_STREAM128_QUARTERS(p, v)                                      \
    (_mm_stream_pd((p), _mm512_extractf64x2_pd((__m512d)(v), 0)),          \
     _mm_stream_pd((p) + 2, _mm512_extractf64x2_pd((__m512d)(v), 1)),      \
     _mm_stream_pd((p) + 4, _mm512_extractf64x2_pd((__m512d)(v), 2)),      \
     _mm_stream_pd((p) + 6, _mm512_extractf64x2_pd((__m512d)(v), 3)))
#define DMEM_SUFFIX d
#define DMEM_ATTR __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#define DMEM_ISA avx512
#define DMEM_V 8
#define DMEM_VT dmem_vd8
#define DMEM_VTU dmem_vd8_u
#include "linkage_simd_impl.h"

/* ---- float, AVX-512 (F, VL, DQ) + FMA ---- */
#define DMEM_T float
#define DMEM_T_SIZE 4
#define DMEM_STREAM512(p, v) _mm512_stream_ps((p), (__m512)(v))
#define DMEM_STREAM128_QUARTERS(p, v)                                      \
    (_mm_stream_ps((p), _mm512_extractf32x4_ps((__m512)(v), 0)),           \
     _mm_stream_ps((p) + 4, _mm512_extractf32x4_ps((__m512)(v), 1)),       \
     _mm_stream_ps((p) + 8, _mm512_extractf32x4_ps((__m512)(v), 2)),       \
     _mm_stream_ps((p) + 12, _mm512_extractf32x4_ps((__m512)(v), 3)))
#define DMEM_SUFFIX f
#define DMEM_ATTR __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))
#define DMEM_ISA avx512
#define DMEM_V 16
#define DMEM_VT dmem_vf16
#define DMEM_VTU dmem_vf16_u
#include "linkage_simd_impl.h"
#endif

/* ---- dispatch ---- */

/* 2 when the AVX-512 versions run, 1 for AVX2/FMA, 0 for the baseline. */
static int dmem_link_simd = 0;

/* The best level this CPU supports: 2 (AVX-512 F/VL/DQ, AVX2 and FMA), 1
 * (AVX2 and FMA) or 0. */
static int dmem_linkage_simd_supported(void)
{
#if DMEM_LINK_DISPATCH
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("avx512dq"))
        return 2;
    return 1;
#else
    return 0;
#endif
}

/* Select the versions to run: the level asked for (0, 1 or 2), or the best
 * supported one below it.  Returns the level in force. */
static int dmem_linkage_set_simd(int level)
{
    int best = dmem_linkage_simd_supported();
    dmem_link_simd = level < 0 ? 0 : (level > best ? best : level);
    return dmem_link_simd;
}

static int dmem_linkage_get_simd(void) { return dmem_link_simd; }

#if DMEM_LINK_DISPATCH
#define DMEM_DISPATCH(name, suffix, args)                                       \
    (dmem_link_simd == 2 ? dmem_##name##_##suffix##_avx512 args                 \
     : dmem_link_simd == 1 ? dmem_##name##_##suffix##_avx2 args                 \
     : dmem_##name##_##suffix##_base args)
#else
#define DMEM_DISPATCH(name, suffix, args) (dmem_##name##_##suffix##_base args)
#endif

/* link_step forward of one batch row: L (n x n) from Lp (NULL: zero; may be L
 * itself), and, when nr > 0, f = L wr, bw = L^T wr (nr x n).  nt: store L with
 * non-temporal stores (for matrices too large to stay in cache).  Returns -1
 * when out of memory, else 0. */
static int dmem_link_forward_d(const double *lp, const double *pp, const double *w,
                               const double *wr, double *L, double *f, double *bw,
                               Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_DISPATCH(link_forward, d, (lp, pp, w, wr, L, f, bw, n, nr, nt));
}

static int dmem_link_forward_f(const float *lp, const float *pp, const float *w,
                               const float *wr, float *L, float *f, float *bw,
                               Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_DISPATCH(link_forward, f, (lp, pp, w, wr, L, f, bw, n, nr, nt));
}

/* link_step backward of one batch row, without the precedence: dLp (may be dL
 * itself; NULL: not stored), dw, dpp and, when nr > 0, dwr.  Lp and dL may be
 * NULL (zero).  nt: store dLp with non-temporal stores.  Returns -1 when out of
 * memory, else 0. */
static int dmem_link_backward_d(const double *lp, const double *pp, const double *w,
                                const double *wr, const double *dL, const double *df,
                                const double *db, double *dlp, double *dw, double *dpp,
                                double *dwr, Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_DISPATCH(link_backward, d, (lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n, nr, nt));
}

static int dmem_link_backward_f(const float *lp, const float *pp, const float *w,
                                const float *wr, const float *dL, const float *df,
                                const float *db, float *dlp, float *dw, float *dpp,
                                float *dwr, Py_ssize_t n, Py_ssize_t nr, int nt)
{
    return DMEM_DISPATCH(link_backward, f, (lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n, nr, nt));
}

/* (The temporal_weights wrappers are marked unused: dnc_step includes this
 * header for the link loops only.)
 *
 * temporal_weights forward of one batch row: f = L wr, bw = L^T wr (nr x n)
 * for any L (n x n).  Returns -1 when out of memory, else 0. */
static DMEM_MAYBE_UNUSED int dmem_temporal_forward_d(const double *L, const double *wr,
                                                     double *f, double *bw, Py_ssize_t n,
                                                     Py_ssize_t nr)
{
    return DMEM_DISPATCH(temporal_forward, d, (L, wr, f, bw, n, nr));
}

static DMEM_MAYBE_UNUSED int dmem_temporal_forward_f(const float *L, const float *wr, float *f,
                                                     float *bw, Py_ssize_t n, Py_ssize_t nr)
{
    return DMEM_DISPATCH(temporal_forward, f, (L, wr, f, bw, n, nr));
}

/* temporal_weights backward of one batch row: dL (n x n, no diagonal zeroing)
 * and dwr (nr x n) from the cotangents df, db of f and bw.  No output may
 * overlap an input.  nt: store dL with non-temporal stores.  Returns -1 when
 * out of memory, else 0. */
static DMEM_MAYBE_UNUSED int dmem_temporal_backward_d(const double *L, const double *wr,
                                                      const double *df, const double *db,
                                                      double *dL, double *dwr, Py_ssize_t n,
                                                      Py_ssize_t nr, int nt)
{
    return DMEM_DISPATCH(temporal_backward, d, (L, wr, df, db, dL, dwr, n, nr, nt));
}

static DMEM_MAYBE_UNUSED int dmem_temporal_backward_f(const float *L, const float *wr,
                                                      const float *df, const float *db,
                                                      float *dL, float *dwr, Py_ssize_t n,
                                                      Py_ssize_t nr, int nt)
{
    return DMEM_DISPATCH(temporal_backward, f, (L, wr, df, db, dL, dwr, n, nr, nt));
}

#endif /* DMEM_LINKAGE_SIMD_H */
