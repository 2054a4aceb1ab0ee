"""Compiled NTM addressing: ``content_weights``, ``shift``, ``sharpen``, ``ntm_address``.

Each op ``X`` has ``X_forward(*inputs) -> (outputs, saved)`` and
``X_backward(saved, grad) -> tuple of input gradients``.  The wrappers validate
(:func:`._common.forward_inputs`), allocate the outputs and a ``float64`` work
array (one row per batch element, for the kernels' double-precision
intermediates), and run the kernels of ``dmem/_kernels/addressing.pyx``.

What the forwards save for the backwards:

* ``content_weights``: the inputs, the weighting, the cosine similarities
  ``(B, H, N)`` and the norms ``√(M_i·M_i+ε)`` ``(B, N)`` and ``√(k·k+ε)``
  ``(B, H)``;
* ``shift``: the inputs;
* ``sharpen``: the inputs, the output and ``log(w+ε)`` ``(B, H, N)`` in
  float64 whatever the dtype (the backward then needs no ``exp`` or ``log``);
* ``ntm_address``: the inputs, the output, the content weighting and cosines
  ``(B, H, N)``, the two norms, and the sharpening's ``log(w_s+ε)`` (float64);
  the interpolated and shifted weightings are recomputed (``O(N S)`` per head).

Inputs and outputs are saved without a copy: modifying them in place between
``X_forward`` and ``X_backward`` changes the gradients.  Weightings given to
``sharpen`` and ``ntm_address`` must be non-negative (``log(w+ε)`` is taken),
as in the reference.
"""

import numpy as np

from .._kernels import addressing as _kernel_module
from ._common import Saved, by_dtype, backward_inputs, forward_inputs, op_threads, output

_kernels = by_dtype(_kernel_module)


def _threads(batch, work):
    """Thread count for a call (see :func:`dmem.compiled._common.op_threads`)."""
    return op_threads(batch, work)


def _work(batch, length):
    """The kernels' per-row double-precision scratch."""
    return np.empty((batch, length), dtype=np.float64)


# ---------------------------------------------------------------- content_weights

def content_weights_forward(memory, keys, strengths):
    """Content weighting ``softmax_N(β cos(k, M_i))`` (NTM eq. 5–6), ε = 1e-6.

    ``memory`` `(B, N, W)`, ``keys`` `(B, H, W)`, ``strengths`` `(B, H)`.
    Returns ``(weights, saved)`` with ``weights`` `(B, H, N)`.
    """
    (memory, keys, strengths), sizes = forward_inputs("content_weights", (memory, keys, strengths))
    B, N, W, H, dtype = sizes["B"], sizes["N"], sizes["W"], sizes["H"], sizes["dtype"]
    weights = np.empty((B, H, N), dtype=dtype)
    cosines = np.empty((B, H, N), dtype=dtype)
    memory_norms = np.empty((B, N), dtype=dtype)
    key_norms = np.empty((B, H), dtype=dtype)
    _kernels[memory.dtype].content_weights_forward(
        memory, keys, strengths, weights, cosines, memory_norms, key_norms,
        _work(B, 2 * N), _threads(B, B * H * N * W))
    saved = Saved("content_weights",
                  (memory, keys, strengths, weights, cosines, memory_norms, key_norms),
                  None, sizes)
    return weights, saved


def content_weights_backward(saved, grad_weights):
    """Gradients ``(memory (B,N,W), keys (B,H,W), strengths (B,H))`` of ``content_weights``.

    ``grad_weights`` `(B, H, N)` is the gradient of the weighting (``None`` for zero).
    """
    (grad,), arrays = backward_inputs("content_weights", saved, (grad_weights,),
                                      ("BNW", "BHW", "BH", "BHN", "BHN", "BN", "BH"))
    memory, keys, strengths, weights, cosines, memory_norms, key_norms = arrays
    B, N, W, H, dtype = (saved.sizes[k] for k in ("B", "N", "W", "H", "dtype"))
    grad_memory = output((B, N, W), dtype)
    grad_keys = np.empty((B, H, W), dtype=dtype)
    grad_strengths = np.empty((B, H), dtype=dtype)
    _kernels[memory.dtype].content_weights_backward(
        memory, keys, strengths, weights, cosines, memory_norms, key_norms, grad,
        grad_memory, grad_keys, grad_strengths, _work(B, 3 * N + W), _threads(B, B * H * N * W))
    return grad_memory, grad_keys, grad_strengths


# ---------------------------------------------------------------- shift

def shift_forward(weights, shifts):
    """Circular convolution ``out_i = Σ_k s_k w_{(i−(k−r)) mod N}`` (NTM eq. 8), ``r = S//2``.

    ``weights`` `(B, H, N)`, ``shifts`` `(B, H, S)` with ``S`` odd (may exceed ``N``).
    Returns ``(out, saved)`` with ``out`` `(B, H, N)`.
    """
    (weights, shifts), sizes = forward_inputs("shift", (weights, shifts))
    B, N, H, S, dtype = sizes["B"], sizes["N"], sizes["H"], sizes["S"], sizes["dtype"]
    out = np.empty((B, H, N), dtype=dtype)
    _kernels[weights.dtype].shift_forward(weights, shifts, out, _work(B, 2 * N + S), _threads(B, B * H * N * S))
    return out, Saved("shift", (weights, shifts), None, sizes)


def shift_backward(saved, grad_weights):
    """Gradients ``(weights (B,H,N), shifts (B,H,S))`` of ``shift``.

    ``grad_weights`` `(B, H, N)` is the gradient of the output (``None`` for zero).
    """
    (grad,), (weights, shifts) = backward_inputs("shift", saved, (grad_weights,), ("BHN", "BHS"))
    B, N, H, S, dtype = (saved.sizes[k] for k in ("B", "N", "H", "S", "dtype"))
    grad_w = np.empty((B, H, N), dtype=dtype)
    grad_s = np.empty((B, H, S), dtype=dtype)
    _kernels[weights.dtype].shift_backward(weights, shifts, grad, grad_w, grad_s, _work(B, 3 * N + 2 * S),
                            _threads(B, 2 * B * H * N * S))
    return grad_w, grad_s


# ---------------------------------------------------------------- sharpen

def sharpen_forward(weights, gamma):
    """Sharpening ``(w_i+ε)^γ / Σ_j (w_j+ε)^γ`` (NTM eq. 9), ε = 1e-12, in log space.

    ``weights`` `(B, H, N)` (non-negative), ``gamma`` `(B, H)`.
    Returns ``(out, saved)`` with ``out`` `(B, H, N)`.
    """
    (weights, gamma), sizes = forward_inputs("sharpen", (weights, gamma))
    B, N, H, dtype = sizes["B"], sizes["N"], sizes["H"], sizes["dtype"]
    out = np.empty((B, H, N), dtype=dtype)
    log_weights = np.empty((B, H, N), dtype=np.float64)
    _kernels[weights.dtype].sharpen_forward(weights, gamma, out, log_weights, _work(B, 2 * N),
                             _threads(B, 16 * B * H * N))
    return out, Saved("sharpen", (weights, gamma, out, log_weights), None, sizes)


def sharpen_backward(saved, grad_weights):
    """Gradients ``(weights (B,H,N), gamma (B,H))`` of ``sharpen``.

    ``grad_weights`` `(B, H, N)` is the gradient of the output (``None`` for zero).
    """
    (grad,), (weights, gamma, out, log_weights) = backward_inputs(
        "sharpen", saved, (grad_weights,), ("BHN", "BH", "BHN", "dBHN"))
    B, N, H, dtype = (saved.sizes[k] for k in ("B", "N", "H", "dtype"))
    grad_w = np.empty((B, H, N), dtype=dtype)
    grad_gamma = np.empty((B, H), dtype=dtype)
    _kernels[weights.dtype].sharpen_backward(weights, gamma, out, log_weights, grad, grad_w, grad_gamma,
                              _work(B, 3 * N), _threads(B, 4 * B * H * N))
    return grad_w, grad_gamma


# ---------------------------------------------------------------- ntm_address

def ntm_address_forward(memory, keys, strengths, gates, shifts, gamma, weights_prev):
    """One NTM addressing step, fused: content → interpolate → shift → sharpen.

    ``memory`` `(B, N, W)`, ``keys`` `(B, H, W)`, ``strengths``, ``gates``,
    ``gamma`` `(B, H)`, ``shifts`` `(B, H, S)` (``S`` odd), ``weights_prev``
    `(B, H, N)`.  Returns ``(weights, saved)`` with ``weights`` `(B, H, N)`.
    """
    inputs, sizes = forward_inputs(
        "ntm_address", (memory, keys, strengths, gates, shifts, gamma, weights_prev))
    B, N, W, H, S, dtype = (sizes[k] for k in ("B", "N", "W", "H", "S", "dtype"))
    out = np.empty((B, H, N), dtype=dtype)
    content = np.empty((B, H, N), dtype=dtype)
    cosines = np.empty((B, H, N), dtype=dtype)
    memory_norms = np.empty((B, N), dtype=dtype)
    key_norms = np.empty((B, H), dtype=dtype)
    log_weights = np.empty((B, H, N), dtype=np.float64)
    _kernels[inputs[0].dtype].ntm_address_forward(
        *inputs, out, content, cosines, memory_norms, key_norms, log_weights,
        _work(B, 4 * N + S), _threads(B, B * H * N * (W + S + 16)))
    saved = Saved("ntm_address",
                  (*inputs, out, content, cosines, memory_norms, key_norms, log_weights),
                  None, sizes)
    return out, saved


def ntm_address_backward(saved, grad_weights):
    """Gradients of ``ntm_address`` in input order: ``(memory (B,N,W), keys (B,H,W),
    strengths (B,H), gates (B,H), shifts (B,H,S), gamma (B,H), weights_prev (B,H,N))``.

    ``grad_weights`` `(B, H, N)` is the gradient of the output (``None`` for zero).
    """
    (grad,), arrays = backward_inputs(
        "ntm_address", saved, (grad_weights,),
        ("BNW", "BHW", "BH", "BH", "BHS", "BH", "BHN", "BHN", "BHN", "BHN", "BN", "BH", "dBHN"))
    B, N, W, H, S, dtype = (saved.sizes[k] for k in ("B", "N", "W", "H", "S", "dtype"))
    grads = (
        output((B, N, W), dtype),          # memory
        np.empty((B, H, W), dtype=dtype),  # keys
        np.empty((B, H), dtype=dtype),     # strengths
        np.empty((B, H), dtype=dtype),     # gates
        np.empty((B, H, S), dtype=dtype),  # shifts
        np.empty((B, H), dtype=dtype),     # gamma
        np.empty((B, H, N), dtype=dtype),  # weights_prev
    )
    _kernels[arrays[0].dtype].ntm_address_backward(
        *arrays, grad, *grads, _work(B, 7 * N + 2 * S + W),
        _threads(B, B * H * N * (W + 2 * S + 8)))
    return grads
