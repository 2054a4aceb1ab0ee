"""dmem.NTM and dmem.DNC: the hand-written BPTT of the compiled backend against
autograd over the reference model, persistence, determinism and bad input."""

import numpy as np
import pytest

import dmem
from dmem.checkpoints import save_checkpoint
from dmem.tasks import Copy

NTM_CONFIGS = [
    dict(controller="lstm", read_heads=1, write_heads=1, shift_range=1, memory_init="constant"),
    dict(controller="ff", read_heads=2, write_heads=1, shift_range=1, memory_init="learned"),
    dict(controller="lstm", read_heads=2, write_heads=2, shift_range=2, memory_init="random"),
    dict(controller="ff", read_heads=1, write_heads=3, shift_range=0, memory_init="constant"),
]
DNC_CONFIGS = [
    dict(controller="lstm", read_heads=1),
    dict(controller="ff", read_heads=2),
    dict(controller="lstm", read_heads=4),
]


def small(cls, task, dtype=np.float64, seed=3, **options):
    sizes = dict(memory_slots=7, word_size=4, controller_size=9)
    sizes.update(options)
    return cls(task.input_size, task.output_size, seed=seed, dtype=dtype, **sizes)


def batch(seed=1, rows=4):
    task = Copy(bits=3, min_len=1, max_len=5)  # rows of different lengths: masks differ
    return task, task.sample(rows, seed)


def both_backends(model, b):
    with dmem.use_backend("reference"):
        ref = model.loss_and_grad(*b)
    with dmem.use_backend("compiled"):
        comp = model.loss_and_grad(*b)
    return ref, comp


def assert_grads_close(ref, comp, rtol):
    (l1, g1), (l2, g2) = ref, comp
    assert sorted(g1) == sorted(g2)
    np.testing.assert_allclose(l2, l1, rtol=rtol)
    for k in g1:
        assert g2[k].shape == g1[k].shape and g2[k].dtype == g1[k].dtype, k
        scale = np.max(np.abs(g1[k])) + 1e-300
        np.testing.assert_allclose(g2[k] / scale, g1[k] / scale, rtol=0, atol=rtol, err_msg=k)


@pytest.mark.parametrize("options", NTM_CONFIGS, ids=lambda o: "-".join(map(str, o.values())))
def test_ntm_compiled_bptt_equals_autograd_reference(options):
    task, b = batch()
    model = small(dmem.NTM, task, **options)
    ref, comp = both_backends(model, b)
    assert_grads_close(ref, comp, rtol=1e-8)
    assert all(np.any(g != 0) for k, g in ref[1].items() if k != "memory_init" or options["memory_init"] == "learned")


@pytest.mark.parametrize("options", DNC_CONFIGS, ids=lambda o: "-".join(map(str, o.values())))
def test_dnc_compiled_bptt_equals_autograd_reference(options):
    task, b = batch(seed=2)
    model = small(dmem.DNC, task, **options)
    ref, comp = both_backends(model, b)
    assert_grads_close(ref, comp, rtol=1e-8)


@pytest.mark.parametrize("cls", [dmem.NTM, dmem.DNC])
def test_float32_models_agree_with_float64_reference(cls):
    task, b = batch(seed=5)
    m64 = small(cls, task)
    m32 = small(cls, task, dtype=np.float32)
    with dmem.use_backend("reference"):
        l64, g64 = m64.loss_and_grad(*b)
    with dmem.use_backend("compiled"):
        l32, g32 = m32.loss_and_grad(*b)
    assert all(g.dtype == np.float32 for g in g32.values())
    np.testing.assert_allclose(l32, l64, rtol=1e-4)
    for k in g64:
        scale = np.max(np.abs(g64[k])) + 1e-30
        np.testing.assert_allclose(g32[k] / scale, g64[k] / scale, atol=2e-3, err_msg=k)


@pytest.mark.parametrize("cls", [dmem.NTM, dmem.DNC])
def test_forward_agrees_across_backends_and_with_the_trace(cls):
    task, b = batch(seed=6)
    model = small(cls, task)
    with dmem.use_backend("reference"):
        ref = model.forward(b.inputs)
    with dmem.use_backend("compiled"):
        comp = model.forward(b.inputs)
        traced, trace = model.forward(b.inputs, return_trace=True)
    np.testing.assert_allclose(comp, ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(traced, ref, rtol=1e-10, atol=1e-12)
    T, B = b.inputs.shape[:2]
    assert trace["read_weights"].shape[:2] == (T, B)
    from dmem.tasks import cost_bits

    np.testing.assert_allclose(model.loss(*b), cost_bits(ref, b.targets, b.mask), rtol=1e-10)


@pytest.mark.parametrize("cls", [dmem.NTM, dmem.DNC])
def test_results_do_not_depend_on_thread_count(cls):
    task, b = batch(seed=7, rows=6)
    model = small(cls, task)
    out = []
    for n in (1, 2):
        dmem.set_num_threads(n)
        out.append(model.loss_and_grad(*b))
    assert out[0][0] == out[1][0]
    for k in out[0][1]:
        np.testing.assert_array_equal(out[0][1][k], out[1][1][k])


@pytest.mark.parametrize("cls", [dmem.NTM, dmem.DNC])
def test_same_seed_same_model_different_seed_different(cls):
    task, b = batch()
    a, c, d = small(cls, task, seed=11), small(cls, task, seed=11), small(cls, task, seed=12)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], c.params[k])
    assert any(not np.array_equal(a.params[k], d.params[k]) for k in a.params)
    assert a.loss_and_grad(*b)[0] == c.loss_and_grad(*b)[0]


@pytest.mark.parametrize("cls,options", [(dmem.NTM, dict(memory_init="random")),
                                         (dmem.NTM, dict(memory_init="learned")),
                                         (dmem.DNC, {})])
def test_save_load_round_trip(tmp_path, cls, options):
    task, b = batch()
    model = small(cls, task, dtype=np.float32, **options)
    model.set_params({k: v + 0.01 for k, v in model.params.items()})  # not the seed's values
    path = model.save(tmp_path / "model.npz")
    loaded = dmem.load(path)
    assert type(loaded) is cls
    assert loaded.config == model.config and loaded.dtype == model.dtype
    for k in model.params:
        np.testing.assert_array_equal(loaded.params[k], model.params[k])
    for k in model.buffers:
        np.testing.assert_array_equal(loaded.buffers[k], model.buffers[k])
    assert loaded.loss_and_grad(*b)[0] == model.loss_and_grad(*b)[0]


def test_load_refuses_unknown_kind_and_bad_params(tmp_path):
    save_checkpoint(tmp_path / "x.npz", "stack", {}, {"W": np.ones(2)})
    with pytest.raises(ValueError, match="'stack' model"):
        dmem.load(tmp_path / "x.npz")
    task, _ = batch()
    model = small(dmem.NTM, task)
    params = dict(model.params)
    params["output_W"] = np.ones((2, 2))
    save_checkpoint(tmp_path / "y.npz", "ntm", model.config_dict(), params)
    with pytest.raises(ValueError, match="output_W must have shape"):
        dmem.load(tmp_path / "y.npz")


class TestBadInput:
    @pytest.fixture
    def model(self):
        task, _ = batch()
        return small(dmem.NTM, task)

    def test_wrong_input_size(self, model):
        with pytest.raises(ValueError, match=r"x must have shape \(T, B, 4\)"):
            model.forward(np.zeros((3, 2, 5)))

    def test_wrong_ndim(self, model):
        with pytest.raises(ValueError, match="x must have shape"):
            model.forward(np.zeros((3, 4)))

    def test_nan_input(self, model):
        x = np.zeros((3, 2, 4))
        x[1, 0, 2] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            model.loss_and_grad(x, np.zeros((3, 2, 3)))

    def test_target_and_mask_shapes(self, model):
        with pytest.raises(ValueError, match=r"target must have shape \(3, 2, 3\)"):
            model.loss_and_grad(np.zeros((3, 2, 4)), np.zeros((3, 2, 4)))
        with pytest.raises(ValueError, match=r"mask must have shape \(3, 2\)"):
            model.loss_and_grad(np.zeros((3, 2, 4)), np.zeros((3, 2, 3)), np.ones((2, 3)))

    def test_complex_input(self, model):
        with pytest.raises(TypeError, match="real numeric"):
            model.forward(np.zeros((3, 2, 4), dtype=complex))

    def test_bad_construction(self):
        with pytest.raises(TypeError, match="float32 or float64"):
            dmem.NTM(3, 3, dtype=np.int32)
        with pytest.raises(ValueError, match="seed"):
            dmem.NTM(3, 3, seed=-1)
        with pytest.raises(ValueError):
            dmem.NTM(3, 3, controller="gru")
        with pytest.raises((ValueError, TypeError)):
            dmem.DNC(0, 3)

    def test_set_params_checks(self, model):
        params = dict(model.params)
        params["output_b"] = np.full_like(params["output_b"], np.inf)
        with pytest.raises(ValueError, match="NaN or infinite"):
            model.set_params(params)
        with pytest.raises(ValueError, match="exactly"):
            model.set_params({"output_b": params["output_b"]})
