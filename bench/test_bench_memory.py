"""Benchmarks of the memory read and write: compiled kernels beside the autograd reference.

Groups are ``"<op> <fwd|fwd+bwd>|B=..,N=..,H=.."`` with W = 20; within a
group the implementation (``compiled`` or ``reference``) is in the test id
and in ``extra_info``.
"""

import importlib

import numpy as np
import pytest
from autograd import make_vjp

compiled = importlib.import_module("dmem.compiled.memory")
reference = importlib.import_module("dmem.reference.memory")

W = 20
BATCHES = [1, 16]
SLOTS = [16, 64, 128, 256, 1024]
HEADS = [1, 4]
IMPLEMENTATIONS = ["compiled", "reference"]


def make_inputs(op, rng, B, N, H):
    memory = rng.standard_normal((B, N, W))
    weights = rng.dirichlet([0.5] * N, size=(B, H))
    if op == "read":
        return (memory, weights)
    erase = rng.uniform(0, 1, (B, H, W))
    add = rng.standard_normal((B, H, W))
    return (memory, weights, erase, add)


def forward_fn(op, implementation):
    if implementation == "compiled":
        fwd = getattr(compiled, op + "_forward")
        return lambda inputs, cotangent: fwd(*inputs)
    ref = getattr(reference, op)
    return lambda inputs, cotangent: ref(*inputs)


def forward_backward_fn(op, implementation):
    if implementation == "compiled":
        fwd = getattr(compiled, op + "_forward")
        bwd = getattr(compiled, op + "_backward")

        def run(inputs, cotangent):
            _, saved = fwd(*inputs)
            return bwd(saved, cotangent)

        return run
    ref = getattr(reference, op)

    def run(inputs, cotangent):
        vjp, _ = make_vjp(lambda args: ref(*args))(inputs)
        return vjp(cotangent)

    return run


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("H", HEADS)
@pytest.mark.parametrize("N", SLOTS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", ["read", "write"])
def test_bench(record, rng, op, mode, B, N, H, implementation):
    inputs = make_inputs(op, rng, B, N, H)
    cotangent = rng.standard_normal((B, H, W) if op == "read" else (B, N, W))
    make = forward_fn if mode == "fwd" else forward_backward_fn
    run = make(op, implementation)
    benchmark = record(f"{op} {mode}|B={B},N={N},H={H}", implementation)
    result = benchmark(run, inputs, cotangent)
    assert result is not None


# The read's data at B=16, N=128, W=20 (float64) is 320 KiB per (B, N, W) array
# and stays in cache between calls.  The bandwidth of a triad a = b + s c on three
# arrays of that size, in the same run, gives the floor of a memory op there: the
# bytes its forward+backward must touch / that bandwidth (docs/benchmarks.md).
CACHE_TRIAD_VALUES = 16 * 128 * W


def triad(a, b, c, s=3.0, block=4096):
    """a = b + s c in blocks (the temporary ``s c`` stays in L1): read b and c, write a."""
    tmp = np.empty(block)
    for k in range(0, a.size, block):
        t = tmp[: min(block, a.size - k)]
        np.multiply(c[k:k + block], s, out=t)
        np.add(b[k:k + block], t, out=a[k:k + block])
    return a


def test_bench_triad_in_cache(record, rng):
    a, b, c = (rng.standard_normal(CACHE_TRIAD_VALUES) for _ in range(3))
    benchmark = record("triad in cache|3x320KiB", "numpy")
    benchmark.extra_info["bytes"] = 3 * a.nbytes
    result = benchmark(triad, a, b, c)
    np.testing.assert_allclose(result[:5], b[:5] + 3.0 * c[:5])
