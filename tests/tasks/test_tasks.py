"""Task generators (dmem.tasks): encodings, masks, determinism, validation, scores."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmem import tasks
from dmem.tasks import (
    TASKS,
    AssociativeRecall,
    Batch,
    Copy,
    DNCRepeatCopy,
    NGrams,
    PrioritySort,
    RepeatCopy,
    bit_errors,
    cost_bits,
    make_task,
)

SMALL = {
    "copy": dict(bits=4, min_len=1, max_len=6),
    "repeat-copy": dict(bits=3, min_len=1, max_len=4, min_repeats=1, max_repeats=4),
    "associative-recall": dict(bits=3, item_len=2, min_items=2, max_items=5),
    "ngrams": dict(n=4, length=30),
    "priority-sort": dict(bits=3, length=6, output_length=4),
    "dnc-repeat-copy": dict(bits=3, min_len=1, max_len=4, min_repeats=1, max_repeats=4),
}

HYPO = settings(max_examples=25, deadline=None)


def _row_length(mask_row):
    """Steps up to and including the last scored step (all tasks end on an answer step)."""
    return int(np.flatnonzero(mask_row)[-1]) + 1


# --------------------------------------------------------------------------
# common to every task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_shapes_dtypes_and_values(name):
    task = make_task(name, **SMALL[name])
    batch = task.sample(7, 0)
    assert isinstance(batch, Batch)
    x, y, m = batch
    T = m.shape[0]
    assert x.shape == (T, 7, task.input_size)
    assert y.shape == (T, 7, task.output_size)
    assert m.shape == (T, 7)
    for a in batch:
        assert a.dtype == np.float64
        assert np.all(np.isfinite(a))
    assert set(np.unique(m)) <= {0.0, 1.0}
    assert set(np.unique(y)) <= {0.0, 1.0}
    assert np.all(m.sum(axis=0) >= 1)
    # the longest row fills the batch: no step is padding for every row
    assert max(_row_length(m[:, b]) for b in range(7)) == T


@pytest.mark.parametrize("name", sorted(TASKS))
def test_targets_zero_where_not_scored_except_ngrams(name):
    task = make_task(name, **SMALL[name])
    x, y, m = task.sample(5, 3)
    if name != "ngrams":
        assert np.all(y[m == 0] == 0)
        # no input during the answer
        assert np.all(x[m == 1] == 0)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_same_seed_same_batch_different_seed_differs(name):
    task = make_task(name, **SMALL[name])
    a = task.sample(6, 123)
    b = task.sample(6, 123)
    c = task.sample(6, np.random.default_rng(123))
    d = task.sample(6, 124)
    for u, v, w in zip(a, b, c):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, w)
    assert any(u.shape != v.shape or not np.array_equal(u, v) for u, v in zip(a, d))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generator_is_advanced(name):
    task = make_task(name, **SMALL[name])
    rng = np.random.default_rng(5)
    a = task.sample(4, rng)
    b = task.sample(4, rng)
    assert any(u.shape != v.shape or not np.array_equal(u, v) for u, v in zip(a, b))


@pytest.mark.parametrize("name", sorted(TASKS))
def test_config_round_trip_and_repr(name):
    task = make_task(name, **SMALL[name])
    assert task.name == name
    again = make_task(name, **task.config())
    assert again == task and hash(again) == hash(task)
    assert type(task).__name__ in repr(task)
    assert isinstance(tasks.format_example(task.sample(2, 0)), str)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_defaults_build(name):
    task = make_task(name)
    assert task.input_size >= 1 and task.output_size >= 1
    assert task.__doc__ and "mask" in task.__doc__


def test_bad_rng_and_batch_size():
    task = Copy(bits=2, max_len=3)
    with pytest.raises(TypeError, match="rng"):
        task.sample(2, None)
    with pytest.raises(TypeError, match="rng"):
        task.sample(2, 1.5)
    with pytest.raises(ValueError, match="batch_size"):
        task.sample(0, 0)
    with pytest.raises(TypeError, match="batch_size"):
        task.sample(2.0, 0)


def test_make_task_unknown_name_lists_names():
    with pytest.raises(ValueError) as info:
        make_task("kopy")
    for name in TASKS:
        assert repr(name) in str(info.value)
    assert set(TASKS) == {
        "copy", "repeat-copy", "associative-recall", "ngrams", "priority-sort", "dnc-repeat-copy",
    }


@pytest.mark.parametrize(
    "cls, kwargs, word",
    [
        (Copy, dict(bits=0), "bits"),
        (Copy, dict(min_len=0), "min_len"),
        (Copy, dict(min_len=5, max_len=4), "min_len must be <= max_len"),
        (RepeatCopy, dict(bits=-1), "bits"),
        (RepeatCopy, dict(min_repeats=0), "min_repeats"),
        (RepeatCopy, dict(min_repeats=3, max_repeats=2), "max_repeats"),
        (RepeatCopy, dict(min_len=3, max_len=2), "max_len"),
        (AssociativeRecall, dict(item_len=0), "item_len"),
        (AssociativeRecall, dict(min_items=1), "min_items"),
        (AssociativeRecall, dict(min_items=4, max_items=3), "max_items"),
        (AssociativeRecall, dict(bits=1, item_len=2, max_items=5), "distinct"),
        (NGrams, dict(n=0), "n"),
        (NGrams, dict(n=17), "n"),
        (NGrams, dict(n=6, length=4), "length"),
        (PrioritySort, dict(length=0), "length"),
        (PrioritySort, dict(length=4, output_length=5), "output_length"),
        (PrioritySort, dict(output_length=0), "output_length"),
        (DNCRepeatCopy, dict(norm_max=0.0), "norm_max"),
        (DNCRepeatCopy, dict(norm_max=float("inf")), "norm_max"),
        (DNCRepeatCopy, dict(max_len=0), "max_len"),
    ],
)
def test_bad_parameters_raise_value_error(cls, kwargs, word):
    with pytest.raises(ValueError, match=word):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs", [(Copy, dict(bits=8.0)), (RepeatCopy, dict(max_len="3")), (Copy, dict(bits=True)),
                    (DNCRepeatCopy, dict(norm_max="10"))]
)
def test_non_integer_parameters_raise_type_error(cls, kwargs):
    with pytest.raises(TypeError):
        cls(**kwargs)


@pytest.mark.parametrize(
    "task, kwargs",
    [
        (Copy(bits=2), dict(length=0)),
        (RepeatCopy(bits=2), dict(repeats=0)),
        (DNCRepeatCopy(bits=2), dict(length=-1)),
        (AssociativeRecall(bits=1, item_len=2, max_items=4), dict(num_items=5)),
        (AssociativeRecall(), dict(num_items=1)),
    ],
)
def test_bad_sample_arguments(task, kwargs):
    with pytest.raises(ValueError):
        task.sample(2, 0, **kwargs)


# --------------------------------------------------------------------------
# copy


def _check_copy_row(x, y, m, bits):
    L = int(np.flatnonzero(x[:, bits])[0])
    assert np.all(x[:L, bits] == 0) and x[L, bits] == 1
    assert np.all(x[L, :bits] == 0)
    np.testing.assert_array_equal(m[: L + 1], 0)
    np.testing.assert_array_equal(m[L + 1 : 2 * L + 1], 1)
    np.testing.assert_array_equal(m[2 * L + 1 :], 0)
    np.testing.assert_array_equal(y[L + 1 : 2 * L + 1], x[:L, :bits])
    # padding after the row: zero inputs and targets
    assert np.all(x[L + 1 :] == 0) and np.all(y[2 * L + 1 :] == 0)
    return L


def test_copy_targets_are_the_inputs():
    task = Copy(bits=5, min_len=1, max_len=9)
    x, y, m = task.sample(40, 11)
    lengths = [_check_copy_row(x[:, b], y[:, b], m[:, b], 5) for b in range(40)]
    assert len(set(lengths)) > 1  # variable lengths in one batch
    assert min(lengths) >= 1 and max(lengths) <= 9
    assert x.shape[0] == 2 * max(lengths) + 1


def test_copy_fixed_length_beyond_training_range():
    task = Copy(bits=3, min_len=1, max_len=5)
    x, y, m = task.sample(4, 0, length=12)
    assert x.shape == (25, 4, 4)
    for b in range(4):
        assert _check_copy_row(x[:, b], y[:, b], m[:, b], 3) == 12


@HYPO
@given(
    bits=st.integers(1, 6),
    lo=st.integers(1, 5),
    extra=st.integers(0, 5),
    batch=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_copy_property(bits, lo, extra, batch, seed):
    task = Copy(bits=bits, min_len=lo, max_len=lo + extra)
    x, y, m = task.sample(batch, seed)
    for b in range(batch):
        L = _check_copy_row(x[:, b], y[:, b], m[:, b], bits)
        assert lo <= L <= lo + extra


# --------------------------------------------------------------------------
# repeat copy (NTM)


def _check_repeat_copy_row(task, x, y, m):
    bits = task.bits
    L = int(np.flatnonzero(x[:, bits])[0])
    assert x[L, bits] == 1 and np.all(x[L, :bits] == 0)
    R_float = x[L, bits + 1] * task.repeats_std + task.repeats_mean
    R = int(round(R_float))
    assert abs(R - R_float) < 1e-9
    end = L + 1 + L * R
    np.testing.assert_array_equal(y[L + 1 : end, :bits], np.tile(x[:L, :bits], (R, 1)))
    np.testing.assert_array_equal(y[: end, bits], 0)
    assert y[end, bits] == 1 and np.all(y[end, :bits] == 0)
    np.testing.assert_array_equal(m[: L + 1], 0)
    np.testing.assert_array_equal(m[L + 1 : end + 1], 1)
    np.testing.assert_array_equal(m[end + 1 :], 0)
    assert np.all(x[L + 1 :] == 0) and np.all(y[end + 1 :] == 0)
    return L, R


def test_repeat_copy_is_the_sequence_repeated_then_end_marker():
    task = RepeatCopy(bits=4, min_len=1, max_len=5, min_repeats=1, max_repeats=6)
    x, y, m = task.sample(50, 2)
    seen = [_check_repeat_copy_row(task, x[:, b], y[:, b], m[:, b]) for b in range(50)]
    assert len({L for L, _ in seen}) > 1 and len({R for _, R in seen}) > 1
    assert all(1 <= L <= 5 and 1 <= R <= 6 for L, R in seen)


def test_repeat_copy_normalisation_mean_zero_variance_one():
    task = RepeatCopy(min_repeats=1, max_repeats=10)
    values = task.normalise_repeats(np.arange(1, 11))
    assert abs(values.mean()) < 1e-12
    assert abs(values.var() - 1.0) < 1e-12
    single = RepeatCopy(min_repeats=3, max_repeats=3)
    assert single.normalise_repeats(3) == 0.0 and single.normalise_repeats(4) == 1.0


def test_repeat_copy_fixed_length_and_repeats():
    task = RepeatCopy(bits=2, max_len=3, max_repeats=3)
    x, y, m = task.sample(3, 0, length=4, repeats=5)  # beyond both training ranges
    assert x.shape[0] == 4 + 1 + 20 + 1
    for b in range(3):
        assert _check_repeat_copy_row(task, x[:, b], y[:, b], m[:, b]) == (4, 5)


@HYPO
@given(
    length=st.integers(1, 5), repeats=st.integers(1, 5), lo=st.integers(1, 4), seed=st.integers(0, 10**6)
)
def test_repeat_copy_property(length, repeats, lo, seed):
    task = RepeatCopy(bits=3, min_len=1, max_len=5, min_repeats=lo, max_repeats=lo + 2)
    x, y, m = task.sample(3, seed, length=length, repeats=repeats)
    for b in range(3):
        assert _check_repeat_copy_row(task, x[:, b], y[:, b], m[:, b]) == (length, repeats)


# --------------------------------------------------------------------------
# repeat copy (DNC)


def _check_dnc_row(task, x, y, m):
    bits = task.bits
    assert x[0, bits] == 1 and np.all(x[1:, bits] == 0) and np.all(x[0, :bits] == 0)
    count_step = int(np.flatnonzero(x[:, bits + 1])[0])
    L = count_step - 1
    R = int(round(x[count_step, bits + 1] * task.norm_max))
    assert abs(R - x[count_step, bits + 1] * task.norm_max) < 1e-9
    end = L + 2 + L * R
    np.testing.assert_array_equal(y[L + 2 : end, :bits], np.tile(x[1 : L + 1, :bits], (R, 1)))
    assert y[end, bits] == 1 and np.all(y[:end, bits] == 0) and np.all(y[end, :bits] == 0)
    np.testing.assert_array_equal(m[: L + 2], 0)
    np.testing.assert_array_equal(m[L + 2 : end + 1], 1)
    np.testing.assert_array_equal(m[end + 1 :], 0)
    assert np.all(x[L + 2 :] == 0) and np.all(y[end + 1 :] == 0)
    return L, R


def test_dnc_repeat_copy_encoding():
    task = DNCRepeatCopy(bits=4, min_len=1, max_len=5, min_repeats=1, max_repeats=5)
    x, y, m = task.sample(40, 9)
    seen = [_check_dnc_row(task, x[:, b], y[:, b], m[:, b]) for b in range(40)]
    assert len({L for L, _ in seen}) > 1 and len({R for _, R in seen}) > 1
    assert x.shape[0] == max(L * (R + 1) + 3 for L, R in seen)


def test_dnc_copy_is_repeat_copy_with_one_repeat():
    task = DNCRepeatCopy(bits=3, min_repeats=1, max_repeats=1)
    x, y, m = task.sample(5, 1, length=4)
    assert x.shape[0] == 4 * 2 + 3
    for b in range(5):
        assert _check_dnc_row(task, x[:, b], y[:, b], m[:, b]) == (4, 1)
    np.testing.assert_allclose(x[5, :, 4], 0.1)  # R / norm_max with norm_max = 10


# --------------------------------------------------------------------------
# associative recall


def _parse_recall_row(task, x, y, m):
    """Items, query and answer read back from the inputs; checks the layout."""
    bits, k = task.bits, task.item_len
    delims = np.flatnonzero(x[:, bits])
    qdelims = np.flatnonzero(x[:, bits + 1])
    assert len(qdelims) == 2 and qdelims[1] == qdelims[0] + k + 1
    n = len(delims)
    np.testing.assert_array_equal(delims, np.arange(n) * (k + 1))
    items = [x[d + 1 : d + 1 + k, :bits] for d in delims]
    assert qdelims[0] == n * (k + 1)
    query = x[qdelims[0] + 1 : qdelims[1], :bits]
    start = qdelims[1] + 1
    np.testing.assert_array_equal(m[:start], 0)
    np.testing.assert_array_equal(m[start : start + k], 1)
    np.testing.assert_array_equal(m[start + k :], 0)
    assert np.all(x[start:] == 0)
    return items, query, y[start : start + k]


def test_associative_recall_answer_is_the_item_after_the_query():
    task = AssociativeRecall(bits=3, item_len=2, min_items=2, max_items=6)
    x, y, m = task.sample(60, 4)
    counts = set()
    positions = set()
    for b in range(60):
        items, query, answer = _parse_recall_row(task, x[:, b], y[:, b], m[:, b])
        codes = [it.tobytes() for it in items]
        assert len(set(codes)) == len(codes)  # distinct items
        q = codes.index(query.tobytes())
        assert q < len(items) - 1
        np.testing.assert_array_equal(answer, items[q + 1])
        counts.add(len(items))
        positions.add(q)
    assert counts == {2, 3, 4, 5, 6}
    assert len(positions) > 2


def test_associative_recall_tight_capacity_and_fixed_items():
    task = AssociativeRecall(bits=1, item_len=2, min_items=4, max_items=4)  # all 4 codes used
    x, y, m = task.sample(8, 0)
    for b in range(8):
        items, _, _ = _parse_recall_row(task, x[:, b], y[:, b], m[:, b])
        assert len({it.tobytes() for it in items}) == 4
    x, y, m = AssociativeRecall(bits=4, item_len=2).sample(3, 0, num_items=9)
    assert x.shape[0] == 9 * 3 + 2 * 2 + 2


@HYPO
@given(bits=st.integers(2, 5), k=st.integers(1, 3), seed=st.integers(0, 10**6))
def test_associative_recall_property(bits, k, seed):
    task = AssociativeRecall(bits=bits, item_len=k, min_items=2, max_items=4)
    x, y, m = task.sample(4, seed)
    for b in range(4):
        items, query, answer = _parse_recall_row(task, x[:, b], y[:, b], m[:, b])
        codes = [it.tobytes() for it in items]
        np.testing.assert_array_equal(answer, items[codes.index(query.tobytes()) + 1])


# --------------------------------------------------------------------------
# priority sort


def test_priority_sort_targets_sorted_by_priority():
    task = PrioritySort(bits=4, length=10, output_length=7)
    x, y, m = task.sample(20, 6)
    L, K = 10, 7
    assert x.shape == (L + 1 + K, 20, 6)
    np.testing.assert_array_equal(m[: L + 1], 0)
    np.testing.assert_array_equal(m[L + 1 :], 1)
    np.testing.assert_array_equal(x[L, :, 5], 1)
    assert np.all(x[L + 1 :] == 0) and np.all(x[:L, :, 5] == 0)
    prio = x[:L, :, 4]
    assert np.all(prio >= -1) and np.all(prio <= 1)
    for b in range(20):
        order = sorted(range(L), key=lambda i: -prio[i, b])[:K]
        np.testing.assert_array_equal(y[L + 1 :, b], x[order, b, :4])
        assert all(prio[order[j], b] >= prio[order[j + 1], b] for j in range(K - 1))
        # the ones left out all have lower priority than every one output
        left = [i for i in range(L) if i not in order]
        assert all(prio[i, b] <= prio[order[-1], b] for i in left)


# --------------------------------------------------------------------------
# n-grams


def test_ngrams_target_is_next_input_and_mask():
    task = NGrams(n=5, length=40)
    x, y, m = task.sample(8, 0)
    assert x.shape == (40, 8, 1) and y.shape == (40, 8, 1)
    np.testing.assert_array_equal(y[:-1, :, 0], x[1:, :, 0])
    np.testing.assert_array_equal(m[:3], 0)  # targets x_1..x_3 have no full context
    np.testing.assert_array_equal(m[3:], 1)
    assert set(np.unique(x)) <= {0.0, 1.0}
    batch2, tables = task.sample_with_tables(8, 0)
    for u, v in zip((x, y, m), batch2):
        np.testing.assert_array_equal(u, v)
    assert tables.shape == (8, 16) and np.all((tables >= 0) & (tables <= 1))


def test_ngrams_bits_follow_the_table():
    task = NGrams(n=3, length=400)
    (x, y, m), tables = task.sample_with_tables(64, 1)
    ctx = task.contexts(x)
    scored = m > 0
    p = tables[np.arange(64)[None, :], ctx]  # (T, B)
    # the sum of (bit - p) over scored steps is a martingale: small relative to its sd
    resid = ((y[:, :, 0] - p) * scored).sum()
    sd = np.sqrt((p * (1 - p) * scored).sum())
    assert abs(resid) < 5 * sd
    # n = 1: one probability per row, no context
    (x1, _, m1), t1 = NGrams(n=1, length=2000).sample_with_tables(4, 0)
    np.testing.assert_array_equal(m1, 1)
    np.testing.assert_allclose(x1[1:, :, 0].mean(axis=0), t1[:, 0], atol=0.05)


def test_ngrams_contexts_by_hand():
    task = NGrams(n=3, length=5)
    bits = np.array([1, 0, 1, 1, 0], dtype=float)[:, None, None]
    np.testing.assert_array_equal(task.contexts(bits)[:, 0], [1, 2, 1, 3, 2])


def test_bayes_optimal_cost_by_hand():
    # n = 1: one context; targets 1, 1, 0 -> P = 1/2, 3/4, then P(0) = (0 + 1/2)/(2 + 1) = 1/6
    task = NGrams(n=1, length=3)
    x = np.zeros((3, 1, 1))
    y = np.array([1.0, 1.0, 0.0])[:, None, None]
    m = np.ones((3, 1))
    expected = 1.0 - math.log2(0.75) + math.log2(6.0)
    assert task.bayes_optimal_cost(Batch(x, y, m)) == pytest.approx(expected, rel=1e-12)
    # n = 2, two contexts counted apart; masked steps neither cost nor count
    task = NGrams(n=2, length=4)
    x = np.array([0.0, 1.0, 0.0, 1.0])[:, None, None]
    y = np.array([1.0, 0.0, 1.0, 1.0])[:, None, None]
    m = np.array([1.0, 1.0, 1.0, 0.0])[:, None]
    # ctx 0 -> 1 (P 1/2); ctx 1 -> 0 (P 1/2); ctx 0 -> 1 (P 1.5/2)
    expected = 1.0 + 1.0 - math.log2(0.75)
    assert task.bayes_optimal_cost(Batch(x, y, m)) == pytest.approx(expected, rel=1e-12)


def test_bayes_optimal_cost_beats_coin_and_loses_to_the_tables():
    task = NGrams(n=6, length=200)
    batch, tables = task.sample_with_tables(32, 7)
    bayes = task.bayes_optimal_cost(batch)
    scored = batch.mask.sum(axis=0).mean()
    coin = cost_bits(np.zeros_like(batch.targets), batch.targets, batch.mask)
    assert coin == pytest.approx(scored)
    assert bayes < coin
    p = tables[np.arange(32)[None, :], task.contexts(batch.inputs)]
    oracle = cost_bits(np.log(p / (1 - p))[:, :, None], batch.targets, batch.mask)
    assert oracle < bayes


def test_bayes_optimal_cost_bad_batch():
    task = NGrams(n=3, length=5)
    x, y, m = task.sample(2, 0)
    with pytest.raises(ValueError, match="inputs"):
        task.bayes_optimal_cost(Batch(np.zeros((5, 2, 2)), y, m))
    with pytest.raises(TypeError):
        task.bayes_optimal_cost(x)


# --------------------------------------------------------------------------
# scores


def test_cost_bits_by_hand():
    logits = np.zeros((2, 2, 3))
    targets = np.zeros((2, 2, 3))
    mask = np.array([[1.0, 1.0], [0.0, 1.0]])
    # logit 0 costs exactly one bit per scored output bit: 3 scored steps x 3 bits / 2 rows
    assert cost_bits(logits, targets, mask) == pytest.approx(4.5, rel=1e-15)
    logits = np.array([[[math.log(3.0)]]])  # sigmoid = 3/4
    assert cost_bits(logits, np.ones((1, 1, 1)), np.ones((1, 1))) == pytest.approx(-math.log2(0.75))
    assert cost_bits(logits, np.zeros((1, 1, 1)), np.ones((1, 1))) == pytest.approx(2.0)
    # probabilities as targets
    assert cost_bits(np.zeros((1, 1, 1)), np.full((1, 1, 1), 0.25), np.ones((1, 1))) == pytest.approx(1.0)


def test_cost_bits_is_stable_for_huge_logits():
    logits = np.array([[[1000.0, -1000.0, 1000.0, -1000.0]]])
    targets = np.array([[[1.0, 0.0, 0.0, 1.0]]])
    cost = cost_bits(logits, targets, np.ones((1, 1)))
    assert np.isfinite(cost)
    assert cost == pytest.approx(2000.0 / math.log(2.0), rel=1e-12)
    assert cost_bits(logits[..., :2], targets[..., :2], np.ones((1, 1))) == 0.0


def test_bit_errors_by_hand():
    logits = np.array([[[2.0, -1.0, 0.0], [0.5, 0.5, -0.5]], [[-3.0, 1.0, 1.0], [1.0, 1.0, 1.0]]])
    targets = np.array([[[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    mask = np.array([[1.0, 1.0], [1.0, 0.0]])
    # row 0: step 0 -> 1 wrong (bit 1); step 1 -> 1 wrong (bit 2); row 1: step 0 -> 1 wrong; step 1 masked
    assert bit_errors(logits, targets, mask) == pytest.approx(1.5)
    assert bit_errors(logits, targets, np.zeros((2, 2))) == 0.0


def test_scores_on_a_perfect_prediction():
    x, y, m = Copy(bits=3, max_len=5).sample(4, 0)
    logits = np.where(y > 0.5, 30.0, -30.0)
    assert bit_errors(logits, y, m) == 0.0
    assert 0.0 < cost_bits(logits, y, m) < 1e-9
    assert bit_errors(-logits, y, m) == pytest.approx(m.sum() * 3 / 4)


@pytest.mark.parametrize("fn", [cost_bits, bit_errors])
def test_scores_validate(fn):
    ok = np.zeros((3, 2, 4)), np.zeros((3, 2, 4)), np.ones((3, 2))
    with pytest.raises(ValueError, match="targets"):
        fn(ok[0], np.zeros((3, 2, 5)), ok[2])
    with pytest.raises(ValueError, match="mask"):
        fn(ok[0], ok[1], np.ones((3, 3)))
    with pytest.raises(ValueError, match="logits"):
        fn(np.zeros((3, 2)), ok[1], ok[2])
    with pytest.raises(ValueError, match="finite"):
        fn(np.full((3, 2, 4), np.nan), ok[1], ok[2])
    with pytest.raises(TypeError):
        fn(np.zeros((3, 2, 4), dtype=complex), ok[1], ok[2])


@HYPO
@given(
    seed=st.integers(0, 10**6),
    T=st.integers(1, 5),
    B=st.integers(1, 4),
    O=st.integers(1, 3),
    scale=st.floats(0.1, 20.0),
)
def test_scores_match_naive_formulas(seed, T, B, O, scale):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(T, B, O))
    targets = rng.integers(0, 2, size=(T, B, O)).astype(float)
    mask = rng.integers(0, 2, size=(T, B)).astype(float)
    p = 1.0 / (1.0 + np.exp(-logits))
    # -log σ(x) = log(1 + e^-x), -log(1 - σ(x)) = log(1 + e^x)
    naive = (targets * np.log1p(np.exp(-logits)) + (1 - targets) * np.log1p(np.exp(logits))) / math.log(2.0)
    expected = (naive * mask[:, :, None]).sum() / B
    assert cost_bits(logits, targets, mask) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    wrong = ((p > 0.5) != (targets > 0.5)) * mask[:, :, None]
    assert bit_errors(logits, targets, mask) == pytest.approx(wrong.sum() / B)


# --------------------------------------------------------------------------
# docs/tasks.md shows real output


def test_docs_examples_are_real_output():
    import pathlib

    doc = pathlib.Path(__file__).resolve().parents[2] / "docs" / "tasks.md"
    if not doc.exists():
        pytest.skip("docs/tasks.md is not next to the tests")
    text = doc.read_text(encoding="utf-8")
    fe = tasks.format_example
    examples = [
        fe(Copy(bits=4).sample(2, 0, length=3)),
        fe(RepeatCopy(bits=3).sample(2, 1, length=2, repeats=3)),
        fe(AssociativeRecall(bits=3, item_len=2).sample(2, 0, num_items=3)),
        fe(NGrams(n=3, length=12).sample(2, 4)),
        fe(PrioritySort(bits=3, length=5, output_length=3).sample(2, 1)),
        fe(DNCRepeatCopy(bits=3).sample(2, 1, length=2, repeats=2)),
    ]
    for example in examples:
        assert "```\n" + example + "\n```" in text
    task = NGrams()
    batch = task.sample(64, 0)
    assert f"it is {task.bayes_optimal_cost(batch):.1f} bits" in text
