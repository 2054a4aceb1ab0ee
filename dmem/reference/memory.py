"""Reading and writing the memory matrix (NTM §3.1-3.2, DNC Methods "Reading and writing").

Every function is batched over a leading axis ``B``, written in
``autograd.numpy`` and differentiable in every argument.  Shapes: ``B`` batch,
``N`` memory slots, ``W`` word size, ``H`` heads.  Nothing here mutates its
inputs.
"""

import autograd.numpy as np


def read(memory, weights):
    """Read vectors: a weighted sum of memory rows per head (NTM eq. 2).

    ``r_h = Σ_i w_{h,i} M_i``

    Parameters
    ----------
    memory : array, `(B, N, W)`
        The memory matrix ``M``.
    weights : array, `(B, H, N)`
        One read weighting ``w_h`` per head.

    Returns
    -------
    reads : array, `(B, H, W)`
        ``r_h`` for every head.  Gradients flow to both arguments.
    """
    return np.einsum("bhn,bnw->bhw", weights, memory)


def erase_and_add(weights, erase, add):
    """The two terms of a write: retention ``Π_h (1 − w_h e_hᵀ)`` and addition ``Σ_h w_h a_hᵀ``.

    The product over heads is built one head at a time (no ``np.prod``,
    whose gradient divides by its factors, and a factor ``1 − w e`` is 0
    when ``w = e = 1``).

    Parameters
    ----------
    weights : array, `(B, H, N)`
        Write weightings ``w_h``.
    erase : array, `(B, H, W)`
        Erase vectors ``e_h`` (each entry in [0, 1]).
    add : array, `(B, H, W)`
        Add vectors ``a_h``.

    Returns
    -------
    retention : array, `(B, N, W)`
        ``Π_h (1 − w_h e_hᵀ)``: the fraction of each memory entry kept.
    addition : array, `(B, N, W)`
        ``Σ_h w_h a_hᵀ``.
    """
    retention = 1.0
    for h in range(weights.shape[1]):
        retention = retention * (1.0 - weights[:, h, :, None] * erase[:, h, None, :])
    addition = np.einsum("bhn,bhw->bnw", weights, add)
    return retention, addition


def write(memory, weights, erase, add):
    """Write to memory with erase and add vectors (NTM eqs. 3-4, DNC Methods).

    ``M' = M ∘ Π_h (1 − w_h e_hᵀ) + Σ_h w_h a_hᵀ``

    Every head erases from the old memory and the additions of all heads are
    summed afterwards, so the result does not depend on the order of heads.

    Parameters
    ----------
    memory : array, `(B, N, W)`
        The memory matrix ``M`` before the write.
    weights : array, `(B, H, N)`
        Write weightings ``w_h``.
    erase : array, `(B, H, W)`
        Erase vectors ``e_h``.
    add : array, `(B, H, W)`
        Add vectors ``a_h``.

    Returns
    -------
    memory : array, `(B, N, W)`
        ``M'``.  Gradients flow to every argument.
    """
    retention, addition = erase_and_add(weights, erase, add)
    return memory * retention + addition
