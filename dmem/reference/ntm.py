"""The Neural Turing Machine as a pure function of its parameters (``autograd.numpy``).

Graves, Wayne & Danihelka (2014), "Neural Turing Machines".  The computation
is fixed, parameter by parameter, by ``docs/models.md``; this module is its
readable ground truth, differentiated by autograd.  One step::

    z_t  = [x_t, reads_{t-1}]                                 controller input
    h_t  = controller(z_t, h_{t-1})                           LSTM or tanh layer
    ξ_t  = h_t · interface_W + interface_b                    interface vector
    ww_t = ntm_address(M_{t-1}, write heads of ξ_t, ww_{t-1})  NTM eqs. 5-9
    M_t  = write(M_{t-1}, ww_t, erase, add)                   NTM eqs. 3-4
    wr_t = ntm_address(M_t, read heads of ξ_t, wr_{t-1})       NTM eqs. 5-9
    reads_t = read(M_t, wr_t)                                 NTM eq. 2
    y_t  = [h_t, reads_t] · output_W + output_b               logits

The memory operations are called only through an ``ops`` namespace (default
:mod:`dmem.reference`; :mod:`dmem.compiled` runs the same model on the Cython
kernels), so the model is written once for both backends.

Parameters (``params``, a dict of arrays, all of one float dtype)::

    controller_W        (Z + C, 4C) lstm  |  (Z, C) ff      Z = I + R·W
    controller_b        (4C,)       lstm  |  (C,)   ff
    interface_W         (C, K)              K = Hw·(3W + S + 3) + R·(W + S + 3)
    interface_b         (K,)
    output_W            (C + R·W, O)
    output_b            (O,)
    read_init           (R, W)      reads_0
    read_weights_init   (R, N)      logits of wr_0 = softmax(read_weights_init)
    write_weights_init  (Hw, N)     logits of ww_0 = softmax(write_weights_init)
    memory_init         (N, W)      only with memory_init="learned"

``buffers`` (fixed arrays, not learned) holds ``memory_init (N, W)`` with
``memory_init="random"`` and is empty otherwise.

Initialisation (:func:`init_params`) draws from
``numpy.random.default_rng(seed)`` in this order, one array per line:

1. ``controller_W``: uniform ±1/√(fan_in), fan_in = Z + C (lstm) or Z (ff);
2. ``interface_W``: uniform ±1/√C;
3. ``output_W``: uniform ±1/√(C + R·W);
4. ``read_init``: uniform ±0.5;
5. ``read_weights_init``: standard normal × 0.1;
6. ``write_weights_init``: standard normal × 0.1;
7. ``memory_init`` (``"learned"`` parameter or ``"random"`` buffer only):
   uniform ±1/√(N + W).

Biases are 0, except the LSTM forget-gate block ``controller_b[C:2C] = 1``.
All draws are in float64, then cast to the requested dtype.

The helpers at the end of this module (seeds, ops namespaces, validation of
sequences and parameters) are shared with :mod:`dmem.reference.dnc`.
"""

import dataclasses
import importlib
from collections import namedtuple

import autograd.numpy as np
import numpy
from autograd.tracer import Box, getval

from . import controllers
from .controllers import controller_initial_state, controller_step, linear, sigmoid, softmax, softplus
from .loss import sigmoid_cross_entropy_bits

__all__ = [
    "NTMConfig", "NTMState", "init_params", "param_shapes", "split_interface",
    "initial_state", "step", "forward", "loss",
]

MEMORY_INITS = ("constant", "learned", "random")
"""How ``M_0`` is made: a constant 1e-6, a learned parameter, or a fixed random buffer."""

MEMORY_INIT_CONSTANT = 1e-6
"""Every entry of ``M_0`` with ``memory_init="constant"`` (Collier & Beel 2018)."""

NTM_OPS = ("ntm_address", "write", "read")
"""The memory operations the NTM calls through its ``ops`` namespace."""


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class NTMConfig:
    """Sizes and choices of an NTM; validated on creation.

    Attributes
    ----------
    input_size, output_size : int
        ``I`` and ``O``.
    memory_slots, word_size : int
        ``N`` and ``W``.
    controller : ``"lstm"`` or ``"ff"``
    controller_size : int
        ``C``.
    read_heads, write_heads : int
        ``R`` and ``Hw`` (at least 1 each).
    shift_range : int
        ``r ≥ 0``: heads shift by ``−r..r`` slots, ``S = 2r + 1``.
    memory_init : ``"constant"``, ``"learned"`` or ``"random"``
    """

    input_size: int
    output_size: int
    memory_slots: int = 128
    word_size: int = 20
    controller: str = "lstm"
    controller_size: int = 100
    read_heads: int = 1
    write_heads: int = 1
    shift_range: int = 1
    memory_init: str = "constant"

    def __post_init__(self):
        for name in ("input_size", "output_size", "memory_slots", "word_size",
                     "controller_size", "read_heads", "write_heads"):
            _set_int_field(self, name, minimum=1)
        _set_int_field(self, "shift_range", minimum=0)
        _set_choice_field(self, "controller", controllers.CONTROLLERS)
        _set_choice_field(self, "memory_init", MEMORY_INITS)

    @property
    def shift_width(self):
        """``S = 2r + 1``, the number of shifts a head can make."""
        return 2 * self.shift_range + 1

    @property
    def controller_input_size(self):
        """``Z = I + R·W``: the input and the previous reads."""
        return self.input_size + self.read_heads * self.word_size

    @property
    def write_head_size(self):
        """Interface entries of one write head: key W, β, g, shifts S, γ, erase W, add W."""
        return 3 * self.word_size + self.shift_width + 3

    @property
    def read_head_size(self):
        """Interface entries of one read head: key W, β, g, shifts S, γ."""
        return self.word_size + self.shift_width + 3

    @property
    def interface_size(self):
        """``K = Hw·(3W + S + 3) + R·(W + S + 3)``."""
        return self.write_heads * self.write_head_size + self.read_heads * self.read_head_size


def param_shapes(config):
    """``{name: shape}`` of every learned parameter of ``config`` (see the module docstring)."""
    _check_config(config, NTMConfig)
    c = config
    shapes = _controller_shapes(c)
    shapes.update({
        "read_init": (c.read_heads, c.word_size),
        "read_weights_init": (c.read_heads, c.memory_slots),
        "write_weights_init": (c.write_heads, c.memory_slots),
    })
    if c.memory_init == "learned":
        shapes["memory_init"] = (c.memory_slots, c.word_size)
    return shapes


def buffer_shapes(config):
    """``{name: shape}`` of the fixed (not learned) arrays of ``config``."""
    _check_config(config, NTMConfig)
    if config.memory_init == "random":
        return {"memory_init": (config.memory_slots, config.word_size)}
    return {}


def init_params(config, seed_or_rng, dtype=numpy.float64):
    """Initial parameters and buffers of an NTM, drawn in the documented order.

    Parameters
    ----------
    config : NTMConfig
    seed_or_rng : int or numpy.random.Generator
        An int seeds ``numpy.random.default_rng``; a Generator is drawn from
        (and advanced).  The same seed gives identical arrays.
    dtype : float32 or float64

    Returns
    -------
    params : dict of str → array (learned; see :func:`param_shapes`)
    buffers : dict of str → array (fixed; ``memory_init`` with ``"random"``)
    """
    _check_config(config, NTMConfig)
    rng = make_rng(seed_or_rng)
    dtype = check_float_dtype(dtype)
    c = config
    params = _init_controller_interface_output(rng, c, dtype)
    params["read_init"] = rng.uniform(-0.5, 0.5, size=(c.read_heads, c.word_size)).astype(dtype)
    params["read_weights_init"] = (0.1 * rng.standard_normal((c.read_heads, c.memory_slots))).astype(dtype)
    params["write_weights_init"] = (0.1 * rng.standard_normal((c.write_heads, c.memory_slots))).astype(dtype)
    buffers = {}
    if c.memory_init in ("learned", "random"):
        bound = 1.0 / numpy.sqrt(c.memory_slots + c.word_size)
        memory = rng.uniform(-bound, bound, size=(c.memory_slots, c.word_size)).astype(dtype)
        (params if c.memory_init == "learned" else buffers)["memory_init"] = memory
    return params, buffers


# --------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------

NTMState = namedtuple("NTMState", "controller memory read_weights write_weights reads")
NTMState.__doc__ = """The recurrent state of an NTM between two steps.

controller : ``(h (B, C), c (B, C))``; memory ``(B, N, W)``;
read_weights ``(B, R, N)``; write_weights ``(B, Hw, N)``; reads ``(B, R, W)``.
"""


def _head_fields(block, word_size, shift_width, prefix):
    """Activated key, β, g, s, γ of heads laid out along the last axis of ``block (B, H, ·)``."""
    W, S = word_size, shift_width
    return {
        prefix + "keys": block[:, :, 0:W],                                     # (B, H, W) linear
        prefix + "strengths": softplus(block[:, :, W]),                        # (B, H)   β = softplus
        prefix + "gates": sigmoid(block[:, :, W + 1]),                         # (B, H)   g = σ
        prefix + "shifts": softmax(block[:, :, W + 2:W + 2 + S], axis=-1),     # (B, H, S) softmax
        prefix + "gamma": 1.0 + softplus(block[:, :, W + 2 + S]),              # (B, H)   γ = 1 + softplus
    }


def split_interface(interface, config):
    """Split and activate the interface vector ``ξ (B, K)`` into the heads' quantities.

    Layout (``docs/models.md``, "NTM step"): write heads first, then read
    heads, each head's entries contiguous.  A head is ``key (W), β (1), g (1),
    s (S), γ (1)``; a write head continues with ``erase (W), add (W)``.
    Activations (NTM section 3.3): β = softplus, g = σ, s = softmax over S,
    γ = 1 + softplus, erase = σ, key and add linear.

    Returns
    -------
    dict with ``write_keys (B, Hw, W)``, ``write_strengths (B, Hw)``,
    ``write_gates (B, Hw)``, ``write_shifts (B, Hw, S)``, ``write_gamma (B, Hw)``,
    ``erase (B, Hw, W)``, ``add (B, Hw, W)``, and ``read_keys (B, R, W)``,
    ``read_strengths``, ``read_gates``, ``read_shifts``, ``read_gamma``.
    """
    c = config
    W, S = c.word_size, c.shift_width
    batch = interface.shape[0]
    write_end = c.write_heads * c.write_head_size
    write = np.reshape(interface[:, :write_end], (batch, c.write_heads, c.write_head_size))
    read = np.reshape(interface[:, write_end:], (batch, c.read_heads, c.read_head_size))
    fields = _head_fields(write, W, S, "write_")
    fields["erase"] = sigmoid(write[:, :, W + 3 + S:2 * W + 3 + S])           # (B, Hw, W) σ
    fields["add"] = write[:, :, 2 * W + 3 + S:3 * W + 3 + S]                  # (B, Hw, W) linear
    fields.update(_head_fields(read, W, S, "read_"))
    return fields


def initial_state(params, buffers, config, batch_size, dtype):
    """``NTMState`` at ``t = 0``, broadcast over the batch.

    ``reads_0 = read_init``, ``wr_0 = softmax(read_weights_init)``,
    ``ww_0 = softmax(write_weights_init)`` (softmax over N), ``h_0 = c_0 = 0``,
    and ``M_0`` per ``config.memory_init``: 1e-6 everywhere (``"constant"``),
    ``params["memory_init"]`` (``"learned"``) or ``buffers["memory_init"]``
    (``"random"``, no gradient).
    """
    c = config
    ones = numpy.ones((batch_size, 1, 1), dtype=dtype)
    if c.memory_init == "constant":
        memory = numpy.full((batch_size, c.memory_slots, c.word_size), MEMORY_INIT_CONSTANT, dtype=dtype)
    elif c.memory_init == "learned":
        memory = ones * params["memory_init"][None]
    else:
        memory = ones * cast(buffers["memory_init"], dtype)[None]
    return NTMState(
        controller=controller_initial_state(batch_size, c.controller_size, dtype),
        memory=memory,
        read_weights=ones * softmax(params["read_weights_init"], axis=-1)[None],
        write_weights=ones * softmax(params["write_weights_init"], axis=-1)[None],
        reads=ones * params["read_init"][None],
    )


def step(params, config, x_t, state, ops):
    """One NTM step (``docs/models.md``, "NTM step"): ``(x_t (B, I), state) -> (y_t, state, record)``.

    1. ``ww_t = ntm_address(M_{t-1}, keys_w, β_w, g_w, s_w, γ_w, ww_{t-1})`` (NTM eqs. 5-9);
    2. ``M_t = write(M_{t-1}, ww_t, erase, add)`` (NTM eqs. 3-4, all write heads at once);
    3. ``wr_t = ntm_address(M_t, keys_r, β_r, g_r, s_r, γ_r, wr_{t-1})``;
    4. ``reads_t = read(M_t, wr_t)`` (NTM eq. 2);

    then ``y_t = [h_t, reads_t] · output_W + output_b`` (logits, `(B, O)`).
    ``record`` is a dict of this step's interface quantities, weightings,
    reads and memory (the values of a trace).
    """
    batch = x_t.shape[0]
    flat_reads = np.reshape(state.reads, (batch, -1))
    z = np.concatenate([x_t, flat_reads], axis=1)
    h, controller_state = controller_step(
        config.controller, params["controller_W"], params["controller_b"], z, state.controller)
    heads = split_interface(linear(params["interface_W"], params["interface_b"], h), config)

    write_weights = ops.ntm_address(
        state.memory, heads["write_keys"], heads["write_strengths"], heads["write_gates"],
        heads["write_shifts"], heads["write_gamma"], state.write_weights)
    memory = ops.write(state.memory, write_weights, heads["erase"], heads["add"])
    read_weights = ops.ntm_address(
        memory, heads["read_keys"], heads["read_strengths"], heads["read_gates"],
        heads["read_shifts"], heads["read_gamma"], state.read_weights)
    reads = ops.read(memory, read_weights)

    y = linear(params["output_W"], params["output_b"],
               np.concatenate([h, np.reshape(reads, (batch, -1))], axis=1))
    new_state = NTMState(controller_state, memory, read_weights, write_weights, reads)
    record = dict(heads, read_weights=read_weights, write_weights=write_weights,
                  reads=reads, memory=memory)
    return y, new_state, record


# --------------------------------------------------------------------------
# The sequence
# --------------------------------------------------------------------------

def forward(params, buffers, config, x, ops=None, return_trace=False):
    """Run the NTM over a sequence: ``x (T, B, I)`` → logits ``(T, B, O)``.

    Parameters
    ----------
    params, buffers : dicts from :func:`init_params` (``params`` may hold autograd boxes).
    config : NTMConfig
    x : `(T, B, I)` array, finite; cast to the parameters' dtype.
    ops : namespace with ``ntm_address``, ``write``, ``read``
        (default :mod:`dmem.reference`; :mod:`dmem.compiled` works too).
    return_trace : bool
        Also return a dict of plain numpy arrays stacked over time:
        ``read_weights (T, B, R, N)``, ``write_weights (T, B, Hw, N)``,
        ``reads (T, B, R, W)``, ``memory (T, B, N, W)`` (after the write),
        ``erase``/``add (T, B, Hw, W)``, ``write_keys (T, B, Hw, W)``,
        ``write_strengths``/``write_gates``/``write_gamma (T, B, Hw)``,
        ``write_shifts (T, B, Hw, S)`` and the same ``read_*`` with ``R``.

    Returns
    -------
    logits `(T, B, O)` of the parameters' dtype, or ``(logits, trace)``.
    """
    _check_config(config, NTMConfig)
    ops = resolve_ops(ops, NTM_OPS)
    dtype = check_params(params, param_shapes(config), "NTM")
    check_params(buffers, buffer_shapes(config), "NTM", kind="buffers")
    _, batch = check_sequence(x, config.input_size)
    x = cast(x, dtype)
    state = initial_state(params, buffers, config, batch, dtype)
    return unroll(step, params, config, x, state, ops, return_trace)


def loss(params, buffers, config, x, target, mask, ops=None):
    """The masked sigmoid cross-entropy in bits per sequence of the NTM's logits.

    See :func:`dmem.reference.loss.sigmoid_cross_entropy_bits`.  ``x (T, B, I)``, ``target (T, B, O)``, ``mask (T, B)``; differentiable
    in ``params`` by autograd.  Returns a scalar.
    """
    _check_config(config, NTMConfig)
    steps, batch = check_sequence(x, config.input_size)
    check_targets(steps, batch, target, mask, config.output_size)
    return sigmoid_cross_entropy_bits(forward(params, buffers, config, x, ops=ops), target, mask)


# --------------------------------------------------------------------------
# Helpers shared with dnc.py
# --------------------------------------------------------------------------

def unroll(step, params, config, x, state, ops, return_trace):
    """Run ``step`` over the time steps of ``x (T, B, I)`` from ``state``: logits
    ``(T, B, O)``, with the stacked records of every step when ``return_trace``."""
    logits, records = [], []
    for t in range(x.shape[0]):
        y, state, record = step(params, config, x[t], state, ops)
        logits.append(y)
        if return_trace:
            records.append(record)
    logits = np.stack(logits)
    if return_trace:
        return logits, stack_records(records)
    return logits


def _set_int_field(config, name, minimum):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)):
        raise TypeError(f"{type(config).__name__}.{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        what = "positive" if minimum == 1 else f"at least {minimum}"
        raise ValueError(f"{type(config).__name__}.{name} must be {what}, got {value}")
    object.__setattr__(config, name, int(value))


def _set_choice_field(config, name, choices):
    value = getattr(config, name)
    if not isinstance(value, str):
        raise TypeError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")


def _check_config(config, cls):
    if not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")


def _controller_shapes(config):
    """Shapes of the controller, interface and output layers (both models)."""
    c = config
    Z, C = c.controller_input_size, c.controller_size
    if c.controller == "lstm":
        controller = {"controller_W": (Z + C, 4 * C), "controller_b": (4 * C,)}
    else:
        controller = {"controller_W": (Z, C), "controller_b": (C,)}
    controller.update({
        "interface_W": (C, c.interface_size),
        "interface_b": (c.interface_size,),
        "output_W": (C + c.read_heads * c.word_size, c.output_size),
        "output_b": (c.output_size,),
    })
    return controller


def _init_controller_interface_output(rng, config, dtype):
    """Draw ``controller_W``, ``interface_W``, ``output_W`` in that order (biases 0, LSTM forget 1)."""
    c = config
    params = {}
    params["controller_W"], params["controller_b"] = controllers.controller_init(
        rng, c.controller, c.controller_input_size, c.controller_size, dtype)
    params["interface_W"], params["interface_b"] = controllers.linear_init(
        rng, c.controller_size, c.interface_size, dtype)
    params["output_W"], params["output_b"] = controllers.linear_init(
        rng, c.controller_size + c.read_heads * c.word_size, c.output_size, dtype)
    return params


def make_rng(seed_or_rng):
    """A ``numpy.random.Generator`` from an int seed (or the Generator itself)."""
    if isinstance(seed_or_rng, numpy.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, bool) or not isinstance(seed_or_rng, (int, numpy.integer)):
        raise TypeError(
            f"seed_or_rng must be an int seed or a numpy.random.Generator, got {type(seed_or_rng).__name__}")
    if seed_or_rng < 0:
        raise ValueError(f"seed_or_rng must be a non-negative int, got {seed_or_rng}")
    return numpy.random.default_rng(int(seed_or_rng))


def check_float_dtype(dtype):
    """``numpy.dtype`` of float32 or float64; anything else raises ``TypeError``."""
    try:
        dtype = numpy.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def resolve_ops(ops, names):
    """The ops namespace (default :mod:`dmem.reference`), checked to have every op in ``names``."""
    if ops is None:
        ops = importlib.import_module(__package__)
    missing = [name for name in names if not callable(getattr(ops, name, None))]
    if missing:
        label = getattr(ops, "__name__", type(ops).__name__)
        raise TypeError(
            f"ops namespace {label} lacks the memory operation(s) {missing} "
            "(for dmem.compiled: are those kernels built?)")
    return ops


def cast(value, dtype):
    """``value`` as an array of ``dtype``; an autograd box is cast with ``astype`` (gradients flow)."""
    if isinstance(value, Box):
        return value if value.dtype == dtype else value.astype(dtype)
    return numpy.asarray(value, dtype=dtype)


def _raw_array(name, value, letters):
    raw = getval(value)
    if raw is None:
        raise TypeError(f"{name} must be an array of shape ({', '.join(letters)}), got None")
    if not hasattr(raw, "shape"):
        try:
            raw = numpy.asarray(raw)
        except Exception as exc:
            raise TypeError(f"{name} could not be read as an array: {exc}") from None
    if raw.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype {raw.dtype}")
    if raw.ndim != len(letters):
        raise ValueError(
            f"{name} must have shape ({', '.join(letters)}) ({len(letters)} axes), got shape {tuple(raw.shape)}")
    if any(size == 0 for size in raw.shape):
        raise ValueError(f"{name} must not have an empty axis, got shape {tuple(raw.shape)}")
    if not numpy.all(numpy.isfinite(raw)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return raw


def check_sequence(x, input_size):
    """Validate ``x (T, B, I)`` (on the unboxed values): ``I == input_size``, non-empty, finite.

    Returns ``(T, B)``.
    """
    raw = _raw_array("x", x, "TBI")
    if raw.shape[2] != input_size:
        raise ValueError(
            f"x must have shape (T, B, I) with I = input_size = {input_size}, got shape {tuple(raw.shape)}")
    return raw.shape[0], raw.shape[1]


def check_targets(steps, batch, target, mask, output_size):
    """Validate ``target (T, B, O)`` and ``mask (T, B)`` (finite) for a sequence of ``T`` steps, ``B`` rows.

    ``O`` must be ``output_size``.  Works on the values behind autograd boxes.
    """
    raw_target = _raw_array("target", target, "TBO")
    raw_mask = _raw_array("mask", mask, "TB")
    expected = (steps, batch, output_size)
    if raw_target.shape != expected:
        raise ValueError(
            f"target must have shape (T, B, O) = {expected} (T, B of x, O = output_size), "
            f"got {tuple(raw_target.shape)}")
    if raw_mask.shape != (steps, batch):
        raise ValueError(f"mask must have shape (T, B) = {(steps, batch)} (as x), got {tuple(raw_mask.shape)}")


def check_params(params, shapes, model, kind="params"):
    """Check that ``params`` has exactly the arrays of ``shapes``, of one float dtype; return that dtype.

    Works on the values behind autograd boxes.  With no arrays expected
    (empty buffers) returns None.
    """
    params = getval(params)  # a DictBox when autograd differentiates with respect to the dict
    if params is None and kind == "buffers":
        params = {}
    if not isinstance(params, dict):
        raise TypeError(f"{model} {kind} must be a dict of arrays, got {type(params).__name__}")
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    if missing or extra:
        raise ValueError(
            f"{model} {kind} do not match the config: missing {missing}, unexpected {extra}")
    dtypes = set()
    for name, shape in shapes.items():
        raw = getval(params[name])
        if not hasattr(raw, "shape") or tuple(raw.shape) != tuple(shape):
            got = tuple(raw.shape) if hasattr(raw, "shape") else type(raw).__name__
            raise ValueError(f"{model} {kind}[{name!r}] must have shape {tuple(shape)}, got {got}")
        dtypes.add(numpy.dtype(raw.dtype))
    if not dtypes:
        return None
    if len(dtypes) > 1:
        raise TypeError(f"{model} {kind} must all have one dtype, got {sorted(str(d) for d in dtypes)}")
    (dtype,) = dtypes
    if kind == "params":
        check_float_dtype(dtype)
    return dtype


def stack_records(records):
    """Stack per-step dicts of arrays (possibly boxed) into plain numpy arrays with a leading ``T`` axis."""
    return {name: numpy.stack([numpy.asarray(getval(record[name])) for record in records])
            for name in records[0]}
