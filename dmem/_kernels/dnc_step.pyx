"""The DNC's temporal linkage over a whole sequence, for backpropagation through time.

``LinkSequence`` holds the time-major arrays of the link step of one DNC
forward/backward pass (``dmem/_dnc_bptt.py``), checked once when it is made
(shapes, dtype, C-contiguity, no overlap), and runs the link step of one time
step forward (``L_{t+1}, p_{t+1}, f_t, b_t`` from ``L_t, p_t, ww_{t+1},
wr_t``) or backward.  Each call checks the step index and the shapes of the
per-step arrays it is given, then runs ``nogil`` over batch rows.

Equations (DNC Methods, as in :mod:`dmem._kernels.linkage`)::

    p    = (1 − Σ_i w_i) p_prev + w
    L_ij = (1 − w_i − w_j) L_prev,ij + w_i p_prev,j,   L_ii = 0
    f_r  = L w_r,   b_r = Lᵀ w_r

The N×N loops are those of ``linkage_simd.h`` (AVX2/FMA when the CPU has it
and :func:`dmem._kernels.linkage.simd_level` says so; :meth:`LinkSequence.use_simd`).

Storage (training): ``link[t − 2]`` holds ``L_t`` for ``2 <= t <= T − 1``;
``L_0 = L_1 = 0`` are not stored, and ``L_T`` (read by nothing) goes to
``link_grad``, the buffer that then carries the link cotangent backwards, in
place.  The stored matrices are not read again before the backward pass: when
they take at least :data:`STREAM_MIN_BYTES` in all they are written with
non-temporal stores, which skip reading the destination lines first.
Inference (``link`` None): ``link_grad`` holds ``L_t``, updated in place.

Every batch row is one thread's work (``prange`` over rows), rows of the link
matrix in increasing order: results do not depend on the thread count.
"""

from cython cimport floating
from cython.parallel cimport prange
from dmem._kernels.linkage_simd cimport (
    dmem_link_forward_d, dmem_link_forward_f, dmem_link_backward_d, dmem_link_backward_f,
    dmem_linkage_simd_supported, dmem_linkage_set_simd, dmem_linkage_get_simd)


dmem_linkage_set_simd(1)

STREAM_MIN_BYTES = 32 * 1024 * 1024
"""Stored link matrices taking at least this many bytes in all (``(T − 2)·B·N²``
values) are written with non-temporal stores."""


# ----------------------------------------------------------------------------
# One batch row
# ----------------------------------------------------------------------------

cdef inline floating _keep(const floating* w, Py_ssize_t n) noexcept nogil:
    """1 − Σ_i w_i, summed in index order."""
    cdef floating s = 0
    cdef Py_ssize_t i
    for i in range(n):
        s = s + w[i]
    return 1 - s


cdef int _forward_row(const floating* lp, const floating* pp, const floating* w,
                      const floating* wr, floating* L, floating* p, floating* f,
                      floating* bw, Py_ssize_t n, Py_ssize_t nr, int nt) noexcept nogil:
    """Link step of one batch row; -1 when scratch memory cannot be allocated."""
    cdef int status
    cdef floating keep
    cdef Py_ssize_t j
    if floating is double:
        status = dmem_link_forward_d(lp, pp, w, wr, L, f, bw, n, nr, nt)
    else:
        status = dmem_link_forward_f(lp, pp, w, wr, L, f, bw, n, nr, nt)
    keep = _keep(w, n)
    for j in range(n):
        p[j] = keep * pp[j] + w[j]
    return status


cdef int _backward_row(const floating* lp, const floating* pp, const floating* w,
                       const floating* wr, const floating* dL, const floating* dp,
                       const floating* df, const floating* db, floating* dlp,
                       floating* dpp, floating* dw, floating* dwr, Py_ssize_t n,
                       Py_ssize_t nr) noexcept nogil:
    """Backward of the link step of one batch row (link, then precedence added)."""
    cdef int status
    cdef floating keep, shared = 0
    cdef Py_ssize_t j
    if floating is double:
        status = dmem_link_backward_d(lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n, nr, 0)
    else:
        status = dmem_link_backward_f(lp, pp, w, wr, dL, df, db, dlp, dw, dpp, dwr, n, nr, 0)
    # precedence: dp_prev += (1 − Σw) dp ;  dw += dp − dp·p_prev
    keep = _keep(w, n)
    for j in range(n):
        shared = shared + dp[j] * pp[j]
    for j in range(n):
        dpp[j] = dpp[j] + keep * dp[j]
        dw[j] = dw[j] + (dp[j] - shared)
    return status


# ----------------------------------------------------------------------------
# Checks (before any boundscheck(False) code)
# ----------------------------------------------------------------------------

def _check(a, shape, dtype, name):
    import numpy as np

    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, not {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, not {a.dtype}")
    if a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, not {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writable")


cdef class LinkSequence:
    """Link steps of a DNC sequence over time-major arrays, checked once.

    Arguments (one float dtype, C-contiguous, writable, no two overlapping):
    ``link`` `(T − 2, B, N, N)` or None (inference: no storage),
    ``link_grad`` `(B, N, N)`, ``precedence`` `(T + 1, B, N)`,
    ``write_weights`` `(T + 1, B, N)` (``write_weights[t]`` is ``ww_t``),
    ``forward_weights``, ``backward_weights`` `(T, B, R, N)`.
    The arrays are kept (referenced) by the object.
    """

    cdef readonly Py_ssize_t T, B, N, R
    cdef readonly object dtype
    cdef readonly bint train
    cdef int simd
    cdef int stream
    cdef object arrays
    cdef object link, link_grad, precedence, write_weights, forward_weights, backward_weights

    def __init__(self, link, link_grad, precedence, write_weights, forward_weights,
                 backward_weights):
        import numpy as np

        if not isinstance(precedence, np.ndarray) or precedence.ndim != 3:
            raise ValueError("precedence must be a numpy array of shape (T + 1, B, N)")
        if not isinstance(forward_weights, np.ndarray) or forward_weights.ndim != 4:
            raise ValueError("forward_weights must be a numpy array of shape (T, B, R, N)")
        dtype = precedence.dtype
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"the arrays must be float32 or float64, not {dtype}")
        T1, B, N = precedence.shape
        T = T1 - 1
        R = forward_weights.shape[2]
        if T < 1 or B < 1 or N < 1 or R < 1:
            raise ValueError("T, B, N and R must be at least 1")
        arrays = [(precedence, (T + 1, B, N), "precedence"),
                  (write_weights, (T + 1, B, N), "write_weights"),
                  (forward_weights, (T, B, R, N), "forward_weights"),
                  (backward_weights, (T, B, R, N), "backward_weights"),
                  (link_grad, (B, N, N), "link_grad")]
        if link is not None:
            arrays.append((link, (max(T - 2, 0), B, N, N), "link"))
        for a, shape, name in arrays:
            _check(a, shape, dtype, name)
        _check_disjoint([(a, name) for a, _, name in arrays])
        self.T, self.B, self.N, self.R = T, B, N, R
        self.dtype = dtype
        self.train = link is not None
        self.link, self.link_grad = link, link_grad
        self.precedence, self.write_weights = precedence, write_weights
        self.forward_weights, self.backward_weights = forward_weights, backward_weights
        self.simd = dmem_linkage_get_simd()
        self.stream = 1 if (link is not None and link.nbytes >= STREAM_MIN_BYTES) else 0

    def use_simd(self, bint enabled):
        """Use the AVX2/FMA loops (when the CPU has them) or the baseline ones."""
        self.simd = dmem_linkage_simd_supported() if enabled else 0

    def _step_checks(self, Py_ssize_t t, list args):
        if t < 0 or t >= self.T:
            raise ValueError(f"step {t} out of range [0, {self.T})")
        for a, shape, name in args:
            _check(a, shape, self.dtype, name)

    def forward(self, Py_ssize_t t, read_weights_prev, int num_threads=1):
        """Step ``t``: ``L_{t+1}``, ``p_{t+1}``, ``forward_weights[t]``,
        ``backward_weights[t]`` from ``L_t``, ``p_t``, ``ww_{t+1}`` and
        ``read_weights_prev`` `(B, R, N)` (``wr_t``)."""
        self._step_checks(t, [(read_weights_prev, (self.B, self.R, self.N),
                               "read_weights_prev")])
        _check_disjoint([(read_weights_prev, "read_weights_prev"),
                         (self.precedence, "precedence"), (self.link_grad, "link_grad"),
                         (self.forward_weights, "forward_weights"),
                         (self.backward_weights, "backward_weights")]
                        + ([(self.link, "link")] if self.train else []), 1)
        if self.dtype.itemsize == 8:
            self._forward[double](t, read_weights_prev, num_threads)
        else:
            self._forward[float](t, read_weights_prev, num_threads)

    def backward(self, Py_ssize_t t, read_weights_prev, grad_precedence, grad_forward,
                 grad_backward, grad_precedence_prev, grad_write_weights,
                 grad_read_weights_prev, int num_threads=1):
        """Backward of step ``t``: the link cotangent (of ``L_{t+1}``, in
        ``link_grad``; zero when ``t = T − 1``) becomes that of ``L_t`` in place;
        ``grad_precedence_prev`` `(B, N)`, ``grad_write_weights`` `(B, N)` (of
        ``ww_{t+1}``) and ``grad_read_weights_prev`` `(B, R, N)` are written from
        ``grad_precedence`` `(B, N)` and ``grad_forward``, ``grad_backward``
        `(B, R, N)`.  Training sequences only."""
        B, N, R = self.B, self.N, self.R
        if not self.train:
            raise ValueError("backward needs a training sequence (link storage)")
        self._step_checks(t, [(read_weights_prev, (B, R, N), "read_weights_prev"),
                              (grad_precedence, (B, N), "grad_precedence"),
                              (grad_forward, (B, R, N), "grad_forward"),
                              (grad_backward, (B, R, N), "grad_backward"),
                              (grad_precedence_prev, (B, N), "grad_precedence_prev"),
                              (grad_write_weights, (B, N), "grad_write_weights"),
                              (grad_read_weights_prev, (B, R, N), "grad_read_weights_prev")])
        _check_disjoint([(grad_precedence_prev, "grad_precedence_prev"),
                         (grad_write_weights, "grad_write_weights"),
                         (grad_read_weights_prev, "grad_read_weights_prev"),
                         (grad_precedence, "grad_precedence"),
                         (grad_forward, "grad_forward"), (grad_backward, "grad_backward"),
                         (read_weights_prev, "read_weights_prev"),
                         (self.link_grad, "link_grad")], 3)
        if self.dtype.itemsize == 8:
            self._backward[double](t, read_weights_prev, grad_precedence, grad_forward,
                                   grad_backward, grad_precedence_prev, grad_write_weights,
                                   grad_read_weights_prev, num_threads)
        else:
            self._backward[float](t, read_weights_prev, grad_precedence, grad_forward,
                                  grad_backward, grad_precedence_prev, grad_write_weights,
                                  grad_read_weights_prev, num_threads)

    cdef _forward(self, Py_ssize_t t, const floating[:, :, ::1] wr, int num_threads):
        cdef Py_ssize_t B = self.B, N = self.N, R = self.R, T = self.T, b
        cdef Py_ssize_t stride = N * N
        cdef floating[:, :, :, ::1] link
        cdef floating[:, :, ::1] link_grad = self.link_grad
        cdef floating[:, :, ::1] prec = self.precedence
        cdef floating[:, :, ::1] ww = self.write_weights
        cdef floating[:, :, :, ::1] fwd = self.forward_weights
        cdef floating[:, :, :, ::1] bwd = self.backward_weights
        cdef const floating* lp = NULL
        cdef floating* out = &link_grad[0, 0, 0]
        cdef int nt = 0, failed = 0
        if self.train:
            link = self.link
            if t >= 2:
                lp = &link[t - 2, 0, 0, 0]
            if 2 <= t + 1 <= T - 1:
                out = &link[t - 1, 0, 0, 0]
                nt = self.stream
        elif t >= 1:
            lp = out  # inference: in place (L_1 is written over a zero start)
        dmem_linkage_set_simd(self.simd)
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            if _forward_row((lp + b * stride) if lp != NULL else NULL, &prec[t, b, 0],
                            &ww[t + 1, b, 0], &wr[b, 0, 0], out + b * stride,
                            &prec[t + 1, b, 0], &fwd[t, b, 0, 0], &bwd[t, b, 0, 0],
                            N, R, nt) != 0:
                failed = 1
        if failed:
            raise MemoryError("dmem.dnc_step: could not allocate the kernel's scratch rows")

    cdef _backward(self, Py_ssize_t t, const floating[:, :, ::1] wr,
                   const floating[:, ::1] dp, const floating[:, :, ::1] df,
                   const floating[:, :, ::1] db, floating[:, ::1] dpp, floating[:, ::1] dw,
                   floating[:, :, ::1] dwr, int num_threads):
        cdef Py_ssize_t B = self.B, N = self.N, R = self.R, T = self.T, b
        cdef Py_ssize_t stride = N * N
        cdef floating[:, :, :, ::1] link = self.link
        cdef floating[:, :, ::1] link_grad = self.link_grad
        cdef floating[:, :, ::1] prec = self.precedence
        cdef floating[:, :, ::1] ww = self.write_weights
        cdef const floating* lp = NULL
        cdef const floating* dl = NULL
        cdef floating* dlp = NULL
        cdef int failed = 0
        if t >= 2:
            lp = &link[t - 2, 0, 0, 0]
        if t < T - 1:
            dl = &link_grad[0, 0, 0]
        if t > 0:
            dlp = &link_grad[0, 0, 0]
        dmem_linkage_set_simd(self.simd)
        for b in prange(B, nogil=True, schedule="static", num_threads=num_threads):
            if _backward_row((lp + b * stride) if lp != NULL else NULL, &prec[t, b, 0],
                             &ww[t + 1, b, 0], &wr[b, 0, 0],
                             (dl + b * stride) if dl != NULL else NULL, &dp[b, 0],
                             &df[b, 0, 0], &db[b, 0, 0],
                             (dlp + b * stride) if dlp != NULL else NULL, &dpp[b, 0],
                             &dw[b, 0], &dwr[b, 0, 0], N, R) != 0:
                failed = 1
        if failed:
            raise MemoryError("dmem.dnc_step: could not allocate the kernel's scratch rows")


def _check_disjoint(named, Py_ssize_t outputs=-1):
    """ValueError if two of the arrays share memory (C-contiguous arrays: their
    address ranges overlap); with ``outputs``, only pairs with one of the first
    ``outputs`` arrays are checked."""
    import numpy as np

    cdef Py_ssize_t n = len(named) if outputs < 0 else outputs
    for i in range(n):
        for j in range(i + 1, len(named)):
            if np.may_share_memory(named[i][0], named[j][0]):
                raise ValueError(f"{named[i][1]} and {named[j][1]} overlap")
