"""Compiled DNC allocation: validated wrappers around ``dmem._kernels.allocation``.

Shapes: ``B`` batch, ``N`` memory slots, ``R`` read heads.  See
:mod:`dmem.reference.allocation` for the equations.
"""

import numpy as np

from .._kernels import allocation as _kernel_module
from ._common import Saved, by_dtype, backward_inputs, empty, forward_inputs, op_threads

_kernels = by_dtype(_kernel_module)


def usage_forward(usage_prev, write_weights_prev, read_weights_prev, free_gates):
    """Usage ``u = (u_prev + w − u_prev ∘ w) ∘ Π_r (1 − f_r w_r)`` (DNC Methods).

    usage_prev `(B, N)`, write_weights_prev `(B, N)`, read_weights_prev
    `(B, R, N)`, free_gates `(B, R)` -> ``(usage (B, N), saved)``.
    """
    arrays, sizes = forward_inputs(
        "usage", (usage_prev, write_weights_prev, read_weights_prev, free_gates)
    )
    out = empty((sizes["B"], sizes["N"]), sizes["dtype"])
    _kernels[arrays[0].dtype].usage_forward(*arrays, out, num_threads=op_threads(sizes["B"], 2 * arrays[2].size))
    return out, Saved("usage", arrays, None, sizes)


def usage_backward(saved, grad_usage):
    """Gradients of ``usage``: grad_usage `(B, N)` -> (usage_prev `(B, N)`,
    write_weights_prev `(B, N)`, read_weights_prev `(B, R, N)`, free_gates `(B, R)`)."""
    (grad_usage,), arrays = backward_inputs("usage", saved, (grad_usage,),
                                            ("BN", "BN", "BRN", "BR"))
    grads = tuple(empty(a.shape, a.dtype) for a in arrays)
    _kernels[arrays[0].dtype].usage_backward(*arrays, grad_usage, *grads,
                           num_threads=op_threads(grad_usage.shape[0], 4 * arrays[2].size))
    return grads


def allocation_forward(usage):
    """Allocation weighting (DNC Methods): ``û = ε + (1 − ε) u`` (ε = 1e-6),
    ``φ`` = stable ascending argsort of ``û``, ``a[φ_j] = (1 − û[φ_j]) Π_{i<j} û[φ_i]``.

    usage `(B, N)` -> ``(allocation (B, N), saved)``.  The saved state holds
    the usage, the free list ``φ`` (int64, `(B, N)`) and the exclusive
    products in sorted order (`(B, N)`); the backward holds ``φ`` constant.
    """
    (usage,), sizes = forward_inputs("allocation", (usage,))
    shape = (sizes["B"], sizes["N"])
    out = empty(shape, sizes["dtype"])
    order = empty(shape, np.int64)
    prefix = empty(shape, sizes["dtype"])
    work = empty(shape, np.int64)
    _kernels[usage.dtype].allocation_forward(usage, out, order, prefix, work,
                                num_threads=op_threads(sizes["B"], 8 * usage.size))
    return out, Saved("allocation", (usage, order, prefix), None, sizes)


def allocation_backward(saved, grad_allocation):
    """Gradient of ``allocation``: grad_allocation `(B, N)` -> (usage `(B, N)`,).

    A suffix recursion over the sorted order; no division by the usage.
    """
    (grad_allocation,), (usage, order, prefix) = backward_inputs(
        "allocation", saved, (grad_allocation,), ("BN", "iBN", "BN"))
    grad_usage = empty(usage.shape, usage.dtype)
    _kernels[usage.dtype].allocation_backward(usage, order, prefix, grad_allocation, grad_usage,
                                 num_threads=op_threads(usage.shape[0], 4 * usage.size))
    return (grad_usage,)


__all__ = ["usage_forward", "usage_backward", "allocation_forward", "allocation_backward"]
