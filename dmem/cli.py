"""The ``dmem`` command line: ``train``, ``eval``, ``plot``, ``info``.

Exit codes: 0 success; 1 an error the command reports in one line (a missing
or corrupt checkpoint, a diverged training, ...); 2 bad arguments (argparse);
130 interrupted by Ctrl-C (a training run saves its checkpoint first).
Set ``DMEM_DEBUG=1`` to see the traceback of a reported error.
"""

import argparse
import os
import sys

MODEL_DEFAULTS = {
    "ntm": {"memory": (128, 20), "heads": (1, 1), "controller_size": 100},
    "dnc": {"memory": (16, 16), "heads": (4, 1), "controller_size": 64},
}
TRAIN_DEFAULTS = {
    "model": "ntm", "task": "copy", "controller": "lstm", "dtype": "float64", "batch": 16,
    "optimizer": "rmsprop", "clip": 10.0, "seed": 0, "eval_every": 100, "eval_batches": 4,
    "checkpoint_every": 500,
}


class CommandError(Exception):
    """An error reported as one line on stderr, exit code 1."""


# --------------------------------------------------------------------------
# argument types


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _memory(text):
    """``"128x20"`` -> ``(128, 20)``: memory slots × word size."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        slots, word = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected SLOTSxWORD, e.g. 128x20 (128 slots of 20 numbers), got {text!r}") from None
    if slots < 1 or word < 1:
        raise argparse.ArgumentTypeError(f"slots and word size must be >= 1, got {text!r}")
    return slots, word


def _heads(text):
    """``"R"`` or ``"R,W"`` -> ``(R, W or None)``: read and write heads."""
    parts = text.split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or len(numbers) != len(parts) or min(numbers) < 1:
        raise argparse.ArgumentTypeError(
            f"expected READ or READ,WRITE head counts >= 1, e.g. 1 or 1,1, got {text!r}")
    return numbers[0], (numbers[1] if len(numbers) == 2 else None)


def _lengths(text):
    """``"10,20,40"`` -> ``[10, 20, 40]``."""
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected lengths >= 1 separated by commas, e.g. 10,20,40, got {text!r}")
    return values


def _key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. max_repeats=5, got {text!r}")
    value = value.strip()
    for convert in (int, float):
        try:
            return key.strip(), convert(value)
        except ValueError:
            pass
    return key.strip(), value


# --------------------------------------------------------------------------
# helpers


def _setup_runtime(args):
    import dmem

    if getattr(args, "backend", None):
        dmem.set_backend(args.backend)
    if getattr(args, "threads", None):
        dmem.set_num_threads(args.threads)


def _build_task(parser, name, bits=None, min_len=None, max_len=None, task_args=()):
    """The task ``name`` with the command line's task options; parser.error on a bad one."""
    from .tasks import TASKS, make_task

    params = TASKS[name]._params
    kwargs = dict(task_args or ())
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        parser.error(f"--task-arg: task {name} has no parameter {unknown[0]!r}; "
                     f"its parameters are {', '.join(params)}")
    if bits is not None:
        if "bits" not in params:
            parser.error(f"--bits: task {name} has no bits (its parameters are {', '.join(params)})")
        kwargs["bits"] = bits
    lo_hi = next(((lo, hi) for lo, hi in (("min_len", "max_len"), ("min_items", "max_items"))
                  if lo in params), None)
    if lo_hi is not None:
        if min_len is not None:
            kwargs[lo_hi[0]] = min_len
        if max_len is not None:
            kwargs[lo_hi[1]] = max_len
    else:  # fixed-length tasks: --max-len is their length
        if min_len is not None:
            parser.error(f"--min-len: task {name} has a fixed length; use --max-len to set it")
        if max_len is not None:
            kwargs["length"] = max_len
    try:
        return make_task(name, **kwargs)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))


def _task_from_metadata(parser, path, metadata, args):
    from .tasks import TASKS, make_task

    if getattr(args, "task", None):
        return _build_task(parser, args.task, task_args=args.task_arg)
    task = metadata.get("task") if isinstance(metadata, dict) else None
    if not isinstance(task, dict) or task.get("name") not in TASKS:
        raise CommandError(f"{path} does not say which task it was trained on (no task in its "
                           f"metadata); give one with --task NAME [--task-arg KEY=VALUE ...]")
    try:
        return make_task(task["name"], **task.get("config", {}))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"{path}: cannot rebuild its task {task}: {exc}") from None


def _resolve_checkpoint(args):
    from . import pretrained

    if args.pretrained:
        try:
            return pretrained.path(args.pretrained)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
    if not os.path.exists(args.checkpoint):
        raise CommandError(f"no checkpoint at {args.checkpoint!r}")
    if os.path.isdir(args.checkpoint):
        for name in ("best.npz", "checkpoint.npz"):
            candidate = os.path.join(args.checkpoint, name)
            if os.path.exists(candidate):
                return candidate
        raise CommandError(f"{args.checkpoint!r} is a folder without best.npz or checkpoint.npz")
    return args.checkpoint


def _load_model_and_task(parser, args):
    import dmem
    from .checkpoints import load_checkpoint

    path = _resolve_checkpoint(args)
    model = dmem.load(path)
    metadata = load_checkpoint(path).metadata
    task = _task_from_metadata(parser, path, metadata, args)
    from .training import _check_compatible

    try:
        _check_compatible(model, task)
    except ValueError as exc:
        raise CommandError(f"{path}: {exc}") from None
    return path, model, task, metadata


def _describe_model(model):
    cfg = model.config
    if model.kind == "ntm":
        heads = f"{cfg.read_heads} read / {cfg.write_heads} write heads"
    else:
        heads = f"{cfg.read_heads} read heads"
    return (f"{model.kind.upper()} ({cfg.controller} controller {cfg.controller_size}, memory "
            f"{cfg.memory_slots}x{cfg.word_size}, {heads}, {model.num_params:,} parameters, "
            f"{model.dtype.name})")


def _describe_task(task):
    return f"{task.name}(" + ", ".join(f"{k}={v}" for k, v in task.config().items()) + ")"


# --------------------------------------------------------------------------
# info


def _cmd_info(parser, args):
    import dmem

    facts = dmem.info()
    if args.json:
        import json

        print(json.dumps(facts, indent=2))
        return 0
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        print(f"{key:<{width}}  {value}")
    return 0


# --------------------------------------------------------------------------
# train


def _conflict(parser, option, given, stored):
    parser.error(f"{option} {given} conflicts with the checkpoint being resumed, which has {stored}; "
                 f"leave it out (the checkpoint's value is used) or train into a new --out")


def _resume_model_and_task(parser, args, path):
    import dmem
    from .checkpoints import load_checkpoint
    from .optim import make_optimizer
    from .tasks import make_task

    ck = load_checkpoint(path)
    model = dmem.load(path)
    cfg = model.config
    given_model = {
        "--model": (args.model, model.kind),
        "--controller": (args.controller, cfg.controller),
        "--controller-size": (args.controller_size, cfg.controller_size),
        "--dtype": (args.dtype, model.dtype.name),
        "--memory": (args.memory and "{}x{}".format(*args.memory),
                     f"{cfg.memory_slots}x{cfg.word_size}"),
    }
    if args.heads is not None:
        stored = (cfg.read_heads, getattr(cfg, "write_heads", 1))
        given = (args.heads[0], args.heads[1] if args.heads[1] is not None else stored[1])
        given_model["--heads"] = ("{},{}".format(*given), "{},{}".format(*stored))
    for option, (given, stored) in given_model.items():
        if given is not None and given != stored:
            _conflict(parser, option, given, stored)
    task_meta = ck.metadata.get("task")
    if not isinstance(task_meta, dict):
        raise CommandError(f"{path!r} is not a training checkpoint (no task in its metadata)")
    task = make_task(task_meta["name"], **task_meta["config"])
    if args.task is not None and args.task != task.name:
        _conflict(parser, "--task", args.task, task.name)
    if args.bits is not None or args.min_len is not None or args.max_len is not None or args.task_arg:
        wanted = _build_task(parser, task.name, args.bits, args.min_len, args.max_len,
                             list(task.config().items()) + list(args.task_arg or ()))
        if wanted != task:
            _conflict(parser, "the task options", _describe_task(wanted), _describe_task(task))
    settings = ck.metadata.get("settings", {})
    # training settings not given on the command line come from the checkpoint
    opt = settings.get("optimizer", {})
    if args.optimizer is None and args.lr is None and opt.get("name"):
        args.optimizer_instance = make_optimizer(opt["name"], **opt.get("hyperparameters", {}))
    args.eval_batch_size = settings.get("eval_batch_size", 32)
    args.eval_seed = settings.get("eval_seed", 1234)
    fill = {
        "batch": settings.get("batch_size"),
        "optimizer": opt.get("name"),
        "seed": settings.get("seed"),
        "eval_every": settings.get("eval_every"),
        "eval_batches": settings.get("eval_batches"),
    }
    for key, value in fill.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.clip is None and args.clip_norm is None:
        clip = settings.get("clip")
        if clip is None:
            args.clip = 0.0
        elif clip[0] == "value":
            args.clip = clip[1]
        else:
            args.clip_norm = clip[1]
    args.stored_curriculum = settings.get("curriculum")
    return model, task


def _new_model_and_task(parser, args):
    import dmem

    kind = args.model or TRAIN_DEFAULTS["model"]
    defaults = MODEL_DEFAULTS[kind]
    task = _build_task(parser, args.task or TRAIN_DEFAULTS["task"], args.bits, args.min_len,
                       args.max_len, args.task_arg)
    slots, word = args.memory or defaults["memory"]
    reads, writes = args.heads or defaults["heads"]
    options = dict(memory_slots=slots, word_size=word, read_heads=reads,
                   controller=args.controller or TRAIN_DEFAULTS["controller"],
                   controller_size=args.controller_size or defaults["controller_size"])
    if kind == "ntm":
        options["write_heads"] = writes if writes is not None else 1
    elif writes not in (None, 1):
        parser.error(f"--heads {reads},{writes}: the DNC has exactly one write head; give --heads {reads}")
    seed = args.seed if args.seed is not None else TRAIN_DEFAULTS["seed"]
    try:
        model = dmem.models.MODELS[kind](task.input_size, task.output_size, seed=seed,
                                         dtype=args.dtype or TRAIN_DEFAULTS["dtype"], **options)
    except (TypeError, ValueError) as exc:
        parser.error(f"cannot build the {kind} model: {exc}")
    return model, task


def _cmd_train(parser, args):
    import dmem
    import dmem.models  # noqa: F401  (dmem.models.MODELS)
    from .optim import make_optimizer
    from .training import CHECKPOINT, Curriculum, train

    if args.resume and not args.out:
        parser.error("--resume needs --out DIR, the folder of the run to continue")
    if args.curriculum is None and not args.resume and (
            args.curriculum_step is not None or args.curriculum_threshold is not None):
        parser.error("--curriculum-step / --curriculum-threshold need --curriculum START")
    _setup_runtime(args)
    if args.resume:
        path = os.path.join(args.out, CHECKPOINT)
        if not os.path.exists(path):
            raise CommandError(f"cannot resume: no checkpoint at {path!r} "
                               f"(leave out --resume to start a new run there)")
        model, task = _resume_model_and_task(parser, args, path)
    else:
        model, task = _new_model_and_task(parser, args)
    for key, value in TRAIN_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    out = args.out or os.path.join("runs", f"{model.kind}-{task.name}-seed{args.seed}")
    if args.clip_norm is not None:
        clip = ("norm", args.clip_norm)
    else:
        clip = ("value", args.clip) if args.clip > 0 else None
    stored = getattr(args, "stored_curriculum", None) or {}
    curriculum = None
    if args.curriculum is not None or stored:  # on resume, unspecified fields come from the checkpoint
        curriculum = Curriculum(
            start=args.curriculum if args.curriculum is not None else stored.get("start"),
            step=args.curriculum_step or stored.get("step", 1),
            threshold=args.curriculum_threshold or stored.get("threshold", 1.0))
    optimizer = getattr(args, "optimizer_instance", None) or args.optimizer

    print(f"model     {_describe_model(model)}")
    print(f"task      {_describe_task(task)}")
    shown = make_optimizer(optimizer, lr=args.lr) if isinstance(optimizer, str) else optimizer
    lr = f" lr {shown.lr:g}"
    clip_text = "none" if clip is None else f"{clip[0]} {clip[1]:g}"
    curriculum_text = "" if curriculum is None else (
        f"; curriculum from {curriculum.start or 'the minimum'} (+{curriculum.step} when eval cost < "
        f"{curriculum.threshold:g} bits/seq)")
    print(f"training  batch {args.batch}; {args.optimizer}{lr}; clip {clip_text}; seed {args.seed}"
          f"{curriculum_text}")
    stop = [f"{args.steps} steps" if args.steps else None,
            f"{args.minutes:g} minutes" if args.minutes else None,
            f"eval cost < {args.stop_below:g} bits/seq" if args.stop_below else None]
    print(f"run       backend {dmem.get_backend()}, {dmem.get_num_threads()} threads; until "
          f"{' or '.join(s for s in stop if s)}; {'resuming' if args.resume else 'writing to'} {out}")
    try:
        summary = train(
            model, task, steps=args.steps, minutes=args.minutes, stop_below=args.stop_below,
            batch_size=args.batch,
            optimizer=optimizer, lr=args.lr if isinstance(optimizer, str) else None, clip=clip,
            curriculum=curriculum, eval_every=args.eval_every, eval_batches=args.eval_batches,
            eval_batch_size=getattr(args, "eval_batch_size", 32),
            eval_seed=getattr(args, "eval_seed", 1234),
            checkpoint_every=args.checkpoint_every, out_dir=out, resume=args.resume,
            seed=args.seed, progress=not args.no_progress, log=lambda s: print(s, flush=True))
    except KeyboardInterrupt:
        print(f"interrupted; continue with: dmem train --resume --out {out} --steps N", file=sys.stderr)
        return 130
    files = summary["files"]
    if "checkpoint" in files:
        print(f"saved checkpoint  {files['checkpoint']}  (step {summary['step']}; "
              f"continue with --resume --out {out})")
    if "best" in files and summary["best"]:
        b = summary["best"]
        print(f"best model        {files['best']}  (step {b['step']}, eval cost "
              f"{b['cost_bits']:.4g} bits/seq, {b['bit_errors']:.4g} bit errors/seq)")
    for key, label in (("log", "log"), ("summary", "summary")):
        if key in files:
            print(f"{label:<17} {files[key]}")
    return 0


# --------------------------------------------------------------------------
# eval


def _cmd_eval(parser, args):
    from .training import evaluate

    if (args.checkpoint is None) == (args.pretrained is None):
        parser.error("give a CHECKPOINT file or --pretrained NAME (one of them)")
    if args.len is not None and args.sweep is not None:
        parser.error("give --len or --sweep, not both")
    _setup_runtime(args)
    path, model, task, metadata = _load_model_and_task(parser, args)
    lengths = args.sweep if args.sweep is not None else [args.len]
    print(f"checkpoint  {path}")
    print(f"model       {_describe_model(model)}")
    trained = f", trained {metadata['step']:,} steps" if isinstance(metadata.get("step"), int) else ""
    print(f"task        {_describe_task(task)}{trained}")
    print(f"evaluation  {args.batches} batches of {args.batch_size} sequences per length, seed {args.seed}")
    print()
    header = f"{'length':>8}  {'cost (bits/seq)':>16}  {'bit errors/seq':>15}"
    print(header)
    print("-" * len(header))
    iterator = lengths
    bar = None
    if len(lengths) > 1 and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(lengths, unit="length", leave=False, file=sys.stderr)
        iterator = bar
    for length in iterator:
        result = evaluate(model, task, length=length, batches=args.batches,
                          batch_size=args.batch_size, seed=args.seed)
        label = str(length) if length is not None else "train"
        line = f"{label:>8}  {result['cost_bits']:>16.4f}  {result['bit_errors']:>15.3f}"
        if bar is not None:
            bar.write(line)
        else:
            print(line, flush=True)
    if bar is not None:
        bar.close()
    return 0


# --------------------------------------------------------------------------
# plot


def _cmd_plot(parser, args):
    from .plots import plot_access, plot_curve

    sources = [s for s in (args.checkpoint, args.pretrained, args.curve) if s is not None]
    if len(sources) != 1:
        parser.error("give exactly one of CHECKPOINT, --pretrained NAME or --curve LOG_CSV")
    if args.curve is not None:
        if args.len is not None:
            parser.error("--len is for access plots, not for --curve")
        if not os.path.exists(args.curve):
            raise CommandError(f"no training log at {args.curve!r}")
        if os.path.isdir(args.curve):
            args.curve = os.path.join(args.curve, "log.csv")
            if not os.path.exists(args.curve):
                raise CommandError(f"no training log at {args.curve!r}")
        out = plot_curve(args.curve, args.output or "curve.png")
        print(f"saved training curve to {out}")
        return 0
    _setup_runtime(args)
    path, model, task, _ = _load_model_and_task(parser, args)
    out = plot_access(model, task, args.len, args.output or "access.png", seed=args.seed)
    length = f"length {args.len}" if args.len is not None else "a length from the training range"
    print(f"saved memory-access plot of {path} on {task.name} ({length}) to {out}")
    return 0


# --------------------------------------------------------------------------
# parser


def _add_runtime(p):
    p.add_argument("--backend", choices=("compiled", "reference"),
                   help="implementation to run (default: DMEM_BACKEND or compiled)")
    p.add_argument("--threads", type=_positive_int, metavar="N", help="threads of the compiled kernels")


def _add_source(p, what, tasks):
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="a .npz written by dmem train (best.npz, checkpoint.npz) or a run folder")
    p.add_argument("--pretrained", metavar="NAME", help=f"{what} a checkpoint shipped with dmem")
    p.add_argument("--task", choices=tasks, metavar="NAME",
                   help=f"the task ({', '.join(tasks)}), when the checkpoint does not record it "
                        f"(or to override it)")
    p.add_argument("--task-arg", action="append", type=_key_value, metavar="KEY=VALUE", default=[],
                   help="a parameter of --task (repeatable), e.g. --task-arg bits=8")


def build_parser():
    from .tasks import TASKS

    parser = argparse.ArgumentParser(
        prog="dmem",
        description="Differentiable external memory (NTM, DNC): reference and compiled kernels.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("info", help="version, backend, compiled kernels, OpenMP, threads")
    p.add_argument("--json", action="store_true", help="print the facts as JSON")
    p.set_defaults(func=_cmd_info, parser=p)

    # train ---------------------------------------------------------------------------
    p = sub.add_parser(
        "train", help="train an NTM or DNC on a task",
        description="Train an NTM or DNC on a task, writing checkpoint.npz, best.npz, log.csv and "
                    "summary.json to --out.  With --resume, unspecified options come from the "
                    "checkpoint.",
        epilog="--min-len/--max-len set min_len/max_len (copy, repeat-copy, dnc-repeat-copy), "
               "min_items/max_items (associative-recall) or the length (ngrams, priority-sort: "
               "--max-len only).  Other task parameters: --task-arg KEY=VALUE.")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=("ntm", "dnc"), help="default ntm")
    g.add_argument("--controller", choices=("lstm", "ff"), help="default lstm")
    g.add_argument("--memory", type=_memory, metavar="SLOTSxWORD",
                   help="memory size, e.g. 128x20 (default: ntm 128x20, dnc 16x16)")
    g.add_argument("--heads", type=_heads, metavar="R[,W]",
                   help="read (and write) heads, e.g. 1 or 1,1 (default: ntm 1,1, dnc 4)")
    g.add_argument("--controller-size", type=_positive_int, metavar="C",
                   help="controller units (default: ntm 100, dnc 64)")
    g.add_argument("--dtype", choices=("float32", "float64"), help="default float64")
    g = p.add_argument_group("task")
    g.add_argument("--task", choices=tuple(TASKS), help="default copy")
    g.add_argument("--bits", type=_positive_int, help="bits per vector (task default)")
    g.add_argument("--min-len", type=_positive_int, metavar="L", help="shortest training length")
    g.add_argument("--max-len", type=_positive_int, metavar="L", help="longest training length")
    g.add_argument("--task-arg", action="append", type=_key_value, metavar="KEY=VALUE", default=[],
                   help="any other task parameter (repeatable), e.g. --task-arg max_repeats=5")
    g = p.add_argument_group("training")
    g.add_argument("--batch", type=_positive_int, metavar="B", help="sequences per step (default 16)")
    stop = g.add_mutually_exclusive_group(required=True)
    stop.add_argument("--steps", type=_positive_int, metavar="N",
                      help="train until N steps in total (also counting a resumed run's)")
    stop.add_argument("--minutes", type=_positive_float, metavar="M", help="train for M minutes")
    g.add_argument("--stop-below", type=_positive_float, metavar="BITS",
                   help="also stop at the first evaluation on the full task costing < BITS bits/seq")
    g.add_argument("--optimizer", choices=("rmsprop", "adam"), help="default rmsprop (Graves' variant)")
    g.add_argument("--lr", type=_positive_float, help="learning rate (default: rmsprop 1e-4, adam 1e-3)")
    clip = g.add_mutually_exclusive_group()
    clip.add_argument("--clip", type=_nonnegative_float, metavar="X",
                      help="clip every gradient entry to [-X, X] (default 10; 0 turns clipping off)")
    clip.add_argument("--clip-norm", type=_positive_float, metavar="X",
                      help="clip the gradients' global norm to X instead")
    g.add_argument("--seed", type=_nonnegative_int, help="seed of the model and the batches (default 0)")
    g.add_argument("--curriculum", type=_positive_int, metavar="START",
                   help="curriculum: start with the longest length at START and raise it after "
                        "each evaluation whose cost is below the threshold")
    g.add_argument("--curriculum-step", type=_positive_int, metavar="K", help="raise by K (default 1)")
    g.add_argument("--curriculum-threshold", type=_positive_float, metavar="BITS",
                   help="eval cost in bits/seq below which the length rises (default 1.0)")
    g.add_argument("--eval-every", type=_positive_int, metavar="K", help="evaluate every K steps (default 100)")
    g.add_argument("--eval-batches", type=_positive_int, metavar="K",
                   help="held-out batches of 32 per evaluation (default 4)")
    g.add_argument("--checkpoint-every", type=_positive_int, metavar="K",
                   help="write checkpoint.npz every K steps (default 500)")
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/MODEL-TASK-seedS)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out DIR")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_runtime(g)
    p.set_defaults(func=_cmd_train, parser=p)

    # eval ----------------------------------------------------------------------------
    p = sub.add_parser(
        "eval", help="cost and bit errors of a trained model, per sequence length",
        description="Evaluate a trained model on its task (rebuilt from the checkpoint) at one or "
                    "more lengths, e.g. longer than trained on.")
    _add_source(p, "evaluate", tuple(TASKS))
    p.add_argument("--len", type=_positive_int, metavar="L",
                   help="length of every sequence (default: the training range)")
    p.add_argument("--sweep", type=_lengths, metavar="L1,L2,...", help="several lengths, e.g. 10,20,40,80")
    p.add_argument("--batches", type=_positive_int, default=8, metavar="K", help="batches per length (default 8)")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="B", help="default 32")
    p.add_argument("--seed", type=_nonnegative_int, default=1234, help="seed of the test batches (default 1234)")
    _add_runtime(p)
    p.set_defaults(func=_cmd_eval, parser=p)

    # plot ----------------------------------------------------------------------------
    p = sub.add_parser(
        "plot", help="PNG of a model's memory access, or of a training curve",
        description="Plot inputs, outputs and read/write weightings of one sequence (CHECKPOINT or "
                    "--pretrained), or a training curve (--curve OUT_DIR/log.csv).")
    _add_source(p, "plot", tuple(TASKS))
    p.add_argument("--curve", metavar="LOG_CSV", help="plot the training curve of this log.csv")
    p.add_argument("--len", type=_positive_int, metavar="L", help="sequence length (default: from the training range)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the sequence (default 0)")
    p.add_argument("-o", "--output", metavar="PNG", help="output file (default access.png / curve.png)")
    _add_runtime(p)
    p.set_defaults(func=_cmd_plot, parser=p)
    return parser


def main(argv=None):
    """Run the ``dmem`` command line; return the exit code."""
    from .checkpoints import CheckpointError
    from .training import TrainingDivergedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args.parser, args)
    except KeyboardInterrupt:
        print("dmem: interrupted", file=sys.stderr)
        return 130
    except (CommandError, CheckpointError, TrainingDivergedError, FileNotFoundError, FileExistsError,
            ImportError, ValueError, TypeError) as exc:
        if os.environ.get("DMEM_DEBUG"):
            raise
        print(f"dmem {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
