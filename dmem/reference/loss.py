"""The training loss of the memory models and the bit-error count used to evaluate them.

``docs/models.md``, "Loss": the masked sigmoid cross-entropy in bits, summed
over time and output bits and averaged over the batch — the NTM paper's "cost
per sequence" (Graves et al. 2014, section 4).  Shapes: ``T`` time, ``B``
batch, ``O`` output bits; sequences are time-major.
"""

import math

import autograd.numpy as np
import numpy
from autograd.tracer import Box, getval

__all__ = ["sigmoid_cross_entropy_bits", "bit_errors", "check_loss_inputs"]

LN2 = math.log(2.0)


def _shape_and_kind(name, value, ndim, letters):
    raw = getval(value)
    if not hasattr(raw, "shape"):
        try:
            raw = numpy.asarray(raw)
        except Exception as exc:
            raise TypeError(f"{name} could not be read as an array: {exc}") from None
    if raw.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real (float, int or bool) array, got dtype {raw.dtype}")
    if raw.ndim != ndim:
        raise ValueError(f"{name} must have shape ({', '.join(letters)}), got shape {tuple(raw.shape)}")
    return raw


def check_loss_inputs(logits, target, mask):
    """Validate ``logits (T, B, O)``, ``target (T, B, O)``, ``mask (T, B)``; raise a clear error.

    Checks ndim, agreeing sizes, real dtypes and finiteness of ``target`` and
    ``mask``, on the values behind any autograd box (nothing is traced).
    """
    raw_logits = _shape_and_kind("logits", logits, 3, "TBO")
    raw_target = _shape_and_kind("target", target, 3, "TBO")
    raw_mask = _shape_and_kind("mask", mask, 2, "TB")
    if raw_target.shape != raw_logits.shape:
        raise ValueError(
            f"target must have the shape (T, B, O) of the logits, {tuple(raw_logits.shape)}, "
            f"got {tuple(raw_target.shape)}"
        )
    if raw_mask.shape != raw_logits.shape[:2]:
        raise ValueError(
            f"mask must have shape (T, B) = {tuple(raw_logits.shape[:2])}, got {tuple(raw_mask.shape)}"
        )
    for name, raw in (("target", raw_target), ("mask", raw_mask)):
        if not numpy.all(numpy.isfinite(raw)):
            raise ValueError(f"{name} contains NaN or infinite values")


def _as_dtype(value, dtype):
    """``value`` in ``dtype``; autograd boxes are cast with ``astype`` so gradients still flow."""
    if isinstance(value, Box):
        return value if value.dtype == dtype else value.astype(dtype)
    return numpy.asarray(value, dtype=dtype)


def sigmoid_cross_entropy_bits(logits, target, mask):
    """Masked sigmoid cross-entropy in bits, per sequence (``docs/models.md``, "Loss").

    ``loss = (1/B) Σ_{t,b} mask[t,b] Σ_o [softplus(y) − target·y]_{t,b,o} / ln 2``

    with ``softplus(y) = max(y, 0) + log1p(exp(−|y|))`` (stable for any ``y``).
    This is ``−[t log σ(y) + (1 − t) log(1 − σ(y))]`` in bits, for targets in
    ``[0, 1]``.

    Parameters
    ----------
    logits : `(T, B, O)` array ``y``, the model's outputs before the sigmoid.
    target : `(T, B, O)` array of target bits (or probabilities).
    mask : `(T, B)` array; 1 where the output is scored, 0 where it is not
        (any non-negative weight works).

    Returns
    -------
    A scalar of the logits' dtype.  Differentiable in ``logits`` (and in
    ``target`` and ``mask``, though the models never need that).
    """
    check_loss_inputs(logits, target, mask)
    dtype = getval(logits).dtype
    target = _as_dtype(target, dtype)
    mask = _as_dtype(mask, dtype)
    softplus = np.maximum(logits, 0.0) + np.log1p(np.exp(-np.abs(logits)))
    per_bit = softplus - target * logits                    # (T, B, O), nats
    per_step = np.sum(per_bit, axis=2) * mask               # (T, B)
    batch_size = getval(logits).shape[1]
    return np.sum(per_step) / (batch_size * LN2)


def bit_errors(logits, target, mask):
    """Wrong output bits per sequence, averaged over the batch (no gradient, plain numpy).

    A predicted bit is 1 where ``logits > 0`` and 0 elsewhere; a target bit is
    1 where ``target > 0.5``.  Errors are counted where ``mask`` is non-zero
    (weighted by the mask), summed over time and bits, and averaged over the
    ``B`` sequences: the NTM paper's "bit errors per sequence".

    Parameters
    ----------
    logits : `(T, B, O)` array.
    target : `(T, B, O)` array.
    mask : `(T, B)` array.

    Returns
    -------
    float
    """
    check_loss_inputs(logits, target, mask)
    logits = numpy.asarray(getval(logits))
    target = numpy.asarray(getval(target))
    mask = numpy.asarray(getval(mask), dtype=numpy.float64)
    wrong = (logits > 0) != (target > 0.5)                  # (T, B, O)
    per_step = wrong.sum(axis=2) * mask                     # (T, B)
    return float(per_step.sum() / logits.shape[1])
