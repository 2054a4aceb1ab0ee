"""Memory operations, dispatched to the backend in force.

For every operation ``X`` (see the table in ``DESIGN.md`` and
:data:`dmem._opspec.OPS`) this module has:

``X(*inputs)``
    The forward pass.  Differentiable by autograd in both backends: in
    ``"reference"`` mode it is the autograd.numpy function itself, in
    ``"compiled"`` mode an autograd primitive whose VJP is the hand-written
    backward kernel.
``X_forward(*inputs) -> (outputs, saved)``
    The forward pass and whatever the backward pass needs.  ``outputs`` is an
    array, or a tuple of arrays for ops with several outputs.
``X_backward(saved, *grad_outputs) -> tuple``
    Gradients with respect to every input, in input order.  A ``None``
    gradient stands for zeros.  ``saved`` remembers which backend made it,
    so switching backends in between is harmless.

Inputs are validated in both backends: wrong ndim, sizes that disagree, empty
axes or non-float dtypes raise ``ValueError``/``TypeError`` naming the
argument and the expected shape.
"""

import inspect

from autograd import make_vjp

from . import _backend, compiled, reference
from ._opspec import OPS
from ._validate import check_arrays, check_grads, check_odd_shift


class ReferenceSaved:
    """What ``X_forward`` keeps in reference mode: autograd's VJP closure."""

    __slots__ = ("op", "vjp", "outputs")

    def __init__(self, op, vjp, outputs):
        self.op = op
        self.vjp = vjp
        self.outputs = outputs  # list of (shape, dtype) of the outputs

    def __repr__(self):
        return f"<reference saved state of {self.op}>"


def _validated(spec, inputs, convert=True):
    arrays, sizes = check_arrays(spec.name, spec.inputs, inputs, convert=convert)
    if spec.odd_shift:
        check_odd_shift(spec.name, sizes)
    return arrays


def _use_compiled(name):
    return _backend.get_backend() == "compiled" and name in compiled.KERNELS


def _make(spec):
    ref = getattr(reference, spec.name)
    multi = len(spec.outputs) > 1

    def op(*inputs):
        if _use_compiled(spec.name):
            return compiled.KERNELS[spec.name][0](*inputs)
        return ref(*_validated(spec, inputs, convert=False))

    def forward(*inputs):
        if _use_compiled(spec.name):
            return compiled.KERNELS[spec.name][1](*inputs)
        arrays = _validated(spec, inputs)
        vjp, outputs = make_vjp(lambda args: ref(*args))(tuple(arrays))
        outs = outputs if multi else (outputs,)
        return outputs, ReferenceSaved(spec.name, vjp, [(o.shape, o.dtype) for o in outs])

    def backward(saved, *grads):
        if isinstance(saved, ReferenceSaved):
            if saved.op != spec.name:
                raise TypeError(f"{spec.name}_backward was given the saved state of {saved.op}")
            g = check_grads(spec.name, grads, saved.outputs)
            return tuple(saved.vjp(tuple(g) if multi else g[0]))
        if spec.name not in compiled.KERNELS:
            raise TypeError(f"{spec.name}_backward: saved must come from {spec.name}_forward")
        return compiled.KERNELS[spec.name][2](saved, *grads)

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n, _ in spec.inputs]
    grad_params = [inspect.Parameter("saved", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
        inspect.Parameter("grad_" + n, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for n, _ in spec.outputs
    ]
    shapes = ", ".join(f"{n} {tuple(d)}" for n, d in spec.inputs).replace("'", "")
    out_shapes = ", ".join(f"{n} {tuple(d)}" for n, d in spec.outputs).replace("'", "")
    op.__doc__ = ref.__doc__
    forward.__doc__ = (
        f"Forward pass of ``{spec.name}`` and its saved state.\n\n"
        f"Inputs: {shapes}. Returns ``(outputs, saved)`` with outputs {out_shapes}."
    )
    backward.__doc__ = (
        f"Backward pass of ``{spec.name}``: gradients of {', '.join(n for n, _ in spec.inputs)}.\n\n"
        f"Takes the ``saved`` state of ``{spec.name}_forward`` and the gradients of "
        f"{out_shapes} (``None`` for zero)."
    )
    for f, suffix, sig in (
        (op, "", inspect.Signature(params)),
        (forward, "_forward", inspect.Signature(params)),
        (backward, "_backward", inspect.Signature(grad_params)),
    ):
        f.__name__ = f.__qualname__ = spec.name + suffix
        f.__module__ = __name__
        f.__signature__ = sig
    return op, forward, backward


__all__ = []
for _spec in OPS.values():
    _fns = _make(_spec)
    for _fn in _fns:
        globals()[_fn.__name__] = _fn
        __all__.append(_fn.__name__)
del _spec, _fns, _fn
