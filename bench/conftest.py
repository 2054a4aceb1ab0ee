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
