"""Shared test setup: every test starts and ends with the same backend and threads."""

import pytest

import dmem


@pytest.fixture(autouse=True)
def _restore_backend_and_threads():
    backend = dmem.get_backend()
    threads = dmem.get_num_threads()
    yield
    dmem.set_backend(backend)
    dmem.set_num_threads(threads)


def pytest_sessionstart(session):
    """With DMEM_REQUIRE_INSTALLED=1 (CI), refuse to test anything but the built, installed package."""
    import os
    import pathlib

    if os.environ.get("DMEM_REQUIRE_INSTALLED", "") != "1":
        return
    source_tree = pathlib.Path(__file__).resolve().parents[1]
    package = pathlib.Path(dmem.__file__).resolve()
    if source_tree in package.parents:
        raise pytest.UsageError(f"dmem was imported from the source tree ({package}), not the installed package")
    if not dmem.compiled_available():
        raise pytest.UsageError("the compiled extension is not available in the installed package")
