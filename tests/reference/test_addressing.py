"""The autograd reference of NTM addressing: finite differences, invariants, degenerate inputs."""

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad
from autograd.test_util import check_grads

from dmem.reference import addressing as ref


def make_inputs(rng, B=2, N=5, W=3, H=2, S=3):
    """Inputs of every addressing op, in the ranges the NTM produces."""
    shifts = rng.uniform(0.1, 1.0, size=(B, H, S))
    weights_prev = rng.uniform(0.05, 1.0, size=(B, H, N))
    return {
        "memory": rng.normal(size=(B, N, W)),
        "keys": rng.normal(size=(B, H, W)),
        "strengths": rng.uniform(0.5, 5.0, size=(B, H)),
        "gates": rng.uniform(0.1, 0.9, size=(B, H)),
        "shifts": shifts / shifts.sum(-1, keepdims=True),
        "gamma": rng.uniform(1.0, 3.0, size=(B, H)),
        "weights_prev": weights_prev / weights_prev.sum(-1, keepdims=True),
        "weights": rng.uniform(0.05, 1.0, size=(B, H, N)),
    }


ARGS = {
    "content_weights": ("memory", "keys", "strengths"),
    "shift": ("weights", "shifts"),
    "sharpen": ("weights", "gamma"),
    "ntm_address": ("memory", "keys", "strengths", "gates", "shifts", "gamma", "weights_prev"),
    "cosine_similarity": ("memory", "keys"),
    "interpolate": ("weights", "weights_prev", "gates"),
}


def args_of(name, inputs):
    return [inputs[a] for a in ARGS[name]]


def finite_grads(fn, args, rng):
    """Gradients of a random projection of ``fn(*args)`` with respect to every argument."""
    out = fn(*args)
    proj = rng.normal(size=out.shape)
    return [grad(lambda *a, i=i: anp.sum(fn(*a) * proj), i)(*args) for i in range(len(args))]


# ---------------------------------------------------------------- gradients vs finite differences

@pytest.mark.parametrize("name", sorted(ARGS))
@pytest.mark.parametrize("shape", [dict(), dict(B=1, N=1, W=1, H=1, S=1), dict(B=2, N=2, H=1, S=5)])
def test_gradients_match_finite_differences(name, shape):
    rng = np.random.default_rng(0)
    args = args_of(name, make_inputs(rng, **shape))
    fn = getattr(ref, name)
    check_grads(lambda *a: fn(*a), modes=["rev"], order=1)(*args)


# ---------------------------------------------------------------- shapes and invariants

@pytest.mark.parametrize("name,shape", [
    ("content_weights", (2, 2, 5)), ("shift", (2, 2, 5)), ("sharpen", (2, 2, 5)),
    ("ntm_address", (2, 2, 5)), ("cosine_similarity", (2, 2, 5)), ("interpolate", (2, 2, 5)),
])
def test_output_shapes(name, shape):
    out = getattr(ref, name)(*args_of(name, make_inputs(np.random.default_rng(1))))
    assert out.shape == shape


def test_cosine_similarity_against_a_loop():
    rng = np.random.default_rng(2)
    x = make_inputs(rng)
    cos = ref.cosine_similarity(x["memory"], x["keys"])
    eps = ref.COSINE_EPSILON
    for b in range(2):
        for h in range(2):
            k = x["keys"][b, h]
            for i in range(5):
                m = x["memory"][b, i]
                expected = k @ m / (np.sqrt(k @ k + eps) * np.sqrt(m @ m + eps))
                assert cos[b, h, i] == pytest.approx(expected, rel=1e-12)
    assert np.all(np.abs(cos) <= 1.0)


def test_content_weights_are_a_distribution_peaked_at_the_matching_row():
    rng = np.random.default_rng(3)
    x = make_inputs(rng, N=6)
    keys = x["memory"][:, [4, 1], :] * 2.0  # same direction as rows 4 and 1
    w = ref.content_weights(x["memory"], keys, np.full((2, 2), 20.0))
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    assert np.all(w >= 0)
    assert np.all(w.argmax(-1) == [[4, 1], [4, 1]])


def test_content_weights_with_zero_strength_are_uniform():
    x = make_inputs(np.random.default_rng(4))
    w = ref.content_weights(x["memory"], x["keys"], np.zeros((2, 2)))
    np.testing.assert_allclose(w, 1.0 / 5, rtol=1e-12)


@pytest.mark.parametrize("strength", [1e3, 1e5])
def test_content_weights_large_strength_is_finite(strength):
    rng = np.random.default_rng(5)
    x = make_inputs(rng)
    args = [x["memory"], x["keys"], np.full((2, 2), strength)]
    w = ref.content_weights(*args)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-12)
    for g in finite_grads(ref.content_weights, args, rng):
        assert np.all(np.isfinite(g))


def test_content_weights_zero_memory_and_zero_keys_give_finite_values_and_gradients():
    rng = np.random.default_rng(6)
    x = make_inputs(rng)
    memory = x["memory"].copy()
    memory[0] = 0.0  # a whole memory
    memory[1, 2] = 0.0  # one row
    keys = x["keys"].copy()
    keys[1, 0] = 0.0
    args = [memory, keys, x["strengths"]]
    w = ref.content_weights(*args)
    assert np.all(np.isfinite(w))
    np.testing.assert_allclose(w[0], 1.0 / 5, rtol=1e-12)  # all rows alike
    np.testing.assert_allclose(w[1, 0], 1.0 / 5, rtol=1e-12)  # zero key: no preference
    grads = finite_grads(ref.content_weights, args, rng)
    for g in grads:
        assert np.all(np.isfinite(g))
    assert np.any(grads[0][0] != 0)  # the zero memory still learns


def shift_loop(w, s):
    B, H, N = w.shape
    S = s.shape[-1]
    out = np.zeros_like(w)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                for k in range(S):
                    out[b, h, i] += s[b, h, k] * w[b, h, (i - (k - S // 2)) % N]
    return out


@pytest.mark.parametrize("N,S", [(5, 3), (5, 1), (1, 5), (2, 5), (3, 7), (4, 5)])
def test_shift_against_a_loop_including_wrap_around(N, S):
    rng = np.random.default_rng(7)
    w = rng.uniform(size=(2, 2, N))
    s = rng.uniform(size=(2, 2, S))
    np.testing.assert_allclose(ref.shift(w, s), shift_loop(w, s), rtol=1e-13)


def test_shift_by_one_rotates_and_keeps_mass():
    w = np.arange(1.0, 6.0).reshape(1, 1, 5)
    up = np.array([[[0.0, 0.0, 1.0]]])  # k = 2: shift by +1
    down = np.array([[[1.0, 0.0, 0.0]]])
    keep = np.array([[[0.0, 1.0, 0.0]]])
    np.testing.assert_array_equal(ref.shift(w, up), np.roll(w, 1, axis=-1))
    np.testing.assert_array_equal(ref.shift(w, down), np.roll(w, -1, axis=-1))
    np.testing.assert_array_equal(ref.shift(w, keep), w)
    rng = np.random.default_rng(8)
    s = rng.uniform(size=(1, 1, 3))
    s /= s.sum()
    assert ref.shift(w, s).sum() == pytest.approx(w.sum(), rel=1e-13)


def test_sharpen_is_a_distribution_and_gamma_one_normalises():
    rng = np.random.default_rng(9)
    w = rng.uniform(size=(2, 3, 6))
    out = ref.sharpen(w, np.ones((2, 3)))
    np.testing.assert_allclose(out, (w + 1e-12) / (w + 1e-12).sum(-1, keepdims=True), rtol=1e-12)
    out = ref.sharpen(w, rng.uniform(1, 5, size=(2, 3)))
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-12)
    expected = (w + 1e-12) ** 3.0
    np.testing.assert_allclose(ref.sharpen(w, np.full((2, 3), 3.0)),
                               expected / expected.sum(-1, keepdims=True), rtol=1e-12)


@pytest.mark.parametrize("gamma", [1e3, 1e5])
def test_sharpen_large_gamma_is_finite_and_picks_the_maximum(gamma):
    rng = np.random.default_rng(10)
    w = rng.uniform(0.0, 0.1, size=(2, 2, 7))  # (w+ε)^γ underflows to 0 in plain floats
    args = [w, np.full((2, 2), gamma)]
    out = ref.sharpen(*args)
    assert np.all(np.isfinite(out))
    np.testing.assert_array_equal(out.argmax(-1), w.argmax(-1))
    assert np.all(out.max(-1) > 0.99)
    for g in finite_grads(ref.sharpen, args, rng):
        assert np.all(np.isfinite(g))


def test_sharpen_zero_weights_give_finite_values_and_gradients():
    rng = np.random.default_rng(11)
    w = rng.uniform(size=(2, 2, 5))
    w[0, 0] = 0.0
    w[1, 1, 2] = 0.0
    args = [w, np.array([[1.0, 2.5], [30.0, 1.0]])]
    out = ref.sharpen(*args)
    np.testing.assert_allclose(out[0, 0], 0.2, rtol=1e-12)
    for g in finite_grads(ref.sharpen, args, rng):
        assert np.all(np.isfinite(g))


def test_interpolate_endpoints():
    x = make_inputs(np.random.default_rng(12))
    ones, zeros = np.ones((2, 2)), np.zeros((2, 2))
    np.testing.assert_array_equal(ref.interpolate(x["weights"], x["weights_prev"], ones), x["weights"])
    np.testing.assert_array_equal(ref.interpolate(x["weights"], x["weights_prev"], zeros), x["weights_prev"])


def test_ntm_address_is_the_composition_of_the_steps():
    rng = np.random.default_rng(13)
    x = make_inputs(rng, N=7, S=5)
    out = ref.ntm_address(*args_of("ntm_address", x))
    content = ref.content_weights(x["memory"], x["keys"], x["strengths"])
    gated = x["gates"][:, :, None] * content + (1 - x["gates"][:, :, None]) * x["weights_prev"]
    shifted = shift_loop(gated, x["shifts"])
    expected = (shifted + 1e-12) ** x["gamma"][:, :, None]
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-11)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-12)


def test_ntm_address_with_closed_gate_and_no_shift_keeps_the_previous_weighting():
    x = make_inputs(np.random.default_rng(14))
    keep = np.zeros((2, 2, 3))
    keep[:, :, 1] = 1.0
    out = ref.ntm_address(x["memory"], x["keys"], x["strengths"], np.zeros((2, 2)), keep,
                          np.ones((2, 2)), x["weights_prev"])
    np.testing.assert_allclose(out, x["weights_prev"], rtol=1e-10)


def test_ntm_address_degenerate_inputs_give_finite_gradients():
    rng = np.random.default_rng(15)
    x = make_inputs(rng, S=5, N=2)
    x["memory"][:] = 0.0
    x["keys"][0] = 0.0
    x["strengths"][:] = 1e3
    x["gamma"][:] = 1e3
    x["weights_prev"][1, 0] = 0.0
    args = args_of("ntm_address", x)
    out = ref.ntm_address(*args)
    assert np.all(np.isfinite(out))
    for g in finite_grads(ref.ntm_address, args, rng):
        assert np.all(np.isfinite(g))


@pytest.mark.parametrize("name", sorted(ARGS))
def test_inputs_are_not_mutated(name):
    rng = np.random.default_rng(16)
    args = args_of(name, make_inputs(rng))
    copies = [a.copy() for a in args]
    fn = getattr(ref, name)
    fn(*args)
    finite_grads(fn, args, rng)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)
