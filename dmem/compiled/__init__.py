"""The compiled operations: validated wrappers around the Cython kernels.

For every operation ``X`` of :data:`dmem._opspec.OPS` this namespace has

* ``X_forward(*inputs) -> (outputs, saved)`` and
  ``X_backward(saved, *grad_outputs) -> tuple of input gradients``, defined in
  the module of the op (``dmem.compiled.addressing``, ...);
* ``X(*inputs)``, an autograd primitive whose VJP is ``X_backward``, so that a
  model written with ``autograd.numpy`` can call the kernels and still be
  differentiated.

These functions ignore the backend switch: they always run the kernels.  Use
:mod:`dmem.ops` to follow the switch.

Outputs of 256 KiB or more are recycled: an array is written again only once
nothing but the pool refers to it, so an output you hold is never overwritten.
Up to 256 MiB stay allocated between calls; :func:`release_outputs` frees
them.  :func:`simd_levels` tells which instruction set the loops run.
"""

import importlib
import threading

from autograd.extend import defvjp_argnums, primitive

from .._opspec import MODULES, OPS

# name -> (primitive, forward, backward)
KERNELS = {}


def release_outputs():
    """Let go of the recycled output arrays kept for reuse (their memory is freed
    once nobody else holds them).  Nothing to do without the extension."""
    try:
        from ._common import release_outputs as release
    except ImportError:
        return
    release()


def simd_levels():
    """The instruction set each family of compiled loops runs:
    ``{"addressing": ..., "memory": ..., "allocation": ..., "linkage": ...}``, each
    ``"avx512"``, ``"avx2+fma"`` or ``"baseline"`` (the widest this CPU has, chosen
    at import).  Results of the compiled ops depend on it in their last bits
    (fused multiply-adds, the lanes of sums), never on the thread count.
    Empty without the extension."""
    levels = {}
    for family in ("addressing", "memory", "allocation", "linkage"):
        try:
            module = importlib.import_module(f"dmem._kernels.{family}")
        except ImportError:
            continue
        levels[family] = module.simd_level()
    return levels


_last = threading.local()


def _make_primitive(spec, forward, backward):
    n_out = len(spec.outputs)

    def op(*inputs):
        outputs, saved = forward(*inputs)
        # The VJP maker runs right after this call (autograd builds the node as
        # soon as the primitive returns): hand it the saved state, so that the
        # forward is not run twice.
        _last.entry = (outputs, saved)
        return outputs

    op.__name__ = spec.name
    op.__qualname__ = spec.name
    op.__doc__ = forward.__doc__
    prim = primitive(op)

    def vjp_maker(argnums, ans, args, kwargs):
        entry = getattr(_last, "entry", None)
        _last.entry = None
        if entry is not None and entry[0] is ans:
            saved = entry[1]
        else:
            saved = forward(*args)[1]

        def vjp(g):
            grads = tuple(g) if n_out > 1 else (g,)
            result = backward(saved, *grads)
            return tuple(result[i] for i in argnums)

        return vjp

    defvjp_argnums(prim, vjp_maker)
    return prim


def _load():
    for module_name in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{module_name}")
        except ImportError:
            continue
        for spec in OPS.values():
            if spec.module != module_name:
                continue
            forward = getattr(module, spec.name + "_forward", None)
            backward = getattr(module, spec.name + "_backward", None)
            if forward is None or backward is None:
                continue
            prim = _make_primitive(spec, forward, backward)
            KERNELS[spec.name] = (prim, forward, backward)
            globals()[spec.name] = prim
            globals()[spec.name + "_forward"] = forward
            globals()[spec.name + "_backward"] = backward


_load()

__all__ = ["release_outputs", "simd_levels"] + sorted(
    [name for name in KERNELS]
    + [name + "_forward" for name in KERNELS]
    + [name + "_backward" for name in KERNELS]
)
