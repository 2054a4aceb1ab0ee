/*
 * Part of simd_levels.h: the loop file DMEM_SIMD_IMPL for one dtype and level,
 * between the short names of simd_begin.h and their end; then the dtype's
 * parameters are undefined for the next block.  Not meant to be included on
 * its own.
 */
#include "simd_begin.h"
#include DMEM_SIMD_IMPL
#include "simd_end.h"
#undef DMEM_T
#undef DMEM_T_SIZE
#undef DMEM_SUFFIX
#undef DMEM_V
#undef DMEM_VT
#undef DMEM_VTU
#undef DMEM_STREAM
