"""What every compiled wrapper shares: input validation and the saved state.

A compiled ``X_forward`` validates its inputs with :func:`forward_inputs`
(C-contiguous arrays of one float dtype, sizes agreeing) before any kernel
runs, and returns a :class:`Saved`.  ``X_backward`` accepts only a
:class:`Saved` of the same op whose arrays still have the types, dtypes,
layout and shapes its forward recorded (:func:`backward_inputs`), so that a
kernel compiled without bounds checks never sees arrays it cannot index.

Both checks have a fast path for the common call (C-contiguous ndarrays of
one float dtype, sizes agreeing: one call into ``dmem._kernels._checks``) and
fall back to the full validation of :mod:`dmem._validate`, which converts or
refuses with a message naming the argument, for anything else.
"""

import types

import numpy as np

from .._backend import get_num_threads
from .._kernels._checks import arrays_fit, input_sizes
from .._kernels._pool import OutputPool
from .._opspec import OPS
from .._validate import check_arrays, check_grads, check_odd_shift

# Axis letters of every op's inputs and outputs, as the checks of _checks take them.
_INPUT_DIMS = {name: tuple(dims for _, dims in spec.inputs) for name, spec in OPS.items()}
_OUTPUT_DIMS = {name: tuple(dims for _, dims in spec.outputs) for name, spec in OPS.items()}


class Saved:
    """State kept by a compiled forward for its backward.

    ``Saved(op, arrays, outputs, sizes)``: ``op`` the name of the op,
    ``arrays`` the arrays the backward kernel reads (inputs are kept without a
    copy and stay writeable for their owner), ``outputs`` the outputs (only
    their shapes and dtypes are kept; ``None``: those the op's entry of
    ``dmem._opspec.OPS`` gives for ``sizes``), ``sizes`` the axis sizes and
    dtype.  Attributes ``op``, ``arrays`` (read-only views), ``outputs``
    (``(shape, dtype)`` of each output) and ``sizes`` cannot be assigned.

    The backward checks the arrays against ``sizes`` (type, layout, dtype and
    shape) before its kernel runs, and refuses a state that does not match
    with ``TypeError``: a state assembled by hand, or whose arrays were
    reshaped in place since the forward, never reaches a kernel compiled
    without bounds checks.
    """

    __slots__ = ("_op", "_arrays", "_outputs", "_sizes")

    def __init__(self, op, arrays, outputs, sizes):
        self._op = op
        self._arrays = tuple(arrays)
        self._outputs = None if outputs is None else tuple(
            (tuple(o.shape), o.dtype) for o in outputs)
        self._sizes = sizes if type(sizes) is dict else dict(sizes)

    @property
    def op(self):
        return self._op

    @property
    def arrays(self):
        """Read-only views of the saved arrays (the caller's arrays stay writeable)."""
        views = []
        for a in self._arrays:
            v = a.view()
            v.flags.writeable = False
            views.append(v)
        return tuple(views)

    @property
    def outputs(self):
        if self._outputs is not None:
            return self._outputs
        dtype = self._sizes.get("dtype")
        return tuple((tuple(self._sizes.get(d, -1) for d in dims), dtype)
                     for dims in _OUTPUT_DIMS.get(self._op, ()))

    @property
    def sizes(self):
        return self._sizes

    def __repr__(self):
        return f"<compiled saved state of {self._op}>"


class by_dtype:
    """The fused-type kernels of a ``dmem._kernels`` module, specialised per dtype.

    ``kernels[dtype].name`` is the float64 (``"double"``) or float32
    (``"float"``) version of the module's function ``name``.  Calling a
    specialisation skips Cython's choice among them by the arguments' types:
    0.2–0.3 µs of a forward and backward of shift or precedence at B=16,
    N=128 (6.4–7.7 µs in all; a timing script, back to back).
    """

    __slots__ = ("_table",)

    def __init__(self, module):
        self._table = {
            np.dtype(dtype): types.SimpleNamespace(**{
                name: fn[ctype] if getattr(fn, "__signatures__", None) else fn
                for name, fn in vars(module).items() if not name.startswith("__")})
            for dtype, ctype in ((np.float64, "double"), (np.float32, "float"))
        }

    def __getitem__(self, dtype):
        return self._table[dtype]


def forward_inputs(name, inputs):
    """Validate the inputs of op ``name``; return ``(arrays, sizes)``.

    The common call (C-contiguous ndarrays of one float dtype, sizes agreeing)
    is recognised by one cheap check and its arrays returned as given; any
    other goes through :func:`dmem._validate.check_arrays`, which converts or
    refuses it with a message naming the argument.
    """
    sizes = input_sizes(_INPUT_DIMS[name], inputs)
    if sizes is not None and (not OPS[name].odd_shift or sizes["S"] % 2 == 1):
        return inputs, sizes
    spec = OPS[name]
    arrays, sizes = check_arrays(name, spec.inputs, inputs)
    if spec.odd_shift:
        check_odd_shift(name, sizes)
    return arrays, sizes


def backward_inputs(name, saved, grads, dims):
    """The output gradients and saved arrays of ``name``'s backward, checked.

    ``dims``: the axis letters of each saved array (a lowercase prefix ``d``
    or ``i`` for a float64 or int64 array, see ``dmem._kernels._checks``).
    Returns ``(grads, arrays)``: C-contiguous gradients of the saved dtype
    (zeros for ``None``) and the saved arrays.  A state that is not ``name``'s
    or does not match its sizes raises ``TypeError``; a gradient of the wrong
    shape ``ValueError``.
    """
    if type(saved) is Saved and saved._op == name and saved._outputs is None:
        sizes = saved._sizes
        arrays = saved._arrays
        if arrays_fit(dims, arrays, sizes) and arrays_fit(_OUTPUT_DIMS[name], grads, sizes):
            return grads, arrays
    grads = backward_grads(name, saved, grads)
    return grads, saved_arrays(saved, dims)


def backward_grads(name, saved, grads):
    """Check that ``saved`` comes from ``name``'s forward; validate ``grads``.

    Returns the output gradients as C-contiguous arrays of the saved dtype
    (zeros for ``None``).
    """
    if not isinstance(saved, Saved) or saved.op != name:
        raise TypeError(f"{name}_backward: saved must be the state returned by {name}_forward")
    outputs = OPS[name].outputs
    recorded = saved.outputs
    if len(recorded) != len(outputs) or any(
        shape != tuple(saved.sizes.get(d, -1) for d in dims)
        for (shape, _), (_, dims) in zip(recorded, outputs)
    ):
        raise TypeError(f"{name}_backward: saved state does not match its forward")
    return check_grads(name, grads, recorded)


# Below this many inner-loop steps a kernel runs on one thread: waking a second
# thread costs more than it saves.  Results do not depend on the choice.
# Measured fwd+bwd at B=16, N=128, W=20 on 2 cores: at 16384, read, write,
# usage, sharpen and content_weights ran 2-5x slower on two threads than on
# one; ops above 2**18 steps (link, temporal_weights) still gain from two.
PARALLEL_MIN_WORK = 1 << 18


def saved_arrays(saved, dims):
    """The arrays of ``saved``, checked against the axis letters ``dims`` of each.

    The kernels run without bounds checks: refuse saved arrays that are not
    C-contiguous ndarrays of the saved dtype (``float64`` for a ``d`` prefix,
    ``int64`` for ``i``) with the shapes the sizes recorded by the forward give
    (``TypeError``).
    """
    arrays = saved._arrays
    sizes = saved._sizes
    ok = len(arrays) == len(dims)
    if ok:
        for a, letters in zip(arrays, dims):
            dtype = sizes.get("dtype")
            if letters[:1] == "d":
                dtype = np.dtype(np.float64)
            elif letters[:1] == "i":
                dtype = np.dtype(np.int64)
            letters = letters.lstrip("di")
            if (type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous
                    or a.shape != tuple(sizes.get(d, -1) for d in letters)):
                ok = False
                break
    if not ok:
        raise TypeError(f"{saved.op}_backward: saved state does not match its forward")
    return arrays


# The op wrappers (dmem.compiled.<module>.X_forward / X_backward) split a call
# over threads from this many inner-loop steps; the models' BPTT keeps
# PARALLEL_MIN_WORK.  Measured fwd+bwd at B=16 on 2 cores, one thread against
# two (2026-12-04): link at N=128 (2**18 steps) 151 vs 279 us, link_step at
# N=64 (1.25 * 2**18) 137 vs 269 us, read and ntm_address at N=128, H=4
# (1.25 * 2**18) 92 vs 127 us and 244 vs 282 us; from 2**20 two threads win:
# temporal_weights at N=128 803 vs 575 us, link_step at N=128 460 vs 380 us.
OP_PARALLEL_MIN_WORK = 1 << 20


def op_threads(batch, work):
    """Thread count for one kernel call of a compiled op: as :func:`threads`,
    with the op wrappers' threshold :data:`OP_PARALLEL_MIN_WORK`."""
    if work < OP_PARALLEL_MIN_WORK:
        return 1
    return max(1, min(get_num_threads(), batch))


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


# Large outputs (a (B, N, N) link matrix, a (B, N, W) memory and their
# gradients) come from here: a fresh array of 256 KiB or more pays page faults
# on its first write on every call, which at B=16, N=256 cost the link op more
# than its kernel.  The pool reuses an array only when nothing but the pool
# refers to it (see dmem/_kernels/_pool.pyx), so an output a caller still
# holds, a view of it, or an array kept by a saved state is never written
# again.  It keeps at most 256 MiB (eight arrays), the least recently used
# dropped first; ``release_outputs()`` lets go of all of them.
OUTPUTS = OutputPool(256 * 1024, 256 * 1024 * 1024, 8)


def output(shape, dtype):
    """An uninitialised C-contiguous array for a kernel to write, as
    ``numpy.empty``; large ones are recycled (:data:`OUTPUTS`)."""
    return OUTPUTS.take(shape, dtype)


def release_outputs():
    """Let go of the recycled output arrays kept for reuse (their memory is
    freed once nobody else holds them)."""
    OUTPUTS.clear()


def zeros(shape, dtype):
    return np.zeros(shape, dtype=dtype)
