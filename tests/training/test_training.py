"""Training: learning, determinism and resume, checkpoints, curriculum, divergence, plots."""

import csv
import json
import os

import numpy as np
import pytest

import dmem
from dmem.checkpoints import CheckpointError, load_checkpoint
from dmem.tasks import make_task
from dmem.training import (LOG_COLUMNS, Curriculum, Trainer, TrainingDivergedError, evaluate,
                           sample_batch, train)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny batches: one thread avoids OpenMP contention on a loaded machine (results do not
    # depend on the thread count).  conftest.py restores the setting.
    dmem.set_num_threads(1)


def tiny_task(**kw):
    return make_task("copy", **{"bits": 3, "min_len": 1, "max_len": 3, **kw})


def tiny_ntm(task, seed=0, **kw):
    return dmem.NTM(task.input_size, task.output_size, memory_slots=8, word_size=4,
                    controller_size=16, seed=seed, **kw)


def tiny_dnc(task, seed=0, **kw):
    return dmem.DNC(task.input_size, task.output_size, memory_slots=8, word_size=4,
                    controller_size=16, read_heads=2, seed=seed, **kw)


QUICK = dict(batch_size=4, eval_every=2, eval_batches=1, eval_batch_size=4, checkpoint_every=2,
             progress=False)


def read_log(out_dir, drop_seconds=True):
    with open(os.path.join(out_dir, "log.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == LOG_COLUMNS
    if drop_seconds:
        rows = [r[:2] + r[3:] for r in rows]
    return rows


# --------------------------------------------------------------------------
# learning


def test_short_training_lowers_the_loss_on_copy():
    task = tiny_task()
    model = tiny_ntm(task)
    before = evaluate(model, task, batches=2, batch_size=32)["cost_bits"]
    summary = train(model, task, steps=150, batch_size=16, optimizer="adam", lr=0.01,
                    eval_every=50, eval_batches=2, progress=False)
    after = evaluate(model, task, batches=2, batch_size=32)["cost_bits"]
    assert summary["status"] == "finished" and summary["step"] == 150
    assert summary["sequences"] == 150 * 16
    # chance level is ~6 bits/seq (2 vectors of 3 bits on average); 150 steps reach ~3
    assert after < 0.75 * before, (before, after)
    assert summary["final_eval"]["cost_bits"] < 0.75 * before


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("kind", ["ntm", "dnc"])
def test_both_backends_and_models_train(backend, kind, tmp_path):
    task = tiny_task()
    model = (tiny_ntm if kind == "ntm" else tiny_dnc)(task)
    start = {k: v.copy() for k, v in model.params.items()}
    with dmem.use_backend(backend):
        summary = train(model, task, steps=3, out_dir=tmp_path, **QUICK)
    expected = backend if backend == "reference" or dmem.compiled_available() else "reference"
    assert summary["backend"] == expected
    assert any(not np.array_equal(start[k], model.params[k]) for k in start)
    assert all(np.all(np.isfinite(v)) for v in model.params.values())


def test_float32_training_keeps_float32():
    task = tiny_task()
    model = tiny_ntm(task, dtype=np.float32)
    train(model, task, steps=2, **QUICK)
    assert all(v.dtype == np.float32 for v in model.params.values())


# --------------------------------------------------------------------------
# determinism, checkpoints, resume


def test_same_seed_same_training():
    task = tiny_task()
    a, b = tiny_ntm(task), tiny_ntm(task)
    train(a, task, steps=4, seed=3, **QUICK)
    train(b, task, steps=4, seed=3, **QUICK)
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k])
    c = tiny_ntm(task)
    train(c, task, steps=4, seed=4, **QUICK)
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam"])
def test_resume_is_bitwise_identical(tmp_path, optimizer):
    task = tiny_task()
    # a curriculum that rises at every evaluation, so its state matters too
    options = dict(QUICK, optimizer=optimizer, lr=0.01, eval_every=2, checkpoint_every=2,
                   curriculum=Curriculum(start=1, step=1, threshold=1e6))
    whole = tiny_ntm(task)
    train(whole, task, steps=6, out_dir=tmp_path / "whole", **options)

    first = tiny_ntm(task)
    train(first, task, steps=3, out_dir=tmp_path / "parts", **options)
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.npz").metadata["step"] == 3
    second = tiny_ntm(task)  # a fresh model: resume loads the parameters
    summary = train(second, task, steps=6, out_dir=tmp_path / "parts", resume=True, **options)
    assert summary["step"] == 6

    for k in whole.params:
        assert np.array_equal(whole.params[k], second.params[k]), k
    assert read_log(tmp_path / "whole") == read_log(tmp_path / "parts")
    ck_whole = load_checkpoint(tmp_path / "whole" / "checkpoint.npz")
    ck_parts = load_checkpoint(tmp_path / "parts" / "checkpoint.npz")
    assert sorted(ck_whole.arrays) == sorted(ck_parts.arrays)
    for k in ck_whole.arrays:
        if k != "training.seconds":
            assert np.array_equal(ck_whole.arrays[k], ck_parts.arrays[k]), k
    assert ck_whole.metadata["rng"] == ck_parts.metadata["rng"]
    assert ck_whole.metadata["curriculum_length"] == 3  # 1 -> 2 -> 3 (the task's maximum)


def test_checkpoint_contents(tmp_path):
    task = tiny_task()
    model = tiny_ntm(task)
    train(model, task, steps=4, out_dir=tmp_path, seed=7, **QUICK)
    ck = load_checkpoint(tmp_path / "checkpoint.npz")
    meta = ck.metadata
    assert meta["step"] == 4 and meta["sequences"] == 16 and meta["seed"] == 7
    assert meta["task"] == {"name": "copy", "config": task.config()}
    assert meta["optimizer"]["name"] == "rmsprop"
    assert meta["optimizer"]["hyperparameters"]["lr"] == 1e-4
    assert meta["backend"] == dmem.get_backend()
    assert meta["rng"]["bit_generator"] == "PCG64"
    assert int(ck.arrays["optimizer.steps"]) == 4
    assert {f"optimizer.{s}.controller_W" for s in ("n", "gbar", "delta")} <= set(ck.arrays)
    loaded = dmem.load(tmp_path / "checkpoint.npz")
    for k in model.params:
        assert np.array_equal(loaded.params[k], model.params[k])
    # best.npz, log and summary
    assert load_checkpoint(tmp_path / "best.npz").metadata["task"]["name"] == "copy"
    rows = read_log(tmp_path, drop_seconds=False)
    assert [int(r[0]) for r in rows[1:]] == [0, 2, 4]
    assert rows[1][3] == ""  # no training loss before step 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["step"] == 4
    assert summary["files"]["checkpoint"].endswith("checkpoint.npz")


def test_keyboard_interrupt_saves_a_checkpoint_and_resumes_exactly(tmp_path):
    task = tiny_task()
    options = dict(QUICK, checkpoint_every=100)
    whole = tiny_ntm(task)
    train(whole, task, steps=6, out_dir=tmp_path / "whole", **options)

    model = tiny_ntm(task)
    original = model.loss_and_grad
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args)

    model.loss_and_grad = interrupted
    with pytest.raises(KeyboardInterrupt):
        train(model, task, steps=6, out_dir=tmp_path / "parts", **options)
    ck = load_checkpoint(tmp_path / "parts" / "checkpoint.npz")
    assert ck.metadata["step"] == 3
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert summary["status"] == "interrupted"

    resumed = tiny_ntm(task)
    train(resumed, task, steps=6, out_dir=tmp_path / "parts", resume=True, **options)
    for k in whole.params:
        assert np.array_equal(whole.params[k], resumed.params[k]), k
    assert read_log(tmp_path / "whole") == read_log(tmp_path / "parts")


def test_ctrl_c_finishes_the_step_then_saves(tmp_path):
    import signal

    task = tiny_task()
    whole = tiny_ntm(task)
    train(whole, task, steps=6, out_dir=tmp_path / "whole", **QUICK)
    model = tiny_ntm(task)
    original = model.loss_and_grad
    calls = []

    def ctrl_c(*args):
        calls.append(1)
        if len(calls) == 3:  # a real SIGINT in the middle of step 3
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args)

    model.loss_and_grad = ctrl_c
    handler_before = signal.getsignal(signal.SIGINT)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        train(model, task, steps=6, out_dir=tmp_path / "parts", log=lines.append, **QUICK)
    assert load_checkpoint(tmp_path / "parts" / "checkpoint.npz").metadata["step"] == 3
    assert any("Ctrl-C" in line for line in lines)
    assert signal.getsignal(signal.SIGINT) is handler_before  # our handler is removed
    resumed = tiny_ntm(task)
    train(resumed, task, steps=6, out_dir=tmp_path / "parts", resume=True, **QUICK)
    for k in whole.params:
        assert np.array_equal(whole.params[k], resumed.params[k]), k


def test_resume_refuses_a_corrupt_checkpoint(tmp_path):
    task = tiny_task()
    train(tiny_ntm(task), task, steps=2, out_dir=tmp_path, **QUICK)
    path = tmp_path / "checkpoint.npz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(tiny_ntm(task), task, steps=4, out_dir=tmp_path, resume=True, **QUICK)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="checkpoint.npz"):
        train(tiny_ntm(task), task, steps=4, out_dir=tmp_path, resume=True, **QUICK)


def test_resume_refuses_a_model_only_file(tmp_path):
    task = tiny_task()
    model = tiny_ntm(task)
    model.save(tmp_path / "checkpoint.npz")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(model, task, steps=2, out_dir=tmp_path, resume=True, **QUICK)


def test_resume_needs_a_checkpoint_and_the_same_settings(tmp_path):
    task = tiny_task()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny_ntm(task), task, steps=2, out_dir=tmp_path / "none", resume=True, **QUICK)
    train(tiny_ntm(task), task, steps=2, out_dir=tmp_path, **QUICK)
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_ntm(task), task, steps=4, out_dir=tmp_path, resume=True, **dict(QUICK, batch_size=8))
    with pytest.raises(ValueError, match="trained on"):
        train(tiny_ntm(task), tiny_task(max_len=2), steps=4, out_dir=tmp_path, resume=True, **QUICK)
    bigger = dmem.NTM(task.input_size, task.output_size, memory_slots=16, word_size=4, controller_size=16)
    with pytest.raises(ValueError, match="cannot resume"):
        train(bigger, task, steps=4, out_dir=tmp_path, resume=True, **QUICK)
    # a new run does not overwrite an existing one
    with pytest.raises(FileExistsError, match="already holds"):
        train(tiny_ntm(task), task, steps=2, out_dir=tmp_path, **QUICK)
    # nothing to do when the run is already there
    summary = train(tiny_ntm(task), task, steps=2, out_dir=tmp_path, resume=True, **QUICK)
    assert summary["step"] == 2


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    task = tiny_task()
    model = tiny_ntm(task)
    original = model.loss_and_grad
    calls = []

    def poisoned(*args):
        calls.append(1)
        loss, grads = original(*args)
        return (float("nan") if len(calls) == 5 else loss), grads

    model.loss_and_grad = poisoned
    with pytest.raises(TrainingDivergedError, match=r"step 5: the loss is nan.*step 4\)"):
        train(model, task, steps=10, out_dir=tmp_path, **QUICK)
    assert load_checkpoint(tmp_path / "checkpoint.npz").metadata["step"] == 4
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    # an infinite gradient, without an out_dir
    model = tiny_ntm(task)
    original2 = model.loss_and_grad

    def inf_grad(*args):
        loss, grads = original2(*args)
        grads["output_b"] = grads["output_b"] + np.inf
        return loss, grads

    model.loss_and_grad = inf_grad
    with pytest.raises(TrainingDivergedError, match="gradient is NaN or infinite.*no checkpoint"):
        train(model, task, steps=3, **QUICK)


def test_time_limit_stops_training():
    task = tiny_task()
    summary = train(tiny_ntm(task), task, minutes=1e-6, **QUICK)
    assert summary["status"] == "time limit"
    assert summary["step"] <= 1


def test_stop_below_ends_the_run_at_the_first_good_evaluation_on_the_full_task(tmp_path):
    task = tiny_task(max_len=3)
    lines = []
    # every evaluation is "good"; the curriculum must reach the top first:
    # evaluations at step 0 (length 1), 2 (length 2), 4 (length 3: stop)
    summary = train(tiny_ntm(task), task, steps=50, stop_below=1e6, out_dir=tmp_path,
                    log=lines.append, curriculum={"start": 1, "threshold": 1e6}, **QUICK)
    assert summary["status"] == "converged"
    assert summary["step"] == 4
    assert [int(r[0]) for r in read_log(tmp_path)[1:]] == [0, 2, 4]
    assert any(line.startswith("converged at step 4") for line in lines)
    # without a curriculum the step-0 evaluation already counts
    summary = train(tiny_ntm(task), task, steps=50, stop_below=1e6, **QUICK)
    assert (summary["status"], summary["step"]) == ("converged", 0)
    # a cost that is never reached: the step limit ends the run
    summary = train(tiny_ntm(task), task, steps=4, stop_below=1e-12, **QUICK)
    assert (summary["status"], summary["step"]) == ("finished", 4)


# --------------------------------------------------------------------------
# curriculum and evaluation


def test_curriculum_raises_the_length_up_to_the_task_maximum(tmp_path):
    task = tiny_task(max_len=3)
    lines = []
    train(tiny_ntm(task), task, steps=8, out_dir=tmp_path, log=lines.append,
          curriculum={"start": 1, "step": 1, "threshold": 1e6}, **QUICK)
    lengths = [int(r[-1]) for r in read_log(tmp_path)[1:]]
    assert lengths == [1, 2, 3, 3, 3]  # evaluations at steps 0, 2, 4, 6, 8
    assert any("curriculum" in line and "max_len 1 -> 2" in line for line in lines)
    # a curriculum whose threshold is never met keeps the start length
    t2 = tmp_path / "strict"
    train(tiny_ntm(task), task, steps=4, out_dir=t2, curriculum=Curriculum(start=2, threshold=1e-9),
          **QUICK)
    assert {int(r[-1]) for r in read_log(t2)[1:]} == {2}


def test_curriculum_on_associative_recall_uses_items():
    task = make_task("associative-recall", bits=2, item_len=1, min_items=2, max_items=4)
    model = tiny_ntm(task)
    trainer = Trainer(model, task, steps=2, curriculum=Curriculum(threshold=1e6), **QUICK)
    assert trainer.train_task().max_items == 2
    trainer.run()
    assert trainer.curriculum_length == 4  # evaluations at steps 0 and 2: 2 -> 3 -> 4


def test_evaluate_is_deterministic_and_held_out():
    task = tiny_task()
    model = tiny_ntm(task)
    a = evaluate(model, task, length=2, batches=2, batch_size=4, seed=5)
    b = evaluate(model, task, length=2, batches=2, batch_size=4, seed=5)
    assert a == b and a["length"] == 2 and set(a) == {"cost_bits", "bit_errors", "length"}
    assert evaluate(model, task, batches=1, batch_size=4)["length"] is None
    # the evaluation stream differs from the training stream of the same seed
    held_out = sample_batch(task, 4, np.random.default_rng([5, dmem.training.EVAL_STREAM]))
    train_batch = task.sample(4, np.random.default_rng(5))
    assert not np.array_equal(held_out.inputs, train_batch.inputs) or \
        held_out.inputs.shape != train_batch.inputs.shape


@pytest.mark.parametrize("name, kwargs, length, steps", [
    ("copy", dict(bits=2), 5, 11),
    ("repeat-copy", dict(bits=2, max_repeats=2), 4, None),
    ("dnc-repeat-copy", dict(bits=2, max_repeats=2), 4, None),
    ("associative-recall", dict(bits=2, item_len=1, max_items=4), 3, 3 * 2 + 4),
    ("ngrams", dict(n=3, length=10), 7, 7),
    ("priority-sort", dict(bits=2, length=6, output_length=4), 3, 3 + 1 + 3),
])
def test_sample_batch_at_a_length(name, kwargs, length, steps):
    task = make_task(name, **kwargs)
    batch = sample_batch(task, 2, np.random.default_rng(0), length)
    if steps is not None:
        assert batch.inputs.shape[0] == steps
    assert batch.inputs.shape[1] == 2


# --------------------------------------------------------------------------
# argument validation and progress


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "steps or minutes"),
    (dict(steps=2, batch_size=0), "batch_size"),
    (dict(steps=2, optimizer="sgd"), "optimizer"),
    (dict(steps=2, lr=-1.0), "lr"),
    (dict(steps=2, clip=("sign", 1.0)), "clip"),
    (dict(steps=2, clip=("value", 0.0)), "clip"),
    (dict(steps=2, eval_every=0), "eval_every"),
    (dict(steps=2, minutes=float("nan")), "minutes"),
    (dict(steps=2, stop_below=-1.0), "stop_below"),
    (dict(steps=2, stop_below="0.1"), "stop_below"),
    (dict(steps=2, resume=True), "out_dir"),
    (dict(steps=2, curriculum=Curriculum(start=9)), "outside"),
    (dict(steps=2, curriculum={"begin": 1}), "unknown keys"),
    (dict(steps=2, log="yes"), "log"),
    (dict(steps=2, optimizer=["adam"]), "optimizer"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    task = tiny_task()
    with pytest.raises(ValueError, match=message):
        Trainer(tiny_ntm(task), task, **kwargs)


def test_a_trainer_runs_once():
    task = tiny_task()
    trainer = Trainer(tiny_ntm(task), task, steps=1, **QUICK)
    trainer.run()
    with pytest.raises(RuntimeError, match="already run"):
        trainer.run()


def test_model_and_task_must_agree():
    with pytest.raises(ValueError, match="input/output sizes"):
        Trainer(tiny_ntm(tiny_task(bits=4)), tiny_task(), steps=1)
    ngrams = make_task("ngrams", n=3, length=8)
    with pytest.raises(ValueError, match="fixed length"):
        Trainer(tiny_ntm(ngrams), ngrams, steps=1, curriculum=Curriculum())


def test_progress_bar_shows_loss_cost_errors_and_speed(monkeypatch, capsys):
    monkeypatch.setattr(dmem.training, "_isatty", lambda stream: True)
    task = tiny_task()
    train(tiny_ntm(task), task, steps=3, **dict(QUICK, progress=True))
    err = capsys.readouterr().err
    for word in ("loss=", "cost=", "err=", "seq/s="):
        assert word in err
    monkeypatch.setattr(dmem.training, "_isatty", lambda stream: False)
    train(tiny_ntm(task), task, steps=1, **dict(QUICK, progress=True))
    assert "seq/s" not in capsys.readouterr().err


# --------------------------------------------------------------------------
# plots


@pytest.mark.parametrize("make", [tiny_ntm, tiny_dnc])
def test_plot_access_writes_a_png(tmp_path, make):
    from dmem.plots import plot_access

    task = tiny_task()
    path = plot_access(make(task), task, 3, tmp_path / "access.png")
    data = open(path, "rb").read()
    assert data.startswith(PNG) and len(data) > 1000


def test_plot_access_sums_many_heads(tmp_path):
    from dmem.plots import plot_access

    task = tiny_task()
    model = dmem.NTM(task.input_size, task.output_size, memory_slots=8, word_size=4,
                     controller_size=8, read_heads=5)
    assert open(plot_access(model, task, 2, tmp_path / "a.png"), "rb").read(8) == PNG


def test_plot_curve_writes_a_png(tmp_path):
    from dmem.plots import plot_curve

    task = tiny_task()
    train(tiny_ntm(task), task, steps=4, out_dir=tmp_path, curriculum=Curriculum(threshold=1e6), **QUICK)
    path = plot_curve(tmp_path / "log.csv", tmp_path / "curve.png")
    assert open(path, "rb").read(8) == PNG
    with pytest.raises(FileNotFoundError):
        plot_curve(tmp_path / "missing.csv", tmp_path / "x.png")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a dmem training log"):
        plot_curve(tmp_path / "bad.csv", tmp_path / "x.png")
