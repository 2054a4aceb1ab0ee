"""NTM addressing in ``autograd.numpy``: content focus, interpolation, shift, sharpening.

Graves, Wayne & Danihelka (2014), "Neural Turing Machines", section 3.3.  A
head's weighting is produced in four steps, one function each::

    w_c = content_weights(memory, keys, strengths)        # eq. (5), (6)
    w_g = interpolate(w_c, weights_prev, gates)           # eq. (7)
    w_s = shift(w_g, shifts)                              # eq. (8)
    w   = sharpen(w_s, gamma)                             # eq. (9)

and :func:`ntm_address` is their composition.  Everything is batched over a
leading axis ``B`` and over ``H`` heads; shapes use the letters of
:mod:`dmem._opspec`.  Functions never mutate their inputs.  The ε values are
part of the design contract (``DESIGN.md``).
"""

import autograd.numpy as np
from autograd.tracer import getval

COSINE_EPSILON = 1e-6
"""ε of the cosine similarity: ``u·v / (√(u·u+ε) √(v·v+ε))``."""

SHARPEN_EPSILON = 1e-12
"""ε of sharpening: ``(w_i+ε)^γ / Σ_j (w_j+ε)^γ``."""


def softmax(logits):
    """Softmax over the last axis, ``exp(x_i - max x) / Σ_j exp(x_j - max x)``.

    ``logits`` has any shape ``(..., N)``; so has the result.  The maximum is
    subtracted for stability (no overflow at logits of 1e3 and more) and
    carries no gradient: the softmax does not depend on it.
    """
    shifted = logits - np.max(getval(logits), axis=-1, keepdims=True)
    exps = np.exp(shifted)
    return exps / np.sum(exps, axis=-1, keepdims=True)


def cosine_similarity(memory, keys):
    """Cosine similarity of every key with every memory row (NTM eq. 6).

    ``K[k, M_i] = k·M_i / (√(k·k+ε) √(M_i·M_i+ε))`` with ε = 1e-6, so that an
    all-zero key or memory row gives 0 with a finite gradient.

    Parameters
    ----------
    memory : `(B, N, W)` array, the memory matrix ``M``.
    keys : `(B, H, W)` array, one key ``k`` per head.

    Returns
    -------
    `(B, H, N)` array of similarities in ``[-1, 1]``.
    """
    dots = np.einsum("bhw,bnw->bhn", keys, memory)
    key_norms = np.sqrt(np.sum(keys * keys, axis=-1) + COSINE_EPSILON)  # (B, H)
    memory_norms = np.sqrt(np.sum(memory * memory, axis=-1) + COSINE_EPSILON)  # (B, N)
    return dots / (key_norms[:, :, None] * memory_norms[:, None, :])


def content_weights(memory, keys, strengths):
    """Content-based addressing (NTM eq. 5): ``softmax_N(β · K[k, M_i])``.

    Parameters
    ----------
    memory : `(B, N, W)` array, the memory matrix ``M``.
    keys : `(B, H, W)` array, the key ``k`` of each head.
    strengths : `(B, H)` array, the key strength ``β`` of each head
        (``β ≥ 0`` in the NTM, any real value works).

    Returns
    -------
    `(B, H, N)` array: a weighting over the ``N`` memory slots for each head
    (non-negative, summing to 1).  Differentiable in all three inputs.
    """
    similarity = cosine_similarity(memory, keys)
    return softmax(strengths[:, :, None] * similarity)


def interpolate(content, weights_prev, gates):
    """Location-based interpolation (NTM eq. 7): ``w_g = g·w_c + (1−g)·w_prev``.

    Parameters
    ----------
    content : `(B, H, N)` array, the content weighting ``w_c``.
    weights_prev : `(B, H, N)` array, the head's previous weighting.
    gates : `(B, H)` array, the interpolation gate ``g`` (in ``[0, 1]`` in the NTM).

    Returns
    -------
    `(B, H, N)` array ``w_g``.  Differentiable in all three inputs.
    """
    g = gates[:, :, None]
    return g * content + (1.0 - g) * weights_prev


def shift(weights, shifts):
    """Rotation by a circular convolution (NTM eq. 8).

    ``out_i = Σ_k s_k · w_{(i − (k − r)) mod N}`` for ``k = 0..S−1``, ``r = S//2``:
    ``s_k`` is the weight of a shift by ``k − r`` slots (``s_r`` keeps the
    weighting in place, ``s_{r+1}`` moves it one slot up).  When ``S > N`` the
    shifts wrap around the memory several times.

    Parameters
    ----------
    weights : `(B, H, N)` array ``w``.
    shifts : `(B, H, S)` array ``s`` (a distribution over the ``S = 2r+1``
        shifts in the NTM; ``S`` must be odd).

    Returns
    -------
    `(B, H, N)` array.  Differentiable in both inputs.
    """
    n = weights.shape[-1]
    width = shifts.shape[-1]
    radius = width // 2
    # source[k, i] = (i - (k - r)) mod N: the slot that shift k moves onto slot i.
    source = (np.arange(n)[None, :] - (np.arange(width)[:, None] - radius)) % n
    rotated = weights[:, :, source]  # (B, H, S, N)
    return np.einsum("bhs,bhsn->bhn", shifts, rotated)


def sharpen(weights, gamma):
    """Sharpening (NTM eq. 9): ``(w_i+ε)^γ / Σ_j (w_j+ε)^γ`` with ε = 1e-12.

    Computed as ``softmax_N(γ · log(w_i + ε))``, which is the same quantity
    without overflow or underflow to 0/0 at large ``γ``.

    Parameters
    ----------
    weights : `(B, H, N)` array ``w``; must be non-negative (``w_i + ε > 0``).
    gamma : `(B, H)` array, the sharpening exponent ``γ`` (``γ ≥ 1`` in the NTM).

    Returns
    -------
    `(B, H, N)` array, non-negative, summing to 1 over ``N``.  Differentiable
    in both inputs.
    """
    log_weights = np.log(weights + SHARPEN_EPSILON)
    return softmax(gamma[:, :, None] * log_weights)


def ntm_address(memory, keys, strengths, gates, shifts, gamma, weights_prev):
    """A full NTM head addressing step (NTM section 3.3, eqs. 5–9).

    ``sharpen(shift(interpolate(content_weights(M, k, β), w_prev, g), s), γ)``.

    Parameters
    ----------
    memory : `(B, N, W)` array, the memory matrix ``M``.
    keys : `(B, H, W)` array, key ``k`` of each head.
    strengths : `(B, H)` array, key strength ``β``.
    gates : `(B, H)` array, interpolation gate ``g``.
    shifts : `(B, H, S)` array, shift weighting ``s`` (``S`` odd).
    gamma : `(B, H)` array, sharpening exponent ``γ``.
    weights_prev : `(B, H, N)` array, the heads' previous weightings.

    Returns
    -------
    `(B, H, N)` array: the heads' new weightings.  Differentiable in all inputs.
    """
    content = content_weights(memory, keys, strengths)
    gated = interpolate(content, weights_prev, gates)
    shifted = shift(gated, shifts)
    return sharpen(shifted, gamma)
