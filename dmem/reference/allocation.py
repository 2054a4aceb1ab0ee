"""Dynamic memory allocation of the DNC (Graves et al. 2016, Methods "Dynamic memory allocation").

Every function is batched over a leading axis ``B``, written in
``autograd.numpy``, and never mutates its inputs.  Shapes: ``B`` batch, ``N``
memory slots, ``R`` read heads.
"""

import autograd.numpy as np
from autograd.tracer import getval

#: The ε of the allocation weighting: usages are mapped to ``ε + (1 − ε) u``
#: so that no slot has usage exactly 0 (part of the contract).
ALLOCATION_EPSILON = 1e-6


def memory_retention(read_weights_prev, free_gates):
    """Memory retention vector ``ψ = Π_r (1 − f_r w_r^{read,prev})``.

    The product over read heads is built one head at a time (no ``np.prod``,
    whose gradient divides by its factors, which are 0 when ``f = w = 1``).

    Parameters
    ----------
    read_weights_prev : array, `(B, R, N)`
        The read weightings of the previous step, ``w_r^{read,prev}``.
    free_gates : array, `(B, R)`
        Free gates ``f_r`` in [0, 1].

    Returns
    -------
    retention : array, `(B, N)`
        ``ψ``: how much of each slot survives being freed.
    """
    retention = 1.0
    for r in range(read_weights_prev.shape[1]):
        retention = retention * (1.0 - free_gates[:, r, None] * read_weights_prev[:, r, :])
    return retention


def usage(usage_prev, write_weights_prev, read_weights_prev, free_gates):
    """Usage vector (DNC Methods, "Dynamic memory allocation").

    ``u = (u_prev + w^{write,prev} − u_prev ∘ w^{write,prev}) ∘ ψ``, with
    ``ψ = Π_r (1 − f_r w_r^{read,prev})`` (:func:`memory_retention`).

    Parameters
    ----------
    usage_prev : array, `(B, N)`
        ``u_prev``, in [0, 1].
    write_weights_prev : array, `(B, N)`
        The write weighting of the previous step.
    read_weights_prev : array, `(B, R, N)`
        The read weightings of the previous step.
    free_gates : array, `(B, R)`
        Free gates ``f_r``.

    Returns
    -------
    usage : array, `(B, N)`
        ``u``.  Gradients flow to every argument.
    """
    written = usage_prev + write_weights_prev - usage_prev * write_weights_prev
    return written * memory_retention(read_weights_prev, free_gates)


def free_list(usage_hat):
    """The free list ``φ``: slot indices sorted by ascending usage.

    A stable sort, so equal usages keep the order of their indices.  Computed
    on the raw values: the permutation carries no gradient.

    Parameters
    ----------
    usage_hat : array, `(B, N)`

    Returns
    -------
    phi : int array, `(B, N)`
        ``φ_j`` is the index of the ``j``-th least used slot.
    """
    return np.argsort(np.asarray(getval(usage_hat)), axis=1, kind="stable")


def exclusive_cumprod(values):
    """``z_j = Π_{i<j} v_i`` along axis 1 (``z_0 = 1``), by explicit products.

    autograd has no gradient for ``np.cumprod``, and a division-based
    gradient would not do (the values can be 0), so the running product is
    built column by column.

    Parameters
    ----------
    values : array, `(B, N)`

    Returns
    -------
    products : array, `(B, N)`
    """
    columns = values.T  # (N, B): one row per slot
    products = [np.ones_like(columns[0])]
    for j in range(1, values.shape[1]):
        products.append(products[-1] * columns[j - 1])
    return np.array(products).T


def allocation(usage):
    """Allocation weighting (DNC Methods, "Dynamic memory allocation").

    ``û = ε + (1 − ε) u`` with ε = 1e-6; ``φ`` = stable ascending argsort of
    ``û`` (:func:`free_list`);
    ``a[φ_j] = (1 − û[φ_j]) Π_{i<j} û[φ_i]``.

    The least used slot gets the most weight; the weights lie in [0, 1] and
    sum to at most 1.

    Parameters
    ----------
    usage : array, `(B, N)`
        Usage vector ``u`` in [0, 1].

    Returns
    -------
    allocation : array, `(B, N)`
        ``a``.  The sort order ``φ`` carries no gradient (it is held constant);
        the gradient flows through the values of ``û``.
    """
    usage_hat = ALLOCATION_EPSILON + (1.0 - ALLOCATION_EPSILON) * usage
    phi = free_list(usage_hat)
    rows = np.arange(phi.shape[0])[:, None]
    sorted_usage = usage_hat[rows, phi]
    sorted_allocation = (1.0 - sorted_usage) * exclusive_cumprod(sorted_usage)
    # Undo the sort: slot φ_j receives the j-th sorted weight.
    inverse = np.argsort(phi, axis=1)
    return sorted_allocation[rows, inverse]
