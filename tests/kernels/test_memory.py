"""Compiled read/write kernels against the autograd reference."""

import importlib

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp
from hypothesis import given, settings
from hypothesis import strategies as st

import dmem
from dmem.compiled._common import Saved

# dmem.compiled and dmem.reference re-export the ops under the modules' names; take the modules.
compiled = importlib.import_module("dmem.compiled.memory")
reference = importlib.import_module("dmem.reference.memory")

NAMES = ["read", "write"]
OUTPUT_SHAPE = {"read": lambda B, N, W, H: (B, H, W), "write": lambda B, N, W, H: (B, N, W)}


def make_inputs(name, rng, B=3, N=7, W=4, H=2, dtype=np.float64):
    """Memory N(0, 1), weights and erase in [0, 1], add N(0, 1); a few saturated w = e = 1."""
    memory = rng.standard_normal((B, N, W))
    weights = rng.uniform(0, 1, (B, H, N))
    if name == "read":
        return [memory.astype(dtype), weights.astype(dtype)]
    erase = rng.uniform(0, 1, (B, H, W))
    add = rng.standard_normal((B, H, W))
    # one slot fully written with a full erase by every head: factors (1 − w e) = 0
    weights[0, :, N // 2] = 1.0
    erase[0, :, 0] = 1.0
    return [x.astype(dtype) for x in (memory, weights, erase, add)]


def run_compiled(name, inputs, cotangent):
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    return out, getattr(compiled, name + "_backward")(saved, cotangent)


def run_reference(name, inputs, cotangent):
    vjp, out = make_vjp(lambda args: getattr(reference, name)(*args))(tuple(inputs))
    return out, vjp(cotangent)


def assert_matches_reference(name, inputs, rng, rtol_out=1e-10, rtol_grad=1e-9):
    ref_inputs = [np.asarray(x, dtype=np.float64) for x in inputs]
    cotangent = rng.standard_normal(getattr(reference, name)(*ref_inputs).shape)
    ref_out, ref_grads = run_reference(name, ref_inputs, cotangent)
    out, grads = run_compiled(name, inputs, cotangent)
    scale = np.max(np.abs(ref_out)) + 1.0
    np.testing.assert_allclose(out, ref_out, rtol=rtol_out, atol=rtol_out * 1e-3 * scale)
    assert len(grads) == len(inputs)
    for got, want, x in zip(grads, ref_grads, inputs):
        assert got.shape == np.shape(x)
        scale = np.max(np.abs(want)) + 1.0
        np.testing.assert_allclose(got, want, rtol=rtol_grad, atol=rtol_grad * 1e-3 * scale)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "B,N,W,H", [(1, 1, 1, 1), (3, 7, 4, 2), (2, 1, 5, 3), (2, 9, 1, 1), (4, 16, 20, 4), (2, 33, 3, 5)]
)
def test_forward_and_backward_match_reference(name, B, N, W, H):
    rng = np.random.default_rng(B * 1000 + N * 10 + W + H)
    assert_matches_reference(name, make_inputs(name, rng, B, N, W, H), rng)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 8), N=st.integers(1, 12), W=st.integers(1, 6), H=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_shapes_match_reference(name, B, N, W, H, seed):
    rng = np.random.default_rng(seed)
    assert_matches_reference(name, make_inputs(name, rng, B, N, W, H), rng)


def test_write_saturated_factors_give_exact_zero_memory_gradient():
    rng = np.random.default_rng(1)
    inputs = make_inputs("write", rng, B=2, N=5, W=3, H=3)
    inputs[1][:, :, 2] = 1.0
    inputs[2][:] = 1.0
    out, grads = run_compiled("write", inputs, np.ones((2, 5, 3)))
    np.testing.assert_array_equal(out[:, 2], np.sum(inputs[3], axis=1))
    np.testing.assert_array_equal(grads[0][:, 2], 0.0)
    for g in grads:
        assert np.all(np.isfinite(g))
    assert_matches_reference("write", inputs, rng)


@pytest.mark.parametrize("name", NAMES)
def test_float32_kernels_match_float64_reference(name):
    # float32 round-off over sums of N·H terms: rtol 1e-4, atol 1e-5 (relative to the scale).
    rng = np.random.default_rng(2)
    inputs = make_inputs(name, rng, B=4, N=32, W=20, H=4, dtype=np.float32)
    out, grads = run_compiled(name, inputs, rng.standard_normal(OUTPUT_SHAPE[name](4, 32, 20, 4)))
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    assert_matches_reference(name, inputs, rng, rtol_out=1e-4, rtol_grad=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_large_magnitudes_stay_finite_and_match(name):
    rng = np.random.default_rng(3)
    inputs = make_inputs(name, rng, B=2, N=6, W=3, H=2)
    inputs[0] = inputs[0] * 1e150
    if name == "write":
        inputs[3] = inputs[3] * 1e150
    out, grads = run_compiled(name, inputs, rng.standard_normal(OUTPUT_SHAPE[name](2, 6, 3, 2)))
    assert np.all(np.isfinite(out))
    for g in grads:
        assert np.all(np.isfinite(g))
    assert_matches_reference(name, inputs, rng)


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
def test_one_and_two_threads_are_bitwise_identical(name):
    rng = np.random.default_rng(5)
    inputs = make_inputs(name, rng, B=8, N=24, W=7, H=3)
    cotangent = rng.standard_normal(OUTPUT_SHAPE[name](8, 24, 7, 3))
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
    inputs = tuple(make_inputs(name, rng))
    primitive = getattr(dmem.compiled, name)
    ref = getattr(reference, name)

    def loss(fn):
        return lambda args: anp.sum(anp.sin(fn(*args)) * anp.arange(1.0, 1.0 + fn(*args).shape[-1]))

    got = grad(loss(primitive))(inputs)
    want = grad(loss(ref))(inputs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_non_contiguous_and_fortran_inputs_give_the_same_results(name):
    rng = np.random.default_rng(7)
    inputs = make_inputs(name, rng, B=3, N=6, W=4, H=2)
    cotangent = rng.standard_normal(OUTPUT_SHAPE[name](3, 6, 4, 2))
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


@pytest.mark.parametrize("name", NAMES)
def test_mixed_float32_and_float64_run_in_float64(name):
    rng = np.random.default_rng(8)
    inputs = make_inputs(name, rng)
    mixed = [x.astype(np.float32) if i % 2 == 0 else x for i, x in enumerate(inputs)]
    upcast = [np.asarray(x, dtype=np.float64) for x in mixed]
    cotangent = rng.standard_normal(OUTPUT_SHAPE[name](3, 7, 4, 2))
    out, grads = run_compiled(name, mixed, cotangent)
    out64, grads64 = run_compiled(name, upcast, cotangent)
    assert out.dtype == np.float64 and all(g.dtype == np.float64 for g in grads)
    np.testing.assert_array_equal(out, out64)
    for g, g64 in zip(grads, grads64):
        np.testing.assert_array_equal(g, g64)


@pytest.mark.parametrize("name", NAMES)
def test_none_cotangent_gives_zero_gradients(name):
    rng = np.random.default_rng(9)
    inputs = make_inputs(name, rng)
    _, saved = getattr(compiled, name + "_forward")(*inputs)
    for g, x in zip(getattr(compiled, name + "_backward")(saved, None), inputs):
        assert g.shape == x.shape
        np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", NAMES)
def test_wrong_ndim_raises(name):
    inputs = make_inputs(name, np.random.default_rng(10))
    bad = list(inputs)
    bad[1] = bad[1][0]
    with pytest.raises(ValueError, match="weights must have shape"):
        getattr(compiled, name + "_forward")(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_disagreeing_sizes_raise(name):
    inputs = make_inputs(name, np.random.default_rng(11))
    bad = list(inputs)
    bad[1] = bad[1][:, :, :-1]  # N disagrees with memory
    with pytest.raises(ValueError, match="memory slots"):
        getattr(compiled, name + "_forward")(*bad)
    if name == "write":
        bad = list(inputs)
        bad[3] = bad[3][:, :, :-1]  # W disagrees
        with pytest.raises(ValueError, match="add"):
            compiled.write_forward(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_empty_axis_raises(name):
    inputs = make_inputs(name, np.random.default_rng(12))
    bad = list(inputs)
    bad[0] = bad[0][:, :, :0]
    with pytest.raises(ValueError, match="empty axis"):
        getattr(compiled, name + "_forward")(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_complex_dtype_raises(name):
    inputs = make_inputs(name, np.random.default_rng(13))
    bad = list(inputs)
    bad[0] = bad[0].astype(np.complex128)
    with pytest.raises(TypeError, match="memory must be a float32 or float64"):
        getattr(compiled, name + "_forward")(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_number_of_inputs_raises(name):
    inputs = make_inputs(name, np.random.default_rng(14))
    with pytest.raises(TypeError):
        getattr(compiled, name + "_forward")(*inputs[:-1])


@pytest.mark.parametrize("name", NAMES)
def test_garbage_saved_raises(name):
    inputs = make_inputs(name, np.random.default_rng(15))
    out, _ = getattr(compiled, name + "_forward")(*inputs)
    other = "write" if name == "read" else "read"
    _, other_saved = getattr(compiled, other + "_forward")(*make_inputs(other, np.random.default_rng(15)))
    backward = getattr(compiled, name + "_backward")
    for garbage in (None, "saved", (inputs, out), other_saved):
        with pytest.raises(TypeError, match="saved must be the state returned by"):
            backward(garbage, np.ones_like(out))


@pytest.mark.parametrize("name", NAMES)
def test_hand_assembled_saved_with_wrong_shapes_raises(name):
    inputs = make_inputs(name, np.random.default_rng(17))
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    shrunk = [np.ascontiguousarray(a[:, :1]) for a in saved.arrays]
    forged = Saved(name, shrunk, [out], saved.sizes)
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        getattr(compiled, name + "_backward")(forged, np.ones_like(out))
    # arrays right, but a recorded output shape that would let a small gradient through
    small = np.ones((1,) * out.ndim)
    forged = Saved(name, list(saved.arrays), [small], saved.sizes)
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        getattr(compiled, name + "_backward")(forged, small)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_gradient_shape_raises(name):
    inputs = make_inputs(name, np.random.default_rng(16))
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    backward = getattr(compiled, name + "_backward")
    with pytest.raises(ValueError, match="gradient 0 must have the shape"):
        backward(saved, np.ones(out.shape + (1,)))
    with pytest.raises(ValueError, match="gradient 0 must have the shape"):
        backward(saved, np.ones(out.shape[:-1] + (out.shape[-1] + 1,)))
    with pytest.raises(TypeError, match="must be a float array"):
        backward(saved, np.ones(out.shape, dtype=np.complex128))


# ---------------------------------------------------------------- instruction sets
#
# The read and write loops (memory_simd.h) exist in a baseline version and, on
# x86 CPUs that have them, an AVX2/FMA one and an AVX-512 one; the widest is
# chosen at import.  Each is tested against the reference, and each against the
# baseline.  Word sizes cover whole vectors, a partial last vector and words
# shorter than one vector, for float64 and float32 lane counts.

kernels = importlib.import_module("dmem._kernels.memory")
SIMD_LEVELS = list(kernels.simd_levels_supported())


@pytest.fixture(params=SIMD_LEVELS)
def simd_level(request):
    previous = kernels.simd_level()
    assert kernels._set_simd(request.param) == request.param
    yield request.param
    kernels._set_simd(previous)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("B,N,W,H", [
    (1, 1, 1, 1), (2, 5, 3, 2), (2, 7, 8, 1), (3, 13, 20, 4), (2, 9, 33, 3), (2, 11, 16, 5),
    (2, 6, 67, 2), (1, 4, 17, 7),
])
def test_each_simd_level_matches_reference(simd_level, name, B, N, W, H):
    rng = np.random.default_rng(B * 1000 + N * 10 + W + H)
    assert_matches_reference(name, make_inputs(name, rng, B, N, W, H), rng)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("W", [3, 6, 20, 37])
def test_each_simd_level_float32(simd_level, name, W):
    rng = np.random.default_rng(30 + W)
    inputs = make_inputs(name, rng, B=3, N=19, W=W, H=3, dtype=np.float32)
    assert_matches_reference(name, inputs, rng, rtol_out=1e-4, rtol_grad=1e-4)


def test_each_simd_level_saturated_write_and_large_magnitudes(simd_level):
    test_write_saturated_factors_give_exact_zero_memory_gradient()
    test_large_magnitudes_stay_finite_and_match("read")
    test_large_magnitudes_stay_finite_and_match("write")


@pytest.mark.parametrize("name", NAMES)
def test_each_simd_level_one_and_two_threads_are_bitwise_identical(simd_level, name):
    test_one_and_two_threads_are_bitwise_identical(name)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("level", SIMD_LEVELS[1:] or ["none"])
def test_simd_levels_agree_with_baseline(name, dtype, level):
    if level == "none":
        pytest.skip("this CPU has no AVX2/FMA")
    rng = np.random.default_rng(40)
    inputs = make_inputs(name, rng, B=4, N=67, W=13, H=3, dtype=dtype)
    cotangent = rng.standard_normal(OUTPUT_SHAPE[name](4, 67, 13, 3)).astype(dtype)
    previous = kernels.simd_level()
    results = []
    try:
        for chosen in ("baseline", level):
            assert kernels._set_simd(chosen) == chosen
            results.append(run_compiled(name, inputs, cotangent))
    finally:
        kernels._set_simd(previous)
    (o1, g1), (o2, g2) = results
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(o2, o1, rtol=rtol, atol=rtol * 1e-2)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(b, a, rtol=10 * rtol, atol=rtol * 1e-1)


def test_simd_level_is_reported():
    level = kernels.simd_level()
    assert level in SIMD_LEVELS and SIMD_LEVELS[0] == "baseline"
    try:
        assert kernels._set_simd(False) == "baseline"
        assert kernels._set_simd(True) == SIMD_LEVELS[-1]
        for chosen in SIMD_LEVELS:
            assert kernels._set_simd(chosen) == chosen
    finally:
        kernels._set_simd(level)
