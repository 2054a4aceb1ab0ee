"""Compiled temporal-linkage kernels against the autograd reference."""

import importlib

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, make_vjp
from hypothesis import given, settings
from hypothesis import strategies as st

import dmem
from dmem.compiled import _common

# dmem.compiled and dmem.reference re-export the ops under the modules' names; take the modules.
compiled = importlib.import_module("dmem.compiled.linkage")
reference = importlib.import_module("dmem.reference.linkage")
compiled_ops = importlib.import_module("dmem.compiled")
kernels = importlib.import_module("dmem._kernels.linkage")
dnc_bptt = importlib.import_module("dmem._dnc_bptt")


@pytest.fixture(autouse=True, scope="module", params=["avx512", "avx2+fma", "baseline"])
def instruction_set(request):
    """Every test runs with each version of the link loops (linkage_simd.h) that
    this CPU can run: AVX-512 and AVX2/FMA (where the CPU has them) and the baseline."""
    previous = kernels.simd_level()
    level = kernels._set_simd(request.param)
    if level != request.param:
        kernels._set_simd(previous)
        pytest.skip(f"this CPU cannot run the {request.param} loops")
    yield level
    kernels._set_simd(previous)

NAMES = ["precedence", "link", "temporal_weights", "link_step"]
N_OUTPUTS = {"precedence": 1, "link": 1, "temporal_weights": 2, "link_step": 4}


def weightings(rng, *shape, total=0.9):
    """Non-negative rows summing to at most ``total``."""
    x = rng.uniform(0, 1, shape)
    return total * x / x.sum(axis=-1, keepdims=True) * rng.uniform(0.2, 1.0, shape[:-1] + (1,))


def make_inputs(name, rng, B=3, N=7, R=4, dtype=np.float64, valid=True):
    """Inputs of op ``name``: DNC-like weightings and a link matrix from a few steps
    (``valid``), or arbitrary reals in [-2, 2] (the ops are polynomials)."""
    needs_link = name != "precedence"
    if valid:
        L = np.zeros((B, N, N) if needs_link else (B, 1, 1))
        p = np.zeros((B, N))
        for _ in range(3):
            w = weightings(rng, B, N)
            if needs_link:
                L = reference.link(L, w, p)
            p = reference.precedence(p, w)
        w = weightings(rng, B, N)
        wr = weightings(rng, B, R, N, total=1.0)
    else:
        L = rng.uniform(-2, 2, (B, N, N) if needs_link else (B, 1, 1))
        p = rng.uniform(-2, 2, (B, N))
        w = rng.uniform(-2, 2, (B, N))
        wr = rng.uniform(-2, 2, (B, R, N))
    inputs = {
        "precedence": (p, w),
        "link": (L, w, p),
        "temporal_weights": (L, wr),
        "link_step": (L, p, w, wr),
    }[name]
    return [np.asarray(x, dtype=dtype) for x in inputs]


def as_tuple(out):
    return tuple(out) if isinstance(out, tuple) else (out,)


def cotangents(name, rng, inputs):
    outs = as_tuple(reference.__dict__[name](*[np.asarray(x, np.float64) for x in inputs]))
    return [rng.standard_normal(o.shape) for o in outs]


def run_compiled(name, inputs, cots):
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    return as_tuple(out), getattr(compiled, name + "_backward")(saved, *cots)


def run_reference(name, inputs, cots):
    vjp, out = make_vjp(lambda args: getattr(reference, name)(*args))(tuple(inputs))
    grads = vjp(tuple(cots) if len(cots) > 1 else cots[0])
    return as_tuple(out), grads


def assert_close(got, want, rtol):
    """Relative comparison, with an absolute floor at rtol × 1e-3 of the largest entry."""
    scale = np.max(np.abs(want)) if np.size(want) else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3 * scale + 1e-300)


def assert_matches_reference(name, inputs, rng, rtol_out=1e-10, rtol_grad=1e-9):
    ref_inputs = [np.asarray(x, dtype=np.float64) for x in inputs]
    cots = cotangents(name, rng, inputs)
    ref_out, ref_grads = run_reference(name, ref_inputs, cots)
    out, grads = run_compiled(name, inputs, cots)
    assert len(out) == N_OUTPUTS[name]
    for got, want in zip(out, ref_out):
        assert got.shape == want.shape
        assert_close(got, want, rtol_out)
    assert len(grads) == len(inputs)
    for got, want, x in zip(grads, ref_grads, inputs):
        assert got.shape == np.shape(x)
        assert_close(got, want, rtol_grad)


# ---------------------------------------------------------------- against the reference

@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("B,N,R", [(1, 1, 1), (3, 7, 4), (2, 1, 4), (2, 9, 1), (2, 9, 2),
                                   (2, 16, 5), (1, 33, 8), (2, 130, 3)])
@pytest.mark.parametrize("valid", [True, False])
def test_forward_and_backward_match_reference(name, B, N, R, valid):
    rng = np.random.default_rng(B * 1000 + N * 10 + R)
    assert_matches_reference(name, make_inputs(name, rng, B, N, R, valid=valid), rng)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=30, deadline=None)
@given(
    B=st.integers(1, 8), N=st.integers(1, 24), R=st.integers(1, 6), valid=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_shapes_match_reference(name, B, N, R, valid, seed):
    rng = np.random.default_rng(seed)
    assert_matches_reference(name, make_inputs(name, rng, B, N, R, valid=valid), rng)


@pytest.mark.parametrize("name", ["link", "link_step", "temporal_weights"])
def test_large_rows_match_reference(name):
    rng = np.random.default_rng(11)
    assert_matches_reference(name, make_inputs(name, rng, B=2, N=300, R=4), rng)


@pytest.mark.parametrize("name", NAMES)
def test_large_values_stay_finite(name):
    """No exp or division anywhere: huge inputs give huge but finite values, as the reference."""
    rng = np.random.default_rng(12)
    inputs = [1e6 * x for x in make_inputs(name, rng, valid=False)]
    assert_matches_reference(name, inputs, rng)
    out, grads = run_compiled(name, inputs, cotangents(name, rng, inputs))
    assert all(np.all(np.isfinite(a)) for a in out + tuple(grads))


@pytest.mark.parametrize("name", NAMES)
def test_degenerate_inputs(name):
    """All-zero state and weightings, and one-hot full writes: finite, as the reference."""
    rng = np.random.default_rng(13)
    zeros = [np.zeros_like(x) for x in make_inputs(name, rng)]
    assert_matches_reference(name, zeros, rng)
    one_hot = []
    for x in make_inputs(name, rng):
        y = np.zeros_like(x)
        y[..., 2] = 1.0
        one_hot.append(y)
    assert_matches_reference(name, one_hot, rng)
    out, grads = run_compiled(name, one_hot, cotangents(name, rng, one_hot))
    assert all(np.all(np.isfinite(a)) for a in out + tuple(grads))


# ---------------------------------------------------------------- linkage specifics

@pytest.mark.parametrize("name", ["link", "link_step"])
def test_diagonal_is_zero_and_carries_no_gradient(name):
    rng = np.random.default_rng(14)
    inputs = make_inputs(name, rng, valid=False)
    idx = np.arange(inputs[0].shape[1])
    inputs[0][:, idx, idx] = 5.0  # garbage on the diagonal of link_prev is ignored
    cots = cotangents(name, rng, inputs)
    out, grads = run_compiled(name, inputs, cots)
    np.testing.assert_array_equal(np.diagonal(out[0], axis1=1, axis2=2), 0.0)
    np.testing.assert_array_equal(np.diagonal(grads[0], axis1=1, axis2=2), 0.0)
    cots2 = [c.copy() for c in cots]
    cots2[0][:, idx, idx] = rng.standard_normal((inputs[0].shape[0], len(idx)))
    _, grads2 = run_compiled(name, inputs, cots2)
    for g1, g2 in zip(grads, grads2):
        np.testing.assert_array_equal(g1, g2)
    assert_matches_reference(name, inputs, rng)


def test_link_step_is_link_precedence_and_temporal_weights_of_the_new_link():
    rng = np.random.default_rng(15)
    L, p, w, wr = make_inputs("link_step", rng, B=3, N=20, R=4)
    (newL, newp, f, b), _ = compiled.link_step_forward(L, p, w, wr)
    np.testing.assert_array_equal(newL, compiled.link_forward(L, w, p)[0])
    np.testing.assert_allclose(newp, compiled.precedence_forward(p, w)[0], rtol=1e-15)
    (f2, b2), _ = compiled.temporal_weights_forward(newL, wr)
    np.testing.assert_allclose(f, f2, rtol=1e-14)
    np.testing.assert_allclose(b, b2, rtol=1e-14)
    # forward = L w (the DNC paper), not Lᵀ w
    np.testing.assert_allclose(f, np.einsum("bij,brj->bri", newL, wr), rtol=1e-12)
    np.testing.assert_allclose(b, np.einsum("bij,bri->brj", newL, wr), rtol=1e-12)


def test_invariants_along_a_sequence_of_steps():
    rng = np.random.default_rng(16)
    B, N, R = 4, 32, 4
    L, p = np.zeros((B, N, N)), np.zeros((B, N))
    for step in range(10):
        w = weightings(rng, B, N, total=1.0 if step % 4 == 0 else 0.95)
        (L, p, f, b), _ = compiled.link_step_forward(L, p, w, weightings(rng, B, R, N, total=1.0))
        assert np.all(L >= 0) and np.all(L <= 1)
        np.testing.assert_array_equal(np.diagonal(L, axis1=1, axis2=2), 0.0)
        assert np.all(L.sum(axis=1) <= 1 + 1e-12) and np.all(L.sum(axis=2) <= 1 + 1e-12)
        assert np.all(p >= 0) and np.all(p.sum(axis=1) <= 1 + 1e-12)
        assert np.all(f >= 0) and np.all(f.sum(axis=2) <= 1 + 1e-12)
        assert np.all(b >= 0) and np.all(b.sum(axis=2) <= 1 + 1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_none_cotangents_are_zeros(name):
    rng = np.random.default_rng(17)
    inputs = make_inputs(name, rng)
    cots = cotangents(name, rng, inputs)
    _, saved = getattr(compiled, name + "_forward")(*inputs)
    backward = getattr(compiled, name + "_backward")
    some = [None if k % 2 else c for k, c in enumerate(cots)]
    zeros = [np.zeros_like(c) if k % 2 else c for k, c in enumerate(cots)]
    for g1, g2 in zip(backward(saved, *some), backward(saved, *zeros)):
        np.testing.assert_array_equal(g1, g2)


# ---------------------------------------------------------------- common properties

@pytest.mark.parametrize("name", NAMES)
def test_float32_kernels_match_float64_reference(name):
    # float32 round-off over sums of N = 64 terms: rtol 1e-4 with an absolute floor of
    # 1e-5 relative to the largest entry.
    rng = np.random.default_rng(2)
    inputs = make_inputs(name, rng, B=4, N=64, R=4, dtype=np.float32)
    cots = [c.astype(np.float32) for c in cotangents(name, rng, inputs)]
    out, grads = run_compiled(name, inputs, cots)
    assert all(o.dtype == np.float32 for o in out) and all(g.dtype == np.float32 for g in grads)
    ref_out, ref_grads = run_reference(name, [x.astype(np.float64) for x in inputs],
                                       [c.astype(np.float64) for c in cots])
    for got, want in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        scale = np.max(np.abs(want))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("name", ["link", "link_step"])
@pytest.mark.parametrize("N", [1, 5, 9, 13])
def test_float32_partial_vectors_match_float64_reference(name, N):
    """Rows shorter than, or not a multiple of, a vector of floats (4 or 8 lanes)."""
    rng = np.random.default_rng(40 + N)
    inputs = make_inputs(name, rng, B=3, N=N, R=5, dtype=np.float32)
    cots = [c.astype(np.float32) for c in cotangents(name, rng, inputs)]
    out, grads = run_compiled(name, inputs, cots)
    ref_out, ref_grads = run_reference(name, [x.astype(np.float64) for x in inputs],
                                       [c.astype(np.float64) for c in cots])
    for got, want in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(np.max(np.abs(want)), 1.0))


@pytest.mark.parametrize("name", NAMES)
def test_inputs_and_cotangents_are_not_mutated_and_stay_writeable(name):
    rng = np.random.default_rng(4)
    inputs = make_inputs(name, rng)
    copies = [x.copy() for x in inputs]
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    cots = cotangents(name, rng, inputs)
    cot_copies = [c.copy() for c in cots]
    getattr(compiled, name + "_backward")(saved, *cots)
    for x, c in zip(inputs, copies):
        np.testing.assert_array_equal(x, c)
        assert x.flags.writeable
    for x, c in zip(cots, cot_copies):
        np.testing.assert_array_equal(x, c)
        assert x.flags.writeable
    for o in as_tuple(out):
        assert o.flags.writeable
    assert all(not a.flags.writeable for a in saved.arrays)


def test_saved_state_does_not_copy_the_link_matrix():
    rng = np.random.default_rng(5)
    inputs = make_inputs("link_step", rng, N=16)
    _, saved = compiled.link_step_forward(*inputs)
    assert np.shares_memory(saved.arrays[0], inputs[0])
    assert all(a.shape != (3, 16, 16) for a in saved.arrays[1:])  # the new link is not kept


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("min_work", [0, 16384])
def test_one_and_two_threads_are_bitwise_identical(name, min_work, monkeypatch):
    # 0: both threads whatever the size (the default in tests/kernels); 16384: the rule
    monkeypatch.setattr(_common, "OP_PARALLEL_MIN_WORK", min_work)
    rng = np.random.default_rng(6)
    inputs = make_inputs(name, rng, B=5, N=40 if name != "precedence" else 9000, R=4)
    cots = cotangents(name, rng, inputs)
    before = dmem.get_num_threads()
    try:
        dmem.set_num_threads(1)
        out1, grads1 = run_compiled(name, inputs, cots)
        dmem.set_num_threads(2)
        out2, grads2 = run_compiled(name, inputs, cots)
    finally:
        dmem.set_num_threads(before)
    for a, b in zip(out1 + tuple(grads1), out2 + tuple(grads2)):
        np.testing.assert_array_equal(a, b)


def scalar_of_outputs(fn, weights):
    """A loss that uses every output of ``fn`` (a random linear function)."""

    def loss(*args):
        out = fn(*args)
        outs = [out[k] for k in range(len(weights))] if len(weights) > 1 else [out]
        return sum(anp.sum(c * o * o) for c, o in zip(weights, outs))

    return loss


@pytest.mark.parametrize("name", NAMES)
def test_autograd_through_the_compiled_primitive(name):
    rng = np.random.default_rng(7)
    inputs = make_inputs(name, rng)
    weights = cotangents(name, rng, inputs)
    argnums = list(range(len(inputs)))
    got = grad(scalar_of_outputs(getattr(compiled_ops, name), weights), argnums)(*inputs)
    want = grad(scalar_of_outputs(getattr(reference, name), weights), argnums)(*inputs)
    for g, h in zip(got, want):
        assert_close(g, h, 1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_ops_follow_the_backend_switch(name):
    rng = np.random.default_rng(8)
    inputs = make_inputs(name, rng)
    cots = cotangents(name, rng, inputs)
    results = {}
    for backend in ("reference", "compiled"):
        with dmem.use_backend(backend):
            out, saved = getattr(dmem.ops, name + "_forward")(*inputs)
            results[backend] = (as_tuple(out), getattr(dmem.ops, name + "_backward")(saved, *cots))
    for a, b in zip(results["compiled"][0] + tuple(results["compiled"][1]),
                    results["reference"][0] + tuple(results["reference"][1])):
        assert_close(a, b, 1e-9)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["fortran", "strided", "readonly"])
def test_non_contiguous_inputs(name, layout):
    rng = np.random.default_rng(9)
    inputs = make_inputs(name, rng)
    if layout == "fortran":
        other = [np.asfortranarray(x) for x in inputs]
    elif layout == "strided":
        other = [np.repeat(x, 2, axis=-1)[..., ::2] for x in inputs]
        assert not other[0].flags.c_contiguous
    else:
        other = [x.copy() for x in inputs]
        for x in other:
            x.flags.writeable = False
    cots = cotangents(name, rng, inputs)
    out1, grads1 = run_compiled(name, inputs, cots)
    out2, grads2 = run_compiled(name, other, [np.asfortranarray(c) for c in cots])
    for a, b in zip(out1 + tuple(grads1), out2 + tuple(grads2)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_mixed_dtypes_give_float64(name):
    rng = np.random.default_rng(10)
    inputs = make_inputs(name, rng)
    mixed = [x.astype(np.float32) if k % 2 == 0 else x for k, x in enumerate(inputs)]
    out, saved = getattr(compiled, name + "_forward")(*mixed)
    assert all(o.dtype == np.float64 for o in as_tuple(out))
    grads = getattr(compiled, name + "_backward")(saved, *cotangents(name, rng, inputs))
    assert all(g.dtype == np.float64 for g in grads)
    assert_matches_reference(name, mixed, rng)
    ints = [np.ones(np.shape(x), dtype=np.int64) for x in inputs]
    assert all(o.dtype == np.float64 for o in as_tuple(getattr(compiled, name + "_forward")(*ints)[0]))


# ---------------------------------------------------------------- bad input

def _forward(name):
    return getattr(compiled, name + "_forward")


@pytest.mark.parametrize("name", NAMES)
def test_wrong_ndim_is_refused(name):
    rng = np.random.default_rng(0)
    inputs = make_inputs(name, rng)
    for k in range(len(inputs)):
        bad = list(inputs)
        bad[k] = bad[k][0]
        with pytest.raises(ValueError, match="must have shape"):
            _forward(name)(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_disagreeing_sizes_are_refused(name):
    rng = np.random.default_rng(0)
    inputs = make_inputs(name, rng)
    for k in range(len(inputs)):
        bad = list(inputs)
        bad[k] = np.concatenate([bad[k], bad[k]], axis=-1)
        with pytest.raises(ValueError):
            _forward(name)(*bad)
        bad = list(inputs)
        bad[k] = np.concatenate([bad[k], bad[k]], axis=0)
        with pytest.raises(ValueError, match="batch"):
            _forward(name)(*bad)


@pytest.mark.parametrize("name", NAMES)
def test_empty_axes_are_refused(name):
    rng = np.random.default_rng(0)
    for axis_name, kwargs in [("batch", dict(B=0)), ("memory slots", dict(N=0)), ("read heads", dict(R=0))]:
        if axis_name == "read heads" and name not in ("temporal_weights", "link_step"):
            continue
        inputs = make_inputs(name, rng, valid=False, **{**dict(B=2, N=3, R=2), **kwargs})
        with pytest.raises(ValueError, match="empty axis"):
            _forward(name)(*inputs)


@pytest.mark.parametrize("name", NAMES)
def test_bad_dtypes_are_refused(name):
    rng = np.random.default_rng(0)
    inputs = make_inputs(name, rng)
    for dtype in (np.complex128, np.float16, object):
        bad = list(inputs)
        bad[-1] = bad[-1].astype(dtype)
        with pytest.raises(TypeError):
            _forward(name)(*bad)
    with pytest.raises(TypeError):
        _forward(name)(*inputs[:-1])


# ---------------------------------------------------------------- raw link_step kernels:
# in place, zero (None) arguments, non-temporal stores (what the DNC's BPTT uses)

def raw_link_step(inputs, link_out=None, link_prev="given", num_threads=1):
    """link_step_forward of dmem._kernels.linkage on validated arrays."""
    L, p, w, wr = inputs
    out = [np.empty_like(L) if link_out is None else link_out, np.empty_like(p),
           np.empty_like(wr), np.empty_like(wr)]
    kernels.link_step_forward(L if isinstance(link_prev, str) else link_prev, p, w, wr, *out,
                              num_threads=num_threads)
    return out


def raw_link_step_backward(inputs, cots, link_prev="given", grad_link="given",
                           grad_link_prev="new", num_threads=1):
    L, p, w, wr = inputs
    dL, dp, df, db = cots
    dlp = np.empty_like(L) if isinstance(grad_link_prev, str) else grad_link_prev
    grads = [np.empty_like(p), np.empty_like(w), np.empty_like(wr)]
    kernels.link_step_backward(L if isinstance(link_prev, str) else link_prev, p, w, wr,
                               dL if isinstance(grad_link, str) else grad_link, dp, df, db,
                               dlp, *grads, num_threads=num_threads)
    return [dlp] + grads


def valid_inputs(rng, B, N, R, dtype=np.float64):
    inputs = make_inputs("link_step", rng, B, N, R, dtype=dtype)
    cots = [np.asarray(c, dtype=dtype) for c in cotangents("link_step", rng, inputs)]
    return inputs, cots


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,R", [(13, 4), (16, 2), (9, 6)])
def test_link_step_in_place(N, R, dtype):
    """link may be link_prev itself, grad_link_prev grad_link itself: the same values."""
    rng = np.random.default_rng(30 + N + R)
    inputs, cots = valid_inputs(rng, 3, N, R, dtype)
    want = raw_link_step(inputs)
    L = inputs[0].copy()
    got = raw_link_step([L] + inputs[1:], link_out=L)
    assert got[0] is L
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    want = raw_link_step_backward(inputs, cots)
    dL = cots[0].copy()
    got = raw_link_step_backward(inputs, [dL] + cots[1:], grad_link_prev=dL)
    assert got[0] is dL
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_link_step_none_is_zero_or_not_wanted(dtype):
    """link_prev and grad_link None are zero matrices; grad_link_prev None is not computed."""
    rng = np.random.default_rng(31)
    inputs, cots = valid_inputs(rng, 3, 11, 5, dtype)
    zero = np.zeros_like(inputs[0])
    want = raw_link_step([zero] + inputs[1:])
    got = raw_link_step(inputs, link_prev=None)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    want = raw_link_step_backward([zero] + inputs[1:], [zero] + cots[1:])
    got = raw_link_step_backward(inputs, cots, link_prev=None, grad_link=None, grad_link_prev=None)
    assert got[0] is None
    for a, b in zip(got[1:], want[1:]):
        np.testing.assert_array_equal(a, b)
    # against the reference too (zero link_prev, zero link cotangent)
    ref_in = [np.asarray(x, np.float64) for x in [zero] + inputs[1:]]
    ref_cots = [np.zeros(zero.shape)] + [np.asarray(c, np.float64) for c in cots[1:]]
    _, ref_grads = run_reference("link_step", ref_in, ref_cots)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    for a, b in zip(got[1:], ref_grads[1:]):
        assert_close(a, b, tol)


def test_link_step_overlap_and_shapes_are_refused():
    rng = np.random.default_rng(32)
    inputs, cots = valid_inputs(rng, 2, 8, 3)
    B, N = 2, 8
    buf = np.zeros(B * N * N + N)
    with pytest.raises(ValueError, match="partly overlap"):
        raw_link_step_backward(inputs, [buf[:B * N * N].reshape(B, N, N)] + cots[1:],
                               grad_link_prev=buf[N:].reshape(B, N, N))
    buf[:B * N * N] = inputs[0].ravel()
    with pytest.raises(ValueError, match="partly overlap"):
        raw_link_step([buf[:B * N * N].reshape(B, N, N)] + inputs[1:],
                      link_out=buf[N:].reshape(B, N, N))
    with pytest.raises(ValueError, match="link_prev must have shape"):
        raw_link_step(inputs, link_prev=np.zeros((B, N, N + 1)))
    with pytest.raises(ValueError, match="grad_link must have shape"):
        raw_link_step_backward(inputs, cots, grad_link=np.zeros((B + 1, N, N)))
    with pytest.raises(ValueError, match="grad_link_prev must have shape"):
        raw_link_step_backward(inputs, cots, grad_link_prev=np.zeros((B, N - 1, N)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("offset", [0, 1, 2, 4])
def test_non_temporal_stores_give_the_same_values(dtype, offset):
    """Outputs of very large link matrices bypass the caches: same values, whatever
    the alignment of the output (offset elements from a 64-byte boundary)."""
    rng = np.random.default_rng(33)
    B, N = 3, 14
    inputs, cots = valid_inputs(rng, B, N, 4, dtype)

    def misaligned():
        buf = np.empty(B * N * N + 64, dtype)
        start = (-buf.ctypes.data % 64) // buf.itemsize + offset
        return buf[start:start + B * N * N].reshape(B, N, N)

    want_f = raw_link_step(inputs)
    want_b = raw_link_step_backward(inputs, cots)
    want_l = np.empty_like(inputs[0])
    kernels.link_forward(inputs[0], inputs[2], inputs[1], want_l)
    previous = kernels._set_stream_min_bytes(0)
    try:
        got_f = raw_link_step(inputs, link_out=misaligned())
        got_b = raw_link_step_backward(inputs, cots, grad_link_prev=misaligned())
        got_l = misaligned()
        kernels.link_forward(inputs[0], inputs[2], inputs[1], got_l)
        dL = cots[0].copy()  # in place: no streaming, same values
        got_in_place = raw_link_step_backward(inputs, [dL] + cots[1:], grad_link_prev=dL)
    finally:
        kernels._set_stream_min_bytes(previous)
    for a, b in zip(got_f + got_b + [got_l] + got_in_place, want_f + want_b + [want_l] + want_b):
        np.testing.assert_array_equal(a, b)


def test_simd_level_is_reported():
    level = kernels.simd_level()
    supported = kernels.simd_levels_supported()
    assert level in supported
    assert supported == kernels.SIMD_LEVELS[:len(supported)]
    assert kernels._set_simd(level) == level
    assert kernels._set_simd(False) == "baseline"
    assert kernels._set_simd(True) == supported[-1]
    kernels._set_simd(level)


def test_large_link_matrices_run_the_avx2_loops_under_avx512():
    """From WIDE_MAX_BYTES on, a call at the AVX-512 level runs the AVX2 loops (the
    64-byte vectors were slower there): the same bits as the AVX2 level."""
    previous = kernels.simd_level()
    if "avx512" not in kernels.simd_levels_supported():
        pytest.skip("this CPU cannot run the avx512 loops")
    rng = np.random.default_rng(44)
    inputs, cots = valid_inputs(rng, 3, 37, 5, np.float64)
    try:
        kernels._set_simd("avx2+fma")
        avx2 = raw_link_step(inputs) + raw_link_step_backward(inputs, cots)
        kernels._set_simd("avx512")
        wide = raw_link_step(inputs) + raw_link_step_backward(inputs, cots)
        limit = kernels._set_wide_max_bytes(0)
        try:
            capped = raw_link_step(inputs) + raw_link_step_backward(inputs, cots)
        finally:
            kernels._set_wide_max_bytes(limit)
    finally:
        kernels._set_simd(previous)
    for a, b in zip(capped, avx2):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(wide, avx2))


def test_public_report_of_the_instruction_sets(instruction_set):
    levels = compiled_ops.simd_levels()
    assert sorted(levels) == ["addressing", "allocation", "linkage", "memory"]
    assert levels["linkage"] == instruction_set  # this module's fixture selected it
    assert all(level in kernels.SIMD_LEVELS for level in levels.values())


# ---------------------------------------------------------------- temporal_weights row loops:
# any N (also shorter than, or not a multiple of, a vector), any R (groups of four
# heads and a remainder), an arbitrary L (its diagonal is not zeroed)

ODD_N = [1, 3, 7, 13]


@pytest.mark.parametrize("N", ODD_N)
@pytest.mark.parametrize("R", range(1, 10))
@pytest.mark.parametrize("valid", [True, False])
def test_temporal_weights_any_rows_and_heads_match_reference(N, R, valid):
    rng = np.random.default_rng(100 * N + R)
    assert_matches_reference("temporal_weights",
                             make_inputs("temporal_weights", rng, B=3, N=N, R=R, valid=valid), rng)


@pytest.mark.parametrize("N", ODD_N)
@pytest.mark.parametrize("R", [1, 3, 4, 5, 8, 9])
def test_temporal_weights_float32_any_rows_and_heads_match_float64_reference(N, R):
    rng = np.random.default_rng(200 * N + R)
    inputs = make_inputs("temporal_weights", rng, B=3, N=N, R=R, dtype=np.float32, valid=False)
    cots = [c.astype(np.float32) for c in cotangents("temporal_weights", rng, inputs)]
    out, grads = run_compiled("temporal_weights", inputs, cots)
    assert all(a.dtype == np.float32 for a in out + tuple(grads))
    ref_out, ref_grads = run_reference("temporal_weights",
                                       [x.astype(np.float64) for x in inputs],
                                       [c.astype(np.float64) for c in cots])
    for got, want in zip(out + tuple(grads), ref_out + tuple(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(np.max(np.abs(want)), 1.0))


def raw_temporal_weights(inputs, cots, num_threads):
    """The kernels' forward and backward outputs, on ``num_threads`` threads."""
    L, wr = inputs
    f, bw, dwr = (np.full(wr.shape, np.nan, wr.dtype) for _ in range(3))
    dL = np.full(L.shape, np.nan, L.dtype)
    kernels.temporal_weights_forward(L, wr, f, bw, num_threads=num_threads)
    kernels.temporal_weights_backward(L, wr, *cots, dL, dwr, num_threads=num_threads)
    return [f, bw, dL, dwr]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("N,R", [(1, 1), (3, 9), (13, 5), (37, 3), (40, 8)])
def test_temporal_weights_one_and_two_threads_are_bitwise_identical(dtype, N, R):
    rng = np.random.default_rng(300 + N + R)
    inputs = make_inputs("temporal_weights", rng, B=5, N=N, R=R, dtype=dtype, valid=False)
    cots = [c.astype(dtype) for c in cotangents("temporal_weights", rng, inputs)]
    one = raw_temporal_weights(inputs, cots, 1)
    two = raw_temporal_weights(inputs, cots, 2)
    for a, b in zip(one, two):
        assert np.all(np.isfinite(a))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype,rtol,floor",
                         [(np.float64, 1e-12, 1e-15), (np.float32, 1e-5, 1e-6)])
@pytest.mark.parametrize("N,R", [(1, 2), (7, 9), (13, 4), (130, 5)])
@pytest.mark.parametrize("wide", ["avx2+fma", "avx512"])
def test_temporal_weights_baseline_and_wider_loops_agree_to_rounding(wide, dtype, rtol, floor,
                                                                    N, R):
    """The versions differ only in rounding (FMA, lane order of the reductions):
    relative ``rtol``, with an absolute floor of ``floor`` × the largest entry for the
    sums of terms of both signs (float32: a few units in the last place of that entry)."""
    previous = kernels.simd_level()
    if kernels._set_simd(wide) != wide:
        kernels._set_simd(previous)
        pytest.skip(f"this CPU cannot run the {wide} loops")
    rng = np.random.default_rng(400 + N + R)
    inputs = make_inputs("temporal_weights", rng, B=3, N=N, R=R, dtype=dtype, valid=False)
    cots = [c.astype(dtype) for c in cotangents("temporal_weights", rng, inputs)]
    try:
        wider = raw_temporal_weights(inputs, cots, 2)
        assert kernels._set_simd(False) == "baseline"
        base = raw_temporal_weights(inputs, cots, 2)
    finally:
        kernels._set_simd(previous)
    for a, b in zip(wider, base):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=floor * np.max(np.abs(b)))


# ---------------------------------------------------------------- read weighting kernel

def reference_read_weights(modes, backward, content, forward):
    return (modes[..., 0:1] * backward + modes[..., 1:2] * content) + modes[..., 2:3] * forward


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_read_weights_kernel_matches_reference(dtype, rtol):
    rng = np.random.default_rng(34)
    B, R, N = 3, 4, 11
    block = np.exp(rng.standard_normal((B, R + 2, 5))).astype(dtype)
    modes = block[:, 1:1 + R, 1:4]                           # a strided (B, R, 3) view
    modes /= modes.sum(axis=-1, keepdims=True)
    assert not modes.flags.c_contiguous
    inputs = [modes] + [weightings(rng, B, R, N).astype(dtype) for _ in range(3)]
    grad = rng.standard_normal((B, R, N))
    out = np.empty((B, R, N), dtype)
    kernels.read_weights_forward(*inputs, out, num_threads=2)
    vjp, want = make_vjp(lambda args: reference_read_weights(*args))(
        tuple(np.asarray(x, np.float64) for x in inputs))
    assert_close(out, want, rtol)
    strided = np.full((B, R, 5), np.nan, dtype)
    grads = [strided[:, :, 1:4]] + [np.empty((B, R, N), dtype) for _ in range(3)]
    kernels.read_weights_backward(*inputs, grad.astype(dtype), *grads, num_threads=2)
    for got, want in zip(grads, vjp(grad)):
        assert_close(got, want, 10 * rtol)
    assert np.all(np.isnan(strided[:, :, [0, 4]]))


# ---------------------------------------------------------------- the DNC's BPTT over these kernels:
# each link matrix stored once, the link cotangent updated in place, memories
# recomputed by segments, buffers reused across calls (dmem/_dnc_bptt.py)

@pytest.fixture
def compiled_backend():
    """These tests are about the compiled BPTT: run them there whatever DMEM_BACKEND says."""
    with dmem.use_backend("compiled"):
        yield


def dnc_case(seed=2, rows=4, **sizes):
    from dmem.tasks import Copy

    task = Copy(bits=3, min_len=1, max_len=6)
    batch = task.sample(rows, seed)
    options = dict(memory_slots=9, word_size=4, controller_size=7, read_heads=3)
    options.update(sizes)
    return dmem.DNC(task.input_size, task.output_size, seed=seed, **options), batch


def assert_same_result(a, b):
    assert a[0] == b[0]
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k], err_msg=k)


@pytest.mark.parametrize("controller", ["lstm", "ff"])
def test_dnc_bptt_memory_segments_are_exact(controller, monkeypatch, compiled_backend):
    """Keeping every k-th memory and recomputing the others gives the same bits, and
    the reference's gradient."""
    model, batch = dnc_case(controller=controller)
    dnc_bptt.clear_workspaces()
    stored = model.loss_and_grad(*batch)
    monkeypatch.setattr(dnc_bptt, "STORE_ALL_MEMORY_BYTES", 0)
    dnc_bptt.clear_workspaces()
    seq = dnc_bptt._Sequence(model.config, batch.inputs.shape[0], batch.inputs.shape[1],
                             np.float64, True)
    assert 1 < seq.k < batch.inputs.shape[0]
    segmented = model.loss_and_grad(*batch)
    assert_same_result(segmented, stored)
    with dmem.use_backend("reference"):
        ref = model.loss_and_grad(*batch)
    np.testing.assert_allclose(segmented[0], ref[0], rtol=1e-10)
    for k, g in ref[1].items():
        scale = np.max(np.abs(g)) + 1e-300
        np.testing.assert_allclose(segmented[1][k] / scale, g / scale, rtol=0, atol=1e-8,
                                   err_msg=k)


def test_dnc_bptt_reuses_its_buffers_across_calls(compiled_backend):
    model, batch = dnc_case()
    dnc_bptt.clear_workspaces()
    first = model.loss_and_grad(*batch)
    assert model.loss_and_grad(*batch)[0] == first[0]
    # parameters updated in place (as the optimisers do): the next call sees them
    model.params["interface_W"] *= 0.5
    model.params["output_W"] += 0.01
    reused = model.loss_and_grad(*batch)
    dnc_bptt.clear_workspaces()
    assert_same_result(reused, model.loss_and_grad(*batch))
    assert reused[0] != first[0]
    # other sizes, inference in between, another model: all fresh where needed
    forward = model.forward(batch.inputs)
    other, _ = dnc_case(seed=3)
    other.loss_and_grad(*batch)
    short = model.loss_and_grad(batch.inputs[:5], batch.targets[:5], batch.mask[:5])
    assert_same_result(model.loss_and_grad(*batch), reused)
    np.testing.assert_array_equal(model.forward(batch.inputs), forward)
    dnc_bptt.clear_workspaces()
    assert_same_result(model.loss_and_grad(batch.inputs[:5], batch.targets[:5], batch.mask[:5]),
                       short)


def test_dnc_bptt_threads_do_not_change_the_result(monkeypatch, compiled_backend):
    monkeypatch.setattr(dnc_bptt, "PARALLEL_MIN_WORK", 0)
    model, batch = dnc_case(rows=5)
    before = dmem.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            dmem.set_num_threads(n)
            results.append(model.loss_and_grad(*batch))
    finally:
        dmem.set_num_threads(before)
    assert_same_result(results[0], results[1])


@pytest.mark.parametrize("controller", ["lstm", "ff"])
def test_dnc_bptt_batch_chunks_on_threads_are_exact(controller, monkeypatch, compiled_backend):
    """The batch cut into chunks run on a pool of threads: the reference's loss and
    gradient, and the same bits on 1 and 2 threads."""
    monkeypatch.setattr(dnc_bptt, "CHUNK_ROWS", 2)
    model, batch = dnc_case(controller=controller, rows=5)
    assert dnc_bptt._chunks(model.config, 5) == [(0, 1), (1, 3), (3, 5)]
    before = dmem.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            dmem.set_num_threads(n)
            dnc_bptt.clear_workspaces()
            results.append(model.loss_and_grad(*batch))
            results.append(model.loss_and_grad(*batch))   # reused buffers
            assert_same_result(results[-1], results[-2])
    finally:
        dmem.set_num_threads(before)
        dnc_bptt.clear_workspaces()
    assert_same_result(results[0], results[2])
    with dmem.use_backend("reference"):
        ref = model.loss_and_grad(*batch)
        forward_ref = model.forward(batch.inputs)
    np.testing.assert_allclose(results[0][0], ref[0], rtol=1e-10)
    for k, g in ref[1].items():
        scale = np.max(np.abs(g)) + 1e-300
        np.testing.assert_allclose(results[0][1][k] / scale, g / scale, rtol=0, atol=1e-8,
                                   err_msg=k)
    np.testing.assert_allclose(model.forward(batch.inputs), forward_ref, rtol=1e-10, atol=1e-12)


def test_dnc_bptt_keeps_one_link_matrix_per_step(compiled_backend):
    """Peak memory of a step whose link matrices dominate: T − 1 of them (L_0 and L_1
    are zero, and L_T is written where the link cotangent then lives), plus little."""
    import tracemalloc

    model, batch = dnc_case(rows=2, memory_slots=160, word_size=3, controller_size=6, read_heads=1)
    T, B = batch.inputs.shape[:2]
    N = model.config.memory_slots
    link_bytes = T * B * N * N * 8
    dnc_bptt.clear_workspaces()
    tracemalloc.start()
    try:
        model.loss_and_grad(*batch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        dnc_bptt.clear_workspaces()
    assert (T - 1) / T * link_bytes < peak < 1.2 * link_bytes  # one more matrix: +1/T
