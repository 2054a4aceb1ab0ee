"""The DNC's loss and gradient by hand-written backpropagation through time.

No autograd: the step of ``docs/models.md`` (controller → interface → usage,
allocation and write weighting → write → link_step → read weighting → read)
runs on the raw Cython kernels, and the backward pass walks the steps in
reverse with the matching backward kernels.  It computes exactly the function
of :mod:`dmem.reference.dnc`, which the tests check.

How it stays fast:

* every array of the sequence is allocated once, time-major, and the kernels
  write into it directly: no per-step validation, allocation or ``Saved``
  object (the shapes are fixed by the configuration, the parameters and ``x``
  are checked once per call).  The arrays are kept for the next call with the
  same model and sizes (see :data:`REUSE_WORKSPACE`): fresh memory costs page
  faults, a quarter of a large DNC's step;
* the products that do not feed the recurrence are batched over time: the
  logits are one matrix product after the forward loop, and the gradients of
  ``controller_W``, ``interface_W`` and ``output_W`` one product each over all
  ``T·B`` rows after the backward loop;
* usage, allocation and the write weighting are one kernel call per step
  (``dmem._kernels.allocation.write_weights_*``), and so is the read weighting
  (``dmem._kernels.linkage.read_weights_*``); the interface columns are
  regrouped by activation (linear, oneplus, σ, softmax) so that each
  activation is one numpy call per step; the derivatives of the activations
  are formed for all steps at once after the forward loop.

Threads.  When a memory is large (a chunk's link update of at least
:data:`CHUNK_MIN_WORK` inner steps), the batch is cut into chunks of at most
:data:`CHUNK_ROWS` rows, the cut depending on the configuration and ``B``
alone; each chunk runs the whole time loop on its rows in a pool of
``dmem.get_num_threads()`` threads (the kernels and numpy's products release
the GIL), and the loss and gradients are summed over the chunks in a fixed
order: results do not depend on the number of threads.  A small memory stays
one chunk: its step is mostly Python calls, which threads would take turns at.

Memory (``T·B·N²`` link values dominate; the ratio to them is what counts):

* each link matrix is stored once: ``L_t`` is the saved ``L_prev`` of step
  ``t+1``; the link steps run in :class:`dmem._kernels.dnc_step.LinkSequence`,
  which holds these arrays (checked once) and writes the stored matrices with
  non-temporal stores when they are too many to stay in cache.  ``L_0 = 0``
  and ``L_1 = 0`` (exactly: ``L_1,ij = (1 − w_i − w_j)·0 + w_i·p_0,j`` with
  ``p_0 = 0``) are not stored (the link kernels take None
  for a zero matrix), and the last step's output ``L_T``, which nothing reads,
  goes to the buffer that then carries the link cotangent backwards, updated
  in place step after step: ``T − 1`` link-sized arrays in all;
* when the memories ``M_t`` of all steps would take more than
  :data:`STORE_ALL_MEMORY_BYTES` and a twentieth of the link matrices, only
  every ``k``-th (``k ≈ √T``) is kept, and the backward recomputes the others
  segment by segment with the write kernel (deterministic: the same values,
  bit for bit);
* the read weightings are recomputed by the read-weighting kernel from the
  stored temporal and content weightings instead of being stored.
"""

import math
import threading
import weakref

import numpy as np

from . import _chunks as _chunks_mod
from ._backend import get_num_threads
from .compiled._common import threads

try:
    from ._kernels import addressing as _addressing
    from ._kernels import allocation as _allocation
    from ._kernels import linkage as _linkage
    from ._kernels import memory as _memory
    from ._kernels.dnc_step import LinkSequence
except ImportError:  # the extension is not built: only the reference backend runs
    _addressing = _allocation = _linkage = _memory = LinkSequence = None

LN2 = math.log(2.0)

STORE_ALL_MEMORY_BYTES = 8 << 20
"""Keep the memory of every step when all of them take at most this many bytes
or at most a twentieth of the link matrices; otherwise keep every ``k``-th
and recompute the others in the backward pass."""


PARALLEL_MIN_WORK = 1 << 18
"""Below this many inner-loop steps a kernel call of the BPTT runs on one thread.
A DNC step makes about fifteen kernel calls; waking sleeping OpenMP threads
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
    layout of ``docs/models.md``); ``pos[name]`` is a field's slice in the
    grouped vector; ``linear``, ``oneplus``, ``sigmoid`` and ``modes`` are the
    slices of the four groups.
    """

    def __init__(self, R, W):
        size = {"RW": R * W, "R": R, "W": W, "1": 1, "3R": 3 * R}
        columns, start = {}, 0
        for name, dims in _FIELDS:
            columns[name] = np.arange(start, start + size[dims])
            start += size[dims]
        self.size = start
        self.perm = np.concatenate([columns[name] for name in _GROUPED])
        self.pos, start = {}, 0
        for name in _GROUPED:
            n = len(columns[name])
            self.pos[name] = slice(start, start + n)
            start += n
        p = self.pos
        self.linear = slice(0, p["write_vector"].stop)
        self.oneplus = slice(p["read_strengths"].start, p["write_strength"].stop)
        self.sigmoid = slice(p["erase"].start, p["write_gate"].stop)
        self.modes = p["read_modes"]
        # the activated part (oneplus, sigmoid, modes) starts here
        self.active = p["read_strengths"].start


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
    so that the arrays can serve the next call with the same sizes.
    """

    def __init__(self, config, T, B, dtype, train, omp_threads=None):
        self.config = config
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
        RW = R * W
        self.RW = RW
        self.Z = I + RW
        self.scratch = {}
        empty = lambda *shape: np.empty(shape, dtype=dtype)  # noqa: E731

        # parameters, in the order the loops want them (filled by load)
        self.Wi = empty(C, K)
        self.bi = empty(K)
        self.Wo = empty(C + RW, config.output_size)

        # controller: zh[t] = [x_t, reads_{t-1}, h_{t-1}]; zh[t+1, :, I:] = [reads_t, h_t]
        self.zh = empty(T + 1, B, self.Z + C)
        if self.lstm:
            self.gates = empty(T, B, 4 * C)        # i, f, o (σ) and g (tanh)
            self.cell = empty(T + 1, B, C)
            self.tanh_cell = empty(T, B, C)
            self.tmp_c = empty(B, C)
        # interface (grouped columns): raw and activated
        self.xi = empty(T, B, K)
        self.act = empty(T, B, K - lay.active)
        self.read_keys = empty(T, B, R, W)
        self.read_strengths = empty(T, B, R)
        self.write_key = empty(T, B, 1, W)
        self.write_strength = empty(T, B, 1)
        self.erase = empty(T, B, 1, W)
        self.write_vector = empty(T, B, 1, W)
        # dynamic allocation and write weighting; usage[t], write_weights[t] are u_t, ww_t
        self.usage = empty(T + 1, B, N)
        self.write_weights = empty(T + 1, B, N)
        self.allocation = empty(T, B, N)
        self.order = np.empty((T, B, N), dtype=np.int64)
        self.prefix = empty(T, B, N)
        self.sort_work = np.empty((B, N), dtype=np.int64)
        # content weightings (write head on M_{t-1}, read heads on M_t) and what
        # their backward reads
        self.cw = empty(T, B, 1, N)
        self.cw_cos = empty(T, B, 1, N)
        self.cw_mnorm = empty(T, B, N)
        self.cw_knorm = empty(T, B, 1)
        self.cr = empty(T, B, R, N)
        self.cr_cos = empty(T, B, R, N)
        self.cr_mnorm = empty(T, B, N)
        self.cr_knorm = empty(T, B, R)
        self.cw_work = np.empty((B, 2 * N), dtype=np.float64)
        # temporal linkage: precedence[t] = p_t; forward/backward weightings of step t
        self.precedence = empty(T + 1, B, N)
        self.fwd = empty(T, B, R, N)
        self.bwd = empty(T, B, R, N)
        # read weightings: two rolling buffers (recomputed in the backward)
        self.wr = [empty(B, R, N), empty(B, R, N)]
        self.reads = empty(B, R, W)
        self.logits = empty(T, B, config.output_size)

        # link matrices: L_t for 2 <= t <= T-1 in link[t-2]; L_0 = L_1 = 0 are None;
        # the outputs L_1 and L_T, which nothing reads, go to link_grad (the
        # buffer of the link cotangent in the backward)
        if train:
            self.link = empty(max(T - 2, 0), B, N, N)
            self.link_grad = empty(B, N, N)
        else:
            self.link = None
            self.link_grad = empty(B, N, N)   # one matrix, updated in place

        # the link steps over these arrays, checked once
        self.links = LinkSequence(self.link, self.link_grad, self.precedence,
                                  self.write_weights, self.fwd, self.bwd)

        # memories: checkpoints M_{jk} (and M_T) plus the k - 1 memories of one segment
        m_bytes = B * N * W * dtype.itemsize
        link_bytes = T * B * N * N * dtype.itemsize
        if not train:
            k = 1  # inference: two buffers, M_t overwrites M_{t-2}
        elif (T + 1) * m_bytes <= max(STORE_ALL_MEMORY_BYTES, link_bytes // 20):
            k = T
        else:
            k = max(1, math.isqrt(T))
        self.k = k
        self.segments = -(-T // k)
        if train:
            self.mem_ck = empty(self.segments + 1, B, N, W)
            self.mem_seg = empty(max(k - 1, 0), B, N, W)
        else:
            self.mem_ck = empty(2, B, N, W)
            self.mem_seg = None

    def _set_threads(self):
        """Thread counts for this call: ``dmem.get_num_threads()`` (at most one per
        batch row) for kernels of at least :data:`PARALLEL_MIN_WORK` inner steps,
        else one.  Results do not depend on it."""
        B, N, W, R = self.B, self.N, self.W, self.R

        most = threads(B)
        if self.omp_threads is not None:
            most = max(1, min(most, self.omp_threads))

        def n(work):
            return most if work >= PARALLEL_MIN_WORK else 1

        self.th_link = n(B * N * N * (1 + R))
        self.th_cw = n(B * N * W)
        self.th_cr = n(B * R * N * W)
        self.th_read = n(B * R * N * W)
        self.th_read_b = n(2 * B * R * N * W)
        self.th_write = n(2 * B * N * W)
        self.th_write_b = n(6 * B * N * W)
        self.th_ww = n(2 * B * R * N + 8 * B * N)
        self.th_ww_b = n(4 * B * R * N + 4 * B * N)
        self.th_mix = n(3 * B * R * N)

    def load(self, params, x):
        """Take the parameters (already checked) and ``x``; zero the initial state."""
        lay, C, I, T = self.lay, self.C, self.I, self.T
        self.Wc = params["controller_W"]
        self.bc = params["controller_b"]
        np.take(params["interface_W"], lay.perm, axis=1, out=self.Wi)
        np.take(params["interface_b"], lay.perm, out=self.bi)
        # [h, reads] · output_W = [reads, h] · output_W with its row blocks swapped
        Wo = params["output_W"]
        self.Wo[:self.RW] = Wo[C:]
        self.Wo[self.RW:] = Wo[:C]
        self.bo = params["output_b"]
        zh = self.zh
        zh[:T, :, :I] = x
        zh[T, :, :I] = 0
        zh[0, :, I:] = 0
        if self.lstm:
            self.cell[0] = 0
        self.usage[0] = 0
        self.write_weights[0] = 0
        self.precedence[0] = 0
        self.mem_ck[0] = 0
        self.links.use_simd(_linkage.simd_level() != "baseline")
        self._set_threads()

    def buffer(self, name, shape, dtype=None, zero=False):
        """A work array of the backward, allocated at the first call (zeroed if asked)."""
        a = self.scratch.get(name)
        if a is None:
            a = self.scratch[name] = np.empty(shape, dtype=dtype or self.dtype)
        if zero:
            a.fill(0)
        return a

    # -- where things are ------------------------------------------------------------

    def memory(self, j):
        """The array holding ``M_j`` (0 <= j <= T) in the current segment."""
        if not self.train:
            return self.mem_ck[j % 2]
        k = self.k
        if j == self.T:
            return self.mem_ck[self.segments]
        if j % k == 0:
            return self.mem_ck[j // k]
        return self.mem_seg[j % k - 1]

    # -- forward ---------------------------------------------------------------------

    def forward(self):
        with np.errstate(over="ignore"):
            for t in range(self.T):
                self._controller(t)
                self._interface(t)
                self._memory_step(t)
        T, B = self.T, self.B
        hr = self.zh[1:, :, self.I:].reshape(T * B, -1)
        np.matmul(hr, self.Wo, out=self.logits.reshape(T * B, -1))
        self.logits += self.bo
        return self.logits

    def _controller(self, t):
        Z, C = self.Z, self.C
        zh = self.zh[t]
        h = self.zh[t + 1, :, Z:]
        if not self.lstm:
            np.matmul(zh[:, :Z], self.Wc, out=h)
            h += self.bc
            np.tanh(h, out=h)
            return
        a = self.gates[t]
        np.matmul(zh, self.Wc, out=a)
        a += self.bc
        ifo = a[:, :3 * C]
        _sigmoid(ifo, ifo)
        g = a[:, 3 * C:]
        np.tanh(g, out=g)
        c = self.cell[t + 1]
        np.multiply(a[:, C:2 * C], self.cell[t], out=c)
        np.multiply(a[:, :C], g, out=self.tmp_c)
        c += self.tmp_c
        tc = self.tanh_cell[t]
        np.tanh(c, out=tc)
        np.multiply(a[:, 2 * C:3 * C], tc, out=h)

    def _interface(self, t):
        lay, B, R = self.lay, self.B, self.R
        p = lay.pos
        h = self.zh[t + 1, :, self.Z:]
        xi = self.xi[t]
        np.matmul(h, self.Wi, out=xi)
        xi += self.bi
        act = self.act[t]
        a0 = lay.active
        op = act[:, lay.oneplus.start - a0:lay.oneplus.stop - a0]
        np.logaddexp(0.0, xi[:, lay.oneplus], out=op)
        op += 1.0
        sg = act[:, lay.sigmoid.start - a0:lay.sigmoid.stop - a0]
        _sigmoid(xi[:, lay.sigmoid], sg)
        xm = xi[:, lay.modes].reshape(B, R, 3)
        modes = act[:, lay.modes.start - a0:].reshape(B, R, 3)
        np.subtract(xm, xm.max(axis=-1, keepdims=True), out=modes)
        np.exp(modes, out=modes)
        modes /= modes.sum(axis=-1, keepdims=True)
        # the fields the memory kernels take as C-contiguous arrays
        self.read_keys[t] = xi[:, p["read_keys"]].reshape(B, R, self.W)
        self.write_key[t, :, 0] = xi[:, p["write_key"]]
        self.write_vector[t, :, 0] = xi[:, p["write_vector"]]
        self.read_strengths[t] = act[:, p["read_strengths"].start - a0:p["read_strengths"].stop - a0]
        self.write_strength[t] = act[:, p["write_strength"].start - a0:p["write_strength"].stop - a0]
        self.erase[t, :, 0] = sg[:, :self.W]

    def _gate_views(self, t):
        """free gates `(B, R)`, allocation and write gates `(B,)`: views of the activations."""
        lay, a0 = self.lay, self.lay.active
        act = self.act[t]
        p = lay.pos
        return (act[:, p["free_gates"].start - a0:p["free_gates"].stop - a0],
                act[:, p["allocation_gate"].start - a0],
                act[:, p["write_gate"].start - a0])

    def _modes(self, t):
        a0 = self.lay.active
        return self.act[t][:, self.lay.modes.start - a0:].reshape(self.B, self.R, 3)

    def _memory_step(self, t):
        B, N = self.B, self.N
        m_prev, m = self.memory(t), self.memory(t + 1)
        wr_prev, wr = self.wr[t % 2], self.wr[(t + 1) % 2]
        if t == 0:
            wr_prev[...] = 0
        _addressing.content_weights_forward(
            m_prev, self.write_key[t], self.write_strength[t], self.cw[t], self.cw_cos[t],
            self.cw_mnorm[t], self.cw_knorm[t], self.cw_work, self.th_cw)
        free, ga, gw = self._gate_views(t)
        ww = self.write_weights[t + 1]
        _allocation.write_weights_forward(
            self.usage[t], self.write_weights[t], wr_prev, free, ga, gw,
            self.cw[t].reshape(B, N), self.usage[t + 1], self.allocation[t], self.order[t],
            self.prefix[t], self.sort_work, ww, self.th_ww)
        _memory.write_forward(m_prev, ww.reshape(B, 1, N), self.erase[t], self.write_vector[t], m,
                              self.th_write)
        self.links.forward(t, wr_prev, self.th_link)
        _addressing.content_weights_forward(
            m, self.read_keys[t], self.read_strengths[t], self.cr[t], self.cr_cos[t],
            self.cr_mnorm[t], self.cr_knorm[t], self.cw_work, self.th_cr)
        _linkage.read_weights_forward(self._modes(t), self.bwd[t], self.cr[t], self.fwd[t], wr,
                                      self.th_mix)
        _memory.read_forward(m, wr, self.reads, self.th_read)
        self.zh[t + 1, :, self.I:self.Z] = self.reads.reshape(B, self.RW)

    # -- backward --------------------------------------------------------------------

    def backward(self, dlogits):
        """Gradients of every parameter from those of the logits `(T, B, O)`."""
        T, B, N, W, R, C, I, Z = (self.T, self.B, self.N, self.W, self.R, self.C, self.I,
                                  self.Z)
        RW, lay = self.RW, self.lay
        K = lay.size
        buf = self.buffer

        # outputs: one product over all steps
        dl2 = dlogits.reshape(T * B, -1)
        dhr = buf("dhr", (T, B, RW + C))                      # [reads_t, h_t]
        np.matmul(dl2, self.Wo.T, out=dhr.reshape(T * B, RW + C))
        grad_wo = self.zh[1:, :, I:].reshape(T * B, -1).T @ dl2
        # derivatives of the interface activations and of the controller, all steps at once
        a0 = lay.active
        act_gate = self.act[:, :, :lay.sigmoid.stop - a0]
        dact = buf("dact", act_gate.shape)
        n_op = lay.oneplus.stop - lay.oneplus.start
        _sigmoid(self.xi[:, :, lay.oneplus], dact[:, :, :n_op])     # oneplus' = σ
        s = act_gate[:, :, n_op:]
        np.subtract(1.0, s, out=dact[:, :, n_op:])
        dact[:, :, n_op:] *= s                                        # σ' = σ(1 − σ)
        if self.lstm:
            gates4 = self.gates.reshape(T, B, 4, C)
            i, f, o, g = gates4[:, :, 0], gates4[:, :, 1], gates4[:, :, 2], gates4[:, :, 3]
            tc = self.tanh_cell
            tmp = buf("tmp_tbc", (T, B, C))
            k_out = buf("k_out", (T, B, C))                  # dc/dh through h = o tanh(c)
            np.multiply(tc, tc, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            np.multiply(o, tmp, out=k_out)
            dgate = buf("dgate", (T, B, 4, C))                # da = dc dgate (o: dh dgate)
            for q, (x, y) in enumerate([(g, i), (self.cell[:T], f), (tc, o)]):
                np.subtract(1.0, y, out=tmp)
                tmp *= y
                np.multiply(x, tmp, out=dgate[:, :, q])
            np.multiply(g, g, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            np.multiply(i, tmp, out=dgate[:, :, 3])
            da = buf("da", (T, B, 4 * C))
            dc = buf("dc", (B, C))
            dc_next = buf("dc_next", (B, C), zero=True)
        else:
            hs = self.zh[1:, :, Z:]
            dgate = buf("dgate", (T, B, C))
            np.multiply(hs, hs, out=dgate)
            np.subtract(1.0, dgate, out=dgate)
            da = buf("da", (T, B, C))
        dxi = buf("dxi", (T, B, K))

        # state cotangents (of the values after step t, flowing into step t)
        d_mem = buf("d_mem", (B, N, W), zero=True)
        d_mem_prev = buf("d_mem_prev", (B, N, W))
        d_mem_r = buf("d_mem_r", (B, N, W))
        d_mem_c = buf("d_mem_c", (B, N, W))
        d_wr_next = buf("d_wr_next", (B, R, N), zero=True)
        d_wr = buf("d_wr", (B, R, N))
        d_wr_read = buf("d_wr_read", (B, R, N))
        d_wr_link = buf("d_wr_link", (B, R, N))
        d_wr_usage = buf("d_wr_usage", (B, R, N))
        d_ww_next = buf("d_ww_next", (B, N), zero=True)
        d_ww_prev = buf("d_ww_prev", (B, N))
        d_ww_link = buf("d_ww_link", (B, N))
        d_ww_write = buf("d_ww_write", (B, 1, N))
        d_ww = buf("d_ww", (B, N))
        d_u_next = buf("d_u_next", (B, N), zero=True)
        d_u_prev = buf("d_u_prev", (B, N))
        d_p = buf("d_p", (B, N), zero=True)
        d_p_prev = buf("d_p_prev", (B, N))
        d_reads = buf("d_reads", (B, R, W))
        d_back = buf("d_back", (B, R, N))
        d_content = buf("d_content", (B, R, N))
        d_fwd = buf("d_fwd", (B, R, N))
        d_cw = buf("d_cw", (B, 1, N))
        d_rk = buf("d_rk", (B, R, W))
        d_rs = buf("d_rs", (B, R))
        d_wk = buf("d_wk", (B, 1, W))
        d_ws = buf("d_ws", (B, 1))
        d_erase = buf("d_erase", (B, 1, W))
        d_wv = buf("d_wv", (B, 1, W))
        d_h = buf("d_h", (B, C))
        d_zh = buf("d_zh", (B, Z + C), zero=True)
        tmp_modes = buf("tmp_modes", (B, R, 3))
        cw_work = buf("cw_work", (B, 3 * N + W), np.float64)
        write_work = buf("write_work", (B, 2, W))
        ww_work = buf("ww_work", (B, 2 * N + R + 2))
        wr_cur, wr_prev = buf("wr_cur", (B, R, N)), buf("wr_prev", (B, R, N))
        p = lay.pos

        with np.errstate(over="ignore"):
            # wr_T, the read weighting of the last step
            self._read_weights(T - 1, wr_cur)
            for seg in range(self.segments - 1, -1, -1):
                start, stop = seg * self.k, min((seg + 1) * self.k, T)
                if seg < self.segments - 1:
                    self._recompute_memory(start, stop)
                for t in range(stop - 1, start - 1, -1):
                    m_prev, m = self.memory(t), self.memory(t + 1)
                    if t > 0:
                        self._read_weights(t - 1, wr_prev)
                    else:
                        wr_prev[...] = 0
                    # reads_t = read(M_{t+1}, wr_{t+1}); its cotangent from y_t and z_{t+1}
                    np.add(dhr[t, :, :RW], d_zh[:, I:Z], out=d_reads.reshape(B, RW))
                    _memory.read_backward(m, wr_cur, d_reads, d_mem_r, d_wr_read,
                                          self.th_read_b)
                    np.add(d_wr_read, d_wr_next, out=d_wr)
                    dx = dxi[t]
                    d_modes = dx[:, lay.modes].reshape(B, R, 3)
                    _linkage.read_weights_backward(self._modes(t), self.bwd[t], self.cr[t],
                                                   self.fwd[t], d_wr, d_modes, d_back,
                                                   d_content, d_fwd, self.th_mix)
                    _addressing.content_weights_backward(
                        m, self.read_keys[t], self.read_strengths[t], self.cr[t], self.cr_cos[t],
                        self.cr_mnorm[t], self.cr_knorm[t], d_content, d_mem_c, d_rk, d_rs,
                        cw_work, self.th_cr)
                    d_mem += d_mem_r
                    d_mem += d_mem_c
                    # the link cotangent (of L_{t+1}, zero at t = T-1) becomes that of
                    # L_t in place in link_grad (dmem._kernels.dnc_step.LinkSequence)
                    self.links.backward(t, wr_prev, d_p, d_fwd, d_back, d_p_prev, d_ww_link,
                                        d_wr_link, self.th_link)
                    d_p, d_p_prev = d_p_prev, d_p
                    ww = self.write_weights[t + 1]
                    _memory.write_backward(m_prev, ww.reshape(B, 1, N), self.erase[t],
                                           self.write_vector[t], d_mem, d_mem_prev, d_ww_write,
                                           d_erase, d_wv, write_work, self.th_write_b)
                    np.add(d_ww_link, d_ww_write.reshape(B, N), out=d_ww)
                    d_ww += d_ww_next
                    free, ga, gw = self._gate_views(t)
                    d_free, d_ga, d_gw = self._grad_gate_views(dx)
                    _allocation.write_weights_backward(
                        self.usage[t], self.write_weights[t], wr_prev, free, ga, gw,
                        self.cw[t].reshape(B, N), self.usage[t + 1], self.allocation[t],
                        self.order[t], self.prefix[t], d_ww, d_u_next, d_u_prev, d_ww_prev,
                        d_wr_usage, d_free, d_ga, d_gw, d_cw.reshape(B, N), ww_work,
                        self.th_ww_b)
                    d_u_next, d_u_prev = d_u_prev, d_u_next
                    d_ww_next, d_ww_prev = d_ww_prev, d_ww_next
                    _addressing.content_weights_backward(
                        m_prev, self.write_key[t], self.write_strength[t], self.cw[t],
                        self.cw_cos[t], self.cw_mnorm[t], self.cw_knorm[t], d_cw, d_mem_c, d_wk,
                        d_ws, cw_work, self.th_cw)
                    np.add(d_mem_prev, d_mem_c, out=d_mem)
                    np.add(d_wr_link, d_wr_usage, out=d_wr_next)
                    wr_cur, wr_prev = wr_prev, wr_cur
                    # interface: the linear fields, then oneplus and σ derivatives, then softmax
                    dx[:, p["read_keys"]] = d_rk.reshape(B, RW)
                    dx[:, p["write_key"]] = d_wk.reshape(B, W)
                    dx[:, p["write_vector"]] = d_wv.reshape(B, W)
                    dx[:, p["read_strengths"]] = d_rs
                    dx[:, p["write_strength"]] = d_ws
                    dx[:, p["erase"]] = d_erase.reshape(B, W)
                    dx[:, lay.oneplus.start:lay.sigmoid.stop] *= dact[t]
                    modes = self._modes(t)
                    np.multiply(modes, d_modes, out=tmp_modes)
                    d_modes -= tmp_modes.sum(axis=-1, keepdims=True)
                    d_modes *= modes
                    # controller
                    np.matmul(dx, self.Wi.T, out=d_h)
                    d_h += dhr[t, :, RW:]
                    d_h += d_zh[:, Z:]
                    if self.lstm:
                        np.multiply(d_h, k_out[t], out=dc)
                        dc += dc_next
                        d4 = da[t].reshape(B, 4, C)
                        np.multiply(dgate[t], dc[:, None, :], out=d4)
                        np.multiply(d_h, dgate[t, :, 2], out=d4[:, 2])
                        np.multiply(dc, f[t], out=dc_next)
                        np.matmul(da[t], self.Wc.T, out=d_zh)
                    else:
                        np.multiply(d_h, dgate[t], out=da[t])
                        np.matmul(da[t], self.Wc.T, out=d_zh[:, :Z])

        # parameter gradients: one product over all T·B rows each
        TB = T * B
        grads = {}
        zh = self.zh[:T].reshape(TB, -1)
        if not self.lstm:
            zh = zh[:, :Z]
        da2 = da.reshape(TB, -1)
        grads["controller_W"] = zh.T @ da2
        grads["controller_b"] = da2.sum(axis=0)
        dxi2 = dxi.reshape(TB, K)
        grad_wi = self.zh[1:, :, Z:].reshape(TB, C).T @ dxi2
        grad_bi = dxi2.sum(axis=0)
        grads["interface_W"] = np.empty_like(grad_wi)
        grads["interface_W"][:, lay.perm] = grad_wi
        grads["interface_b"] = np.empty_like(grad_bi)
        grads["interface_b"][lay.perm] = grad_bi
        grads["output_W"] = np.concatenate([grad_wo[RW:], grad_wo[:RW]])
        grads["output_b"] = dl2.sum(axis=0)
        return grads

    def _grad_gate_views(self, dx):
        p = self.lay.pos
        return (dx[:, p["free_gates"]], dx[:, p["allocation_gate"].start],
                dx[:, p["write_gate"].start])

    def _read_weights(self, t, out):
        """Recompute ``wr_{t+1}``, the read weighting of step ``t``, into ``out``."""
        _linkage.read_weights_forward(self._modes(t), self.bwd[t], self.cr[t], self.fwd[t], out,
                                      self.th_mix)

    def _recompute_memory(self, start, stop):
        """The memories ``M_{start+1} .. M_{stop-1}`` of a segment, from ``M_start``."""
        B, N = self.B, self.N
        for t in range(start, stop - 1):
            _memory.write_forward(self.memory(t), self.write_weights[t + 1].reshape(B, 1, N),
                                  self.erase[t], self.write_vector[t], self.memory(t + 1),
                                  self.th_write)


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
numpy's products release the GIL)."""

MAX_CHUNKS = 8
"""At most this many chunks: a large batch gets larger chunks."""

CHUNK_MIN_WORK = 1 << 18
"""The batch is cut into chunks only when a chunk's link update (``N²·(1 + R)``
per row) takes at least this many inner steps; below, one chunk."""


def _chunks(config, B):
    """``[(b0, b1), ...]``: the batch cut into balanced chunks (a function of the
    configuration and ``B`` only, so that results do not depend on the number of
    threads).  A small memory is one chunk: its step is mostly Python calls, which
    two threads would take turns at under the GIL."""
    N, R = config.memory_slots, config.read_heads
    if N * N * (1 + R) * CHUNK_ROWS < CHUNK_MIN_WORK:
        return [(0, B)]
    return _chunks_mod.balanced(B, CHUNK_ROWS, MAX_CHUNKS)


_map = _chunks_mod.run


def _plan(anchor, config, T, B, dtype, train):
    """Chunks, one :class:`_Sequence` per chunk, and the threads that run them."""
    chunks = _chunks(config, B)
    total = get_num_threads()
    pool_threads = min(total, len(chunks))
    omp = max(1, total // len(chunks))
    key = (config, T, B, np.dtype(dtype).str, omp)
    with _WORKSPACES_LOCK:
        entry = _WORKSPACES.pop(train, None)
    if entry is not None and entry[0]() is anchor and entry[1] == key:
        return chunks, entry[2], pool_threads
    del entry
    seqs = [_Sequence(config, T, b1 - b0, dtype, train, omp) for b0, b1 in chunks]
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
    key = (config, s.T, sum(q.B for q in seqs), s.dtype.str, s.omp_threads)
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
