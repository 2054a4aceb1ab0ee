"""Recycled large outputs: an array is handed out again only when nothing but
the pool refers to it, so an output a caller holds is never overwritten."""

import importlib
import weakref

import numpy as np
import pytest

from dmem._kernels._pool import OutputPool
from dmem.compiled import _common

cl = importlib.import_module("dmem.compiled.linkage")
cm = importlib.import_module("dmem.compiled.memory")

F64 = np.dtype(np.float64)


def _address(a):
    return a.__array_interface__["data"][0]


def test_an_idle_array_is_reused_and_a_held_one_never():
    pool = OutputPool(64, 1 << 20, 4)
    a = pool.take((10, 10), F64)
    first = _address(a)
    b = pool.take((10, 10), F64)
    assert b is not a and not np.shares_memory(a, b)
    del a
    c = pool.take((10, 10), F64)
    assert _address(c) == first  # the idle one came back
    assert not np.shares_memory(b, c)


@pytest.mark.parametrize("holder", ["view", "memoryview", "container", "frombuffer",
                                    "weakref only"])
def test_anything_that_reaches_the_memory_keeps_it_from_reuse(holder):
    pool = OutputPool(64, 1 << 20, 4)
    a = pool.take((10, 10), F64)
    a[...] = 3.0
    if holder == "view":
        kept = a[2:, ::2]
    elif holder == "memoryview":
        kept = memoryview(a)
    elif holder == "container":
        kept = {"x": [a]}
    elif holder == "frombuffer":
        kept = np.frombuffer(a, dtype=np.float64)
    else:
        kept = weakref.ref(a)
    del a
    b = pool.take((10, 10), F64)
    b[...] = -1.0
    if holder == "weakref only":
        # a weak reference does not keep the array: it may be reused, and the
        # weak reference still names a live array (the pool's), never freed memory
        assert kept() is b
        return
    values = np.asarray(kept["x"][0] if holder == "container" else kept)
    assert (values == 3.0).all()


def test_a_changed_array_is_not_reused():
    pool = OutputPool(64, 1 << 20, 8)
    a = pool.take((10, 10), F64)
    a.shape = (100,)
    del a
    assert pool.take((10, 10), F64).shape == (10, 10)
    b = pool.take((4, 25), F64)
    b.flags.writeable = False
    address = _address(b)
    del b
    c = pool.take((4, 25), F64)
    assert c.flags.writeable and _address(c) != address
    d = pool.take((10, 10), np.dtype(np.float32))
    assert d.dtype == np.float32


def test_limits_small_arrays_and_clear():
    pool = OutputPool(800, 2000, 2)
    small = pool.take((10,), F64)  # 80 bytes: not pooled
    assert len(pool) == 0 and small.shape == (10,)
    big = pool.take((300,), F64)  # 2400 bytes > max_bytes: not pooled
    assert len(pool) == 0 and big.shape == (300,)
    a = pool.take((100,), F64)
    b = pool.take((120,), F64)
    assert len(pool) == 2 and pool.nbytes == 1760
    c = pool.take((110,), F64)  # three arrays, 2640 bytes: the least recently used goes
    assert len(pool) == 2 and pool.nbytes == 1840
    a[...] = 1.0  # dropped by the pool, still the caller's
    assert (a == 1.0).all() and b.shape == (120,) and c.shape == (110,)
    del a, b, c
    d = pool.take((250,), F64)  # 2000 bytes: the others go
    assert len(pool) == 1 and pool.nbytes == 2000 and d.shape == (250,)
    pool.clear()
    assert len(pool) == 0


def _link_step_inputs(rng, B=2, N=128, R=2):
    lp = rng.uniform(0, 1, (B, N, N)) / N
    pp = rng.dirichlet([1.0] * N, size=B) * 0.5
    w = rng.dirichlet([1.0] * N, size=B) * 0.5
    wr = rng.dirichlet([1.0] * N, size=(B, R))
    return lp, pp, w, wr


def test_link_step_outputs_are_recycled_but_never_while_held():
    assert 2 * 128 * 128 * 8 >= _common.OUTPUTS.min_bytes
    rng = np.random.default_rng(0)
    inputs = _link_step_inputs(rng)
    cot = rng.standard_normal(inputs[0].shape)
    (link, *_), saved = cl.link_step_forward(*inputs)
    kept = link.copy()
    view = link[1]
    grads = cl.link_step_backward(saved, cot, None, None, None)
    assert not np.shares_memory(grads[0], link)
    (link2, *_), saved2 = cl.link_step_forward(*_link_step_inputs(np.random.default_rng(1)))
    assert not np.shares_memory(link2, link) and not np.shares_memory(link2, grads[0])
    np.testing.assert_array_equal(link, kept)
    del link
    (link3, *_), _ = cl.link_step_forward(*inputs)
    assert not np.shares_memory(link3, view)
    np.testing.assert_array_equal(view, kept[1])
    # Once dropped (view and all), an output's memory does serve a later call.
    address = _address(link2)
    del link2, saved2
    (link4, *_), _ = cl.link_step_forward(*inputs)
    assert _address(link4) == address
    np.testing.assert_array_equal(link4, kept)


def test_an_output_fed_back_as_an_input_is_not_overwritten_before_its_backward():
    """A DNC-like chain: each step's link is the next step's input, the caller
    keeps only the saved states (which hold those inputs)."""
    rng = np.random.default_rng(2)
    lp, pp, w, wr = _link_step_inputs(rng)
    cots = [rng.standard_normal(lp.shape) for _ in range(4)]
    link = lp
    states = []
    for t in range(4):
        (link, pp, _, _), saved = cl.link_step_forward(link, pp, w, wr)
        states.append(saved)
    del link
    grads = [cl.link_step_backward(s, c, None, None, None) for s, c in zip(states, cots)]
    # the same chain on copies, with out= buffers: no recycling involved
    link, pp2 = lp.copy(), _link_step_inputs(np.random.default_rng(2))[1]
    for t, (saved, g) in enumerate(zip(states, grads)):
        fresh_out = np.empty_like(link)
        (new, pp2, _, _), fresh = cl.link_step_forward(link, pp2, w, wr, out_link=fresh_out)
        expected = cl.link_step_backward(fresh, cots[t], None, None, None,
                                         out_grad_link_prev=np.empty_like(link))
        for a, b in zip(g, expected):
            np.testing.assert_array_equal(a, b)
        link = new


def test_write_output_held_across_calls_is_intact():
    rng = np.random.default_rng(3)
    B, N, W, H = 4, 128, 64, 1  # 256 KiB memory: recycled
    memory = rng.standard_normal((B, N, W))
    weights = rng.dirichlet([1.0] * N, size=(B, H))
    erase, add = rng.uniform(0, 1, (B, H, W)), rng.standard_normal((B, H, W))
    out, saved = cm.write_forward(memory, weights, erase, add)
    kept = out.copy()
    grads = cm.write_backward(saved, rng.standard_normal(out.shape))
    out2, _ = cm.write_forward(out, weights, erase, add)
    assert not np.shares_memory(out2, out) and not np.shares_memory(grads[0], out)
    np.testing.assert_array_equal(out, kept)


def test_release_outputs_lets_go_of_every_pooled_array():
    rng = np.random.default_rng(4)
    (link, *_), _ = cl.link_step_forward(*_link_step_inputs(rng))
    assert len(_common.OUTPUTS) >= 1
    del link
    import dmem.compiled

    dmem.compiled.release_outputs()           # the public name
    assert len(_common.OUTPUTS) == 0 and _common.OUTPUTS.nbytes == 0
    (link, *_), _ = cl.link_step_forward(*_link_step_inputs(rng))
    assert len(_common.OUTPUTS) == 1 and link.shape == (2, 128, 128)
