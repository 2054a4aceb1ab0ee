"""Compiled temporal linkage of the DNC: ``precedence``, ``link``,
``temporal_weights`` and the fused ``link_step``.

Each op ``X`` has ``X_forward(*inputs) -> (outputs, saved)`` and
``X_backward(saved, *grad_outputs) -> input gradients``; the equations are
those of :mod:`dmem.reference.linkage` (DNC Methods, temporal memory linkage).
The diagonal of the link matrix is the constant 0: its cotangent is ignored
and the diagonal of ``link_prev`` gets a zero gradient.

The saved state refers to the inputs without copying them: a `(B, N, N)`
link matrix is large, and the DNC never modifies its previous state.  Do not
write into an input between a forward and its backward.

The `(B, N, N)` outputs (the new link, the gradients of ``link_prev`` and of
``link``) are recycled arrays when large (``dmem.compiled._common.output``):
an array is written again only once nothing outside the pool refers to it, so
keeping an output keeps it intact.  ``out_link=`` / ``out_grad_link_prev=``
still write into a buffer of the caller's.
"""

import numpy as np

from .._kernels import linkage as _kernel_module
from .._opspec import OPS
from ._common import Saved, by_dtype, backward_inputs, empty, forward_inputs, op_threads, output

_k = by_dtype(_kernel_module)


def _threads(batch, work):
    """Threads for a kernel call over ``batch`` rows doing ``work`` values in all."""
    return op_threads(batch, work)


_SAVED_DIMS = {name: tuple(dims for _, dims in OPS[name].inputs)
               for name in ("precedence", "link", "temporal_weights", "link_step")}


def _backward_inputs(name, saved, grads):
    """The output gradients and the inputs kept by ``name``'s forward, checked."""
    return backward_inputs(name, saved, grads, _SAVED_DIMS[name])


def precedence_forward(precedence_prev, write_weights):
    """Precedence weighting ``p = (1 − Σ_i w_i) p_prev + w``.

    ``precedence_prev``, ``write_weights``: `(B, N)`.  Returns
    ``(precedence, saved)`` with ``precedence`` `(B, N)`.
    """
    (pp, w), sizes = forward_inputs("precedence", (precedence_prev, write_weights))
    p = empty(pp.shape, sizes["dtype"])
    _k[pp.dtype].precedence_forward(pp, w, p, num_threads=_threads(pp.shape[0], pp.size))
    return p, Saved("precedence", (pp, w), None, sizes)


def precedence_backward(saved, grad_precedence):
    """Gradients of ``precedence``: ``(grad_precedence_prev, grad_write_weights)``, each `(B, N)`."""
    (dp,), (pp, w) = _backward_inputs("precedence", saved, (grad_precedence,))
    dpp = empty(pp.shape, pp.dtype)
    dw = empty(pp.shape, pp.dtype)
    _k[pp.dtype].precedence_backward(pp, w, dp, dpp, dw, num_threads=_threads(pp.shape[0], pp.size))
    return dpp, dw


def link_forward(link_prev, write_weights, precedence_prev, *, out_link=None):
    """Temporal link matrix ``L_ij = (1 − w_i − w_j) L_prev,ij + w_i p_prev,j``, ``L_ii = 0``.

    ``link_prev`` `(B, N, N)`, ``write_weights`` and ``precedence_prev``
    `(B, N)`.  Returns ``(link, saved)`` with ``link`` `(B, N, N)`.
    ``out_link``: as in :func:`link_step_forward` (the backward does not read it).
    """
    (lp, w, pp), sizes = forward_inputs("link", (link_prev, write_weights, precedence_prev))
    if out_link is None:
        link = output(lp.shape, sizes["dtype"])
    else:
        link = _out_array("link_forward", "out_link", out_link, lp.shape, sizes["dtype"],
                          (lp, w, pp))
    _k[lp.dtype].link_forward(lp, w, pp, link, num_threads=_threads(lp.shape[0], lp.size))
    return link, Saved("link", (lp, w, pp), None, sizes)


def link_backward(saved, grad_link, *, out_grad_link_prev=None):
    """Gradients of ``link``: ``(grad_link_prev (B, N, N), grad_write_weights (B, N),
    grad_precedence_prev (B, N))``.  The diagonal of ``grad_link`` is ignored.
    ``out_grad_link_prev``: as in :func:`link_step_backward`."""
    (dl,), (lp, w, pp) = _backward_inputs("link", saved, (grad_link,))
    B, N = w.shape
    if out_grad_link_prev is None:
        dlp = output(lp.shape, lp.dtype)
    else:
        dlp = _out_array("link_backward", "out_grad_link_prev", out_grad_link_prev,
                         lp.shape, lp.dtype, (lp, w, pp, dl))
    dw = empty((B, N), lp.dtype)
    dpp = empty((B, N), lp.dtype)
    _k[lp.dtype].link_backward(lp, w, pp, dl, dlp, dw, dpp, num_threads=_threads(B, lp.size))
    return dlp, dw, dpp


def temporal_weights_forward(link, read_weights_prev):
    """Forward and backward weightings ``f_r = L w_r``, ``b_r = Lᵀ w_r``.

    ``link`` `(B, N, N)`, ``read_weights_prev`` `(B, R, N)`.  Returns
    ``((forward_weights, backward_weights), saved)``, each `(B, R, N)`.
    """
    (L, wr), sizes = forward_inputs("temporal_weights", (link, read_weights_prev))
    f = empty(wr.shape, sizes["dtype"])
    bw = empty(wr.shape, sizes["dtype"])
    _k[L.dtype].temporal_weights_forward(L, wr, f, bw,
                                num_threads=_threads(L.shape[0], L.size * wr.shape[1]))
    return (f, bw), Saved("temporal_weights", (L, wr), None, sizes)


def temporal_weights_backward(saved, grad_forward_weights, grad_backward_weights):
    """Gradients of ``temporal_weights``: ``(grad_link (B, N, N), grad_read_weights_prev (B, R, N))``."""
    (df, db), (L, wr) = _backward_inputs("temporal_weights", saved,
                                         (grad_forward_weights, grad_backward_weights))
    B, R, N = wr.shape
    dL = output(L.shape, L.dtype)
    dwr = empty(wr.shape, L.dtype)
    _k[L.dtype].temporal_weights_backward(L, wr, df, db, dL, dwr, num_threads=_threads(B, L.size * R))
    return dL, dwr


def _out_array(op, name, out, shape, dtype, inputs):
    """``out`` if it can hold an output of ``shape`` and ``dtype`` (a writeable
    C-contiguous ndarray sharing no memory with ``inputs``), else a clear error."""
    if type(out) is not np.ndarray:
        raise TypeError(f"{op}: {name} must be a numpy array of shape {tuple(shape)}, "
                        f"got {type(out).__name__}")
    if out.dtype != dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{op}: {name} must be C-contiguous and writeable")
    for a in inputs:
        if np.may_share_memory(out, a):
            raise ValueError(f"{op}: {name} must not share memory with an input")
    return out


def link_step_forward(link_prev, precedence_prev, write_weights, read_weights_prev, *,
                      out_link=None):
    """One fused step of the temporal linkage: ``link``, ``precedence``, then
    ``temporal_weights`` of the new link matrix, in one pass over ``link_prev``.

    ``link_prev`` `(B, N, N)`, ``precedence_prev`` and ``write_weights``
    `(B, N)`, ``read_weights_prev`` `(B, R, N)`.  Returns
    ``((link, precedence, forward_weights, backward_weights), saved)`` with
    shapes `(B, N, N)`, `(B, N)`, `(B, R, N)`, `(B, R, N)`.

    ``out_link``: an array of the link's shape and dtype to write the new link
    into (returned as ``link``), e.g. a buffer reused across steps to avoid
    the page faults of a fresh `(B, N, N)` array.  It must not share memory
    with an input.  The backward does not read it.
    """
    (lp, pp, w, wr), sizes = forward_inputs(
        "link_step", (link_prev, precedence_prev, write_weights, read_weights_prev)
    )
    dtype = sizes["dtype"]
    if out_link is None:
        link = output(lp.shape, dtype)
    else:
        link = _out_array("link_step_forward", "out_link", out_link, lp.shape, dtype,
                          (lp, pp, w, wr))
    p = empty(pp.shape, dtype)
    f = empty(wr.shape, dtype)
    bw = empty(wr.shape, dtype)
    _k[lp.dtype].link_step_forward(lp, pp, w, wr, link, p, f, bw,
                         num_threads=_threads(lp.shape[0], lp.size * (1 + wr.shape[1])))
    outputs = (link, p, f, bw)
    # The backward recomputes rows of the new link from link_prev: link is not kept.
    return outputs, Saved("link_step", (lp, pp, w, wr), None, sizes)


def link_step_backward(saved, grad_link, grad_precedence, grad_forward_weights,
                       grad_backward_weights, *, out_grad_link_prev=None):
    """Gradients of ``link_step``: ``(grad_link_prev (B, N, N), grad_precedence_prev (B, N),
    grad_write_weights (B, N), grad_read_weights_prev (B, R, N))``.

    One pass over ``link_prev`` and ``grad_link``; the diagonal of
    ``grad_link`` is ignored.  ``out_grad_link_prev``: an array of
    ``link_prev``'s shape and dtype to write its gradient into (returned
    first); it must not share memory with the saved arrays or the gradients.
    """
    (dl, dp, df, db), (lp, pp, w, wr) = _backward_inputs(
        "link_step", saved, (grad_link, grad_precedence, grad_forward_weights, grad_backward_weights)
    )
    B, R, N = wr.shape
    dtype = lp.dtype
    if out_grad_link_prev is None:
        dlp = output(lp.shape, dtype)
    else:
        dlp = _out_array("link_step_backward", "out_grad_link_prev", out_grad_link_prev,
                         lp.shape, dtype, (lp, pp, w, wr, dl, dp, df, db))
    dpp = empty((B, N), dtype)
    dw = empty((B, N), dtype)
    dwr = empty(wr.shape, dtype)
    _k[lp.dtype].link_step_backward(lp, pp, w, wr, dl, dp, df, db, dlp, dpp, dw, dwr,
                          num_threads=_threads(B, lp.size * (1 + R)))
    return dlp, dpp, dw, dwr
