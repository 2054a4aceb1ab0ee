"""dmem._kernels.dnc_step.LinkSequence: the DNC's link steps over a whole sequence
against the autograd reference, bit-for-bit across threads, and its checks."""

import importlib

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad

reference = importlib.import_module("dmem.reference.linkage")
linkage = importlib.import_module("dmem._kernels.linkage")
dnc_step = importlib.import_module("dmem._kernels.dnc_step")
LinkSequence = dnc_step.LinkSequence

SIMD = ["baseline"] + (["avx2+fma"] if linkage._set_simd(True) == "avx2+fma" else [])


def weightings(rng, *shape, total=0.9):
    x = rng.uniform(0, 1, shape)
    return total * x / x.sum(axis=-1, keepdims=True) * rng.uniform(0.2, 1.0, shape[:-1] + (1,))


def make(T=6, B=3, N=7, R=4, dtype=np.float64, train=True, seed=0):
    """The arrays of a LinkSequence, with write weightings ``ww_1..ww_T``, and the
    read weightings ``wr_0..wr_{T-1}`` `(T, B, R, N)` (``wr_0 = 0``)."""
    rng = np.random.default_rng(seed)
    arrays = dict(
        link=np.full((max(T - 2, 0), B, N, N), np.nan, dtype) if train else None,
        link_grad=np.full((B, N, N), np.nan, dtype),
        precedence=np.zeros((T + 1, B, N), dtype),
        write_weights=np.zeros((T + 1, B, N), dtype),
        forward_weights=np.full((T, B, R, N), np.nan, dtype),
        backward_weights=np.full((T, B, R, N), np.nan, dtype))
    arrays["write_weights"][1:] = weightings(rng, T, B, N)
    wr = weightings(rng, T, B, R, N, total=1.0).astype(dtype)
    wr[0] = 0
    return arrays, wr


def run_forward(arrays, wr, threads=1, simd=True):
    seq = LinkSequence(**arrays)
    seq.use_simd(simd)
    for t in range(wr.shape[0]):
        seq.forward(t, np.ascontiguousarray(wr[t]), threads)
    return seq


def reference_sequence(ww, wr):
    """``[(f_t, b_t)], p_T`` of the reference's link_step from zero state."""
    T, B, N = ww.shape
    L = anp.zeros((B, N, N))
    p = anp.zeros((B, N))
    out = []
    for t in range(T):
        L, p, f, b = reference.link_step(L, p, ww[t], wr[t])
        out.append((f, b))
    return out, p


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 2, 3, 6])
def test_forward_equals_the_reference(T, dtype, simd):
    arrays, wr = make(T=T, dtype=dtype)
    run_forward(arrays, wr, simd=simd == "avx2+fma")
    ww = arrays["write_weights"][1:].astype(np.float64)
    out, p = reference_sequence(ww, wr.astype(np.float64))
    rtol, atol = (1e-12, 1e-14) if dtype == np.float64 else (2e-5, 1e-6)
    for t, (f, b) in enumerate(out):
        np.testing.assert_allclose(arrays["forward_weights"][t], f, rtol=rtol, atol=atol)
        np.testing.assert_allclose(arrays["backward_weights"][t], b, rtol=rtol, atol=atol)
    np.testing.assert_allclose(arrays["precedence"][T], p, rtol=rtol, atol=atol)
    # the last link matrix is in link_grad, the others stored
    L = np.zeros_like(arrays["link_grad"], dtype=np.float64)
    pp = np.zeros(p.shape)
    for t in range(T):
        L, pp = reference.link(L, ww[t], pp), reference.precedence(pp, ww[t])
        if 2 <= t + 1 <= T - 1:
            np.testing.assert_allclose(arrays["link"][t - 1], L, rtol=rtol, atol=atol)
    np.testing.assert_allclose(arrays["link_grad"], L, rtol=rtol, atol=atol)


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("T", [1, 2, 5])
def test_backward_equals_autograd_of_the_reference(T, dtype, simd):
    B, N, R = 2, 6, 3
    arrays, wr = make(T=T, B=B, N=N, R=R, dtype=dtype, seed=4)
    seq = run_forward(arrays, wr, simd=simd == "avx2+fma")
    rng = np.random.default_rng(5)
    gf = rng.normal(size=(T, B, R, N))
    gb = rng.normal(size=(T, B, R, N))
    gp = rng.normal(size=(B, N))
    ww = arrays["write_weights"][1:].astype(np.float64)

    def scalar(ww, wr):
        out, p = reference_sequence(ww, wr)
        total = anp.sum(p * gp)
        for t, (f, b) in enumerate(out):
            total = total + anp.sum(f * gf[t]) + anp.sum(b * gb[t])
        return total

    d_ww_ref = grad(scalar, 0)(ww, wr.astype(np.float64))
    d_wr_ref = grad(scalar, 1)(ww, wr.astype(np.float64))
    d_p = gp.astype(dtype)
    d_p_prev = np.empty((B, N), dtype)
    d_ww = np.empty((T, B, N), dtype)
    d_wr = np.empty((T, B, R, N), dtype)
    for t in range(T - 1, -1, -1):
        out_ww, out_wr = np.empty((B, N), dtype), np.empty((B, R, N), dtype)
        seq.backward(t, np.ascontiguousarray(wr[t]), d_p, gf[t].astype(dtype),
                     gb[t].astype(dtype), d_p_prev, out_ww, out_wr, 1)
        d_ww[t], d_wr[t] = out_ww, out_wr
        d_p, d_p_prev = d_p_prev, d_p
    tol = 1e-10 if dtype == np.float64 else 2e-4
    for got, want in [(d_ww, d_ww_ref), (d_wr[1:], d_wr_ref[1:])][:2 if T > 1 else 1]:
        scale = np.max(np.abs(want)) + 1e-300
        np.testing.assert_allclose(got / scale, want / scale, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_and_two_threads_and_streaming_give_the_same_bits(dtype, monkeypatch):
    results = []
    for threads, stream in [(1, 32 << 20), (2, 32 << 20), (2, 0)]:
        monkeypatch.setattr(dnc_step, "STREAM_MIN_BYTES", stream)
        arrays, wr = make(T=5, B=5, N=9, R=2, dtype=dtype, seed=7)
        seq = run_forward(arrays, wr, threads=threads)
        B, N, R = 5, 9, 2
        d_p, d_pp = np.ones((B, N), dtype), np.empty((B, N), dtype)
        grads = []
        for t in range(4, -1, -1):
            d_ww, d_wr = np.empty((B, N), dtype), np.empty((B, R, N), dtype)
            seq.backward(t, np.ascontiguousarray(wr[t]), d_p, np.ones((B, R, N), dtype),
                         np.full((B, R, N), 0.5, dtype), d_pp, d_ww, d_wr, threads)
            grads += [d_ww, d_wr]
            d_p, d_pp = d_pp, d_p
        results.append([arrays[k] for k in ("link", "precedence", "forward_weights",
                                            "backward_weights")] + grads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_inference_sequence_updates_one_link_matrix_in_place():
    train, wr = make(T=5)
    run_forward(train, wr)
    infer, _ = make(T=5, train=False)
    seq = run_forward(infer, wr)
    assert not seq.train
    for k in ("precedence", "forward_weights", "backward_weights", "link_grad"):
        np.testing.assert_array_equal(infer[k], train[k])
    with pytest.raises(ValueError, match="training"):
        seq.backward(0, wr[0], *[np.zeros((3, 7))] * 1, np.zeros((3, 4, 7)),
                     np.zeros((3, 4, 7)), np.zeros((3, 7)), np.zeros((3, 7)),
                     np.zeros((3, 4, 7)))


class TestBadInput:
    def test_construction(self):
        arrays, _ = make()
        for name, bad, error in [
                ("link", arrays["link"][:, :, :, :-1], ValueError),
                ("link_grad", arrays["link_grad"].astype(np.float32), TypeError),
                ("write_weights", arrays["write_weights"][:-1], ValueError),
                ("forward_weights", np.asfortranarray(arrays["forward_weights"]), ValueError),
                ("backward_weights", arrays["backward_weights"].tolist(), TypeError),
                ("backward_weights", arrays["forward_weights"], ValueError)]:
            kwargs = dict(arrays, **{name: bad})
            with pytest.raises(error):
                LinkSequence(**kwargs)
        with pytest.raises(TypeError):
            LinkSequence(**dict(arrays, precedence=arrays["precedence"].astype(np.int64)))
        readonly = arrays["link_grad"].copy()
        readonly.flags.writeable = False
        with pytest.raises(ValueError):
            LinkSequence(**dict(arrays, link_grad=readonly))

    def test_steps(self):
        arrays, wr = make(T=4, B=3, N=7, R=4)
        seq = LinkSequence(**arrays)
        good = np.ascontiguousarray(wr[0])
        for t in (-1, 4, 100):
            with pytest.raises(ValueError, match="out of range"):
                seq.forward(t, good)
        with pytest.raises(ValueError):
            seq.forward(0, good[:, :3])
        with pytest.raises(TypeError):
            seq.forward(0, good.astype(np.float32))
        with pytest.raises(ValueError):
            seq.forward(0, np.asfortranarray(good.transpose(0, 2, 1)).transpose(0, 2, 1))
        with pytest.raises(ValueError, match="overlap"):
            seq.forward(0, arrays["forward_weights"][1])
        for t in range(4):
            seq.forward(t, np.ascontiguousarray(wr[t]))
        B, N, R = 3, 7, 4
        args = [good, np.zeros((B, N)), np.zeros((B, R, N)), np.zeros((B, R, N)),
                np.zeros((B, N)), np.zeros((B, N)), np.zeros((B, R, N))]
        with pytest.raises(ValueError, match="out of range"):
            seq.backward(4, *args)
        for i, bad in [(1, np.zeros((B, N + 1))), (2, np.zeros((B, R - 1, N))),
                       (4, np.zeros((B, N), np.float32)), (6, np.zeros((B, N, R)).T)]:
            with pytest.raises((ValueError, TypeError)):
                seq.backward(3, *args[:i], bad, *args[i + 1:])
        with pytest.raises(ValueError, match="overlap"):
            seq.backward(3, *args[:4], args[5], *args[5:])
        seq.backward(3, *args)
