"""The Differentiable Neural Computer as a pure function of its parameters (``autograd.numpy``).

Graves et al. (2016), "Hybrid computing using a neural network with dynamic
external memory", Methods.  The computation is fixed, parameter by parameter,
by ``docs/models.md``; this module is its readable ground truth,
differentiated by autograd.  One step::

    z_t  = [x_t, reads_{t-1}]                                      controller input
    h_t  = controller(z_t, h_{t-1})                                LSTM or tanh layer
    ξ_t  = h_t · interface_W + interface_b                         interface vector
    u_t  = usage(u_{t-1}, ww_{t-1}, wr_{t-1}, free)                 dynamic allocation
    a_t  = allocation(u_t)
    cw_t = content_weights(M_{t-1}, write_key, write_strength)
    ww_t = g_w (g_a a_t + (1 − g_a) cw_t)                          write weighting
    M_t  = write(M_{t-1}, ww_t, erase, write_vector)
    L_t, p_t, f_t, b_t = link_step(L_{t-1}, p_{t-1}, ww_t, wr_{t-1})  temporal linkage
    cr_t = content_weights(M_t, read_keys, read_strengths)
    wr_t = π_backward b_t + π_content cr_t + π_forward f_t           read weightings
    reads_t = read(M_t, wr_t)
    y_t  = [h_t, reads_t] · output_W + output_b                    logits

The memory operations are called only through an ``ops`` namespace (default
:mod:`dmem.reference`; :mod:`dmem.compiled` runs the same model on the Cython
kernels).  The state starts at zero (``M_0, u_0, ww_0, wr_0, p_0, L_0,
reads_0 = 0``, ``h_0 = c_0 = 0``) and nothing of it is learned.

Parameters (``params``, a dict of arrays, all of one float dtype)::

    controller_W   (Z + C, 4C) lstm  |  (Z, C) ff      Z = I + R·W
    controller_b   (4C,)       lstm  |  (C,)   ff
    interface_W    (C, K)              K = R·W + 3W + 5R + 3
    interface_b    (K,)
    output_W       (C + R·W, O)
    output_b       (O,)

``buffers`` is always empty (kept for symmetry with the NTM).

Initialisation (:func:`init_params`) draws from
``numpy.random.default_rng(seed)`` in this order: ``controller_W`` (uniform
±1/√(fan_in), fan_in = Z + C for lstm, Z for ff), ``interface_W`` (±1/√C),
``output_W`` (±1/√(C + R·W)); biases are 0 except the LSTM forget-gate block
``controller_b[C:2C] = 1``.  Draws are in float64, then cast.
"""

import dataclasses
from collections import namedtuple

import autograd.numpy as np
import numpy

from . import controllers
from .controllers import controller_initial_state, controller_step, linear, oneplus, sigmoid, softmax
from .loss import sigmoid_cross_entropy_bits
from .ntm import (
    _check_config,
    _controller_shapes,
    _init_controller_interface_output,
    _set_choice_field,
    _set_int_field,
    cast,
    check_float_dtype,
    check_params,
    check_sequence,
    check_targets,
    make_rng,
    resolve_ops,
    unroll,
)

__all__ = [
    "DNCConfig", "DNCState", "init_params", "param_shapes", "split_interface",
    "initial_state", "step", "forward", "loss",
]

DNC_OPS = ("usage", "allocation", "content_weights", "write", "link_step", "read")
"""The memory operations the DNC calls through its ``ops`` namespace."""

LINK_TRACE_MAX_SLOTS = 64
"""The trace holds the link matrices ``(T, B, N, N)`` only when ``N`` is at most this."""

READ_MODES = ("backward", "content", "forward")
"""The order of each read head's three modes in the interface vector and in ``read_modes``."""


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DNCConfig:
    """Sizes and choices of a DNC; validated on creation.

    Attributes
    ----------
    input_size, output_size : int
        ``I`` and ``O``.
    memory_slots, word_size : int
        ``N`` and ``W``.
    read_heads : int
        ``R`` (the DNC has one write head).
    controller : ``"lstm"`` or ``"ff"``
    controller_size : int
        ``C``.
    """

    input_size: int
    output_size: int
    memory_slots: int = 16
    word_size: int = 16
    read_heads: int = 4
    controller: str = "lstm"
    controller_size: int = 64

    def __post_init__(self):
        for name in ("input_size", "output_size", "memory_slots", "word_size",
                     "read_heads", "controller_size"):
            _set_int_field(self, name, minimum=1)
        _set_choice_field(self, "controller", controllers.CONTROLLERS)

    @property
    def controller_input_size(self):
        """``Z = I + R·W``: the input and the previous reads."""
        return self.input_size + self.read_heads * self.word_size

    @property
    def interface_size(self):
        """``K = R·W + 3W + 5R + 3``."""
        R, W = self.read_heads, self.word_size
        return R * W + 3 * W + 5 * R + 3


def param_shapes(config):
    """``{name: shape}`` of every learned parameter of ``config`` (see the module docstring)."""
    _check_config(config, DNCConfig)
    return _controller_shapes(config)


def buffer_shapes(config):
    """The DNC has no fixed arrays: ``{}``."""
    _check_config(config, DNCConfig)
    return {}


def init_params(config, seed_or_rng, dtype=numpy.float64):
    """Initial parameters and (empty) buffers of a DNC, drawn in the documented order.

    Parameters
    ----------
    config : DNCConfig
    seed_or_rng : int or numpy.random.Generator
        An int seeds ``numpy.random.default_rng``; a Generator is drawn from
        (and advanced).  The same seed gives identical arrays.
    dtype : float32 or float64

    Returns
    -------
    params : dict of str → array (see :func:`param_shapes`)
    buffers : ``{}``
    """
    _check_config(config, DNCConfig)
    rng = make_rng(seed_or_rng)
    dtype = check_float_dtype(dtype)
    return _init_controller_interface_output(rng, config, dtype), {}


# --------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------

DNCState = namedtuple(
    "DNCState", "controller memory usage link precedence read_weights write_weights reads")
DNCState.__doc__ = """The recurrent state of a DNC between two steps.

controller ``(h (B, C), c (B, C))``; memory ``(B, N, W)``; usage ``(B, N)``;
link ``(B, N, N)``; precedence ``(B, N)``; read_weights ``(B, R, N)``;
write_weights ``(B, N)``; reads ``(B, R, W)``.
"""


def split_interface(interface, config):
    """Split and activate the interface vector ``ξ (B, K)`` (DNC Methods, "Interface parameters").

    Layout, in this order: read keys ``(R·W)``, read strengths ``(R)``,
    write key ``(W)``, write strength ``(1)``, erase ``(W)``, write vector
    ``(W)``, free gates ``(R)``, allocation gate ``(1)``, write gate ``(1)``,
    read modes ``(3R)``.  Read keys are laid out head by head (``(R, W)``),
    and so are the read modes (``(R, 3)``: each head's three modes together,
    ordered backward, content, forward).

    Activations: strengths ``oneplus``; erase, free, allocation and write gates
    ``σ``; read modes softmax over each head's 3 modes; keys and write vector
    linear.

    Returns
    -------
    dict with ``read_keys (B, R, W)``, ``read_strengths (B, R)``,
    ``write_key (B, 1, W)``, ``write_strength (B, 1)``, ``erase (B, 1, W)``,
    ``write_vector (B, 1, W)``, ``free_gates (B, R)``, ``allocation_gate (B,)``,
    ``write_gate (B,)``, ``read_modes (B, R, 3)``.  The write head keeps a
    head axis of 1, as the memory ops expect.
    """
    R, W = config.read_heads, config.word_size
    batch = interface.shape[0]
    sizes = [("read_keys", R * W), ("read_strengths", R), ("write_key", W), ("write_strength", 1),
             ("erase", W), ("write_vector", W), ("free_gates", R), ("allocation_gate", 1),
             ("write_gate", 1), ("read_modes", 3 * R)]
    raw, start = {}, 0
    for name, size in sizes:
        raw[name] = interface[:, start:start + size]
        start += size
    return {
        "read_keys": np.reshape(raw["read_keys"], (batch, R, W)),
        "read_strengths": oneplus(raw["read_strengths"]),
        "write_key": np.reshape(raw["write_key"], (batch, 1, W)),
        "write_strength": oneplus(raw["write_strength"]),
        "erase": np.reshape(sigmoid(raw["erase"]), (batch, 1, W)),
        "write_vector": np.reshape(raw["write_vector"], (batch, 1, W)),
        "free_gates": sigmoid(raw["free_gates"]),
        "allocation_gate": sigmoid(raw["allocation_gate"][:, 0]),
        "write_gate": sigmoid(raw["write_gate"][:, 0]),
        "read_modes": softmax(np.reshape(raw["read_modes"], (batch, R, 3)), axis=-1),
    }


def initial_state(config, batch_size, dtype):
    """``DNCState`` at ``t = 0``: everything zero (nothing learned)."""
    c = config
    B, N, W, R = batch_size, c.memory_slots, c.word_size, c.read_heads

    def zeros(*shape):
        return numpy.zeros(shape, dtype=dtype)

    return DNCState(
        controller=controller_initial_state(B, c.controller_size, dtype),
        memory=zeros(B, N, W),
        usage=zeros(B, N),
        link=zeros(B, N, N),
        precedence=zeros(B, N),
        read_weights=zeros(B, R, N),
        write_weights=zeros(B, N),
        reads=zeros(B, R, W),
    )


def write_weighting(allocation, content, allocation_gate, write_gate):
    """Write weighting (DNC Methods, "Write weighting"): ``ww = g_w (g_a a + (1 − g_a) c^w)``.

    ``allocation (B, N)``, ``content (B, N)``, gates ``(B,)`` → ``(B, N)``.
    """
    g_a = allocation_gate[:, None]
    return write_gate[:, None] * (g_a * allocation + (1.0 - g_a) * content)


def read_weighting(read_modes, backward, content, forward):
    """Read weightings (DNC Methods, "Read weighting"): ``wr = π_1 b + π_2 c^r + π_3 f``.

    ``read_modes (B, R, 3)`` ordered backward, content, forward; the three
    weightings ``(B, R, N)`` → ``(B, R, N)``.
    """
    return (read_modes[:, :, 0:1] * backward
            + read_modes[:, :, 1:2] * content
            + read_modes[:, :, 2:3] * forward)


def step(params, config, x_t, state, ops):
    """One DNC step (``docs/models.md``, "DNC step"): ``(x_t (B, I), state) -> (y_t, state, record)``.

    1. ``u_t = usage(u_{t-1}, ww_{t-1}, wr_{t-1}, free)``
    2. ``a_t = allocation(u_t)``
    3. ``cw_t = content_weights(M_{t-1}, write_key, write_strength)``
    4. ``ww_t = g_w ∘ (g_a ∘ a_t + (1 − g_a) ∘ cw_t)``
    5. ``M_t = write(M_{t-1}, ww_t, erase, write_vector)``
    6. ``L_t, p_t, fwd_t, bwd_t = link_step(L_{t-1}, p_{t-1}, ww_t, wr_{t-1})``
    7. ``cr_t = content_weights(M_t, read_keys, read_strengths)``
    8. ``wr_t = π_backward ∘ bwd_t + π_content ∘ cr_t + π_forward ∘ fwd_t``
    9. ``reads_t = read(M_t, wr_t)``

    then ``y_t = [h_t, reads_t] · output_W + output_b`` (logits, `(B, O)`).
    ``record`` is a dict of this step's quantities (the values of a trace).
    """
    batch = x_t.shape[0]
    z = np.concatenate([x_t, np.reshape(state.reads, (batch, -1))], axis=1)
    h, controller_state = controller_step(
        config.controller, params["controller_W"], params["controller_b"], z, state.controller)
    xi = split_interface(linear(params["interface_W"], params["interface_b"], h), config)

    usage = ops.usage(state.usage, state.write_weights, state.read_weights, xi["free_gates"])
    allocation = ops.allocation(usage)
    write_content = ops.content_weights(state.memory, xi["write_key"], xi["write_strength"])[:, 0]
    write_weights = write_weighting(allocation, write_content, xi["allocation_gate"], xi["write_gate"])
    memory = ops.write(state.memory, write_weights[:, None, :], xi["erase"], xi["write_vector"])
    link, precedence, forward_weights, backward_weights = ops.link_step(
        state.link, state.precedence, write_weights, state.read_weights)
    read_content = ops.content_weights(memory, xi["read_keys"], xi["read_strengths"])
    read_weights = read_weighting(xi["read_modes"], backward_weights, read_content, forward_weights)
    reads = ops.read(memory, read_weights)

    y = linear(params["output_W"], params["output_b"],
               np.concatenate([h, np.reshape(reads, (batch, -1))], axis=1))
    new_state = DNCState(controller_state, memory, usage, link, precedence,
                         read_weights, write_weights, reads)
    record = dict(
        xi, usage=usage, allocation=allocation, write_content_weights=write_content,
        write_weights=write_weights, memory=memory, precedence=precedence,
        forward_weights=forward_weights, backward_weights=backward_weights,
        read_content_weights=read_content, read_weights=read_weights, reads=reads)
    if config.memory_slots <= LINK_TRACE_MAX_SLOTS:
        record["link"] = link
    return y, new_state, record


# --------------------------------------------------------------------------
# The sequence
# --------------------------------------------------------------------------

def forward(params, buffers, config, x, ops=None, return_trace=False):
    """Run the DNC over a sequence: ``x (T, B, I)`` → logits ``(T, B, O)``.

    Parameters
    ----------
    params, buffers : dicts from :func:`init_params` (``params`` may hold autograd boxes).
    config : DNCConfig
    x : `(T, B, I)` array, finite; cast to the parameters' dtype.
    ops : namespace with ``usage``, ``allocation``, ``content_weights``,
        ``write``, ``link_step``, ``read`` (default :mod:`dmem.reference`;
        :mod:`dmem.compiled` works too).
    return_trace : bool
        Also return a dict of plain numpy arrays stacked over time:
        ``read_weights (T, B, R, N)``, ``write_weights (T, B, N)``,
        ``usage``/``allocation``/``precedence``/``write_content_weights (T, B, N)``,
        ``read_modes (T, B, R, 3)`` (backward, content, forward),
        ``free_gates``/``read_strengths (T, B, R)``,
        ``allocation_gate``/``write_gate (T, B)``, ``write_strength (T, B, 1)``,
        ``reads``/``read_keys (T, B, R, W)``,
        ``write_key``/``erase``/``write_vector (T, B, 1, W)``,
        ``memory (T, B, N, W)`` (after the write),
        ``forward_weights``/``backward_weights``/``read_content_weights (T, B, R, N)``,
        and ``link (T, B, N, N)`` only when ``N ≤ 64``.

    Returns
    -------
    logits `(T, B, O)` of the parameters' dtype, or ``(logits, trace)``.
    """
    _check_config(config, DNCConfig)
    ops = resolve_ops(ops, DNC_OPS)
    dtype = check_params(params, param_shapes(config), "DNC")
    check_params(buffers, buffer_shapes(config), "DNC", kind="buffers")
    _, batch = check_sequence(x, config.input_size)
    x = cast(x, dtype)
    state = initial_state(config, batch, dtype)
    return unroll(step, params, config, x, state, ops, return_trace)


def loss(params, buffers, config, x, target, mask, ops=None):
    """The masked sigmoid cross-entropy in bits per sequence of the DNC's logits.

    See :func:`dmem.reference.loss.sigmoid_cross_entropy_bits`.  ``x (T, B, I)``, ``target (T, B, O)``, ``mask (T, B)``; differentiable
    in ``params`` by autograd.  Returns a scalar.
    """
    _check_config(config, DNCConfig)
    steps, batch = check_sequence(x, config.input_size)
    check_targets(steps, batch, target, mask, config.output_size)
    return sigmoid_cross_entropy_bits(forward(params, buffers, config, x, ops=ops), target, mask)
