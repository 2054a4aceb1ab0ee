"""Optimizers (Graves' RMSProp, Adam) against hand-computed updates, and gradient clipping."""

import math

import numpy as np
import pytest

from dmem.optim import (Adam, RMSProp, clip_elementwise, clip_global_norm, global_norm,
                        make_optimizer)


def _rmsprop_by_hand(theta, grads, lr=1e-4, a=0.95, mom=0.9, eps=1e-4):
    """Graves (2013) eqs. 38-41 on a scalar, step by step."""
    n = gbar = delta = 0.0
    for g in grads:
        n = a * n + (1 - a) * g * g
        gbar = a * gbar + (1 - a) * g
        delta = mom * delta - lr * g / math.sqrt(n - gbar * gbar + eps)
        theta += delta
    return theta


def _adam_by_hand(theta, grads, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        theta -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    return theta


GRADS = [0.5, -1.5, 2.0, 0.25]


def test_rmsprop_first_step_by_hand():
    # n = 0.05 g², ḡ = 0.05 g, Δ = -lr g / sqrt(0.0475 g² + eps)
    p = {"w": np.array([1.0])}
    RMSProp(lr=0.1).step(p, {"w": np.array([2.0])})
    assert p["w"][0] == pytest.approx(1.0 - 0.1 * 2.0 / math.sqrt(0.0475 * 4.0 + 1e-4), rel=1e-14)


@pytest.mark.parametrize("kwargs", [{}, dict(lr=0.01, decay=0.9, momentum=0.5, eps=1e-3)])
def test_rmsprop_matches_graves_equations(kwargs):
    opt = RMSProp(**kwargs)
    p = {"a": np.array([0.3, -0.7]), "b": np.array([[1.0]])}
    for g in GRADS:
        opt.step(p, {"a": np.array([g, -2 * g]), "b": np.array([[3 * g]])})
    hp = dict(lr=opt.lr, a=opt.decay, mom=opt.momentum, eps=opt.eps)
    assert p["a"][0] == pytest.approx(_rmsprop_by_hand(0.3, GRADS, **hp), rel=1e-13)
    assert p["a"][1] == pytest.approx(_rmsprop_by_hand(-0.7, [-2 * g for g in GRADS], **hp), rel=1e-13)
    assert p["b"][0, 0] == pytest.approx(_rmsprop_by_hand(1.0, [3 * g for g in GRADS], **hp), rel=1e-13)
    assert opt.steps == len(GRADS)


def test_adam_matches_by_hand():
    opt = Adam(lr=0.05)
    p = {"w": np.array([0.2])}
    for g in GRADS:
        opt.step(p, {"w": np.array([g])})
    assert p["w"][0] == pytest.approx(_adam_by_hand(0.2, GRADS, lr=0.05), rel=1e-13)
    # the first Adam step moves every coordinate by about lr
    q = {"w": np.array([0.0, 0.0])}
    Adam(lr=0.01).step(q, {"w": np.array([1e-3, -5.0])})
    np.testing.assert_allclose(q["w"], [-0.01, 0.01], rtol=1e-4)


@pytest.mark.parametrize("cls", [RMSProp, Adam])
def test_updates_in_place_and_keeps_dtype(cls):
    w = np.ones((2, 3), dtype=np.float32)
    params = {"w": w}
    opt = cls()
    opt.step(params, {"w": np.full((2, 3), 0.5)})  # float64 grads are cast
    assert params["w"] is w and w.dtype == np.float32 and np.all(w < 1)
    assert all(v.dtype == np.float32 for k, v in opt.state_arrays().items() if k != "steps")


@pytest.mark.parametrize("cls", [RMSProp, Adam])
def test_state_round_trip_is_exact(cls):
    rng = np.random.default_rng(0)
    grads = [{"w": rng.standard_normal(4), "b": rng.standard_normal((2, 2))} for _ in range(6)]
    p1 = {"w": np.zeros(4), "b": np.ones((2, 2))}
    a = cls(lr=0.01)
    for g in grads[:3]:
        a.step(p1, g)
    state = a.state_arrays()
    assert int(state["steps"]) == 3
    b = cls(**a.hyperparameters())
    b.load_state_arrays({k: v.copy() for k, v in state.items()})
    p2 = {k: v.copy() for k, v in p1.items()}
    for g in grads[3:]:
        a.step(p1, g)
        b.step(p2, g)
    for k in p1:
        assert np.array_equal(p1[k], p2[k])
    assert b.steps == 6
    # state_arrays returns copies
    state["steps"][...] = 99
    assert a.steps == 6


def test_fresh_state_round_trip():
    opt = RMSProp()
    state = opt.state_arrays()
    assert list(state) == ["steps"]
    other = RMSProp()
    other.load_state_arrays(state)
    assert other.steps == 0


def test_bad_inputs_are_refused():
    opt = RMSProp()
    p = {"w": np.zeros(3)}
    with pytest.raises(ValueError, match="keys"):
        opt.step(p, {"v": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        opt.step(p, {"w": np.zeros(4)})
    with pytest.raises(ValueError, match="lr"):
        RMSProp(lr=0)
    with pytest.raises(ValueError, match="decay"):
        RMSProp(decay=1.0)
    with pytest.raises(ValueError, match="beta2"):
        Adam(beta2=-0.1)
    with pytest.raises(TypeError):
        Adam(lr="fast")
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd")
    with pytest.raises(ValueError, match="unexpected optimizer state"):
        opt.load_state_arrays({"steps": np.array(1), "m.w": np.zeros(3)})
    with pytest.raises(ValueError, match="incomplete"):
        opt.load_state_arrays({"steps": np.array(1), "n.w": np.zeros(3)})
    opt.load_state_arrays({"steps": np.array(1), "n.w": np.zeros(2), "gbar.w": np.zeros(2),
                           "delta.w": np.zeros(2)})
    with pytest.raises(ValueError, match="shape"):
        opt.step(p, {"w": np.zeros(3)})


def test_make_optimizer_lr():
    assert make_optimizer("adam").lr == 1e-3
    assert make_optimizer("rmsprop").lr == 1e-4
    assert make_optimizer("rmsprop", lr=0.5).lr == 0.5


def test_clip_elementwise():
    grads = {"a": np.array([-20.0, 3.0, 10.5]), "b": np.array([[0.1]])}
    clipped = clip_elementwise(grads, 10.0)
    np.testing.assert_array_equal(clipped["a"], [-10.0, 3.0, 10.0])
    np.testing.assert_array_equal(clipped["b"], [[0.1]])
    assert grads["a"][0] == -20.0 and clipped is not grads  # input untouched
    with pytest.raises(ValueError):
        clip_elementwise(grads, 0)


def test_clip_global_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    assert global_norm(grads) == 5.0
    clipped, norm = clip_global_norm(grads, 1.0)
    assert norm == 5.0
    np.testing.assert_allclose(clipped["a"], [0.6, 0.0])
    np.testing.assert_allclose(clipped["b"], [0.8])
    assert global_norm(clipped) == pytest.approx(1.0)
    assert grads["a"][0] == 3.0
    same, norm = clip_global_norm(grads, 10.0)
    assert norm == 5.0 and np.array_equal(same["a"], grads["a"]) and same["a"] is not grads["a"]
