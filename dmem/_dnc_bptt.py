"""The DNC's loss and gradient by hand-written backpropagation through time.

No autograd: the step of ``docs/models.md`` (controller → interface → usage,
allocation and write weighting → write → link_step → read weighting → read)
runs on compiled kernels, and the backward pass walks the steps in reverse
with the matching backward kernels.  It computes exactly the function of
:mod:`dmem.reference.dnc`, which the tests check.

How it stays fast:

* a time step is four calls: numpy's matrix product for the controller,
  :meth:`DNCSequence.cell_forward` (its activations), the product for the
  interface, and :meth:`DNCSequence.memory_forward`, one fused kernel for
  everything from the interface's activations to the read vectors (the row
  kernels of the ops: content weighting, write weighting, write, link step,
  read weighting, read; :mod:`dmem._kernels.dnc_step`).  The backward step is
  the same four calls in reverse;
* every array of the sequence is allocated once, time-major, checked once by
  :class:`DNCSequence`, and the kernels write into it directly.  The arrays
  are kept for the next call with the same model and sizes (see
  :data:`REUSE_WORKSPACE`): fresh memory costs page faults, a quarter of a
  large DNC's step;
* the products that do not feed the recurrence are batched over time: the
  logits are one matrix product after the forward loop, and the gradients of
  ``controller_W``, ``interface_W`` and ``output_W`` one product each over all
  ``T·B`` rows after the backward loop.

Threads.  The batch is cut into chunks of at most :data:`CHUNK_ROWS` rows, the
cut depending on ``B`` alone; each chunk runs the whole time loop on its rows
in a pool of ``dmem.get_num_threads()`` threads (the kernels and numpy's
products release the GIL), and the loss and gradients are summed over the
chunks in a fixed order: results do not depend on the number of threads.

Memory (``T·B·N²`` link values dominate; the ratio to them is what counts):

* each link matrix is stored once: ``L_t`` is the saved ``L_prev`` of step
  ``t+1``.  ``L_0 = 0`` and ``L_1 = 0`` (exactly: ``L_1,ij = (1 − w_i − w_j)·0
  + w_i·p_0,j`` with ``p_0 = 0``) are not stored, and the last step's output
  ``L_T``, which nothing reads, goes to the buffer that then carries the link
  cotangent backwards, updated in place step after step: ``T − 1``
  link-sized arrays in all, written with non-temporal stores when they are
  too many to stay in cache;
* when the memories ``M_t`` of all steps would take more than
  :data:`STORE_ALL_MEMORY_BYTES` and a twentieth of the link matrices, only
  every ``k``-th (``k ≈ √T``) is kept, and the backward recomputes the others
  segment by segment with the write kernel (deterministic: the same values,
  bit for bit);
* the read weightings are recomputed in the backward from the stored
  temporal and content weightings instead of being stored.
"""

import math
import os
import threading
import weakref

import numpy as np

from . import _chunks as _chunks_mod
from ._backend import get_num_threads
from .compiled._common import threads

try:
    from ._kernels import linkage as _linkage
    from ._kernels.dnc_step import DNCSequence, sequence_shapes
except ImportError:  # the extension is not built: only the reference backend runs
    _linkage = DNCSequence = sequence_shapes = None

LN2 = math.log(2.0)

def _physical_memory():
    """Bytes of memory of the machine (16 GiB when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 16 << 30


STORE_ALL_LINK_BYTES = _physical_memory() // 4
"""Keep every link matrix of a training call when all of them (``T·B·N²``
values, every chunk of the batch together) take at most this many bytes, a
quarter of the machine's memory; otherwise keep every ``k``-th (``k = ⌊√T⌋``)
and recompute the others in the backward pass, segment by segment: about
``T/k + k`` matrices instead of ``T − 1``, for one more link update per step."""

STORE_ALL_MEMORY_BYTES = 8 << 20
"""Keep the memory of every step when all of them take at most this many bytes
or at most a twentieth of the link matrices; otherwise keep every ``k``-th
and recompute the others in the backward pass."""


PARALLEL_MIN_WORK = 1 << 18
"""Below this many inner-loop steps a kernel call of the BPTT runs on one thread.
A DNC step makes four kernel calls; waking sleeping OpenMP threads
(``OMP_WAIT_POLICY=passive``, see :mod:`dmem._backend`) costs some 10 µs per
call, more than a small kernel saves on a second thread."""


# --------------------------------------------------------------------------
# Interface layout
# --------------------------------------------------------------------------

_FIELDS = [("read_keys", "RW"), ("read_strengths", "R"), ("write_key", "W"),
           ("write_strength", "1"), ("erase", "W"), ("write_vector", "W"),
           ("free_gates", "R"), ("allocation_gate", "1"), ("write_gate", "1"),
           ("read_modes", "3R")]
# The same fields grouped by activation: linear, oneplus, sigmoid, softmax.
_GROUPED = ["read_keys", "write_key", "write_vector",
            "read_strengths", "write_strength",
            "erase", "free_gates", "allocation_gate", "write_gate",
            "read_modes"]


class _Layout:
    """Columns of the interface vector regrouped by activation.

    ``perm`` maps a grouped column to its column in ``interface_W`` (the
    layout of ``docs/models.md``); ``size`` is the interface's width.  The
    grouped order is the one the fused kernels read
    (:mod:`dmem._kernels.dnc_step`).
    """

    def __init__(self, R, W):
        size = {"RW": R * W, "R": R, "W": W, "1": 1, "3R": 3 * R}
        columns, start = {}, 0
        for name, dims in _FIELDS:
            columns[name] = np.arange(start, start + size[dims])
            start += size[dims]
        self.size = start
        self.perm = np.concatenate([columns[name] for name in _GROUPED])


def _sigmoid(x, out):
    """σ(x) = 1 / (1 + e^{−x}) into ``out`` (overflow of e^{−x} gives 0: call
    under ``np.errstate(over="ignore")``)."""
    np.negative(x, out=out)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)


# --------------------------------------------------------------------------
# The sequence: every buffer of one call
# --------------------------------------------------------------------------

class _Sequence:
    """Every array of one forward (and backward) pass over a `(T, B, I)` input.

    Made for one configuration, ``T``, ``B``, dtype and mode (``train``: keep
    what the backward needs); :meth:`load` sets the parameters and the input,
    so that the arrays can serve the next call with the same sizes.  The
    arrays are those of :func:`dmem._kernels.dnc_step.sequence_shapes`, in
    ``self.buf``; the fused step kernels (:class:`DNCSequence`, ``self.steps``)
    run on them between numpy's matrix products.
    """

    def __init__(self, config, T, B, dtype, train, omp_threads=None, link_segments=False):
        self.config = config
        self.link_segments_asked = link_segments
        self.omp_threads = omp_threads
        I = config.input_size
        self.T, self.B, self.I = T, B, I
        N, W, R, C = (config.memory_slots, config.word_size, config.read_heads,
                      config.controller_size)
        self.N, self.W, self.R, self.C = N, W, R, C
        self.lstm = config.controller == "lstm"
        self.train = train
        dtype = np.dtype(dtype)
        self.dtype = dtype
        self.lay = lay = _Layout(R, W)
        K = lay.size
        self.RW = R * W
        self.Z = I + self.RW

        # memories: checkpoints M_{jk} (and M_T) plus the k - 1 memories of one segment
        m_bytes = B * N * W * dtype.itemsize
        link_bytes = T * B * N * N * dtype.itemsize
        # link matrices by segments only where that stores fewer of them
        kl = math.isqrt(T)
        self.link_segments = link_segments = (train and link_segments and kl >= 2
                                              and (T - 1) // kl + kl - 1 < T - 2)
        if not train:
            k = 1  # inference: two buffers, M_t overwrites M_{t-2}
        elif link_segments:
            k = kl
        elif (T + 1) * m_bytes <= max(STORE_ALL_MEMORY_BYTES, link_bytes // 20):
            k = T
        else:
            k = max(1, math.isqrt(T))
        self.k = k
        self.segments = -(-T // k)

        shapes = sequence_shapes(T, B, I, N, W, R, C, self.lstm, train, k, link_segments)
        if shapes["xi"][2] != K:
            raise AssertionError("interface layouts of dnc_step and _dnc_bptt differ")
        self.buf = {name: np.empty(shape, dtype=np.int64 if name == "order" else dtype)
                    for name, shape in shapes.items()}
        self.steps = DNCSequence(T, B, I, N, W, R, C, self.lstm, train, k, self.buf,
                                 link_segments)
        # parameters, in the order the loops want them (filled by load)
        self.Wi = np.empty((C, K), dtype=dtype)
        self.Wo = np.empty((C + self.RW, config.output_size), dtype=dtype)
        self.logits = np.empty((T, B, config.output_size), dtype=dtype)

    def _set_threads(self):
        """Thread counts for this call: ``dmem.get_num_threads()`` (at most one per
        batch row) for steps of at least :data:`PARALLEL_MIN_WORK` inner steps,
        else one.  Results do not depend on it."""
        B, N, W, R, C = self.B, self.N, self.W, self.R, self.C
        most = threads(B)
        if self.omp_threads is not None:
            most = max(1, min(most, self.omp_threads))

        def n(work):
            return most if work >= PARALLEL_MIN_WORK else 1

        self.th_cell = n(B * 4 * C * 8)
        self.th_memory = n(B * (N * N * (1 + R) + 4 * (R + 1) * N * W))
        self.th_memory_b = n(B * (2 * N * N * (1 + R) + 8 * (R + 1) * N * W))

    def load(self, params, x):
        """Take the parameters (already checked) and ``x``; zero the initial state."""
        lay, C, I, T, buf = self.lay, self.C, self.I, self.T, self.buf
        self.Wc = params["controller_W"]
        buf["controller_b"][...] = params["controller_b"]
        np.take(params["interface_W"], lay.perm, axis=1, out=self.Wi)
        np.take(params["interface_b"], lay.perm, out=buf["interface_b"])
        # [h, reads] · output_W = [reads, h] · output_W with its row blocks swapped
        Wo = params["output_W"]
        self.Wo[:self.RW] = Wo[C:]
        self.Wo[self.RW:] = Wo[:C]
        self.bo = params["output_b"]
        zh = buf["zh"]
        zh[:T, :, :I] = x
        zh[T, :, :I] = 0
        zh[0, :, I:] = 0
        for name in ("cell", "usage", "write_weights", "precedence", "memory"):
            buf[name][0] = 0
        self.steps.use_simd(_linkage.SIMD_LEVELS.index(_linkage.simd_level()))
        self._set_threads()

    # -- forward ---------------------------------------------------------------------

    def forward(self):
        T, B, Z = self.T, self.B, self.Z
        zh, gates, xi = self.buf["zh"], self.buf["gates"], self.buf["xi"]
        steps = self.steps
        zin = zh if self.lstm else zh[:, :, :Z]
        for t in range(T):
            np.matmul(zin[t], self.Wc, out=gates[t])
            steps.cell_forward(t, self.th_cell)
            np.matmul(zh[t + 1, :, Z:], self.Wi, out=xi[t])
            steps.memory_forward(t, self.th_memory)
        hr = zh[1:, :, self.I:].reshape(T * B, -1)
        np.matmul(hr, self.Wo, out=self.logits.reshape(T * B, -1))
        self.logits += self.bo
        return self.logits

    # -- backward --------------------------------------------------------------------

    def backward(self, dlogits):
        """Gradients of every parameter from those of the logits `(T, B, O)`."""
        T, B, C, I, Z, RW = self.T, self.B, self.C, self.I, self.Z, self.RW
        lay, buf, steps = self.lay, self.buf, self.steps
        K = lay.size
        TB = T * B
        zh, da, dxi, dh, dzh = buf["zh"], buf["da"], buf["dxi"], buf["dh"], buf["dzh"]

        # outputs: one product over all steps
        dl2 = dlogits.reshape(TB, -1)
        np.matmul(dl2, self.Wo.T, out=buf["dhr"].reshape(TB, RW + C))
        grad_wo = zh[1:, :, I:].reshape(TB, -1).T @ dl2

        steps.begin_backward()
        WiT, WcT = self.Wi.T, self.Wc.T
        dz = dzh if self.lstm else dzh[:, :Z]
        for seg in range(self.segments - 1, -1, -1):
            start, stop = seg * self.k, min((seg + 1) * self.k, T)
            if seg < self.segments - 1:
                steps.recompute_memory(start, stop, self.th_memory)
            for t in range(stop - 1, start - 1, -1):
                steps.memory_backward(t, self.th_memory_b)
                np.matmul(dxi[t], WiT, out=dh)
                steps.cell_backward(t, self.th_cell)
                np.matmul(da[t], WcT, out=dz)

        # parameter gradients: one product over all T·B rows each
        grads = {}
        zh2 = zh[:T].reshape(TB, -1)
        if not self.lstm:
            zh2 = zh2[:, :Z]
        da2 = da.reshape(TB, -1)
        grads["controller_W"] = zh2.T @ da2
        grads["controller_b"] = da2.sum(axis=0)
        dxi2 = dxi.reshape(TB, K)
        grad_wi = zh[1:, :, Z:].reshape(TB, C).T @ dxi2
        grad_bi = dxi2.sum(axis=0)
        grads["interface_W"] = np.empty_like(grad_wi)
        grads["interface_W"][:, lay.perm] = grad_wi
        grads["interface_b"] = np.empty_like(grad_bi)
        grads["interface_b"][lay.perm] = grad_bi
        grads["output_W"] = np.concatenate([grad_wo[RW:], grad_wo[:RW]])
        grads["output_b"] = dl2.sum(axis=0)
        return grads


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def _check_params(params, config):
    """The parameters the loops assume: C-contiguous arrays of one float dtype with
    the shapes of :func:`dmem.reference.dnc.param_shapes` (checked once per call)."""
    from .reference.dnc import param_shapes

    shapes = param_shapes(config)
    dtype = params["output_W"].dtype
    out = {}
    for name, shape in shapes.items():
        value = params[name]
        if (not isinstance(value, np.ndarray) or value.shape != tuple(shape)
                or value.dtype != dtype or dtype not in (np.float32, np.float64)):
            raise ValueError(f"DNC parameter {name} must be a {dtype} array of shape "
                             f"{tuple(shape)}")
        out[name] = np.ascontiguousarray(value)
    return out


# The arrays of the last call, for the next one with the same model and sizes:
# allocating them afresh costs page faults (the kernel zeroes every new page),
# which took a quarter of a DNC training step.  One entry per mode (training,
# inference), dropped when the model's parameters are garbage-collected or when
# another model or other sizes come.  REUSE_WORKSPACE = False turns it off.
REUSE_WORKSPACE = True
_WORKSPACES = {}
_WORKSPACES_LOCK = threading.Lock()

CHUNK_ROWS = 8
"""Batch rows per chunk: each chunk runs the whole time loop on its rows, the
chunks in parallel on ``dmem.get_num_threads()`` threads (the kernels and
numpy's products release the GIL).  Measured on 2 cores, small DNC (N = 16,
LSTM 64) at B = 16: one chunk 9.1 ms, two of 8 rows 5.4 ms, four of 4 rows
11.4 ms (each chunk's step is then mostly Python calls); on one thread, one
chunk and two take the same time."""

MAX_CHUNKS = 8
"""At most this many chunks: a large batch gets larger chunks."""


def _chunks(config, B):
    """``[(b0, b1), ...]``: the batch cut into balanced chunks (a function of ``B``
    only, so that results do not depend on the number of threads)."""
    return _chunks_mod.balanced(B, CHUNK_ROWS, MAX_CHUNKS)


_map = _chunks_mod.run


def _plan(anchor, config, T, B, dtype, train):
    """Chunks, one :class:`_Sequence` per chunk, and the threads that run them."""
    chunks = _chunks(config, B)
    total = get_num_threads()
    pool_threads = min(total, len(chunks))
    omp = max(1, total // len(chunks))
    itemsize = np.dtype(dtype).itemsize
    links = train and T * B * config.memory_slots ** 2 * itemsize > STORE_ALL_LINK_BYTES
    key = (config, T, B, np.dtype(dtype).str, omp, links)
    with _WORKSPACES_LOCK:
        entry = _WORKSPACES.pop(train, None)
    if entry is not None and entry[0]() is anchor and entry[1] == key:
        return chunks, entry[2], pool_threads
    del entry
    seqs = [_Sequence(config, T, b1 - b0, dtype, train, omp, links) for b0, b1 in chunks]
    return chunks, seqs, pool_threads


def _keep(anchor, config, seqs):
    if not REUSE_WORKSPACE:
        return
    train = seqs[0].train

    def drop(ref):
        with _WORKSPACES_LOCK:
            entry = _WORKSPACES.get(train)
            if entry is not None and entry[0] is ref:
                _WORKSPACES.pop(train, None)

    s = seqs[0]
    key = (config, s.T, sum(q.B for q in seqs), s.dtype.str, s.omp_threads,
           s.link_segments_asked)
    with _WORKSPACES_LOCK:
        _WORKSPACES[train] = (weakref.ref(anchor, drop), key, seqs)


def clear_workspaces():
    """Release the arrays kept from the last calls."""
    with _WORKSPACES_LOCK:
        _WORKSPACES.clear()


def forward(params, buffers, config, x):
    """Logits ``(T, B, O)`` of the DNC on ``x (T, B, I)`` with the compiled kernels."""
    anchor = params["output_W"]
    params = _check_params(params, config)
    dtype = params["output_W"].dtype
    T, B, _ = x.shape
    chunks, seqs, pool_threads = _plan(anchor, config, T, B, dtype, train=False)

    def run(c):
        (b0, b1), seq = chunks[c], seqs[c]
        seq.load(params, x[:, b0:b1])
        return seq.forward().copy()

    parts = _map(run, len(chunks), pool_threads)
    logits = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    _keep(anchor, config, seqs)
    return logits


def loss_and_grad(params, buffers, config, x, target, mask):
    """Masked sigmoid cross-entropy in bits and its gradient for every parameter."""
    anchor = params["output_W"]
    params = _check_params(params, config)
    dtype = params["output_W"].dtype
    T, B, _ = x.shape
    chunks, seqs, pool_threads = _plan(anchor, config, T, B, dtype, train=True)

    def run(c):
        (b0, b1), seq = chunks[c], seqs[c]
        seq.load(params, x[:, b0:b1])
        logits = seq.forward()
        m = mask[:, b0:b1, None]
        tg = target[:, b0:b1]
        loss = float(np.sum(m * (np.maximum(logits, 0) + np.log1p(np.exp(-np.abs(logits)))
                                 - tg * logits)) / (LN2 * B))
        with np.errstate(over="ignore"):
            sig = np.empty_like(logits)
            _sigmoid(logits, sig)
        dlogits = m * (sig - tg) / (LN2 * B)
        return loss, seq.backward(dlogits)

    loss, grads = _chunks_mod.sum_losses_and_grads(_map(run, len(chunks), pool_threads))
    _keep(anchor, config, seqs)
    return loss, grads
