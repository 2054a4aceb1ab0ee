"""What every compiled wrapper shares: input validation and the saved state.

A compiled ``X_forward`` validates its inputs with :func:`forward_inputs`
(C-contiguous arrays of one float dtype, sizes agreeing) before any kernel
runs, and returns a :class:`Saved`.  ``X_backward`` accepts only a
:class:`Saved` made by the forward of the same op (:func:`backward_grads`), so
that a kernel compiled without bounds checks never sees arrays it did not
allocate itself.
"""

import numpy as np

from .._backend import get_num_threads
from .._opspec import OPS
from .._validate import check_arrays, check_grads, check_odd_shift


class Saved:
    """State kept by a compiled forward for its backward.

    Attributes: ``op`` (name), ``arrays`` (tuple of read-only views of the
    arrays the backward kernel reads; inputs are kept without a copy and stay
    writeable for their owner), ``outputs`` (``(shape, dtype)`` of each output),
    ``sizes`` (axis sizes and dtype).
    """

    __slots__ = ("op", "arrays", "outputs", "sizes")

    def __init__(self, op, arrays, outputs, sizes):
        views = []
        for a in arrays:
            # A read-only view: the caller's own array stays writeable.
            v = a.view()
            v.flags.writeable = False
            views.append(v)
        set_ = object.__setattr__
        set_(self, "op", op)
        set_(self, "arrays", tuple(views))
        set_(self, "outputs", tuple((tuple(o.shape), o.dtype) for o in outputs))
        set_(self, "sizes", dict(sizes))

    def __setattr__(self, name, value):
        raise AttributeError("the saved state of a compiled op is read-only")

    def __repr__(self):
        return f"<compiled saved state of {self.op}>"


def forward_inputs(name, inputs):
    """Validate the inputs of op ``name``; return ``(arrays, sizes)``."""
    spec = OPS[name]
    arrays, sizes = check_arrays(name, spec.inputs, inputs)
    if spec.odd_shift:
        check_odd_shift(name, sizes)
    return arrays, sizes


def backward_grads(name, saved, grads):
    """Check that ``saved`` comes from ``name``'s forward; validate ``grads``.

    Returns the output gradients as C-contiguous arrays of the saved dtype
    (zeros for ``None``).
    """
    if not isinstance(saved, Saved) or saved.op != name:
        raise TypeError(f"{name}_backward: saved must be the state returned by {name}_forward")
    outputs = OPS[name].outputs
    if len(saved.outputs) != len(outputs) or any(
        shape != tuple(saved.sizes.get(d, -1) for d in dims)
        for (shape, _), (_, dims) in zip(saved.outputs, outputs)
    ):
        raise TypeError(f"{name}_backward: saved state does not match its forward")
    return check_grads(name, grads, saved.outputs)


# Below this many inner-loop steps a kernel runs on one thread: waking a second
# thread costs more than it saves.  Results do not depend on the choice.
# Measured fwd+bwd at B=16, N=128, W=20 on 2 cores: at 16384, read, write,
# usage, sharpen and content_weights ran 2-5x slower on two threads than on
# one; ops above 2**18 steps (link, temporal_weights) still gain from two.
PARALLEL_MIN_WORK = 1 << 18


def saved_arrays(saved, dims):
    """The arrays of ``saved``, checked against the axis letters ``dims`` of each.

    The kernels run without bounds checks: refuse saved arrays whose shapes
    disagree with the sizes recorded by the forward (``TypeError``).
    """
    arrays = saved.arrays
    sizes = saved.sizes
    ok = len(arrays) == len(dims)
    if ok:
        for a, letters in zip(arrays, dims):
            if a.shape != tuple(sizes.get(d, -1) for d in letters) or not a.flags.c_contiguous:
                ok = False
                break
    if not ok:
        raise TypeError(f"{saved.op}_backward: saved state does not match its forward")
    return arrays


def threads(batch=None, work=None):
    """Thread count for one kernel call: ``dmem.get_num_threads()``, at most one
    per batch row, and one when ``work`` (inner-loop steps) is small."""
    n = get_num_threads()
    if work is not None and work < PARALLEL_MIN_WORK:
        return 1
    if batch is not None:
        n = min(n, batch)
    return max(1, n)


def empty(shape, dtype):
    return np.empty(shape, dtype=dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)
