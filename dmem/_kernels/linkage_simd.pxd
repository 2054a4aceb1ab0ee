# The C link kernels of linkage_simd.h (baseline and AVX2/FMA loops, chosen at run
# time), declared once for every module that calls them (linkage, dnc_step).
# Each module compiles its own copy of the header, so each sets its own SIMD level.

cdef extern from "linkage_simd.h" nogil:
    int dmem_link_forward_d(int level, const double* lp, const double* pp, const double* w,
                            const double* wr, double* L, double* f, double* bw,
                            Py_ssize_t n, Py_ssize_t nr, int nt)
    int dmem_link_forward_f(int level, const float* lp, const float* pp, const float* w,
                            const float* wr, float* L, float* f, float* bw,
                            Py_ssize_t n, Py_ssize_t nr, int nt)
    int dmem_link_backward_d(int level, const double* lp, const double* pp, const double* w,
                             const double* wr, const double* dL, const double* df,
                             const double* db, double* dlp, double* dw, double* dpp,
                             double* dwr, Py_ssize_t n, Py_ssize_t nr, int nt)
    int dmem_link_backward_f(int level, const float* lp, const float* pp, const float* w,
                             const float* wr, const float* dL, const float* df,
                             const float* db, float* dlp, float* dw, float* dpp,
                             float* dwr, Py_ssize_t n, Py_ssize_t nr, int nt)
    int dmem_temporal_forward_d(int level, const double* L, const double* wr, double* f, double* bw,
                                Py_ssize_t n, Py_ssize_t nr)
    int dmem_temporal_forward_f(int level, const float* L, const float* wr, float* f, float* bw,
                                Py_ssize_t n, Py_ssize_t nr)
    int dmem_temporal_backward_d(int level, const double* L, const double* wr, const double* df,
                                 const double* db, double* dL, double* dwr, Py_ssize_t n,
                                 Py_ssize_t nr, int nt)
    int dmem_temporal_backward_f(int level, const float* L, const float* wr, const float* df,
                                 const float* db, float* dL, float* dwr, Py_ssize_t n,
                                 Py_ssize_t nr, int nt)
    int dmem_linkage_simd_supported()
    int dmem_linkage_set_simd(int level)
    int dmem_linkage_get_simd()
