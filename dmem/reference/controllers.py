"""Controllers of the memory models, their initialisation, and the activations of the interface.

The controller of an NTM or a DNC is a small network that reads the input and
the previous read vectors, ``z_t = [x_t, reads_{t-1}]`` of size ``Z``, and
emits ``h_t`` of size ``C`` (``docs/models.md``, "Controller").  Two kinds:

* ``"lstm"`` — one LSTM layer (Hochreiter & Schmidhuber 1997, without
  peepholes), :func:`lstm_step`;
* ``"ff"`` — one tanh layer, :func:`ff_step`.

Everything is batched over a leading axis ``B`` and written in
``autograd.numpy``; nothing mutates its inputs.  The ``*_init`` functions draw
from a ``numpy.random.Generator`` in a fixed order (documented on each) and
return plain numpy arrays of the requested dtype.

The element-wise activations used by the interfaces of both models
(:func:`sigmoid`, :func:`softplus`, :func:`oneplus`, :func:`softmax`) live here
too, so that the NTM and the DNC use exactly the same, numerically stable,
definitions.
"""

import autograd.numpy as np
import numpy
from autograd.tracer import getval

__all__ = [
    "sigmoid", "softplus", "oneplus", "softmax",
    "uniform_fan_in", "linear_init", "linear",
    "lstm_init", "lstm_step", "ff_init", "ff_step",
    "controller_init", "controller_initial_state", "controller_step",
    "CONTROLLERS",
]

CONTROLLERS = ("lstm", "ff")
"""The controller kinds: one LSTM layer, or one tanh layer."""

LSTM_FORGET_BIAS = 1.0
"""Initial bias of the LSTM forget gate (the other biases start at 0)."""


# --------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------

def sigmoid(x):
    """Logistic function ``σ(x) = 1 / (1 + e^{−x})``, computed as ``(1 + tanh(x/2)) / 2``.

    The tanh form never overflows.  Any shape; same shape and dtype out.
    """
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


def softplus(x):
    """``log(1 + e^x)``, computed stably as ``max(x, 0) + log1p(e^{−|x|})``.

    Any shape; same shape and dtype out.  Its derivative is ``σ(x)``
    everywhere, including at ``x = 0``.
    """
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def oneplus(x):
    """``1 + softplus(x)`` (DNC Methods, "oneplus"): a value in ``[1, ∞)``."""
    return 1.0 + softplus(x)


def softmax(logits, axis=-1):
    """``exp(x_i − max x) / Σ_j exp(x_j − max x)`` along ``axis``.

    The maximum is subtracted for stability and carries no gradient (the
    softmax does not depend on it).
    """
    shifted = logits - numpy.max(getval(logits), axis=axis, keepdims=True)
    exps = np.exp(shifted)
    return exps / np.sum(exps, axis=axis, keepdims=True)


# --------------------------------------------------------------------------
# Affine layers
# --------------------------------------------------------------------------

def uniform_fan_in(rng, shape, dtype):
    """One draw of ``rng.uniform(−a, a, shape)`` with ``a = 1/√(fan_in)``, ``fan_in = shape[0]``.

    Drawn in float64 and cast, so that the float32 parameters of a seed are
    the float64 ones rounded.
    """
    bound = 1.0 / numpy.sqrt(shape[0])
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def linear_init(rng, input_size, output_size, dtype):
    """An affine layer ``x · W + b``: ``W (input_size, output_size)`` uniform ±1/√input_size, ``b = 0``.

    Draws exactly one array from ``rng`` (``W``).  Returns ``(W, b)``.
    """
    weights = uniform_fan_in(rng, (input_size, output_size), dtype)
    bias = numpy.zeros(output_size, dtype=dtype)
    return weights, bias


def linear(W, b, x):
    """``x · W + b`` for ``x (B, D_in)``, ``W (D_in, D_out)``, ``b (D_out,)`` → ``(B, D_out)``."""
    return np.dot(x, W) + b


# --------------------------------------------------------------------------
# LSTM
# --------------------------------------------------------------------------

def lstm_init(rng, input_size, hidden_size, dtype=numpy.float64):
    """Parameters of one LSTM layer with ``Z = input_size`` inputs and ``C = hidden_size`` cells.

    Returns ``(W, b)``: ``W (Z + C, 4C)`` uniform in ±1/√(Z + C) (one draw
    from ``rng``), ``b (4C,)`` zero except the forget-gate block ``b[C:2C] = 1``.
    The four column blocks are the gates ``i, f, o, g`` in that order.
    """
    weights = uniform_fan_in(rng, (input_size + hidden_size, 4 * hidden_size), dtype)
    bias = numpy.zeros(4 * hidden_size, dtype=dtype)
    bias[hidden_size:2 * hidden_size] = LSTM_FORGET_BIAS
    return weights, bias


def lstm_step(W, b, z, h, c):
    """One LSTM step (``docs/models.md``, "Controller").

    ``[i, f, o, g] = [z, h_{t-1}] · W + b``, split in four blocks of ``C``;
    ``i, f, o = σ(·)``, ``g = tanh(·)``;
    ``c_t = f ∘ c_{t-1} + i ∘ g``, ``h_t = o ∘ tanh(c_t)``.

    Parameters
    ----------
    W : `(Z + C, 4C)` array.
    b : `(4C,)` array.
    z : `(B, Z)` array, the controller input ``[x_t, reads_{t-1}]``.
    h : `(B, C)` array, ``h_{t-1}``.
    c : `(B, C)` array, the cell ``c_{t-1}``.

    Returns
    -------
    h : `(B, C)` array, ``h_t``.
    c : `(B, C)` array, ``c_t``.
    """
    size = h.shape[-1]
    gates = linear(W, b, np.concatenate([z, h], axis=1))
    input_gate = sigmoid(gates[:, 0 * size:1 * size])
    forget_gate = sigmoid(gates[:, 1 * size:2 * size])
    output_gate = sigmoid(gates[:, 2 * size:3 * size])
    candidate = np.tanh(gates[:, 3 * size:4 * size])
    c_new = forget_gate * c + input_gate * candidate
    h_new = output_gate * np.tanh(c_new)
    return h_new, c_new


# --------------------------------------------------------------------------
# Feed-forward
# --------------------------------------------------------------------------

def ff_init(rng, input_size, hidden_size, dtype=numpy.float64):
    """Parameters of one tanh layer: ``W (Z, C)`` uniform ±1/√Z (one draw), ``b (C,) = 0``."""
    return linear_init(rng, input_size, hidden_size, dtype)


def ff_step(W, b, z):
    """One feed-forward controller step: ``h_t = tanh(z · W + b)``.

    ``W (Z, C)``, ``b (C,)``, ``z (B, Z)`` → ``h (B, C)``.
    """
    return np.tanh(linear(W, b, z))


# --------------------------------------------------------------------------
# Dispatch on the kind
# --------------------------------------------------------------------------

def controller_init(rng, kind, input_size, hidden_size, dtype=numpy.float64):
    """``(W, b)`` of a controller of ``kind`` ``"lstm"`` or ``"ff"`` (one draw from ``rng``)."""
    if kind == "lstm":
        return lstm_init(rng, input_size, hidden_size, dtype)
    if kind == "ff":
        return ff_init(rng, input_size, hidden_size, dtype)
    raise ValueError(f"controller must be one of {CONTROLLERS}, got {kind!r}")


def controller_initial_state(batch_size, hidden_size, dtype):
    """``(h_0, c_0)``, both zero `(B, C)`.  The feed-forward controller ignores them."""
    zeros = numpy.zeros((batch_size, hidden_size), dtype=dtype)
    return zeros, zeros


def controller_step(kind, W, b, z, state):
    """One controller step of either kind: ``(z (B, Z), (h, c)) -> (h_t, (h_t, c_t))``.

    For ``"ff"`` the state is passed through unchanged (``c`` stays as it was).
    """
    h, c = state
    if kind == "lstm":
        h, c = lstm_step(W, b, z, h, c)
    else:
        h = ff_step(W, b, z)
    return h, (h, c)
