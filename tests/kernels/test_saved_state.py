"""What every compiled op's backward refuses: a state it did not make, a forged or
reshaped one, and cotangents of the wrong number, shape or dtype.  One file for
all ops, from the table of ops (``dmem._opspec.OPS``)."""

import numpy as np
import pytest

from dmem import compiled
from dmem._opspec import OPS
from dmem.compiled._common import Saved

SIZES = {"B": 3, "N": 6, "W": 4, "H": 2, "R": 2, "S": 3}
NAMES = sorted(OPS)


def make_inputs(name, seed=0):
    """Inputs in (0.05, 0.45): valid gates and (sub-)normalised weightings."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.05, 0.45, size=tuple(SIZES[d] for d in dims))
            for _, dims in OPS[name].inputs]


def forward(name, inputs):
    """(outputs as a tuple, saved) of the compiled forward."""
    out, saved = getattr(compiled, name + "_forward")(*inputs)
    return (out if len(OPS[name].outputs) > 1 else (out,)), saved


def other_op(name):
    """An op whose saved state must not be taken for ``name``'s."""
    return "read" if name != "read" else "write"


def ones_like(outputs):
    return [np.ones_like(o) for o in outputs]


@pytest.mark.parametrize("name", NAMES)
def test_wrong_number_of_inputs_is_refused(name):
    inputs = make_inputs(name)
    fwd = getattr(compiled, name + "_forward")
    with pytest.raises(TypeError):
        fwd(*inputs[:-1])
    with pytest.raises(TypeError):
        fwd(*inputs, inputs[0])


@pytest.mark.parametrize("name", NAMES)
def test_a_state_the_forward_did_not_make_is_refused(name):
    inputs = make_inputs(name)
    outputs, _ = forward(name, inputs)
    _, other_saved = forward(other_op(name), make_inputs(other_op(name)))
    backward = getattr(compiled, name + "_backward")
    for garbage in (None, "saved", object(), (inputs, outputs), inputs, other_saved):
        with pytest.raises(TypeError, match="saved"):
            backward(garbage, *ones_like(outputs))


@pytest.mark.parametrize("name", NAMES)
def test_a_forged_state_is_refused(name):
    inputs = make_inputs(name)
    outputs, saved = forward(name, inputs)
    backward = getattr(compiled, name + "_backward")
    # the arrays cut short along their second axis
    shrunk = [np.ascontiguousarray(a[:, :1]) if a.ndim > 1 else a for a in saved.arrays]
    forged = Saved(name, shrunk, list(outputs), saved.sizes)
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        backward(forged, *ones_like(outputs))
    # arrays right, but recorded output shapes that would let small gradients through
    small = [np.ones((1,) * o.ndim) for o in outputs]
    forged = Saved(name, list(saved.arrays), small, saved.sizes)
    with pytest.raises(TypeError, match="saved state does not match its forward"):
        backward(forged, *small)
    # one array only
    forged = Saved(name, [np.zeros(1)], [np.zeros(1)], {"dtype": np.dtype(np.float64)})
    with pytest.raises((TypeError, ValueError)):
        backward(forged, *ones_like(outputs))


@pytest.mark.parametrize("name", NAMES)
def test_cotangents_of_the_wrong_number_shape_or_dtype_are_refused(name):
    outputs, saved = forward(name, make_inputs(name))
    backward = getattr(compiled, name + "_backward")
    cots = ones_like(outputs)
    for k in range(len(cots)):
        for shape in (cots[k].shape + (1,), cots[k].shape[:-1] + (cots[k].shape[-1] + 1,),
                      cots[k].shape[1:]):
            bad = list(cots)
            bad[k] = np.ones(shape)
            with pytest.raises(ValueError, match=f"gradient {k} must have the shape"):
                backward(saved, *bad)
        bad = list(cots)
        bad[k] = bad[k].astype(np.complex128)
        with pytest.raises(TypeError, match="must be a float array"):
            backward(saved, *bad)
    with pytest.raises(TypeError):
        backward(saved, *cots[:-1])
    with pytest.raises(TypeError):
        backward(saved)
    # and the state still works after every refusal
    grads = backward(saved, *cots)
    assert all(np.all(np.isfinite(g)) for g in grads)
