"""NTM head parameterisation with a hand-written backward (numpy).

A head's slice of the interface vector is ``[key (W), β, g, s (S), γ]`` and,
for a write head, ``[erase (W), add (W)]`` after it (``docs/models.md``).
Activations (NTM paper §3.3): β = softplus, g = σ, s = softmax over S,
γ = 1 + softplus, erase = σ, key and add linear.
"""

import numpy as np

from .controllers import sigmoid, softplus


def head_size(W, S, write):
    return 3 * W + S + 3 if write else W + S + 3


def activate(raw, W, S, write):
    """``raw (B, H, head_size)`` -> dict of head quantities, plus what the backward needs."""
    key = raw[..., :W]
    beta_raw = raw[..., W]
    gate = sigmoid(raw[..., W + 1])
    s_raw = raw[..., W + 2 : W + 2 + S]
    s = np.exp(s_raw - s_raw.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    gamma_raw = raw[..., W + 2 + S]
    out = {
        "keys": np.ascontiguousarray(key),
        "strengths": softplus(beta_raw),
        "gates": gate,
        "shifts": s,
        "gamma": 1.0 + softplus(gamma_raw),
    }
    saved = [sigmoid(beta_raw), gate, s, sigmoid(gamma_raw)]
    if write:
        erase = sigmoid(raw[..., W + 3 + S : 2 * W + 3 + S])
        out["erase"] = erase
        out["add"] = np.ascontiguousarray(raw[..., 2 * W + 3 + S :])
        saved.append(erase)
    return out, saved


def activate_backward(saved, grads, W, S, write):
    """Gradient of the raw head slice from the gradients of the activated quantities.

    ``grads``: dict with the keys of :func:`activate`'s output.
    """
    sig_beta, gate, s, sig_gamma = saved[:4]
    B, H = gate.shape
    d = np.empty((B, H, head_size(W, S, write)), dtype=gate.dtype)
    d[..., :W] = grads["keys"]
    d[..., W] = grads["strengths"] * sig_beta
    d[..., W + 1] = grads["gates"] * gate * (1.0 - gate)
    ds = grads["shifts"]
    d[..., W + 2 : W + 2 + S] = s * (ds - (s * ds).sum(axis=-1, keepdims=True))
    d[..., W + 2 + S] = grads["gamma"] * sig_gamma
    if write:
        erase = saved[4]
        d[..., W + 3 + S : 2 * W + 3 + S] = grads["erase"] * erase * (1.0 - erase)
        d[..., 2 * W + 3 + S :] = grads["add"]
    return d
