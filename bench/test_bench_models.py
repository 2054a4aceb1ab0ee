"""Benchmarks of the models: one training step, compiled beside the autograd reference.

A training step is one ``model.loss_and_grad(x, target, mask)`` (forward,
loss and backpropagation through time) on a batch of the 8-bit copy task with
sequences of length 20 (``Copy(bits=8, min_len=20, max_len=20)``: T = 41
steps, 9 inputs, 8 outputs), float64.  A forward-only case times
``model.forward(x)`` on the same batch.

Configurations (the papers' sizes):

=============  ==========================================================  =====
name           model                                                       B
=============  ==========================================================  =====
``ntm``        NTM, memory 128 x 20, LSTM 100, 1 read + 1 write head,       1, 16
               shift range 1
``dnc small``  DNC, N = 16, W = 16, R = 4, LSTM 64                          16
``dnc large``  DNC, N = 256, W = 32, R = 4, LSTM 128                        16
=============  ==========================================================  =====

Groups are ``"<name> <step|forward>|B=.."`` (e.g. ``"ntm step|B=16"``); within
a group the implementation (``compiled`` or ``reference``) is in the test id
and in ``extra_info``.

Besides the times, ``extra_info`` holds, per case:

* ``num_threads``, ``backend`` (from the ``record`` fixture) and ``env``, the
  thread variables in force (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
  ``DMEM_NUM_THREADS``);
* ``peak_bytes``: the peak of memory allocated during one call, measured with
  :mod:`tracemalloc` in a separate, untimed call before the timed rounds
  (numpy reports its array buffers to tracemalloc; memory a kernel obtains
  from C ``malloc`` directly is not counted).  It excludes the parameters and
  the batch, which exist before the call, and includes the returned gradients;
* for the DNC, ``link_bytes`` = T·B·N²·itemsize, the size of the link matrices
  of every step that backpropagation through time must keep, and
  ``peak_over_link`` = peak_bytes / link_bytes;
* ``target_seconds`` (compiled steps), ``target_peak_over_link`` (DNC large
  step) and ``pytorch_seconds`` (the PyTorch figures of the issue), which
  ``bench/report.py`` prints beside the measurements.

Rounds: every case first makes the untimed tracemalloc call (which also warms
up), then times ``benchmark.pedantic`` rounds of one call each.  Compiled
cases take as many rounds as fit in about 2 s (at least 3, at most 50);
reference cases take 3 rounds, 2 when a call takes over 10 s, and 1 when it
takes over 60 s (the DNC large reference step may: its times are then a
single measurement).
"""

import gc
import math
import os
import time
import tracemalloc

import numpy as np
import pytest

import dmem
from dmem.tasks import Copy

TASK = Copy(bits=8, min_len=20, max_len=20)
DTYPE = np.float64

CONFIGS = {
    "ntm": ("NTM", dict(memory_slots=128, word_size=20, controller="lstm", controller_size=100,
                        read_heads=1, write_heads=1, shift_range=1)),
    "dnc small": ("DNC", dict(memory_slots=16, word_size=16, read_heads=4, controller="lstm",
                              controller_size=64)),
    "dnc large": ("DNC", dict(memory_slots=256, word_size=32, read_heads=4, controller="lstm",
                              controller_size=128)),
}
CASES = [("ntm", 1), ("ntm", 16), ("dnc small", 16), ("dnc large", 16)]
IMPLEMENTATIONS = ["compiled", "reference"]
MODES = ["step", "forward"]

# Targets of the compiled training step (seconds), and of the DNC large step's
# peak memory relative to the link storage.
TARGET_SECONDS = {("ntm", 1): 5e-3, ("ntm", 16): 16e-3, ("dnc small", 16): 10e-3,
                  ("dnc large", 16): 120e-3}
TARGET_PEAK_OVER_LINK = {("dnc large", 16): 1.2}
# One training step in PyTorch, as given by the issue: pytorch-ntm for the NTM,
# the `dnc` package for the DNC.
PYTORCH_SECONDS = {("ntm", 1): 0.200, ("ntm", 16): 0.600, ("dnc small", 16): 0.200,
                   ("dnc large", 16): 0.760}

COMPILED_BUDGET_SECONDS = 2.0
COMPILED_ROUNDS = (3, 50)
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                    "DMEM_NUM_THREADS", "OMP_WAIT_POLICY")


def make_model(name):
    cls_name, options = CONFIGS[name]
    cls = getattr(dmem, cls_name)
    return cls(TASK.input_size, TASK.output_size, seed=0, dtype=DTYPE, **options)


def make_batch(B):
    return TASK.sample(B, 0)


def link_bytes(name, T, B):
    """Bytes of the T link matrices (B, N, N) a DNC step keeps for the backward pass."""
    cls_name, options = CONFIGS[name]
    if cls_name != "DNC":
        return None
    N = options["memory_slots"]
    return T * B * N * N * np.dtype(DTYPE).itemsize


def measure_peak(fn):
    """``(peak bytes allocated during fn(), seconds)`` by tracemalloc, untimed by the benchmark."""
    gc.collect()
    tracing = tracemalloc.is_tracing()
    if tracing:  # python -X tracemalloc: keep tracing, measure from here
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
    else:
        base = 0
        tracemalloc.start()
    try:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not tracing:
            tracemalloc.stop()
    return peak, seconds


def rounds_for(implementation, seconds):
    """Timed rounds for a call that took about ``seconds`` (see the module docstring)."""
    if implementation == "reference":
        return 3 if seconds <= 10 else 2 if seconds <= 60 else 1
    low, high = COMPILED_ROUNDS
    return int(min(high, max(low, math.ceil(COMPILED_BUDGET_SECONDS / max(seconds, 1e-9)))))


def case_id(case):
    name, B = case
    return f"{name.replace(' ', '-')}-B={B}"


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
@pytest.mark.parametrize("mode", MODES)
def test_bench_model(record, mode, case, implementation):
    name, B = case
    model = make_model(name)
    batch = make_batch(B)
    T = batch.inputs.shape[0]

    if mode == "step":
        def run():
            return model.loss_and_grad(batch.inputs, batch.targets, batch.mask)
    else:
        def run():
            return model.forward(batch.inputs)

    with dmem.use_backend(implementation) as backend:
        benchmark = record(f"{name} {mode}|B={B}", implementation)
        info = benchmark.extra_info
        info["backend"] = backend
        info["env"] = {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ}
        info["model"] = CONFIGS[name][0]
        info["config"] = dict(CONFIGS[name][1])
        info["T"], info["B"] = T, B
        info["num_params"] = model.num_params

        peak, seconds = measure_peak(run)
        info["peak_bytes"] = peak
        links = link_bytes(name, T, B)
        if links is not None:
            info["link_bytes"] = links
            info["peak_over_link"] = peak / links
        if mode == "step":
            if implementation == "compiled":
                info["target_seconds"] = TARGET_SECONDS[case]
                if case in TARGET_PEAK_OVER_LINK:
                    info["target_peak_over_link"] = TARGET_PEAK_OVER_LINK[case]
            info["pytorch_seconds"] = PYTORCH_SECONDS[case]

        rounds = rounds_for(implementation, seconds)
        info["rounds"] = rounds
        result = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)

    if mode == "step":
        loss, grads = result
        assert math.isfinite(loss)
        assert sorted(grads) == sorted(model.params)
    else:
        assert result.shape == (T, B, TASK.output_size)
