"""The reference DNC usage and allocation: values, gradients, invariants, degenerate inputs."""

import importlib
import time

import numpy as np
import pytest
from autograd import grad, make_vjp
from autograd.test_util import check_grads

# dmem.reference re-exports the functions under the modules' names; take the module itself.
allocation_module = importlib.import_module("dmem.reference.allocation")
usage = allocation_module.usage
allocation = allocation_module.allocation
EPS = 1e-6


def loop_usage(u, ww, wr, f):
    B, N = u.shape
    R = wr.shape[1]
    out = np.empty_like(u)
    for b in range(B):
        for i in range(N):
            psi = 1.0
            for r in range(R):
                psi *= 1.0 - f[b, r] * wr[b, r, i]
            out[b, i] = (u[b, i] + ww[b, i] - u[b, i] * ww[b, i]) * psi
    return out


def loop_allocation(u):
    B, N = u.shape
    out = np.empty_like(u)
    for b in range(B):
        u_hat = EPS + (1 - EPS) * u[b]
        order = sorted(range(N), key=lambda i: (u_hat[i], i))
        z = 1.0
        for i in order:
            out[b, i] = (1 - u_hat[i]) * z
            z *= u_hat[i]
    return out


def usage_inputs(rng, B=2, N=5, R=3):
    return (
        rng.uniform(0, 1, (B, N)),
        rng.uniform(0, 1, (B, N)),
        rng.uniform(0, 1, (B, R, N)),
        rng.uniform(0, 1, (B, R)),
    )


def distinct_usages(rng, B, N):
    """Usages in (0, 1) at least ~0.5/N apart: far more than a finite-difference step."""
    grid = np.linspace(0.05, 0.95, N)
    jitter = 0.2 * (grid[1] - grid[0]) if N > 1 else 0.0
    return np.stack([rng.permutation(grid) for _ in range(B)]) + rng.uniform(-jitter, jitter, (B, N))


@pytest.fixture(autouse=True)
def _seed_check_grads():
    # check_grads draws its random directions from numpy's global generator.
    np.random.seed(0)


# ---------------------------------------------------------------- usage

@pytest.mark.parametrize("R", [1, 4])
def test_usage_matches_loop_and_shape(R):
    rng = np.random.default_rng(0)
    args = usage_inputs(rng, R=R)
    out = usage(*args)
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out, loop_usage(*args), rtol=1e-13)


@pytest.mark.parametrize("R", [1, 2, 4])
def test_usage_gradient_matches_finite_differences(R):
    rng = np.random.default_rng(1)
    args = usage_inputs(rng, R=R)
    check_grads(lambda args: usage(*args), modes=["rev"], order=1)(args)


def test_usage_gradient_with_saturated_free_gate_is_finite_and_correct():
    # f = w_read = 1 makes a factor (1 - f w) exactly 0.
    rng = np.random.default_rng(2)
    u, ww, wr, f = usage_inputs(rng, R=3)
    f[:] = 1.0
    wr[:, :, 2] = 1.0
    args = (u, ww, wr, f)
    out = usage(*args)
    np.testing.assert_array_equal(out[:, 2], 0.0)
    grads = make_vjp(lambda args: usage(*args))(args)[0](np.ones_like(out))
    for g in grads:
        assert np.all(np.isfinite(g))
    check_grads(lambda args: usage(*args), modes=["rev"], order=1)(args)


def test_usage_invariants():
    rng = np.random.default_rng(3)
    u, ww, wr, f = usage_inputs(rng, B=4, N=8, R=2)
    out = usage(u, ww, wr, f)
    assert np.all((out >= 0) & (out <= 1))
    # Without frees, writing only raises usage.
    no_free = usage(u, ww, wr, 0 * f)
    np.testing.assert_allclose(no_free, u + ww - u * ww, rtol=1e-14)
    assert np.all(no_free >= u)
    # Without writes or frees, usage is unchanged.
    np.testing.assert_array_equal(usage(u, 0 * ww, wr, 0 * f), u)


def test_usage_degenerate_inputs_give_finite_gradients():
    args = (np.zeros((2, 3)), np.zeros((2, 3)), np.zeros((2, 2, 3)), np.zeros((2, 2)))
    assert np.all(usage(*args) == 0)
    for g in grad(lambda args: np.sum(usage(*args)))(args):
        assert np.all(np.isfinite(g))


# ---------------------------------------------------------------- allocation

@pytest.mark.parametrize("N", [1, 2, 7, 33])
def test_allocation_matches_loop_and_shape(N):
    rng = np.random.default_rng(N)
    u = rng.uniform(0, 1, (3, N))
    out = allocation(u)
    assert out.shape == (3, N)
    np.testing.assert_allclose(out, loop_allocation(u), rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("N", [1, 2, 6, 20])
def test_allocation_gradient_matches_finite_differences(N):
    rng = np.random.default_rng(10 + N)
    u = distinct_usages(rng, 2, N)
    check_grads(allocation, modes=["rev"], order=1)(u)


def test_allocation_invariants():
    rng = np.random.default_rng(4)
    u = distinct_usages(rng, 5, 12)
    a = allocation(u)
    assert np.all((a >= 0) & (a <= 1))
    assert np.all(a.sum(axis=1) <= 1 + 1e-15)
    # Σ_j a_j telescopes to 1 − Π_i û_i.
    np.testing.assert_allclose(a.sum(axis=1), 1 - np.prod(EPS + (1 - EPS) * u, axis=1), rtol=1e-13)
    # The least used slot gets the most weight, and the weight never rises along the free list.
    np.testing.assert_array_equal(np.argmax(a, axis=1), np.argmin(u, axis=1))
    order = np.argsort(u, axis=1)
    along_free_list = np.take_along_axis(a, order, axis=1)
    assert np.all(np.diff(along_free_list, axis=1) <= 0)


def test_allocation_ties_follow_index_order():
    u = np.array([[0.3, 0.3, 0.3, 0.1, 0.3]])
    a = allocation(u)
    np.testing.assert_allclose(a, loop_allocation(u), rtol=1e-14)
    # free list: 3, 0, 1, 2, 4
    assert a[0, 3] > a[0, 0] > a[0, 1] > a[0, 2] > a[0, 4]
    s = EPS + (1 - EPS) * 0.3
    np.testing.assert_allclose(a[0, 1], (1 - s) * s * (EPS + (1 - EPS) * 0.1), rtol=1e-14)


def test_allocation_all_zero_usage():
    u = np.zeros((2, 4))
    a = allocation(u)
    expected = (1 - EPS) * EPS ** np.arange(4)
    np.testing.assert_allclose(a, np.stack([expected, expected]), rtol=1e-14)
    g = grad(lambda u: np.sum(allocation(u) * np.arange(1.0, 5.0)))(u)
    assert np.all(np.isfinite(g))


def test_allocation_all_one_usage_gives_zero_and_finite_gradient():
    u = np.ones((2, 4))
    a = allocation(u)
    np.testing.assert_array_equal(a, 0.0)
    cotangent = np.arange(8.0).reshape(2, 4)
    vjp, _ = make_vjp(allocation)(u)
    # û = 1 everywhere: z_j = 1 and every later term carries (1 − û) = 0,
    # so du_j = −(1 − ε) g_j exactly.
    np.testing.assert_allclose(vjp(cotangent), -(1 - EPS) * cotangent, rtol=1e-15)


def test_allocation_single_slot():
    u = np.array([[0.25], [1.0], [0.0]])
    np.testing.assert_allclose(allocation(u), 1 - (EPS + (1 - EPS) * u), rtol=1e-15)
    g = grad(lambda u: np.sum(allocation(u)))(u)
    np.testing.assert_allclose(g, -(1 - EPS) * np.ones_like(u), rtol=1e-15)


def test_allocation_gradient_at_a_tie_holds_the_stable_order():
    # Two equal usages: the free list is (0, 1), so a_0 = 1 − s_0 and
    # a_1 = (1 − s_1) s_0; the gradient is that of this fixed-order formula.
    u = np.array([[0.3, 0.3]])
    s = EPS + (1 - EPS) * 0.3
    cotangent = np.array([[1.0, 2.0]])
    vjp, a = make_vjp(allocation)(u)
    np.testing.assert_allclose(a, [[1 - s, (1 - s) * s]], rtol=1e-15)
    expected = (1 - EPS) * np.array([[-1.0 + 2.0 * (1 - s), -2.0 * s]])
    np.testing.assert_allclose(vjp(cotangent), expected, rtol=1e-14)


def test_allocation_large_memory_is_fast_enough():
    rng = np.random.default_rng(6)
    u = rng.uniform(0, 1, (2, 1024))
    start = time.perf_counter()
    vjp, a = make_vjp(allocation)(u)
    g = vjp(np.ones_like(a))
    elapsed = time.perf_counter() - start
    np.testing.assert_allclose(a.sum(axis=1), 1 - np.prod(EPS + (1 - EPS) * u, axis=1), rtol=1e-12)
    assert np.all(np.isfinite(g))
    assert elapsed < 5.0


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(7)
    args = usage_inputs(rng)
    copies = [x.copy() for x in args]
    usage(*args)
    grad(lambda args: np.sum(usage(*args)))(args)
    allocation(args[0])
    grad(lambda u: np.sum(allocation(u)))(args[0])
    for x, c in zip(args, copies):
        np.testing.assert_array_equal(x, c)


def test_float32_inputs_stay_float32():
    rng = np.random.default_rng(8)
    args = [x.astype(np.float32) for x in usage_inputs(rng)]
    assert usage(*args).dtype == np.float32
    assert allocation(args[0]).dtype == np.float32
