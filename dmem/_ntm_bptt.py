"""The NTM's loss and gradient by hand-written backpropagation through time.

No autograd: each step runs the compiled ``X_forward`` kernels and keeps their
saved state; the backward pass walks the steps in reverse, calling the
matching ``X_backward`` kernels and the hand-written controller and head
backward passes.  It computes exactly the function of
:mod:`dmem.reference.ntm` (``docs/models.md``), which the tests check.

Memory kept for the backward pass: per step, the previous memory
``(B, N, W)`` for the write, the addressing state of every head
``O(B·H·N)``, and the controller's activations ``O(B·(Z + 5C))``.
"""

import numpy as np

from . import compiled
from ._heads import activate, activate_backward, head_size
from .controllers import CONTROLLERS, sigmoid, softplus

LN2 = np.log(2.0)


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_backward(s, ds):
    return s * (ds - (s * ds).sum(axis=-1, keepdims=True))


def _initial_state(params, buffers, config, B, dtype):
    N, W = config.memory_slots, config.word_size
    if config.memory_init == "learned":
        M0 = np.broadcast_to(params["memory_init"], (B, N, W))
    elif config.memory_init == "random":
        M0 = np.broadcast_to(buffers["memory_init"], (B, N, W))
    else:
        M0 = np.full((B, N, W), 1e-6, dtype=dtype)
    wr0 = _softmax(params["read_weights_init"])
    ww0 = _softmax(params["write_weights_init"])
    return (
        np.ascontiguousarray(M0, dtype=dtype),
        np.ascontiguousarray(np.broadcast_to(wr0, (B,) + wr0.shape), dtype=dtype),
        np.ascontiguousarray(np.broadcast_to(ww0, (B,) + ww0.shape), dtype=dtype),
        np.ascontiguousarray(np.broadcast_to(params["read_init"], (B,) + params["read_init"].shape), dtype=dtype),
        wr0,
        ww0,
    )


def _run(params, buffers, config, x, keep):
    """Forward over the sequence; returns logits and, if ``keep``, per-step state."""
    T, B, _ = x.shape
    dtype = params["output_W"].dtype
    W, S = config.word_size, 2 * config.shift_range + 1
    R, Hw, C = config.read_heads, config.write_heads, config.controller_size
    ctrl = CONTROLLERS[config.controller]
    M, wr, ww, reads, _, _ = _initial_state(params, buffers, config, B, dtype)
    h = np.zeros((B, C), dtype=dtype)
    c = np.zeros((B, C), dtype=dtype)
    nw = Hw * head_size(W, S, True)
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
        if keep:
            steps.append((ctrl_saved, xi, wh_saved, rh_saved, ww_saved, write_saved,
                          wr_saved, read_saved, hr))
    return logits, steps


def forward(params, buffers, config, x):
    """Logits ``(T, B, O)`` of the NTM on ``x (T, B, I)`` with the compiled kernels."""
    return _run(params, buffers, config, x, keep=False)[0]


def loss_and_grad(params, buffers, config, x, target, mask):
    """Masked sigmoid cross-entropy in bits (summed over time and bits, averaged
    over the batch) and its gradient with respect to every parameter."""
    T, B, _ = x.shape
    dtype = params["output_W"].dtype
    W, S = config.word_size, 2 * config.shift_range + 1
    R, Hw, C = config.read_heads, config.write_heads, config.controller_size
    ctrl = CONTROLLERS[config.controller]
    nw = Hw * head_size(W, S, True)

    logits, steps = _run(params, buffers, config, x, keep=True)
    m = mask[..., None]
    loss = float(np.sum(m * (softplus(logits) - target * logits)) / (LN2 * B))
    dlogits = m * (sigmoid(logits) - target) / (LN2 * B)

    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dM = np.zeros((B, config.memory_slots, W), dtype=dtype)
    dww_next = np.zeros((B, Hw, config.memory_slots), dtype=dtype)
    dwr_next = np.zeros((B, R, config.memory_slots), dtype=dtype)
    dreads_next = np.zeros((B, R, W), dtype=dtype)
    dh_next = np.zeros((B, C), dtype=dtype)
    dc_next = np.zeros((B, C), dtype=dtype)
    Wo, Wi, Wc = params["output_W"], params["interface_W"], params["controller_W"]
    for t in range(T - 1, -1, -1):
        (ctrl_saved, xi, wh_saved, rh_saved, ww_saved, write_saved,
         wr_saved, read_saved, hr) = steps[t]
        dy = dlogits[t]
        grads["output_W"] += hr.T @ dy
        grads["output_b"] += dy.sum(axis=0)
        dhr = dy @ Wo.T
        dh = dhr[:, :C] + dh_next
        dreads = dhr[:, C:].reshape(B, R, W) + dreads_next

        dM_read, dwr = compiled.read_backward(read_saved, dreads)
        dM += dM_read
        dwr += dwr_next
        dM_c, dkr, dbr, dgr, dsr, dyr, dwr_next = compiled.ntm_address_backward(wr_saved, dwr)
        dM += dM_c
        dM, dww, derase, dadd = compiled.write_backward(write_saved, dM)
        dww += dww_next
        dM_c, dkw, dbw, dgw, dsw, dyw, dww_next = compiled.ntm_address_backward(ww_saved, dww)
        dM += dM_c

        dxi = np.empty_like(xi)
        dxi[:, :nw] = activate_backward(
            wh_saved,
            {"keys": dkw, "strengths": dbw, "gates": dgw, "shifts": dsw, "gamma": dyw,
             "erase": derase, "add": dadd},
            W, S, True).reshape(B, -1)
        dxi[:, nw:] = activate_backward(
            rh_saved,
            {"keys": dkr, "strengths": dbr, "gates": dgr, "shifts": dsr, "gamma": dyr},
            W, S, False).reshape(B, -1)
        h = hr[:, :C]
        grads["interface_W"] += h.T @ dxi
        grads["interface_b"] += dxi.sum(axis=0)
        dh += dxi @ Wi.T
        dWc, dbc, dz, dh_next, dc_next = ctrl.backward(Wc, ctrl_saved, dh, dc_next)
        grads["controller_W"] += dWc
        grads["controller_b"] += dbc
        dreads_next = dz[:, x.shape[2]:].reshape(B, R, W)

    # The initial state: reads_0, the weightings' logits and (if learned) M_0.
    _, _, _, _, wr0, ww0 = _initial_state(params, buffers, config, 1, dtype)
    grads["read_init"] += dreads_next.sum(axis=0)
    grads["read_weights_init"] += _softmax_backward(wr0, dwr_next.sum(axis=0))
    grads["write_weights_init"] += _softmax_backward(ww0, dww_next.sum(axis=0))
    if config.memory_init == "learned":
        grads["memory_init"] += dM.sum(axis=0)
    return loss, grads
