"""``out_link`` / ``out_grad_link_prev`` of the compiled ``link_step`` wrappers."""

import numpy as np
import pytest

from dmem.compiled import linkage as cl


def _inputs(rng, B=3, N=7, R=2, dtype=np.float64):
    lp = rng.uniform(0, 1, (B, N, N)) / N
    pp = rng.dirichlet([1.0] * N, size=B) * 0.5
    w = rng.dirichlet([1.0] * N, size=B) * 0.5
    wr = rng.dirichlet([1.0] * N, size=(B, R))
    return tuple(a.astype(dtype) for a in (lp, pp, w, wr))


def _cotangents(rng, outputs):
    return tuple(rng.standard_normal(o.shape).astype(o.dtype) for o in outputs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_out_gives_the_same_results_and_is_returned(dtype):
    rng = np.random.default_rng(0)
    inputs = _inputs(rng, dtype=dtype)
    copies = [a.copy() for a in inputs]
    outs, saved = cl.link_step_forward(*inputs)
    grads = cl.link_step_backward(saved, *_cotangents(np.random.default_rng(1), outs))
    buf = np.full(inputs[0].shape, np.nan, dtype=dtype)
    outs2, saved2 = cl.link_step_forward(*inputs, out_link=buf)
    assert outs2[0] is buf
    for a, b in zip(outs, outs2):
        np.testing.assert_array_equal(a, b)
    gbuf = np.full(inputs[0].shape, np.nan, dtype=dtype)
    grads2 = cl.link_step_backward(saved2, *_cotangents(np.random.default_rng(1), outs2),
                                   out_grad_link_prev=gbuf)
    assert grads2[0] is gbuf
    for a, b in zip(grads, grads2):
        np.testing.assert_array_equal(a, b)
    # Reusing the link buffer afterwards does not change the gradients (the
    # backward does not read the new link), and inputs are untouched.
    buf[...] = 7.0
    grads3 = cl.link_step_backward(saved2, *_cotangents(np.random.default_rng(1), outs))
    for a, b in zip(grads, grads3):
        np.testing.assert_array_equal(a, b)
    for a, c in zip(inputs, copies):
        np.testing.assert_array_equal(a, c)


def test_bad_out_link_is_refused_by_name():
    rng = np.random.default_rng(0)
    inputs = _inputs(rng)
    lp = inputs[0]
    with pytest.raises(ValueError, match="out_link"):
        cl.link_step_forward(*inputs, out_link=np.empty((3, 7, 6)))
    with pytest.raises(TypeError, match="out_link"):
        cl.link_step_forward(*inputs, out_link=np.empty(lp.shape, np.float32))
    with pytest.raises(TypeError, match="out_link"):
        cl.link_step_forward(*inputs, out_link=lp.tolist())
    with pytest.raises(ValueError, match="out_link"):
        cl.link_step_forward(*inputs, out_link=np.empty((3, 7, 14))[:, :, ::2])
    ro = np.empty(lp.shape)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out_link"):
        cl.link_step_forward(*inputs, out_link=ro)
    with pytest.raises(ValueError, match="out_link"):
        cl.link_step_forward(*inputs, out_link=lp)  # in place over an input


def test_bad_out_grad_link_prev_is_refused_by_name():
    rng = np.random.default_rng(0)
    inputs = _inputs(rng)
    outs, saved = cl.link_step_forward(*inputs)
    cots = _cotangents(rng, outs)
    with pytest.raises(ValueError, match="out_grad_link_prev"):
        cl.link_step_backward(saved, *cots, out_grad_link_prev=np.empty((3, 6, 7)))
    with pytest.raises(ValueError, match="out_grad_link_prev"):
        cl.link_step_backward(saved, *cots, out_grad_link_prev=cots[0])  # over grad_link
    with pytest.raises(ValueError, match="out_grad_link_prev"):
        cl.link_step_backward(saved, *cots, out_grad_link_prev=inputs[0])  # over a saved input


def test_link_out_buffers():
    rng = np.random.default_rng(2)
    lp, pp, w, _ = _inputs(rng)
    link, saved = cl.link_forward(lp, w, pp)
    g = rng.standard_normal(link.shape)
    grads = cl.link_backward(saved, g)
    buf, gbuf = np.full(lp.shape, np.nan), np.full(lp.shape, np.nan)
    link2, saved2 = cl.link_forward(lp, w, pp, out_link=buf)
    assert link2 is buf
    np.testing.assert_array_equal(link, link2)
    grads2 = cl.link_backward(saved2, g, out_grad_link_prev=gbuf)
    assert grads2[0] is gbuf
    for a, b in zip(grads, grads2):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="out_link"):
        cl.link_forward(lp, w, pp, out_link=lp[:, ::-1])
    with pytest.raises(ValueError, match="out_link"):
        cl.link_forward(lp, w, pp, out_link=lp)
    with pytest.raises(ValueError, match="out_grad_link_prev"):
        cl.link_backward(saved, g, out_grad_link_prev=g)
    with pytest.raises(TypeError, match="out_grad_link_prev"):
        cl.link_backward(saved, g, out_grad_link_prev=np.empty(lp.shape, np.float32))
