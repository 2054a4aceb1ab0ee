/* Part of simd_levels.h, after each loop file: see simd_begin.h. */
#undef T_
#undef V_
#undef VT_
#undef LD_
#undef ST_
#undef ZLANE_
#undef FN
#undef DMEM_NAME_
#undef DMEM_NAME__
