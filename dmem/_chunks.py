"""Batch chunks for the compiled models' BPTT, and the thread pool that runs them.

Both :mod:`dmem._ntm_bptt` and :mod:`dmem._dnc_bptt` cut the batch into chunks
that depend on the batch size alone (never on the thread count, so results do
not either), run each chunk's whole time loop on one thread of a pool kept
between calls, and sum the chunks' results in a fixed order.
"""

import concurrent.futures
import os
import threading

_pool = {"pid": None, "size": 0, "executor": None}
_pool_lock = threading.Lock()


def balanced(B, rows, max_chunks):
    """``[(b0, b1), ...]``: ``B`` rows cut into ``min(ceil(B / rows), max_chunks)``
    chunks whose sizes differ by at most one."""
    n = max(1, min(-(-B // rows), max_chunks))
    edges = [B * i // n for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]


def run(fn, n, nthreads):
    """``[fn(0), ..., fn(n-1)]``, on up to ``nthreads`` threads (a pool kept between calls)."""
    if nthreads <= 1 or n <= 1:
        return [fn(c) for c in range(n)]
    with _pool_lock:
        # A pool made before a fork has no threads in the child: make another.
        if _pool["pid"] != os.getpid() or _pool["size"] != nthreads:
            if _pool["executor"] is not None and _pool["pid"] == os.getpid():
                _pool["executor"].shutdown(wait=False)
            _pool.update(pid=os.getpid(), size=nthreads,
                         executor=concurrent.futures.ThreadPoolExecutor(
                             nthreads, thread_name_prefix="dmem-bptt"))
        executor = _pool["executor"]
    return list(executor.map(fn, range(n)))


def sum_losses_and_grads(parts):
    """``(loss, grads)`` summed over the chunks' ``[(loss, grads), ...]`` in order
    (into the first chunk's arrays)."""
    loss, grads = parts[0]
    for part_loss, part_grads in parts[1:]:
        loss += part_loss
        for k in grads:
            grads[k] += part_grads[k]
    return loss, grads
