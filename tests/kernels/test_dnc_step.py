"""dmem._kernels.dnc_step.DNCSequence, the fused DNC step: the compiled DNC it runs
against autograd over the reference model at the edges of its storage (T = 1,
2, 3, memory segments), in float32 and float64, with and without SIMD; the same
bits on 1 and 2 threads and with non-temporal stores; and its checks."""

import importlib

import numpy as np
import pytest

import dmem
from dmem.tasks import Copy

linkage = importlib.import_module("dmem._kernels.linkage")
dnc_step = importlib.import_module("dmem._kernels.dnc_step")
dnc_bptt = importlib.import_module("dmem._dnc_bptt")
DNCSequence = dnc_step.DNCSequence

SIMD = list(linkage.simd_levels_supported())


@pytest.fixture(autouse=True)
def fresh_workspaces():
    dnc_bptt.clear_workspaces()
    yield
    dnc_bptt.clear_workspaces()
    linkage._set_simd(True)


def case(T, rows=3, dtype=np.float64, seed=4, **options):
    """A DNC and a batch of sequences of exactly ``T`` steps (a copy of ``T // 2``
    vectors and its recall, cut to ``T`` steps)."""
    length = max(1, T // 2)
    task = Copy(bits=3, min_len=length, max_len=length)
    b = task.sample(rows, seed)
    x, y, m = b.inputs[:T], b.targets[:T], b.mask[:T].copy()
    m[-1] = 1  # every row has a loss at its last step
    sizes = dict(memory_slots=6, word_size=4, controller_size=5, read_heads=3)
    sizes.update(options)
    model = dmem.DNC(task.input_size, task.output_size, seed=seed, dtype=dtype, **sizes)
    return model, (x.astype(dtype), y.astype(dtype), m.astype(dtype))


def reference_and_compiled(model, b):
    with dmem.use_backend("reference"):
        ref = model.loss_and_grad(*b)
        ref_logits = model.forward(b[0])
    with dmem.use_backend("compiled"):
        comp = model.loss_and_grad(*b)
        comp_logits = model.forward(b[0])
    return ref, comp, ref_logits, comp_logits


def assert_close(ref, comp, rtol, dtype=np.float64):
    np.testing.assert_allclose(comp[0], ref[0], rtol=rtol)
    for k, g in ref[1].items():
        assert comp[1][k].dtype == dtype, k
        scale = np.max(np.abs(g)) + 1e-300
        np.testing.assert_allclose(comp[1][k] / scale, g / scale, rtol=0, atol=rtol, err_msg=k)


@pytest.mark.parametrize("simd", SIMD)
@pytest.mark.parametrize("controller", ["lstm", "ff"])
@pytest.mark.parametrize("T", [1, 2, 3, 7])
def test_compiled_dnc_equals_reference(T, controller, simd):
    """L_0 = L_1 = 0 are not stored and L_T goes to the cotangent's buffer: every
    short sequence is an edge of that storage."""
    linkage._set_simd(simd)
    model, b = case(T, controller=controller)
    ref, comp, ref_logits, comp_logits = reference_and_compiled(model, b)
    assert_close(ref, comp, 1e-8)
    np.testing.assert_allclose(comp_logits, ref_logits, rtol=1e-10, atol=1e-12)
    assert all(np.any(g != 0) for k, g in comp[1].items() if k != "controller_b" or T > 1)


@pytest.mark.parametrize("controller", ["lstm", "ff"])
def test_float32_dnc_follows_the_float64_reference(controller):
    model64, b64 = case(9, controller=controller)
    model32, b32 = case(9, dtype=np.float32, controller=controller)
    with dmem.use_backend("reference"):
        ref = model64.loss_and_grad(*b64)
    with dmem.use_backend("compiled"):
        comp = model32.loss_and_grad(*b32)
        logits = model32.forward(b32[0])
    assert logits.dtype == np.float32
    assert_close(ref, comp, 2e-4, np.float32)


def test_one_and_two_threads_and_streaming_give_the_same_bits(monkeypatch):
    """OpenMP threads over the rows of one chunk, non-temporal stores of the stored
    link matrices, and link matrices kept by segments change no bit."""
    model, b = case(8, rows=5)
    results = []
    before = dmem.get_num_threads()
    everything = dnc_bptt.STORE_ALL_LINK_BYTES
    try:
        for threads, stream, min_work, links in [(1, 32 << 20, 1 << 18, everything),
                                                 (2, 32 << 20, 0, everything),
                                                 (2, 0, 0, everything), (2, 0, 0, 0)]:
            monkeypatch.setattr(dnc_step, "STREAM_MIN_BYTES", stream)
            monkeypatch.setattr(dnc_bptt, "PARALLEL_MIN_WORK", min_work)
            monkeypatch.setattr(dnc_bptt, "STORE_ALL_LINK_BYTES", links)
            dmem.set_num_threads(threads)
            dnc_bptt.clear_workspaces()
            with dmem.use_backend("compiled"):
                results.append((model.loss_and_grad(*b), model.forward(b[0])))
    finally:
        dmem.set_num_threads(before)
    for (loss, grads), logits in results[1:]:
        assert loss == results[0][0][0]
        np.testing.assert_array_equal(logits, results[0][1])
        for k, g in grads.items():
            np.testing.assert_array_equal(g, results[0][0][1][k], err_msg=k)


@pytest.mark.parametrize("controller", ["lstm", "ff"])
@pytest.mark.parametrize("T", [5, 6, 7, 10, 17])
def test_link_matrices_kept_by_segments_give_the_same_bits(T, controller, monkeypatch):
    """Above STORE_ALL_LINK_BYTES every k-th link matrix is kept and the others are
    recomputed in the backward pass: the same bits as keeping them all."""
    model, b = case(T, rows=3, controller=controller)
    with dmem.use_backend("compiled"):
        kept = model.loss_and_grad(*b)
        monkeypatch.setattr(dnc_bptt, "STORE_ALL_LINK_BYTES", 0)
        dnc_bptt.clear_workspaces()
        segmented = model.loss_and_grad(*b)
        seq = dnc_bptt._WORKSPACES[True][2][0]
    k = int(np.sqrt(T))
    assert seq.link_segments == (T > 5)      # at T = 5 the segments would save nothing
    if seq.link_segments:
        assert seq.k == k
        assert seq.buf["link"].shape[0] + seq.buf["link_segment"].shape[0] < T - 2
    assert segmented[0] == kept[0]
    for k, g in kept[1].items():
        np.testing.assert_array_equal(segmented[1][k], g, err_msg=k)


def test_link_segments_bound_the_peak_memory(monkeypatch):
    """T/k + k link matrices instead of T − 1 (k = ⌊√T⌋): the peak memory of a call
    falls by the matrices not stored, and nothing else changes."""
    import tracemalloc

    model, b = case(16, rows=2, memory_slots=160, word_size=3, controller_size=6, read_heads=1)
    T, B = b[0].shape[:2]
    matrix = B * 160 * 160 * 8

    def peak():
        dnc_bptt.clear_workspaces()
        tracemalloc.start()
        try:
            with dmem.use_backend("compiled"):
                model.loss_and_grad(*b)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    all_kept = peak()
    monkeypatch.setattr(dnc_bptt, "STORE_ALL_LINK_BYTES", 0)
    segmented = peak()
    k = int(np.sqrt(T))
    stored = (T - 1) // k + (k - 1)              # checkpoints and one segment
    saved = (T - 2) - stored                     # of the T − 2 kept otherwise
    assert saved >= 7
    assert abs((all_kept - segmented) - saved * matrix) < 0.25 * matrix


# ---------------------------------------------------------------- the class itself

SIZES = dict(T=4, B=2, I=3, N=5, W=4, R=2, C=3, lstm=True)


def buffers(train=True, k=2, dtype=np.float64, **sizes):
    s = dict(SIZES, **sizes)
    shapes = dnc_step.sequence_shapes(s["T"], s["B"], s["I"], s["N"], s["W"], s["R"], s["C"],
                                      s["lstm"], train, k)
    return {name: np.zeros(shape, np.int64 if name == "order" else dtype)
            for name, shape in shapes.items()}


def make(bufs, train=True, k=2, **sizes):
    s = dict(SIZES, **sizes)
    return DNCSequence(s["T"], s["B"], s["I"], s["N"], s["W"], s["R"], s["C"], s["lstm"],
                       train, k, bufs)


def test_shapes_of_training_and_inference_buffers():
    train = dnc_step.sequence_shapes(6, 2, 3, 5, 4, 2, 3, True, True, 2)
    infer = dnc_step.sequence_shapes(6, 2, 3, 5, 4, 2, 3, True, False)
    assert train["link"] == (4, 2, 5, 5) and "link" not in infer
    assert train["memory"] == (4, 2, 5, 4) and train["memory_segment"] == (1, 2, 5, 4)
    assert infer["memory"] == (2, 2, 5, 4)
    assert train["link_segment"] == (0, 2, 5, 5)
    segments = dnc_step.sequence_shapes(10, 2, 3, 5, 4, 2, 3, True, True, 3, True)
    assert segments["link"] == (3, 2, 5, 5) and segments["link_segment"] == (2, 2, 5, 5)
    assert train["xi"] == (6, 2, 2 * 4 + 2 * 4 + 2 + 1 + 4 + 2 + 2 + 3 * 2)
    assert set(train) - set(infer) == {"link", "link_segment", "memory_segment", "dhr", "dzh",
                                       "dxi", "dh",
                                       "da", "dcell", "d_memory", "d_read_weights",
                                       "d_write_weights", "d_usage", "d_precedence"}


class TestBadInput:
    def test_sizes(self):
        for name in ("T", "B", "N", "W", "R", "C"):
            with pytest.raises(ValueError, match=name):
                make(buffers(), **{name: 0})
        with pytest.raises(ValueError, match="k must be at most"):
            make(buffers(k=4), k=5)
        with pytest.raises(ValueError, match="link segments need k >= 2"):
            DNCSequence(4, 2, 3, 5, 4, 2, 3, True, True, 1, buffers(k=1), True)

    def test_buffers(self):
        good = buffers()
        make(good)
        with pytest.raises(ValueError, match="exactly"):
            make({k: v for k, v in good.items() if k != "dxi"})
        with pytest.raises(ValueError, match="exactly"):
            make(dict(good, extra=np.zeros(3)))
        with pytest.raises(ValueError, match="exactly"):
            make(buffers(train=False))
        with pytest.raises(TypeError, match="float32 or float64"):
            make(buffers(dtype=np.float16))
        for name, bad, error, match in [
                ("link", good["link"][:, :, :, :-1], ValueError, "link must have shape"),
                ("xi", good["xi"].astype(np.float32), ValueError, "xi must have shape"),
                ("order", good["order"].astype(np.float64), ValueError, "order must have"),
                ("act", good["act"].tolist(), TypeError, "act must be a numpy array"),
                ("gates", np.asfortranarray(good["gates"]), ValueError, "C-contiguous"),
                ("cr", good["cr"][::-1], ValueError, "C-contiguous")]:
            if name == "gates":
                bad = np.zeros(good["gates"].shape[::-1]).T
            with pytest.raises(error, match=match):
                make(dict(good, **{name: bad}))
        readonly = good["usage"].copy()
        readonly.flags.writeable = False
        with pytest.raises(ValueError, match="writeable"):
            make(dict(good, usage=readonly))

    def test_overlapping_buffers(self):
        good = buffers()
        shared = np.zeros((2,) + good["cw"].shape)
        with pytest.raises(ValueError, match="overlap"):
            make(dict(good, cw=shared[0], cw_cos=shared[0]))
        flat = np.zeros(good["cw"].size + 1)
        with pytest.raises(ValueError, match="overlap"):
            make(dict(good, cw=flat[:-1].reshape(good["cw"].shape),
                      cw_cos=flat[1:].reshape(good["cw"].shape)))

    def test_steps(self):
        seq = make(buffers())
        for t in (-1, 4, 100):
            for method in (seq.cell_forward, seq.memory_forward, seq.memory_backward,
                           seq.cell_backward):
                with pytest.raises(IndexError, match="out of range"):
                    method(t)
        for start, stop in [(-1, 2), (2, 2), (3, 5)]:
            with pytest.raises(IndexError, match="out of range"):
                seq.recompute_memory(start, stop)
        infer = make(buffers(train=False, k=1), train=False, k=1)
        for method in (infer.memory_backward, infer.cell_backward):
            with pytest.raises(ValueError, match="training"):
                method(0)
        with pytest.raises(ValueError, match="training"):
            infer.begin_backward()
