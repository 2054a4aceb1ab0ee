"""Turn a pytest-benchmark JSON file into a markdown table of speed-ups.

    pytest bench --benchmark-json=bench/results/ops.json
    python bench/report.py bench/results/ops.json [--stat median]

Benchmarks are matched by group (e.g. ``"link fwd+bwd|B=16,N=256"``); within a
group, the ``implementation`` recorded in ``extra_info`` names the column.  The
last column is reference time / compiled time, measured in the same run.
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


def load(path, stat="median"):
    with open(path) as f:
        data = json.load(f)
    table = defaultdict(dict)
    for bench in data.get("benchmarks", []):
        impl = bench.get("extra_info", {}).get("implementation", "?")
        group = bench.get("group") or bench["name"]
        table[group][impl] = bench["stats"][stat]
    threads = {b.get("extra_info", {}).get("num_threads") for b in data.get("benchmarks", [])}
    return table, data.get("machine_info", {}), threads


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
        lines.append(f"| {group} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="pytest-benchmark JSON file")
    parser.add_argument("--stat", default="median", choices=["min", "median", "mean"])
    args = parser.parse_args(argv)
    table, machine, threads = load(args.json, args.stat)
    if not table:
        print("no benchmarks in", args.json, file=sys.stderr)
        return 1
    cpu = machine.get("cpu", {}).get("brand_raw", "unknown CPU")
    print(f"{args.stat} times; {cpu}; threads: {', '.join(str(t) for t in sorted(threads, key=str))}\n")
    print(render(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
