/*
 * dmem: the hot loops of NTM addressing, one head of one batch row at a time,
 * used by dmem/_kernels/addressing.pyx (content_weights, shift, sharpen,
 * ntm_address; through addressing.pxd also the fused NTM and DNC steps): the
 * content weighting's passes over memory and its softmax, the sharpening's
 * logarithm and softmax, the circular shift, and their backward passes.
 *
 * Equations (NTM eq. 5-6, DNC Methods; docs in addressing.pyx), with the
 * ε-norms |k| = √(k·k + ε), |M_i| = √(M_i·M_i + ε), ε = 1e-6:
 *
 *     c_i = k·M_i / (|k| |M_i|),        w = softmax(β c)
 *
 *     backward, from dL/dw and the saved w, c, |M_i|, |k|:
 *     gz_i = w_i (g_i - Σ_j w_j g_j),   dL/dβ = Σ_i gz_i c_i,   gc_i = β gz_i
 *     dL/dk   = Σ_i gc_i M_i / (|k||M_i|) - (Σ_i gc_i c_i) k / |k|²
 *     dL/dM_i = gc_i k / (|k||M_i|) - gc_i c_i M_i / |M_i|²
 *
 * How: memory rows four at a time, one vector of the word at a time (16 bytes
 * in the baseline version, 32 in the AVX2 one, 64 in the AVX-512 one), with
 * GCC/clang vector extensions; float inputs are widened to double on load, so every sum runs in
 * double whatever the dtype.  A row's dot products are one vector accumulator
 * per row, over the word in order, summed over the lanes in a fixed order at
 * the end, the same in a group of four and alone: a row's value does not
 * depend on its position.  The square roots and divisions of a group of four
 * rows follow its dot products (they overlap the next group's).  In the
 * backward, one pass over memory forms dL/dM_i and accumulates dL/dk (for
 * every head at once when a batch row has several).  exp and log are the
 * vectorisable ones of addressing.pxd (_exp_nonpositive, _log_normal), written
 * again here on vectors.  Sums over slots use vector accumulators whose lanes
 * are added in a fixed order: results depend on the instruction set, never
 * on the thread count.
 *
 * Runtime dispatch (levels of simd.h): on x86 with GCC or clang every
 * function is compiled three times, for the build's baseline ISA (SSE2 on
 * x86-64), with __attribute__((target("avx2,fma"))) and with AVX-512 F/VL/DQ
 * as well (64-byte vectors; the last w % 8 values of a memory row go through
 * masked loads and stores).  dmem_addressing_set_simd(level) selects the
 * versions, never above what the CPU supports; addressing.pyx asks for the
 * widest at import.  The versions round differently (FMA, lane counts), each
 * deterministically.  Compilers without vector extensions get scalar loops.
 *
 * The file includes itself once per (dtype, instruction set), with
 * DMEM_CW_BODY defined, for the bodies of the functions; each instruction
 * set's pair of dtypes goes through addressing_simd_level.h.
 */

#ifndef DMEM_CW_BODY

#ifndef DMEM_ADDRESSING_SIMD_H
#define DMEM_ADDRESSING_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#if defined(__GNUC__)
#define DMEM_CW_VECTORS 1
#define DMEM_CW_INLINE static inline __attribute__((always_inline))
#else
#define DMEM_CW_VECTORS 0
#define DMEM_CW_INLINE static inline
#endif

#include "simd.h"

/* Levels 1 and 2 are compiled where simd.h dispatches to them. */
#define DMEM_CW_DISPATCH DMEM_SIMD_DISPATCH

#if DMEM_CW_VECTORS && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#include <immintrin.h>
#define DMEM_CW_X86 1
#else
#define DMEM_CW_X86 0
#endif

#define DMEM_CW_EPSILON 1e-6

#if DMEM_CW_VECTORS
typedef double dmem_cw_d2 __attribute__((vector_size(16)));
typedef double dmem_cw_d2u __attribute__((vector_size(16), aligned(sizeof(double)), may_alias));
typedef double dmem_cw_d4 __attribute__((vector_size(32)));
typedef double dmem_cw_d4u __attribute__((vector_size(32), aligned(sizeof(double)), may_alias));
typedef long long dmem_cw_i2 __attribute__((vector_size(16)));
typedef long long dmem_cw_i4 __attribute__((vector_size(32)));
typedef unsigned long long dmem_cw_u2 __attribute__((vector_size(16)));
typedef unsigned long long dmem_cw_u4 __attribute__((vector_size(32)));
typedef float dmem_cw_f2 __attribute__((vector_size(8)));
typedef float dmem_cw_f2u __attribute__((vector_size(8), aligned(sizeof(float)), may_alias));
typedef float dmem_cw_f4 __attribute__((vector_size(16)));
typedef float dmem_cw_f4u __attribute__((vector_size(16), aligned(sizeof(float)), may_alias));
typedef double dmem_cw_d8 __attribute__((vector_size(64)));
typedef double dmem_cw_d8u __attribute__((vector_size(64), aligned(sizeof(double)), may_alias));
typedef float dmem_cw_f8 __attribute__((vector_size(32)));
typedef float dmem_cw_f8u __attribute__((vector_size(32), aligned(sizeof(float)), may_alias));
typedef long long dmem_cw_i8 __attribute__((vector_size(64)));
typedef unsigned long long dmem_cw_u8 __attribute__((vector_size(64)));
#endif

/* ---- baseline ---- */
#define DMEM_CW_BODY 1
#define DMEM_CW_ATTR
#define DMEM_CW_ISA base
#if DMEM_CW_VECTORS
#define DMEM_CW_V 2
#define DMEM_CW_VT dmem_cw_d2
#define DMEM_CW_VTU dmem_cw_d2u
#define DMEM_CW_FVTU dmem_cw_f2u
#define DMEM_CW_FVT dmem_cw_f2
#define DMEM_CW_VI dmem_cw_i2
#define DMEM_CW_VU dmem_cw_u2
#if DMEM_CW_X86
#define DMEM_CW_SQRT(v) ((dmem_cw_d2)_mm_sqrt_pd((__m128d)(v)))
#endif
#else
#define DMEM_CW_V 1
#define DMEM_CW_VTU double
#endif
#include "addressing_simd_level.h"

#if DMEM_CW_DISPATCH
/* ---- AVX2 + FMA ---- */
#define DMEM_CW_ATTR DMEM_ATTR_AVX2
#define DMEM_CW_ISA avx2
#define DMEM_CW_V 4
#define DMEM_CW_VT dmem_cw_d4
#define DMEM_CW_VTU dmem_cw_d4u
#define DMEM_CW_FVTU dmem_cw_f4u
#define DMEM_CW_FVT dmem_cw_f4
#define DMEM_CW_VI dmem_cw_i4
#define DMEM_CW_VU dmem_cw_u4
#define DMEM_CW_SQRT(v) ((dmem_cw_d4)_mm256_sqrt_pd((__m256d)(v)))
#include "addressing_simd_level.h"

/* ---- AVX-512 (F, VL, DQ) + FMA: 64-byte vectors, masked loads and stores
 * for the last values of a row ---- */
#define DMEM_CW_ATTR DMEM_ATTR_AVX512
#define DMEM_CW_ISA avx512
#define DMEM_CW_V 8
#define DMEM_CW_VT dmem_cw_d8
#define DMEM_CW_VTU dmem_cw_d8u
#define DMEM_CW_FVTU dmem_cw_f8u
#define DMEM_CW_FVT dmem_cw_f8
#define DMEM_CW_VI dmem_cw_i8
#define DMEM_CW_VU dmem_cw_u8
#define DMEM_CW_MASKED 1
#define DMEM_CW_SQRT(v) ((dmem_cw_d8)_mm512_sqrt_pd((__m512d)(v)))
#include "addressing_simd_level.h"
#endif
#undef DMEM_CW_BODY

/* ---- dispatch ---- */

/* The level in force (simd.h): 2 AVX-512, 1 AVX2/FMA, 0 the baseline. */
static int dmem_addressing_simd = 0;

static int dmem_addressing_simd_supported(void) { return dmem_simd_supported(); }

static int dmem_addressing_set_simd(int level)
{
    dmem_addressing_simd = dmem_simd_level(level);
    return dmem_addressing_simd;
}

static int dmem_addressing_get_simd(void) { return dmem_addressing_simd; }

#define DMEM_CW_CALL(name, suffix, args) \
    DMEM_SIMD_CALL(dmem_addressing_simd, cw_##name, suffix, args)

/* Forward of one head: the similarities c_i into `cosines` and the weighting
 * softmax(β c) into `z` (double, N).  When `first`, the norms
 * |M_i| are computed into `norms` (double, N); otherwise they are read from
 * it.  Returns |k|. */
static double dmem_content_forward_d(const double *memory, double *norms, int first,
                                     const double *key, double strength, double *cosines,
                                     double *z, Py_ssize_t n, Py_ssize_t w)
{
    return DMEM_CW_CALL(forward, d, (memory, norms, first, key, strength, cosines, z, n, w));
}

static double dmem_content_forward_f(const float *memory, double *norms, int first,
                                     const float *key, double strength, float *cosines,
                                     double *z, Py_ssize_t n, Py_ssize_t w)
{
    return DMEM_CW_CALL(forward, f, (memory, norms, first, key, strength, cosines, z, n, w));
}

/* Backward of one head from dL/dw (`grad`, double, N) and the saved weighting,
 * similarities and norms: writes (`first`) or adds to dL/dM (n x w), writes
 * dL/dk (w), returns dL/dβ.  `row_key`, `row_memory` (n) and `acc` (w) are
 * double scratch. */
static double dmem_content_backward_d(const double *memory, const double *memory_norms,
                                      const double *key, double key_norm, double strength,
                                      const double *cosines, const double *weights,
                                      const double *grad, int first, double *grad_memory,
                                      double *grad_key, double *row_key, double *row_memory,
                                      double *acc, Py_ssize_t n, Py_ssize_t w)
{
    return DMEM_CW_CALL(backward, d, (memory, memory_norms, key, key_norm, strength, cosines,
                                      weights, grad, first, grad_memory, grad_key, row_key,
                                      row_memory, acc, n, w));
}

static double dmem_content_backward_f(const float *memory, const float *memory_norms,
                                      const float *key, double key_norm, double strength,
                                      const float *cosines, const float *weights,
                                      const double *grad, int first, float *grad_memory,
                                      float *grad_key, double *row_key, double *row_memory,
                                      double *acc, Py_ssize_t n, Py_ssize_t w)
{
    return DMEM_CW_CALL(backward, f, (memory, memory_norms, key, key_norm, strength, cosines,
                                      weights, grad, first, grad_memory, grad_key, row_key,
                                      row_memory, acc, n, w));
}

/* Sharpening of one head (double): log_weights = log(w + 1e-12), out =
 * softmax(γ log_weights).  The logarithm is the vectorised one when every
 * w_i + ε is a positive normal number, else libm's. */
static void dmem_sharpen_forward(const double *weights, double gamma, double *log_weights,
                                 double *out, Py_ssize_t n)
{
    DMEM_CW_CALL(sharpen_forward, d, (weights, gamma, log_weights, out, n));
}

/* Backward of all heads of a batch row (h >= 2), see FN(backward_heads), from
 * dL/dw in `grad` or, when NULL, in `grad_double`: returns -1 (nothing
 * written) when out of memory, else 0. */
static int dmem_content_backward_heads_d(const double *memory, const double *memory_norms,
                                         const double *keys, const double *key_norms,
                                         const double *strengths, const double *cosines,
                                         const double *weights, const double *grad,
                                         const double *grad_double,
                                         double *grad_memory, double *grad_keys,
                                         double *grad_strengths, Py_ssize_t h, Py_ssize_t n,
                                         Py_ssize_t w)
{
    return DMEM_CW_CALL(backward_heads, d, (memory, memory_norms, keys, key_norms, strengths,
                                            cosines, weights, grad, grad_double, grad_memory, grad_keys,
                                            grad_strengths, h, n, w));
}

static int dmem_content_backward_heads_f(const float *memory, const float *memory_norms,
                                         const float *keys, const float *key_norms,
                                         const float *strengths, const float *cosines,
                                         const float *weights, const float *grad,
                                         const double *grad_double,
                                         float *grad_memory, float *grad_keys,
                                         float *grad_strengths, Py_ssize_t h, Py_ssize_t n,
                                         Py_ssize_t w)
{
    return DMEM_CW_CALL(backward_heads, f, (memory, memory_norms, keys, key_norms, strengths,
                                            cosines, weights, grad, grad_double, grad_memory, grad_keys,
                                            grad_strengths, h, n, w));
}

/* Circular shift of one head (double), and its backward. */
static void dmem_shift_forward(const double *weights, const double *shifts, double *out,
                               Py_ssize_t n, Py_ssize_t S)
{
    DMEM_CW_CALL(shift_forward, d, (weights, shifts, out, n, S));
}

static void dmem_shift_backward(const double *weights, const double *shifts,
                                const double *grad_out, double *grad_weights,
                                double *grad_shifts, Py_ssize_t n, Py_ssize_t S)
{
    DMEM_CW_CALL(shift_backward, d, (weights, shifts, grad_out, grad_weights, grad_shifts, n, S));
}

/* Backward of the sharpening of one head from its output (double or float);
 * returns dL/dγ. */
static double dmem_sharpen_backward_d(const double *weights, const double *out,
                                      const double *log_weights, double gamma,
                                      const double *grad_out, double *grad_weights, Py_ssize_t n)
{
    return DMEM_CW_CALL(sharpen_backward, d, (weights, out, log_weights, gamma, grad_out,
                                              grad_weights, n));
}

static double dmem_sharpen_backward_f(const double *weights, const float *out,
                                      const double *log_weights, double gamma,
                                      const double *grad_out, double *grad_weights, Py_ssize_t n)
{
    return DMEM_CW_CALL(sharpen_backward, f, (weights, out, log_weights, gamma, grad_out,
                                              grad_weights, n));
}

#endif /* DMEM_ADDRESSING_SIMD_H */

#else /* DMEM_CW_BODY: the functions for one (dtype, instruction set) */

#define T_ DMEM_CW_T
#define V_ DMEM_CW_V
#define DMEM_CW_NAME__(name, suffix, isa) dmem_cw_##name##_##suffix##_##isa
#define DMEM_CW_NAME_(name, suffix, isa) DMEM_CW_NAME__(name, suffix, isa)
#define FN(name) DMEM_CW_NAME_(name, DMEM_CW_SUFFIX, DMEM_CW_ISA)

#if DMEM_CW_VECTORS
#define VT_ DMEM_CW_VT
#else
#define VT_ double
#endif

/* V_ consecutive values of T_ at p, widened to double. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(ld)(const T_ *p)
{
#if !DMEM_CW_VECTORS
    return (double)*p;
#else
    if (sizeof(T_) == sizeof(double))
        return *(const DMEM_CW_VTU *)(const void *)p;
    return __builtin_convertvector(*(const DMEM_CW_FVTU *)(const void *)p, VT_);
#endif
}

/* The first m (< V_) values at p, widened, zeros after. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(ld_part)(const T_ *p, Py_ssize_t m)
{
#if !DMEM_CW_VECTORS
    (void)m;
    return (double)*p;
#elif defined(DMEM_CW_MASKED)
    const __mmask8 mask = (__mmask8)((1u << m) - 1u);
    if (sizeof(T_) == sizeof(double))
        return (VT_)_mm512_maskz_loadu_pd(mask, (const void *)p);
    return (VT_)_mm512_cvtps_pd(_mm256_maskz_loadu_ps(mask, (const void *)p));
#else
    VT_ v;
    Py_ssize_t l;
    for (l = 0; l < V_; l++)
        v[l] = l < m ? (double)p[l] : 0.0;
    return v;
#endif
}

/* The first m (< V_) doubles at p, zeros after. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(ldd_part)(const double *p, Py_ssize_t m)
{
#if !DMEM_CW_VECTORS
    (void)m;
    return *p;
#elif defined(DMEM_CW_MASKED)
    return (VT_)_mm512_maskz_loadu_pd((__mmask8)((1u << m) - 1u), (const void *)p);
#else
    VT_ v;
    Py_ssize_t l;
    for (l = 0; l < V_; l++)
        v[l] = l < m ? p[l] : 0.0;
    return v;
#endif
}

/* Store the first m (< V_) lanes of v at p (doubles). */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(std_part)(double *p, VT_ v, Py_ssize_t m)
{
#if !DMEM_CW_VECTORS
    (void)m;
    *p = v;
#elif defined(DMEM_CW_MASKED)
    _mm512_mask_storeu_pd((void *)p, (__mmask8)((1u << m) - 1u), (__m512d)v);
#else
    Py_ssize_t l;
    for (l = 0; l < m; l++)
        p[l] = v[l];
#endif
}

/* Store v at p, narrowed to T_. */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(st)(T_ *p, VT_ v)
{
#if !DMEM_CW_VECTORS
    *p = (T_)v;
#else
    if (sizeof(T_) == sizeof(double))
        *(DMEM_CW_VTU *)(void *)p = v;
    else
        *(DMEM_CW_FVTU *)(void *)p = __builtin_convertvector(v, DMEM_CW_FVT);
#endif
}

/* Store the first m lanes of v at p, narrowed to T_. */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(st_part)(T_ *p, VT_ v, Py_ssize_t m)
{
#if !DMEM_CW_VECTORS
    (void)m;
    *p = (T_)v;
#elif defined(DMEM_CW_MASKED)
    const __mmask8 mask = (__mmask8)((1u << m) - 1u);
    if (sizeof(T_) == sizeof(double))
        _mm512_mask_storeu_pd((void *)p, mask, (__m512d)v);
    else
        _mm256_mask_storeu_ps((void *)p, mask, _mm512_cvtpd_ps((__m512d)v));
#else
    Py_ssize_t l;
    for (l = 0; l < m; l++)
        p[l] = (T_)v[l];
#endif
}

/* A vector of s. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(splat)(double s)
{
#if !DMEM_CW_VECTORS
    return s;
#elif DMEM_CW_V == 8 && defined(DMEM_CW_MASKED)
    return (VT_)_mm512_set1_pd(s);   /* the lane loop becomes eight inserts */
#else
    VT_ v;
    Py_ssize_t l;
    for (l = 0; l < V_; l++)
        v[l] = s;
    return v;
#endif
}

/* Sum of the lanes, pairwise in a fixed order. */
DMEM_CW_INLINE DMEM_CW_ATTR double FN(hsum)(VT_ v)
{
#if !DMEM_CW_VECTORS
    return v;
#elif DMEM_CW_V == 2
    return v[0] + v[1];
#elif DMEM_CW_V == 4
    return (v[0] + v[1]) + (v[2] + v[3]);
#else
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
#endif
}

/* Square roots, lane by lane. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(sqrt)(VT_ v)
{
#if !DMEM_CW_VECTORS
    return sqrt(v);
#elif defined(DMEM_CW_SQRT)
    return DMEM_CW_SQRT(v);
#else
    Py_ssize_t l;
    for (l = 0; l < V_; l++)
        v[l] = sqrt(v[l]);
    return v;
#endif
}

/* Σ_j a_j b_j over w values, one vector accumulator, lanes summed at the end. */
DMEM_CW_INLINE DMEM_CW_ATTR double FN(dot)(const T_ *a, const T_ *b, Py_ssize_t w)
{
    VT_ s = FN(splat)(0.0);
    Py_ssize_t j = 0;
    for (; j + V_ <= w; j += V_)
        s += FN(ld)(a + j) * FN(ld)(b + j);
    if (j < w)
        s += FN(ld_part)(a + j, w - j) * FN(ld_part)(b + j, w - j);
    return FN(hsum)(s);
}

/* dL/dM_i for one vector of the word: g = f k - t x, written or added. */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(grad_row)(T_ *g, VT_ k, VT_ x, VT_ f, VT_ t, int first)
{
    VT_ d = f * k - t * x;
    if (first)
        FN(st)(g, d);
    else
        FN(st)(g, FN(ld)(g) + d);
}

/* The same for the first m (< V_) lanes (masked stores). */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(grad_part)(T_ *g, VT_ k, VT_ x, VT_ f, VT_ t, int first,
                                               Py_ssize_t m)
{
    VT_ d = f * k - t * x;
    if (first)
        FN(st_part)(g, d, m);
    else
        FN(st_part)(g, FN(ld_part)(g, m) + d, m);
}

/* The same for one value (the last w % V_ of a row). */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(grad_one)(T_ *g, double k, double x, double f, double t,
                                              int first)
{
    double d = f * k - t * x;
    if (first)
        *g = (T_)d;
    else
        *g = (T_)(*g + d);
}

/* The sums of the lanes of four vectors into out[0..3], each as FN(hsum)
 * forms it (the same additions in the same order), with shuffles. */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(hsum4)(VT_ a, VT_ b, VT_ c, VT_ d, double *out)
{
#if DMEM_CW_VECTORS && DMEM_CW_V == 4 && defined(__clang__) || \
    DMEM_CW_VECTORS && DMEM_CW_V == 4 && defined(__GNUC__) && __GNUC__ >= 12
    VT_ ab = __builtin_shufflevector(a, b, 0, 4, 2, 6) + __builtin_shufflevector(a, b, 1, 5, 3, 7);
    VT_ cd = __builtin_shufflevector(c, d, 0, 4, 2, 6) + __builtin_shufflevector(c, d, 1, 5, 3, 7);
    *(DMEM_CW_VTU *)(void *)out = __builtin_shufflevector(ab, cd, 0, 1, 4, 5)
                                  + __builtin_shufflevector(ab, cd, 2, 3, 6, 7);
#elif DMEM_CW_VECTORS && DMEM_CW_V == 8 && (defined(__clang__) || defined(__GNUC__) && __GNUC__ >= 12)
    /* lanes (0+1), (2+3), ... of a and b interleaved, then of c and d; then the
     * pairs of pairs; then the two halves: ((0+1)+(2+3)) + ((4+5)+(6+7)) */
    VT_ ab = __builtin_shufflevector(a, b, 0, 8, 2, 10, 4, 12, 6, 14)
             + __builtin_shufflevector(a, b, 1, 9, 3, 11, 5, 13, 7, 15);
    VT_ cd = __builtin_shufflevector(c, d, 0, 8, 2, 10, 4, 12, 6, 14)
             + __builtin_shufflevector(c, d, 1, 9, 3, 11, 5, 13, 7, 15);
    VT_ q = __builtin_shufflevector(ab, cd, 0, 1, 8, 9, 4, 5, 12, 13)
            + __builtin_shufflevector(ab, cd, 2, 3, 10, 11, 6, 7, 14, 15);
    *(dmem_cw_d4u *)(void *)out = __builtin_shufflevector(q, q, 0, 1, 2, 3)
                                  + __builtin_shufflevector(q, q, 4, 5, 6, 7);
#elif DMEM_CW_VECTORS && DMEM_CW_V == 2 && (defined(__clang__) || defined(__GNUC__) && __GNUC__ >= 12)
    *(DMEM_CW_VTU *)(void *)out = __builtin_shufflevector(a, b, 0, 2) + __builtin_shufflevector(a, b, 1, 3);
    *(DMEM_CW_VTU *)(void *)(out + 2) = __builtin_shufflevector(c, d, 0, 2) + __builtin_shufflevector(c, d, 1, 3);
#else
    out[0] = FN(hsum)(a);
    out[1] = FN(hsum)(b);
    out[2] = FN(hsum)(c);
    out[3] = FN(hsum)(d);
#endif
}

/* exp(x) for x in [-1000, 0] (or NaN), lane by lane: 0 below about -708.4,
 * where libm gives a subnormal number or 0.  The algorithm of
 * _exp_nonpositive in addressing.pxd: Cody-Waite reduction by ln 2, the
 * degree-13 Taylor polynomial of expm1 (Estrin), 2^k built in the exponent
 * bits. */
#if DMEM_CW_VECTORS
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(exp)(VT_ x)
{
    typedef DMEM_CW_VI VI_;
    const VT_ shifter = FN(splat)(6755399441055744.0);  /* 1.5 2^52 */
    VT_ t = x * FN(splat)(1.44269504088896338700e+00) + shifter;
    VT_ kd = t - shifter;
    VI_ bits = (VI_)t;
    VT_ scale = (VT_)((bits + 1023) << 52);
    /* all ones where k < -1022 (2^k not a normal number), else 0 */
    VI_ underflow = (bits - (long long)0x4338000000000000LL + 1022) >> 63;
    VT_ r, r2, r4, q;
    r = (x - kd * FN(splat)(6.93147180369123816490e-01)) - kd * FN(splat)(1.90821492927058770002e-10);
    r2 = r * r;
    r4 = r2 * r2;
    q = r + r2 * ((FN(splat)(0.5) + r * FN(splat)(1.0 / 6.0))
                  + r2 * (FN(splat)(1.0 / 24.0) + r * FN(splat)(1.0 / 120.0))
                  + r4 * ((FN(splat)(1.0 / 720.0) + r * FN(splat)(1.0 / 5040.0))
                          + r2 * (FN(splat)(1.0 / 40320.0) + r * FN(splat)(1.0 / 362880.0)))
                  + (r4 * r4) * ((FN(splat)(1.0 / 3628800.0) + r * FN(splat)(1.0 / 39916800.0))
                                 + r2 * (FN(splat)(1.0 / 479001600.0) + r * FN(splat)(1.0 / 6227020800.0))));
    return (VT_)((VI_)(scale + scale * q) & ~underflow) + (x - x);
}
#endif

DMEM_CW_INLINE DMEM_CW_ATTR double FN(exp1)(double x)
{
    union { double d; unsigned long long u; } t, s, e;
    double kd, r, r2, r4, q;
    unsigned long long underflow;
    t.d = x * 1.44269504088896338700e+00 + 6755399441055744.0;
    kd = t.d - 6755399441055744.0;
    s.u = (t.u + 1023) << 52;
    underflow = 0 - ((t.u - 0x4338000000000000ULL + 1022) >> 63);
    r = (x - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10;
    r2 = r * r;
    r4 = r2 * r2;
    q = r + r2 * ((0.5 + r * (1.0 / 6.0)) + r2 * (1.0 / 24.0 + r * (1.0 / 120.0))
                  + r4 * ((1.0 / 720.0 + r * (1.0 / 5040.0))
                          + r2 * (1.0 / 40320.0 + r * (1.0 / 362880.0)))
                  + (r4 * r4) * ((1.0 / 3628800.0 + r * (1.0 / 39916800.0))
                                 + r2 * (1.0 / 479001600.0 + r * (1.0 / 6227020800.0))));
    e.d = s.d + s.d * q;
    e.u &= ~underflow;
    return e.d + (x - x);
}

/* Softmax of z[0..n) in place, the maximum subtracted first, differences
 * below -1000 clamped to -1000 (exp gives 0 there either way). */
static DMEM_CW_ATTR void FN(softmax)(double *z, Py_ssize_t n)
{
    double top = z[0], bottom = z[0], total, inverse;
    Py_ssize_t i = 0, l;
#if DMEM_CW_VECTORS
    typedef DMEM_CW_VI VI_;
    VT_ vtop = FN(splat)(z[0]), vbottom = vtop, vsum = FN(splat)(0.0), v, vt;
    VI_ above, below;
    for (; i + V_ <= n; i += V_) {
        v = *(const DMEM_CW_VTU *)(const void *)(z + i);
        above = (VI_)(v > vtop);
        below = (VI_)(v < vbottom);
        vtop = (VT_)(((VI_)v & above) | ((VI_)vtop & ~above));
        vbottom = (VT_)(((VI_)v & below) | ((VI_)vbottom & ~below));
    }
    for (l = 0; l < V_; l++) {
        if (vtop[l] > top)
            top = vtop[l];
        if (vbottom[l] < bottom)
            bottom = vbottom[l];
    }
#endif
    for (; i < n; i++) {
        if (z[i] > top)
            top = z[i];
        if (z[i] < bottom)
            bottom = z[i];
    }
    i = 0;
#if DMEM_CW_VECTORS
    vt = FN(splat)(top);
    if (bottom - top >= -1000.0) {
        for (; i + V_ <= n; i += V_) {
            v = FN(exp)(*(const DMEM_CW_VTU *)(const void *)(z + i) - vt);
            *(DMEM_CW_VTU *)(void *)(z + i) = v;
            vsum += v;
        }
    } else {
        const VT_ floor = FN(splat)(-1000.0);
        for (; i + V_ <= n; i += V_) {
            v = *(const DMEM_CW_VTU *)(const void *)(z + i) - vt;
            below = (VI_)(v < floor);
            v = (VT_)(((VI_)floor & below) | ((VI_)v & ~below));
            v = FN(exp)(v);
            *(DMEM_CW_VTU *)(void *)(z + i) = v;
            vsum += v;
        }
    }
    total = FN(hsum)(vsum);
#else
    total = 0.0;
#endif
    for (; i < n; i++) {
        double x = z[i] - top;
        if (x < -1000.0)
            x = -1000.0;
        z[i] = FN(exp1)(x);
        total += z[i];
    }
    inverse = 1.0 / total;
    i = 0;
#if DMEM_CW_VECTORS
    vt = FN(splat)(inverse);
    for (; i + V_ <= n; i += V_)
        *(DMEM_CW_VTU *)(void *)(z + i) = *(const DMEM_CW_VTU *)(const void *)(z + i) * vt;
#endif
    for (; i < n; i++)
        z[i] = z[i] * inverse;
}

/* Four rows i..i+3 from their dot products z = k·M_i and (first) squared
 * norms in `norms`: |M_i| = √(M_i·M_i + ε) into norms (first), c_i = k·M_i /
 * (|k| |M_i|) into cosines, β c_i into z. */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(finish4)(double *z, double *norms, T_ *cosines,
                                             double key_norm, double strength, int first)
{
#if DMEM_CW_VECTORS && DMEM_CW_V == 8
    /* four lanes: one 32-byte vector */
    const dmem_cw_d4 kn = {key_norm, key_norm, key_norm, key_norm};
    const dmem_cw_d4 beta = {strength, strength, strength, strength};
    const dmem_cw_d4 eps = {DMEM_CW_EPSILON, DMEM_CW_EPSILON, DMEM_CW_EPSILON, DMEM_CW_EPSILON};
    dmem_cw_d4 m = *(const dmem_cw_d4u *)(const void *)norms, c;
    if (first) {
        m = (dmem_cw_d4)_mm256_sqrt_pd((__m256d)(m + eps));
        *(dmem_cw_d4u *)(void *)norms = m;
    }
    c = *(const dmem_cw_d4u *)(const void *)z / (kn * m);
    if (sizeof(T_) == sizeof(double))
        *(dmem_cw_d4u *)(void *)cosines = c;
    else
        *(dmem_cw_f4u *)(void *)cosines = __builtin_convertvector(c, dmem_cw_f4);
    *(dmem_cw_d4u *)(void *)z = beta * c;
#elif DMEM_CW_VECTORS
    const VT_ kn = FN(splat)(key_norm), beta = FN(splat)(strength);
    int l;
    for (l = 0; l < 4; l += V_) {
        VT_ m = *(const DMEM_CW_VTU *)(const void *)(norms + l), c;
        if (first) {
            m = FN(sqrt)(m + FN(splat)(DMEM_CW_EPSILON));
            *(DMEM_CW_VTU *)(void *)(norms + l) = m;
        }
        c = *(const DMEM_CW_VTU *)(const void *)(z + l) / (kn * m);
        FN(st)(cosines + l, c);
        *(DMEM_CW_VTU *)(void *)(z + l) = beta * c;
    }
#else
    int l;
    for (l = 0; l < 4; l++) {
        double c;
        if (first)
            norms[l] = sqrt(norms[l] + DMEM_CW_EPSILON);
        c = z[l] / (key_norm * norms[l]);
        cosines[l] = (T_)c;
        z[l] = strength * c;
    }
#endif
}

static DMEM_CW_ATTR double FN(forward)(const T_ *memory, double *norms, int first,
                                       const T_ *key, double strength, T_ *cosines,
                                       double *z, Py_ssize_t n, Py_ssize_t w)
{
    const Py_ssize_t tail = w % V_;
    const Py_ssize_t body = w - tail;
    const double key_norm = sqrt(FN(dot)(key, key, w) + DMEM_CW_EPSILON);
    Py_ssize_t i, j;
    VT_ k, x0, x1, x2, x3, d0, d1, d2, d3, q0, q1, q2, q3;
    /* dot products k·M_i into z, and, for the first head, M_i·M_i into norms;
     * each group of four rows finished at once (square roots and divisions
     * overlap the next group's products) */
    i = 0;
    if (first) {
        for (; i + 4 <= n; i += 4) {
            const T_ *m0 = memory + i * w, *m1 = m0 + w, *m2 = m1 + w, *m3 = m2 + w;
            d0 = d1 = d2 = d3 = q0 = q1 = q2 = q3 = FN(splat)(0.0);
            for (j = 0; j < body; j += V_) {
                k = FN(ld)(key + j);
                x0 = FN(ld)(m0 + j);
                x1 = FN(ld)(m1 + j);
                x2 = FN(ld)(m2 + j);
                x3 = FN(ld)(m3 + j);
                d0 += k * x0;
                d1 += k * x1;
                d2 += k * x2;
                d3 += k * x3;
                q0 += x0 * x0;
                q1 += x1 * x1;
                q2 += x2 * x2;
                q3 += x3 * x3;
            }
            if (tail) {
                k = FN(ld_part)(key + j, tail);
                x0 = FN(ld_part)(m0 + j, tail);
                x1 = FN(ld_part)(m1 + j, tail);
                x2 = FN(ld_part)(m2 + j, tail);
                x3 = FN(ld_part)(m3 + j, tail);
                d0 += k * x0;
                d1 += k * x1;
                d2 += k * x2;
                d3 += k * x3;
                q0 += x0 * x0;
                q1 += x1 * x1;
                q2 += x2 * x2;
                q3 += x3 * x3;
            }
            FN(hsum4)(d0, d1, d2, d3, z + i);
            FN(hsum4)(q0, q1, q2, q3, norms + i);
            FN(finish4)(z + i, norms + i, cosines + i, key_norm, strength, 1);
        }
        for (; i < n; i++) {
            const T_ *m0 = memory + i * w;
            d0 = q0 = FN(splat)(0.0);
            for (j = 0; j < body; j += V_) {
                k = FN(ld)(key + j);
                x0 = FN(ld)(m0 + j);
                d0 += k * x0;
                q0 += x0 * x0;
            }
            if (tail) {
                k = FN(ld_part)(key + j, tail);
                x0 = FN(ld_part)(m0 + j, tail);
                d0 += k * x0;
                q0 += x0 * x0;
            }
            z[i] = FN(hsum)(d0);
            norms[i] = FN(hsum)(q0);
        }
    } else {
        for (; i + 4 <= n; i += 4) {
            const T_ *m0 = memory + i * w, *m1 = m0 + w, *m2 = m1 + w, *m3 = m2 + w;
            d0 = d1 = d2 = d3 = FN(splat)(0.0);
            for (j = 0; j < body; j += V_) {
                k = FN(ld)(key + j);
                d0 += k * FN(ld)(m0 + j);
                d1 += k * FN(ld)(m1 + j);
                d2 += k * FN(ld)(m2 + j);
                d3 += k * FN(ld)(m3 + j);
            }
            if (tail) {
                k = FN(ld_part)(key + j, tail);
                d0 += k * FN(ld_part)(m0 + j, tail);
                d1 += k * FN(ld_part)(m1 + j, tail);
                d2 += k * FN(ld_part)(m2 + j, tail);
                d3 += k * FN(ld_part)(m3 + j, tail);
            }
            FN(hsum4)(d0, d1, d2, d3, z + i);
            FN(finish4)(z + i, norms + i, cosines + i, key_norm, strength, 0);
        }
        for (; i < n; i++) {
            const T_ *m0 = memory + i * w;
            d0 = FN(splat)(0.0);
            for (j = 0; j < body; j += V_)
                d0 += FN(ld)(key + j) * FN(ld)(m0 + j);
            if (tail)
                d0 += FN(ld_part)(key + j, tail) * FN(ld_part)(m0 + j, tail);
            z[i] = FN(hsum)(d0);
        }
    }
    /* the last n % 4 rows: as FN(finish4) does (the same correctly rounded
     * operations, scalar) */
    for (i = n - n % 4; i < n; i++) {
        double c;
        if (first)
            norms[i] = sqrt(norms[i] + DMEM_CW_EPSILON);
        c = z[i] / (key_norm * norms[i]);
        cosines[i] = (T_)c;
        z[i] = strength * c;
    }
    FN(softmax)(z, n);
    return key_norm;
}

/* The pass over memory of the backward (see FN(backward)); inlined twice, with
 * first = 1 (dL/dM written) and 0 (added), so that the test leaves the loop. */
DMEM_CW_INLINE DMEM_CW_ATTR void FN(memory_pass)(const T_ *memory, const T_ *key,
                                                 const double *row_key, const double *row_memory,
                                                 T_ *grad_memory, double *acc, Py_ssize_t n,
                                                 Py_ssize_t w, int first)
{
    const Py_ssize_t body = w - w % V_;
    Py_ssize_t i = 0, j;
#ifdef DMEM_CW_MASKED
    /* the accumulator of the last w % V_ values stays in a register (a masked
     * store then load of it would stall every group) */
    VT_ acc_tail = FN(ldd_part)(acc + body, w - body);
#endif
    for (; i + 4 <= n; i += 4) {
        const T_ *m0 = memory + i * w, *m1 = m0 + w, *m2 = m1 + w, *m3 = m2 + w;
        T_ *g0 = grad_memory + i * w, *g1 = g0 + w, *g2 = g1 + w, *g3 = g2 + w;
        const VT_ f0 = FN(splat)(row_key[i]), f1 = FN(splat)(row_key[i + 1]);
        const VT_ f2 = FN(splat)(row_key[i + 2]), f3 = FN(splat)(row_key[i + 3]);
        const VT_ t0 = FN(splat)(row_memory[i]), t1 = FN(splat)(row_memory[i + 1]);
        const VT_ t2 = FN(splat)(row_memory[i + 2]), t3 = FN(splat)(row_memory[i + 3]);
        for (j = 0; j < body; j += V_) {
            VT_ k = FN(ld)(key + j);
            VT_ x0 = FN(ld)(m0 + j), x1 = FN(ld)(m1 + j), x2 = FN(ld)(m2 + j), x3 = FN(ld)(m3 + j);
            VT_ a = *(const DMEM_CW_VTU *)(const void *)(acc + j);
            a += f0 * x0;
            a += f1 * x1;
            a += f2 * x2;
            a += f3 * x3;
            *(DMEM_CW_VTU *)(void *)(acc + j) = a;
            FN(grad_row)(g0 + j, k, x0, f0, t0, first);
            FN(grad_row)(g1 + j, k, x1, f1, t1, first);
            FN(grad_row)(g2 + j, k, x2, f2, t2, first);
            FN(grad_row)(g3 + j, k, x3, f3, t3, first);
        }
#ifdef DMEM_CW_MASKED
        if (j < w) {  /* the last w % V_ values: masked loads and stores */
            const Py_ssize_t m = w - j;
            VT_ k = FN(ld_part)(key + j, m);
            VT_ x0 = FN(ld_part)(m0 + j, m), x1 = FN(ld_part)(m1 + j, m);
            VT_ x2 = FN(ld_part)(m2 + j, m), x3 = FN(ld_part)(m3 + j, m);
            acc_tail += f0 * x0;
            acc_tail += f1 * x1;
            acc_tail += f2 * x2;
            acc_tail += f3 * x3;
            FN(grad_part)(g0 + j, k, x0, f0, t0, first, m);
            FN(grad_part)(g1 + j, k, x1, f1, t1, first, m);
            FN(grad_part)(g2 + j, k, x2, f2, t2, first, m);
            FN(grad_part)(g3 + j, k, x3, f3, t3, first, m);
        }
#else
        for (; j < w; j++) {
            double kj = key[j];
            double y0 = m0[j], y1 = m1[j], y2 = m2[j], y3 = m3[j];
            double a = acc[j];
            a += row_key[i] * y0;
            a += row_key[i + 1] * y1;
            a += row_key[i + 2] * y2;
            a += row_key[i + 3] * y3;
            acc[j] = a;
            FN(grad_one)(g0 + j, kj, y0, row_key[i], row_memory[i], first);
            FN(grad_one)(g1 + j, kj, y1, row_key[i + 1], row_memory[i + 1], first);
            FN(grad_one)(g2 + j, kj, y2, row_key[i + 2], row_memory[i + 2], first);
            FN(grad_one)(g3 + j, kj, y3, row_key[i + 3], row_memory[i + 3], first);
        }
#endif
    }
    for (; i < n; i++) {  /* the last rows, one at a time, dL/dM_i as above */
        const T_ *m0 = memory + i * w;
        T_ *g0 = grad_memory + i * w;
        const VT_ f0 = FN(splat)(row_key[i]), t0 = FN(splat)(row_memory[i]);
        for (j = 0; j < body; j += V_) {
            VT_ x0 = FN(ld)(m0 + j);
            VT_ a = *(const DMEM_CW_VTU *)(const void *)(acc + j);
            *(DMEM_CW_VTU *)(void *)(acc + j) = a + f0 * x0;
            FN(grad_row)(g0 + j, FN(ld)(key + j), x0, f0, t0, first);
        }
#ifdef DMEM_CW_MASKED
        if (j < w) {
            const Py_ssize_t m = w - j;
            VT_ x0 = FN(ld_part)(m0 + j, m);
            acc_tail += f0 * x0;
            FN(grad_part)(g0 + j, FN(ld_part)(key + j, m), x0, f0, t0, first, m);
        }
#else
        for (; j < w; j++) {
            double y0 = m0[j];
            acc[j] = acc[j] + row_key[i] * y0;
            FN(grad_one)(g0 + j, key[j], y0, row_key[i], row_memory[i], first);
        }
#endif
    }
#ifdef DMEM_CW_MASKED
    if (body < w)
        FN(std_part)(acc + body, acc_tail, w - body);
#endif
}

static DMEM_CW_ATTR double FN(backward)(const T_ *memory, const T_ *memory_norms,
                                        const T_ *key, double key_norm, double strength,
                                        const T_ *cosines, const T_ *weights,
                                        const double *grad, int first, T_ *grad_memory,
                                        T_ *grad_key, double *row_key, double *row_memory,
                                        double *acc, Py_ssize_t n, Py_ssize_t w)
{
    const double inverse_key_norm = 1.0 / key_norm;
    double mean, grad_strength, cos_dot, scale;
    Py_ssize_t i, j;
    /* per-row factors: row_key_i = gc_i / (|k||M_i|), row_memory_i = gc_i c_i / |M_i|² */
    {
        VT_ s0 = FN(splat)(0.0), s1 = FN(splat)(0.0);
        i = 0;
        for (; i + 2 * V_ <= n; i += 2 * V_) {
            s0 += FN(ld)(weights + i) * *(const DMEM_CW_VTU *)(const void *)(grad + i);
            s1 += FN(ld)(weights + i + V_) * *(const DMEM_CW_VTU *)(const void *)(grad + i + V_);
        }
        mean = FN(hsum)(s0 + s1);
        for (; i < n; i++)
            mean += (double)weights[i] * grad[i];
    }
    {
        const VT_ vmean = FN(splat)(mean), beta = FN(splat)(strength);
        const VT_ ikn = FN(splat)(inverse_key_norm), one = FN(splat)(1.0);
        VT_ gs = FN(splat)(0.0), cd = FN(splat)(0.0);
        i = 0;
#if DMEM_CW_VECTORS
        for (; i + V_ <= n; i += V_) {
            VT_ c = FN(ld)(cosines + i);
            VT_ gz = FN(ld)(weights + i) * (*(const DMEM_CW_VTU *)(const void *)(grad + i) - vmean);
            VT_ gc = gz * beta;
            VT_ u = one / FN(ld)(memory_norms + i);
            gs += gz * c;
            cd += gc * c;
            *(DMEM_CW_VTU *)(void *)(row_key + i) = gc * ikn * u;
            *(DMEM_CW_VTU *)(void *)(row_memory + i) = gc * c * u * u;
        }
#endif
        grad_strength = FN(hsum)(gs);
        cos_dot = FN(hsum)(cd);
        for (; i < n; i++) {
            double c = cosines[i];
            double gz = weights[i] * (grad[i] - mean);
            double gc = gz * strength;
            double u = 1.0 / memory_norms[i];
            grad_strength += gz * c;
            cos_dot += gc * c;
            row_key[i] = gc * inverse_key_norm * u;
            row_memory[i] = gc * c * u * u;
        }
    }
    /* one pass over memory: dL/dM_i = row_key_i k - row_memory_i M_i, and
     * acc = Σ_i row_key_i M_i (rows in order, four at a time) */
    for (j = 0; j < w; j++)
        acc[j] = 0.0;
    if (first)
        FN(memory_pass)(memory, key, row_key, row_memory, grad_memory, acc, n, w, 1);
    else
        FN(memory_pass)(memory, key, row_key, row_memory, grad_memory, acc, n, w, 0);
    /* dL/dk = acc - (Σ_i gc_i c_i) k / |k|² */
    scale = cos_dot * inverse_key_norm * inverse_key_norm;
    for (j = 0; j < w; j++)
        grad_key[j] = (T_)(acc[j] - scale * key[j]);
    return grad_strength;
}

#if DMEM_CW_DOUBLE
/* log(x) for positive normal x, one value: the algorithm of _log_normal in
 * addressing.pxd (fdlibm's polynomial after a reduction to [√2/2, √2)). */
DMEM_CW_INLINE DMEM_CW_ATTR double FN(log1)(double x)
{
    union { double d; unsigned long long u; } a, m, e;
    double dk, f, hfsq, q, z, w, R;
    a.d = x;
    a.u += 0x00095f6200000000ULL;
    m.u = (a.u & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL;
    e.u = (a.u >> 52) | 0x4330000000000000ULL;
    dk = (e.d - 4503599627370496.0) - 1023.0;
    f = m.d - 1.0;
    hfsq = 0.5 * f * f;
    q = f / (2.0 + f);
    z = q * q;
    w = z * z;
    R = (z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
              + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
         + w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01
                + w * 1.531383769920937332e-01)));
    return dk * 6.93147180369123816490e-01
           - ((hfsq - (q * (hfsq + R) + dk * 1.90821492927058770002e-10)) - f);
}

#if DMEM_CW_VECTORS
/* The same, lane by lane. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(log)(VT_ x)
{
    typedef DMEM_CW_VU VU_;
    VU_ a = (VU_)x + 0x00095f6200000000ULL;
    VT_ m = (VT_)((a & 0x000fffffffffffffULL) + 0x3fe6a09e00000000ULL);
    VT_ e = (VT_)((a >> 52) | 0x4330000000000000ULL);
    VT_ dk = (e - FN(splat)(4503599627370496.0)) - FN(splat)(1023.0);
    VT_ f = m - FN(splat)(1.0);
    VT_ hfsq = FN(splat)(0.5) * f * f;
    VT_ q = f / (FN(splat)(2.0) + f);
    VT_ z = q * q;
    VT_ w = z * z;
    VT_ R = (z * (FN(splat)(6.666666666666735130e-01) + w * (FN(splat)(2.857142874366239149e-01)
                 + w * (FN(splat)(1.818357216161805012e-01) + w * FN(splat)(1.479819860511658591e-01))))
             + w * (FN(splat)(3.999999999940941908e-01) + w * (FN(splat)(2.222219843214978396e-01)
                    + w * FN(splat)(1.531383769920937332e-01))));
    return dk * FN(splat)(6.93147180369123816490e-01)
           - ((hfsq - (q * (hfsq + R) + dk * FN(splat)(1.90821492927058770002e-10))) - f);
}
#endif

static DMEM_CW_ATTR void FN(sharpen_forward)(const double *weights, double gamma,
                                             double *log_weights, double *out, Py_ssize_t n)
{
    Py_ssize_t i;
    int normal = 1;
    for (i = 0; i < n; i++) {
        double x = weights[i] + 1e-12;
        log_weights[i] = x;
        normal &= (x >= 2.2250738585072014e-308) & (x <= 1.7976931348623157e308);
    }
    i = 0;
    if (normal) {
#if DMEM_CW_VECTORS
        const VT_ g = FN(splat)(gamma);
        for (; i + V_ <= n; i += V_) {
            VT_ l = FN(log)(*(const DMEM_CW_VTU *)(const void *)(log_weights + i));
            *(DMEM_CW_VTU *)(void *)(log_weights + i) = l;
            *(DMEM_CW_VTU *)(void *)(out + i) = g * l;
        }
#endif
        for (; i < n; i++) {
            log_weights[i] = FN(log1)(log_weights[i]);
            out[i] = gamma * log_weights[i];
        }
    } else {
        for (; i < n; i++) {
            log_weights[i] = log(weights[i] + 1e-12);
            out[i] = gamma * log_weights[i];
        }
    }
    FN(softmax)(out, n);
}

/* Σ_i a_i b_i (double), two vector accumulators, lanes summed at the end. */
DMEM_CW_INLINE DMEM_CW_ATTR double FN(dotd)(const double *a, const double *b, Py_ssize_t n)
{
    double total;
    Py_ssize_t i = 0;
#if DMEM_CW_VECTORS
    VT_ s0 = FN(splat)(0.0), s1 = FN(splat)(0.0);
    for (; i + 2 * V_ <= n; i += 2 * V_) {
        s0 += *(const DMEM_CW_VTU *)(const void *)(a + i) * *(const DMEM_CW_VTU *)(const void *)(b + i);
        s1 += *(const DMEM_CW_VTU *)(const void *)(a + i + V_)
              * *(const DMEM_CW_VTU *)(const void *)(b + i + V_);
    }
    total = FN(hsum)(s0 + s1);
#else
    total = 0.0;
#endif
    for (; i < n; i++)
        total += a[i] * b[i];
    return total;
}

/* (k - r) mod n in [0, n): shift k moves slot i - d onto slot i. */
DMEM_CW_INLINE DMEM_CW_ATTR Py_ssize_t FN(offset)(Py_ssize_t k, Py_ssize_t radius, Py_ssize_t n)
{
    Py_ssize_t d = (k - radius) % n;
    return d < 0 ? d + n : d;
}

/* out_i = Σ_k s_k w_{(i - (k - r)) mod n}, r = S // 2 (the first shift
 * initialises out). */
static DMEM_CW_ATTR void FN(shift_forward)(const double *weights, const double *shifts,
                                           double *out, Py_ssize_t n, Py_ssize_t S)
{
    Py_ssize_t i, k, d;
    const Py_ssize_t radius = S / 2;
    double sk;
    d = FN(offset)(0, radius, n);
    sk = shifts[0];
    for (i = d; i < n; i++)
        out[i] = sk * weights[i - d];
    for (i = 0; i < d; i++)
        out[i] = sk * weights[i - d + n];
    for (k = 1; k < S; k++) {
        d = FN(offset)(k, radius, n);
        sk = shifts[k];
        for (i = d; i < n; i++)
            out[i] = out[i] + sk * weights[i - d];
        for (i = 0; i < d; i++)
            out[i] = out[i] + sk * weights[i - d + n];
    }
}

/* Backward of the shift: dL/dw into grad_weights, dL/ds into grad_shifts. */
static DMEM_CW_ATTR void FN(shift_backward)(const double *weights, const double *shifts,
                                            const double *grad_out, double *grad_weights,
                                            double *grad_shifts, Py_ssize_t n, Py_ssize_t S)
{
    Py_ssize_t i, k, d;
    const Py_ssize_t radius = S / 2;
    double sk;
    for (k = 0; k < S; k++) {
        d = FN(offset)(k, radius, n);
        sk = shifts[k];
        if (k == 0) {
            for (i = d; i < n; i++)
                grad_weights[i - d] = sk * grad_out[i];
            for (i = 0; i < d; i++)
                grad_weights[i - d + n] = sk * grad_out[i];
        } else {
            for (i = d; i < n; i++)
                grad_weights[i - d] = grad_weights[i - d] + sk * grad_out[i];
            for (i = 0; i < d; i++)
                grad_weights[i - d + n] = grad_weights[i - d + n] + sk * grad_out[i];
        }
        grad_shifts[k] = FN(dotd)(grad_out + d, weights, n - d) + FN(dotd)(grad_out, weights + n - d, d);
    }
}
#endif /* DMEM_CW_DOUBLE */

/* Backward of the sharpening from its output; returns dL/dγ.  With
 * m = Σ_j out_j g_j: dL/dw_i = γ (g_i - m) out_i / (w_i + ε) where out_i > 0,
 * else 0 (the divisor is 1 there, never w_i + ε), and
 * dL/dγ = Σ_i out_i (g_i - m) log(w_i + ε). */
static DMEM_CW_ATTR double FN(sharpen_backward)(const double *weights, const T_ *out,
                                                const double *log_weights, double gamma,
                                                const double *grad_out, double *grad_weights,
                                                Py_ssize_t n)
{
    Py_ssize_t i = 0;
    double mean, total;
#if DMEM_CW_VECTORS
    typedef DMEM_CW_VI VI_;
    VT_ s0 = FN(splat)(0.0), s1 = FN(splat)(0.0);
    for (; i + 2 * V_ <= n; i += 2 * V_) {
        s0 += FN(ld)(out + i) * *(const DMEM_CW_VTU *)(const void *)(grad_out + i);
        s1 += FN(ld)(out + i + V_) * *(const DMEM_CW_VTU *)(const void *)(grad_out + i + V_);
    }
    mean = FN(hsum)(s0 + s1);
#else
    mean = 0.0;
#endif
    for (; i < n; i++)
        mean += (double)out[i] * grad_out[i];
    i = 0;
#if DMEM_CW_VECTORS
    {
        const VT_ vmean = FN(splat)(mean), g = FN(splat)(gamma), zero = FN(splat)(0.0);
        const VT_ one = FN(splat)(1.0), eps = FN(splat)(1e-12);
        VT_ acc = zero;
        for (; i + V_ <= n; i += V_) {
            VT_ o = FN(ld)(out + i);
            VT_ d = *(const DMEM_CW_VTU *)(const void *)(grad_out + i) - vmean;
            VI_ positive = (VI_)(o > zero);
            VT_ w = *(const DMEM_CW_VTU *)(const void *)(weights + i) + eps;
            VT_ divisor = (VT_)(((VI_)w & positive) | ((VI_)one & ~positive));
            VT_ r = (d * g) * (o / divisor);
            *(DMEM_CW_VTU *)(void *)(grad_weights + i) = (VT_)((VI_)r & positive);
            acc += o * d * *(const DMEM_CW_VTU *)(const void *)(log_weights + i);
        }
        total = FN(hsum)(acc);
    }
#else
    total = 0.0;
#endif
    for (; i < n; i++) {
        double o = out[i];
        double d = grad_out[i] - mean;
        total += o * d * log_weights[i];
        grad_weights[i] = o > 0.0 ? (d * gamma) * (o / (weights[i] + 1e-12)) : 0.0;
    }
    return total;
}

/* V_ values of dL/dw from i: of g (T_), or, when `from_double`, of gd. */
DMEM_CW_INLINE DMEM_CW_ATTR VT_ FN(ldg)(const T_ *g, const double *gd, Py_ssize_t i, int from_double)
{
    if (from_double)
        return *(const DMEM_CW_VTU *)(const void *)(gd + i);
    return FN(ld)(g + i);
}

/* Backward of all h_count heads of a batch row at once (h_count >= 2): the
 * per-head factors first, then one pass over memory for all heads, where
 *     dL/dM_i = Σ_h row_key_h,i k_h - (Σ_h row_memory_h,i) M_i
 * is formed once (written, never read back) and every head's Σ_i row_key_h,i M_i
 * accumulated.  Reads dL/dw from `grad` (h_count x n, T_), or, when it is
 * NULL, from `grad_double` (double).  Scratch from malloc; returns -1
 * (nothing written) when there is none, else 0. */
static DMEM_CW_ATTR int FN(backward_heads)(const T_ *memory, const T_ *memory_norms,
                                           const T_ *keys, const T_ *key_norms,
                                           const T_ *strengths, const T_ *cosines,
                                           const T_ *weights, const T_ *grad,
                                           const double *grad_double,
                                           T_ *grad_memory, T_ *grad_keys, T_ *grad_strengths,
                                           Py_ssize_t hc, Py_ssize_t n, Py_ssize_t w)
{
    const Py_ssize_t body = w - w % V_;
#ifdef DMEM_CW_MASKED
    const Py_ssize_t wp = body < w ? body + V_ : w;   /* acc rows padded to whole vectors */
#else
    const Py_ssize_t wp = w;
#endif
    /* factors[i * hc + h] = row_key_h,i; total[i] = Σ_h row_memory_h,i;
     * acc[h * w + j]; cos_dot[h] */
    double *block = (double *)malloc(sizeof(double) * (size_t)(hc * n + n + hc * wp + hc));
    double *factors, *total, *acc, *cos_dot;
    Py_ssize_t h, i, j;
    if (block == NULL)
        return -1;
    factors = block;
    total = factors + hc * n;
    acc = total + n;
    cos_dot = acc + hc * wp;
    for (h = 0; h < hc; h++) {
        const T_ *wt = weights + h * n, *c_h = cosines + h * n;
        const T_ *g_h = grad + h * n;
        const double *gd_h = grad_double + h * n;
        const double inverse_key_norm = 1.0 / (double)key_norms[h];
        const double strength = strengths[h];
        double mean, grad_strength = 0.0, cd = 0.0;
        VT_ s0 = FN(splat)(0.0), s1 = FN(splat)(0.0);
        i = 0;
        for (; i + 2 * V_ <= n; i += 2 * V_) {
            s0 += FN(ld)(wt + i) * FN(ldg)(g_h, gd_h, i, grad == NULL);
            s1 += FN(ld)(wt + i + V_) * FN(ldg)(g_h, gd_h, i + V_, grad == NULL);
        }
        mean = FN(hsum)(s0 + s1);
        for (; i < n; i++)
            mean += (double)wt[i] * (grad == NULL ? gd_h[i] : (double)g_h[i]);
        {
            VT_ gs = FN(splat)(0.0), cs = FN(splat)(0.0);
            i = 0;
#if DMEM_CW_VECTORS
            {
                const VT_ vmean = FN(splat)(mean), beta = FN(splat)(strength);
                const VT_ ikn = FN(splat)(inverse_key_norm), one = FN(splat)(1.0);
                for (; i + V_ <= n; i += V_) {
                    VT_ c = FN(ld)(c_h + i);
                    VT_ gz = FN(ld)(wt + i) * (FN(ldg)(g_h, gd_h, i, grad == NULL) - vmean);
                    VT_ gc = gz * beta;
                    VT_ u = one / FN(ld)(memory_norms + i);
                    VT_ rk = gc * ikn * u, rm = gc * c * u * u;
                    Py_ssize_t l;
                    gs += gz * c;
                    cs += gc * c;
                    for (l = 0; l < V_; l++)
                        factors[(i + l) * hc + h] = rk[l];
                    if (h == 0)
                        *(DMEM_CW_VTU *)(void *)(total + i) = rm;
                    else
                        *(DMEM_CW_VTU *)(void *)(total + i) = *(const DMEM_CW_VTU *)(const void *)(total + i) + rm;
                }
            }
#endif
            grad_strength = FN(hsum)(gs);
            cd = FN(hsum)(cs);
        }
        for (; i < n; i++) {
            double c = c_h[i];
            double gz = wt[i] * ((grad == NULL ? gd_h[i] : (double)g_h[i]) - mean);
            double gc = gz * strength;
            double u = 1.0 / memory_norms[i];
            grad_strength += gz * c;
            cd += gc * c;
            factors[i * hc + h] = gc * inverse_key_norm * u;
            total[i] = h == 0 ? gc * c * u * u : total[i] + gc * c * u * u;
        }
        grad_strengths[h] = (T_)grad_strength;
        cos_dot[h] = cd;
    }
    for (j = 0; j < hc * wp; j++)
        acc[j] = 0.0;
    /* dL/dM_i = -t_i M_i + Σ_h f_h,i k_h (heads in order), rows four at a time
     * (acc_h read and written once per group), the last n % 4 alone */
    for (i = 0; i + 4 <= n; i += 4) {
        const T_ *m0 = memory + i * w, *m1 = m0 + w, *m2 = m1 + w, *m3 = m2 + w;
        T_ *g0 = grad_memory + i * w, *g1 = g0 + w, *g2 = g1 + w, *g3 = g2 + w;
        const double *f0 = factors + i * hc, *f1 = f0 + hc, *f2 = f1 + hc, *f3 = f2 + hc;
        const VT_ t0 = FN(splat)(total[i]), t1 = FN(splat)(total[i + 1]);
        const VT_ t2 = FN(splat)(total[i + 2]), t3 = FN(splat)(total[i + 3]);
        for (j = 0; j < body; j += V_) {
            VT_ x0 = FN(ld)(m0 + j), x1 = FN(ld)(m1 + j), x2 = FN(ld)(m2 + j), x3 = FN(ld)(m3 + j);
            VT_ d0 = -(t0 * x0), d1 = -(t1 * x1), d2 = -(t2 * x2), d3 = -(t3 * x3);
            for (h = 0; h < hc; h++) {
                const VT_ k = FN(ld)(keys + h * w + j);
                const VT_ e0 = FN(splat)(f0[h]), e1 = FN(splat)(f1[h]);
                const VT_ e2 = FN(splat)(f2[h]), e3 = FN(splat)(f3[h]);
                double *a = acc + h * wp + j;
                VT_ av = *(const DMEM_CW_VTU *)(const void *)a;
                d0 += e0 * k;
                d1 += e1 * k;
                d2 += e2 * k;
                d3 += e3 * k;
                av += e0 * x0;
                av += e1 * x1;
                av += e2 * x2;
                av += e3 * x3;
                *(DMEM_CW_VTU *)(void *)a = av;
            }
            FN(st)(g0 + j, d0);
            FN(st)(g1 + j, d1);
            FN(st)(g2 + j, d2);
            FN(st)(g3 + j, d3);
        }
#ifdef DMEM_CW_MASKED
        if (j < w) {  /* the last w % V_ values: masked loads and stores */
            const Py_ssize_t mw = w - j;
            VT_ x0 = FN(ld_part)(m0 + j, mw), x1 = FN(ld_part)(m1 + j, mw);
            VT_ x2 = FN(ld_part)(m2 + j, mw), x3 = FN(ld_part)(m3 + j, mw);
            VT_ d0 = -(t0 * x0), d1 = -(t1 * x1), d2 = -(t2 * x2), d3 = -(t3 * x3);
            for (h = 0; h < hc; h++) {
                const VT_ k = FN(ld_part)(keys + h * w + j, mw);
                const VT_ e0 = FN(splat)(f0[h]), e1 = FN(splat)(f1[h]);
                const VT_ e2 = FN(splat)(f2[h]), e3 = FN(splat)(f3[h]);
                double *a = acc + h * wp + j;
                VT_ av = *(const DMEM_CW_VTU *)(const void *)a;   /* padded: whole vectors */
                d0 += e0 * k;
                d1 += e1 * k;
                d2 += e2 * k;
                d3 += e3 * k;
                av += e0 * x0;
                av += e1 * x1;
                av += e2 * x2;
                av += e3 * x3;
                *(DMEM_CW_VTU *)(void *)a = av;
            }
            FN(st_part)(g0 + j, d0, mw);
            FN(st_part)(g1 + j, d1, mw);
            FN(st_part)(g2 + j, d2, mw);
            FN(st_part)(g3 + j, d3, mw);
        }
#else
        for (; j < w; j++) {
            double y0 = m0[j], y1 = m1[j], y2 = m2[j], y3 = m3[j];
            double d0 = -(total[i] * y0), d1 = -(total[i + 1] * y1);
            double d2 = -(total[i + 2] * y2), d3 = -(total[i + 3] * y3);
            for (h = 0; h < hc; h++) {
                const double k = keys[h * w + j];
                double a = acc[h * wp + j];
                d0 += f0[h] * k;
                d1 += f1[h] * k;
                d2 += f2[h] * k;
                d3 += f3[h] * k;
                a += f0[h] * y0;
                a += f1[h] * y1;
                a += f2[h] * y2;
                a += f3[h] * y3;
                acc[h * wp + j] = a;
            }
            g0[j] = (T_)d0;
            g1[j] = (T_)d1;
            g2[j] = (T_)d2;
            g3[j] = (T_)d3;
        }
#endif
    }
    for (; i < n; i++) {
        const T_ *m = memory + i * w;
        T_ *g = grad_memory + i * w;
        const double *f = factors + i * hc;
        const VT_ t = FN(splat)(total[i]);
        for (j = 0; j < body; j += V_) {
            VT_ x = FN(ld)(m + j);
            VT_ d = -(t * x);
            for (h = 0; h < hc; h++) {
                const VT_ e = FN(splat)(f[h]);
                double *a = acc + h * wp + j;
                d += e * FN(ld)(keys + h * w + j);
                *(DMEM_CW_VTU *)(void *)a = *(const DMEM_CW_VTU *)(const void *)a + e * x;
            }
            FN(st)(g + j, d);
        }
#ifdef DMEM_CW_MASKED
        if (j < w) {
            const Py_ssize_t mw = w - j;
            VT_ x = FN(ld_part)(m + j, mw);
            VT_ d = -(t * x);
            for (h = 0; h < hc; h++) {
                const VT_ e = FN(splat)(f[h]);
                double *a = acc + h * wp + j;
                d += e * FN(ld_part)(keys + h * w + j, mw);
                *(DMEM_CW_VTU *)(void *)a = *(const DMEM_CW_VTU *)(const void *)a + e * x;
            }
            FN(st_part)(g + j, d, mw);
        }
#else
        for (; j < w; j++) {
            double x = m[j];
            double d = -(total[i] * x);
            for (h = 0; h < hc; h++) {
                d += f[h] * (double)keys[h * w + j];
                acc[h * wp + j] += f[h] * x;
            }
            g[j] = (T_)d;
        }
#endif
    }
    /* dL/dk_h = acc_h - (Σ_i gc_h,i c_h,i) k_h / |k_h|² */
    for (h = 0; h < hc; h++) {
        const double inverse_key_norm = 1.0 / (double)key_norms[h];
        const double scale = cos_dot[h] * inverse_key_norm * inverse_key_norm;
        for (j = 0; j < w; j++)
            grad_keys[h * w + j] = (T_)(acc[h * wp + j] - scale * (double)keys[h * w + j]);
    }
    free(block);
    return 0;
}

#undef T_
#undef V_
#undef VT_
#undef FN
#undef DMEM_CW_NAME_
#undef DMEM_CW_NAME__

#endif /* DMEM_CW_BODY */
