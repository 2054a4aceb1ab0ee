"""Benchmarks of the DNC temporal linkage: compiled kernels beside the autograd reference.

Groups are ``"<op> <fwd|fwd+bwd>|B=..,N=.."`` with R = 4 read heads; within a
group the implementation (``compiled`` or ``reference``) is in the test id and
in ``extra_info``.

At N = 1024 the link matrix dominates everything (B = 16, float64: 128 MiB per
``(B, N, N)`` array), so the suite also times a numpy triad ``a = b + s c`` on
arrays of that size (group ``"triad|128MiB"``).  From the two,
:func:`bandwidth_floor` gives the memory-bandwidth floor of ``link_step``
forward+backward — the time to move the five link-sized arrays it must read
or write (forward: read ``L_prev``, write ``L``; backward: read ``L_prev``
and ``dL``, write ``dL_prev``) at the triad's bandwidth — and the ratio of the
measured time to it.  ``test_link_step_bandwidth_floor`` prints both at the
end of a run (and the ratio of the raw kernels with preallocated outputs,
group ``"link_step fwd+bwd kernels in place|B=16,N=1024"``, when it ran); ``python bench/test_bench_linkage.py results.json`` prints them
for a saved ``--benchmark-json`` file.
"""

import importlib
import json
import sys
import time

import numpy as np
import pytest


def _module(implementation):
    """dmem.compiled.linkage or dmem.reference.linkage (imported when first needed, so
    that ``python bench/test_bench_linkage.py results.json`` needs no dmem)."""
    return importlib.import_module(f"dmem.{implementation}.linkage")

R = 4
BATCHES = [1, 16]
SLOTS = [16, 64, 128, 256, 1024]
IMPLEMENTATIONS = ["compiled", "reference"]
OPS = ["precedence", "link", "temporal_weights", "link_step"]

TRIAD_GROUP = "triad|128MiB"
TRIAD_VALUES = 16 * 1024 * 1024          # float64 values per triad array (128 MiB)
FLOOR_GROUP = "link_step fwd+bwd|B=16,N=1024"
LINK_ARRAYS_MOVED = 5                    # L_prev, L (fwd); L_prev, dL, dL_prev (bwd)

# Times (seconds, minimum over rounds) of the benchmarks the floor needs, filled in
# as they run, read by test_link_step_bandwidth_floor at the end of the module.
_TIMES = {}


def weightings(rng, *shape, total=0.9):
    x = rng.uniform(0, 1, shape)
    return total * x / x.sum(axis=-1, keepdims=True)


def make_inputs(op, rng, B, N):
    L = rng.uniform(0, 1, (B, N, N)) / N
    L[:, np.arange(N), np.arange(N)] = 0.0
    p = weightings(rng, B, N)
    w = weightings(rng, B, N)
    wr = weightings(rng, B, R, N, total=1.0)
    return {
        "precedence": (p, w),
        "link": (L, w, p),
        "temporal_weights": (L, wr),
        "link_step": (L, p, w, wr),
    }[op]


def make_cotangents(op, rng, B, N):
    shapes = {
        "precedence": [(B, N)],
        "link": [(B, N, N)],
        "temporal_weights": [(B, R, N), (B, R, N)],
        "link_step": [(B, N, N), (B, N), (B, R, N), (B, R, N)],
    }[op]
    return tuple(rng.standard_normal(s) for s in shapes)


def _min_seconds(benchmark):
    """The fastest round of a finished pytest-benchmark run (None when disabled)."""
    stats = getattr(benchmark, "stats", None)
    stats = getattr(stats, "stats", None)
    return getattr(stats, "min", None)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("N", SLOTS)
@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("op", OPS)
def test_bench(record, rng, runner, op, mode, B, N, implementation):
    inputs = make_inputs(op, rng, B, N)
    cots = make_cotangents(op, rng, B, N)
    run = runner(op, mode, implementation)
    group = f"{op} {mode}|B={B},N={N}"
    benchmark = record(group, implementation)
    result = benchmark(run, inputs, cots)
    assert result is not None
    if group == FLOOR_GROUP and implementation == "compiled":
        _TIMES["link_step"] = _min_seconds(benchmark)


# The raw kernels with their outputs allocated once (dmem._kernels.linkage): what the
# DNC's backpropagation through time runs, the link cotangent updated in place.  The
# op benchmarks above also pay for the page faults of fresh (B, N, N) outputs.
KERNEL_CASES = [("precedence", 16, 128), ("link", 16, 256), ("link_step", 16, 256),
                ("link_step", 16, 1024)]


def kernel_fn(op, inputs, cots):
    """fwd+bwd of the raw kernels on preallocated outputs (link_step: in place)."""
    kernels = importlib.import_module("dmem._kernels.linkage")
    threads = importlib.import_module("dmem.compiled._common").threads
    L = inputs[0]
    B, N = L.shape[:2]
    n = threads(B, L.size) if L.ndim == 3 else 1
    if op == "precedence":  # the kernels alone, without the wrapper
        p, w = inputs
        new_p, dp, dw = np.empty_like(p), np.empty_like(p), np.empty_like(w)

        def run():
            kernels.precedence_forward(p, w, new_p, 1)
            kernels.precedence_backward(p, w, cots[0], dp, dw, 1)
            return dw

        return run
    out = np.empty_like(L)
    if op == "link":
        _, w, p = inputs
        dw, dp = np.empty_like(w), np.empty_like(p)

        def run():
            kernels.link_forward(L, w, p, out, n)
            kernels.link_backward(L, w, p, cots[0], out, dw, dp, n)
            return out

        return run
    _, p, w, wr = inputs
    new_p, f, b, dp, dw, dwr = (np.empty_like(x) for x in (p, wr, wr, p, w, wr))
    grad_link = cots[0].copy()

    def run():
        kernels.link_step_forward(L, p, w, wr, out, new_p, f, b, n)
        kernels.link_step_backward(L, p, w, wr, grad_link, cots[1], cots[2], cots[3], grad_link,
                                   dp, dw, dwr, n)
        return grad_link

    return run


@pytest.mark.parametrize("op,B,N", KERNEL_CASES)
def test_bench_kernels(record, rng, op, B, N):
    run = kernel_fn(op, make_inputs(op, rng, B, N), make_cotangents(op, rng, B, N))
    group = f"{op} fwd+bwd kernels{' in place' if op == 'link_step' else ''}|B={B},N={N}"
    benchmark = record(group, "compiled")
    benchmark.extra_info["simd"] = importlib.import_module("dmem._kernels.linkage").simd_level()
    assert benchmark(run) is not None
    if (op, B, N) == ("link_step", 16, 1024):
        _TIMES["link_step_kernels"] = _min_seconds(benchmark)


def triad_arrays(rng, n=TRIAD_VALUES):
    return np.empty(n), rng.standard_normal(n), rng.standard_normal(n)


def triad(a, b, c, s=3.0, block=32768):
    """a = b + s c, in blocks small enough that the temporary ``s c`` stays in cache:
    the memory traffic is that of the triad, read b and c, write a."""
    tmp = np.empty(block)
    for k in range(0, a.size, block):
        t = tmp[: min(block, a.size - k)]
        np.multiply(c[k:k + block], s, out=t)
        np.add(b[k:k + block], t, out=a[k:k + block])
    return a


def test_bench_triad(record, rng):
    a, b, c = triad_arrays(rng)
    benchmark = record(TRIAD_GROUP, "numpy")
    benchmark.extra_info["bytes"] = 3 * a.nbytes
    result = benchmark(triad, a, b, c)
    np.testing.assert_allclose(result[:5], b[:5] + 3.0 * c[:5])
    _TIMES["triad"] = _min_seconds(benchmark)


# The arithmetic floor of temporal_weights: its forward+backward does 6 B R N²
# multiply-adds (f, b; dL; dw), as many as the reference's matrix products,
# which BLAS runs near the core's peak.  A double-precision matrix product
# (OPENBLAS_NUM_THREADS=1 under run_all.sh) gives this machine's rate.
DGEMM_SIZE = 512


def test_bench_dgemm(record, rng):
    a, b = rng.standard_normal((2, DGEMM_SIZE, DGEMM_SIZE))
    out = np.empty((DGEMM_SIZE, DGEMM_SIZE))
    benchmark = record(f"dgemm|{DGEMM_SIZE}", "numpy")
    benchmark.extra_info["flops"] = 2 * DGEMM_SIZE**3
    result = benchmark(np.matmul, a, b, out=out)
    np.testing.assert_allclose(result[0, :3], a[0] @ b[:, :3])


def bandwidth_floor(triad_seconds, link_step_seconds, B=16, N=1024, itemsize=8,
                    triad_bytes=3 * TRIAD_VALUES * 8):
    """Memory-bandwidth floor of link_step fwd+bwd and the measured ratio to it.

    Bandwidth = bytes moved by the triad / its time; floor = bytes of the five
    link-sized arrays link_step forward+backward reads or writes / bandwidth.
    Returns ``(bandwidth in bytes/s, floor in s, link_step time / floor)``.
    """
    bandwidth = triad_bytes / triad_seconds
    floor = LINK_ARRAYS_MOVED * B * N * N * itemsize / bandwidth
    return bandwidth, floor, link_step_seconds / floor


def format_floor(triad_seconds, link_step_seconds):
    bandwidth, floor, ratio = bandwidth_floor(triad_seconds, link_step_seconds)
    return (f"link_step fwd+bwd B=16 N=1024 float64: {link_step_seconds * 1e3:.1f} ms; "
            f"triad {bandwidth / 1e9:.1f} GB/s ({triad_seconds * 1e3:.1f} ms per 3 x 128 MiB); "
            f"floor {floor * 1e3:.1f} ms; ratio {ratio:.2f}x")


def _time_min(fn, rounds=5):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def test_link_step_bandwidth_floor(rng, runner, capsys, record_property):
    """Print the floor and the ratio, from this run's benchmarks when they ran (else
    timed here, e.g. with --benchmark-disable or -k)."""
    triad_s = _TIMES.get("triad")
    link_s = _TIMES.get("link_step")
    if triad_s is None:
        a, b, c = triad_arrays(rng)
        triad_s = _time_min(lambda: triad(a, b, c))
        del a, b, c
    if link_s is None:
        inputs = make_inputs("link_step", rng, 16, 1024)
        cots = make_cotangents("link_step", rng, 16, 1024)
        run = runner("link_step", "fwd+bwd", "compiled")
        link_s = _time_min(lambda: run(inputs, cots))
    bandwidth, floor, ratio = bandwidth_floor(triad_s, link_s)
    for key, value in dict(triad_bandwidth=bandwidth, floor_seconds=floor,
                           link_step_seconds=link_s, ratio_to_floor=ratio).items():
        record_property(key, value)
    lines = [format_floor(triad_s, link_s)]
    kernels_s = _TIMES.get("link_step_kernels")
    if kernels_s is not None:
        record_property("link_step_kernels_ratio_to_floor", bandwidth_floor(triad_s, kernels_s)[2])
        lines.append("  kernels alone, in place (no fresh outputs): "
                     + format_floor(triad_s, kernels_s).split(": ", 1)[1])
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert floor > 0 and ratio > 0


def report(path):
    """Print the floor and ratio from a pytest-benchmark JSON file of this suite."""
    with open(path) as f:
        data = json.load(f)
    times = {}
    for bench in data.get("benchmarks", []):
        impl = bench.get("extra_info", {}).get("implementation")
        if bench.get("group") == TRIAD_GROUP:
            times["triad"] = bench["stats"]["min"]
        elif bench.get("group") == FLOOR_GROUP and impl == "compiled":
            times["link_step"] = bench["stats"]["min"]
    if len(times) < 2:
        raise SystemExit(f"{path}: needs the '{TRIAD_GROUP}' and compiled '{FLOOR_GROUP}' benchmarks")
    print(format_floor(times["triad"], times["link_step"]))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        report(arg)
