"""Build facts of the compiled extension: OpenMP and thread counts."""

cimport cython
from cython.parallel cimport prange
cimport openmp


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(_compiled_with_openmp())


cdef bint _compiled_with_openmp():
    # The preprocessor symbol _OPENMP is defined only when -fopenmp is on.
    return _openmp_macro() != 0


cdef extern from *:
    """
    #ifdef _OPENMP
    static int _openmp_macro(void) { return 1; }
    #else
    static int _openmp_macro(void) { return 0; }
    #endif
    """
    int _openmp_macro() nogil


def max_threads():
    """Threads the OpenMP runtime would use by default (1 without OpenMP)."""
    if not _compiled_with_openmp():
        return 1
    return openmp.omp_get_max_threads()


@cython.boundscheck(True)
def parallel_sum(double[::1] x, int num_threads=1):
    """Sum of ``x`` over a ``prange`` loop: a smoke test of the parallel build."""
    cdef double total = 0.0
    cdef Py_ssize_t i
    for i in prange(x.shape[0], nogil=True, schedule="static", num_threads=num_threads):
        total += x[i]
    return total
