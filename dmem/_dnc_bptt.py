"""The DNC's loss and gradient by hand-written backpropagation through time.

No autograd: the step of ``docs/models.md`` (usage → allocation → write
weighting → write → link_step → read weighting → read) runs on the compiled
``X_forward`` kernels, and the backward pass walks the steps in reverse with
the matching ``X_backward`` kernels.  It computes exactly the function of
:mod:`dmem.reference.dnc`, which the tests check.

Memory kept for the backward pass is dominated by the link matrices, one
``(B, N, N)`` array per step (``T·B·N²`` numbers in all); the rest is
``O(T·B·N·(W + R))``.
"""

import numpy as np

from . import compiled
from .controllers import CONTROLLERS, sigmoid, softplus

LN2 = np.log(2.0)


def _layout(config):
    """Offsets of the interface vector's fields (DNC paper, Methods)."""
    R, W = config.read_heads, config.word_size
    sizes = [("read_keys", R * W), ("read_strengths", R), ("write_key", W), ("write_strength", 1),
             ("erase", W), ("write_vector", W), ("free_gates", R), ("allocation_gate", 1),
             ("write_gate", 1), ("read_modes", 3 * R)]
    out, start = {}, 0
    for name, size in sizes:
        out[name] = slice(start, start + size)
        start += size
    return out


def _interface(xi, config, lay):
    B = xi.shape[0]
    R, W = config.read_heads, config.word_size
    rs_raw = xi[:, lay["read_strengths"]]
    ws_raw = xi[:, lay["write_strength"]]
    modes_raw = xi[:, lay["read_modes"]].reshape(B, R, 3)
    modes = np.exp(modes_raw - modes_raw.max(axis=-1, keepdims=True))
    modes /= modes.sum(axis=-1, keepdims=True)
    q = {
        "read_keys": np.ascontiguousarray(xi[:, lay["read_keys"]].reshape(B, R, W)),
        "read_strengths": 1.0 + softplus(rs_raw),
        "write_key": np.ascontiguousarray(xi[:, lay["write_key"]].reshape(B, 1, W)),
        "write_strength": 1.0 + softplus(ws_raw),
        "erase": sigmoid(xi[:, lay["erase"]]).reshape(B, 1, W),
        "write_vector": np.ascontiguousarray(xi[:, lay["write_vector"]].reshape(B, 1, W)),
        "free_gates": sigmoid(xi[:, lay["free_gates"]]),
        "allocation_gate": sigmoid(xi[:, lay["allocation_gate"]]),  # (B, 1)
        "write_gate": sigmoid(xi[:, lay["write_gate"]]),  # (B, 1)
        "read_modes": modes,
        "_sig_rs": sigmoid(rs_raw),
        "_sig_ws": sigmoid(ws_raw),
    }
    return q


def _interface_backward(q, d, config, lay, B):
    dxi = np.empty((B, lay["read_modes"].stop), dtype=q["free_gates"].dtype)
    dxi[:, lay["read_keys"]] = d["read_keys"].reshape(B, -1)
    dxi[:, lay["read_strengths"]] = d["read_strengths"] * q["_sig_rs"]
    dxi[:, lay["write_key"]] = d["write_key"].reshape(B, -1)
    dxi[:, lay["write_strength"]] = d["write_strength"] * q["_sig_ws"]
    e = q["erase"].reshape(B, -1)
    dxi[:, lay["erase"]] = d["erase"].reshape(B, -1) * e * (1.0 - e)
    dxi[:, lay["write_vector"]] = d["write_vector"].reshape(B, -1)
    for name in ("free_gates", "allocation_gate", "write_gate"):
        v = q[name]
        dxi[:, lay[name]] = d[name] * v * (1.0 - v)
    s, ds = q["read_modes"], d["read_modes"]
    dxi[:, lay["read_modes"]] = (s * (ds - (s * ds).sum(axis=-1, keepdims=True))).reshape(B, -1)
    return dxi


def _run(params, config, x, keep):
    T, B, _ = x.shape
    dtype = params["output_W"].dtype
    N, W, R, C = config.memory_slots, config.word_size, config.read_heads, config.controller_size
    ctrl = CONTROLLERS[config.controller]
    lay = _layout(config)
    M = np.zeros((B, N, W), dtype=dtype)
    u = np.zeros((B, N), dtype=dtype)
    ww = np.zeros((B, N), dtype=dtype)
    wr = np.zeros((B, R, N), dtype=dtype)
    p = np.zeros((B, N), dtype=dtype)
    L = np.zeros((B, N, N), dtype=dtype)
    reads = np.zeros((B, R, W), dtype=dtype)
    h = np.zeros((B, C), dtype=dtype)
    c = np.zeros((B, C), dtype=dtype)
    logits = np.empty((T, B, params["output_b"].shape[0]), dtype=dtype)
    steps = []
    for t in range(T):
        z = np.concatenate([x[t], reads.reshape(B, R * W)], axis=1)
        h, c, ctrl_saved = ctrl.forward(params["controller_W"], params["controller_b"], z, h, c)
        xi = h @ params["interface_W"] + params["interface_b"]
        q = _interface(xi, config, lay)
        u, usage_saved = compiled.usage_forward(u, ww, wr, q["free_gates"])
        a, alloc_saved = compiled.allocation_forward(u)
        cw, cw_saved = compiled.content_weights_forward(M, q["write_key"], q["write_strength"])
        ga, gw = q["allocation_gate"], q["write_gate"]
        ww = gw * (ga * a + (1.0 - ga) * cw[:, 0])
        M, write_saved = compiled.write_forward(M, ww[:, None, :], q["erase"], q["write_vector"])
        (L, p, fwd, bwd), link_saved = compiled.link_step_forward(L, p, ww, wr)
        cr, cr_saved = compiled.content_weights_forward(M, q["read_keys"], q["read_strengths"])
        modes = q["read_modes"]
        wr = modes[..., 0:1] * bwd + modes[..., 1:2] * cr + modes[..., 2:3] * fwd
        reads, read_saved = compiled.read_forward(M, wr)
        hr = np.concatenate([h, reads.reshape(B, R * W)], axis=1)
        logits[t] = hr @ params["output_W"] + params["output_b"]
        if keep:
            steps.append((ctrl_saved, q, usage_saved, alloc_saved, a, cw, cw_saved, write_saved,
                          link_saved, fwd, bwd, cr, cr_saved, read_saved, hr))
    return logits, steps


def forward(params, buffers, config, x):
    """Logits ``(T, B, O)`` of the DNC on ``x (T, B, I)`` with the compiled kernels."""
    return _run(params, config, x, keep=False)[0]


def loss_and_grad(params, buffers, config, x, target, mask):
    """Masked sigmoid cross-entropy in bits and its gradient for every parameter."""
    T, B, _ = x.shape
    dtype = params["output_W"].dtype
    N, W, R, C = config.memory_slots, config.word_size, config.read_heads, config.controller_size
    ctrl = CONTROLLERS[config.controller]
    lay = _layout(config)

    logits, steps = _run(params, config, x, keep=True)
    m = mask[..., None]
    loss = float(np.sum(m * (softplus(logits) - target * logits)) / (LN2 * B))
    dlogits = m * (sigmoid(logits) - target) / (LN2 * B)

    grads = {k: np.zeros_like(v) for k, v in params.items()}
    dM = np.zeros((B, N, W), dtype=dtype)
    dL = None  # zero: the last link matrix feeds nothing
    dp = np.zeros((B, N), dtype=dtype)
    du = np.zeros((B, N), dtype=dtype)
    dww_next = np.zeros((B, N), dtype=dtype)
    dwr_next = np.zeros((B, R, N), dtype=dtype)
    dreads_next = np.zeros((B, R, W), dtype=dtype)
    dh_next = np.zeros((B, C), dtype=dtype)
    dc_next = np.zeros((B, C), dtype=dtype)
    Wo, Wi, Wc = params["output_W"], params["interface_W"], params["controller_W"]
    for t in range(T - 1, -1, -1):
        (ctrl_saved, q, usage_saved, alloc_saved, a, cw, cw_saved, write_saved,
         link_saved, fwd, bwd, cr, cr_saved, read_saved, hr) = steps[t]
        dy = dlogits[t]
        grads["output_W"] += hr.T @ dy
        grads["output_b"] += dy.sum(axis=0)
        dhr = dy @ Wo.T
        dh = dhr[:, :C] + dh_next
        dreads = dhr[:, C:].reshape(B, R, W) + dreads_next

        dM_r, dwr = compiled.read_backward(read_saved, dreads)
        dwr += dwr_next
        modes = q["read_modes"]
        dmodes = np.stack([(dwr * bwd).sum(-1), (dwr * cr).sum(-1), (dwr * fwd).sum(-1)], axis=-1)
        dM_c, drk, drs = compiled.content_weights_backward(cr_saved, modes[..., 1:2] * dwr)
        dM += dM_r + dM_c
        dL, dp, dww, dwr_prev = compiled.link_step_backward(
            link_saved, dL, dp, modes[..., 2:3] * dwr, modes[..., 0:1] * dwr)
        dM, dww_write, derase, dwv = compiled.write_backward(write_saved, dM)
        dww += dww_write[:, 0] + dww_next
        ga, gw = q["allocation_gate"], q["write_gate"]
        mix = ga * a + (1.0 - ga) * cw[:, 0]
        dgw = (dww * mix).sum(axis=1, keepdims=True)
        dmix = gw * dww
        dga = (dmix * (a - cw[:, 0])).sum(axis=1, keepdims=True)
        dM_c, dwk, dws = compiled.content_weights_backward(cw_saved, ((1.0 - ga) * dmix)[:, None, :])
        dM += dM_c
        (du_a,) = compiled.allocation_backward(alloc_saved, ga * dmix)
        du, dww_next, dwr_u, dfree = compiled.usage_backward(usage_saved, du + du_a)
        dwr_next = dwr_prev + dwr_u

        dxi = _interface_backward(q, {
            "read_keys": drk, "read_strengths": drs, "write_key": dwk, "write_strength": dws,
            "erase": derase, "write_vector": dwv, "free_gates": dfree, "allocation_gate": dga,
            "write_gate": dgw, "read_modes": dmodes}, config, lay, B)
        h = hr[:, :C]
        grads["interface_W"] += h.T @ dxi
        grads["interface_b"] += dxi.sum(axis=0)
        dh += dxi @ Wi.T
        dWc, dbc, dz, dh_next, dc_next = ctrl.backward(Wc, ctrl_saved, dh, dc_next)
        grads["controller_W"] += dWc
        grads["controller_b"] += dbc
        dreads_next = dz[:, x.shape[2]:].reshape(B, R, W)
    return loss, grads
