"""Task generators: the five tasks of the NTM paper and the DNC's repeat copy.

Every task is a small class holding its sizes, with a
``sample(batch_size, rng, ...) -> Batch`` method.  A :class:`Batch` is
time-major:

* ``inputs``  `(T, B, I)` float64, ``I = task.input_size``;
* ``targets`` `(T, B, O)` float64, ``O = task.output_size``, in {0, 1};
* ``mask``    `(T, B)` float64 in {0, 1}: 1 on the steps whose output is
  scored (the answer steps), 0 elsewhere.

Rows of one batch may have different lengths; ``T`` is the longest row, and a
shorter row is padded at its end with zero inputs, zero targets and mask 0.

``rng`` is a :class:`numpy.random.Generator` (it is advanced) or an int seed
(the same seed gives a bitwise-identical batch).  ``None`` is refused: every
random thing in dmem is seeded.

Tasks (``TASKS``, :func:`make_task`):

=====================  =============================================
``"copy"``              :class:`Copy` (NTM paper §4.1)
``"repeat-copy"``       :class:`RepeatCopy` (NTM paper §4.2)
``"associative-recall"`` :class:`AssociativeRecall` (NTM paper §4.3)
``"ngrams"``            :class:`NGrams` (NTM paper §4.4)
``"priority-sort"``     :class:`PrioritySort` (NTM paper §4.5)
``"dnc-repeat-copy"``   :class:`DNCRepeatCopy` (deepmind/dnc repeat_copy.py)
=====================  =============================================

Scores: :func:`cost_bits` (masked sigmoid cross-entropy in bits, summed over
time and bits, averaged over the batch: the NTM paper's "cost per sequence")
and :func:`bit_errors` (wrong output bits per sequence after thresholding the
logits at 0).  The exact encodings, with printed examples, are in
``docs/tasks.md``.
"""

import math
import numbers
from collections import namedtuple

import numpy as np

__all__ = [
    "Batch",
    "Copy",
    "RepeatCopy",
    "AssociativeRecall",
    "NGrams",
    "PrioritySort",
    "DNCRepeatCopy",
    "TASKS",
    "make_task",
    "cost_bits",
    "bit_errors",
    "format_example",
]

Batch = namedtuple("Batch", "inputs targets mask")
Batch.__doc__ = """A batch of task sequences, time-major.

inputs : `(T, B, I)` float64
targets : `(T, B, O)` float64 in {0, 1}
mask : `(T, B)` float64 in {0, 1}, 1 on the scored (answer) steps
"""

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------
# validation helpers


def _integer(name, value, minimum=None, owner=None):
    """``value`` as a Python int, ``>= minimum``; TypeError / ValueError naming ``name``."""
    where = f"{owner}: " if owner else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}{name} must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{where}{name} must be >= {minimum}, got {value}")
    return value


def _range(lo_name, lo, hi_name, hi, minimum, owner):
    lo = _integer(lo_name, lo, minimum, owner)
    hi = _integer(hi_name, hi, minimum, owner)
    if lo > hi:
        raise ValueError(f"{owner}: {lo_name} must be <= {hi_name}, got {lo_name}={lo} > {hi_name}={hi}")
    return lo, hi


def _generator(rng):
    """A numpy Generator from ``rng`` (a Generator, returned as is, or an int seed)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, numbers.Integral) and not isinstance(rng, (bool, np.bool_)):
        if rng < 0:
            raise ValueError(f"rng seed must be >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__}"
    )


def _per_row(name, fixed, lo, hi, batch_size, rng, owner):
    """`(B,)` int64: ``fixed`` for every row if given, else uniform on [lo, hi] per row."""
    if fixed is not None:
        fixed = _integer(name, fixed, 1, owner)
        return np.full(batch_size, fixed, dtype=np.int64)
    return rng.integers(lo, hi, endpoint=True, size=batch_size, dtype=np.int64)


def _empty_batch(T, B, I, O):
    return (
        np.zeros((T, B, I), dtype=np.float64),
        np.zeros((T, B, O), dtype=np.float64),
        np.zeros((T, B), dtype=np.float64),
    )


def _time_grid(T, B):
    """`(T, B)` step index ``t`` and row index ``b``."""
    return np.broadcast_to(np.arange(T)[:, None], (T, B)), np.broadcast_to(np.arange(B)[None, :], (T, B))


class _Task:
    """Common plumbing: name, config, repr."""

    name = None
    _params = ()

    def config(self):
        """The constructor arguments as a dict (JSON-safe): ``make_task(task.name, **task.config())``."""
        return {p: getattr(self, p) for p in self._params}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.config() == other.config()

    def __hash__(self):
        return hash((type(self).__name__, tuple(self.config().items())))

    def _start(self, batch_size, rng):
        return _integer("batch_size", batch_size, 1, self.name), _generator(rng)


# --------------------------------------------------------------------------
# copy


class Copy(_Task):
    """Copy (NTM paper §4.1): read a sequence of random bit vectors, then write it back.

    Parameters: ``bits >= 1`` (width of a vector), ``1 <= min_len <= max_len``
    (range of the sequence length L, drawn uniformly per row).

    Encoding of a row of length L (``input_size = bits + 1``,
    ``output_size = bits``), row length ``2L + 1`` steps:

    * steps ``0 .. L-1``: input channels ``0 .. bits-1`` hold the random bits
      (each bit 0 or 1 with probability 1/2); channel ``bits`` is 0;
    * step ``L``: the delimiter, channel ``bits`` = 1, all other inputs 0;
    * steps ``L+1 .. 2L``: blank input (all 0); target at step ``L+1+i`` is
      the vector of step ``i`` (bits only, no delimiter channel);
    * mask = 1 exactly on steps ``L+1 .. 2L``; targets are 0 elsewhere.
    """

    name = "copy"
    _params = ("bits", "min_len", "max_len")

    def __init__(self, bits=8, min_len=1, max_len=20):
        self.bits = _integer("bits", bits, 1, self.name)
        self.min_len, self.max_len = _range("min_len", min_len, "max_len", max_len, 1, self.name)
        self.input_size = self.bits + 1
        self.output_size = self.bits

    def sample(self, batch_size, rng, length=None):
        """A :class:`Batch`; every row has ``length`` vectors if given (any ``>= 1``,
        e.g. longer than ``max_len`` to test generalisation), else each row its own
        length drawn uniformly in ``[min_len, max_len]``.  ``T = 2·max(L) + 1``."""
        B, rng = self._start(batch_size, rng)
        L = _per_row("length", length, self.min_len, self.max_len, B, rng, self.name)
        Lmax = int(L.max())
        T = 2 * Lmax + 1
        seq = rng.integers(0, 2, size=(Lmax, B, self.bits)).astype(np.float64)
        seq *= (np.arange(Lmax)[:, None] < L[None, :])[..., None]
        x, y, m = _empty_batch(T, B, self.input_size, self.output_size)
        rows = np.arange(B)
        x[:Lmax, :, : self.bits] = seq
        x[L, rows, self.bits] = 1.0
        t, b = _time_grid(T, B)
        src = t - (L + 1)[None, :]
        answer = (src >= 0) & (src < L[None, :])
        y[answer] = seq[src[answer], b[answer]]
        m[answer] = 1.0
        return Batch(x, y, m)


# --------------------------------------------------------------------------
# repeat copy (NTM paper)


class RepeatCopy(_Task):
    """Repeat copy (NTM paper §4.2): read a sequence and a count R, write the sequence R times, then an end marker.

    Parameters: ``bits >= 1``, ``1 <= min_len <= max_len`` (sequence length L),
    ``1 <= min_repeats <= max_repeats`` (R), each drawn uniformly per row.

    Encoding of a row (``input_size = bits + 2``, ``output_size = bits + 1``),
    row length ``L + 1 + L·R + 1`` steps:

    * steps ``0 .. L-1``: input channels ``0 .. bits-1`` hold the random bits;
    * step ``L``: delimiter channel ``bits`` = 1 **and** repeat-count channel
      ``bits + 1`` = the normalised count ``(R - μ) / σ``;
    * steps ``L+1 .. L+L·R``: blank input; target channels ``0 .. bits-1`` at
      step ``L+1+j`` are the vector of step ``j mod L``;
    * step ``L+L·R+1``: blank input; target channel ``bits`` (end marker) = 1,
      all other targets 0;
    * mask = 1 exactly on steps ``L+1 .. L+L·R+1`` (the copies and the end marker).

    Normalisation of the count (the paper: "normalised to have mean zero and
    variance one"): μ and σ are the mean and standard deviation of R uniform
    on the integers ``min_repeats .. max_repeats`` — ``μ = (min+max)/2``,
    ``σ² = ((max-min+1)² - 1)/12`` — and σ = 1 when ``min == max``.  A count
    outside the training range (``sample(..., repeats=...)``) is normalised
    with the same μ, σ, i.e. extrapolated linearly.  Because the normalised
    count can be exactly 0 (odd-sized ranges), the delimiter is on its own
    channel, on the same step.
    """

    name = "repeat-copy"
    _params = ("bits", "min_len", "max_len", "min_repeats", "max_repeats")

    def __init__(self, bits=8, min_len=1, max_len=10, min_repeats=1, max_repeats=10):
        self.bits = _integer("bits", bits, 1, self.name)
        self.min_len, self.max_len = _range("min_len", min_len, "max_len", max_len, 1, self.name)
        self.min_repeats, self.max_repeats = _range(
            "min_repeats", min_repeats, "max_repeats", max_repeats, 1, self.name
        )
        self.input_size = self.bits + 2
        self.output_size = self.bits + 1
        span = self.max_repeats - self.min_repeats + 1
        self.repeats_mean = 0.5 * (self.min_repeats + self.max_repeats)
        self.repeats_std = math.sqrt((span * span - 1) / 12.0) if span > 1 else 1.0

    def normalise_repeats(self, repeats):
        """The value put on the repeat-count channel for ``repeats`` copies: ``(R - μ) / σ``."""
        return (np.asarray(repeats, dtype=np.float64) - self.repeats_mean) / self.repeats_std

    def sample(self, batch_size, rng, length=None, repeats=None):
        """A :class:`Batch`; ``length`` / ``repeats`` fix L / R for every row
        (any ``>= 1``, also outside the training ranges), else each row draws its own."""
        B, rng = self._start(batch_size, rng)
        L = _per_row("length", length, self.min_len, self.max_len, B, rng, self.name)
        R = _per_row("repeats", repeats, self.min_repeats, self.max_repeats, B, rng, self.name)
        Lmax = int(L.max())
        ends = L + 1 + L * R  # step of the end marker, per row
        T = int(ends.max()) + 1
        seq = rng.integers(0, 2, size=(Lmax, B, self.bits)).astype(np.float64)
        seq *= (np.arange(Lmax)[:, None] < L[None, :])[..., None]
        x, y, m = _empty_batch(T, B, self.input_size, self.output_size)
        rows = np.arange(B)
        x[:Lmax, :, : self.bits] = seq
        x[L, rows, self.bits] = 1.0
        x[L, rows, self.bits + 1] = self.normalise_repeats(R)
        t, b = _time_grid(T, B)
        offset = t - (L + 1)[None, :]
        copying = (offset >= 0) & (offset < (L * R)[None, :])
        src = np.where(copying, offset, 0) % L[None, :]
        y[copying, : self.bits] = seq[src[copying], b[copying]]
        y[ends, rows, self.bits] = 1.0
        m[(offset >= 0) & (t <= ends[None, :])] = 1.0
        return Batch(x, y, m)


# --------------------------------------------------------------------------
# associative recall


class AssociativeRecall(_Task):
    """Associative recall (NTM paper §4.3): after a list of items and a query item, output the item that followed the query.

    Parameters: ``bits >= 1`` (width of a vector), ``item_len >= 1`` (vectors
    per item), ``2 <= min_items <= max_items`` (n, drawn uniformly per row);
    ``2**(bits·item_len) >= max_items`` so that the items can be distinct.

    Encoding of a row with n items of k = ``item_len`` vectors
    (``input_size = bits + 2``, ``output_size = bits``), row length
    ``n·(k+1) + 2k + 2`` steps:

    * item ``i`` (``i = 0 .. n-1``): step ``i·(k+1)`` is an item delimiter
      (channel ``bits`` = 1), steps ``i·(k+1)+1 .. i·(k+1)+k`` hold its k
      random vectors on channels ``0 .. bits-1``;
    * step ``Q = n·(k+1)``: query delimiter (channel ``bits + 1`` = 1);
      steps ``Q+1 .. Q+k``: the query, a copy of item ``q`` with q uniform in
      ``0 .. n-2``; step ``Q+k+1``: query delimiter again;
    * steps ``Q+k+2 .. Q+2k+1``: blank input; the targets are the k vectors
      of item ``q+1``; mask = 1 exactly on these k steps.

    The n items of a row are distinct (a row with a repeated item is drawn
    again), so the answer is unambiguous.
    """

    name = "associative-recall"
    _params = ("bits", "item_len", "min_items", "max_items")

    def __init__(self, bits=6, item_len=3, min_items=2, max_items=6):
        self.bits = _integer("bits", bits, 1, self.name)
        self.item_len = _integer("item_len", item_len, 1, self.name)
        self.min_items, self.max_items = _range("min_items", min_items, "max_items", max_items, 2, self.name)
        self._check_capacity(self.max_items, "max_items")
        self.input_size = self.bits + 2
        self.output_size = self.bits

    def _check_capacity(self, items, name):
        code_bits = self.bits * self.item_len
        if code_bits < 63 and 2**code_bits < items:
            raise ValueError(
                f"{self.name}: {name}={items} distinct items do not exist with "
                f"bits·item_len = {code_bits} bits per item (at most {2**code_bits})"
            )

    def sample(self, batch_size, rng, num_items=None):
        """A :class:`Batch`; ``num_items`` fixes n for every row (``>= 2``, may exceed
        ``max_items``), else each row draws n uniformly in ``[min_items, max_items]``."""
        B, rng = self._start(batch_size, rng)
        if num_items is not None:
            num_items = _integer("num_items", num_items, 2, self.name)
            self._check_capacity(num_items, "num_items")
        n = _per_row("num_items", num_items, self.min_items, self.max_items, B, rng, self.name)
        k, bits = self.item_len, self.bits
        nmax = int(n.max())
        items = rng.integers(0, 2, size=(B, nmax, k, bits), dtype=np.int8)
        slots = np.arange(nmax)
        pairs = (slots[:, None] < slots[None, :])[None] & (slots[None, None, :] < n[:, None, None])
        bad = np.arange(B)
        while bad.size:  # distinct items: redraw the rows that repeat an item, until none does
            codes = items[bad].reshape(bad.size, nmax, -1)
            same = (codes[:, :, None, :] == codes[:, None, :, :]).all(axis=3) & pairs[bad]
            bad = bad[same.any(axis=(1, 2))]
            items[bad] = rng.integers(0, 2, size=(bad.size, nmax, k, bits), dtype=np.int8)
        items = items.astype(np.float64)
        q = rng.integers(0, n - 1)  # query item index, uniform in 0 .. n-2
        Q = n * (k + 1)  # first query delimiter, per row
        T = int((Q + 2 * k + 2).max())
        x, y, m = _empty_batch(T, B, self.input_size, self.output_size)
        t, b = _time_grid(T, B)
        # the list of items
        in_list = t < Q[None, :]
        slot, pos = np.divmod(t, k + 1)
        x[in_list & (pos == 0), bits] = 1.0
        body = in_list & (pos > 0)
        x[body, :bits] = items[b[body], slot[body], pos[body] - 1]
        # the query
        rows = np.arange(B)
        x[Q, rows, bits + 1] = 1.0
        x[Q + k + 1, rows, bits + 1] = 1.0
        rel = t - (Q + 1)[None, :]
        query = (rel >= 0) & (rel < k)
        x[query, :bits] = items[b[query], q[b[query]], rel[query]]
        # the answer
        rel = t - (Q + k + 2)[None, :]
        answer = (rel >= 0) & (rel < k)
        y[answer] = items[b[answer], q[b[answer]] + 1, rel[answer]]
        m[answer] = 1.0
        return Batch(x, y, m)


# --------------------------------------------------------------------------
# dynamic n-grams


class NGrams(_Task):
    """Dynamic n-grams (NTM paper §4.4): predict the next bit of a sequence drawn from a random n-gram model.

    Parameters: ``1 <= n <= 16`` (the order: a bit depends on the n-1 bits
    before it), ``length >= max(1, n-1)`` (number of steps T).

    For every row a fresh lookup table of ``2**(n-1)`` probabilities
    ``P(1 | context)`` is drawn from Beta(1/2, 1/2); the context of a bit is
    the n-1 bits before it read as a binary number, most recent bit least
    significant.  The row's bits ``x_0 .. x_length`` are drawn in order:
    ``x_0 .. x_{n-2}`` (which have no full context) are fair coin flips,
    every later bit is 1 with the table's probability for its context.

    Encoding (``input_size = output_size = 1``), all rows ``length`` steps:

    * input at step t: ``x_t``;  target at step t: ``x_{t+1}`` (the next bit,
      so ``targets[t] == inputs[t+1]``);
    * mask = 1 on steps ``t >= n-2`` — exactly the steps whose target was
      drawn from the table (for n <= 2: every step).

    :meth:`bayes_optimal_cost` gives the cost of the optimal Bayesian
    predictor on a batch (the reference line of the paper's Figure 13);
    :meth:`sample_with_tables` also returns the lookup tables.
    """

    name = "ngrams"
    _params = ("n", "length")
    MAX_N = 16

    def __init__(self, n=6, length=200):
        self.n = _integer("n", n, 1, self.name)
        if self.n > self.MAX_N:
            raise ValueError(f"{self.name}: n must be <= {self.MAX_N} (a table of 2**(n-1) entries per row), got {self.n}")
        self.length = _integer("length", length, max(1, self.n - 1), self.name)
        self.input_size = 1
        self.output_size = 1

    def sample(self, batch_size, rng):
        """A :class:`Batch` of ``length`` steps (see the class docstring)."""
        return self.sample_with_tables(batch_size, rng)[0]

    def sample_with_tables(self, batch_size, rng):
        """``(batch, tables)``: the :class:`Batch` that :meth:`sample` gives for the same
        ``rng``, and the lookup tables `(B, 2**(n-1))` that generated it."""
        B, rng = self._start(batch_size, rng)
        n, T = self.n, self.length
        C = 2 ** (n - 1)
        tables = rng.beta(0.5, 0.5, size=(B, C))
        uniforms = rng.random(size=(T + 1, B))
        bits = np.zeros((T + 1, B), dtype=np.float64)
        context = np.zeros(B, dtype=np.int64)
        rows = np.arange(B)
        for t in range(T + 1):  # one step of all rows at a time
            p = tables[rows, context] if t >= n - 1 else 0.5
            bit = (uniforms[t] < p).astype(np.int64)
            bits[t] = bit
            context = ((context << 1) | bit) & (C - 1)
        x, y, m = _empty_batch(T, B, 1, 1)
        x[:, :, 0] = bits[:-1]
        y[:, :, 0] = bits[1:]
        m[max(0, n - 2):] = 1.0
        return Batch(x, y, m), tables

    def contexts(self, inputs):
        """`(T, B)` int64: the context of the target at each step, from ``inputs`` `(T, B, 1)`:
        the last n-1 input bits up to and including step t, most recent least
        significant (bits before step 0 count as 0)."""
        x = np.asarray(inputs)[:, :, 0] > 0.5
        T, B = x.shape
        ctx = np.zeros((T, B), dtype=np.int64)
        for k in range(self.n - 1):  # bit k of the context is the input k steps back
            ctx[k:] |= x[: T - k].astype(np.int64) << k
        return ctx

    def bayes_optimal_cost(self, batch):
        """Cost of the Bayes-optimal predictor, in bits per sequence averaged over the batch.

        The NTM paper's estimator (after Murphy 2012): the probability that the
        next bit is 1 given context c is ``(N1 + 1/2) / (N0 + N1 + 1)``, where
        N0, N1 count the zeros and ones seen after c earlier in the same
        sequence (on scored steps).  The cost of a step is ``-log2`` of the
        probability given to its target; summed over the steps with mask 1,
        averaged over the batch.  Comparable with :func:`cost_bits`.
        """
        inputs, targets, mask = _check_batch(batch, self.input_size, self.output_size, "bayes_optimal_cost")
        T, B = mask.shape
        ctx = self.contexts(inputs)
        target = targets[:, :, 0] > 0.5
        scored = mask > 0
        counts = np.zeros((B, 2, 2 ** (self.n - 1)), dtype=np.float64)  # [row, bit, context]
        rows = np.arange(B)
        total = np.zeros(B, dtype=np.float64)
        for t in range(T):  # sequential counts, all rows at once
            c = ctx[t]
            n0 = counts[rows, 0, c]
            n1 = counts[rows, 1, c]
            p = np.where(target[t], n1 + 0.5, n0 + 0.5) / (n0 + n1 + 1.0)
            total -= np.where(scored[t], np.log2(p), 0.0) * mask[t]
            counts[rows[scored[t]], target[t][scored[t]].astype(np.int64), c[scored[t]]] += 1.0
        return float(total.mean())


# --------------------------------------------------------------------------
# priority sort


class PrioritySort(_Task):
    """Priority sort (NTM paper §4.5): output the highest-priority input vectors, in order of priority.

    Parameters: ``bits >= 1``, ``length >= 1`` (input vectors L),
    ``1 <= output_length <= length`` (vectors output, K).

    Encoding (``input_size = bits + 2``, ``output_size = bits``), every row
    ``L + 1 + K`` steps:

    * steps ``0 .. L-1``: channels ``0 .. bits-1`` hold a random bit vector,
      channel ``bits`` its priority, uniform in [-1, 1];
    * step ``L``: delimiter, channel ``bits + 1`` = 1;
    * steps ``L+1 .. L+K``: blank input; the target at step ``L+1+j`` is the
      input vector with the j-th highest priority (descending, ties —
      probability 0 — broken by input order); mask = 1 exactly on these steps.
    """

    name = "priority-sort"
    _params = ("bits", "length", "output_length")

    def __init__(self, bits=8, length=20, output_length=16):
        self.bits = _integer("bits", bits, 1, self.name)
        self.length = _integer("length", length, 1, self.name)
        self.output_length = _integer("output_length", output_length, 1, self.name)
        if self.output_length > self.length:
            raise ValueError(
                f"{self.name}: output_length must be <= length, got output_length={self.output_length} > length={self.length}"
            )
        self.input_size = self.bits + 2
        self.output_size = self.bits

    def sample(self, batch_size, rng):
        """A :class:`Batch` of ``length + 1 + output_length`` steps."""
        B, rng = self._start(batch_size, rng)
        L, K, bits = self.length, self.output_length, self.bits
        seq = rng.integers(0, 2, size=(L, B, bits)).astype(np.float64)
        priority = rng.uniform(-1.0, 1.0, size=(L, B))
        x, y, m = _empty_batch(L + 1 + K, B, self.input_size, self.output_size)
        x[:L, :, :bits] = seq
        x[:L, :, bits] = priority
        x[L, :, bits + 1] = 1.0
        order = np.argsort(-priority, axis=0, kind="stable")[:K]  # (K, B)
        y[L + 1 :] = np.take_along_axis(seq, order[:, :, None], axis=0)
        m[L + 1 :] = 1.0
        return Batch(x, y, m)


# --------------------------------------------------------------------------
# repeat copy (DNC code)


class DNCRepeatCopy(_Task):
    """Repeat copy as in the DNC's published code (deepmind/dnc ``repeat_copy.py``).

    Parameters: ``bits >= 1``, ``1 <= min_len <= max_len`` (sequence length L),
    ``1 <= min_repeats <= max_repeats`` (R), each drawn uniformly per row;
    ``norm_max > 0`` (the count is given as ``R / norm_max``; default 10 as in
    the DNC code).  With ``min_repeats = max_repeats = 1`` it is the DNC's copy
    task.

    Encoding of a row (``input_size = bits + 2``, ``output_size = bits + 1``),
    row length ``L·(R+1) + 3`` steps:

    * step 0: start marker, input channel ``bits`` = 1;
    * steps ``1 .. L``: channels ``0 .. bits-1`` hold the random bits;
    * step ``L+1``: repeat-count channel ``bits + 1`` = ``R / norm_max``;
    * steps ``L+2 .. L+1+L·R``: blank input; target channels ``0 .. bits-1``
      at step ``L+2+j`` are the vector of step ``1 + (j mod L)``;
    * step ``L+2+L·R``: blank input, end marker on target channel ``bits``;
    * mask = 1 exactly on steps ``L+2 .. L+2+L·R``.

    Differences from :class:`RepeatCopy`: a start marker, the count on a step
    of its own right after the sequence (which also acts as the delimiter),
    and the count scaled by ``1/norm_max`` instead of standardised.
    """

    name = "dnc-repeat-copy"
    _params = ("bits", "min_len", "max_len", "min_repeats", "max_repeats", "norm_max")

    def __init__(self, bits=6, min_len=1, max_len=10, min_repeats=1, max_repeats=10, norm_max=10.0):
        self.bits = _integer("bits", bits, 1, self.name)
        self.min_len, self.max_len = _range("min_len", min_len, "max_len", max_len, 1, self.name)
        self.min_repeats, self.max_repeats = _range(
            "min_repeats", min_repeats, "max_repeats", max_repeats, 1, self.name
        )
        if isinstance(norm_max, (bool, np.bool_)) or not isinstance(norm_max, numbers.Real):
            raise TypeError(f"{self.name}: norm_max must be a real number, got {norm_max!r}")
        if not (math.isfinite(norm_max) and norm_max > 0):
            raise ValueError(f"{self.name}: norm_max must be finite and > 0, got {norm_max}")
        self.norm_max = float(norm_max)
        self.input_size = self.bits + 2
        self.output_size = self.bits + 1

    def sample(self, batch_size, rng, length=None, repeats=None):
        """A :class:`Batch`; ``length`` / ``repeats`` fix L / R for every row
        (any ``>= 1``), else each row draws its own."""
        B, rng = self._start(batch_size, rng)
        L = _per_row("length", length, self.min_len, self.max_len, B, rng, self.name)
        R = _per_row("repeats", repeats, self.min_repeats, self.max_repeats, B, rng, self.name)
        Lmax = int(L.max())
        ends = L + 2 + L * R
        T = int(ends.max()) + 1
        seq = rng.integers(0, 2, size=(Lmax, B, self.bits)).astype(np.float64)
        seq *= (np.arange(Lmax)[:, None] < L[None, :])[..., None]
        x, y, m = _empty_batch(T, B, self.input_size, self.output_size)
        rows = np.arange(B)
        x[0, :, self.bits] = 1.0
        x[1 : Lmax + 1, :, : self.bits] = seq
        x[L + 1, rows, self.bits + 1] = R / self.norm_max
        t, b = _time_grid(T, B)
        offset = t - (L + 2)[None, :]
        copying = (offset >= 0) & (offset < (L * R)[None, :])
        src = np.where(copying, offset, 0) % L[None, :]
        y[copying, : self.bits] = seq[src[copying], b[copying]]
        y[ends, rows, self.bits] = 1.0
        m[(offset >= 0) & (t <= ends[None, :])] = 1.0
        return Batch(x, y, m)


# --------------------------------------------------------------------------
# registry

TASKS = {
    "copy": Copy,
    "repeat-copy": RepeatCopy,
    "associative-recall": AssociativeRecall,
    "ngrams": NGrams,
    "priority-sort": PrioritySort,
    "dnc-repeat-copy": DNCRepeatCopy,
}


def make_task(name, **kwargs):
    """The task called ``name`` (a key of :data:`TASKS`), built with ``kwargs``."""
    try:
        cls = TASKS[name]
    except (KeyError, TypeError):
        names = ", ".join(repr(k) for k in TASKS)
        raise ValueError(f"unknown task {name!r}; the tasks are {names}") from None
    return cls(**kwargs)


# --------------------------------------------------------------------------
# scores


def _float_array(name, value, ndim, where):
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{where}: {name} must be a real array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        shape = "(T, B, O)" if ndim == 3 else "(T, B)"
        raise ValueError(f"{where}: {name} must have shape {shape}, got shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def _check_outputs(logits, targets, mask, where):
    logits = _float_array("logits", logits, 3, where)
    targets = _float_array("targets", targets, 3, where)
    mask = _float_array("mask", mask, 2, where)
    if targets.shape != logits.shape:
        raise ValueError(f"{where}: targets must have the shape of logits {logits.shape}, got {targets.shape}")
    if mask.shape != logits.shape[:2]:
        raise ValueError(f"{where}: mask must have shape (T, B) = {logits.shape[:2]}, got {mask.shape}")
    if logits.shape[1] == 0:
        raise ValueError(f"{where}: the batch is empty (B = 0)")
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"{where}: logits must be finite")
    return logits, targets, mask


def _check_batch(batch, input_size, output_size, where):
    if not isinstance(batch, tuple) or len(batch) != 3:
        raise TypeError(f"{where}: batch must be a Batch (inputs, targets, mask)")
    inputs = _float_array("inputs", batch[0], 3, where)
    targets = _float_array("targets", batch[1], 3, where)
    mask = _float_array("mask", batch[2], 2, where)
    T, B = mask.shape
    if inputs.shape != (T, B, input_size):
        raise ValueError(f"{where}: inputs must have shape (T, B, {input_size}) = {(T, B, input_size)}, got {inputs.shape}")
    if targets.shape != (T, B, output_size):
        raise ValueError(f"{where}: targets must have shape (T, B, {output_size}) = {(T, B, output_size)}, got {targets.shape}")
    if B == 0:
        raise ValueError(f"{where}: the batch is empty (B = 0)")
    return inputs, targets, mask


def cost_bits(logits, targets, mask):
    """Masked sigmoid cross-entropy in bits per sequence (the NTM paper's cost).

    ``logits, targets`` `(T, B, O)`, ``mask`` `(T, B)`; returns the float
    ``(1/B) Σ_{t,b,o} mask[t,b] · ℓ(logits[t,b,o], targets[t,b,o])`` with
    ``ℓ(x, y) = -(y log2 σ(x) + (1-y) log2 (1-σ(x)))``, computed stably as
    ``(max(x, 0) - x·y + log1p(exp(-|x|))) / ln 2``.  Targets may be
    probabilities.  Logits must be finite.
    """
    logits, targets, mask = _check_outputs(logits, targets, mask, "cost_bits")
    nats = np.maximum(logits, 0.0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    per_step = nats.sum(axis=2) * mask
    return float(per_step.sum() / (_LN2 * logits.shape[1]))


def bit_errors(logits, targets, mask):
    """Wrong output bits per sequence, averaged over the batch.

    A bit is predicted 1 where ``logits > 0`` (0 where ``logits <= 0``) and is
    wrong where that differs from ``targets > 0.5``; wrong bits are counted on
    the steps with mask 1, summed over time and bits, divided by B.
    ``logits, targets`` `(T, B, O)`, ``mask`` `(T, B)`; returns a float.
    """
    logits, targets, mask = _check_outputs(logits, targets, mask, "bit_errors")
    wrong = (logits > 0.0) != (targets > 0.5)
    return float((wrong.sum(axis=2) * mask).sum() / logits.shape[1])


# --------------------------------------------------------------------------
# display


def _cell(v):
    if v == 0.0:
        return "."
    if v == 1.0:
        return "1"
    return f"{v:+.2f}"


def format_example(batch, row=0):
    """One row of a :class:`Batch` as text: a line per step with its inputs, targets and mask.

    ``0`` is printed as ``.``, ``1`` as ``1``, other values with two decimals;
    padding steps (beyond the row's last non-zero input or mask) are left out.
    """
    inputs, targets, mask = (np.asarray(a) for a in batch)
    x, y, m = inputs[:, row], targets[:, row], mask[:, row]
    used = np.flatnonzero((x != 0).any(axis=1) | (m != 0))
    steps = int(used[-1]) + 1 if used.size else 0
    xs = [[_cell(v) for v in x[t]] for t in range(steps)]
    ys = [[_cell(v) for v in y[t]] for t in range(steps)]
    wx = max((len(c) for r in xs for c in r), default=1)
    wy = max((len(c) for r in ys for c in r), default=1)
    wt = len(str(max(steps - 1, 0)))
    lines = [f"{'t':>{wt}} | inputs | targets | mask"]
    for t in range(steps):
        xi = " ".join(c.rjust(wx) for c in xs[t])
        yi = " ".join(c.rjust(wy) for c in ys[t])
        lines.append(f"{t:>{wt}} | {xi} | {yi} | {_cell(m[t])}".rstrip())
    return "\n".join(lines)
