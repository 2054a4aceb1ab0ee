/*
 * Part of simd.h: compile the loop file named by DMEM_SIMD_IMPL (a string) once
 * per dtype and level.  For each, these are defined before the file is
 * included, and undefined after:
 *
 *   DMEM_T        double or float;  DMEM_T_SIZE  8 or 4;  DMEM_SUFFIX  d or f
 *   DMEM_V        lanes per vector (1 without vector extensions)
 *   DMEM_VT       the vector type, DMEM_VTU the same for any element address
 *   DMEM_ATTR     the function attribute of the level (empty for the baseline)
 *   DMEM_ISA      base, avx2 or avx512 (part of the functions' names)
 *   DMEM_STREAM   (x86) DMEM_STREAM(p, v): a non-temporal store of vector v at
 *                 p, aligned to 16 bytes at least, when DMEM_STREAM_OK(p)
 *
 * and the loop file has the short names and vector helpers of simd_begin.h.
 * Include after simd.h, with DMEM_SIMD_IMPL defined; it is undefined here.
 */

#if DMEM_X86
#define DMEM_STREAM_OK(p) ((((size_t)(p)) & 15) == 0)
#endif

/* ---- level 0: the build's baseline ISA ---- */
#define DMEM_ATTR
#define DMEM_ISA base
#define DMEM_T double
#define DMEM_T_SIZE 8
#define DMEM_SUFFIX d
#if DMEM_VECTORS
#define DMEM_V 2
#define DMEM_VT dmem_vd2
#define DMEM_VTU dmem_vd2_u
#else
#define DMEM_V 1
#define DMEM_VT double
#define DMEM_VTU double
#endif
#if DMEM_X86
#define DMEM_STREAM(p, v) _mm_stream_pd((p), (__m128d)(v))
#endif
#include "simd_one.h"

#define DMEM_T float
#define DMEM_T_SIZE 4
#define DMEM_SUFFIX f
#if DMEM_VECTORS
#define DMEM_V 4
#define DMEM_VT dmem_vf4
#define DMEM_VTU dmem_vf4_u
#else
#define DMEM_V 1
#define DMEM_VT float
#define DMEM_VTU float
#endif
#if DMEM_X86
#define DMEM_STREAM(p, v) _mm_stream_ps((p), (__m128)(v))
#endif
#include "simd_one.h"
#undef DMEM_ATTR
#undef DMEM_ISA

#if DMEM_SIMD_DISPATCH
/* ---- level 1: AVX2 + FMA ---- */
#define DMEM_ATTR DMEM_ATTR_AVX2
#define DMEM_ISA avx2
#define DMEM_T double
#define DMEM_T_SIZE 8
#define DMEM_SUFFIX d
#define DMEM_V 4
#define DMEM_VT dmem_vd4
#define DMEM_VTU dmem_vd4_u
#define DMEM_STREAM(p, v)                                                      \
    (_mm_stream_pd((p), _mm256_castpd256_pd128((__m256d)(v))),                 \
     _mm_stream_pd((p) + 2, _mm256_extractf128_pd((__m256d)(v), 1)))
#include "simd_one.h"

#define DMEM_T float
#define DMEM_T_SIZE 4
#define DMEM_SUFFIX f
#define DMEM_V 8
#define DMEM_VT dmem_vf8
#define DMEM_VTU dmem_vf8_u
#define DMEM_STREAM(p, v)                                                      \
    (_mm_stream_ps((p), _mm256_castps256_ps128((__m256)(v))),                  \
     _mm_stream_ps((p) + 4, _mm256_extractf128_ps((__m256)(v), 1)))
#include "simd_one.h"
#undef DMEM_ATTR
#undef DMEM_ISA

/* ---- level 2: AVX-512 F/VL/DQ (+ AVX2, FMA) ---- */
#define DMEM_ATTR DMEM_ATTR_AVX512
#define DMEM_ISA avx512
#define DMEM_T double
#define DMEM_T_SIZE 8
#define DMEM_SUFFIX d
#define DMEM_V 8
#define DMEM_VT dmem_vd8
#define DMEM_VTU dmem_vd8_u
#define DMEM_STREAM(p, v)                                                      \
    (_mm_stream_pd((p), _mm512_extractf64x2_pd((__m512d)(v), 0)),              \
     _mm_stream_pd((p) + 2, _mm512_extractf64x2_pd((__m512d)(v), 1)),          \
     _mm_stream_pd((p) + 4, _mm512_extractf64x2_pd((__m512d)(v), 2)),          \
     _mm_stream_pd((p) + 6, _mm512_extractf64x2_pd((__m512d)(v), 3)))
#include "simd_one.h"

#define DMEM_T float
#define DMEM_T_SIZE 4
#define DMEM_SUFFIX f
#define DMEM_V 16
#define DMEM_VT dmem_vf16
#define DMEM_VTU dmem_vf16_u
#define DMEM_STREAM(p, v)                                                      \
    (_mm_stream_ps((p), _mm512_extractf32x4_ps((__m512)(v), 0)),               \
     _mm_stream_ps((p) + 4, _mm512_extractf32x4_ps((__m512)(v), 1)),           \
     _mm_stream_ps((p) + 8, _mm512_extractf32x4_ps((__m512)(v), 2)),           \
     _mm_stream_ps((p) + 12, _mm512_extractf32x4_ps((__m512)(v), 3)))
#include "simd_one.h"
#undef DMEM_ATTR
#undef DMEM_ISA
#endif

#if DMEM_X86
#undef DMEM_STREAM_OK
#endif
#undef DMEM_SIMD_IMPL
/* the vector helpers of simd_begin.h exist now for every level */
#define DMEM_SIMD_HELPERS_DONE
