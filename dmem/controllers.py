"""Controllers with hand-written backward passes (numpy), for the compiled models.

The same computation as :mod:`dmem.reference.controllers` (see
``docs/models.md``), written as explicit forward/backward pairs so that the
compiled backpropagation through time needs no autograd.  Matrix products go
to BLAS through numpy.
"""

import numpy as np


def sigmoid(x):
    """Logistic function ``(1 + tanh(x/2)) / 2``: the reference's formula, stable for
    large ``|x|`` (no overflow), in three ufunc calls (no boolean indexing)."""
    out = np.tanh(0.5 * x)
    out += 1.0
    out *= 0.5
    return out


def softplus(x):
    """log(1 + exp(x)), stable."""
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


class LSTM:
    """One LSTM layer: ``[i, f, o, g] = [z, h_prev] W + b``; gates in that order."""

    @staticmethod
    def forward(W, b, z, h_prev, c_prev):
        """One step. Returns ``(h, c, saved)``; z `(B, Z)`, h and c `(B, C)`."""
        C = h_prev.shape[1]
        zh = np.concatenate([z, h_prev], axis=1)
        a = zh @ W + b
        gates = sigmoid(a[:, : 3 * C])
        i, f, o = gates[:, :C], gates[:, C : 2 * C], gates[:, 2 * C :]
        g = np.tanh(a[:, 3 * C :])
        c = f * c_prev + i * g
        tc = np.tanh(c)
        h = o * tc
        return h, c, (zh, i, f, o, g, c_prev, tc)

    @staticmethod
    def backward(W, saved, dh, dc):
        """Gradients ``(dW, db, dz, dh_prev, dc_prev)`` from those of ``h`` and ``c``."""
        zh, i, f, o, g, c_prev, tc = saved
        C = dh.shape[1]
        dc = dc + dh * o * (1.0 - tc * tc)
        da = np.empty((dh.shape[0], 4 * C), dtype=dh.dtype)
        da[:, :C] = dc * g * i * (1.0 - i)
        da[:, C : 2 * C] = dc * c_prev * f * (1.0 - f)
        da[:, 2 * C : 3 * C] = dh * tc * o * (1.0 - o)
        da[:, 3 * C :] = dc * i * (1.0 - g * g)
        dW = zh.T @ da
        db = da.sum(axis=0)
        dzh = da @ W.T
        Z = zh.shape[1] - C
        return dW, db, dzh[:, :Z], dzh[:, Z:], dc * f


class FeedForward:
    """One tanh layer: ``h = tanh(z W + b)``; it carries no state (c is unused)."""

    @staticmethod
    def forward(W, b, z, h_prev, c_prev):
        h = np.tanh(z @ W + b)
        return h, c_prev, (z, h)

    @staticmethod
    def backward(W, saved, dh, dc):
        z, h = saved
        da = dh * (1.0 - h * h)
        return z.T @ da, da.sum(axis=0), da @ W.T, np.zeros_like(dh), np.zeros_like(dh)


CONTROLLERS = {"lstm": LSTM, "ff": FeedForward}
