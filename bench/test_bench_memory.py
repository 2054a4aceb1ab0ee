"""Benchmarks of the memory read and write: compiled kernels beside the autograd reference.

Groups are ``"<op> <fwd|fwd+bwd>|B=..,N=..,H=.."`` with W = 20; within a
group the implementation (``compiled`` or ``reference``) is in the test id
and in ``extra_info``.
"""

import importlib

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
