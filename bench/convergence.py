"""Time to convergence of a training recipe over several seeds.

Runs ``dmem train`` once per seed (``--jobs`` at a time, each on
``--threads`` threads), every run stopping at its first evaluation on the full
task that costs less than ``--below`` bits per sequence (``--stop-below``) or
at ``--minutes``.  Then reads each run's ``log.csv`` and prints, per seed, the
step, sequences and wall-clock seconds of that evaluation, and the median over
the seeds (a seed that did not get there counts as ``inf``: the median is then
a lower bound if more than half failed).  The table and the settings go to
``bench/results/<name>.json``.

Example (the NTM copy recipe of the README, five seeds, two at a time)::

    python bench/convergence.py --seeds 0-4 --jobs 2 --minutes 15 -- \\
        --task copy --batch 1 --optimizer rmsprop --lr 1e-4 --eval-every 500

Everything after ``--`` goes to ``dmem train`` unchanged.  The ``seconds`` of
``log.csv`` are the run's own wall-clock training time, evaluations
included; two runs sharing a 2-core machine each get one core.
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def _seeds(text):
    seeds = []
    for part in text.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"seeds must be like 0-4 or 0,3,7, got {text!r}")
    return seeds


def first_below(log_path, below):
    """``(step, sequences, seconds)`` of the first full-task evaluation below
    ``below`` bits/seq in a dmem ``log.csv``, or ``None``."""
    with open(log_path, newline="") as f:
        rows = list(csv.DictReader(f))
    top = max((int(r["curriculum_length"]) for r in rows if r["curriculum_length"]), default=None)
    for r in rows:
        at_top = top is None or not r["curriculum_length"] or int(r["curriculum_length"]) >= top
        if at_top and float(r["eval_cost_bits"]) < below:
            return int(r["step"]), int(r["sequences"]), float(r["seconds"])
    return None


def _run(seed, args, out_root):
    out = os.path.join(out_root, f"seed{seed}")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "dmem", "train", "--seed", str(seed), "--out", out,
           "--threads", str(args.threads), "--minutes", str(args.minutes),
           "--stop-below", str(args.below), "--no-progress", *args.train_args]
    with open(os.path.join(out_root, f"seed{seed}.txt"), "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"seed {seed}: dmem train exited with {code}; see {log.name}")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    hit = first_below(os.path.join(out, "log.csv"), args.below)
    return {"seed": seed, "converged": hit is not None,
            "step": hit[0] if hit else None, "sequences": hit[1] if hit else None,
            "seconds": hit[2] if hit else None,
            "run_steps": summary["step"], "run_seconds": summary["seconds"],
            "status": summary["status"]}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    train_args = []
    if "--" in argv:
        i = argv.index("--")
        argv, train_args = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=_seeds, default=list(range(5)), help="e.g. 0-4 (default)")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--threads", type=int, default=1, help="threads of each run (default 1)")
    p.add_argument("--minutes", type=float, default=15.0, help="time limit of each run (default 15)")
    p.add_argument("--below", type=float, default=0.1, help="convergence: eval cost < BITS (default 0.1)")
    p.add_argument("--out", help="folder of the runs (default: a new temporary folder)")
    p.add_argument("--name", help="results file bench/results/NAME.json (default: a timestamp)")
    args = p.parse_args(argv)
    args.train_args = train_args
    out_root = args.out or tempfile.mkdtemp(prefix="dmem-convergence-")
    os.makedirs(out_root, exist_ok=True)
    print(f"runs in {out_root}; dmem train {' '.join(train_args)}", flush=True)
    started = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda s: _run(s, args, out_root), args.seeds))
    print(f"\n{'seed':>4}  {'converged':>9}  {'step':>7}  {'sequences':>9}  {'seconds':>8}")
    for r in results:
        if r["converged"]:
            print(f"{r['seed']:>4}  {'yes':>9}  {r['step']:>7}  {r['sequences']:>9}  {r['seconds']:>8.1f}")
        else:
            print(f"{r['seed']:>4}  {'no':>9}  {'-':>7}  {'-':>9}  {'> ' + format(r['run_seconds'], '.0f'):>8}")
    times = [r["seconds"] if r["converged"] else math.inf for r in results]
    median = statistics.median(times)
    print(f"\nmedian seconds to < {args.below:g} bits/seq over {len(results)} seeds: "
          f"{median:.1f} ({median / 60:.2f} min)" if math.isfinite(median) else
          f"\nmedian: not reached (more than half of the seeds did not converge in {args.minutes:g} min)")
    here = os.path.dirname(os.path.abspath(__file__))
    name = args.name or time.strftime("convergence-%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(here, "results", f"{name}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"train_args": train_args, "below": args.below, "jobs": args.jobs,
                   "threads": args.threads, "minutes": args.minutes,
                   "median_seconds": median if math.isfinite(median) else None,
                   "wall_seconds": time.time() - started, "runs": results}, f, indent=2)
        f.write("\n")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
