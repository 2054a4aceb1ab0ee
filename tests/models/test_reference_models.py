"""The reference NTM and DNC (``dmem.reference.ntm``, ``dmem.reference.dnc``) and their loss.

* autograd gradients of the loss against central finite differences, for
  every parameter of tiny models (NTM: ff/lstm, 1 or 2 heads of each kind,
  shift range 1 and 2, the three memory inits; DNC: ff/lstm, 1 or 2 read heads);
* shapes of logits and traces, weightings normalised, masks that mask;
* determinism of the initialisation, float32 end to end;
* bad configurations and inputs raise clear errors;
* the loss against a hand-computed cross-entropy;
* the model on the compiled kernels (``ops=dmem.compiled``) against the reference.
"""

import math

import numpy
import pytest
from autograd import grad, value_and_grad

import dmem
import dmem.compiled
import dmem.reference
from dmem.reference import controllers, dnc, ntm
from dmem.reference.loss import bit_errors, sigmoid_cross_entropy_bits

T, B, I, O = 3, 2, 3, 2
TINY = dict(memory_slots=4, word_size=3, controller_size=5)

NTM_CASES = {
    "ff-1r1w-shift1-constant": dict(controller="ff"),
    "lstm-1r1w-shift1-constant": dict(controller="lstm"),
    "lstm-1r1w-shift1-random": dict(controller="lstm", memory_init="random"),
    "ff-1r1w-shift1-learned": dict(controller="ff", memory_init="learned"),
    "lstm-1r1w-shift2-learned": dict(controller="lstm", shift_range=2, memory_init="learned"),
    "lstm-2r2w-shift1-learned": dict(controller="lstm", read_heads=2, write_heads=2, memory_init="learned"),
    "ff-2r2w-shift2-random": dict(controller="ff", read_heads=2, write_heads=2, shift_range=2,
                                  memory_init="random"),
}

DNC_CASES = {
    "ff-R1": dict(controller="ff", read_heads=1),
    "lstm-R1": dict(controller="lstm", read_heads=1),
    "ff-R2": dict(controller="ff", read_heads=2),
    "lstm-R2": dict(controller="lstm", read_heads=2),
}

MODELS = {"ntm": (ntm, ntm.NTMConfig), "dnc": (dnc, dnc.DNCConfig)}


def make_model(kind, seed=0, dtype=numpy.float64, jitter=0.3, **options):
    """A tiny model with its parameters moved off the initial point (non-zero biases etc.)."""
    module, config_class = MODELS[kind]
    config = config_class(I, O, **{**TINY, **options})
    params, buffers = module.init_params(config, seed, dtype)
    rng = numpy.random.default_rng(seed + 100)
    params = {name: (value + jitter * rng.standard_normal(value.shape)).astype(dtype)
              for name, value in params.items()}
    return module, config, params, buffers


def make_batch(seed=1, steps=T, batch=B):
    """Inputs, binary targets, and a mask with a different length per batch row."""
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((steps, batch, I))
    target = (rng.random((steps, batch, O)) > 0.5).astype(numpy.float64)
    mask = numpy.zeros((steps, batch))
    for b in range(batch):
        mask[:steps - b, b] = 1.0      # row b is scored on its first T - b steps
    return x, target, mask


def check_gradients(fun, params, seed=0, eps=1e-5, rtol=1e-5, atol=1e-8, entries=3):
    """autograd's gradient of ``fun(params)`` vs central differences, for every parameter.

    For each parameter: the derivative along one random direction inside that
    parameter, and ``entries`` single entries chosen at random.
    """
    grads = grad(fun)(params)
    assert sorted(grads) == sorted(params)
    rng = numpy.random.default_rng(seed)

    def shifted(name, delta):
        return {**params, name: params[name] + delta}

    for name, value in params.items():
        assert grads[name].shape == value.shape, name
        assert numpy.all(numpy.isfinite(grads[name])), name
        directions = [rng.standard_normal(value.shape)]
        for flat in rng.choice(value.size, size=min(entries, value.size), replace=False):
            one_hot = numpy.zeros(value.size)
            one_hot[flat] = 1.0
            directions.append(one_hot.reshape(value.shape))
        for direction in directions:
            numeric = (fun(shifted(name, eps * direction)) - fun(shifted(name, -eps * direction))) / (2 * eps)
            analytic = float(numpy.sum(grads[name] * direction))
            assert abs(numeric - analytic) <= atol + rtol * max(abs(numeric), abs(analytic)), (
                f"{name}: autograd {analytic!r} vs finite differences {numeric!r}")
    return grads


# --------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------

@pytest.mark.parametrize("options", NTM_CASES.values(), ids=list(NTM_CASES))
def test_ntm_gradient_matches_finite_differences(options):
    module, config, params, buffers = make_model("ntm", **options)
    x, target, mask = make_batch()
    grads = check_gradients(lambda p: module.loss(p, buffers, config, x, target, mask), params)
    assert ("memory_init" in grads) == (config.memory_init == "learned")
    assert ("memory_init" in buffers) == (config.memory_init == "random")


@pytest.mark.parametrize("options", DNC_CASES.values(), ids=list(DNC_CASES))
def test_dnc_gradient_matches_finite_differences(options):
    module, config, params, buffers = make_model("dnc", **options)
    x, target, mask = make_batch()
    check_gradients(lambda p: module.loss(p, buffers, config, x, target, mask), params)


@pytest.mark.parametrize("kind", MODELS)
def test_gradient_at_the_initial_parameters_is_finite_and_nonzero(kind):
    module, config, params, buffers = make_model(kind, jitter=0.0)
    x, target, mask = make_batch()
    grads = grad(lambda p: module.loss(p, buffers, config, x, target, mask))(params)
    for name, g in grads.items():
        assert numpy.all(numpy.isfinite(g)), name
        assert numpy.any(g != 0), f"{name} gets no gradient"


# --------------------------------------------------------------------------
# Shapes and invariants of the trace
# --------------------------------------------------------------------------

def test_ntm_logits_and_trace_shapes_and_normalisation():
    module, config, params, buffers = make_model("ntm", read_heads=2, write_heads=3, shift_range=1)
    N, W, R, Hw, S = config.memory_slots, config.word_size, 2, 3, 3
    x, _, _ = make_batch(steps=5)
    logits, trace = module.forward(params, buffers, config, x, return_trace=True)
    assert logits.shape == (5, B, O)
    numpy.testing.assert_array_equal(logits, module.forward(params, buffers, config, x))
    expected = {
        "read_weights": (R, N), "write_weights": (Hw, N), "reads": (R, W), "memory": (N, W),
        "erase": (Hw, W), "add": (Hw, W),
        "write_keys": (Hw, W), "write_strengths": (Hw,), "write_gates": (Hw,),
        "write_shifts": (Hw, S), "write_gamma": (Hw,),
        "read_keys": (R, W), "read_strengths": (R,), "read_gates": (R,),
        "read_shifts": (R, S), "read_gamma": (R,),
    }
    assert set(expected) <= set(trace)
    for name, shape in expected.items():
        assert trace[name].shape == (5, B) + shape, name
        assert type(trace[name]) is numpy.ndarray, name
    for name in ("read_weights", "write_weights", "read_shifts", "write_shifts"):
        numpy.testing.assert_allclose(trace[name].sum(axis=-1), 1.0, rtol=1e-12, err_msg=name)
        assert numpy.all(trace[name] >= 0), name
    for name in ("write_gates", "read_gates", "erase"):
        assert numpy.all((trace[name] >= 0) & (trace[name] <= 1)), name
    assert numpy.all(trace["write_gamma"] >= 1) and numpy.all(trace["read_gamma"] >= 1)
    assert numpy.all(trace["write_strengths"] >= 0) and numpy.all(trace["read_strengths"] >= 0)
    # the reads are the read weightings applied to the memory after the write
    numpy.testing.assert_allclose(
        trace["reads"], numpy.einsum("tbrn,tbnw->tbrw", trace["read_weights"], trace["memory"]), rtol=1e-12)


@pytest.mark.parametrize("slots", [4, 65])
def test_dnc_logits_and_trace_shapes_and_normalisation(slots):
    module, config, params, buffers = make_model("dnc", read_heads=2, memory_slots=slots)
    N, W, R = slots, config.word_size, 2
    x, _, _ = make_batch(steps=5)
    logits, trace = module.forward(params, buffers, config, x, return_trace=True)
    assert logits.shape == (5, B, O)
    expected = {
        "read_weights": (R, N), "write_weights": (N,), "usage": (N,), "allocation": (N,),
        "read_modes": (R, 3), "free_gates": (R,), "allocation_gate": (), "write_gate": (),
        "reads": (R, W), "memory": (N, W), "forward_weights": (R, N), "backward_weights": (R, N),
    }
    assert set(expected) <= set(trace)
    for name, shape in expected.items():
        assert trace[name].shape == (5, B) + shape, name
    if slots <= 64:
        assert trace["link"].shape == (5, B, N, N)
        link = trace["link"]
        assert numpy.all((link >= 0) & (link <= 1 + 1e-12))
        numpy.testing.assert_array_equal(numpy.diagonal(link, axis1=2, axis2=3), 0.0)
    else:
        assert "link" not in trace
    tol = 1e-12
    for name in ("read_weights", "write_weights", "allocation", "forward_weights", "backward_weights"):
        assert numpy.all(trace[name] >= -tol), name
        assert numpy.all(trace[name].sum(axis=-1) <= 1 + tol), name
    numpy.testing.assert_allclose(trace["read_modes"].sum(axis=-1), 1.0, rtol=1e-12)
    assert numpy.all((trace["usage"] >= 0) & (trace["usage"] <= 1 + tol))
    for name in ("free_gates", "allocation_gate", "write_gate"):
        assert numpy.all((trace[name] >= 0) & (trace[name] <= 1)), name


def test_ntm_interface_layout_is_write_heads_first_then_read_heads():
    config = ntm.NTMConfig(I, O, read_heads=2, write_heads=2, shift_range=1, **TINY)
    W, S = config.word_size, config.shift_width
    assert config.interface_size == 2 * (3 * W + S + 3) + 2 * (W + S + 3)
    xi = numpy.arange(config.interface_size, dtype=float)[None, :]
    heads = ntm.split_interface(xi, config)
    numpy.testing.assert_array_equal(heads["write_keys"][0, 0], numpy.arange(W))
    second_write = 3 * W + S + 3
    numpy.testing.assert_array_equal(heads["write_keys"][0, 1], second_write + numpy.arange(W))
    numpy.testing.assert_array_equal(heads["add"][0, 1], second_write + 2 * W + S + 3 + numpy.arange(W))
    first_read = 2 * second_write
    numpy.testing.assert_array_equal(heads["read_keys"][0, 0], first_read + numpy.arange(W))
    last = config.interface_size - 1
    numpy.testing.assert_allclose(heads["read_gamma"][0, 1], 1.0 + math.log1p(math.exp(last)))


def test_dnc_interface_layout_and_read_mode_order():
    config = dnc.DNCConfig(I, O, read_heads=2, **TINY)
    R, W = 2, config.word_size
    assert config.interface_size == R * W + 3 * W + 5 * R + 3
    xi = numpy.zeros((1, config.interface_size))
    xi[0, :R * W] = numpy.arange(R * W)
    modes_start = config.interface_size - 3 * R
    xi[0, modes_start + 3 * 1 + 2] = 50.0          # head 1, third mode (forward)
    xi[0, modes_start + 0] = 50.0                  # head 0, first mode (backward)
    parts = dnc.split_interface(xi, config)
    numpy.testing.assert_array_equal(parts["read_keys"][0], numpy.arange(R * W).reshape(R, W))
    numpy.testing.assert_allclose(parts["read_modes"][0], [[1, 0, 0], [0, 0, 1]], atol=1e-20)
    numpy.testing.assert_allclose(parts["write_gate"], 0.5)
    numpy.testing.assert_allclose(parts["read_strengths"], 1.0 + math.log(2.0))


# --------------------------------------------------------------------------
# Masks, loss values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
def test_mask_masks(kind):
    module, config, params, buffers = make_model(kind)
    x, target, mask = make_batch()
    base = module.loss(params, buffers, config, x, target, mask)
    flipped = numpy.where(mask[:, :, None] == 0, 1.0 - target, target)
    assert (flipped != target).any()
    assert module.loss(params, buffers, config, x, flipped, mask) == base
    scored = numpy.where(mask[:, :, None] == 1, 1.0 - target, target)
    assert module.loss(params, buffers, config, x, scored, mask) != base
    # a batch row entirely masked out contributes 0, but still counts in the average over B
    logits = module.forward(params, buffers, config, x)
    row_mask = mask.copy()
    row_mask[:, 1] = 0
    expected = sigmoid_cross_entropy_bits(logits[:, :1], target[:, :1], mask[:, :1]) / 2
    numpy.testing.assert_allclose(module.loss(params, buffers, config, x, target, row_mask), expected, rtol=1e-12)


def test_loss_equals_hand_computed_cross_entropy():
    logits = numpy.array([[[0.0, 2.0]], [[-3.0, 1.5]]])          # (T=2, B=1, O=2)
    target = numpy.array([[[1.0, 0.0]], [[1.0, 1.0]]])
    mask = numpy.array([[1.0], [1.0]])

    def bce_bits(y, t):
        p = 1.0 / (1.0 + math.exp(-y))
        return -(t * math.log2(p) + (1 - t) * math.log2(1 - p))

    expected = bce_bits(0.0, 1) + bce_bits(2.0, 0) + bce_bits(-3.0, 1) + bce_bits(1.5, 1)
    assert bce_bits(0.0, 1) == pytest.approx(1.0)
    assert sigmoid_cross_entropy_bits(logits, target, mask) == pytest.approx(expected, rel=1e-14)
    # batch of two: the second row masked at t=1; average over B = 2
    logits2 = numpy.concatenate([logits, logits], axis=1)
    target2 = numpy.concatenate([target, target], axis=1)
    mask2 = numpy.array([[1.0, 1.0], [1.0, 0.0]])
    expected2 = (expected + bce_bits(0.0, 1) + bce_bits(2.0, 0)) / 2
    assert sigmoid_cross_entropy_bits(logits2, target2, mask2) == pytest.approx(expected2, rel=1e-14)


def test_loss_is_stable_at_huge_logits():
    logits = numpy.array([[[1000.0, -1000.0, 0.0]]])
    target = numpy.array([[[0.0, 0.0, 1.0]]])
    mask = numpy.ones((1, 1))
    value, g = value_and_grad(sigmoid_cross_entropy_bits)(logits, target, mask)
    assert value == pytest.approx(1000.0 / math.log(2.0) + 1.0)
    numpy.testing.assert_allclose(g, [[[1.0, 0.0, -0.5]]] / numpy.float64(math.log(2.0)), atol=1e-300)


def test_bit_errors_counts_wrong_bits_per_sequence():
    logits = numpy.array([[[1.0, -1.0], [-2.0, 0.0]],
                          [[-1.0, 3.0], [1.0, 1.0]]])           # (T=2, B=2, O=2)
    target = numpy.array([[[1.0, 1.0], [0.0, 1.0]],
                          [[1.0, 1.0], [1.0, 0.0]]])
    mask = numpy.array([[1.0, 1.0], [1.0, 0.0]])
    # row 0: t0 one wrong (bit 1), t1 one wrong (bit 0) -> 2; row 1: t0 one wrong (logit 0 -> 0), t1 masked
    assert bit_errors(logits, target, mask) == pytest.approx((2 + 1) / 2)
    assert bit_errors(target * 10 - 5, target, numpy.ones((2, 2))) == 0.0


# --------------------------------------------------------------------------
# Initialisation, dtype, purity
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
def test_initialisation_is_deterministic(kind):
    module, config_class = MODELS[kind]
    options = dict(memory_init="random") if kind == "ntm" else {}
    config = config_class(I, O, **TINY, **options)
    a_params, a_buffers = module.init_params(config, 7)
    b_params, b_buffers = module.init_params(config, 7)
    c_params, c_buffers = module.init_params(config, numpy.random.default_rng(7))
    d_params, _ = module.init_params(config, 8)
    assert sorted(a_params) == sorted(module.param_shapes(config))
    for name, value in a_params.items():
        assert value.shape == module.param_shapes(config)[name]
        numpy.testing.assert_array_equal(value, b_params[name])
        numpy.testing.assert_array_equal(value, c_params[name])
    for name in a_buffers:
        numpy.testing.assert_array_equal(a_buffers[name], b_buffers[name])
        numpy.testing.assert_array_equal(a_buffers[name], c_buffers[name])
    assert any(not numpy.array_equal(a_params[n], d_params[n]) for n in a_params)
    assert not numpy.array_equal(a_params["controller_W"], d_params["controller_W"])


def test_initial_values_follow_the_documented_distributions():
    config = ntm.NTMConfig(I, O, controller="lstm", memory_init="random", **TINY)
    params, buffers = ntm.init_params(config, 0)
    C, Z = config.controller_size, config.controller_input_size
    assert numpy.abs(params["controller_W"]).max() <= 1 / math.sqrt(Z + C)
    numpy.testing.assert_array_equal(params["controller_b"][C:2 * C], 1.0)
    numpy.testing.assert_array_equal(params["controller_b"][:C], 0.0)
    numpy.testing.assert_array_equal(params["controller_b"][2 * C:], 0.0)
    numpy.testing.assert_array_equal(params["interface_b"], 0.0)
    numpy.testing.assert_array_equal(params["output_b"], 0.0)
    assert numpy.abs(params["interface_W"]).max() <= 1 / math.sqrt(C)
    assert numpy.abs(params["read_init"]).max() <= 0.5
    N, W = config.memory_slots, config.word_size
    assert numpy.abs(buffers["memory_init"]).max() <= 1 / math.sqrt(N + W)
    # the documented draw order: controller, interface, output, read_init, read/write weights, memory
    rng = numpy.random.default_rng(0)
    K, O_in, R = config.interface_size, C + config.read_heads * W, config.read_heads
    expected = [
        ("controller_W", rng.uniform(-1 / math.sqrt(Z + C), 1 / math.sqrt(Z + C), (Z + C, 4 * C))),
        ("interface_W", rng.uniform(-1 / math.sqrt(C), 1 / math.sqrt(C), (C, K))),
        ("output_W", rng.uniform(-1 / math.sqrt(O_in), 1 / math.sqrt(O_in), (O_in, O))),
        ("read_init", rng.uniform(-0.5, 0.5, (R, W))),
        ("read_weights_init", 0.1 * rng.standard_normal((R, N))),
        ("write_weights_init", 0.1 * rng.standard_normal((config.write_heads, N))),
    ]
    for name, value in expected:
        numpy.testing.assert_array_equal(params[name], value, err_msg=name)
    bound = 1 / math.sqrt(N + W)
    numpy.testing.assert_array_equal(buffers["memory_init"], rng.uniform(-bound, bound, (N, W)))
    # the other memory inits share every other parameter's values
    constant, _ = ntm.init_params(ntm.NTMConfig(I, O, controller="lstm", **TINY), 0)
    learned, _ = ntm.init_params(ntm.NTMConfig(I, O, controller="lstm", memory_init="learned", **TINY), 0)
    for name, value in constant.items():
        numpy.testing.assert_array_equal(value, params[name])
    numpy.testing.assert_array_equal(learned["memory_init"], buffers["memory_init"])


def test_dnc_initial_values_follow_the_documented_draw_order():
    config = dnc.DNCConfig(I, O, controller="ff", read_heads=2, **TINY)
    params, buffers = dnc.init_params(config, 3)
    assert buffers == {}
    Z, C, K = config.controller_input_size, config.controller_size, config.interface_size
    O_in = C + config.read_heads * config.word_size
    rng = numpy.random.default_rng(3)
    for name, fan_in, shape in [("controller_W", Z, (Z, C)), ("interface_W", C, (C, K)),
                                ("output_W", O_in, (O_in, O))]:
        bound = 1 / math.sqrt(fan_in)
        numpy.testing.assert_array_equal(params[name], rng.uniform(-bound, bound, shape), err_msg=name)
    for name in ("controller_b", "interface_b", "output_b"):
        numpy.testing.assert_array_equal(params[name], 0.0)


@pytest.mark.parametrize("kind", MODELS)
def test_float32_parameters_give_float32_logits_loss_and_gradients(kind):
    module, config, params, buffers = make_model(kind, dtype=numpy.float32)
    params64, _ = module.init_params(config, 0, numpy.float64)
    params32, _ = module.init_params(config, 0, numpy.float32)
    for name in params32:
        assert params32[name].dtype == numpy.float32
        numpy.testing.assert_array_equal(params32[name], params64[name].astype(numpy.float32))
    x, target, mask = make_batch()
    logits, trace = module.forward(params, buffers, config, x, return_trace=True)
    assert logits.dtype == numpy.float32
    assert all(value.dtype == numpy.float32 for value in trace.values())
    value, grads = value_and_grad(lambda p: module.loss(p, buffers, config, x, target, mask))(params)
    assert numpy.asarray(value).dtype == numpy.float32
    assert all(g.dtype == numpy.float32 for g in grads.values())
    params64 = {n: v.astype(numpy.float64) for n, v in params.items()}
    buffers64 = {n: v.astype(numpy.float64) for n, v in buffers.items()}
    numpy.testing.assert_allclose(logits, module.forward(params64, buffers64, config, x), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", MODELS)
def test_inputs_are_not_mutated(kind):
    module, config, params, buffers = make_model(kind, memory_init="random") if kind == "ntm" \
        else make_model(kind)
    x, target, mask = make_batch()
    copies = [{n: v.copy() for n, v in params.items()}, {n: v.copy() for n, v in buffers.items()},
              x.copy(), target.copy(), mask.copy()]
    grad(lambda p: module.loss(p, buffers, config, x, target, mask))(params)
    module.forward(params, buffers, config, x, return_trace=True)
    for before, after in zip(copies, [params, buffers, x, target, mask]):
        if isinstance(before, dict):
            for name in before:
                numpy.testing.assert_array_equal(before[name], after[name])
        else:
            numpy.testing.assert_array_equal(before, after)


def test_controllers_alone():
    rng = numpy.random.default_rng(0)
    W, b = controllers.lstm_init(rng, 4, 3, numpy.float64)
    assert W.shape == (7, 12) and b.shape == (12,)
    z, h, c = rng.standard_normal((2, 4)), numpy.zeros((2, 3)), numpy.zeros((2, 3))
    h1, c1 = controllers.lstm_step(W, b, z, h, c)
    gates = numpy.concatenate([z, h], axis=1) @ W + b
    sig = lambda v: 1 / (1 + numpy.exp(-v))  # noqa: E731
    c_expected = sig(gates[:, 3:6]) * 0 + sig(gates[:, :3]) * numpy.tanh(gates[:, 9:])
    numpy.testing.assert_allclose(c1, c_expected, rtol=1e-13)
    numpy.testing.assert_allclose(h1, sig(gates[:, 6:9]) * numpy.tanh(c_expected), rtol=1e-13)
    Wf, bf = controllers.ff_init(rng, 4, 3, numpy.float32)
    assert Wf.dtype == numpy.float32 and Wf.shape == (4, 3)
    numpy.testing.assert_allclose(controllers.ff_step(Wf, bf, z.astype(numpy.float32)),
                                  numpy.tanh(z @ Wf), rtol=1e-6)


# --------------------------------------------------------------------------
# Bad configurations and inputs
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("field, value, error", [
    ("input_size", 0, ValueError),
    ("output_size", -1, ValueError),
    ("memory_slots", 0, ValueError),
    ("word_size", 2.5, TypeError),
    ("controller_size", True, TypeError),
    ("read_heads", "2", TypeError),
    ("controller", "gru", ValueError),
    ("controller", None, TypeError),
])
def test_bad_config_raises_naming_the_field(kind, field, value, error):
    _, config_class = MODELS[kind]
    options = dict(input_size=I, output_size=O)
    options[field] = value
    with pytest.raises(error, match=field):
        config_class(**options)


@pytest.mark.parametrize("field, value, error", [
    ("write_heads", 0, ValueError),
    ("shift_range", -1, ValueError),
    ("memory_init", "zeros", ValueError),
])
def test_bad_ntm_config_raises_naming_the_field(field, value, error):
    with pytest.raises(error, match=field):
        ntm.NTMConfig(I, O, **{field: value})


def test_config_properties_and_frozen():
    config = ntm.NTMConfig(I, O, numpy.int64(8), shift_range=0)
    assert type(config.memory_slots) is int and config.shift_width == 1
    W = config.word_size
    assert config.interface_size == 3 * W + 1 + 3 + W + 1 + 3
    with pytest.raises(Exception):
        config.word_size = 3
    assert dnc.DNCConfig(I, O).interface_size == 4 * 16 + 3 * 16 + 5 * 4 + 3


@pytest.mark.parametrize("kind", MODELS)
def test_bad_inputs_raise_clear_errors(kind):
    module, config, params, buffers = make_model(kind)
    x, target, mask = make_batch()
    x_nan = x.copy()
    x_nan[1, 0, 2] = numpy.nan
    bad = [
        (dict(x=x[0]), ValueError, r"x must have shape \(T, B, I\)"),
        (dict(x=x[:, :, :2]), ValueError, "input_size"),
        (dict(x=x_nan), ValueError, "x contains NaN"),
        (dict(x=x.astype(complex)), TypeError, "x must be a real"),
        (dict(x=x[:0]), ValueError, "empty"),
        (dict(target=target[:, :, :1]), ValueError, r"target must have shape \(T, B, O\)"),
        (dict(target=target[:2]), ValueError, "target must have shape"),
        (dict(target=numpy.where(target > 0, numpy.inf, target)), ValueError, "target contains NaN"),
        (dict(mask=mask[:, :1]), ValueError, r"mask must have shape \(T, B\)"),
        (dict(mask=mask[:, :, None]), ValueError, "mask must have shape"),
    ]
    for change, error, message in bad:
        args = {**dict(x=x, target=target, mask=mask), **change}
        with pytest.raises(error, match=message):
            module.loss(params, buffers, config, args["x"], args["target"], args["mask"])
        # the same check while autograd traces the parameters
        with pytest.raises(error, match=message):
            grad(lambda p: module.loss(p, buffers, config, args["x"], args["target"], args["mask"]))(params)
    with pytest.raises(ValueError, match="controller_W"):
        module.forward({**params, "controller_W": params["controller_W"][:-1]}, buffers, config, x)
    with pytest.raises(ValueError, match="missing"):
        module.forward({n: v for n, v in params.items() if n != "output_b"}, buffers, config, x)
    with pytest.raises(TypeError, match="config"):
        module.forward(params, buffers, dict(input_size=I), x)
    with pytest.raises(TypeError, match="lacks"):
        module.forward(params, buffers, config, x, ops=object())
    with pytest.raises(TypeError, match="seed"):
        module.init_params(config, "zero")
    with pytest.raises(TypeError, match="dtype"):
        module.init_params(config, 0, numpy.int32)


def test_random_memory_init_needs_its_buffer():
    module, config, params, buffers = make_model("ntm", memory_init="random")
    x, _, _ = make_batch()
    with pytest.raises(ValueError, match="memory_init"):
        module.forward(params, {}, config, x)


# --------------------------------------------------------------------------
# The same model on other op namespaces
# --------------------------------------------------------------------------

MODEL_OPS = {"ntm": ntm.NTM_OPS, "dnc": dnc.DNC_OPS}
COMPILED_CASES = {
    "ntm-lstm-2r2w-learned": ("ntm", dict(controller="lstm", read_heads=2, write_heads=2, memory_init="learned")),
    "ntm-ff-shift2-random": ("ntm", dict(controller="ff", shift_range=2, memory_init="random")),
    "dnc-lstm-R2": ("dnc", dict(controller="lstm", read_heads=2)),
    "dnc-ff-R1": ("dnc", dict(controller="ff", read_heads=1)),
}


def _loss_and_grads(module, config, params, buffers, ops):
    x, target, mask = make_batch(steps=4)
    return value_and_grad(lambda p: module.loss(p, buffers, config, x, target, mask, ops=ops))(params)


@pytest.mark.parametrize("kind, options", COMPILED_CASES.values(), ids=list(COMPILED_CASES))
def test_compiled_ops_give_the_reference_loss_and_gradient(kind, options):
    missing = [name for name in MODEL_OPS[kind] if name not in dmem.compiled.KERNELS]
    assert not missing, f"dmem.compiled lacks the kernels {missing} that the {kind.upper()} needs"
    module, config, params, buffers = make_model(kind, **options)
    ref_value, ref_grads = _loss_and_grads(module, config, params, buffers, dmem.reference)
    value, grads = _loss_and_grads(module, config, params, buffers, dmem.compiled)
    numpy.testing.assert_allclose(value, ref_value, rtol=1e-8)
    for name in ref_grads:
        numpy.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind, options", COMPILED_CASES.values(), ids=list(COMPILED_CASES))
def test_every_available_compiled_op_fits_in_the_model(kind, options):
    """The compiled kernels that exist, the reference for the others: same loss and gradient."""
    mixed = type("Mixed", (), {})()
    for name in MODEL_OPS[kind]:
        source = dmem.compiled if name in dmem.compiled.KERNELS else dmem.reference
        setattr(mixed, name, getattr(source, name))
    module, config, params, buffers = make_model(kind, **options)
    ref_value, ref_grads = _loss_and_grads(module, config, params, buffers, dmem.reference)
    value, grads = _loss_and_grads(module, config, params, buffers, mixed)
    numpy.testing.assert_allclose(value, ref_value, rtol=1e-8)
    for name in ref_grads:
        numpy.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", MODELS)
def test_dmem_ops_namespace_works_under_the_reference_backend(kind):
    module, config, params, buffers = make_model(kind)
    x, _, _ = make_batch()
    with dmem.use_backend("reference"):
        numpy.testing.assert_array_equal(module.forward(params, buffers, config, x, ops=dmem.ops),
                                         module.forward(params, buffers, config, x))
