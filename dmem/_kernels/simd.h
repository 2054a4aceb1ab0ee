/*
 * dmem: what the SIMD loops of the kernels share (linkage_simd.h,
 * allocation_simd.h; memory_simd.h and addressing_simd.h for the CPU levels):
 * the vector types of GCC/clang vector extensions, the
 * instruction sets a loop is compiled for, and the CPU's support for them.
 *
 * Levels: 0 the build's baseline ISA (SSE2 on x86-64, NEON on aarch64), 1
 * AVX2 + FMA, 2 AVX-512 F/VL/DQ (with AVX2 and FMA).  On x86 with GCC or clang,
 * simd_levels.h compiles a loop file once per level and dtype through function
 * attributes, so no -march flag is needed and the extension runs on any
 * x86-64; a family of loops keeps its own level in force (set at import to the
 * widest the CPU has, lowered by tests).  Elsewhere only level 0 exists, and
 * compilers without vector extensions get scalar loops.
 */

#ifndef DMEM_SIMD_H
#define DMEM_SIMD_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* DMEM_NO_VECTORS (define it to build): the scalar loops, for tests. */
#if defined(__GNUC__) && !defined(DMEM_NO_VECTORS)
#define DMEM_VECTORS 1
#define DMEM_RESTRICT __restrict__
#define DMEM_INLINE static inline __attribute__((always_inline))
#define DMEM_MAYBE_UNUSED __attribute__((unused))
#else
#define DMEM_VECTORS 0
#define DMEM_RESTRICT
#define DMEM_INLINE static inline
#define DMEM_MAYBE_UNUSED
#endif

/* x86 with SSE2: the intrinsics (non-temporal stores, AVX-512 lane moves). */
#if DMEM_VECTORS && (defined(__x86_64__) || defined(__i386__)) && defined(__SSE2__)
#define DMEM_X86 1
#include <immintrin.h>
#else
#define DMEM_X86 0
#endif

/* Levels 1 and 2 are compiled (x86 with GCC/clang). */
#if DMEM_X86 && !defined(DMEM_NO_SIMD_DISPATCH)
#define DMEM_SIMD_DISPATCH 1
#else
#define DMEM_SIMD_DISPATCH 0
#endif

#define DMEM_ATTR_AVX2 __attribute__((target("avx2,fma")))
#define DMEM_ATTR_AVX512 __attribute__((target("avx512f,avx512vl,avx512dq,avx2,fma")))

#if DMEM_VECTORS
/* 16-byte vectors for the baseline ISA, 32-byte ones for AVX2, 64-byte ones
 * for AVX-512; the _u types for loads and stores at any element address. */
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

/* The widest level this CPU (and OS) supports: 2, 1 or 0. */
static DMEM_MAYBE_UNUSED int dmem_simd_supported(void)
{
#if DMEM_SIMD_DISPATCH
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

/* The level asked for, or the widest supported one below it (0 for < 0). */
static DMEM_MAYBE_UNUSED int dmem_simd_level(int asked)
{
    int best = dmem_simd_supported();
    return asked < 0 ? 0 : (asked > best ? best : asked);
}

/* Call the version of loop `fn` (dmem_<fn>_<suffix>_<isa>) for `level`. */
#if DMEM_SIMD_DISPATCH
#define DMEM_SIMD_CALL(level, fn, suffix, args)                                 \
    ((level) == 2 ? dmem_##fn##_##suffix##_avx512 args                          \
     : (level) == 1 ? dmem_##fn##_##suffix##_avx2 args                          \
     : dmem_##fn##_##suffix##_base args)
#else
#define DMEM_SIMD_CALL(level, fn, suffix, args) (dmem_##fn##_##suffix##_base args)
#endif

#endif /* DMEM_SIMD_H */
