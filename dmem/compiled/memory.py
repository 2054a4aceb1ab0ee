"""Compiled memory reads and writes: validated wrappers around ``dmem._kernels.memory``.

Shapes: ``B`` batch, ``N`` memory slots, ``W`` word size, ``H`` heads.  See
:mod:`dmem.reference.memory` for the equations.
"""

from .._kernels import memory as _kernel_module
from ._common import Saved, by_dtype, backward_inputs, empty, forward_inputs, op_threads, output

_kernels = by_dtype(_kernel_module)


def read_forward(memory, weights):
    """Read vectors ``r_h = Σ_i w_{h,i} M_i``.

    memory `(B, N, W)`, weights `(B, H, N)` -> ``(reads (B, H, W), saved)``.
    """
    arrays, sizes = forward_inputs("read", (memory, weights))
    memory, weights = arrays
    reads = empty((sizes["B"], sizes["H"], sizes["W"]), sizes["dtype"])
    _kernels[memory.dtype].read_forward(memory, weights, reads,
                          num_threads=op_threads(sizes["B"], reads.size * sizes["N"]))
    return reads, Saved("read", arrays, None, sizes)


def read_backward(saved, grad_reads):
    """Gradients of ``read``: grad_reads `(B, H, W)` -> (memory `(B, N, W)`, weights `(B, H, N)`)."""
    (grad_reads,), (memory, weights) = backward_inputs("read", saved, (grad_reads,), ("BNW", "BHN"))
    grad_memory = output(memory.shape, memory.dtype)
    grad_weights = empty(weights.shape, weights.dtype)
    _kernels[memory.dtype].read_backward(memory, weights, grad_reads, grad_memory, grad_weights,
                           num_threads=op_threads(memory.shape[0],
                                                  2 * weights.size * memory.shape[2]))
    return grad_memory, grad_weights


def write_forward(memory, weights, erase, add):
    """Memory after a write, ``M ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ``.

    memory `(B, N, W)`, weights `(B, H, N)`, erase `(B, H, W)`, add `(B, H, W)`
    -> ``(memory (B, N, W), saved)``.
    """
    arrays, sizes = forward_inputs("write", (memory, weights, erase, add))
    memory, weights, erase, add = arrays
    out = output(memory.shape, sizes["dtype"])
    _kernels[memory.dtype].write_forward(memory, weights, erase, add, out,
                          num_threads=op_threads(sizes["B"], 2 * weights.size * sizes["W"]))
    return out, Saved("write", arrays, None, sizes)


def write_backward(saved, grad_memory):
    """Gradients of ``write``: grad_memory `(B, N, W)` -> (memory `(B, N, W)`,
    weights `(B, H, N)`, erase `(B, H, W)`, add `(B, H, W)`)."""
    (grad_out,), (memory, weights, erase, add) = backward_inputs(
        "write", saved, (grad_memory,), ("BNW", "BHN", "BHW", "BHW"))
    dtype = memory.dtype
    grads = (
        output(memory.shape, dtype),
        empty(weights.shape, dtype),
        empty(erase.shape, dtype),
        empty(add.shape, dtype),
    )
    work = empty((erase.shape[0], erase.shape[1] + 1, erase.shape[2]), dtype)
    _kernels[memory.dtype].write_backward(memory, weights, erase, add, grad_out, *grads, work,
                            num_threads=op_threads(memory.shape[0],
                                                   6 * weights.size * memory.shape[2]))
    return grads


__all__ = ["read_forward", "read_backward", "write_forward", "write_backward"]
