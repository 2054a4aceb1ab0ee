/*
 * Part of simd_levels.h, before each loop file: short names for the loop
 * file's parameters, and (once per translation unit and level) the vector
 * helpers every loop file may use:
 *
 *   T_, V_, VT_     the element type, lanes per vector, the vector type
 *   FN(name)        dmem_<name>_<suffix>_<isa>, the name of a function here
 *   LD_(p), ST_(p, v)  a whole vector at any element address
 *   ZLANE_(v, l)    set lane l of v to 0
 *   FN(v_splat)(s)  a vector of s;  FN(v_hsum)(v)  the sum of the lanes, in a
 *                   fixed order;  FN(v_load)(p, m), FN(v_store)(p, v, m)  the
 *                   first m lanes (m == V_: a whole vector; loads fill zeros)
 *
 * simd_end.h undefines the short names.  Not meant to be included on its own.
 */

#define T_ DMEM_T
#define V_ DMEM_V
#define DMEM_NAME__(name, suffix, isa) dmem_##name##_##suffix##_##isa
#define DMEM_NAME_(name, suffix, isa) DMEM_NAME__(name, suffix, isa)
#define FN(name) DMEM_NAME_(name, DMEM_SUFFIX, DMEM_ISA)

#if DMEM_VECTORS
#define VT_ DMEM_VT
#define LD_(p) (*(const DMEM_VTU *)(p))
#define ST_(p, v) (*(DMEM_VTU *)(p) = (v))
#define ZLANE_(v, l) ((v)[l] = 0)
#else
#define VT_ DMEM_T
#define LD_(p) (*(p))
#define ST_(p, v) (*(p) = (v))
#define ZLANE_(v, l) ((v) = 0)
#endif

#ifndef DMEM_SIMD_HELPERS_DONE

/* s in every lane: s − 0 is s exactly (−0 too), and a scalar operand of a
 * vector operation is broadcast (one instruction; a loop over the lanes
 * compiled to one masked broadcast per lane on AVX-512). */
DMEM_INLINE DMEM_ATTR VT_ FN(v_splat)(T_ s)
{
#if DMEM_VECTORS
    const VT_ zero = {0};
    return s - zero;
#else
    return s;
#endif
}

/* Sum of the lanes, pairwise in a fixed order. */
DMEM_INLINE DMEM_ATTR T_ FN(v_hsum)(VT_ v)
{
#if !DMEM_VECTORS
    return v;
#elif DMEM_V == 2
    return v[0] + v[1];
#elif DMEM_V == 4
    return (v[0] + v[1]) + (v[2] + v[3]);
#elif DMEM_V == 8
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
#else
    return (((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])))
           + (((v[8] + v[9]) + (v[10] + v[11])) + ((v[12] + v[13]) + (v[14] + v[15])));
#endif
}

/* The first m lanes from p (m == V_: a plain load), zeros after. */
DMEM_INLINE DMEM_ATTR VT_ FN(v_load)(const T_ *p, Py_ssize_t m)
{
    T_ tmp[V_];
    Py_ssize_t l;
    if (m == V_)
        return LD_(p);
    for (l = 0; l < V_; l++)
        tmp[l] = l < m ? p[l] : (T_)0;
    return LD_(tmp);
}

/* Store the first m lanes of v at p. */
DMEM_INLINE DMEM_ATTR void FN(v_store)(T_ *p, VT_ v, Py_ssize_t m)
{
    T_ tmp[V_];
    Py_ssize_t l;
    if (m == V_) {
        ST_(p, v);
        return;
    }
    ST_(tmp, v);
    for (l = 0; l < m; l++)
        p[l] = tmp[l];
}

#endif /* DMEM_SIMD_HELPERS_DONE */
