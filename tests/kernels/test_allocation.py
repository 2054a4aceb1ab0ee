"""Compiled usage/allocation kernels against the autograd reference."""

import importlib

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp
from autograd.builtins import tuple as differentiable_tuple
from hypothesis import given, settings
from hypothesis import strategies as st

import dmem
from dmem._kernels import allocation as _raw

# dmem.compiled and dmem.reference re-export the ops under the modules' names; take the modules.
compiled = importlib.import_module("dmem.compiled.allocation")
reference = importlib.import_module("dmem.reference.allocation")



@pytest.fixture(autouse=True, scope="module", params=["avx512", "avx2+fma", "baseline"])
def instruction_set(request):
    """Every test runs with each version of the usage loops (allocation_simd.h)
    that this CPU can run."""
    previous = _raw.simd_level()
    level = _raw._set_simd(request.param)
    if level != request.param:
        _raw._set_simd(previous)
        pytest.skip(f"this CPU cannot run the {request.param} loops")
    yield level
    _raw._set_simd(previous)


NAMES = ["usage", "allocation"]
EPS = 1e-6


def make_inputs(name, rng, B=3, N=7, R=2, dtype=np.float64, ties=False):
    """Usage, weightings and gates in [0, 1]; for usage, a few saturated f = w_read = 1.

    With ``ties``, usages are drawn from a few levels (0, 0.25, ..., 1), so
    that many are exactly equal, including exactly 0 and 1.
    """
    if ties:
        u = rng.integers(0, 5, (B, N)) / 4.0
    else:
        u = rng.uniform(0, 1, (B, N))
    if name == "allocation":
        return [u.astype(dtype)]
    write = rng.uniform(0, 1, (B, N))
    read = rng.uniform(0, 1, (B, R, N))
    free = rng.uniform(0, 1, (B, R))
    free[0, :] = 1.0
    read[0, :, N // 2] = 1.0
    return [x.astype(dtype) for x in (u, write, read, free)]


def run_compiled(name, inputs, cotangent):
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    return out, getattr(compiled, name + "_backward")(saved, cotangent)


def run_reference(name, inputs, cotangent):
    vjp, out = make_vjp(lambda args: getattr(reference, name)(*args))(tuple(inputs))
    return out, vjp(cotangent)


def assert_matches_reference(name, inputs, rng, rtol_out=1e-10, rtol_grad=1e-9):
    """Values and gradients against the float64 reference.

    The absolute tolerance is relative to the largest entry (allocation
    weights and their gradients shrink geometrically along the free list).
    """
    ref_inputs = [np.asarray(x, dtype=np.float64) for x in inputs]
    cotangent = rng.standard_normal(ref_inputs[0].shape)
    ref_out, ref_grads = run_reference(name, ref_inputs, cotangent)
    out, grads = run_compiled(name, inputs, cotangent)
    np.testing.assert_allclose(out, ref_out, rtol=rtol_out, atol=rtol_out * 1e-3 * np.max(np.abs(ref_out)))
    assert len(grads) == len(inputs)
    for got, want, x in zip(grads, ref_grads, inputs):
        assert got.shape == np.shape(x)
        np.testing.assert_allclose(got, want, rtol=rtol_grad, atol=rtol_grad * 1e-3 * (np.max(np.abs(want)) + 1e-300))


def separated_usages(rng, B, N):
    """Usages at least 0.5/N apart (no ties, and no near-ties for float32 either)."""
    grid = np.linspace(0.02, 0.98, N)
    return np.stack([rng.permutation(grid) for _ in range(B)])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("B,N,R", [(1, 1, 1), (3, 7, 2), (2, 1, 4), (4, 16, 4), (2, 33, 1), (2, 130, 3)])
def test_forward_and_backward_match_reference(name, B, N, R):
    rng = np.random.default_rng(B * 1000 + N * 10 + R)
    assert_matches_reference(name, make_inputs(name, rng, B, N, R), rng)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 8), N=st.integers(1, 40), R=st.integers(1, 5), ties=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_shapes_match_reference(name, B, N, R, ties, seed):
    rng = np.random.default_rng(seed)
    assert_matches_reference(name, make_inputs(name, rng, B, N, R, ties=ties), rng)


# ---------------------------------------------------------------- usage loops: any N (partial
# last vectors of 2 to 16 lanes), any R (more than 16 heads keep their prefix products in
# the gradient rather than on the stack)

@pytest.mark.parametrize("N", [1, 3, 9, 17, 31, 40])
@pytest.mark.parametrize("R", [1, 2, 5, 16, 17, 23])
def test_usage_any_slots_and_heads_match_reference(N, R):
    rng = np.random.default_rng(500 + 50 * N + R)
    assert_matches_reference("usage", make_inputs("usage", rng, 3, N, R), rng)


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 1e-5)])
@pytest.mark.parametrize("N,R", [(1, 1), (13, 4), (40, 17), (130, 3)])
def test_usage_loops_of_every_level_agree_with_the_baseline(dtype, rtol, N, R):
    """The versions differ in rounding only (FMA; the lanes of df's sums)."""
    rng = np.random.default_rng(600 + N + R)
    inputs = make_inputs("usage", rng, 2, N, R, dtype=dtype)
    cotangent = rng.standard_normal((2, N)).astype(dtype)
    previous = _raw.simd_level()
    results = {}
    try:
        for level in _raw.simd_levels_supported():
            assert _raw._set_simd(level) == level
            out, grads = run_compiled("usage", inputs, cotangent)
            results[level] = [out, *grads]
    finally:
        _raw._set_simd(previous)
    for level, values in results.items():
        for got, want in zip(values, results["baseline"]):
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.max(np.abs(want)))


def test_simd_level_is_reported():
    supported = _raw.simd_levels_supported()
    assert supported == _raw.SIMD_LEVELS[:len(supported)]
    previous = _raw.simd_level()
    assert _raw._set_simd(False) == "baseline"
    assert _raw._set_simd(True) == supported[-1]
    _raw._set_simd(previous)


# ---------------------------------------------------------------- allocation specifics

def test_allocation_ties_follow_index_order_and_saved_free_list():
    u = np.array([[0.3, 0.3, 0.3, 0.1, 0.3], [0.5, 0.5, 0.5, 0.5, 0.5]])
    out, saved = compiled.allocation_forward(u)
    np.testing.assert_allclose(out, reference.allocation(u), rtol=1e-15)
    assert out[0, 3] > out[0, 0] > out[0, 1] > out[0, 2] > out[0, 4]
    assert np.all(np.diff(out[1]) < 0)
    order = saved.arrays[1]
    assert order.dtype == np.int64 and not order.flags.writeable
    np.testing.assert_array_equal(order, np.argsort(u, axis=1, kind="stable"))
    np.testing.assert_array_equal(order[0], [3, 0, 1, 2, 4])


def test_allocation_free_list_is_stable_argsort_for_large_rows_with_many_ties():
    # Rows longer than the sort's insertion runs, with many ties: exercises the merges.
    rng = np.random.default_rng(20)
    for N in (17, 100, 1024, 1031):
        u = rng.integers(0, 7, (3, N)) / 6.0
        _, saved = compiled.allocation_forward(u)
        np.testing.assert_array_equal(saved.arrays[1], np.argsort(u, axis=1, kind="stable"))
        u = rng.uniform(0, 1, (3, N))
        _, saved = compiled.allocation_forward(u)
        np.testing.assert_array_equal(saved.arrays[1], np.argsort(u, axis=1, kind="stable"))


@pytest.mark.parametrize("N", [1, 4, 64])
def test_allocation_all_zero_usage(N):
    rng = np.random.default_rng(21)
    u = np.zeros((2, N))
    out, _ = compiled.allocation_forward(u)
    expected = (1 - EPS) * EPS ** np.arange(N)
    np.testing.assert_allclose(out, np.stack([expected, expected]), rtol=1e-14)
    assert_matches_reference("allocation", [u], rng)


@pytest.mark.parametrize("N", [1, 4, 64])
def test_allocation_all_one_usage(N):
    rng = np.random.default_rng(22)
    u = np.ones((2, N))
    cotangent = rng.standard_normal((2, N))
    out, (grad_u,) = run_compiled("allocation", [u], cotangent)
    np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_allclose(grad_u, -(1 - EPS) * cotangent, rtol=1e-15)
    assert_matches_reference("allocation", [u], rng)


def test_allocation_single_slot():
    u = np.array([[0.25], [1.0], [0.0]])
    out, (grad_u,) = run_compiled("allocation", [u], np.ones((3, 1)))
    np.testing.assert_allclose(out, 1 - (EPS + (1 - EPS) * u), rtol=1e-15)
    np.testing.assert_allclose(grad_u, -(1 - EPS), rtol=1e-15)


@pytest.mark.parametrize("N", [256, 1024])
def test_allocation_large_rows_match_reference(N):
    rng = np.random.default_rng(N)
    assert_matches_reference("allocation", [rng.uniform(0, 1, (2, N))], rng)
    assert_matches_reference("allocation", [rng.integers(0, 9, (2, N)) / 8.0], rng)


def test_allocation_invariants():
    rng = np.random.default_rng(23)
    u = rng.uniform(0, 1, (6, 50))
    out, _ = compiled.allocation_forward(u)
    assert np.all((out >= 0) & (out <= 1))
    assert np.all(out.sum(axis=1) <= 1 + 1e-15)
    np.testing.assert_array_equal(np.argmax(out, axis=1), np.argmin(u, axis=1))


def test_usage_saturated_free_gate_gives_finite_gradients():
    rng = np.random.default_rng(24)
    inputs = make_inputs("usage", rng, B=2, N=5, R=3)
    inputs[3][:] = 1.0
    inputs[2][:, :, 1] = 1.0
    out, grads = run_compiled("usage", inputs, np.ones((2, 5)))
    np.testing.assert_array_equal(out[:, 1], 0.0)
    for g in grads:
        assert np.all(np.isfinite(g))
    assert_matches_reference("usage", inputs, rng)


# ---------------------------------------------------------------- common properties

@pytest.mark.parametrize("name", NAMES)
def test_float32_kernels_match_float64_reference(name):
    # float32 round-off over products of up to N factors: rtol 1e-4, atol 1e-5 (relative to the scale).
    rng = np.random.default_rng(2)
    if name == "allocation":
        inputs = [separated_usages(rng, 4, 64).astype(np.float32)]
    else:
        inputs = make_inputs(name, rng, B=4, N=64, R=4, dtype=np.float32)
    out, grads = run_compiled(name, inputs, rng.standard_normal((4, 64)))
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert_matches_reference(name, inputs, rng, rtol_out=1e-4, rtol_grad=1e-4)
    out64, _ = run_reference(name, [x.astype(np.float64) for x in inputs], np.ones((4, 64)))
    np.testing.assert_allclose(out, out64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_and_cotangent_are_not_mutated_and_stay_writeable(name):
    rng = np.random.default_rng(4)
    inputs = make_inputs(name, rng)
    copies = [x.copy() for x in inputs]
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    cotangent = rng.standard_normal(out.shape)
    cot_copy = cotangent.copy()
    getattr(compiled, name + "_backward")(saved, cotangent)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)
        assert x.flags.writeable
    np.testing.assert_array_equal(cotangent, cot_copy)
    for a in saved.arrays:
        assert not a.flags.writeable


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ties", [False, True])
def test_one_and_two_threads_are_bitwise_identical(name, ties):
    rng = np.random.default_rng(5)
    inputs = make_inputs(name, rng, B=8, N=100, R=4, ties=ties)
    cotangent = rng.standard_normal((8, 100))
    before = dmem.get_num_threads()
    try:
        dmem.set_num_threads(1)
        out1, grads1 = run_compiled(name, inputs, cotangent)
        dmem.set_num_threads(2)
        out2, grads2 = run_compiled(name, inputs, cotangent)
    finally:
        dmem.set_num_threads(before)
    assert np.array_equal(out1, out2)
    for g1, g2 in zip(grads1, grads2):
        assert np.array_equal(g1, g2)


@pytest.mark.parametrize("name", NAMES)
def test_autograd_through_the_primitive_equals_autograd_through_reference(name):
    rng = np.random.default_rng(6)
    inputs = tuple(make_inputs(name, rng, N=9))
    primitive = getattr(dmem.compiled, name)
    ref = getattr(reference, name)

    def loss(fn):
        return lambda args: anp.sum(anp.sin(3.0 * fn(*args)) * anp.arange(1.0, 10.0))

    got = grad(loss(primitive))(inputs)
    want = grad(loss(ref))(inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_and_fortran_inputs_give_the_same_results(name):
    rng = np.random.default_rng(7)
    inputs = make_inputs(name, rng, B=3, N=6, R=2)
    cotangent = rng.standard_normal((3, 6))
    out, grads = run_compiled(name, inputs, cotangent)
    fortran = [np.asfortranarray(x) for x in inputs]
    strided = []
    for x in inputs:
        big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],))
        big[..., ::2] = x
        strided.append(big[..., ::2])
    assert not strided[0].flags.c_contiguous and not fortran[0].flags.c_contiguous
    for variant in (fortran, strided):
        out_v, grads_v = run_compiled(name, variant, np.asfortranarray(cotangent))
        np.testing.assert_array_equal(out_v, out)
        for g, gv in zip(grads, grads_v):
            np.testing.assert_array_equal(gv, g)


def test_mixed_float32_and_float64_run_in_float64():
    rng = np.random.default_rng(8)
    inputs = make_inputs("usage", rng)
    mixed = [x.astype(np.float32) if i % 2 == 0 else x for i, x in enumerate(inputs)]
    upcast = [np.asarray(x, dtype=np.float64) for x in mixed]
    cotangent = rng.standard_normal((3, 7))
    out, grads = run_compiled("usage", mixed, cotangent)
    out64, grads64 = run_compiled("usage", upcast, cotangent)
    assert out.dtype == np.float64 and all(g.dtype == np.float64 for g in grads)
    np.testing.assert_array_equal(out, out64)
    for g, g64 in zip(grads, grads64):
        np.testing.assert_array_equal(g, g64)
    # allocation has one input: a float32 usage with a float64 gradient stays float32 (the output's dtype).
    u32 = inputs[0].astype(np.float32)
    out32, (g32,) = run_compiled("allocation", [u32], cotangent)
    assert out32.dtype == np.float32 and g32.dtype == np.float32


@pytest.mark.parametrize("name", NAMES)
def test_integer_inputs_run_in_float64(name):
    inputs = [np.ones(x.shape, dtype=np.int64) for x in make_inputs(name, np.random.default_rng(9))]
    out, grads = run_compiled(name, inputs, np.ones((3, 7)))
    assert out.dtype == np.float64 and all(g.dtype == np.float64 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_none_cotangent_gives_zero_gradients(name):
    inputs = make_inputs(name, np.random.default_rng(9))
    _, saved = getattr(compiled, name + "_forward")(*inputs)
    for g, x in zip(getattr(compiled, name + "_backward")(saved, None), inputs):
        assert g.shape == x.shape
        np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", NAMES)
def test_wrong_ndim_raises(name):
    bad = list(make_inputs(name, np.random.default_rng(10)))
    bad[0] = bad[0][..., None]
    with pytest.raises(ValueError, match=r"usage(_prev)? must have shape \(B, N\)"):
        getattr(compiled, name + "_forward")(*bad)


def test_disagreeing_sizes_raise():
    inputs = make_inputs("usage", np.random.default_rng(11))
    bad = list(inputs)
    bad[2] = bad[2][:, :, :-1]
    with pytest.raises(ValueError, match="read_weights_prev has memory slots"):
        compiled.usage_forward(*bad)
    bad = list(inputs)
    bad[3] = bad[3][:, :1]
    with pytest.raises(ValueError, match="read heads"):
        compiled.usage_forward(*bad)
    bad = list(inputs)
    bad[1] = bad[1][:1]
    with pytest.raises(ValueError, match="batch"):
        compiled.usage_forward(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_empty_axis_raises(name):
    bad = list(make_inputs(name, np.random.default_rng(12)))
    bad[0] = bad[0][:, :0]
    with pytest.raises(ValueError, match="empty axis"):
        getattr(compiled, name + "_forward")(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_complex_dtype_raises(name):
    bad = list(make_inputs(name, np.random.default_rng(13)))
    bad[0] = bad[0].astype(np.complex128)
    with pytest.raises(TypeError, match="must be a float32 or float64"):
        getattr(compiled, name + "_forward")(*bad)


# ---------------------------------------------------------------- fused write weighting
# dmem._kernels.allocation.write_weights_{forward,backward}: usage, allocation and the
# write weighting w = g_w (g_a a + (1 − g_a) c) in one call, for the DNC's BPTT.

def reference_write_weights(usage_prev, write_prev, read_prev, free, alloc_gate, write_gate,
                            content):
    u = reference.usage(usage_prev, write_prev, read_prev, free)
    a = reference.allocation(u)
    w = write_gate[:, None] * (alloc_gate[:, None] * a + (1.0 - alloc_gate[:, None]) * content)
    return differentiable_tuple((u, a, w))


def write_weights_inputs(rng, B, N, R, dtype=np.float64):
    """Inputs of the fused kernel; the three gates are strided columns of one array,
    as in the BPTT (columns of the activated interface vector)."""
    u, w, r, _ = make_inputs("usage", rng, B, N, R)
    gates = rng.uniform(0, 1, (B, R + 5))
    content = rng.uniform(0, 1, (B, N))
    content /= content.sum(axis=1, keepdims=True)
    gates = gates.astype(dtype)
    arrays = [x.astype(dtype) for x in (u, w, r)]
    return arrays + [gates[:, 1:1 + R], gates[:, R + 2], gates[:, R + 4], content.astype(dtype)]


def run_write_weights(inputs, grad_w, grad_u, num_threads=1):
    u_prev, w_prev, r_prev, free, ga, gw, content = inputs
    B, N = u_prev.shape
    R = r_prev.shape[1]
    dtype = u_prev.dtype
    u, a, prefix, w = (np.empty((B, N), dtype) for _ in range(4))
    order = np.empty((B, N), np.int64)
    _raw.write_weights_forward(u_prev, w_prev, r_prev, free, ga, gw, content, u, a, order, prefix,
                               np.empty((B, N), np.int64), w, num_threads=num_threads)
    grads = [np.empty((B, N), dtype), np.empty((B, N), dtype), np.empty((B, R, N), dtype)]
    strided = np.full((B, R + 6), np.nan, dtype)     # gate gradients go to strided views
    grads += [strided[:, 2:2 + R], strided[:, R + 3], strided[:, R + 5], np.empty((B, N), dtype)]
    _raw.write_weights_backward(u_prev, w_prev, r_prev, free, ga, gw, content, u, a, order, prefix,
                                grad_w, grad_u, *grads, np.empty((B, 2 * N + R + 2), dtype),
                                num_threads=num_threads)
    return (u, a, w), grads


@pytest.mark.parametrize("B,N,R", [(1, 1, 1), (3, 7, 2), (4, 16, 4), (2, 33, 1), (2, 130, 3)])
def test_fused_write_weights_match_reference(B, N, R):
    rng = np.random.default_rng(B * 100 + N + R)
    inputs = write_weights_inputs(rng, B, N, R)
    grad_w, grad_u = rng.standard_normal((B, N)), rng.standard_normal((B, N))
    (u, a, w), grads = run_write_weights(inputs, grad_w, grad_u)
    ref_inputs = tuple(np.ascontiguousarray(x) for x in inputs)
    vjp, (ref_u, ref_a, ref_w) = make_vjp(lambda args: reference_write_weights(*args))(ref_inputs)
    for got, want in [(u, ref_u), (a, ref_a), (w, ref_w)]:
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13 * np.max(np.abs(want)))
    ref_grads = vjp((grad_u, np.zeros_like(ref_a), grad_w))
    for got, want, x in zip(grads, ref_grads, inputs):
        assert got.shape == x.shape
        np.testing.assert_allclose(got, want, rtol=1e-9,
                                   atol=1e-12 * (np.max(np.abs(want)) + 1e-300))


def test_fused_write_weights_equal_the_separate_kernels():
    rng = np.random.default_rng(21)
    inputs = write_weights_inputs(rng, 4, 20, 3)
    u_prev, w_prev, r_prev, free, ga, gw, content = inputs
    (u, a, w), _ = run_write_weights(inputs, rng.standard_normal((4, 20)), np.zeros((4, 20)))
    u2, _ = compiled.usage_forward(u_prev, w_prev, r_prev, np.ascontiguousarray(free))
    a2, _ = compiled.allocation_forward(u2)
    np.testing.assert_array_equal(u, u2)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(w, gw[:, None] * (ga[:, None] * a2 + (1 - ga[:, None]) * content))


def test_fused_write_weights_float32_and_threads():
    rng = np.random.default_rng(22)
    inputs = write_weights_inputs(rng, 5, 24, 4, dtype=np.float32)
    grad_w = rng.standard_normal((5, 24)).astype(np.float32)
    grad_u = rng.standard_normal((5, 24)).astype(np.float32)
    out1, grads1 = run_write_weights(inputs, grad_w, grad_u, num_threads=1)
    out2, grads2 = run_write_weights(inputs, grad_w, grad_u, num_threads=2)
    for x, y in zip(out1 + tuple(grads1), out2 + tuple(grads2)):
        assert x.dtype == np.float32
        np.testing.assert_array_equal(x, y)
    ref = [np.asarray(x, np.float64) for x in inputs]
    _, (_, _, ref_w) = make_vjp(lambda args: reference_write_weights(*args))(tuple(ref))
    np.testing.assert_allclose(out1[2], ref_w, rtol=1e-4, atol=1e-6)
