"""The reference memory read and write: values, gradients, invariants, degenerate inputs."""

import importlib

import numpy as np
import pytest
from autograd import grad, make_vjp
from autograd.test_util import check_grads

# dmem.reference re-exports the functions under the modules' names; take the module itself.
memory = importlib.import_module("dmem.reference.memory")


def loop_read(M, w):
    B, N, W = M.shape
    H = w.shape[1]
    out = np.zeros((B, H, W))
    for b in range(B):
        for h in range(H):
            for i in range(N):
                out[b, h] += w[b, h, i] * M[b, i]
    return out


def loop_write(M, w, e, a):
    B, N, W = M.shape
    H = w.shape[1]
    out = np.empty_like(M)
    for b in range(B):
        for i in range(N):
            for k in range(W):
                keep = 1.0
                added = 0.0
                for h in range(H):
                    keep *= 1.0 - w[b, h, i] * e[b, h, k]
                    added += w[b, h, i] * a[b, h, k]
                out[b, i, k] = M[b, i, k] * keep + added
    return out


def write_inputs(rng, B=2, N=5, W=3, H=2):
    return (
        rng.standard_normal((B, N, W)),
        rng.uniform(0, 1, (B, H, N)),
        rng.uniform(0, 1, (B, H, W)),
        rng.standard_normal((B, H, W)),
    )


@pytest.fixture(autouse=True)
def _seed_check_grads():
    # check_grads draws its random directions from numpy's global generator.
    np.random.seed(0)


@pytest.mark.parametrize("H", [1, 3])
def test_read_matches_loop_and_shape(H):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((2, 6, 4))
    w = rng.uniform(size=(2, H, 6))
    out = memory.read(M, w)
    assert out.shape == (2, H, 4)
    np.testing.assert_allclose(out, loop_read(M, w), rtol=1e-13)


@pytest.mark.parametrize("H", [1, 2, 4])
def test_write_matches_loop_and_shape(H):
    rng = np.random.default_rng(1)
    args = write_inputs(rng, H=H)
    out = memory.write(*args)
    assert out.shape == args[0].shape
    np.testing.assert_allclose(out, loop_write(*args), rtol=1e-12, atol=1e-14)


def test_read_one_hot_weight_returns_that_row():
    rng = np.random.default_rng(2)
    M = rng.standard_normal((1, 5, 3))
    w = np.zeros((1, 1, 5))
    w[0, 0, 3] = 1.0
    np.testing.assert_array_equal(memory.read(M, w)[0, 0], M[0, 3])


def test_write_full_erase_replaces_the_row():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((1, 4, 3))
    w = np.zeros((1, 1, 4))
    w[0, 0, 2] = 1.0
    e = np.ones((1, 1, 3))
    a = rng.standard_normal((1, 1, 3))
    out = memory.write(M, w, e, a)
    np.testing.assert_array_equal(out[0, 2], a[0, 0])
    np.testing.assert_array_equal(np.delete(out[0], 2, axis=0), np.delete(M[0], 2, axis=0))


def test_write_with_no_erase_and_no_add_keeps_memory():
    rng = np.random.default_rng(4)
    M, w, e, a = write_inputs(rng)
    np.testing.assert_array_equal(memory.write(M, w, 0 * e, 0 * a), M)


def test_write_does_not_depend_on_head_order():
    rng = np.random.default_rng(5)
    M, w, e, a = write_inputs(rng, H=3)
    perm = [2, 0, 1]
    np.testing.assert_allclose(
        memory.write(M, w, e, a), memory.write(M, w[:, perm], e[:, perm], a[:, perm]), rtol=1e-13
    )


@pytest.mark.parametrize("H", [1, 3])
def test_read_gradient_matches_finite_differences(H):
    rng = np.random.default_rng(6)
    args = (rng.standard_normal((2, 4, 3)), rng.uniform(size=(2, H, 4)))
    check_grads(lambda args: memory.read(*args), modes=["rev"], order=1)(args)


@pytest.mark.parametrize("H", [1, 2, 4])
def test_write_gradient_matches_finite_differences(H):
    rng = np.random.default_rng(7)
    args = write_inputs(rng, N=4, W=3, H=H)
    check_grads(lambda args: memory.write(*args), modes=["rev"], order=1)(args)


def test_write_gradient_with_saturated_erase_is_finite_and_correct():
    # w = e = 1 makes a factor (1 - w e) exactly 0: a product-rule gradient
    # that divides by the factors would give NaN here.
    rng = np.random.default_rng(8)
    M, w, e, a = write_inputs(rng, N=4, W=3, H=3)
    w[:, :, 1] = 1.0
    e[:, :, :] = 1.0
    args = (M, w, e, a)
    vjp, out = make_vjp(lambda args: memory.write(*args))(args)
    grads = vjp(np.ones_like(out))
    for g in grads:
        assert np.all(np.isfinite(g))
    check_grads(lambda args: memory.write(*args), modes=["rev"], order=1)(args)
    # The memory gradient is the retention, exactly 0 in the saturated row.
    assert np.all(grads[0][:, 1] == 0)


def test_degenerate_zero_inputs_give_finite_values_and_gradients():
    M = np.zeros((2, 3, 4))
    w = np.zeros((2, 2, 3))
    e = np.zeros((2, 2, 4))
    a = np.zeros((2, 2, 4))
    for f, args in ((memory.read, (M, w)), (memory.write, (M, w, e, a))):
        out = f(*args)
        assert np.all(out == 0)
        grads = grad(lambda args: np.sum(f(*args) ** 2 + f(*args)))(args)
        for g in grads:
            assert np.all(np.isfinite(g))


def test_inputs_are_not_mutated():
    rng = np.random.default_rng(9)
    args = write_inputs(rng)
    copies = [x.copy() for x in args]
    memory.read(args[0], args[1])
    memory.write(*args)
    grad(lambda args: np.sum(memory.write(*args)))(args)
    for x, c in zip(args, copies):
        np.testing.assert_array_equal(x, c)


def test_float32_inputs_stay_float32():
    rng = np.random.default_rng(10)
    args = [x.astype(np.float32) for x in write_inputs(rng)]
    assert memory.write(*args).dtype == np.float32
    assert memory.read(args[0], args[1]).dtype == np.float32
