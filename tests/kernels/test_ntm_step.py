"""The fused NTM step (``dmem/_kernels/ntm_step.pyx``) against the chain of separate
compiled ops, the autograd reference, and bad input.

The oracle :func:`composed_loss_and_grad` is backpropagation through time over
the per-op kernels (``ntm_address``, ``write``, ``read`` forward and backward)
with the numpy controllers and head activations: the same equations, one op at
a time.  The fused step must agree with it to round-off (float64: loss rtol
1e-12, logits and gradients 1e-10 of their largest magnitude), and both with
the autograd reference (``tests/models``).
"""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dmem
from dmem import _ntm_bptt, compiled
from dmem._heads import activate, activate_backward, head_size
from dmem._kernels.ntm_step import DOUBLE_BUFFERS, NTMSequence, buffer_shapes
from dmem.compiled import _common
from dmem.controllers import CONTROLLERS, sigmoid, softplus
from dmem.reference import ntm as reference_ntm


# ---------------------------------------------------------------- the per-op oracle

def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def composed_loss_and_grad(params, buffers, config, x, target, mask):
    """Loss, gradients and logits by BPTT over the separate compiled ops."""
    T, B, I = x.shape
    dtype = params["output_W"].dtype
    N, W, S = config.memory_slots, config.word_size, config.shift_width
    R, Hw, C = config.read_heads, config.write_heads, config.controller_size
    ctrl = CONTROLLERS[config.controller]
    nw = Hw * head_size(W, S, True)
    if config.memory_init == "learned":
        M = np.broadcast_to(params["memory_init"], (B, N, W))
    elif config.memory_init == "random":
        M = np.broadcast_to(buffers["memory_init"], (B, N, W))
    else:
        M = np.full((B, N, W), 1e-6, dtype=dtype)
    M = np.ascontiguousarray(M, dtype=dtype)
    wr0, ww0 = _softmax(params["read_weights_init"]), _softmax(params["write_weights_init"])
    wr = np.ascontiguousarray(np.broadcast_to(wr0, (B, R, N)))
    ww = np.ascontiguousarray(np.broadcast_to(ww0, (B, Hw, N)))
    reads = np.ascontiguousarray(np.broadcast_to(params["read_init"], (B, R, W)))
    h = np.zeros((B, C), dtype=dtype)
    c = np.zeros((B, C), dtype=dtype)
    logits = np.empty((T, B, params["output_b"].shape[0]), dtype=dtype)
    steps = []
    for t in range(T):
        z = np.concatenate([x[t], reads.reshape(B, R * W)], axis=1)
        h, c, ctrl_saved = ctrl.forward(params["controller_W"], params["controller_b"], z, h, c)
        xi = h @ params["interface_W"] + params["interface_b"]
        wh, wh_saved = activate(xi[:, :nw].reshape(B, Hw, -1), W, S, True)
        rh, rh_saved = activate(xi[:, nw:].reshape(B, R, -1), W, S, False)
        ww, ww_saved = compiled.ntm_address_forward(
            M, wh["keys"], wh["strengths"], wh["gates"], wh["shifts"], wh["gamma"], ww)
        M, write_saved = compiled.write_forward(M, ww, wh["erase"], wh["add"])
        wr, wr_saved = compiled.ntm_address_forward(
            M, rh["keys"], rh["strengths"], rh["gates"], rh["shifts"], rh["gamma"], wr)
        reads, read_saved = compiled.read_forward(M, wr)
        hr = np.concatenate([h, reads.reshape(B, R * W)], axis=1)
        logits[t] = hr @ params["output_W"] + params["output_b"]
        steps.append((ctrl_saved, xi, wh_saved, rh_saved, ww_saved, write_saved,
                      wr_saved, read_saved, hr))

    m = mask[..., None]
    loss = float(np.sum(m * (softplus(logits) - target * logits)) / (np.log(2.0) * B))
    dlogits = (m * (sigmoid(logits) - target) / (np.log(2.0) * B)).astype(dtype)
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dM = np.zeros((B, N, W), dtype=dtype)
    dww_next = np.zeros((B, Hw, N), dtype=dtype)
    dwr_next = np.zeros((B, R, N), dtype=dtype)
    dreads_next = np.zeros((B, R, W), dtype=dtype)
    dh_next = np.zeros((B, C), dtype=dtype)
    dc_next = np.zeros((B, C), dtype=dtype)
    for t in range(T - 1, -1, -1):
        (ctrl_saved, xi, wh_saved, rh_saved, ww_saved, write_saved,
         wr_saved, read_saved, hr) = steps[t]
        dy = dlogits[t]
        grads["output_W"] += hr.T @ dy
        grads["output_b"] += dy.sum(axis=0)
        dhr = dy @ params["output_W"].T
        dh = dhr[:, :C] + dh_next
        dreads = dhr[:, C:].reshape(B, R, W) + dreads_next
        dM_read, dwr = compiled.read_backward(read_saved, dreads)
        dM = dM + dM_read
        dwr = dwr + dwr_next
        dM_c, dkr, dbr, dgr, dsr, dyr, dwr_next = compiled.ntm_address_backward(wr_saved, dwr)
        dM = dM + dM_c
        dM, dww, derase, dadd = compiled.write_backward(write_saved, dM)
        dww = dww + dww_next
        dM_c, dkw, dbw, dgw, dsw, dyw, dww_next = compiled.ntm_address_backward(ww_saved, dww)
        dM = dM + dM_c
        dxi = np.empty_like(xi)
        dxi[:, :nw] = activate_backward(
            wh_saved, {"keys": dkw, "strengths": dbw, "gates": dgw, "shifts": dsw, "gamma": dyw,
                       "erase": derase, "add": dadd}, W, S, True).reshape(B, -1)
        dxi[:, nw:] = activate_backward(
            rh_saved, {"keys": dkr, "strengths": dbr, "gates": dgr, "shifts": dsr, "gamma": dyr},
            W, S, False).reshape(B, -1)
        grads["interface_W"] += hr[:, :C].T @ dxi
        grads["interface_b"] += dxi.sum(axis=0)
        dh = dh + dxi @ params["interface_W"].T
        dWc, dbc, dz, dh_next, dc_next = ctrl.backward(params["controller_W"], ctrl_saved, dh, dc_next)
        grads["controller_W"] += dWc
        grads["controller_b"] += dbc
        dreads_next = dz[:, I:].reshape(B, R, W)
    grads["read_init"] += dreads_next.sum(axis=0)
    grads["read_weights_init"] += wr0 * (dwr_next.sum(0) - (wr0 * dwr_next.sum(0)).sum(-1, keepdims=True))
    grads["write_weights_init"] += ww0 * (dww_next.sum(0) - (ww0 * dww_next.sum(0)).sum(-1, keepdims=True))
    if config.memory_init == "learned":
        grads["memory_init"] += dM.sum(axis=0)
    return loss, grads, logits


# ---------------------------------------------------------------- problems

CONFIGS = {
    # the NTM paper's heads (the fused float64 slot loops), even and odd word sizes
    "lstm-R1-Hw1-r1": dict(controller="lstm", read_heads=1, write_heads=1, shift_range=1, word_size=4),
    "lstm-R1-Hw1-W5": dict(controller="lstm", read_heads=1, write_heads=1, shift_range=1, word_size=5,
                           memory_init="learned"),
    "ff-R2-Hw1-learned": dict(controller="ff", read_heads=2, write_heads=1, shift_range=1,
                              memory_init="learned"),
    "lstm-R2-Hw2-r2-random": dict(controller="lstm", read_heads=2, write_heads=2, shift_range=2,
                                  memory_init="random"),
    "ff-R1-Hw3-r0": dict(controller="ff", read_heads=1, write_heads=3, shift_range=0, word_size=3),
    "lstm-R3-Hw1-wide-shift": dict(controller="lstm", read_heads=3, write_heads=1, shift_range=4,
                                   memory_slots=3, controller_size=3),
}


def problem(options, dtype=np.float64, seed=3, rows=4, steps=6, input_size=4, output_size=3):
    sizes = dict(memory_slots=7, word_size=4, controller_size=9)
    sizes.update(options)
    model = dmem.NTM(input_size, output_size, seed=seed, dtype=dtype, **sizes)
    rng = np.random.default_rng(seed + 100)
    x = rng.integers(0, 2, size=(steps, rows, input_size)).astype(dtype)
    target = rng.integers(0, 2, size=(steps, rows, output_size)).astype(dtype)
    mask = (rng.uniform(size=(steps, rows)) < 0.7).astype(dtype)
    return model, x, target, mask


def assert_same_function(fused, composed, rtol, same_dtype=True):
    (l1, g1, y1), (l2, g2, y2) = fused, composed
    np.testing.assert_allclose(l1, l2, rtol=rtol * 1e-2)
    scale = np.max(np.abs(y2))
    np.testing.assert_allclose(y1, y2, rtol=0, atol=rtol * scale)
    assert sorted(g1) == sorted(g2)
    for k in g2:
        assert g1[k].shape == g2[k].shape, k
        assert g1[k].dtype == g2[k].dtype or not same_dtype, k
        scale = np.max(np.abs(g2[k])) + 1e-300
        np.testing.assert_allclose(g1[k] / scale, g2[k] / scale, rtol=0, atol=rtol, err_msg=k)


def fused_loss_and_grad(model, x, target, mask):
    loss, grads = _ntm_bptt.loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    logits = _ntm_bptt.forward(model.params, model.buffers, model.config, x)
    return loss, grads, logits


# ---------------------------------------------------------------- fused == composed

@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_step_equals_composition_of_compiled_ops(name):
    model, x, target, mask = problem(CONFIGS[name])
    fused = fused_loss_and_grad(model, x, target, mask)
    composed = composed_loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    assert_same_function(fused, composed, rtol=1e-10)


@pytest.mark.parametrize("rows", [9, 16, 21])
@pytest.mark.parametrize("name", ["lstm-R1-Hw1-r1", "lstm-R2-Hw2-r2-random"])
def test_batch_in_chunks_equals_composition(name, rows):
    """Batches of more than one chunk (``_ntm_bptt.CHUNK_ROWS``): each chunk its own
    sequence, the loss and gradients summed over the chunks."""
    assert len(_ntm_bptt._chunks(rows)) > 1
    model, x, target, mask = problem(CONFIGS[name], rows=rows, steps=4)
    fused = fused_loss_and_grad(model, x, target, mask)
    composed = composed_loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    assert_same_function(fused, composed, rtol=1e-10)


def test_chunks_cover_the_batch_in_order():
    for B in range(1, 200):
        chunks = _ntm_bptt._chunks(B)
        assert chunks[0][0] == 0 and chunks[-1][1] == B
        assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))
        assert all(b1 > b0 for b0, b1 in chunks)
        assert len(chunks) <= _ntm_bptt.MAX_CHUNKS
        assert B > _ntm_bptt.CHUNK_ROWS * _ntm_bptt.MAX_CHUNKS or all(
            b1 - b0 <= _ntm_bptt.CHUNK_ROWS for b0, b1 in chunks)


@settings(max_examples=25, deadline=None)
@given(
    memory_slots=st.integers(1, 9), word_size=st.integers(1, 7), controller_size=st.integers(1, 10),
    read_heads=st.integers(1, 3), write_heads=st.integers(1, 3), shift_range=st.integers(0, 3),
    controller=st.sampled_from(["lstm", "ff"]), memory_init=st.sampled_from(["constant", "learned"]),
    rows=st.integers(1, 11), steps=st.integers(1, 4), seed=st.integers(0, 2**16),
)
def test_fused_step_equals_composition_over_shapes(rows, steps, seed, **options):
    model, x, target, mask = problem(options, seed=seed, rows=rows, steps=steps)
    fused = fused_loss_and_grad(model, x, target, mask)
    composed = composed_loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    assert_same_function(fused, composed, rtol=1e-9)


@pytest.mark.parametrize("name", ["lstm-R1-Hw1-r1", "lstm-R2-Hw2-r2-random", "ff-R1-Hw3-r0"])
def test_fused_step_float32(name):
    model64, x, target, mask = problem(CONFIGS[name])
    model32 = dmem.NTM(4, 3, seed=3, dtype=np.float32, **dict(
        dict(memory_slots=7, word_size=4, controller_size=9), **CONFIGS[name]))
    fused = fused_loss_and_grad(model32, x.astype(np.float32), target.astype(np.float32),
                                mask.astype(np.float32))
    assert fused[2].dtype == np.float32 and all(g.dtype == np.float32 for g in fused[1].values())
    composed = composed_loss_and_grad(model64.params, model64.buffers, model64.config, x, target, mask)
    assert_same_function(fused, composed, rtol=2e-4, same_dtype=False)


def test_fused_step_with_saturated_gates_and_sharp_addressing():
    """Controller pre-activations far beyond the clamp of σ and tanh (±354), very
    large key strengths (content weights that underflow to exact zeros) and sharpening."""
    model, x, target, mask = problem(CONFIGS["lstm-R1-Hw1-r1"], steps=5)
    params = dict(model.params)
    params["controller_W"] = params["controller_W"] * 2000.0
    params["interface_b"] = params["interface_b"].copy()
    W, S = model.config.word_size, model.config.shift_width
    for base in (0, head_size(W, S, True)):
        params["interface_b"][base + W] = 800.0          # β = softplus(800) = 800
        params["interface_b"][base + W + 2 + S] = 40.0   # γ ≈ 41
    model.set_params(params)
    fused = fused_loss_and_grad(model, x, target, mask)
    composed = composed_loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    assert np.isfinite(fused[0]) and all(np.all(np.isfinite(g)) for g in fused[1].values())
    assert_same_function(fused, composed, rtol=1e-9)


def test_forward_alone_matches_and_repeats():
    model, x, target, mask = problem(CONFIGS["lstm-R2-Hw2-r2-random"])
    first = _ntm_bptt.forward(model.params, model.buffers, model.config, x)
    loss_and_grads = _ntm_bptt.loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    again = _ntm_bptt.forward(model.params, model.buffers, model.config, x)
    np.testing.assert_array_equal(first, again)  # the reused buffers carry nothing over
    _, _, composed = composed_loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    np.testing.assert_allclose(first, composed, rtol=0, atol=1e-10 * np.max(np.abs(composed)))
    assert np.isfinite(loss_and_grads[0])


def test_params_not_mutated():
    model, x, target, mask = problem(CONFIGS["lstm-R1-Hw1-r1"])
    before = {k: v.copy() for k, v in model.params.items()}
    fused_loss_and_grad(model, x, target, mask)
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])


# ---------------------------------------------------------------- threads

@pytest.mark.parametrize("rows", [5, 8, 17])
@pytest.mark.parametrize("name", ["lstm-R1-Hw1-r1", "ff-R2-Hw1-learned", "lstm-R2-Hw2-r2-random"])
def test_one_and_two_threads_bitwise_equal(name, rows, monkeypatch):
    """One chunk (its rows over OpenMP threads) and several chunks (over a pool)."""
    monkeypatch.setattr(_common, "PARALLEL_MIN_WORK", 0)
    model, x, target, mask = problem(CONFIGS[name], rows=rows)
    previous = dmem.get_num_threads()
    out = []
    try:
        for n in (1, 2, 3, 1):
            dmem.set_num_threads(n)
            out.append(fused_loss_and_grad(model, x, target, mask))
    finally:
        dmem.set_num_threads(previous)
    for other in out[1:]:
        assert other[0] == out[0][0]
        np.testing.assert_array_equal(other[2], out[0][2])
        for k in out[0][1]:
            np.testing.assert_array_equal(other[1][k], out[0][1][k])


# ---------------------------------------------------------------- the sequence object refuses bad buffers

SIZES = dict(T=3, B=2, I=4, N=5, W=3, R=1, Hw=1, C=6, S=3, lstm=True)


def good_buffers(dtype=np.float64, **sizes):
    n = dict(SIZES, **sizes)
    shapes = buffer_shapes(*n.values())
    return n, {k: np.zeros(s, dtype=np.float64 if k in DOUBLE_BUFFERS else dtype)
               for k, s in shapes.items()}


def make(n, buffers, threads=1):
    return NTMSequence(*n.values(), buffers, threads)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sequence_accepts_good_buffers_and_runs(dtype):
    n, buffers = good_buffers(dtype)
    seq = make(n, buffers)
    for t in range(n["T"]):
        seq.forward(t)
    for t in reversed(range(n["T"])):
        seq.backward(t)
    for a in buffers.values():
        assert np.all(np.isfinite(a))


def test_sequence_refuses_a_step_out_of_range():
    n, buffers = good_buffers()
    seq = make(n, buffers)
    for t in (-1, n["T"], 10**9):
        with pytest.raises(IndexError):
            seq.forward(t)
        with pytest.raises(IndexError):
            seq.backward(t)


@pytest.mark.parametrize("change, error", [
    (lambda b: b.pop("memory"), ValueError),                                   # missing
    (lambda b: b.update(extra=np.zeros(3)), ValueError),                       # unknown
    (lambda b: b.update(memory=np.zeros((4, 2, 5, 4))), ValueError),           # wrong shape
    (lambda b: b.update(act=b["act"].astype(np.float32)), ValueError),         # mixed dtypes
    (lambda b: b.update(log_weights=b["log_weights"].astype(np.float32)), ValueError),
    (lambda b: b.update(memory=b["memory"].astype(np.int64)), TypeError),      # not float
    (lambda b: b.update(zh=np.zeros(b["zh"].shape[::-1]).T), ValueError),      # not C-contiguous
    (lambda b: b.update(gates=[[0.0]]), TypeError),                            # not an array
])
def test_sequence_refuses_bad_buffers(change, error):
    n, buffers = good_buffers()
    change(buffers)
    with pytest.raises(error):
        make(n, buffers)


def test_sequence_refuses_read_only_buffers_and_bad_sizes():
    n, buffers = good_buffers()
    buffers["dxi"].flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        make(n, buffers)
    n, buffers = good_buffers()
    with pytest.raises(ValueError, match="odd"):
        NTMSequence(*dict(n, S=2).values(), buffers, 1)
    with pytest.raises(ValueError, match="positive"):
        NTMSequence(*dict(n, N=0).values(), buffers, 1)
    with pytest.raises(ValueError, match="positive"):
        make(n, buffers, threads=0)
    # buffers of another size than the one announced
    with pytest.raises(ValueError):
        NTMSequence(*dict(n, N=6).values(), buffers, 1)


def test_reference_and_fused_agree_for_the_paper_sizes():
    """One step of the paper's configuration (N=128, W=20, C=100) against autograd."""
    from autograd import value_and_grad

    task_in, task_out = 9, 8
    model = dmem.NTM(task_in, task_out, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(4, 2, task_in)).astype(float)
    target = rng.integers(0, 2, size=(4, 2, task_out)).astype(float)
    mask = np.ones((4, 2))
    loss, grads = _ntm_bptt.loss_and_grad(model.params, model.buffers, model.config, x, target, mask)
    ref_loss, ref_grads = value_and_grad(
        lambda p: reference_ntm.loss(p, model.buffers, model.config, x, target, mask))(model.params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    for k in ref_grads:
        scale = np.max(np.abs(ref_grads[k])) + 1e-300
        np.testing.assert_allclose(grads[k] / scale, ref_grads[k] / scale, rtol=0, atol=1e-9, err_msg=k)


def _child_loss(queue):
    model, x, target, mask = problem(CONFIGS["lstm-R1-Hw1-r1"], rows=12, steps=3)
    dmem.set_num_threads(2)
    queue.put(fused_loss_and_grad(model, x, target, mask)[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_thread_pool_survives_fork():
    """The pool of a parent has no threads in a forked child; the child makes its own."""
    import multiprocessing

    model, x, target, mask = problem(CONFIGS["lstm-R1-Hw1-r1"], rows=12, steps=3)
    previous = dmem.get_num_threads()
    dmem.set_num_threads(2)
    try:
        expected = fused_loss_and_grad(model, x, target, mask)[0]  # the parent's pool exists
        context = multiprocessing.get_context("fork")
        queue = context.Queue()
        child = context.Process(target=_child_loss, args=(queue,))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == 0
        assert queue.get(timeout=5) == expected
    finally:
        dmem.set_num_threads(previous)
