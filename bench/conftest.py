"""Shared setup of the benchmark suites: record threads and backend in the JSON."""

import numpy as np
import pytest

import dmem


@pytest.fixture
def record(benchmark):
    """Return a function that names the group and records the run's facts."""

    def _record(group, implementation):
        benchmark.group = group
        benchmark.extra_info["implementation"] = implementation
        benchmark.extra_info["backend"] = implementation
        benchmark.extra_info["num_threads"] = dmem.get_num_threads()
        benchmark.extra_info["compiled_available"] = dmem.compiled_available()
        return benchmark

    return _record


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def op_runner(op, mode, implementation):
    """``run(inputs, cotangents)`` timing one op of the contract.

    mode ``"fwd"``: the forward only; ``"fwd+bwd"``: the forward and the backward
    with ``cotangents`` (a tuple, one per output).  implementation ``"compiled"``
    runs ``dmem.compiled.X_forward`` / ``X_backward`` (validation included),
    ``"reference"`` runs ``dmem.reference.X`` and ``autograd.make_vjp`` of it.
    """
    import importlib

    from autograd import make_vjp

    from dmem._opspec import OPS

    module = importlib.import_module(f"dmem.{implementation}.{OPS[op].module}")
    if implementation == "compiled":
        fwd = getattr(module, op + "_forward")
        bwd = getattr(module, op + "_backward")
        if mode == "fwd":
            return lambda inputs, cotangents: fwd(*inputs)

        def run(inputs, cotangents):
            _, saved = fwd(*inputs)
            return bwd(saved, *cotangents)

        return run
    ref = getattr(module, op)
    if mode == "fwd":
        return lambda inputs, cotangents: ref(*inputs)

    def run(inputs, cotangents):
        vjp, _ = make_vjp(lambda args: ref(*args))(inputs)
        return vjp(cotangents if len(cotangents) > 1 else cotangents[0])

    return run


@pytest.fixture
def runner():
    """The op_runner function: ``runner(op, mode, implementation)``."""
    return op_runner
