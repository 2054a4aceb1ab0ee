"""Benchmarks of NTM addressing: compiled kernels beside the autograd reference.

Groups are ``"<op> <fwd|fwd+bwd>|B=..,N=..,H=.."`` with W = 20 and S = 3
(shift range 1, as in the NTM paper): H = 1 over every B and N, and H = 4 at
B = 16, N = 128.  Within a group the implementation (``compiled`` or
``reference``) is in the test id and in ``extra_info``, with, for the compiled
runs, the instruction set of the addressing loops (``extra_info["simd"]``:
``"avx2+fma"`` or ``"baseline"``).  The compiled runs go
through ``dmem.compiled.X_forward`` / ``X_backward`` (validation included); the
reference runs are ``dmem.reference.X`` and ``autograd.make_vjp`` of it.
"""

import importlib

import pytest

kernels = importlib.import_module("dmem._kernels.addressing")

W = 20
S = 3
SIZES = [(B, N, 1) for B in (1, 16) for N in (16, 64, 128, 256, 1024)] + [(16, 128, 4)]
OPS = ["content_weights", "shift", "sharpen", "ntm_address"]
IMPLEMENTATIONS = ["compiled", "reference"]


def make_inputs(op, rng, B, N, H):
    memory = rng.standard_normal((B, N, W))
    keys = rng.standard_normal((B, H, W))
    strengths = rng.uniform(0, 10, (B, H))
    gates = rng.uniform(0, 1, (B, H))
    shifts = rng.dirichlet([1.0] * S, size=(B, H))
    gamma = rng.uniform(1, 5, (B, H))
    weights = rng.dirichlet([0.5] * N, size=(B, H))
    return {
        "content_weights": (memory, keys, strengths),
        "shift": (weights, shifts),
        "sharpen": (weights, gamma),
        "ntm_address": (memory, keys, strengths, gates, shifts, gamma, weights),
    }[op]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("B,N,H", SIZES, ids=[f"B={b},N={n},H={h}" for b, n, h in SIZES])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", OPS)
def test_bench(record, rng, runner, op, mode, B, N, H, implementation):
    inputs = make_inputs(op, rng, B, N, H)
    cotangent = rng.standard_normal((B, H, N))
    run = runner(op, mode, implementation)
    benchmark = record(f"{op} {mode}|B={B},N={N},H={H}", implementation)
    if implementation == "compiled":
        benchmark.extra_info["simd"] = kernels.simd_level()
    result = benchmark(run, inputs, (cotangent,))
    assert result is not None
