"""Compiled NTM addressing kernels against the autograd reference.

Tolerances: float64 forward rtol 1e-10, float64 backward rtol 1e-9 (both with
an absolute floor of 1e-12 times the largest magnitude, for entries that are 0
up to round-off); float32 kernels against the float64 reference rtol 1e-4 with
an absolute floor of 1e-5 times the largest magnitude, except with one-wide
words (W = 1), where float32 itself cannot reach it and the kernels are held to
the error of the float32 reference.
"""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp
from hypothesis import given, settings
from hypothesis import strategies as st

import dmem
from dmem.compiled import _common
from dmem import compiled, reference
from dmem.compiled import addressing as cad
from dmem._kernels import addressing as addressing_kernels
from dmem.reference import addressing as rad

OPS = {
    "content_weights": ("memory", "keys", "strengths"),
    "shift": ("weights", "shifts"),
    "sharpen": ("weights", "gamma"),
    "ntm_address": ("memory", "keys", "strengths", "gates", "shifts", "gamma", "weights_prev"),
}
NAMES = sorted(OPS)


def make_inputs(rng, B=3, N=6, W=4, H=2, S=3, dtype=np.float64, strength=5.0, gamma=3.0):
    """Inputs in the ranges the NTM produces (weightings and shifts normalised)."""
    shifts = rng.uniform(0.1, 1.0, size=(B, H, S))
    weights_prev = rng.uniform(0.0, 1.0, size=(B, H, N))
    weights = rng.uniform(0.0, 1.0, size=(B, H, N))
    x = {
        "memory": rng.normal(size=(B, N, W)),
        "keys": rng.normal(size=(B, H, W)),
        "strengths": rng.uniform(0.0, strength, size=(B, H)),
        "gates": rng.uniform(0.0, 1.0, size=(B, H)),
        "shifts": shifts / shifts.sum(-1, keepdims=True),
        "gamma": rng.uniform(1.0, gamma, size=(B, H)),
        "weights_prev": weights_prev / weights_prev.sum(-1, keepdims=True),
        "weights": weights / weights.sum(-1, keepdims=True),
    }
    return {k: v.astype(dtype) for k, v in x.items()}


def args_of(name, x):
    return [x[a] for a in OPS[name]]


def reference_vjp(name, args):
    fn = getattr(reference, name)
    vjp, out = make_vjp(lambda a: fn(*a))(tuple(np.asarray(a, dtype=np.float64) for a in args))
    return out, vjp


def compiled_pair(name):
    return getattr(compiled, name + "_forward"), getattr(compiled, name + "_backward")


def assert_close(actual, expected, rtol, floor):
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.all(np.isfinite(actual))
    atol = floor * max(1.0, float(np.max(np.abs(expected)))) if expected.size else 0.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def check_against_reference(name, args, rng, rtol_fwd=1e-10, rtol_bwd=1e-9, floor=1e-12):
    forward, backward = compiled_pair(name)
    out, saved = forward(*args)
    ref_out, vjp = reference_vjp(name, args)
    assert_close(out, ref_out, rtol_fwd, floor)
    cot = rng.normal(size=out.shape).astype(out.dtype)
    grads = backward(saved, cot)
    ref_grads = vjp(cot.astype(np.float64))
    assert len(grads) == len(args)
    for g, r, a in zip(grads, ref_grads, args):
        assert g.shape == np.shape(a)
        assert g.dtype == out.dtype
        assert_close(g, r, rtol_bwd, floor)
    return out, grads


# ---------------------------------------------------------------- values and gradients

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [
    dict(), dict(B=1, N=1, W=1, H=1, S=1), dict(B=2, N=1, H=1, S=5), dict(B=2, N=2, H=3, S=5),
    dict(B=4, N=17, W=7, H=1, S=3), dict(B=2, N=9, W=20, H=4, S=7),
])
def test_float64_matches_reference(name, shape):
    rng = np.random.default_rng(0)
    check_against_reference(name, args_of(name, make_inputs(rng, **shape)), rng)


@pytest.mark.parametrize("name", NAMES)
def test_float32_matches_float64_reference(name):
    rng = np.random.default_rng(1)
    args = args_of(name, make_inputs(rng, B=4, N=11, W=5, H=2, S=3, dtype=np.float32))
    out, grads = check_against_reference(name, args, rng, rtol_fwd=1e-4, rtol_bwd=1e-4, floor=1e-5)
    assert out.dtype == np.float32
    assert all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("name", ["content_weights", "ntm_address"])
def test_float32_one_wide_words_are_as_accurate_as_float32_allows(name):
    """With W = 1 the cosine similarity is ±1 up to ε, and its gradient in the key,
    (m̂ − cos k̂)/‖k‖, is a difference of two numbers near 1: float32 keeps only a few
    digits of it, whoever computes it.  The kernel's error from the float64
    reference is held to a small multiple of the error of the autograd reference run
    in float32 (plus the suite's float32 floor), on cases where the plain float32
    tolerance does not hold for either."""
    worst = 0.0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        x = make_inputs(rng, B=8, N=28, W=1, H=4, S=3, dtype=np.float32)
        args = args_of(name, x)
        forward, backward = compiled_pair(name)
        out, saved = forward(*args)
        ref_out, vjp = reference_vjp(name, args)
        vjp32, out32 = make_vjp(lambda a: getattr(reference, name)(*a))(tuple(args))
        cot = rng.normal(size=out.shape).astype(np.float32)
        pairs = list(zip([out], [ref_out], [out32]))
        pairs += list(zip(backward(saved, cot), vjp(cot.astype(np.float64)), vjp32(cot)))
        for kernel, ref64, ref32 in pairs:
            assert np.asarray(ref32).dtype == np.float32
            err = np.max(np.abs(kernel - ref64))
            err32 = np.max(np.abs(ref32 - ref64))
            floor = 1e-5 * max(1.0, float(np.max(np.abs(ref64))))
            assert err <= 3 * err32 + floor
            worst = max(worst, err32 / floor)
    assert worst > 1  # the cases do reach beyond the plain float32 tolerance


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    B=st.integers(1, 8), N=st.integers(1, 9), W=st.integers(1, 6), H=st.integers(1, 3),
    S=st.sampled_from([1, 3, 5]), seed=st.integers(0, 2**16),
)
def test_hypothesis_shapes(name, B, N, W, H, S, seed):
    rng = np.random.default_rng(seed)
    check_against_reference(name, args_of(name, make_inputs(rng, B=B, N=N, W=W, H=H, S=S)), rng)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("big", [1e3, 1e5])
def test_large_strengths_and_gammas(name, big):
    rng = np.random.default_rng(2)
    x = make_inputs(rng, B=3, N=8, H=2, S=3)
    x["strengths"] = np.full((3, 2), big)
    x["gamma"] = np.full((3, 2), big)
    x["weights"] = rng.uniform(0.0, 0.1, size=(3, 2, 8))  # (w+ε)^γ underflows in plain floats
    out, grads = check_against_reference(name, args_of(name, x), rng)
    if name != "shift":
        np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-12)
        assert np.all(out.max(-1) > 0.5)  # sharp: most of the mass on one slot
    args32 = args_of(name, {k: v.astype(np.float32) for k, v in x.items()})
    forward, backward = compiled_pair(name)
    out32, saved = forward(*args32)
    grads32 = backward(saved, np.ones_like(out32))
    assert np.all(np.isfinite(out32))
    assert all(np.all(np.isfinite(g)) for g in grads32)


@pytest.mark.parametrize("name", ["content_weights", "ntm_address"])
def test_zero_memory_rows_and_zero_keys(name):
    rng = np.random.default_rng(3)
    x = make_inputs(rng, B=3, N=5, H=2)
    x["memory"][0] = 0.0
    x["memory"][1, 3] = 0.0
    x["keys"][2, 1] = 0.0
    out, grads = check_against_reference(name, args_of(name, x), rng)
    assert np.any(grads[0][0] != 0)


@pytest.mark.parametrize("name", ["sharpen", "ntm_address", "shift"])
def test_zero_weights(name):
    rng = np.random.default_rng(4)
    x = make_inputs(rng, B=2, N=5, H=2)
    x["weights"][0, 0] = 0.0
    x["weights"][1, 1, 2] = 0.0
    x["weights"][1, 0, 2] = 0.0  # with γ = 40: (1e-12)^40 underflows, a sharpened weight of 0
    x["weights_prev"][:] = 0.0
    x["gates"][0, 0] = 0.0
    x["gamma"][1, 0] = 40.0
    out, grads = check_against_reference(name, args_of(name, x), rng)
    if name == "sharpen":
        assert out[1, 0, 2] == 0.0
        assert grads[0][1, 0, 2] == 0.0
        np.testing.assert_allclose(out[0, 0], 0.2, rtol=1e-12)


def test_shift_wider_than_memory_against_a_loop():
    rng = np.random.default_rng(5)
    for N, S in [(1, 5), (2, 5), (3, 7), (2, 9)]:
        w = rng.uniform(size=(2, 2, N))
        s = rng.uniform(size=(2, 2, S))
        out, _ = cad.shift_forward(w, s)
        expected = np.zeros_like(w)
        for i in range(N):
            for k in range(S):
                expected[..., i] += s[..., k] * w[..., (i - (k - S // 2)) % N]
        np.testing.assert_allclose(out, expected, rtol=1e-13)


def test_none_gradient_means_zero():
    rng = np.random.default_rng(6)
    for name in NAMES:
        forward, backward = compiled_pair(name)
        out, saved = forward(*args_of(name, make_inputs(rng)))
        for g in backward(saved, None):
            np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------- fused vs separate ops

def composed_address(memory, keys, strengths, gates, shifts, gamma, weights_prev):
    content = compiled.content_weights(memory, keys, strengths)
    gated = rad.interpolate(content, weights_prev, gates)
    return compiled.sharpen(compiled.shift(gated, shifts), gamma)


@pytest.mark.parametrize("shape", [dict(), dict(B=1, N=1, W=1, H=1, S=5), dict(B=4, N=13, W=6, H=3, S=5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_ntm_address_equals_composition_of_compiled_ops(shape, dtype):
    rng = np.random.default_rng(7)
    args = args_of("ntm_address", make_inputs(rng, dtype=dtype, **shape))
    fused, saved = cad.ntm_address_forward(*args)
    composed = composed_address(*args)
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(fused, composed, rtol=rtol, atol=rtol * 1e-2)
    cot = rng.normal(size=fused.shape).astype(dtype)
    fused_grads = cad.ntm_address_backward(saved, cot)
    for i in range(len(args)):
        composed_grad = grad(lambda *a: anp.sum(composed_address(*a) * cot), i)(*args)
        scale = np.max(np.abs(composed_grad))
        np.testing.assert_allclose(fused_grads[i], composed_grad, rtol=rtol * 100,
                                   atol=rtol * 100 * scale)


# ---------------------------------------------------------------- autograd primitive

@pytest.mark.parametrize("name", NAMES)
def test_autograd_through_the_compiled_primitive(name):
    rng = np.random.default_rng(8)
    args = args_of(name, make_inputs(rng))
    cot = rng.normal(size=getattr(reference, name)(*args).shape)

    def loss(fn):
        return lambda *a: anp.sum(fn(*a) * cot) ** 2

    for i in range(len(args)):
        got = grad(loss(getattr(compiled, name)), i)(*args)
        want = grad(loss(getattr(reference, name)), i)(*args)
        assert_close(got, want, 1e-9, 1e-12)


# ---------------------------------------------------------------- determinism, mutation, layouts

def test_thread_count_per_call(monkeypatch):
    monkeypatch.setattr(_common, "OP_PARALLEL_MIN_WORK", 16384)
    dmem.set_num_threads(2)
    assert cad._threads(7, 10**6) == 2
    assert cad._threads(1, 10**6) == 1  # one thread per batch row at most
    assert cad._threads(7, _common.OP_PARALLEL_MIN_WORK - 1) == 1  # too small to split
    dmem.set_num_threads(1)
    assert cad._threads(7, 10**6) == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("min_work", [0, 16384])
def test_one_and_two_threads_bitwise_identical(name, min_work, monkeypatch):
    if min_work is not None:  # 0: the parallel path (the default in tests/kernels); None: the rule
        monkeypatch.setattr(_common, "OP_PARALLEL_MIN_WORK", min_work)
    rng = np.random.default_rng(9)
    args = args_of(name, make_inputs(rng, B=7, N=33, W=5, H=3, S=5))
    cot = rng.normal(size=(7, 3, 33))
    forward, backward = compiled_pair(name)
    results = []
    for threads in (1, 2):
        dmem.set_num_threads(threads)
        out, saved = forward(*args)
        results.append((out, backward(saved, cot)))
    (o1, g1), (o2, g2) = results
    np.testing.assert_array_equal(o1, o2)
    for a, b in zip(g1, g2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_and_gradients_are_not_mutated(name):
    rng = np.random.default_rng(10)
    args = args_of(name, make_inputs(rng))
    copies = [a.copy() for a in args]
    forward, backward = compiled_pair(name)
    out, saved = forward(*args)
    cot = rng.normal(size=out.shape)
    cot_copy = cot.copy()
    backward(saved, cot)
    out_copy = out.copy()
    backward(saved, cot)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
        assert a.flags.writeable  # saving an input does not lock the caller's array
    np.testing.assert_array_equal(cot, cot_copy)
    np.testing.assert_array_equal(out, out_copy)


@pytest.mark.parametrize("name", NAMES)
def test_read_only_inputs_are_accepted(name):
    rng = np.random.default_rng(11)
    args = args_of(name, make_inputs(rng))
    expected = compiled_pair(name)[0](*args)[0]
    for a in args:
        a.flags.writeable = False
    out, saved = compiled_pair(name)[0](*args)
    np.testing.assert_array_equal(out, expected)
    cot = np.ones_like(out)
    cot.flags.writeable = False
    compiled_pair(name)[1](saved, cot)


def relayout(a, how):
    if how == "fortran":
        return np.asfortranarray(a)
    # every other element of a twice-as-large array: strided, not contiguous
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("how", ["fortran", "strided"])
def test_non_contiguous_inputs(name, how):
    rng = np.random.default_rng(12)
    args = args_of(name, make_inputs(rng))
    forward, backward = compiled_pair(name)
    out, saved = forward(*args)
    cot = rng.normal(size=out.shape)
    grads = backward(saved, cot)
    other = [relayout(a, how) for a in args]
    assert any(not a.flags.c_contiguous for a in other)
    out2, saved2 = forward(*other)
    grads2 = backward(saved2, relayout(cot, how))
    np.testing.assert_array_equal(out, out2)
    for a, b in zip(grads, grads2):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_float32_float64_inputs_give_float64(name):
    rng = np.random.default_rng(13)
    args = args_of(name, make_inputs(rng))
    mixed = [a.astype(np.float32) if i % 2 == 0 else a for i, a in enumerate(args)]
    out, saved = compiled_pair(name)[0](*mixed)
    assert out.dtype == np.float64
    grads = compiled_pair(name)[1](saved, np.ones_like(out))
    assert all(g.dtype == np.float64 for g in grads)
    exact = [np.asarray(a, dtype=np.float64) for a in mixed]
    np.testing.assert_array_equal(out, compiled_pair(name)[0](*exact)[0])


def test_integer_inputs_are_converted_to_float64():
    w = np.array([[[1, 2, 3]]])
    s = np.array([[[0, 1, 0]]])
    out, _ = cad.shift_forward(w, s)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, w)


# ---------------------------------------------------------------- bad input

def good_args(name):
    return args_of(name, make_inputs(np.random.default_rng(14)))


@pytest.mark.parametrize("name", NAMES)
def test_wrong_ndim_is_refused(name):
    for i, arg_name in enumerate(OPS[name]):
        args = good_args(name)
        args[i] = args[i][None]
        with pytest.raises(ValueError, match=arg_name):
            compiled_pair(name)[0](*args)


def grow(a, axis, by):
    """``a`` with ``by`` more entries along ``axis``."""
    return np.concatenate([a, np.take(a, range(by), axis=axis)], axis=axis)


@pytest.mark.parametrize("name", NAMES)
def test_disagreeing_batch_sizes_are_refused(name):
    for i, arg_name in enumerate(OPS[name]):
        args = good_args(name)
        args[i] = grow(args[i], 0, 1)
        with pytest.raises(ValueError, match="batch B=4.*B=3|batch B=3.*B=4"):
            compiled_pair(name)[0](*args)


@pytest.mark.parametrize("name,arg,axis,message", [
    ("content_weights", "keys", 2, "keys has word size W=5"),
    ("content_weights", "keys", 1, "strengths has heads H=2.*keys has H=3"),
    ("content_weights", "strengths", 1, "strengths has heads H=3"),
    ("shift", "shifts", 1, "shifts has heads H=3"),
    ("sharpen", "gamma", 1, "gamma has heads H=3"),
    ("ntm_address", "weights_prev", 2, "weights_prev has memory slots N=7"),
    ("ntm_address", "keys", 2, "keys has word size W=5"),
    ("ntm_address", "gates", 1, "gates has heads H=3"),
    ("ntm_address", "gamma", 1, "gamma has heads H=3"),
])
def test_disagreeing_sizes_are_refused(name, arg, axis, message):
    args = good_args(name)
    i = OPS[name].index(arg)
    args[i] = grow(args[i], axis, 1)
    with pytest.raises(ValueError, match=message):
        compiled_pair(name)[0](*args)


@pytest.mark.parametrize("name", NAMES)
def test_empty_axes_are_refused(name):
    for i in range(len(OPS[name])):
        args = good_args(name)
        args[i] = args[i][..., :0]
        with pytest.raises(ValueError, match="empty"):
            compiled_pair(name)[0](*args)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.complex128, np.float16, object])
def test_bad_dtypes_are_refused(name, dtype):
    args = good_args(name)
    args[0] = args[0].astype(dtype)
    with pytest.raises(TypeError, match=OPS[name][0]):
        compiled_pair(name)[0](*args)


@pytest.mark.parametrize("name", ["shift", "ntm_address"])
def test_even_shift_width_is_refused(name):
    args = good_args(name)
    i = OPS[name].index("shifts")
    args[i] = np.concatenate([args[i], args[i][..., :1]], axis=-1)
    with pytest.raises(ValueError, match="odd"):
        compiled_pair(name)[0](*args)


# ---------------------------------------------------------------- instruction sets
#
# The content weighting, shift and sharpening loops (addressing_simd.h) exist in
# a baseline version and, on x86 CPUs that have them, an AVX2/FMA one and an
# AVX-512 one; the widest is chosen at import.  Each is tested against the
# reference, and each against the baseline.

SIMD_LEVELS = list(addressing_kernels.simd_levels_supported())


@pytest.fixture(params=SIMD_LEVELS)
def simd_level(request):
    previous = addressing_kernels.simd_level()
    assert addressing_kernels._set_simd(request.param) == request.param
    yield request.param
    addressing_kernels._set_simd(previous)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [
    dict(B=2, N=1, W=1, H=1, S=1), dict(B=3, N=13, W=7, H=2, S=3),
    dict(B=2, N=128, W=20, H=4, S=3), dict(B=2, N=37, W=9, H=3, S=5),
])
def test_each_simd_level_matches_reference(simd_level, name, shape):
    rng = np.random.default_rng(20)
    check_against_reference(name, args_of(name, make_inputs(rng, **shape)), rng)


@pytest.mark.parametrize("name", NAMES)
def test_each_simd_level_float32(simd_level, name):
    rng = np.random.default_rng(21)
    args = args_of(name, make_inputs(rng, B=3, N=19, W=11, H=2, S=3, dtype=np.float32))
    check_against_reference(name, args, rng, rtol_fwd=1e-4, rtol_bwd=1e-4, floor=1e-5)


@pytest.mark.parametrize("name", ["content_weights", "ntm_address"])
@pytest.mark.parametrize("big", [1e3, 1e5])
def test_each_simd_level_large_strengths_and_zero_rows(simd_level, name, big):
    rng = np.random.default_rng(22)
    x = make_inputs(rng, B=3, N=21, W=6, H=2, S=3)
    x["strengths"] = np.full((3, 2), big)
    x["memory"][0] = 0.0
    x["memory"][1, 5] = 0.0
    x["keys"][2, 1] = 0.0
    out, grads = check_against_reference(name, args_of(name, x), rng)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-12)
    assert all(np.all(np.isfinite(g)) for g in grads)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("level", SIMD_LEVELS[1:] or ["none"])
def test_simd_levels_agree_with_baseline(name, level):
    if level == "none":
        pytest.skip("this CPU has no AVX2/FMA")
    rng = np.random.default_rng(23)
    args = args_of(name, make_inputs(rng, B=4, N=67, W=13, H=3, S=5))
    cot = rng.normal(size=(4, 3, 67))
    forward, backward = compiled_pair(name)
    previous = addressing_kernels.simd_level()
    results = []
    try:
        for chosen in ("baseline", level):
            addressing_kernels._set_simd(chosen)
            out, saved = forward(*args)
            results.append((out, backward(saved, cot)))
    finally:
        addressing_kernels._set_simd(previous)
    (o1, g1), (o2, g2) = results
    assert_close(o1, o2, 1e-10, 1e-12)
    for a, b in zip(g1, g2):
        assert_close(a, b, 1e-9, 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_similarity_of_a_row_does_not_depend_on_its_position(simd_level, dtype):
    # rows go four at a time through the vector loops, the last N % 4 alone:
    # the same row gives the same bits wherever it sits
    rng = np.random.default_rng(24)
    B, N, W, H = 2, 11, 9, 2
    memory = rng.normal(size=(B, N, W)).astype(dtype)
    keys = rng.normal(size=(B, H, W)).astype(dtype)
    strengths = rng.uniform(0.0, 5.0, size=(B, H)).astype(dtype)
    order = np.array([10, 3, 7, 0, 9, 1, 8, 2, 6, 4, 5])

    def run(memory):
        memory = np.ascontiguousarray(memory)
        weights = np.empty((B, H, N), dtype)
        cosines = np.empty((B, H, N), dtype)
        memory_norms = np.empty((B, N), dtype)
        key_norms = np.empty((B, H), dtype)
        addressing_kernels.content_weights_forward(
            memory, keys, strengths, weights, cosines, memory_norms, key_norms,
            np.empty((B, 2 * N)), 1)
        return cosines, memory_norms, key_norms

    cosines, norms, key_norms = run(memory)
    cosines_p, norms_p, key_norms_p = run(memory[:, order])
    np.testing.assert_array_equal(cosines_p, cosines[:, :, order])
    np.testing.assert_array_equal(norms_p, norms[:, order])
    np.testing.assert_array_equal(key_norms_p, key_norms)


def test_simd_level_is_reported():
    level = addressing_kernels.simd_level()
    assert level == SIMD_LEVELS[-1]  # the widest the CPU has, chosen at import
    assert SIMD_LEVELS[0] == "baseline"
    try:
        assert addressing_kernels._set_simd(False) == "baseline"
        assert addressing_kernels._set_simd(True) == SIMD_LEVELS[-1]
        for chosen in SIMD_LEVELS:
            assert addressing_kernels._set_simd(chosen) == chosen
    finally:
        addressing_kernels._set_simd(level)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["content_weights", "ntm_address"])
def test_per_head_fallback_of_the_joint_content_backward(simd_level, name, dtype):
    """With several heads the content backward runs once for all of them; when its
    scratch cannot be allocated, each head runs on its own.  That fallback (forced
    here) matches the reference and the joint pass."""
    rng = np.random.default_rng(23)
    args = args_of(name, make_inputs(rng, B=3, N=19, W=11, H=3, S=3, dtype=dtype))
    tol = dict(rtol_fwd=1e-10, rtol_bwd=1e-9, floor=1e-12) if dtype == np.float64 else \
        dict(rtol_fwd=1e-4, rtol_bwd=1e-4, floor=1e-5)
    joint = check_against_reference(name, args, np.random.default_rng(5), **tol)
    previous = addressing_kernels._set_joint_heads(False)
    try:
        alone = check_against_reference(name, args, np.random.default_rng(5), **tol)
    finally:
        addressing_kernels._set_joint_heads(previous)
    # the two sum in different orders: as close as each is to the reference
    # (float32: the suite's float32 tolerance)
    for a, b in zip(joint[1], alone[1]):
        if dtype == np.float64:
            assert_close(a, b, 1e-12, 1e-12)
        else:
            assert_close(a, b, 1e-4, 1e-5)
