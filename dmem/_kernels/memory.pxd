# The per-row read and write kernels of memory.pyx (documented there), for the
# fused DNC step (dnc_step.pyx).  Each works on one batch row of arrays already
# validated by its caller, and is called from nogil code.

from cython cimport floating


cdef void _read_row(const floating* memory, const floating* weights,
                    floating* reads, Py_ssize_t N, Py_ssize_t H,
                    Py_ssize_t W) noexcept nogil

cdef void _read_backward_row(const floating* memory, const floating* weights,
                             const floating* grad_reads, floating* grad_memory,
                             floating* grad_weights, Py_ssize_t N, Py_ssize_t H,
                             Py_ssize_t W) noexcept nogil

cdef void _write_row(const floating* memory, const floating* weights,
                     const floating* erase, const floating* add, floating* out,
                     Py_ssize_t N, Py_ssize_t H, Py_ssize_t W) noexcept nogil

cdef void _write_backward_row(const floating* memory, const floating* weights,
                              const floating* erase, const floating* add,
                              const floating* grad_out, floating* grad_memory,
                              floating* grad_weights, floating* grad_erase,
                              floating* grad_add, floating* scratch,
                              Py_ssize_t N, Py_ssize_t H, Py_ssize_t W) noexcept nogil
