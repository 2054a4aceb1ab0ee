"""Turn a pytest-benchmark JSON file into a markdown table of speed-ups.

    pytest bench --benchmark-json=bench/results/ops.json
    python bench/report.py bench/results/ops.json [--stat median]
    python bench/report.py run.json --compact small.json   # also: a copy without per-round times

Benchmarks are matched by group (e.g. ``"link fwd+bwd|B=16,N=256"``); within a
group, the ``implementation`` recorded in ``extra_info`` names the column.  The
last column is reference time / compiled time, measured in the same run.

When the run holds benchmarks that record more in ``extra_info`` (the model
suite, ``bench/test_bench_models.py``), two more tables follow:

* targets: the compiled time beside ``target_seconds`` and, where given,
  the PyTorch time of the same step (``pytorch_seconds``, figures quoted by
  the issue, not measured here);
* peak memory: ``peak_bytes`` of each implementation (tracemalloc, one
  untimed call) and, for the DNC, the link storage ``link_bytes`` and the
  compiled peak / link ratio beside ``target_peak_over_link``.
"""

import argparse
import json
import sys
from collections import defaultdict


def _format_time(seconds):
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _format_bytes(n):
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    if n >= 2**10:
        return f"{n / 2**10:.1f} KiB"
    return f"{n} B"


def _cell(group):
    """A group name as a markdown table cell (its ``|`` escaped)."""
    return group.replace("|", "\\|")


def _read(path):
    with open(path) as f:
        return json.load(f)


def load(path, stat="median"):
    data = _read(path)
    table = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        impl = bench.get("extra_info", {}).get("implementation", "?")
        group = bench.get("group") or bench["name"]
        table[group][impl] = bench["stats"][stat]
    threads = {b.get("extra_info", {}).get("num_threads") for b in data.get("benchmarks", [])}
    return table, data.get("machine_info", {}), threads


def load_extra(path):
    """``{group: {implementation: extra_info}}`` of every benchmark in the file."""
    extra = defaultdict(dict)
    for bench in _read(path).get("benchmarks", []):
        info = bench.get("extra_info", {})
        group = bench.get("group") or bench["name"]
        extra[group][info.get("implementation", "?")] = info
    return extra


def _sort_key(group):
    name, _, params = group.partition("|")
    values = []
    for item in params.split(","):
        key, _, value = item.partition("=")
        values.append((key, int(value) if value.isdigit() else value))
    return (name, values)


def render(table, implementations=("reference", "compiled")):
    extra = sorted({impl for row in table.values() for impl in row} - set(implementations))
    columns = list(implementations) + extra
    lines = ["| op | " + " | ".join(columns) + " | reference / compiled |",
             "|---|" + "---:|" * (len(columns) + 1)]
    for group in sorted(table, key=_sort_key):
        row = table[group]
        cells = [_format_time(row[c]) if c in row else "" for c in columns]
        if "reference" in row and "compiled" in row and row["compiled"] > 0:
            ratio = f"{row['reference'] / row['compiled']:.1f}×"
        else:
            ratio = ""
        lines.append(f"| {_cell(group)} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def _first(infos, key):
    """The value of ``key`` in the extra_info of any implementation of a group."""
    for info in infos.values():
        if key in info:
            return info[key]
    return None


def render_targets(table, extra):
    """Markdown table of the compiled times against their targets and PyTorch (or "")."""
    groups = [g for g in sorted(extra, key=_sort_key)
              if _first(extra[g], "target_seconds") is not None
              or _first(extra[g], "pytorch_seconds") is not None]
    if not groups:
        return ""
    lines = ["| benchmark | compiled | target | met | PyTorch (issue) | PyTorch / compiled |",
             "|---|---:|---:|:---:|---:|---:|"]
    for group in groups:
        compiled = table[group].get("compiled")
        target = _first(extra[group], "target_seconds")
        pytorch = _first(extra[group], "pytorch_seconds")
        cells = [
            _format_time(compiled) if compiled is not None else "",
            f"≤ {_format_time(target)}" if target is not None else "",
            ("yes" if compiled <= target else "no") if None not in (compiled, target) else "",
            f"≈ {_format_time(pytorch)}" if pytorch is not None else "",
            f"{pytorch / compiled:.1f}×" if None not in (compiled, pytorch) and compiled > 0 else "",
        ]
        lines.append(f"| {_cell(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_memory(extra, implementations=("reference", "compiled")):
    """Markdown table of peak memory per implementation and against the link storage (or "")."""
    groups = [g for g in sorted(extra, key=_sort_key)
              if any("peak_bytes" in info for info in extra[g].values())]
    if not groups:
        return ""
    lines = ["| benchmark | " + " | ".join(f"peak {c}" for c in implementations)
             + " | link storage T·B·N²·8 | compiled peak / link | target |",
             "|---|" + "---:|" * len(implementations) + "---:|---:|---:|"]
    for group in groups:
        infos = extra[group]
        peaks = [infos.get(c, {}).get("peak_bytes") for c in implementations]
        cells = [_format_bytes(p) if p is not None else "" for p in peaks]
        link = _first(infos, "link_bytes")
        ratio = infos.get("compiled", {}).get("peak_over_link")
        target = _first(infos, "target_peak_over_link")
        cells += [_format_bytes(link) if link is not None else "",
                  f"{ratio:.2f}" if ratio is not None else "",
                  f"≤ {target:g}" if target is not None else ""]
        lines.append(f"| {_cell(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _provenance(data):
    """One line: the run's date, git commit (``+dirty`` with uncommitted changes) and
    the thread variables recorded in ``extra_info["env"]``."""
    commit = data.get("commit_info", {})
    rev = (commit.get("id") or "unknown")[:7] + ("+dirty" if commit.get("dirty") else "")
    envs = sorted({f"{k}={v}" for b in data.get("benchmarks", [])
                   for k, v in b.get("extra_info", {}).get("env", {}).items()})
    line = f"run {data.get('datetime', 'unknown date')[:16]}; commit {rev}"
    return line + (f"; {' '.join(envs)}" if envs else "")


def compact(path, out):
    """Write the run at ``path`` to ``out`` without each benchmark's ``stats.data``."""
    data = _read(path)
    for bench in data.get("benchmarks", []):
        bench.get("stats", {}).pop("data", None)
    with open(out, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON file")
    parser.add_argument("--stat", default="median", choices=["min", "median", "mean"])
    parser.add_argument("--compact", metavar="OUT",
                        help="also write the run to OUT without the time of every round "
                             "(the statistics stay; a few hundred KiB instead of up to "
                             "hundreds of MiB), e.g. to keep it in git")
    args = parser.parse_args(argv)
    if args.compact:
        compact(args.json, args.compact)
    table, machine, threads = load(args.json, args.stat)
    if not table:
        print("no benchmarks in", args.json, file=sys.stderr)
        return 1
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    print(f"{args.stat} times; {cpu}; threads: {', '.join(str(t) for t in sorted(threads, key=str))}")
    print(_provenance(_read(args.json)) + "\n")
    print(render(table))
    extra = load_extra(args.json)
    targets = render_targets(table, extra)
    if targets:
        print(f"\nTargets of the compiled step ({args.stat} times; PyTorch figures as quoted by the issue):\n")
        print(targets)
    memory = render_memory(extra)
    if memory:
        print("\nPeak memory of one call (tracemalloc, untimed):\n")
        print(memory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
