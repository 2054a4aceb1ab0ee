"""The dmem command line: train -> eval -> plot, resume, and its error messages."""

import json
import os
import subprocess
import sys

import pytest

import dmem
from dmem.cli import main
from dmem.tasks import make_task

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--memory", "8x4", "--controller-size", "16", "--bits", "3", "--min-len", "1",
        "--max-len", "3", "--batch", "4", "--eval-every", "2", "--eval-batches", "1",
        "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True)
def _one_thread():
    dmem.set_num_threads(1)  # conftest.py restores it


def usage_error(capsys, argv):
    """Run ``dmem argv``; it must fail with argparse's exit code 2; return stderr."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: dmem" in err and "error:" in err
    return err


def test_train_eval_plot_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "4", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("checkpoint.npz", "best.npz", "log.csv", "summary.json"):
        assert (out / name).exists()
        assert str(out / name) in text  # the CLI says where it saved things
    assert "step       4" in text and "eval cost" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 4 and summary["task"]["name"] == "copy"

    assert main(["eval", str(out / "best.npz"), "--len", "2", "--batches", "1"]) == 0
    text = capsys.readouterr().out
    assert "cost (bits/seq)" in text and "bit errors/seq" in text
    assert any(line.split()[:1] == ["2"] for line in text.splitlines())

    assert main(["eval", str(out / "checkpoint.npz"), "--sweep", "1,3,5,8", "--batches", "1",
                 "--batch-size", "4"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    lengths = [r[0] for r in rows if len(r) == 3 and r[0].isdigit()]
    assert lengths == ["1", "3", "5", "8"]

    png = tmp_path / "access.png"
    assert main(["plot", str(out / "best.npz"), "--len", "3", "-o", str(png)]) == 0
    assert str(png) in capsys.readouterr().out
    data = png.read_bytes()
    assert data.startswith(PNG) and len(data) > 1000

    curve = tmp_path / "curve.png"
    assert main(["plot", "--curve", str(out / "log.csv"), "-o", str(curve)]) == 0
    assert curve.read_bytes().startswith(PNG)


def test_train_dnc_with_curriculum_and_reference_backend(tmp_path, capsys):
    out = tmp_path / "dnc"
    argv = ["train", "--model", "dnc", "--heads", "2", "--task", "dnc-repeat-copy",
            "--task-arg", "max_repeats=2", "--curriculum", "1", "--curriculum-threshold", "1e6",
            "--backend", "reference", "--steps", "2", "--out", str(out), *TINY]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "DNC" in text and "curriculum: " in text and "backend reference" in text
    meta = json.loads((out / "summary.json").read_text())
    assert meta["task"]["config"]["max_repeats"] == 2 and meta["curriculum_length"] == 3


def test_stop_below_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "50", "--stop-below", "1e6", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "until 50 steps or eval cost < 1e+06 bits/seq" in text
    assert "converged at step 0" in text
    assert json.loads((out / "summary.json").read_text())["status"] == "converged"


def test_resume_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "2", "--out", str(out)]) == 0
    # --resume needs only --out and the new step count; everything else comes from the checkpoint
    assert main(["train", "--resume", "--out", str(out), "--steps", "4", "--no-progress",
                 "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "resuming" in text and "step       4" in text
    assert json.loads((out / "summary.json").read_text())["step"] == 4
    # a model option that contradicts the checkpoint is an argument error
    err = usage_error(capsys, ["train", "--resume", "--out", str(out), "--steps", "6",
                               "--memory", "16x4"])
    assert "--memory" in err and "conflicts" in err
    # a training setting that contradicts it is reported by the trainer
    assert main(["train", "--resume", "--out", str(out), "--steps", "6", "--batch", "8",
                 "--no-progress"]) == 1
    assert "batch_size" in capsys.readouterr().err


def test_cli_resumes_a_library_run_with_its_own_settings(tmp_path, capsys):
    from dmem.optim import RMSProp
    from dmem.training import Curriculum, train

    task = make_task("copy", bits=3, min_len=1, max_len=3)

    def run(steps, **kw):
        model = dmem.NTM(task.input_size, task.output_size, memory_slots=8, word_size=4,
                         controller_size=16)
        train(model, task, steps=steps, batch_size=4, optimizer=RMSProp(lr=0.01, momentum=0.5),
              curriculum=Curriculum(threshold=1e6), eval_every=2, eval_batches=1,
              eval_batch_size=3, eval_seed=9, progress=False, **kw)
        return model

    whole = run(4, out_dir=tmp_path / "whole")
    run(2, out_dir=tmp_path / "parts")
    assert main(["train", "--resume", "--out", str(tmp_path / "parts"), "--steps", "4",
                 "--no-progress", "--threads", "1"]) == 0
    assert "rmsprop lr 0.01" in capsys.readouterr().out
    resumed = dmem.load(tmp_path / "parts" / "checkpoint.npz")
    for k in whole.params:
        assert (whole.params[k] == resumed.params[k]).all(), k


def test_train_refuses_to_overwrite_and_resume_needs_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--steps", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "1", "--out", str(out)]) == 1
    assert "already holds a training run" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", str(tmp_path / "empty"), "--steps", "2"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "Traceback" not in err


def test_default_out_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--steps", "1", "--seed", "3"]) == 0
    assert (tmp_path / "runs" / "ntm-copy-seed3" / "checkpoint.npz").exists()
    assert os.path.join("runs", "ntm-copy-seed3") in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["train", "--steps", "1", "--memory", "128"], "SLOTSxWORD"),
    (["train", "--steps", "1", "--memory", "0x20"], "--memory"),
    (["train", "--steps", "1", "--heads", "0"], "--heads"),
    (["train", "--steps", "1", "--heads", "1,x"], "READ,WRITE"),
    (["train", "--steps", "1", "--model", "dnc", "--heads", "2,2"], "one write head"),
    (["train", "--task", "copy"], "--steps"),
    (["train", "--steps", "1", "--minutes", "2"], "not allowed with"),
    (["train", "--steps", "0"], "positive integer"),
    (["train", "--steps", "1", "--task", "sorting"], "invalid choice"),
    (["train", "--steps", "1", "--task", "ngrams", "--bits", "3"], "no bits"),
    (["train", "--steps", "1", "--min-len", "5", "--max-len", "2"], "min_len must be <= max_len"),
    (["train", "--steps", "1", "--task-arg", "colour=red"], "no parameter"),
    (["train", "--steps", "1", "--task-arg", "oops"], "KEY=VALUE"),
    (["train", "--steps", "1", "--lr", "-1"], "--lr"),
    (["train", "--steps", "1", "--stop-below", "0"], "--stop-below"),
    (["train", "--steps", "1", "--resume"], "--resume needs --out"),
    (["train", "--steps", "1", "--curriculum-step", "2"], "need --curriculum"),
    (["eval"], "CHECKPOINT"),
    (["eval", "a.npz", "--pretrained", "x"], "one of them"),
    (["eval", "a.npz", "--sweep", "10,x"], "--sweep"),
    (["eval", "a.npz", "--len", "0"], "--len"),
    (["eval", "a.npz", "--task", "sorting"], "invalid choice"),
    (["plot", "a.npz", "--curve", "log.csv"], "exactly one"),
    (["plot"], "exactly one"),
])
def test_bad_arguments_exit_2_with_a_message(capsys, argv, message):
    assert message in usage_error(capsys, argv)


def test_missing_checkpoint_exits_1_without_traceback(tmp_path, capsys):
    missing = str(tmp_path / "nothing.npz")
    assert main(["eval", missing, "--len", "5"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint at" in err and "nothing.npz" in err and "Traceback" not in err
    assert main(["plot", missing]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["plot", "--curve", str(tmp_path / "log.csv")]) == 1
    assert "no training log" in capsys.readouterr().err
    assert main(["eval", "--pretrained", "no-such-model"]) == 1
    assert "no pretrained model" in capsys.readouterr().err


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 garbage")
    assert main(["eval", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.npz" in err and "Traceback" not in err


def test_model_without_task_metadata_needs_task(tmp_path, capsys):
    task = make_task("copy", bits=3, min_len=1, max_len=3)
    model = dmem.NTM(task.input_size, task.output_size, memory_slots=8, word_size=4, controller_size=8)
    model.save(tmp_path / "m.npz")
    assert main(["eval", str(tmp_path / "m.npz")]) == 1
    assert "--task" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "m.npz"), "--task", "copy", "--task-arg", "bits=3",
                 "--len", "2", "--batches", "1", "--batch-size", "2"]) == 0


def test_fresh_process_reports_errors_cleanly(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(dmem.__file__)))
    env.pop("DMEM_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "dmem", "eval", str(tmp_path / "x.npz"), "--len", "40"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert "no checkpoint" in proc.stderr and "Traceback" not in proc.stderr
