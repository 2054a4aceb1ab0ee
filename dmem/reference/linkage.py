"""Temporal link matrix of the DNC: precedence, link update, temporal weights.

DNC Methods, "Temporal memory linkage" (Graves et al. 2016).  The link matrix
``L[b, i, j]`` is the degree to which slot ``i`` was written right after slot
``j``; the precedence weighting ``p[b, j]`` is the degree to which slot ``j``
was the last one written.  Read heads follow the links forwards (``L w``) or
backwards (``Lᵀ w``).

All functions are batched over the leading axis ``B``, written in
``autograd.numpy`` and never mutate their inputs.  Multi-output functions
return an autograd tuple (a plain ``tuple`` when not traced), so that
``autograd.make_vjp`` differentiates all outputs together.  The diagonal of the link
matrix is the constant 0: it carries no gradient (its cotangent is ignored and
the diagonal of ``link_prev`` receives none).
"""

import autograd.numpy as np
from autograd.builtins import tuple as differentiable_tuple


def precedence(precedence_prev, write_weights):
    """Precedence weighting after a write.

    ``p = (1 − Σ_i w_i) p_prev + w`` (DNC Methods, eq. for ``p_t``).

    Parameters
    ----------
    precedence_prev : `(B, N)` array, ``p_{t-1}``.
    write_weights : `(B, N)` array, the write weighting ``w^w_t``.

    Returns
    -------
    precedence : `(B, N)` array, ``p_t``.
    """
    written = np.sum(write_weights, axis=1, keepdims=True)
    return (1.0 - written) * precedence_prev + write_weights


def off_diagonal(n, dtype=float):
    """`(N, N)` constant mask: 1 off the diagonal, 0 on it (no gradient)."""
    return 1.0 - np.eye(n, dtype=dtype)


def link(link_prev, write_weights, precedence_prev):
    """Temporal link matrix after a write.

    ``L_ij = (1 − w_i − w_j) L_prev,ij + w_i p_prev,j`` for ``i ≠ j`` and
    ``L_ii = 0`` (DNC Methods, eq. for ``L_t``).

    Parameters
    ----------
    link_prev : `(B, N, N)` array, ``L_{t-1}``.
    write_weights : `(B, N)` array, ``w^w_t``.
    precedence_prev : `(B, N)` array, ``p_{t-1}``.

    Returns
    -------
    link : `(B, N, N)` array, ``L_t``.  Its diagonal is the constant 0: no
    gradient flows through it, and the diagonal of ``link_prev`` gets none.
    """
    w_row = write_weights[:, :, None]           # w_i
    w_col = write_weights[:, None, :]           # w_j
    kept = (1.0 - w_row - w_col) * link_prev
    new = w_row * precedence_prev[:, None, :]   # w_i p_prev,j
    return (kept + new) * off_diagonal(link_prev.shape[-1], link_prev.dtype)


def temporal_weights(link, read_weights_prev):
    """Forward and backward weightings of the read heads.

    ``f_r = L w_r`` and ``b_r = Lᵀ w_r`` (DNC Methods, "forward and backward
    weightings"; ``w_r`` is the read weighting of head ``r`` at the previous
    step): ``f_r,i = Σ_j L_ij w_r,j``, ``b_r,j = Σ_i L_ij w_r,i``.

    Parameters
    ----------
    link : `(B, N, N)` array, ``L_t``.
    read_weights_prev : `(B, R, N)` array, ``w^r_{t-1}``.

    Returns
    -------
    forward_weights : `(B, R, N)` array, ``f_t``.
    backward_weights : `(B, R, N)` array, ``b_t``.
    """
    forward_weights = np.matmul(read_weights_prev, np.swapaxes(link, 1, 2))
    backward_weights = np.matmul(read_weights_prev, link)
    return differentiable_tuple((forward_weights, backward_weights))


def link_step(link_prev, precedence_prev, write_weights, read_weights_prev):
    """One step of the temporal linkage: new link, precedence and temporal weights.

    ``L = link(L_prev, w, p_prev)``, ``p = precedence(p_prev, w)`` and
    ``f, b = temporal_weights(L, w^r_prev)``: the temporal weights use the new
    link matrix ``L_t`` (DNC Methods).

    Parameters
    ----------
    link_prev : `(B, N, N)` array, ``L_{t-1}``.
    precedence_prev : `(B, N)` array, ``p_{t-1}``.
    write_weights : `(B, N)` array, ``w^w_t``.
    read_weights_prev : `(B, R, N)` array, ``w^r_{t-1}``.

    Returns
    -------
    link : `(B, N, N)` array, ``L_t`` (zero diagonal, no gradient through it).
    precedence : `(B, N)` array, ``p_t``.
    forward_weights : `(B, R, N)` array, ``f_t``.
    backward_weights : `(B, R, N)` array, ``b_t``.
    """
    new_link = link(link_prev, write_weights, precedence_prev)
    new_precedence = precedence(precedence_prev, write_weights)
    forward_weights, backward_weights = temporal_weights(new_link, read_weights_prev)
    return differentiable_tuple((new_link, new_precedence, forward_weights, backward_weights))
