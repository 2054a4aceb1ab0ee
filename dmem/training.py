"""Training dmem models on the tasks: optimizer, clipping, curriculum, evaluation, checkpoints.

:func:`train` (a thin wrapper over :class:`Trainer`) trains a model in place::

    import dmem
    from dmem.tasks import make_task
    from dmem.training import train, Curriculum

    task = make_task("copy", bits=8, min_len=1, max_len=20)
    model = dmem.NTM(task.input_size, task.output_size)
    summary = train(model, task, steps=20000, out_dir="runs/copy",
                    curriculum=Curriculum(start=2))

One **step** is one batch: sample → ``model.loss_and_grad`` → clip → optimizer
update.  ``steps`` counts updates since the start of the run (also across
resumes), ``sequences = steps · batch_size``.

Determinism
    Training batches come from ``numpy.random.default_rng(seed)``; evaluation
    batches from a stream reserved for evaluation,
    ``numpy.random.default_rng([eval_seed, EVAL_STREAM])``, re-created at
    every evaluation (so every evaluation of one curriculum length sees the
    same held-out batches, and they are never the training batches).  The
    same settings, seed, backend and thread count give bitwise-identical
    parameters and logs, also across an interruption and ``resume=True``.

Curriculum (:class:`Curriculum`)
    On tasks with a variable length (copy, repeat-copy and dnc-repeat-copy:
    ``max_len``; associative-recall: ``max_items``) training starts with the
    task's maximum lowered to ``start``; after every evaluation whose cost
    is below ``threshold`` bits per sequence, the maximum is raised by
    ``step``, never beyond the task's own maximum.  The task's minimum is
    unchanged.  Evaluations are made on the current (lowered) task.

Files in ``out_dir`` (all written atomically except the appended log):

* ``checkpoint.npz`` — every ``checkpoint_every`` steps and when training
  stops (end, time limit, Ctrl-C): the model, and as extra arrays the
  optimizer state (``optimizer.*``), the curriculum length and the loss
  accumulators; the metadata holds the step, task, optimizer, settings,
  seed, backend and the training generator's state (``rng``);
* ``best.npz`` — the model at the best evaluation: the highest curriculum
  length reached, then the lowest evaluation cost (without a curriculum:
  simply the lowest cost); loadable with ``dmem.load``, usable with
  ``dmem eval`` / ``dmem plot``;
* ``log.csv`` — a row per evaluation, columns :data:`LOG_COLUMNS`; ``loss``
  is the mean training loss (bits per sequence) since the previous row;
* ``summary.json`` — the run's outcome, written at the end.

Stopping: after ``steps`` total steps, after ``minutes`` of wall-clock time in
this call, when an evaluation on the full task (the curriculum, if any, at
its top) costs less than ``stop_below`` bits per sequence, or on Ctrl-C (the step in progress is finished, a checkpoint is
written, then :class:`KeyboardInterrupt` is raised; a second Ctrl-C aborts at
once, keeping the previous checkpoint).  A NaN or infinite loss or gradient
raises :class:`TrainingDivergedError` without touching the last checkpoint.
"""

import csv
import dataclasses
import json
import math
import numbers
import os
import signal
import sys
import threading
import time

import numpy as np

from . import _backend
from .checkpoints import CheckpointError, load_checkpoint
from .optim import OPTIMIZERS, Optimizer, clip_elementwise, clip_global_norm, make_optimizer
from .tasks import bit_errors, cost_bits

__all__ = [
    "train", "Trainer", "evaluate", "Curriculum", "TrainingDivergedError",
    "sample_batch", "length_parameter", "LOG_COLUMNS", "CHECKPOINT", "BEST", "LOG", "SUMMARY",
]

CHECKPOINT = "checkpoint.npz"
BEST = "best.npz"
LOG = "log.csv"
SUMMARY = "summary.json"
LOG_COLUMNS = ("step", "sequences", "seconds", "loss", "eval_cost_bits", "eval_bit_errors",
               "curriculum_length")
EVAL_STREAM = 0x45564C
"""Second word of the evaluation generator's seed, ``default_rng([seed, EVAL_STREAM])``."""

_CHECKPOINT_KIND = "dmem-training"


class TrainingDivergedError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; the last checkpoint is kept."""


# --------------------------------------------------------------------------
# argument checks


def _int(name, value, minimum, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _real(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------
# lengths


_RANGE_FIELDS = {"min_len": "max_len", "min_items": "max_items"}


def length_parameter(task):
    """``(min_field, max_field)`` of the task's variable length, or ``None``.

    copy, repeat-copy, dnc-repeat-copy: ``("min_len", "max_len")`` (vectors in
    the sequence); associative-recall: ``("min_items", "max_items")``;
    ngrams and priority-sort have a fixed length (``None``).
    """
    config = task.config()
    for lo, hi in _RANGE_FIELDS.items():
        if lo in config and hi in config:
            return lo, hi
    return None


def _with_config(task, **changes):
    return type(task)(**{**task.config(), **changes})


def _at_length(task, length):
    """``(task, sample kwargs)`` that make every row of a batch have ``length``."""
    name = task.name
    if name in ("copy", "repeat-copy", "dnc-repeat-copy"):
        return task, {"length": length}
    if name == "associative-recall":
        return task, {"num_items": length}
    if name == "ngrams":
        return _with_config(task, length=length), {}
    if name == "priority-sort":
        return _with_config(task, length=length, output_length=min(task.output_length, length)), {}
    return task, {"length": length}


def sample_batch(task, batch_size, rng, length=None):
    """A batch of ``task``; with ``length`` every row has that length, meaning

    ====================================  =====================================
    copy, repeat-copy, dnc-repeat-copy     vectors in the sequence (L)
    associative-recall                     items in the list (n)
    ngrams                                 steps of the sequence
    priority-sort                          input vectors (output vectors:
                                           ``min(output_length, length)``)
    ====================================  =====================================

    and it may lie outside the range the task was built with (generalisation).
    """
    if length is None:
        return task.sample(batch_size, rng)
    length = _int("length", length, 1)
    task, kwargs = _at_length(task, length)
    return task.sample(batch_size, rng, **kwargs)


def _check_compatible(model, task):
    cfg = model.config
    if cfg.input_size != task.input_size or cfg.output_size != task.output_size:
        raise ValueError(
            f"the model has input/output sizes {cfg.input_size}/{cfg.output_size} but the task "
            f"{task!r} needs {task.input_size}/{task.output_size}")


def evaluate(model, task, length=None, batches=8, batch_size=32, seed=1234):
    """Error of ``model`` on held-out batches of ``task``.

    ``batches`` batches of ``batch_size`` sequences are drawn from
    ``numpy.random.default_rng([seed, EVAL_STREAM])`` (a stream no training
    run uses); ``length`` fixes the length of every sequence (see
    :func:`sample_batch`), ``None`` draws it from the task's range.  The
    model runs under the current backend.

    Returns ``dict(cost_bits=..., bit_errors=..., length=...)``: the cost in
    bits per sequence and the wrong output bits per sequence, averaged over
    all sequences, and the length (``None`` if drawn from the range).
    """
    _check_compatible(model, task)
    batches = _int("batches", batches, 1)
    batch_size = _int("batch_size", batch_size, 1)
    length = _int("length", length, 1, allow_none=True)
    seed = _int("seed", seed, 0)
    rng = np.random.default_rng([seed, EVAL_STREAM])
    cost = errors = 0.0
    for _ in range(batches):
        batch = sample_batch(task, batch_size, rng, length)
        logits = model.forward(batch.inputs)
        if not np.all(np.isfinite(logits)):
            raise TrainingDivergedError("the model's outputs are NaN or infinite")
        cost += cost_bits(logits, batch.targets, batch.mask)
        errors += bit_errors(logits, batch.targets, batch.mask)
    return {"cost_bits": cost / batches, "bit_errors": errors / batches, "length": length}


# --------------------------------------------------------------------------
# curriculum


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Curriculum on the sequence length (the rule is in the module docstring).

    start : int or None
        The task's maximum length at step 0 (``None``: the task's minimum).
    step : int
        How much the maximum rises after a good evaluation.
    threshold : float
        Evaluation cost (bits per sequence) below which the maximum rises.
    """

    start: int = None
    step: int = 1
    threshold: float = 1.0

    def __post_init__(self):
        _int("curriculum start", self.start, 1, allow_none=True)
        _int("curriculum step", self.step, 1)
        _real("curriculum threshold", self.threshold)

    def to_dict(self):
        return dataclasses.asdict(self)


def _curriculum(value):
    if value is None or isinstance(value, Curriculum):
        return value
    if isinstance(value, dict):
        unknown = set(value) - {"start", "step", "threshold"}
        if unknown:
            raise ValueError(f"curriculum: unknown keys {sorted(unknown)}; use start, step, threshold")
        return Curriculum(**value)
    raise ValueError(f"curriculum must be None, a Curriculum or a dict, got {value!r}")


def _clip(value):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2 or value[0] not in ("value", "norm"):
        raise ValueError(f"clip must be None, ('value', limit) or ('norm', max_norm), got {value!r}")
    return (value[0], _real(f"clip {value[0]}", value[1]))


def _jsonable(obj):
    return json.loads(json.dumps(obj))


# --------------------------------------------------------------------------
# the trainer


class Trainer:
    """Trains ``model`` (in place) on ``task``; :meth:`run` does the work.

    Parameters (all keyword-only after ``task``)
    ----------
    steps : int or None
        Stop when this many steps (updates) have been made in total.
    minutes : float or None
        Stop after this much wall-clock time in this run.  At least one of
        ``steps`` and ``minutes`` is required.
    stop_below : float or None
        Also stop (status ``"converged"``) at the first evaluation on the
        full task (the curriculum, if any, at its top) whose cost is below
        this many bits per sequence.
    batch_size : int
        Sequences per step (default 16).
    optimizer : ``"rmsprop"`` (Graves' variant), ``"adam"``, or an
        :class:`dmem.optim.Optimizer` instance.
    lr : float or None
        Learning rate (``None``: the optimizer's default, 1e-4 / 1e-3).
    clip : ``("value", limit)`` (default ``("value", 10.0)``, the NTM
        paper's), ``("norm", max_norm)`` or ``None``.
    curriculum : :class:`Curriculum`, a dict of its fields, or ``None``.
    eval_every : int
        Evaluate (and write a log row) every this many steps, and at step 0
        of a new run (default 100).
    eval_batches, eval_batch_size, eval_seed :
        The held-out batches of every evaluation (default 4 × 32, seed 1234).
    checkpoint_every : int
        Write ``checkpoint.npz`` every this many steps (default 500), and
        always when training stops.
    out_dir : path or None
        Where checkpoints, log and summary go; ``None`` writes nothing.
        A new run refuses an ``out_dir`` that already holds a checkpoint.
    resume : bool
        Continue from ``out_dir/checkpoint.npz`` (which must exist).  The
        model, task and settings must be those of the checkpoint; the
        parameters are replaced by the checkpoint's.
    seed : int
        Seed of the training batches.
    progress : bool
        Show a tqdm bar (only when stderr is a terminal).
    log : callable or None
        Called with a line of text at every evaluation and at the end.
    """

    def __init__(self, model, task, *, steps=None, minutes=None, stop_below=None, batch_size=16,
                 optimizer="rmsprop", lr=None, clip=("value", 10.0), curriculum=None,
                 eval_every=100, eval_batches=4, eval_batch_size=32, eval_seed=1234,
                 checkpoint_every=500, out_dir=None, resume=False, seed=0, progress=True, log=None):
        from .models import MODELS

        if not isinstance(model, tuple(MODELS.values())):
            raise ValueError(f"model must be a dmem.NTM or dmem.DNC, got {type(model).__name__}")
        if not hasattr(task, "sample") or not hasattr(task, "config") or not hasattr(task, "name"):
            raise ValueError(f"task must be a dmem.tasks task (see make_task), got {task!r}")
        _check_compatible(model, task)
        self.model = model
        self.task = task
        self.steps = _int("steps", steps, 0, allow_none=True)
        self.minutes = _real("minutes", minutes, allow_none=True)
        if self.steps is None and self.minutes is None:
            raise ValueError("give steps or minutes (or both) to say when training stops")
        self.stop_below = _real("stop_below", stop_below, allow_none=True)
        self.batch_size = _int("batch_size", batch_size, 1)
        if isinstance(optimizer, Optimizer):
            if lr is not None:
                raise ValueError("lr is given both directly and by the optimizer instance")
            if optimizer.steps or optimizer._state:
                raise ValueError("the optimizer instance has already been used; pass a fresh one")
            self.optimizer = optimizer
        elif isinstance(optimizer, str) and optimizer in OPTIMIZERS:
            self.optimizer = make_optimizer(optimizer, lr=_real("lr", lr, allow_none=True))
        else:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or an Optimizer, "
                             f"got {optimizer!r}")
        self.clip = _clip(clip)
        self.curriculum = _curriculum(curriculum)
        self.eval_every = _int("eval_every", eval_every, 1)
        self.eval_batches = _int("eval_batches", eval_batches, 1)
        self.eval_batch_size = _int("eval_batch_size", eval_batch_size, 1)
        self.eval_seed = _int("eval_seed", eval_seed, 0)
        self.checkpoint_every = _int("checkpoint_every", checkpoint_every, 1)
        self.out_dir = None if out_dir is None else os.fspath(out_dir)
        self.resume = bool(resume)
        if self.resume and self.out_dir is None:
            raise ValueError("resume=True needs the out_dir that holds checkpoint.npz")
        self.seed = _int("seed", seed, 0)
        self.progress = bool(progress)
        if log is not None and not callable(log):
            raise ValueError(f"log must be a callable taking a string, or None, got {log!r}")
        self._log = log

        self._range = length_parameter(task)
        if self.curriculum is not None:
            if self._range is None:
                raise ValueError(f"task {task.name!r} has a fixed length; a curriculum needs a task "
                                 f"with a length range (copy, repeat-copy, associative-recall, "
                                 f"dnc-repeat-copy)")
            lo, hi = (getattr(task, f) for f in self._range)
            start = lo if self.curriculum.start is None else self.curriculum.start
            if not lo <= start <= hi:
                raise ValueError(f"curriculum start {start} is outside the task's "
                                 f"{self._range[0]}..{self._range[1]} = {lo}..{hi}")
            self._start_length = start
        # training state
        self.step = 0
        self.curriculum_length = self._start_length if self.curriculum else None
        self.rng = np.random.default_rng(self.seed)
        self._loss_sum = 0.0  # training losses since the last log row
        self._loss_count = 0
        self._seconds_before = 0.0  # training time of earlier runs (resume)
        self._best = None  # dict(step, cost_bits, bit_errors, length)
        self._last_eval = None
        self._last_checkpoint_step = None
        self._consistent = True  # False while a step is half done
        self._interrupt = 0  # Ctrl-C presses seen by our handler
        self._ran = False

    # -- files -------------------------------------------------------------------------
    def _path(self, name):
        return None if self.out_dir is None else os.path.join(self.out_dir, name)

    def settings(self):
        """The settings that determine the trajectory (compared on resume), JSON-ready."""
        opt = self.optimizer
        return _jsonable({
            "batch_size": self.batch_size,
            "optimizer": {"name": opt.name, "hyperparameters": opt.hyperparameters()},
            "clip": list(self.clip) if self.clip else None,
            "curriculum": self.curriculum.to_dict() if self.curriculum else None,
            "eval_every": self.eval_every,
            "eval_batches": self.eval_batches,
            "eval_batch_size": self.eval_batch_size,
            "eval_seed": self.eval_seed,
            "seed": self.seed,
        })

    def _task_meta(self):
        return {"name": self.task.name, "config": _jsonable(self.task.config())}

    def _metadata(self):
        return {
            "checkpoint": _CHECKPOINT_KIND,
            "step": self.step,
            "sequences": self.step * self.batch_size,
            "seconds": self.seconds(),
            "task": self._task_meta(),
            "optimizer": self.settings()["optimizer"],
            "seed": self.seed,
            "backend": _backend.get_backend(),
            "threads": _backend.get_num_threads(),
            "settings": self.settings(),
            "rng": _jsonable(self.rng.bit_generator.state),
            "curriculum_length": self.curriculum_length,
            "best": self._best,
            "last_eval": self._last_eval,
            "dmem_version": _version(),
        }

    def save_checkpoint(self):
        """Write ``out_dir/checkpoint.npz`` (atomically) with the full training state."""
        arrays = {f"optimizer.{k}": v for k, v in self.optimizer.state_arrays().items()}
        arrays.update({
            "curriculum.length": np.array(self.curriculum_length or 0, dtype=np.int64),
            "training.step": np.array(self.step, dtype=np.int64),
            "training.loss_sum": np.array(self._loss_sum, dtype=np.float64),
            "training.loss_count": np.array(self._loss_count, dtype=np.int64),
            "training.seconds": np.array(self.seconds(), dtype=np.float64),
        })
        path = self.model.save(self._path(CHECKPOINT), arrays=arrays, metadata=self._metadata())
        self._last_checkpoint_step = self.step
        return path

    def _load_checkpoint(self):
        path = self._path(CHECKPOINT)
        if not os.path.exists(path):
            raise FileNotFoundError(f"cannot resume: no checkpoint at {path!r}")
        ck = load_checkpoint(path)
        meta = ck.metadata
        if meta.get("checkpoint") != _CHECKPOINT_KIND or "optimizer.steps" not in ck.arrays:
            raise CheckpointError(f"{path!r} is not a training checkpoint (no training state); "
                                  f"it can be evaluated or plotted but not resumed")
        try:
            if ck.kind != self.model.kind or ck.config != _jsonable(self.model.config_dict()):
                raise ValueError(
                    f"cannot resume {path!r}: it holds a {ck.kind} {ck.config}, the model given is a "
                    f"{self.model.kind} {self.model.config_dict()}")
            if meta["task"] != self._task_meta():
                raise ValueError(f"cannot resume {path!r}: it was trained on {meta['task']}, "
                                 f"the task given is {self._task_meta()}")
            theirs, ours = meta["settings"], self.settings()
            diffs = [f"{k}: {ours.get(k)!r} here, {theirs.get(k)!r} in the checkpoint"
                     for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k)]
            if diffs:
                raise ValueError(f"cannot resume {path!r} with other settings ({'; '.join(diffs)}); "
                                 f"use the checkpoint's settings or train into a new out_dir")
            rng_state = meta["rng"]
            if rng_state.get("bit_generator") != type(self.rng.bit_generator).__name__:
                raise CheckpointError(f"{path!r}: unexpected generator {rng_state.get('bit_generator')!r}")
            step = int(ck.arrays["training.step"])
            if step != meta["step"]:
                raise CheckpointError(f"{path!r} is inconsistent: step {meta['step']} vs {step}")
            self.model.set_params(ck.params)
            for name, value in ck.buffers.items():
                self.model.buffers[name] = np.array(value, dtype=self.model.dtype)
            self.optimizer.load_state_arrays(
                {k[len("optimizer."):]: v for k, v in ck.arrays.items() if k.startswith("optimizer.")})
            self.rng.bit_generator.state = rng_state
            self.step = step
            length = int(ck.arrays["curriculum.length"])
            self.curriculum_length = length if self.curriculum else None
            self._loss_sum = float(ck.arrays["training.loss_sum"])
            self._loss_count = int(ck.arrays["training.loss_count"])
            self._seconds_before = float(ck.arrays["training.seconds"])
            self._best = meta.get("best")
            self._last_eval = meta.get("last_eval")
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{path!r} is not a complete training checkpoint: missing {exc}") from None
        self._last_checkpoint_step = step
        if meta.get("backend") != _backend.get_backend() or meta.get("threads") != _backend.get_num_threads():
            self._say(f"note: the checkpoint was written with backend {meta.get('backend')}, "
                      f"{meta.get('threads')} threads; now {_backend.get_backend()}, "
                      f"{_backend.get_num_threads()} threads (bitwise continuation needs the same)")
        return path

    def _open_log(self):
        path = self._path(LOG)
        rows = []
        if self.resume and os.path.exists(path):
            with open(path, newline="") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                if header is not None and tuple(header) != LOG_COLUMNS:
                    raise ValueError(f"{path!r} is not a dmem training log (columns {header})")
                rows = [r for r in reader if r and int(r[0]) <= self.step]
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(LOG_COLUMNS)
            writer.writerows(rows)
        os.replace(tmp, path)

    def _append_log(self, row):
        if self.out_dir is None:
            return
        with open(self._path(LOG), "a", newline="") as f:
            csv.writer(f).writerow(["" if v is None else (repr(v) if isinstance(v, float) else v)
                                    for v in row])

    def _write_summary(self, status, final_eval=None):
        summary = {
            "status": status,
            "step": self.step,
            "sequences": self.step * self.batch_size,
            "seconds": self.seconds(),
            "model": {"kind": self.model.kind, "config": self.model.config_dict(),
                      "num_params": self.model.num_params},
            "task": self._task_meta(),
            "settings": self.settings(),
            "backend": _backend.get_backend(),
            "threads": _backend.get_num_threads(),
            "curriculum_length": self.curriculum_length,
            "last_eval": self._last_eval,
            "final_eval": final_eval,
            "best": self._best,
            "files": {},
        }
        if self.out_dir is not None:
            for key, name in (("checkpoint", CHECKPOINT), ("best", BEST), ("log", LOG),
                              ("summary", SUMMARY)):
                if name == SUMMARY or os.path.exists(self._path(name)):
                    summary["files"][key] = self._path(name)
            path = self._path(SUMMARY)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(_jsonable(summary), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        return summary

    # -- pieces of a run ---------------------------------------------------------------
    def seconds(self):
        """Training wall-clock seconds, including earlier runs of a resumed training."""
        started = getattr(self, "_t0", None)
        return self._seconds_before + (time.perf_counter() - started if started is not None else 0.0)

    def train_task(self):
        """The task training samples from now (the task with the curriculum's maximum)."""
        if self.curriculum_length is None:
            return self.task
        return _with_config(self.task, **{self._range[1]: self.curriculum_length})

    def _say(self, message):
        if self._log is None:
            return
        bar = getattr(self, "_bar", None)
        if bar is not None:
            with bar.external_write_mode():
                self._log(message)
        else:
            self._log(message)

    def _max_length(self):
        """The longest length training samples now (``None`` for a fixed-length task)."""
        return None if self._range is None else getattr(self.train_task(), self._range[1])

    def _length_label(self):
        task = self.train_task()
        if self._range is None:
            return "fixed"
        lo, hi = (getattr(task, f) for f in self._range)
        return f"{lo}-{hi}" if lo != hi else str(lo)

    def _train_step(self):
        """One update.  The random state is restored if interrupted before the update."""
        rng_state = self.rng.bit_generator.state
        try:
            batch = self.train_task().sample(self.batch_size, self.rng)
            loss, grads = self.model.loss_and_grad(batch.inputs, batch.targets, batch.mask)
        except KeyboardInterrupt:
            self.rng.bit_generator.state = rng_state
            raise
        if not math.isfinite(loss) or not all(np.all(np.isfinite(g)) for g in grads.values()):
            what = f"the loss is {loss}" if not math.isfinite(loss) else "a gradient is NaN or infinite"
            kept = (f"the last good checkpoint, {self._path(CHECKPOINT)} (step "
                    f"{self._last_checkpoint_step}), is kept" if self._last_checkpoint_step is not None
                    else "no checkpoint was written")
            raise TrainingDivergedError(
                f"training diverged at step {self.step + 1}: {what}; {kept}. "
                f"Try a smaller learning rate or gradient clipping.")
        if self.clip is not None:
            kind, value = self.clip
            grads = clip_elementwise(grads, value) if kind == "value" else clip_global_norm(grads, value)[0]
        self._consistent = False
        self.optimizer.step(self.model.params, grads)
        self.step += 1
        self._loss_sum += float(loss)
        self._loss_count += 1
        return float(loss)

    def _evaluate(self):
        """Evaluate, write a log row, update best.npz and the curriculum; return
        whether the ``stop_below`` criterion is met."""
        task = self.train_task()
        result = evaluate(self.model, task, None, self.eval_batches, self.eval_batch_size,
                          self.eval_seed)
        length = self.curriculum_length if self.curriculum else None
        mean_loss = self._loss_sum / self._loss_count if self._loss_count else None
        self._last_eval = {"step": self.step, "cost_bits": result["cost_bits"],
                           "bit_errors": result["bit_errors"], "length": self._length_label()}
        self._append_log([self.step, self.step * self.batch_size, round(self.seconds(), 3),
                          mean_loss, result["cost_bits"], result["bit_errors"], self._max_length()])
        self._loss_sum, self._loss_count = 0.0, 0
        loss_text = "-" if mean_loss is None else f"{mean_loss:.4g}"
        self._say(f"step {self.step:>7}  seqs {self.step * self.batch_size:>9}  loss {loss_text:>8}  "
                  f"eval cost {result['cost_bits']:.4g} bits/seq  errors {result['bit_errors']:.4g} "
                  f"bits/seq  length {self._length_label()}")
        rank = (length or 0, -result["cost_bits"])
        if self._best is None or rank > ((self._best["curriculum_length"] or 0), -self._best["cost_bits"]):
            self._best = dict(self._last_eval, curriculum_length=length)
            if self.out_dir is not None:
                self.model.save(self._path(BEST), metadata={
                    "checkpoint": "dmem-best", "step": self.step,
                    "sequences": self.step * self.batch_size, "task": self._task_meta(),
                    "eval": self._best, "seed": self.seed, "backend": _backend.get_backend(),
                    "dmem_version": _version()})
        at_top = not self.curriculum or self.curriculum_length >= getattr(self.task, self._range[1])
        converged = self.stop_below is not None and at_top and result["cost_bits"] < self.stop_below
        if self.curriculum and result["cost_bits"] < self.curriculum.threshold:
            top = getattr(self.task, self._range[1])
            if self.curriculum_length < top:
                new = min(top, self.curriculum_length + self.curriculum.step)
                self._say(f"curriculum: eval cost {result['cost_bits']:.4g} < "
                          f"{self.curriculum.threshold:g} bits/seq, {self._range[1]} "
                          f"{self.curriculum_length} -> {new}")
                self.curriculum_length = new
        return converged

    def _handler(self, signum, frame):
        self._interrupt += 1
        if self._interrupt > 1:
            raise KeyboardInterrupt
        self._say("Ctrl-C: stopping after this step (press again to abort without saving)")

    # -- the run ------------------------------------------------------------------------
    def run(self):
        """Train until ``steps`` / ``minutes`` / Ctrl-C; return the summary dict
        (also written to ``out_dir/summary.json``).  A Trainer runs once; to train
        further, make a new one with ``resume=True``."""
        if self._ran:
            raise RuntimeError("this Trainer has already run; make a new one (with resume=True "
                               "and the same out_dir to continue)")
        self._ran = True
        if self.out_dir is not None:
            os.makedirs(self.out_dir, exist_ok=True)
            if self.resume:
                self._load_checkpoint()
            elif os.path.exists(self._path(CHECKPOINT)):
                raise FileExistsError(
                    f"{self.out_dir!r} already holds a training run ({CHECKPOINT}); "
                    f"resume it (resume=True / --resume) or choose another out_dir")
            self._open_log()
        fresh = not self.resume
        if self.steps is not None and self.step >= self.steps:
            self._say(f"nothing to do: the run is at step {self.step} >= steps={self.steps}")
            return self._write_summary("finished", None)

        self._t0 = time.perf_counter()
        deadline = None if self.minutes is None else self._t0 + 60.0 * self.minutes
        start_step = self.step
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            previous_handler = signal.signal(signal.SIGINT, self._handler)
        self._bar = self._make_bar(start_step)
        status = "finished"
        try:
            converged = False
            if fresh:
                self._consistent = False
                converged = self._evaluate()
                self._consistent = True
                if converged:
                    status = "converged"
            while not converged and (self.steps is None or self.step < self.steps):
                if deadline is not None and time.perf_counter() >= deadline:
                    status = "time limit"
                    break
                self._train_step()
                if self._bar is not None:
                    self._update_bar(start_step)
                converged = False
                if self.step % self.eval_every == 0:
                    converged = self._evaluate()
                self._consistent = True
                if self.out_dir is not None and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._interrupt:
                    raise KeyboardInterrupt
                if converged:
                    status = "converged"
                    break
        except KeyboardInterrupt:
            self._close_bar()
            if self.out_dir is not None and self._consistent and self._interrupt < 2:
                self.save_checkpoint()
                self._say(f"interrupted at step {self.step}; checkpoint saved to {self._path(CHECKPOINT)}")
            else:
                self._say(f"interrupted at step {self.step}; the last checkpoint (step "
                          f"{self._last_checkpoint_step}) is kept")
            self._write_summary("interrupted")
            raise
        except TrainingDivergedError:
            self._close_bar()
            self._write_summary("diverged")
            raise
        finally:
            self._close_bar()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        if self.out_dir is not None:
            self.save_checkpoint()
        # A final evaluation for the summary only: it changes neither the log, best.npz
        # nor the curriculum, so a resumed run continues exactly like an uninterrupted one.
        final = evaluate(self.model, self.train_task(), None, self.eval_batches,
                         self.eval_batch_size, self.eval_seed)
        final = dict(final, step=self.step, length=self._length_label())
        self._say(f"{status} at step {self.step} ({self.step * self.batch_size} sequences, "
                  f"{self.seconds():.1f} s): eval cost {final['cost_bits']:.4g} bits/seq, "
                  f"{final['bit_errors']:.4g} bit errors/seq at length {final['length']}")
        return self._write_summary(status, final)

    def _make_bar(self, start_step):
        if not self.progress or not _isatty(sys.stderr):
            return None
        from tqdm.auto import tqdm

        try:
            width = os.get_terminal_size(sys.stderr.fileno()).columns
        except (OSError, ValueError, AttributeError):
            width = 0
        sizing = {"dynamic_ncols": True} if width > 0 else {"ncols": 120, "nrows": 24}  # 0: a sizeless pty
        return tqdm(total=self.steps, initial=start_step, unit="step", file=sys.stderr, leave=True,
                    **sizing)

    def _update_bar(self, start_step):
        loss = self._loss_sum / max(self._loss_count, 1)  # mean since the last evaluation
        elapsed = time.perf_counter() - self._t0
        rate = (self.step - start_step) * self.batch_size / elapsed if elapsed > 0 else 0.0
        ev = self._last_eval or {}
        self._bar.set_postfix_str(
            f"loss={loss:.3g} cost={ev.get('cost_bits', float('nan')):.3g} "
            f"err={ev.get('bit_errors', float('nan')):.3g} len={self._length_label()} "
            f"seq/s={rate:.0f}", refresh=False)
        self._bar.update(1)

    def _close_bar(self):
        bar = getattr(self, "_bar", None)
        if bar is not None:
            self._bar = None
            bar.close()


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _version():
    from . import __version__

    return __version__


def train(model, task, steps=None, minutes=None, stop_below=None, batch_size=16, optimizer="rmsprop", lr=None,
          clip=("value", 10.0), curriculum=None, eval_every=100, eval_batches=4, eval_batch_size=32,
          eval_seed=1234, checkpoint_every=500, out_dir=None, resume=False, seed=0, progress=True,
          log=None):
    """Train ``model`` in place on ``task``; return the summary dict.

    ``Trainer(model, task, ...).run()``: the arguments are documented in
    :class:`Trainer`, the rules and files in this module's docstring.  The
    summary (also ``out_dir/summary.json``) has ``status`` (``"finished"``,
    ``"time limit"``, ``"converged"``), ``step``, ``sequences``, ``seconds``, ``final_eval``,
    ``best``, ``curriculum_length``, ``settings`` and ``files``.
    """
    return Trainer(model, task, steps=steps, minutes=minutes, stop_below=stop_below,
                   batch_size=batch_size,
                   optimizer=optimizer, lr=lr, clip=clip, curriculum=curriculum,
                   eval_every=eval_every, eval_batches=eval_batches,
                   eval_batch_size=eval_batch_size, eval_seed=eval_seed,
                   checkpoint_every=checkpoint_every, out_dir=out_dir, resume=resume, seed=seed,
                   progress=progress, log=log).run()
