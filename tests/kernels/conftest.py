"""Kernel tests run the parallel path even on their small problems."""

import pytest

from dmem.compiled import _common


@pytest.fixture(autouse=True)
def _parallel_even_when_small(monkeypatch):
    monkeypatch.setattr(_common, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_common, "OP_PARALLEL_MIN_WORK", 0)
