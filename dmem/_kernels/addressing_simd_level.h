/*
 * Part of addressing_simd.h: the functions of one instruction set, for double
 * and float.  The includer defines DMEM_CW_ATTR, DMEM_CW_ISA, DMEM_CW_V and
 * the vector types (and, where they apply, DMEM_CW_SQRT and DMEM_CW_MASKED)
 * with DMEM_CW_BODY set; they are undefined here afterwards.  Not meant to be
 * included on its own.
 */

#define DMEM_CW_T double
#define DMEM_CW_SUFFIX d
#define DMEM_CW_DOUBLE 1
#include "addressing_simd.h"
#undef DMEM_CW_DOUBLE
#undef DMEM_CW_T
#undef DMEM_CW_SUFFIX
#define DMEM_CW_T float
#define DMEM_CW_SUFFIX f
#include "addressing_simd.h"
#undef DMEM_CW_T
#undef DMEM_CW_SUFFIX
#undef DMEM_CW_ATTR
#undef DMEM_CW_ISA
#undef DMEM_CW_V
#undef DMEM_CW_VT
#undef DMEM_CW_VTU
#undef DMEM_CW_FVTU
#undef DMEM_CW_FVT
#undef DMEM_CW_VI
#undef DMEM_CW_VU
#ifdef DMEM_CW_SQRT
#undef DMEM_CW_SQRT
#endif
#ifdef DMEM_CW_MASKED
#undef DMEM_CW_MASKED
#endif
