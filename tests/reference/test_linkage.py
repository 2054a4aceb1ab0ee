"""The autograd reference of the DNC temporal linkage: values, invariants, gradients."""

import importlib

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp
from autograd.numpy.numpy_boxes import ArrayBox
from autograd.test_util import check_grads

reference = importlib.import_module("dmem.reference.linkage")

NAMES = ["precedence", "link", "temporal_weights", "link_step"]


def weightings(rng, *shape, total=0.9):
    """Non-negative rows summing to at most ``total`` (a valid DNC weighting)."""
    x = rng.uniform(0, 1, shape)
    return total * x / x.sum(axis=-1, keepdims=True) * rng.uniform(0.2, 1.0, shape[:-1] + (1,))


def valid_link(rng, B, N):
    """A link matrix as the DNC makes it: several link_step updates from zero."""
    L = np.zeros((B, N, N))
    p = np.zeros((B, N))
    for _ in range(4):
        w = weightings(rng, B, N)
        L = reference.link(L, w, p)
        p = reference.precedence(p, w)
    return L, p


def make_inputs(name, rng, B=2, N=5, R=3):
    L, p = valid_link(rng, B, N)
    w = weightings(rng, B, N)
    wr = weightings(rng, B, R, N, total=1.0)
    return {
        "precedence": (p, w),
        "link": (L, w, p),
        "temporal_weights": (L, wr),
        "link_step": (L, p, w, wr),
    }[name]


def as_tuple(out):
    """The outputs as a tuple (a traced multi-output op gives an autograd SequenceBox)."""
    if isinstance(out, (np.ndarray, ArrayBox)):
        return (out,)
    return tuple(out[k] for k in range(len(out)))


def scalar_loss(name, rng, inputs):
    """A random linear function of all the outputs (so every output gets a cotangent)."""
    outs = as_tuple(getattr(reference, name)(*inputs))
    weights = [rng.standard_normal(np.shape(o)) for o in outs]

    def loss(*args):
        return sum(anp.sum(c * o) for c, o in zip(weights, as_tuple(getattr(reference, name)(*args))))

    return loss


# -- values against hand-written loops ---------------------------------------------


def loop_precedence(pp, w):
    B, N = w.shape
    out = np.empty((B, N))
    for b in range(B):
        total = sum(w[b, i] for i in range(N))
        for i in range(N):
            out[b, i] = (1 - total) * pp[b, i] + w[b, i]
    return out


def loop_link(Lp, w, pp):
    B, N = w.shape
    out = np.empty((B, N, N))
    for b in range(B):
        for i in range(N):
            for j in range(N):
                if i == j:
                    out[b, i, j] = 0.0
                else:
                    out[b, i, j] = (1 - w[b, i] - w[b, j]) * Lp[b, i, j] + w[b, i] * pp[b, j]
    return out


def loop_temporal(L, wr):
    B, R, N = wr.shape
    f = np.zeros((B, R, N))
    bw = np.zeros((B, R, N))
    for b in range(B):
        for r in range(R):
            for i in range(N):
                for j in range(N):
                    f[b, r, i] += L[b, i, j] * wr[b, r, j]
                    bw[b, r, j] += L[b, i, j] * wr[b, r, i]
    return f, bw


def test_values_match_hand_written_loops():
    rng = np.random.default_rng(0)
    L, pp, w, wr = make_inputs("link_step", rng, B=2, N=4, R=2)
    np.testing.assert_allclose(reference.precedence(pp, w), loop_precedence(pp, w), rtol=1e-13)
    np.testing.assert_allclose(reference.link(L, w, pp), loop_link(L, w, pp), rtol=1e-13)
    f, bw = reference.temporal_weights(L, wr)
    f_loop, b_loop = loop_temporal(L, wr)
    np.testing.assert_allclose(f, f_loop, rtol=1e-13)
    np.testing.assert_allclose(bw, b_loop, rtol=1e-13)
    newL, p, f, bw = reference.link_step(L, pp, w, wr)
    np.testing.assert_allclose(newL, loop_link(L, w, pp), rtol=1e-13)
    np.testing.assert_allclose(p, loop_precedence(pp, w), rtol=1e-13)
    f_loop, b_loop = loop_temporal(loop_link(L, w, pp), wr)  # the NEW link matrix
    np.testing.assert_allclose(f, f_loop, rtol=1e-13)
    np.testing.assert_allclose(bw, b_loop, rtol=1e-13)


def test_output_shapes_match_the_docstrings():
    rng = np.random.default_rng(1)
    B, N, R = 3, 6, 2
    L, pp, w, wr = make_inputs("link_step", rng, B=B, N=N, R=R)
    assert reference.precedence(pp, w).shape == (B, N)
    assert reference.link(L, w, pp).shape == (B, N, N)
    assert [o.shape for o in reference.temporal_weights(L, wr)] == [(B, R, N), (B, R, N)]
    assert [o.shape for o in reference.link_step(L, pp, w, wr)] == [(B, N, N), (B, N), (B, R, N), (B, R, N)]
    assert isinstance(reference.link_step(L, pp, w, wr), tuple)


def test_forward_weights_follow_the_write_order():
    """Write slot 0, then slot 2: reading slot 0, the forward weighting points at 2
    (f = L w, the DNC paper), and reading slot 2 the backward weighting points at 0."""
    N = 4
    L = np.zeros((1, N, N))
    p = np.zeros((1, N))
    for slot in (0, 2):
        w = np.zeros((1, N))
        w[0, slot] = 1.0
        L = reference.link(L, w, p)
        p = reference.precedence(p, w)
    assert L[0, 2, 0] == 1.0 and L.sum() == 1.0
    read = np.zeros((1, 2, N))
    read[0, 0, 0] = 1.0
    read[0, 1, 2] = 1.0
    f, b = reference.temporal_weights(L, read)
    np.testing.assert_array_equal(f[0, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(b[0, 1], [1, 0, 0, 0])
    np.testing.assert_array_equal(f[0, 1], 0)
    np.testing.assert_array_equal(b[0, 0], 0)


# -- invariants ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_invariants_hold_along_a_sequence_of_steps(seed):
    """Valid weightings in -> link in [0, 1] with zero diagonal, rows and columns summing
    to at most 1, precedence summing to at most 1, temporal weights summing to at most 1."""
    rng = np.random.default_rng(seed)
    B, N, R = 3, 8, 2
    L = np.zeros((B, N, N))
    p = np.zeros((B, N))
    tol = 1e-12
    for step in range(12):
        total = 1.0 if step % 3 == 0 else 0.9  # some steps write with all their weight
        w = weightings(rng, B, N, total=total)
        wr = weightings(rng, B, R, N, total=1.0)
        L, p, f, b = reference.link_step(L, p, w, wr)
        assert np.all(L >= -tol) and np.all(L <= 1 + tol)
        np.testing.assert_array_equal(np.diagonal(L, axis1=1, axis2=2), 0.0)
        assert np.all(L.sum(axis=2) <= 1 + tol)
        assert np.all(L.sum(axis=1) <= 1 + tol)
        assert np.all(p >= -tol) and np.all(p.sum(axis=1) <= 1 + tol)
        for t in (f, b):
            assert np.all(t >= -tol) and np.all(t.sum(axis=2) <= 1 + tol)


def test_full_write_resets_precedence():
    rng = np.random.default_rng(2)
    p = weightings(rng, 2, 5)
    w = np.zeros((2, 5))
    w[:, 3] = 1.0
    np.testing.assert_array_equal(reference.precedence(p, w), w)


def test_diagonal_of_link_prev_is_ignored():
    rng = np.random.default_rng(3)
    L, w, p = make_inputs("link", rng)
    garbage = L.copy()
    idx = np.arange(L.shape[1])
    garbage[:, idx, idx] = 7.5
    np.testing.assert_array_equal(reference.link(garbage, w, p), reference.link(L, w, p))


# -- gradients ----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    rng = np.random.default_rng(4)
    inputs = make_inputs(name, rng, B=2, N=4, R=2)
    loss = scalar_loss(name, rng, inputs)
    for argnum in range(len(inputs)):
        check_grads(lambda x: loss(*inputs[:argnum], x, *inputs[argnum + 1:]),
                    modes=["rev"], order=1)(inputs[argnum])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_outside_the_valid_range(name):
    """The ops are polynomials: the gradients hold for any real inputs."""
    rng = np.random.default_rng(5)
    inputs = tuple(rng.uniform(-2, 2, np.shape(x)) for x in make_inputs(name, rng, B=2, N=3, R=2))
    loss = scalar_loss(name, rng, inputs)
    for argnum in range(len(inputs)):
        check_grads(lambda x: loss(*inputs[:argnum], x, *inputs[argnum + 1:]),
                    modes=["rev"], order=1)(inputs[argnum])


@pytest.mark.parametrize("name", ["link", "link_step"])
def test_diagonal_carries_no_gradient(name):
    """The diagonal of the new link is constant: its cotangent is ignored and the
    diagonal of link_prev gets a zero gradient."""
    rng = np.random.default_rng(6)
    inputs = make_inputs(name, rng)
    fn = getattr(reference, name)
    vjp, out = make_vjp(lambda args: fn(*args))(tuple(inputs))
    cot = [rng.standard_normal(np.shape(o)) for o in as_tuple(out)]
    diag_only = [np.zeros_like(c) for c in cot]
    N = inputs[0].shape[1]
    idx = np.arange(N)
    diag_only[0][:, idx, idx] = rng.standard_normal((inputs[0].shape[0], N))
    pack = (lambda c: tuple(c)) if name == "link_step" else (lambda c: c[0])
    grads = vjp(pack(cot))
    np.testing.assert_array_equal(np.diagonal(grads[0], axis1=1, axis2=2), 0.0)
    for g in vjp(pack(diag_only)):
        np.testing.assert_array_equal(g, 0.0)
    with_diag = [c.copy() for c in cot]
    with_diag[0] = with_diag[0] + diag_only[0]
    for g1, g2 in zip(grads, vjp(pack(with_diag))):
        np.testing.assert_array_equal(g1, g2)


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs_give_finite_values_and_gradients(name):
    """All-zero state and weightings, one-hot full writes, N = 1: finite everywhere."""
    rng = np.random.default_rng(7)
    for B, N, R in [(2, 5, 2), (1, 1, 1)]:
        zeros = tuple(np.zeros(np.shape(x)) for x in make_inputs(name, rng, B=B, N=N, R=R))
        one_hot = []
        for x in make_inputs(name, rng, B=B, N=N, R=R):
            y = np.zeros(np.shape(x))
            y[..., 0] = 1.0
            one_hot.append(y)
        for inputs in (zeros, tuple(one_hot)):
            fn = getattr(reference, name)
            vjp, out = make_vjp(lambda args: fn(*args))(tuple(inputs))
            outs = as_tuple(out)
            assert all(np.all(np.isfinite(o)) for o in outs)
            cot = tuple(np.ones(np.shape(o)) for o in outs)
            grads = vjp(cot if len(outs) > 1 else cot[0])
            assert all(np.all(np.isfinite(g)) for g in grads)
            assert [np.shape(g) for g in grads] == [np.shape(x) for x in inputs]


@pytest.mark.parametrize("name", NAMES)
def test_inputs_are_not_mutated(name):
    rng = np.random.default_rng(8)
    inputs = make_inputs(name, rng)
    copies = [x.copy() for x in inputs]
    loss = scalar_loss(name, rng, inputs)
    loss(*inputs)
    grad(loss, list(range(len(inputs))))(*inputs)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)


def test_link_step_is_the_composition_of_the_ops():
    rng = np.random.default_rng(9)
    L, p, w, wr = make_inputs("link_step", rng)
    newL, newp, f, b = reference.link_step(L, p, w, wr)
    np.testing.assert_array_equal(newL, reference.link(L, w, p))
    np.testing.assert_array_equal(newp, reference.precedence(p, w))
    f2, b2 = reference.temporal_weights(reference.link(L, w, p), wr)
    np.testing.assert_array_equal(f, f2)
    np.testing.assert_array_equal(b, b2)


def test_float32_inputs_stay_float32():
    rng = np.random.default_rng(10)
    inputs = [x.astype(np.float32) for x in make_inputs("link_step", rng)]
    assert all(o.dtype == np.float32 for o in reference.link_step(*inputs))
