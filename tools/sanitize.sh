#!/usr/bin/env bash
# The kernel tests again on an extension built with AddressSanitizer and
# UndefinedBehaviorSanitizer: every read or write of a compiled kernel outside
# its arrays (or undefined arithmetic) stops the run with a report.  The tests
# select every SIMD level this CPU has, so each version of the loops runs.
# (Masked AVX-512 loads and stores of a row's last values are not checked by
# the sanitizer; the tests check their values.)
#
#   tools/sanitize.sh [pytest arguments]        # default: tests/kernels
#
# Exit status 77 when gcc has no libasan/libubsan.  Needs Cython, setuptools,
# numpy, autograd, pytest and hypothesis in the active Python.  Builds in a
# temporary copy of the source tree; the tree itself is not touched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
asan="$(gcc -print-file-name=libasan.so)"
ubsan="$(gcc -print-file-name=libubsan.so)"
if [ ! -e "$asan" ] || [ ! -e "$ubsan" ]; then
    echo "tools/sanitize.sh: gcc has no libasan/libubsan here; cannot run the sanitized tests" >&2
    exit 77
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -C "$root" --exclude=./build --exclude='*.so' --exclude='./dmem/_kernels/*.c' \
    --exclude=./.git -cf - . | tar -C "$work" -xf -
cd "$work"
CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -O1" \
LDFLAGS="-fsanitize=address,undefined" \
    python setup.py -q build_ext --inplace -j 2 > build.log 2>&1 || { cat build.log >&2; exit 1; }
[ "$#" -gt 0 ] || set -- tests/kernels
LD_PRELOAD="$asan $ubsan" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 PYTHONMALLOC=malloc \
    python -m pytest -q -p no:cacheprovider "$@"
