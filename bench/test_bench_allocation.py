"""Benchmarks of the DNC usage and allocation: compiled kernels beside the autograd reference.

Groups are ``"<op> <fwd|fwd+bwd>|B=..,N=.."`` (usage with R = 4 read heads);
within a group the implementation (``compiled`` or ``reference``) is in the
test id and in ``extra_info``.
"""

import importlib

import pytest
from autograd import make_vjp

compiled = importlib.import_module("dmem.compiled.allocation")
reference = importlib.import_module("dmem.reference.allocation")

R = 4
BATCHES = [1, 16]
SLOTS = [16, 64, 128, 256, 1024]
IMPLEMENTATIONS = ["compiled", "reference"]


def make_inputs(op, rng, B, N):
    usage_prev = rng.uniform(0, 1, (B, N))
    if op == "allocation":
        return (usage_prev,)
    write_weights_prev = rng.dirichlet([0.5] * N, size=B)
    read_weights_prev = rng.dirichlet([0.5] * N, size=(B, R))
    free_gates = rng.uniform(0, 1, (B, R))
    return (usage_prev, write_weights_prev, read_weights_prev, free_gates)


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
@pytest.mark.parametrize("N", SLOTS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", ["usage", "allocation"])
def test_bench(record, rng, op, mode, B, N, implementation):
    inputs = make_inputs(op, rng, B, N)
    cotangent = rng.standard_normal((B, N))
    make = forward_fn if mode == "fwd" else forward_backward_fn
    run = make(op, implementation)
    benchmark = record(f"{op} {mode}|B={B},N={N}", implementation)
    result = benchmark(run, inputs, cotangent)
    assert result is not None
