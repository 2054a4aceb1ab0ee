"""Benchmarks of the DNC usage and allocation: compiled kernels beside the autograd reference.

Groups are ``"<op> <fwd|fwd+bwd>|B=..,N=.."`` (usage with R = 4 read heads);
within a group the implementation (``compiled`` or ``reference``) is in the
test id and in ``extra_info``.
"""

import pytest

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


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("N", SLOTS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", ["usage", "allocation"])
def test_bench(record, rng, runner, op, mode, B, N, implementation):
    inputs = make_inputs(op, rng, B, N)
    cotangent = rng.standard_normal((B, N))
    run = runner(op, mode, implementation)
    benchmark = record(f"{op} {mode}|B={B},N={N}", implementation)
    result = benchmark(run, inputs, (cotangent,))
    assert result is not None
