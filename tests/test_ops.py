"""dmem.ops: dispatch by backend, validation, parity of the two namespaces."""

import inspect

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp

import dmem
from dmem import compiled, ops, reference
from dmem._opspec import OPS

SIZES = {"B": 2, "N": 5, "W": 3, "H": 2, "R": 2, "S": 3}
BACKENDS = ["reference", "compiled"]


def make_inputs(spec, rng, dtype=np.float64, sizes=SIZES):
    """Random inputs in (0.05, 0.45): valid gates and (sub-)normalised weightings."""
    return [
        rng.uniform(0.05, 0.45, size=tuple(sizes[d] for d in dims)).astype(dtype)
        for _, dims in spec.inputs
    ]


def output_tuple(out, spec):
    return out if len(spec.outputs) > 1 else (out,)


@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_module_has_every_op_with_reference_signature(name):
    ref_params = list(inspect.signature(getattr(reference, name)).parameters)
    assert ref_params == [n for n, _ in OPS[name].inputs]
    for suffix in ("", "_forward"):
        fn = getattr(ops, name + suffix)
        assert list(inspect.signature(fn).parameters) == ref_params
    params = list(inspect.signature(getattr(ops, name + "_backward")).parameters)
    assert params == ["saved"] + ["grad_" + n for n, _ in OPS[name].outputs]


def test_compiled_namespace_matches_reference():
    # The compiled build is required to provide every op of the contract.
    assert dmem.compiled_available()
    assert sorted(compiled.KERNELS) == sorted(OPS) == sorted(reference.__all__)
    for name, spec in OPS.items():
        # Positional parameters are the contract's inputs; keyword-only ones
        # (link_step_forward's out_link) are extras of the compiled wrapper.
        signature = inspect.signature(getattr(compiled, name + "_forward"))
        params = [p.name for p in signature.parameters.values()
                  if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert params == [n for n, _ in spec.inputs], name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_forward_backward_agree_with_autograd_of_reference(name, backend):
    spec = OPS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    inputs = make_inputs(spec, rng)
    copies = [x.copy() for x in inputs]
    vjp, expected = make_vjp(lambda args: getattr(reference, name)(*args))(tuple(inputs))
    expected = output_tuple(expected, spec)
    cotangents = [rng.standard_normal(o.shape) for o in expected]
    expected_grads = vjp(tuple(cotangents) if len(expected) > 1 else cotangents[0])
    with dmem.use_backend(backend):
        outputs, saved = getattr(ops, name + "_forward")(*inputs)
        outputs = output_tuple(outputs, spec)
        grads = getattr(ops, name + "_backward")(saved, *cotangents)
        direct = output_tuple(getattr(ops, name)(*inputs), spec)
    assert len(grads) == len(spec.inputs)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    for got, want in zip(direct, expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
    for got, want, x in zip(grads, expected_grads, inputs):
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(OPS))
def test_ops_are_differentiable_by_autograd(name, backend):
    spec = OPS[name]
    rng = np.random.default_rng(7)
    inputs = make_inputs(spec, rng)
    weights = [rng.standard_normal(tuple(SIZES[d] for d in dims)) for _, dims in spec.outputs]

    def loss(x0, fn):
        out = output_tuple(fn(x0, *inputs[1:]), spec)
        return sum(anp.sum(o * c) for o, c in zip(out, weights))

    want = grad(loss)(inputs[0], getattr(reference, name))
    with dmem.use_backend(backend):
        got = grad(loss)(inputs[0], getattr(ops, name))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_saved_state_survives_a_backend_switch():
    spec = OPS["content_weights"]
    inputs = make_inputs(spec, np.random.default_rng(1))
    g = np.ones((2, 2, 5))
    with dmem.use_backend("reference"):
        out_r, saved_r = ops.content_weights_forward(*inputs)
    with dmem.use_backend("compiled"):
        out_c, saved_c = ops.content_weights_forward(*inputs)
        grads_r = ops.content_weights_backward(saved_r, g)
    with dmem.use_backend("reference"):
        grads_c = ops.content_weights_backward(saved_c, g)
    for a, b in zip(grads_r, grads_c):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_refuses_foreign_saved_state(backend):
    rng = np.random.default_rng(2)
    with dmem.use_backend(backend):
        _, saved = ops.precedence_forward(*make_inputs(OPS["precedence"], rng))
        with pytest.raises(TypeError, match="saved"):
            ops.content_weights_backward(saved, np.ones((2, 2, 5)))
        with pytest.raises(TypeError, match="saved"):
            ops.precedence_backward(("not", "saved"), np.ones((2, 5)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_checks_gradient_shapes(backend):
    rng = np.random.default_rng(3)
    with dmem.use_backend(backend):
        _, saved = ops.read_forward(*make_inputs(OPS["read"], rng))
        with pytest.raises(ValueError, match=r"shape of output 0"):
            ops.read_backward(saved, np.ones((2, 2, 4)))
        with pytest.raises(TypeError, match="1 output gradient|positional argument"):
            ops.read_backward(saved, np.ones((2, 2, 3)), np.ones((2, 2, 3)))
        zero = ops.read_backward(saved, None)
        assert all(np.all(z == 0) for z in zero)


@pytest.mark.parametrize("backend", BACKENDS)
class TestBadInput:
    def test_wrong_ndim_names_argument_and_shape(self, backend):
        m = np.ones((2, 5, 3))
        with dmem.use_backend(backend):
            with pytest.raises(ValueError, match=r"keys must have shape \(B, H, W\)"):
                ops.content_weights(m, np.ones((2, 3)), np.ones((2, 2)))

    def test_disagreeing_sizes(self, backend):
        with dmem.use_backend(backend):
            with pytest.raises(ValueError, match=r"keys has word size W=4"):
                ops.content_weights(np.ones((2, 5, 3)), np.ones((2, 2, 4)), np.ones((2, 2)))
            with pytest.raises(ValueError, match=r"batch B=3"):
                ops.read(np.ones((2, 5, 3)), np.ones((3, 1, 5)))

    def test_empty_axis(self, backend):
        with dmem.use_backend(backend):
            with pytest.raises(ValueError, match="empty axis"):
                ops.allocation(np.ones((2, 0)))

    def test_even_shift_width(self, backend):
        with dmem.use_backend(backend):
            with pytest.raises(ValueError, match="odd width"):
                ops.shift(np.ones((1, 1, 5)) / 5, np.ones((1, 1, 2)) / 2)

    @pytest.mark.parametrize("dtype", [np.complex128, np.float16, object, "U3"])
    def test_bad_dtype(self, backend, dtype):
        with dmem.use_backend(backend):
            with pytest.raises(TypeError, match="float32 or float64"):
                ops.allocation(np.ones((2, 4)).astype(dtype))

    def test_wrong_number_of_arguments(self, backend):
        with dmem.use_backend(backend):
            with pytest.raises(TypeError, match="takes 2 arrays|missing 1 required"):
                ops.precedence_forward(np.ones((1, 3)))

    def test_none_argument(self, backend):
        with dmem.use_backend(backend):
            with pytest.raises(TypeError, match="got None"):
                ops.read(np.ones((1, 3, 2)), None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lists_ints_and_layouts_are_accepted(backend):
    rng = np.random.default_rng(4)
    p, w = make_inputs(OPS["precedence"], rng)
    expected = reference.precedence(p, w)
    with dmem.use_backend(backend):
        np.testing.assert_allclose(ops.precedence(p.tolist(), w), expected, rtol=1e-12)
        np.testing.assert_allclose(ops.precedence(np.asfortranarray(p), w[:, ::1]), expected, rtol=1e-12)
        out = ops.precedence(np.zeros((2, 5), dtype=np.int64), w)
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_stays_float32_and_mixed_goes_float64(backend):
    rng = np.random.default_rng(5)
    m, w = make_inputs(OPS["read"], rng, dtype=np.float32)
    with dmem.use_backend(backend):
        assert ops.read(m, w).dtype == np.float32
        assert ops.read(m.astype(np.float64), w).dtype == np.float64
