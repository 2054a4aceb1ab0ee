"""The reference implementation: every memory operation in ``autograd.numpy``.

Written to be read: one small function per equation of the papers, batched
over a leading axis, gradients by autograd.  It is the ground truth the
compiled kernels are tested against, and it is itself tested against finite
differences.  Functions never mutate their inputs.
"""

from .addressing import content_weights, ntm_address, sharpen, shift
from .allocation import allocation, usage
from .linkage import link, link_step, precedence, temporal_weights
from .memory import read, write

__all__ = [
    "content_weights", "shift", "sharpen", "ntm_address",
    "read", "write",
    "usage", "allocation",
    "precedence", "link", "temporal_weights", "link_step",
]
