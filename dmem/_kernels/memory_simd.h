/*
 * dmem: the loops of the memory read and write (one batch row at a time), used
 * by dmem/_kernels/memory.pyx and, through memory.pxd, by the fused DNC step.
 *
 *     read:   r_h = Σ_n w_{h,n} M_n
 *             dM_n = Σ_h w_{h,n} g_h,   dw_{h,n} = g_h · M_n
 *     write:  M' = M ∘ Π_h q_h + Σ_h w_h a_hᵀ,   q_h = 1 − w_h e_hᵀ (per entry)
 *             dM = g ∘ Π_h q_h,   t_h = g ∘ M ∘ Π_{h'≠h} q_{h'},
 *             dw_h[n] = Σ_k (g[n,k] a_h[k] − e_h[k] t_h[n,k]),
 *             de_h = −Σ_n w_h[n] t_h[n],   da_h = Σ_n w_h[n] g[n]
 *
 * How: a memory row (a word of W values) is cut into vectors of 16 bytes (the
 * baseline version), 32 (AVX2/FMA) or 64 (AVX-512); the last vector of a row
 * may be partial (masked loads and stores on AVX2 and AVX-512, one or two
 * lanes on SSE2), so W is arbitrary.  GCC/clang vector extensions; float
 * stays float.  Up to four heads are handled together with everything in
 * registers (functions specialised on the head count); more heads take
 * simpler per-head passes.
 *
 *   read forward:   the sums over slots live in registers: two heads by up
 *                   to four vectors of the word at a time, one pass over the
 *                   slots for each such block.
 *   read backward:  one pass over the slots and, per slot, over the word:
 *                   dM_n from every head and the lanes of g_h · M_n.
 *   write forward:  per slot and vector of the word, every head.
 *   write backward: two slots at a time, per vector of the word: the q_h, the
 *                   suffix products Π_{h'>h} q_{h'} and prefix products
 *                   Π_{h'<h} q_{h'} (no division by q, which can be 0), t_h,
 *                   de_h and da_h (loaded and stored once per pair of slots;
 *                   those of a partial last vector stay in registers over all
 *                   slots) and the lanes of dw_h.  Over four heads: the suffix
 *                   products go to the scratch rows and the prefix products
 *                   to the slot's row of dM, one pass over the word per head.
 *
 * Order of the sums: a sum over slots or heads runs in index order, value by
 * value, whatever the vector width; a sum over the word (dw) accumulates the
 * word's vectors lane by lane in order, then adds the lanes in a fixed order.
 * Results depend on the instruction set (lane counts, FMA), never on the
 * thread count or the batch row.
 *
 * Runtime dispatch (levels of simd.h): on x86 with GCC or clang every
 * function is compiled three times: for the build's baseline ISA, with
 * __attribute__((target("avx2,fma"))) and with AVX-512 F/VL/DQ as well.
 * dmem_memory_set_simd(level) selects the versions, never above what the CPU
 * supports; memory.pyx asks for the widest at import.  Compilers without
 * vector extensions get scalar loops.
 *
 * The file includes itself once per (dtype, instruction set) with DMEM_MS_BODY
 * defined, for the bodies of the functions.
 */

#ifndef DMEM_MS_BODY

#ifndef DMEM_MEMORY_SIMD_H
#define DMEM_MEMORY_SIMD_H

#include <stddef.h>

#include "simd.h"

#if DMEM_X86
/* Masks of the AVX2 partial loads and stores: from index L - r, r lanes set. */
static const long long dmem_ms_mask64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};
static const int dmem_ms_mask32[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
/* Two floats moved as one double (SSE2 partial vectors of floats). */
typedef double dmem_ms_pair __attribute__((may_alias, aligned(sizeof(float))));
#endif

#define DMEM_MS_CAT_(a, b, c) dmem_ms_##a##_##b##_##c
#define DMEM_MS_CAT(a, b, c) DMEM_MS_CAT_(a, b, c)

/* ---- baseline (16-byte vectors; scalars without vector extensions) ---- */
#define DMEM_MS_BODY 1
#define DMEM_MS_ATTR
#define DMEM_MS_ISA base
#define DMEM_MS_T double
#define DMEM_MS_SUFFIX d
#define DMEM_MS_DOUBLE 1
#if DMEM_VECTORS
#define DMEM_MS_L 2
#define DMEM_MS_VT dmem_vd2
#define DMEM_MS_VTU dmem_vd2_u
#else
#define DMEM_MS_L 1
#define DMEM_MS_VT double
#define DMEM_MS_VTU double
#endif
#include "memory_simd.h"
#define DMEM_MS_T float
#define DMEM_MS_SUFFIX f
#define DMEM_MS_DOUBLE 0
#if DMEM_VECTORS
#define DMEM_MS_L 4
#define DMEM_MS_VT dmem_vf4
#define DMEM_MS_VTU dmem_vf4_u
#else
#define DMEM_MS_L 1
#define DMEM_MS_VT float
#define DMEM_MS_VTU float
#endif
#include "memory_simd.h"
#undef DMEM_MS_ATTR
#undef DMEM_MS_ISA

#if DMEM_SIMD_DISPATCH
/* ---- AVX2 + FMA ---- */
#define DMEM_MS_ATTR DMEM_ATTR_AVX2
#define DMEM_MS_ISA avx2
#define DMEM_MS_T double
#define DMEM_MS_SUFFIX d
#define DMEM_MS_DOUBLE 1
#define DMEM_MS_L 4
#define DMEM_MS_VT dmem_vd4
#define DMEM_MS_VTU dmem_vd4_u
#include "memory_simd.h"
#define DMEM_MS_T float
#define DMEM_MS_SUFFIX f
#define DMEM_MS_DOUBLE 0
#define DMEM_MS_L 8
#define DMEM_MS_VT dmem_vf8
#define DMEM_MS_VTU dmem_vf8_u
#include "memory_simd.h"
#undef DMEM_MS_ATTR
#undef DMEM_MS_ISA

/* ---- AVX-512 (F, VL, DQ) + FMA: masked loads and stores for a partial vector ---- */
#define DMEM_MS_ATTR DMEM_ATTR_AVX512
#define DMEM_MS_ISA avx512
#define DMEM_MS_MASKED 1
#define DMEM_MS_T double
#define DMEM_MS_SUFFIX d
#define DMEM_MS_DOUBLE 1
#define DMEM_MS_L 8
#define DMEM_MS_VT dmem_vd8
#define DMEM_MS_VTU dmem_vd8_u
#include "memory_simd.h"
#define DMEM_MS_T float
#define DMEM_MS_SUFFIX f
#define DMEM_MS_DOUBLE 0
#define DMEM_MS_L 16
#define DMEM_MS_VT dmem_vf16
#define DMEM_MS_VTU dmem_vf16_u
#include "memory_simd.h"
#undef DMEM_MS_ATTR
#undef DMEM_MS_ISA
#undef DMEM_MS_MASKED
#endif
#undef DMEM_MS_BODY

/* ---- dispatch ---- */

/* The level in force (simd.h): 2 AVX-512, 1 AVX2/FMA, 0 the baseline. */
static int dmem_memory_simd = 0;

static int dmem_memory_simd_supported(void) { return dmem_simd_supported(); }

static int dmem_memory_set_simd(int level)
{
    dmem_memory_simd = dmem_simd_level(level);
    return dmem_memory_simd;
}

static int dmem_memory_get_simd(void) { return dmem_memory_simd; }

#define DMEM_MS_CALL(name, suffix, args) DMEM_SIMD_CALL(dmem_memory_simd, ms_##name, suffix, args)

/* One batch row of each op; arguments as in memory.pyx (row-major (N, W),
 * (H, N), (H, W) blocks).  `scratch` of the write backward is (H + 1) x W. */
#define DMEM_MS_ENTRY(T, s)                                                              \
static void dmem_memory_read_##s(const T *memory, const T *weights, T *reads,           \
                                 Py_ssize_t n, Py_ssize_t h, Py_ssize_t w)               \
{                                                                                        \
    DMEM_MS_CALL(read, s, (memory, weights, reads, n, h, w));                            \
}                                                                                        \
static void dmem_memory_read_backward_##s(const T *memory, const T *weights,            \
                                          const T *grad_reads, T *grad_memory,           \
                                          T *grad_weights, Py_ssize_t n, Py_ssize_t h,   \
                                          Py_ssize_t w)                                  \
{                                                                                        \
    DMEM_MS_CALL(read_backward, s, (memory, weights, grad_reads, grad_memory,           \
                                    grad_weights, n, h, w));                             \
}                                                                                        \
static void dmem_memory_write_##s(const T *memory, const T *weights, const T *erase,    \
                                  const T *add, T *out, Py_ssize_t n, Py_ssize_t h,      \
                                  Py_ssize_t w)                                          \
{                                                                                        \
    DMEM_MS_CALL(write, s, (memory, weights, erase, add, out, n, h, w));                 \
}                                                                                        \
static void dmem_memory_write_backward_##s(const T *memory, const T *weights,           \
                                           const T *erase, const T *add,                 \
                                           const T *grad_out, T *grad_memory,            \
                                           T *grad_weights, T *grad_erase, T *grad_add,  \
                                           T *scratch, Py_ssize_t n, Py_ssize_t h,       \
                                           Py_ssize_t w)                                 \
{                                                                                        \
    DMEM_MS_CALL(write_backward, s, (memory, weights, erase, add, grad_out, grad_memory, \
                                     grad_weights, grad_erase, grad_add, scratch, n, h,  \
                                     w));                                                \
}
DMEM_MS_ENTRY(double, d)
DMEM_MS_ENTRY(float, f)
#undef DMEM_MS_ENTRY

#endif /* DMEM_MEMORY_SIMD_H */

#else /* DMEM_MS_BODY: the functions of one (dtype, instruction set) */

#define T_ DMEM_MS_T
#define VT_ DMEM_MS_VT
#define L_ DMEM_MS_L
#define FN(name) DMEM_MS_CAT(name, DMEM_MS_SUFFIX, DMEM_MS_ISA)
#define ATTR_INLINE DMEM_MS_ATTR DMEM_INLINE

ATTR_INLINE VT_ FN(ld)(const T_ *p) { return *(const DMEM_MS_VTU *)p; }

ATTR_INLINE void FN(st)(T_ *p, VT_ v) { *(DMEM_MS_VTU *)p = v; }

ATTR_INLINE VT_ FN(splat)(T_ x) { return x - (VT_){0}; }

/* The first r (0 < r < L_) values at p; the other lanes 0.  Never touches
 * p[r] and beyond. */
ATTR_INLINE VT_ FN(ldp)(const T_ *p, Py_ssize_t r)
{
#if L_ == 1
    (void)r;
    return *p;
#elif defined(DMEM_MS_MASKED) && L_ == 8
    return (VT_)_mm512_maskz_loadu_pd((__mmask8)((1u << r) - 1u), (const void *)p);
#elif defined(DMEM_MS_MASKED)
    return (VT_)_mm512_maskz_loadu_ps((__mmask16)((1u << r) - 1u), (const void *)p);
#elif DMEM_X86 && L_ == 4 && DMEM_MS_DOUBLE
    return (VT_)_mm256_maskload_pd(p, _mm256_loadu_si256((const __m256i *)(dmem_ms_mask64 + 4 - r)));
#elif DMEM_X86 && L_ == 8
    return (VT_)_mm256_maskload_ps(p, _mm256_loadu_si256((const __m256i *)(dmem_ms_mask32 + 8 - r)));
#elif DMEM_X86 && L_ == 2
    (void)r;
    return (VT_)_mm_load_sd(p);
#elif DMEM_X86 && L_ == 4
    if (r == 1)
        return (VT_)_mm_load_ss(p);
    __m128 lo = _mm_castpd_ps(_mm_set_sd(*(const dmem_ms_pair *)p));
    return (VT_)(r == 2 ? lo : _mm_movelh_ps(lo, _mm_load_ss(p + 2)));
#else
    VT_ v = {0};
    for (Py_ssize_t i = 0; i < r; i++)
        v[i] = p[i];
    return v;
#endif
}

/* Store the first r (0 < r < L_) lanes of v at p; p[r] and beyond untouched. */
ATTR_INLINE void FN(stp)(T_ *p, VT_ v, Py_ssize_t r)
{
#if L_ == 1
    (void)r;
    *p = v;
#elif defined(DMEM_MS_MASKED) && L_ == 8
    _mm512_mask_storeu_pd((void *)p, (__mmask8)((1u << r) - 1u), (__m512d)v);
#elif defined(DMEM_MS_MASKED)
    _mm512_mask_storeu_ps((void *)p, (__mmask16)((1u << r) - 1u), (__m512)v);
#elif DMEM_X86 && L_ == 4 && DMEM_MS_DOUBLE
    _mm256_maskstore_pd(p, _mm256_loadu_si256((const __m256i *)(dmem_ms_mask64 + 4 - r)),
                        (__m256d)v);
#elif DMEM_X86 && L_ == 8
    _mm256_maskstore_ps(p, _mm256_loadu_si256((const __m256i *)(dmem_ms_mask32 + 8 - r)),
                        (__m256)v);
#elif DMEM_X86 && L_ == 2
    (void)r;
    _mm_store_sd(p, (__m128d)v);
#elif DMEM_X86 && L_ == 4
    if (r == 1) {
        _mm_store_ss(p, (__m128)v);
        return;
    }
    *(dmem_ms_pair *)p = _mm_cvtsd_f64(_mm_castps_pd((__m128)v));
    if (r == 3)
        _mm_store_ss(p + 2, _mm_movehl_ps((__m128)v, (__m128)v));
#else
    for (Py_ssize_t i = 0; i < r; i++)
        p[i] = v[i];
#endif
}

/* Sum of the lanes, halves added pairwise (a fixed order: lane i + lane
 * i + L/2, and so on down to one lane). */
ATTR_INLINE T_ FN(hsum)(VT_ v)
{
#if L_ == 1
    return v;
#elif DMEM_X86 && L_ == 8 && DMEM_MS_DOUBLE
    __m256d x = _mm256_add_pd(_mm512_castpd512_pd256((__m512d)v),
                              _mm512_extractf64x4_pd((__m512d)v, 1));
    __m128d y = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
    return _mm_cvtsd_f64(_mm_add_sd(y, _mm_unpackhi_pd(y, y)));
#elif DMEM_X86 && L_ == 4 && DMEM_MS_DOUBLE
    __m128d y = _mm_add_pd(_mm256_castpd256_pd128((__m256d)v),
                           _mm256_extractf128_pd((__m256d)v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(y, _mm_unpackhi_pd(y, y)));
#elif DMEM_X86 && L_ == 2 && DMEM_MS_DOUBLE
    __m128d y = (__m128d)v;
    return _mm_cvtsd_f64(_mm_add_sd(y, _mm_unpackhi_pd(y, y)));
#elif DMEM_X86 && !DMEM_MS_DOUBLE
    __m128 y;
#if L_ == 16
    __m512d d = _mm512_castps_pd((__m512)v);
    __m256 x = _mm256_add_ps(_mm256_castpd_ps(_mm512_castpd512_pd256(d)),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(d, 1)));
    y = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
#elif L_ == 8
    y = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
#else
    y = (__m128)v;
#endif
    y = _mm_add_ps(y, _mm_movehl_ps(y, y));
    return _mm_cvtss_f32(_mm_add_ss(y, _mm_shuffle_ps(y, y, 1)));
#else
    T_ a[L_];
    for (int i = 0; i < L_; i++)
        a[i] = v[i];
    for (int half = L_ / 2; half >= 1; half /= 2)
        for (int i = 0; i < half; i++)
            a[i] = a[i] + a[i + half];
    return a[0];
#endif
}

/* Vector j of a block: full, or partial (the last of the row) when part. */
#define LDJ(p, j, nb, part, r) (((part) && (j) == (nb) - 1) ? FN(ldp)(p, r) : FN(ld)(p))
#define STJ(p, v, j, nb, part, r) \
    do { if ((part) && (j) == (nb) - 1) FN(stp)(p, v, r); else FN(st)(p, v); } while (0)

/* ---- read ---- */

/* reads of heads 0..nh-1 (nh <= 2) at the nb (<= 4) vectors from value c of
 * the word, the last one of r values when part. */
ATTR_INLINE void FN(read_block)(const T_ *memory, const T_ *weights, T_ *reads,
                                Py_ssize_t n, Py_ssize_t w, Py_ssize_t c, const int nh,
                                const int nb, const int part, Py_ssize_t r)
{
    VT_ acc[2][4];
    for (int i = 0; i < nh; i++)
        for (int j = 0; j < nb; j++)
            acc[i][j] = (VT_){0};
    for (Py_ssize_t s = 0; s < n; s++) {
        const T_ *row = memory + s * w + c;
        VT_ x[4];
        for (int j = 0; j < nb; j++)
            x[j] = LDJ(row + j * L_, j, nb, part, r);
        for (int i = 0; i < nh; i++) {
            VT_ ws = FN(splat)(weights[i * n + s]);
            for (int j = 0; j < nb; j++)
                acc[i][j] += ws * x[j];
        }
    }
    for (int i = 0; i < nh; i++)
        for (int j = 0; j < nb; j++)
            STJ(reads + i * w + c + j * L_, acc[i][j], j, nb, part, r);
}

DMEM_MS_ATTR static void FN(read)(const T_ *memory, const T_ *weights, T_ *reads,
                                  Py_ssize_t n, Py_ssize_t h, Py_ssize_t w)
{
    Py_ssize_t r = w % L_, nc = w / L_ + (r > 0);
    for (Py_ssize_t h0 = 0; h0 < h; h0 += 2) {
        int nh = h - h0 >= 2 ? 2 : 1;
        for (Py_ssize_t j0 = 0; j0 < nc; j0 += 4) {
            int nb = nc - j0 >= 4 ? 4 : (int)(nc - j0);
            int part = r > 0 && j0 + nb == nc;
            const T_ *wh = weights + h0 * n;
            T_ *out = reads + h0 * w;
            Py_ssize_t c = j0 * L_;
#define DMEM_MS_READ_CASE(NH, NB, P) \
            case NH * 100 + NB * 10 + P: \
                FN(read_block)(memory, wh, out, n, w, c, NH, NB, P, r); break;
            switch (nh * 100 + nb * 10 + part) {
            DMEM_MS_READ_CASE(1, 1, 0) DMEM_MS_READ_CASE(1, 2, 0)
            DMEM_MS_READ_CASE(1, 3, 0) DMEM_MS_READ_CASE(1, 4, 0)
            DMEM_MS_READ_CASE(1, 1, 1) DMEM_MS_READ_CASE(1, 2, 1)
            DMEM_MS_READ_CASE(1, 3, 1) DMEM_MS_READ_CASE(1, 4, 1)
            DMEM_MS_READ_CASE(2, 1, 0) DMEM_MS_READ_CASE(2, 2, 0)
            DMEM_MS_READ_CASE(2, 3, 0) DMEM_MS_READ_CASE(2, 4, 0)
            DMEM_MS_READ_CASE(2, 1, 1) DMEM_MS_READ_CASE(2, 2, 1)
            DMEM_MS_READ_CASE(2, 3, 1) DMEM_MS_READ_CASE(2, 4, 1)
            default: break;
            }
#undef DMEM_MS_READ_CASE
        }
    }
}

/* dw of heads 0..nh-1 (nh <= 4) at slot `row`: g_h · M_n into out[i * n]. */
ATTR_INLINE void FN(read_dots)(const T_ *row, const T_ *grad_reads, T_ *out, Py_ssize_t n,
                               Py_ssize_t w, const int nh, Py_ssize_t nfull, Py_ssize_t r)
{
    VT_ acc[4];
    for (int i = 0; i < nh; i++)
        acc[i] = (VT_){0};
    for (Py_ssize_t j = 0; j < nfull; j++) {
        VT_ x = FN(ld)(row + j * L_);
        for (int i = 0; i < nh; i++)
            acc[i] += FN(ld)(grad_reads + i * w + j * L_) * x;
    }
    if (r > 0) {
        VT_ x = FN(ldp)(row + nfull * L_, r);
        for (int i = 0; i < nh; i++)
            acc[i] += FN(ldp)(grad_reads + i * w + nfull * L_, r) * x;
    }
    for (int i = 0; i < nh; i++)
        out[i * n] = FN(hsum)(acc[i]);
}

/* dM_n at vector c of the word: Σ_h w_{h,n} g_h, heads in order. */
ATTR_INLINE VT_ FN(read_grad_memory)(const T_ *weights, const T_ *grad_reads, Py_ssize_t n,
                                     Py_ssize_t h, Py_ssize_t w, Py_ssize_t c,
                                     const int part, Py_ssize_t r)
{
    VT_ g = part ? FN(ldp)(grad_reads + c, r) : FN(ld)(grad_reads + c);
    VT_ acc = FN(splat)(weights[0]) * g;
    for (Py_ssize_t i = 1; i < h; i++) {
        g = part ? FN(ldp)(grad_reads + i * w + c, r) : FN(ld)(grad_reads + i * w + c);
        acc += FN(splat)(weights[i * n]) * g;
    }
    return acc;
}

/* Slot s of a batch row with nh (<= 4) heads, in one pass over the word: dM_s
 * (heads in order) and the lanes of g_h · M_s into acc[h]. */
ATTR_INLINE void FN(read_backward_vector)(const T_ *row, const T_ *grad_reads, T_ *dm,
                                          const VT_ *wv, Py_ssize_t w, Py_ssize_t c,
                                          const int nh, const int part, Py_ssize_t r,
                                          VT_ *acc)
{
#define LD_(p) (part ? FN(ldp)(p, r) : FN(ld)(p))
    VT_ x = LD_(row + c), g = LD_(grad_reads + c);
    VT_ sum = wv[0] * g;
    acc[0] += g * x;
    for (int i = 1; i < nh; i++) {
        g = LD_(grad_reads + i * w + c);
        sum += wv[i] * g;
        acc[i] += g * x;
    }
    if (part)
        FN(stp)(dm + c, sum, r);
    else
        FN(st)(dm + c, sum);
#undef LD_
}

ATTR_INLINE void FN(read_backward_heads)(const T_ *memory, const T_ *weights,
                                         const T_ *grad_reads, T_ *grad_memory,
                                         T_ *grad_weights, Py_ssize_t n, Py_ssize_t w,
                                         const int nh)
{
    Py_ssize_t r = w % L_, nfull = w / L_;
    for (Py_ssize_t s = 0; s < n; s++) {
        VT_ wv[4], acc[4];
        for (int i = 0; i < nh; i++) {
            wv[i] = FN(splat)(weights[i * n + s]);
            acc[i] = (VT_){0};
        }
        for (Py_ssize_t j = 0; j < nfull; j++)
            FN(read_backward_vector)(memory + s * w, grad_reads, grad_memory + s * w, wv, w,
                                     j * L_, nh, 0, r, acc);
        if (r > 0)
            FN(read_backward_vector)(memory + s * w, grad_reads, grad_memory + s * w, wv, w,
                                     nfull * L_, nh, 1, r, acc);
        for (int i = 0; i < nh; i++)
            grad_weights[i * n + s] = FN(hsum)(acc[i]);
    }
}

DMEM_MS_ATTR static void FN(read_backward)(const T_ *memory, const T_ *weights,
                                           const T_ *grad_reads, T_ *grad_memory,
                                           T_ *grad_weights, Py_ssize_t n, Py_ssize_t h,
                                           Py_ssize_t w)
{
    Py_ssize_t r = w % L_, nfull = w / L_;
    switch (h) {
    case 1: FN(read_backward_heads)(memory, weights, grad_reads, grad_memory, grad_weights,
                                    n, w, 1); return;
    case 2: FN(read_backward_heads)(memory, weights, grad_reads, grad_memory, grad_weights,
                                    n, w, 2); return;
    case 3: FN(read_backward_heads)(memory, weights, grad_reads, grad_memory, grad_weights,
                                    n, w, 3); return;
    case 4: FN(read_backward_heads)(memory, weights, grad_reads, grad_memory, grad_weights,
                                    n, w, 4); return;
    default: break;
    }
    /* more than four heads: dM_s, then the dots four heads at a time */
    for (Py_ssize_t s = 0; s < n; s++) {
        const T_ *row = memory + s * w;
        T_ *dm = grad_memory + s * w;
        for (Py_ssize_t j = 0; j < nfull; j++)
            FN(st)(dm + j * L_, FN(read_grad_memory)(weights + s, grad_reads, n, h, w,
                                                     j * L_, 0, r));
        if (r > 0)
            FN(stp)(dm + nfull * L_, FN(read_grad_memory)(weights + s, grad_reads, n, h, w,
                                                          nfull * L_, 1, r), r);
        for (Py_ssize_t h0 = 0; h0 < h; h0 += 4) {
            const T_ *g = grad_reads + h0 * w;
            T_ *out = grad_weights + h0 * n + s;
            switch (h - h0 >= 4 ? 4 : (int)(h - h0)) {
            case 4: FN(read_dots)(row, g, out, n, w, 4, nfull, r); break;
            case 3: FN(read_dots)(row, g, out, n, w, 3, nfull, r); break;
            case 2: FN(read_dots)(row, g, out, n, w, 2, nfull, r); break;
            default: FN(read_dots)(row, g, out, n, w, 1, nfull, r); break;
            }
        }
    }
}

/* ---- write ---- */

/* out at slot s, vector c of the word: M ∘ Π_h q_h + Σ_h w_h a_h, heads in order. */
ATTR_INLINE void FN(write_vector)(const T_ *memory, const T_ *weights, const T_ *erase,
                                  const T_ *add, T_ *out, Py_ssize_t n, Py_ssize_t h,
                                  Py_ssize_t w, Py_ssize_t s, Py_ssize_t c, const int part,
                                  Py_ssize_t r)
{
    const VT_ one = FN(splat)(1);
    VT_ m = part ? FN(ldp)(memory + s * w + c, r) : FN(ld)(memory + s * w + c);
    VT_ e = part ? FN(ldp)(erase + c, r) : FN(ld)(erase + c);
    VT_ o = m * (one - FN(splat)(weights[s]) * e);
    for (Py_ssize_t i = 1; i < h; i++) {
        e = part ? FN(ldp)(erase + i * w + c, r) : FN(ld)(erase + i * w + c);
        o *= one - FN(splat)(weights[i * n + s]) * e;
    }
    for (Py_ssize_t i = 0; i < h; i++) {
        VT_ a = part ? FN(ldp)(add + i * w + c, r) : FN(ld)(add + i * w + c);
        o += FN(splat)(weights[i * n + s]) * a;
    }
    if (part)
        FN(stp)(out + s * w + c, o, r);
    else
        FN(st)(out + s * w + c, o);
}

/* Slot s with nh (<= 4) heads, the weights in registers (wv). */
ATTR_INLINE void FN(write_heads_vector)(const T_ *m_row, const VT_ *wv, const T_ *erase,
                                        const T_ *add, T_ *o_row, Py_ssize_t w, Py_ssize_t c,
                                        const int nh, const int part, Py_ssize_t r)
{
#define LD_(p) (part ? FN(ldp)(p, r) : FN(ld)(p))
    const VT_ one = FN(splat)(1);
    VT_ o = LD_(m_row + c) * (one - wv[0] * LD_(erase + c));
    for (int i = 1; i < nh; i++)
        o *= one - wv[i] * LD_(erase + i * w + c);
    for (int i = 0; i < nh; i++)
        o += wv[i] * LD_(add + i * w + c);
    if (part)
        FN(stp)(o_row + c, o, r);
    else
        FN(st)(o_row + c, o);
#undef LD_
}

ATTR_INLINE void FN(write_heads)(const T_ *memory, const T_ *weights, const T_ *erase,
                                 const T_ *add, T_ *out, Py_ssize_t n, Py_ssize_t w,
                                 const int nh)
{
    Py_ssize_t r = w % L_, nfull = w / L_;
    for (Py_ssize_t s = 0; s < n; s++) {
        VT_ wv[4];
        for (int i = 0; i < nh; i++)
            wv[i] = FN(splat)(weights[i * n + s]);
        for (Py_ssize_t j = 0; j < nfull; j++)
            FN(write_heads_vector)(memory + s * w, wv, erase, add, out + s * w, w, j * L_, nh,
                                   0, r);
        if (r > 0)
            FN(write_heads_vector)(memory + s * w, wv, erase, add, out + s * w, w, nfull * L_,
                                   nh, 1, r);
    }
}

DMEM_MS_ATTR static void FN(write)(const T_ *memory, const T_ *weights, const T_ *erase,
                                   const T_ *add, T_ *out, Py_ssize_t n, Py_ssize_t h,
                                   Py_ssize_t w)
{
    Py_ssize_t r = w % L_, nfull = w / L_;
    switch (h) {
    case 1: FN(write_heads)(memory, weights, erase, add, out, n, w, 1); return;
    case 2: FN(write_heads)(memory, weights, erase, add, out, n, w, 2); return;
    case 3: FN(write_heads)(memory, weights, erase, add, out, n, w, 3); return;
    case 4: FN(write_heads)(memory, weights, erase, add, out, n, w, 4); return;
    default: break;
    }
    for (Py_ssize_t s = 0; s < n; s++) {
        for (Py_ssize_t j = 0; j < nfull; j++)
            FN(write_vector)(memory, weights, erase, add, out, n, h, w, s, j * L_, 0, r);
        if (r > 0)
            FN(write_vector)(memory, weights, erase, add, out, n, h, w, s, nfull * L_, 1, r);
    }
}

/* Suffix products of slot s at vector c: scratch row i-1 = Π_{h'>=i} q_{h'}
 * for i = h-1 .. 1 (the last head needs none). */
ATTR_INLINE void FN(write_suffix)(const T_ *weights, const T_ *erase, T_ *scratch,
                                  Py_ssize_t n, Py_ssize_t h, Py_ssize_t w, Py_ssize_t s,
                                  Py_ssize_t c, const int part, Py_ssize_t r)
{
    const VT_ one = FN(splat)(1);
    VT_ p = one;
    for (Py_ssize_t i = h - 1; i > 0; i--) {
        VT_ e = part ? FN(ldp)(erase + i * w + c, r) : FN(ld)(erase + i * w + c);
        p *= one - FN(splat)(weights[i * n + s]) * e;
        if (part)
            FN(stp)(scratch + (i - 1) * w + c, p, r);
        else
            FN(st)(scratch + (i - 1) * w + c, p);
    }
}

/* Head i of slot s at vector c: t = g ∘ M ∘ (prefix ∘ suffix), de -= w t,
 * da += w g, returns the lanes of g a − e t; updates the prefix in dm (the
 * first head sets it, the last one replaces it by dM = g ∘ Π q). */
ATTR_INLINE VT_ FN(write_head)(const T_ *m_row, const T_ *g_row, const T_ *e, const T_ *a,
                               const T_ *suffix, T_ *dm, T_ *de, T_ *da, T_ ws,
                               const int first, const int last, const int part,
                               Py_ssize_t r)
{
#define LD_(p) (part ? FN(ldp)(p, r) : FN(ld)(p))
    const VT_ one = FN(splat)(1);
    VT_ wv = FN(splat)(ws);
    VT_ g = LD_(g_row), ev = LD_(e);
    VT_ q = one - wv * ev;
    VT_ t = g * LD_(m_row);
    VT_ pre = first ? q : LD_(dm);
    if (!first && !last)
        t = t * (pre * LD_(suffix));
    else if (!first)
        t = t * pre;
    else if (!last)
        t = t * LD_(suffix);
    VT_ next = first ? q : pre * q;
    if (last)
        next = g * next;
    VT_ dev = LD_(de) - wv * t;
    VT_ dav = LD_(da) + wv * g;
    VT_ dw = g * LD_(a) - ev * t;
#undef LD_
    if (part) {
        FN(stp)(dm, next, r);
        FN(stp)(de, dev, r);
        FN(stp)(da, dav, r);
    } else {
        FN(st)(dm, next);
        FN(st)(de, dev);
        FN(st)(da, dav);
    }
    return dw;
}

/* One head of slot s over the word; returns dw_h[s]. */
ATTR_INLINE T_ FN(write_head_row)(const T_ *m_row, const T_ *g_row, const T_ *e, const T_ *a,
                                  const T_ *suffix, T_ *dm, T_ *de, T_ *da, T_ ws,
                                  const int first, const int last, Py_ssize_t nfull,
                                  Py_ssize_t r)
{
    VT_ acc = {0};
    for (Py_ssize_t j = 0; j < nfull; j++) {
        Py_ssize_t c = j * L_;
        acc += FN(write_head)(m_row + c, g_row + c, e + c, a + c, suffix + c, dm + c, de + c,
                              da + c, ws, first, last, 0, r);
    }
    if (r > 0) {
        Py_ssize_t c = nfull * L_;
        acc += FN(write_head)(m_row + c, g_row + c, e + c, a + c, suffix + c, dm + c, de + c,
                              da + c, ws, first, last, 1, r);
    }
    return FN(hsum)(acc);
}

/* All nh (<= 4) heads of ns (1 or 2) consecutive slots at vector c, in
 * registers: q_h, the suffix and prefix products, t_h; writes dM, adds the
 * lanes of g a_h − e_h t_h to acc[k][h] (slot k) and accumulates de_h, da_h
 * over the slots in order, loading and storing them once for the ns slots
 * (the same operations, in the same order, as one slot at a time, and as
 * write_head over the heads). */
ATTR_INLINE void FN(write_backward_vector)(const T_ *m_row, const T_ *g_row, const T_ *weights,
                                           const T_ *erase, const T_ *add, T_ *dm, T_ *de,
                                           T_ *da, Py_ssize_t n, Py_ssize_t w, Py_ssize_t c,
                                           const int nh, const int ns, const int part,
                                           Py_ssize_t r, VT_ (*acc)[4], VT_ *de_part,
                                           VT_ *da_part)
{
#define LD_(p) (part ? FN(ldp)(p, r) : FN(ld)(p))
    const VT_ one = FN(splat)(1);
    VT_ e[4], dev[4], dav[4];
    for (int i = 0; i < nh; i++) {
        e[i] = LD_(erase + i * w + c);
        /* a partial last vector is kept in registers over the slots (a
         * masked store does not forward to the next slots' load) */
        dev[i] = part ? de_part[i] : FN(ld)(de + i * w + c);
        dav[i] = part ? da_part[i] : FN(ld)(da + i * w + c);
    }
    for (int k = 0; k < ns; k++) {
        VT_ wv[4], q[4], suffix[4], pre = one;
        VT_ g = LD_(g_row + k * w + c), gm = g * LD_(m_row + k * w + c);
        for (int i = 0; i < nh; i++) {
            wv[i] = FN(splat)(weights[i * n + k]);
            q[i] = one - wv[i] * e[i];
        }
        {
            VT_ p = one;
            for (int i = nh - 1; i > 0; i--) {
                p *= q[i];
                suffix[i - 1] = p;
            }
        }
        for (int i = 0; i < nh; i++) {
            VT_ t = gm;
            if (i > 0 && i < nh - 1)
                t = t * (pre * suffix[i]);
            else if (i > 0)
                t = t * pre;
            else if (i < nh - 1)
                t = t * suffix[0];
            pre = i == 0 ? q[0] : pre * q[i];
            dev[i] = dev[i] - wv[i] * t;
            dav[i] = dav[i] + wv[i] * g;
            acc[k][i] += g * LD_(add + i * w + c) - e[i] * t;
        }
        if (part)
            FN(stp)(dm + k * w + c, g * pre, r);
        else
            FN(st)(dm + k * w + c, g * pre);
    }
    for (int i = 0; i < nh; i++) {
        if (part) {
            de_part[i] = dev[i];
            da_part[i] = dav[i];
        } else {
            FN(st)(de + i * w + c, dev[i]);
            FN(st)(da + i * w + c, dav[i]);
        }
    }
#undef LD_
}

/* Slots s .. s + ns - 1 (ns = 1 or 2) over the word. */
ATTR_INLINE void FN(write_backward_slots)(const T_ *memory, const T_ *weights, const T_ *erase,
                                          const T_ *add, const T_ *grad_out, T_ *grad_memory,
                                          T_ *grad_weights, T_ *grad_erase, T_ *grad_add,
                                          Py_ssize_t n, Py_ssize_t w, Py_ssize_t s,
                                          const int nh, const int ns, Py_ssize_t nfull,
                                          Py_ssize_t r, VT_ *de_part, VT_ *da_part)
{
    const T_ *m_row = memory + s * w, *g_row = grad_out + s * w;
    T_ *dm = grad_memory + s * w;
    VT_ acc[2][4];
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < nh; i++)
            acc[k][i] = (VT_){0};
    for (Py_ssize_t j = 0; j < nfull; j++)
        FN(write_backward_vector)(m_row, g_row, weights + s, erase, add, dm, grad_erase,
                                  grad_add, n, w, j * L_, nh, ns, 0, r, acc, de_part, da_part);
    if (r > 0)
        FN(write_backward_vector)(m_row, g_row, weights + s, erase, add, dm, grad_erase,
                                  grad_add, n, w, nfull * L_, nh, ns, 1, r, acc, de_part,
                                  da_part);
    for (int k = 0; k < ns; k++)
        for (int i = 0; i < nh; i++)
            grad_weights[i * n + s + k] = FN(hsum)(acc[k][i]);
}

/* The write backward of a batch row with nh (<= 4) heads: two slots at a
 * time, the word vector by vector, every head in registers. */
ATTR_INLINE void FN(write_backward_heads)(const T_ *memory, const T_ *weights, const T_ *erase,
                                          const T_ *add, const T_ *grad_out, T_ *grad_memory,
                                          T_ *grad_weights, T_ *grad_erase, T_ *grad_add,
                                          Py_ssize_t n, Py_ssize_t w, const int nh)
{
    Py_ssize_t r = w % L_, nfull = w / L_, s;
    VT_ de_part[4], da_part[4];
    for (int i = 0; i < nh; i++)
        de_part[i] = da_part[i] = (VT_){0};
    for (s = 0; s + 2 <= n; s += 2)
        FN(write_backward_slots)(memory, weights, erase, add, grad_out, grad_memory,
                                 grad_weights, grad_erase, grad_add, n, w, s, nh, 2, nfull, r,
                                 de_part, da_part);
    if (s < n)
        FN(write_backward_slots)(memory, weights, erase, add, grad_out, grad_memory,
                                 grad_weights, grad_erase, grad_add, n, w, s, nh, 1, nfull, r,
                                 de_part, da_part);
    if (r > 0)
        for (int i = 0; i < nh; i++) {
            FN(stp)(grad_erase + i * w + nfull * L_, de_part[i], r);
            FN(stp)(grad_add + i * w + nfull * L_, da_part[i], r);
        }
}

DMEM_MS_ATTR static void FN(write_backward)(const T_ *memory, const T_ *weights,
                                            const T_ *erase, const T_ *add,
                                            const T_ *grad_out, T_ *grad_memory,
                                            T_ *grad_weights, T_ *grad_erase, T_ *grad_add,
                                            T_ *scratch, Py_ssize_t n, Py_ssize_t h,
                                            Py_ssize_t w)
{
    Py_ssize_t r = w % L_, nfull = w / L_;
    for (Py_ssize_t k = 0; k < h * w; k++) {
        grad_erase[k] = 0;
        grad_add[k] = 0;
    }
    switch (h) {
    case 1: FN(write_backward_heads)(memory, weights, erase, add, grad_out, grad_memory,
                                     grad_weights, grad_erase, grad_add, n, w, 1); return;
    case 2: FN(write_backward_heads)(memory, weights, erase, add, grad_out, grad_memory,
                                     grad_weights, grad_erase, grad_add, n, w, 2); return;
    case 3: FN(write_backward_heads)(memory, weights, erase, add, grad_out, grad_memory,
                                     grad_weights, grad_erase, grad_add, n, w, 3); return;
    case 4: FN(write_backward_heads)(memory, weights, erase, add, grad_out, grad_memory,
                                     grad_weights, grad_erase, grad_add, n, w, 4); return;
    default: break;
    }
    /* more than four heads: one pass over the word per head */
    for (Py_ssize_t s = 0; s < n; s++) {
        const T_ *m_row = memory + s * w, *g_row = grad_out + s * w;
        T_ *dm = grad_memory + s * w;
        for (Py_ssize_t j = 0; j < nfull; j++)
            FN(write_suffix)(weights, erase, scratch, n, h, w, s, j * L_, 0, r);
        if (r > 0)
            FN(write_suffix)(weights, erase, scratch, n, h, w, s, nfull * L_, 1, r);
        for (Py_ssize_t i = 0; i < h; i++) {
            const T_ *e = erase + i * w, *a = add + i * w, *suffix = scratch + i * w;
            T_ *de = grad_erase + i * w, *da = grad_add + i * w;
            T_ ws = weights[i * n + s], dw;
            if (h == 1)
                dw = FN(write_head_row)(m_row, g_row, e, a, suffix, dm, de, da, ws, 1, 1,
                                        nfull, r);
            else if (i == 0)
                dw = FN(write_head_row)(m_row, g_row, e, a, suffix, dm, de, da, ws, 1, 0,
                                        nfull, r);
            else if (i == h - 1)
                dw = FN(write_head_row)(m_row, g_row, e, a, suffix, dm, de, da, ws, 0, 1,
                                        nfull, r);
            else
                dw = FN(write_head_row)(m_row, g_row, e, a, suffix, dm, de, da, ws, 0, 0,
                                        nfull, r);
            grad_weights[i * n + s] = dw;
        }
    }
}

#undef LDJ
#undef STJ
#undef ATTR_INLINE
#undef FN
#undef T_
#undef VT_
#undef L_
#undef DMEM_MS_T
#undef DMEM_MS_SUFFIX
#undef DMEM_MS_DOUBLE
#undef DMEM_MS_L
#undef DMEM_MS_VT
#undef DMEM_MS_VTU

#endif /* DMEM_MS_BODY */
