# The per-row fused write weighting of allocation.pyx (usage, allocation and
# the DNC's write weighting; documented there), for the fused DNC step
# (dnc_step.pyx).  One batch row of arrays already validated by the caller,
# called from nogil code.

from cython cimport floating
from libc.stdint cimport int64_t


cdef void _write_weights_row(const floating* usage_prev, const floating* write_prev,
                             const floating* read_prev, const floating* free_gates,
                             floating allocation_gate, floating write_gate,
                             const floating* content, floating* usage,
                             floating* allocation, int64_t* order, floating* prefix,
                             int64_t* tmp, floating* write_weights, Py_ssize_t N,
                             Py_ssize_t R) noexcept nogil

cdef void _write_weights_backward_row(
        const floating* usage_prev, const floating* write_prev, const floating* read_prev,
        const floating* free_gates, floating allocation_gate, floating write_gate,
        const floating* content, const floating* usage, const floating* allocation,
        const int64_t* order, const floating* prefix, const floating* grad_write_weights,
        const floating* grad_usage, floating* grad_usage_prev, floating* grad_write_prev,
        floating* grad_read_prev, floating* grad_free, floating* grad_allocation_gate,
        floating* grad_write_gate, floating* grad_content, floating* work,
        Py_ssize_t N, Py_ssize_t R) noexcept nogil
