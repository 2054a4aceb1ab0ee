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


# The bandwidth that bounds an op whose data stays in cache between calls: a
# numpy add a = b + c (read two arrays, write one, one call) on arrays of the
# size of the op's own, in the same run.  320 KiB: a (B, N, W) memory at B=16,
# N=128, W=20 (read, write); 2 MiB: a (B, N, N) link at B=16, N=128 (link,
# temporal_weights).  The floor of an op there is the bytes its forward+backward
# must touch / that bandwidth (docs/benchmarks.md).
ADD_SIZES = {"3x320KiB": 16 * 128 * W, "3x2MiB": 16 * 128 * 128}


@pytest.mark.parametrize("size", list(ADD_SIZES))
def test_bench_add_in_cache(record, rng, size):
    b, c = (rng.standard_normal(ADD_SIZES[size]) for _ in range(2))
    a = np.empty_like(b)
    benchmark = record(f"add in cache|{size}", "numpy")
    benchmark.extra_info["bytes"] = 3 * a.nbytes
    result = benchmark(np.add, b, c, out=a)
    np.testing.assert_allclose(result[:5], b[:5] + c[:5])


# The read's kernels alone, outputs allocated once: what is left of a fwd+bwd
# pair without the wrapper (validation, saved state, output allocation).
def test_bench_read_kernels(record, rng):
    B, N, H = 16, 128, 1
    kernels = importlib.import_module("dmem._kernels.memory")
    memory, weights = make_inputs("read", rng, B, N, H)
    cotangent = rng.standard_normal((B, H, W))
    reads = np.empty((B, H, W))
    grad_memory, grad_weights = np.empty_like(memory), np.empty_like(weights)

    def run():
        kernels.read_forward(memory, weights, reads, 1)
        kernels.read_backward(memory, weights, cotangent, grad_memory, grad_weights, 1)
        return grad_memory

    benchmark = record(f"read fwd+bwd kernels|B={B},N={N},H={H}", "compiled")
    assert benchmark(run) is not None
