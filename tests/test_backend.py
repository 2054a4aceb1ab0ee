"""The backend switch: set/get/use_backend, DMEM_BACKEND, fallback, threads."""

import os
import subprocess
import sys
import textwrap

import pytest

import dmem
from dmem import _backend


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter with extra environment; return stdout, stderr."""
    environment = dict(os.environ)
    for key in ("DMEM_BACKEND", "DMEM_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        environment.pop(key, None)
    environment.update(env)
    # The child imports the same dmem as this process (installed or source tree).
    environment["PYTHONPATH"] = os.path.dirname(os.path.dirname(dmem.__file__))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=environment, cwd=os.path.dirname(__file__),
    )
    return proc


def test_set_and_get_backend():
    assert dmem.set_backend("reference") == "reference"
    assert dmem.get_backend() == "reference"
    expected = "compiled" if dmem.compiled_available() else "reference"
    assert dmem.set_backend("compiled") == expected
    assert dmem.get_backend() == expected


def test_backend_names_are_case_insensitive():
    assert dmem.set_backend(" Reference ") == "reference"


@pytest.mark.parametrize("bad", ["fast", "", None, 3, "cuda"])
def test_unknown_backend_is_refused(bad):
    before = dmem.get_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        dmem.set_backend(bad)
    assert dmem.get_backend() == before


def test_use_backend_restores_even_on_error():
    dmem.set_backend("compiled")
    before = dmem.get_backend()
    with pytest.raises(RuntimeError):
        with dmem.use_backend("reference") as active:
            assert active == "reference"
            assert dmem.get_backend() == "reference"
            raise RuntimeError("boom")
    assert dmem.get_backend() == before


def test_nested_use_backend():
    with dmem.use_backend("reference"):
        with dmem.use_backend("compiled"):
            pass
        assert dmem.get_backend() == "reference"


def test_environment_variable_selects_backend():
    proc = run_python("import dmem; print(dmem.get_backend())", DMEM_BACKEND="reference")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "reference"


def test_bad_environment_variable_is_refused_clearly():
    proc = run_python("import dmem", DMEM_BACKEND="gpu")
    assert proc.returncode != 0
    assert "DMEM_BACKEND must be one of" in proc.stderr


def test_compiled_is_the_default_when_built():
    proc = run_python("import dmem; print(dmem.get_backend(), dmem.compiled_available())")
    assert proc.returncode == 0, proc.stderr
    backend, available = proc.stdout.split()
    assert backend == ("compiled" if available == "True" else "reference")


def test_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(_backend, "_COMPILED", False)
    monkeypatch.setitem(_backend._state, "warned", False)
    with pytest.warns(RuntimeWarning, match="not available"):
        assert dmem.set_backend("compiled") == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dmem.set_backend("compiled") == "reference"  # no second warning


def test_fallback_without_extension_in_a_fresh_process():
    # Hide the compiled modules: the import must still work, with a warning.
    code = """
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.startswith("dmem._kernels."):
                    raise ImportError("hidden for the test")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import dmem
        print(dmem.compiled_available(), dmem.get_backend(), len(caught))
        print(caught[0].message)
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    first, message = proc.stdout.splitlines()[:2]
    assert first == "False reference 1"
    assert "using the reference backend" in message


def test_num_threads():
    assert dmem.set_num_threads(1) == 1
    assert dmem.get_num_threads() == 1
    assert dmem.set_num_threads(2) == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", None])
def test_bad_num_threads(bad):
    with pytest.raises(ValueError, match="positive integer"):
        dmem.set_num_threads(bad)


def test_num_threads_from_environment():
    proc = run_python("import dmem; print(dmem.get_num_threads())", DMEM_NUM_THREADS="3")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"
    proc = run_python("import dmem", DMEM_NUM_THREADS="zero")
    assert proc.returncode != 0 and "DMEM_NUM_THREADS" in proc.stderr


def test_compiled_build_has_openmp_facts():
    facts = dmem.info()
    assert facts["version"] == dmem.__version__
    assert facts["backend"] == dmem.get_backend()
    if dmem.compiled_available():
        from dmem._kernels import _info
        import numpy as np

        assert _info.parallel_sum(np.arange(100.0), 2) == 4950.0
        assert facts["openmp"] == _info.openmp_enabled()


def test_openmp_threads_sleep_when_idle_unless_the_user_chose():
    proc = run_python("import os, dmem; print(os.environ.get('OMP_WAIT_POLICY'))")
    assert proc.stdout.strip() == "passive", proc.stderr
    proc = run_python("import os, dmem; print(os.environ.get('OMP_WAIT_POLICY'))", OMP_WAIT_POLICY="active")
    assert proc.stdout.strip() == "active", proc.stderr
