"""The dmem command line: info."""

import json
import os
import subprocess
import sys

import dmem
from dmem.cli import main


def test_info_prints_facts(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"version" in out and dmem.__version__ in out
    assert "backend" in out and dmem.get_backend() in out
    assert "num_threads" in out


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["version"] == dmem.__version__
    assert set(facts["compiled_ops"]) | set(facts["reference_only_ops"]) == set(dmem._opspec.OPS)


def _env(**extra):
    # The child imports the same dmem as this process (installed or source tree).
    return dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(dmem.__file__)), **extra)


def test_console_script_runs_in_a_fresh_process():
    env = _env(DMEM_BACKEND="reference")
    proc = subprocess.run(
        [sys.executable, "-m", "dmem", "info"], capture_output=True, text=True, env=env,
        cwd=os.path.dirname(__file__),
    )
    assert proc.returncode == 0, proc.stderr
    assert "backend" in proc.stdout and "reference" in proc.stdout


def test_unknown_command_fails_with_usage():
    proc = subprocess.run(
        [sys.executable, "-m", "dmem", "frobnicate"], capture_output=True, text=True,
        cwd=os.path.dirname(__file__), env=_env(),
    )
    assert proc.returncode == 2
    assert "usage: dmem" in proc.stderr
