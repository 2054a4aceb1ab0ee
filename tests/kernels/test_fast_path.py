"""The compiled wrappers' fast path: the common call recognised by one cheap
check, everything else through the full validation, and a saved state that is
checked again before its backward kernel runs."""

import importlib

import numpy as np
import pytest

from dmem._kernels import _checks
from dmem.compiled._common import Saved

# dmem.compiled.<op> names the op itself: import the wrapper modules by path.
ca = importlib.import_module("dmem.compiled.addressing")
cal = importlib.import_module("dmem.compiled.allocation")
cl = importlib.import_module("dmem.compiled.linkage")
cm = importlib.import_module("dmem.compiled.memory")

F64 = np.dtype(np.float64)


def _read_inputs(rng, B=3, N=6, W=4, H=2):
    return rng.standard_normal((B, N, W)), rng.dirichlet([1.0] * N, size=(B, H))


def test_common_call_is_recognised_with_its_sizes():
    rng = np.random.default_rng(0)
    memory, weights = _read_inputs(rng)
    sizes = _checks.input_sizes(("BNW", "BHN"), (memory, weights))
    assert sizes == {"B": 3, "N": 6, "W": 4, "H": 2, "dtype": F64}
    single = _checks.input_sizes(("BNW", "BHN"), (memory.astype(np.float32),
                                                  weights.astype(np.float32)))
    assert single["dtype"] == np.dtype(np.float32)
    readonly = memory.copy()
    readonly.flags.writeable = False
    assert _checks.input_sizes(("BNW", "BHN"), (readonly, weights)) == sizes


class _Sub(np.ndarray):
    pass


def _deviations(memory, weights):
    """(name, memory, weights) calls that are not the common case."""
    return [
        ("fortran", np.asfortranarray(memory), weights),
        ("strided", np.repeat(memory, 2, axis=2)[:, :, ::2], weights),
        ("mixed dtypes", memory.astype(np.float32), weights),
        ("int", np.round(memory * 10).astype(np.int64), weights),
        ("list", memory.tolist(), weights),
        ("subclass", memory.view(_Sub), weights),
        ("byte-swapped", memory.astype(">f8"), weights),
        ("float16", memory.astype(np.float16), weights),
        ("wrong ndim", memory[0], weights),
        ("sizes disagree", memory[:, :5], weights),
        ("empty axis", memory[:, :, :0], weights),
        ("None", None, weights),
    ]


@pytest.mark.parametrize("case", range(12))
def test_anything_else_takes_the_full_validation(case):
    """Not recognised, and the op then does what the full validation says:
    converts (same results as the common call) or raises its error."""
    rng = np.random.default_rng(1)
    memory, weights = _read_inputs(rng)
    name, m, w = _deviations(memory, weights)[case]
    assert _checks.input_sizes(("BNW", "BHN"), (m, w)) is None, name
    expected, _ = cm.read_forward(memory, weights)
    if name in ("fortran", "strided", "int", "list", "subclass", "byte-swapped"):
        converted = np.asarray(m, dtype=np.float64)
        reads, saved = cm.read_forward(m, w)
        np.testing.assert_allclose(reads, np.einsum("bhn,bnw->bhw", weights, converted),
                                   rtol=1e-12, atol=1e-12)
        assert type(reads) is np.ndarray and reads.flags.c_contiguous
        cm.read_backward(saved, np.ones_like(reads))
    elif name == "mixed dtypes":
        reads, _ = cm.read_forward(m, w)
        assert reads.dtype == F64
        np.testing.assert_allclose(reads, expected, rtol=1e-6)
    elif name == "float16" or name == "None":
        with pytest.raises(TypeError, match="memory"):
            cm.read_forward(m, w)
    else:
        with pytest.raises(ValueError, match="memory"):
            cm.read_forward(m, w)


def test_odd_shift_width_is_still_checked_on_the_fast_path():
    rng = np.random.default_rng(2)
    w = rng.dirichlet([1.0] * 6, size=(2, 1))
    s = rng.dirichlet([1.0] * 4, size=(2, 1))
    assert _checks.input_sizes(("BHN", "BHS"), (w, s)) is not None
    with pytest.raises(ValueError, match="odd"):
        ca.shift_forward(w, s)


def test_arrays_fit_checks_each_dtype_prefix():
    sizes = {"B": 2, "N": 3, "dtype": np.dtype(np.float32)}
    f32 = np.zeros((2, 3), np.float32)
    f64 = np.zeros((2, 3))
    i64 = np.zeros((2, 3), np.int64)
    assert _checks.arrays_fit(("BN", "dBN", "iBN"), (f32, f64, i64), sizes)
    assert not _checks.arrays_fit(("BN",), (f64,), sizes)
    assert not _checks.arrays_fit(("dBN",), (f32,), sizes)
    assert not _checks.arrays_fit(("iBN",), (f64,), sizes)
    assert not _checks.arrays_fit(("iBN",), (i64.astype(np.int32),), sizes)
    assert not _checks.arrays_fit(("BNW",), (f32[..., None],), sizes)  # W not in sizes
    assert not _checks.arrays_fit(("BN",), (f32.T.copy(),), sizes)
    assert not _checks.arrays_fit(("BN",), (np.zeros((2, 6), np.float32)[:, ::2],), sizes)
    assert not _checks.arrays_fit(("BN", "BN"), (f32,), sizes)


def test_an_input_reshaped_in_place_after_the_forward_is_refused():
    rng = np.random.default_rng(3)
    memory, weights = _read_inputs(rng, N=4, W=4)
    reads, saved = cm.read_forward(memory, weights)
    memory.shape = (3, 2, 8)  # the caller's own array object, kept by the saved state
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        cm.read_backward(saved, np.ones_like(reads))
    memory.shape = (3, 4, 4)
    cm.read_backward(saved, np.ones_like(reads))


def test_an_output_reshaped_in_place_before_the_backward_is_refused():
    rng = np.random.default_rng(4)
    w = rng.dirichlet([1.0] * 6, size=(2, 2))
    gamma = 1 + rng.uniform(0, 2, (2, 2))
    out, saved = ca.sharpen_forward(w, gamma)
    grad = np.ones_like(out)
    out.shape = (2, 6, 2)  # the output is one of the saved arrays
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        ca.sharpen_backward(saved, grad)


def test_a_saved_state_assembled_by_hand_is_checked_array_by_array():
    rng = np.random.default_rng(5)
    u = rng.uniform(0, 1, (2, 5))
    out, saved = cal.allocation_forward(u)
    usage, order, prefix = saved.arrays
    good = Saved("allocation", (usage, order.copy(), prefix), None, saved.sizes)
    np.testing.assert_array_equal(cal.allocation_backward(good, np.ones_like(out))[0],
                                  cal.allocation_backward(saved, np.ones_like(out))[0])
    for arrays in (
        (usage, order.astype(np.float64), prefix),   # the free list must be int64
        (usage, order.astype(np.int32), prefix),
        (usage, order, prefix.astype(np.float32)),
        (usage, order[:, :4].copy(), prefix),
        (usage, order),
        (usage, order.tolist(), prefix),
    ):
        forged = Saved("allocation", arrays, None, saved.sizes)
        with pytest.raises(TypeError, match="saved state does not match its forward"):
            cal.allocation_backward(forged, np.ones_like(out))
    wrong_sizes = dict(saved.sizes, N=10**6)
    forged = Saved("allocation", saved.arrays, None, wrong_sizes)
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        cal.allocation_backward(forged, np.ones((2, 10**6)))


def test_saved_state_attributes_cannot_be_assigned():
    rng = np.random.default_rng(6)
    _, saved = cl.precedence_forward(rng.uniform(0, 0.1, (2, 4)), rng.uniform(0, 0.1, (2, 4)))
    for name in ("op", "arrays", "outputs", "sizes"):
        with pytest.raises(AttributeError):
            setattr(saved, name, None)
    assert saved.outputs == (((2, 4), F64),)
    assert all(not a.flags.writeable for a in saved.arrays)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gradients_off_the_common_case_give_the_same_results(dtype):
    """A cotangent that is Fortran-ordered, of the other dtype, a list or None
    goes through the full check and gives what the common call gives."""
    rng = np.random.default_rng(7)
    memory, weights = (a.astype(dtype) for a in _read_inputs(rng, W=5))
    reads, saved = cm.read_forward(memory, weights)
    g = rng.standard_normal(reads.shape).astype(dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    for variant in (np.asfortranarray(g), g.tolist(), g.astype(other)):
        expected = cm.read_backward(saved, np.ascontiguousarray(variant, dtype=dtype))
        got = cm.read_backward(saved, variant)
        for a, b in zip(got, expected):
            assert a.dtype == dtype
            np.testing.assert_array_equal(a, b)
    zero = cm.read_backward(saved, None)
    assert all(not a.any() for a in zero)
