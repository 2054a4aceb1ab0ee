"""The NTM's loss and gradient by hand-written backpropagation through time.

No autograd.  It computes exactly the function of :mod:`dmem.reference.ntm`
(``docs/models.md``), which the tests check, organised for speed:

* one Python loop over time, forward then backward; a step is one BLAS
  product (the controller's pre-activations from ``[reads_{t-1}, h_{t-1}]``,
  or backward their gradient) and one call of the fused step kernel of
  :mod:`dmem._kernels.ntm_step` (controller cell, interface, head
  activations, addressing, write and read);
* every buffer of a sequence is allocated once (and reused by the next call
  of the same shapes in the same thread) and validated once, when the
  :class:`~dmem._kernels.ntm_step.NTMSequence` is made, not per step;
* what does not depend on the recurrence is done for all steps at once: the
  input part of the controller's product, the output layer and its gradient,
  and the weight gradients (one product over all ``T·B`` rows each).

Threads.  The batch is cut into chunks of at most :data:`CHUNK_ROWS` rows,
the cut depending on ``B`` alone; each chunk runs the whole time loop, BLAS
products included, on its own rows, the chunks in parallel in a pool of
``dmem.get_num_threads()`` threads (the GIL is released by the kernels and by
numpy's products).  A chunk's kernels use OpenMP over its rows only when
there are more threads than chunks.  The loss and the gradients are summed
over the chunks in a fixed order: results do not depend on the number of
threads.

Memory kept for the backward pass: per step, the memory ``(B, N, W)``, the
addressing state of every head ``O(B·H·N)`` and the controller's activations
``O(B·(Z + 6C))``.
"""

import threading

import numpy as np

from . import _chunks as _chunks_mod
from ._backend import get_num_threads
from ._kernels.ntm_step import DOUBLE_BUFFERS, NTMSequence, buffer_shapes
from .compiled._common import threads
from .controllers import sigmoid, softplus

LN2 = np.log(2.0)

CHUNK_ROWS = 8
"""Batch rows per chunk (each chunk one time loop, one thread's work)."""

MAX_CHUNKS = 8
"""At most this many chunks: a large batch gets larger chunks."""

CACHE_MAX_BYTES = 256 * 2**20
"""Sequences whose buffers take more than this many bytes are not kept between calls."""

_cache = threading.local()


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _softmax_backward(s, ds):
    return s * (ds - (s * ds).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------- chunks, threads, buffers

def _chunks(B):
    """``[(b0, b1), ...]``: the batch cut into balanced chunks (a function of ``B`` only)."""
    return _chunks_mod.balanced(B, CHUNK_ROWS, MAX_CHUNKS)


_map = _chunks_mod.run


def _sizes(config, T, B):
    W, S = config.word_size, 2 * config.shift_range + 1
    R, Hw, C = config.read_heads, config.write_heads, config.controller_size
    return dict(T=T, B=B, I=config.input_size, N=config.memory_slots, W=W, R=R, Hw=Hw,
                C=C, S=S, lstm=config.controller == "lstm")


def _buffers(n, dtype):
    """Every buffer of a sequence (see :mod:`dmem._kernels.ntm_step`), uninitialised."""
    shapes = buffer_shapes(*n.values())
    return {name: np.empty(shape, dtype=np.float64 if name in DOUBLE_BUFFERS else dtype)
            for name, shape in shapes.items()}


def _sequences(config, T, chunks, dtype, omp_threads):
    """``[(NTMSequence, buffers)]``, one per chunk; reused by the next call of the same
    shapes from the same thread."""
    sizes = [_sizes(config, T, b1 - b0) for b0, b1 in chunks]
    nthreads = []
    for n in sizes:
        work = n["B"] * ((n["Hw"] + n["R"]) * n["N"] * (n["W"] + n["S"] + 16) + 40 * n["C"])
        nthreads.append(min(omp_threads, threads(n["B"], work)))
    key = (tuple(tuple(n.values()) for n in sizes), np.dtype(dtype).str, tuple(nthreads))
    cached = getattr(_cache, "sequences", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    _cache.sequences = None
    out = []
    for n, nt in zip(sizes, nthreads):
        buffers = _buffers(n, dtype)
        seq = NTMSequence(n["T"], n["B"], n["I"], n["N"], n["W"], n["R"], n["Hw"], n["C"],
                          n["S"], n["lstm"], buffers, nt)
        out.append((seq, buffers))
    if sum(a.nbytes for _, b in out for a in b.values()) <= CACHE_MAX_BYTES:
        _cache.sequences = (key, out)
    return out


def _plan(config, T, B, dtype):
    """Chunks, their sequences, and the threads that run them."""
    chunks = _chunks(B)
    total = get_num_threads()
    pool_threads = min(total, len(chunks))
    sequences = _sequences(config, T, chunks, dtype, max(1, total // len(chunks)))
    return chunks, sequences, pool_threads


def _rows(a, b0, b1, B):
    """Rows ``b0:b1`` of the batch axis (1) of ``a``, C-contiguous."""
    return np.ascontiguousarray(a if (b0, b1) == (0, B) else a[:, b0:b1])


# ---------------------------------------------------------------- one chunk

def _initial_state(params, buffers, config, dtype):
    """``(M_0 (N, W), wr_0 (R, N), ww_0 (Hw, N))``."""
    if config.memory_init == "learned":
        M0 = params["memory_init"]
    elif config.memory_init == "random":
        M0 = buffers["memory_init"]
    else:
        M0 = np.full((config.memory_slots, config.word_size), 1e-6, dtype=dtype)
    return M0, _softmax(params["read_weights_init"]), _softmax(params["write_weights_init"])


def _forward_chunk(params, config, x, seq, buf, initial):
    """Forward over the sequence for the rows of ``x (T, Bc, I)``; logits ``(T, Bc, O)``."""
    T, B, I = x.shape
    R, W, Hw = config.read_heads, config.word_size, config.write_heads
    Z = I + R * W
    M0, wr0, ww0 = initial
    Wc, Wi = params["controller_W"], params["interface_W"]

    zh, gates, hr = buf["zh"], buf["gates"], buf["hr"]
    zh[:, :, :I] = x
    zh[0, :, I:Z] = params["read_init"].reshape(1, R * W)
    if config.controller == "lstm":
        zh[0, :, Z:] = 0
        buf["cell"][0] = 0
    np.matmul(x.reshape(T * B, I), Wc[:I], out=buf["xw"].reshape(T * B, -1))
    buf["xw"] += params["controller_b"]
    buf["interface_W"][...] = Wi
    buf["interface_WT"][...] = Wi.T
    buf["interface_b"][...] = params["interface_b"]
    buf["memory"][0] = M0
    buf["weights"][0, :, :Hw] = ww0
    buf["weights"][0, :, Hw:] = wr0

    W_tail = Wc[I:]
    for t in range(T):
        np.matmul(zh[t, :, I:], W_tail, out=gates[t])
        seq.forward(t)

    logits = hr.reshape(T * B, -1) @ params["output_W"]
    logits += params["output_b"]
    return logits.reshape(T, B, -1)


def _loss_and_grad_chunk(params, config, x, target, mask, batch, seq, buf, initial):
    """The chunk's part of the loss and of every gradient (``batch``: the whole batch's size)."""
    T, B, I = x.shape
    R, W, Hw, C = config.read_heads, config.word_size, config.write_heads, config.controller_size
    logits = _forward_chunk(params, config, x, seq, buf, initial)
    m = mask[..., None]
    loss = float(np.sum(m * (softplus(logits) - target * logits)) / (LN2 * batch))
    dlogits = (m * (sigmoid(logits) - target) / (LN2 * batch)).astype(logits.dtype, copy=False)

    Wc, Wo = params["controller_W"], params["output_W"]
    np.matmul(dlogits.reshape(T * B, -1), Wo.T, out=buf["dhr"].reshape(T * B, -1))
    WcT = np.ascontiguousarray(Wc[I:].T)
    dxi, da, dzh = buf["dxi"], buf["da"], buf["dzh"]
    dzh[...] = 0
    buf["dcell"][...] = 0
    buf["dmemory"][T % 2] = 0
    buf["dweights"][...] = 0
    for t in range(T - 1, -1, -1):
        seq.backward(t)
        np.matmul(da[t], WcT, out=dzh)

    _, wr0, ww0 = initial
    TB = T * B
    hr = buf["hr"].reshape(TB, -1)
    dxi2 = dxi.reshape(TB, -1)
    da2 = da.reshape(TB, -1)
    dlogits2 = dlogits.reshape(TB, -1)
    grads = {
        "controller_W": buf["zh"].reshape(TB, -1).T @ da2,
        "controller_b": da2.sum(axis=0),
        "interface_W": hr[:, :C].T @ dxi2,
        "interface_b": dxi2.sum(axis=0),
        "output_W": hr.T @ dlogits2,
        "output_b": dlogits2.sum(axis=0),
        # The initial state: reads_0, the weightings' logits and (if learned) M_0.
        "read_init": dzh[:, : R * W].sum(axis=0).reshape(R, W),
        "read_weights_init": _softmax_backward(wr0, buf["dweights"][:, Hw:].sum(axis=0)),
        "write_weights_init": _softmax_backward(ww0, buf["dweights"][:, :Hw].sum(axis=0)),
    }
    if config.memory_init == "learned":
        grads["memory_init"] = buf["dmemory"][0].sum(axis=0)
    return loss, grads


# ---------------------------------------------------------------- the model's entry points

def forward(params, buffers, config, x):
    """Logits ``(T, B, O)`` of the NTM on ``x (T, B, I)`` with the compiled kernels."""
    T, B, _ = x.shape
    dtype = params["output_W"].dtype
    chunks, sequences, pool_threads = _plan(config, T, B, dtype)
    initial = _initial_state(params, buffers, config, dtype)

    def run(c):
        (b0, b1), (seq, buf) = chunks[c], sequences[c]
        return _forward_chunk(params, config, _rows(x, b0, b1, B), seq, buf, initial)

    parts = _map(run, len(chunks), pool_threads)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def loss_and_grad(params, buffers, config, x, target, mask):
    """Masked sigmoid cross-entropy in bits (summed over time and bits, averaged
    over the batch) and its gradient with respect to every parameter."""
    T, B, _ = x.shape
    dtype = params["output_W"].dtype
    chunks, sequences, pool_threads = _plan(config, T, B, dtype)
    initial = _initial_state(params, buffers, config, dtype)

    def run(c):
        (b0, b1), (seq, buf) = chunks[c], sequences[c]
        return _loss_and_grad_chunk(params, config, _rows(x, b0, b1, B), _rows(target, b0, b1, B),
                                    _rows(mask, b0, b1, B), B, seq, buf, initial)

    loss, grads = _chunks_mod.sum_losses_and_grads(_map(run, len(chunks), pool_threads))
    return loss, {k: grads[k] for k in params}
