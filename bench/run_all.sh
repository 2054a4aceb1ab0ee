#!/usr/bin/env bash
# Run the benchmark suites into bench/results/<name>.json and print the report.
#
#   bench/run_all.sh                                  # every suite in bench/
#   bench/run_all.sh bench/test_bench_models.py       # a subset: any pytest arguments
#   bench/run_all.sh bench/test_bench_linkage.py -k "link_step"
#   NAME=models-2threads bench/run_all.sh bench/test_bench_models.py
#
# Threads (on a 2-core machine, compare 1 and 2):
#
#   DMEM_NUM_THREADS=1 NAME=models-1thread  bench/run_all.sh bench/test_bench_models.py
#   DMEM_NUM_THREADS=2 NAME=models-2threads bench/run_all.sh bench/test_bench_models.py
#
# DMEM_NUM_THREADS is the OpenMP thread count of the compiled kernels (default:
# the cores this process may use).  OPENBLAS_NUM_THREADS is set to 1 unless you
# set it: the models call numpy's BLAS between kernels, and OpenBLAS threads
# spinning next to the kernels' OpenMP threads made a compiled NTM step at
# B=16 ~25x slower on 2 cores (OPENBLAS_NUM_THREADS=2 bench/run_all.sh ... to
# measure that case).  The variables in force are recorded in each benchmark's
# extra_info and printed by the report.
#
# Environment:
#   PYTHON   the interpreter (default: python3; e.g. PYTHON=/tmp/venv0/bin/python)
#   NAME     results file name without .json (default: UTC timestamp + short commit)
#   STAT     statistic of the report: min, median (default) or mean
#
# The JSON is pytest-benchmark's (--benchmark-json); re-print its tables with
#   python bench/report.py bench/results/<name>.json [--stat min]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root"

PYTHON="${PYTHON:-python3}"
STAT="${STAT:-median}"
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
# The dmem benchmarked is the one "$PYTHON" imports (the installed package, or the
# source tree if you put it on PYTHONPATH after an in-place build); -P keeps the
# current folder off sys.path so that an unbuilt source tree does not shadow it.
safe_path=""
if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then safe_path="-P"; fi
if ! "$PYTHON" $safe_path -c 'import sys, dmem; sys.exit(not dmem.compiled_available())' 2>/dev/null; then
    echo "bench/run_all.sh: the dmem that $PYTHON imports has no compiled kernels;" \
         "run 'pip install .' (or build in place and set PYTHONPATH) first" >&2
    exit 1
fi

commit="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo nogit)"
NAME="${NAME:-$(date -u +%Y%m%dT%H%M%SZ)-$commit}"
mkdir -p bench/results
out="bench/results/$NAME.json"

if [ "$#" -eq 0 ]; then
    set -- bench
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $commit; DMEM_NUM_THREADS=${DMEM_NUM_THREADS:-default}" \
     "OPENBLAS_NUM_THREADS=$OPENBLAS_NUM_THREADS; results -> $out" >&2

status=0
"$PYTHON" $safe_path -m pytest "$@" -q --benchmark-json="$out" \
    --benchmark-columns=min,median,max,rounds --benchmark-sort=name || status=$?

if [ -s "$out" ]; then
    echo
    "$PYTHON" bench/report.py "$out" --stat "$STAT"
else
    echo "no results written to $out" >&2
    [ "$status" -ne 0 ] || status=1
fi
exit "$status"
