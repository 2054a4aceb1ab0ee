"""Optimizers and gradient clipping for training dmem models.

Both optimizers update a dict of arrays **in place** (``optimizer.step(params,
grads)`` with ``params = model.params``), keep their state in arrays of the
parameters' dtype, and expose it for checkpoints::

    state = optimizer.state_arrays()          # dict of arrays, incl. "steps"
    other = RMSProp(**optimizer.hyperparameters())
    other.load_state_arrays(state)            # exact round trip

* :class:`RMSProp` — Graves' variant (Graves 2013, "Generating sequences with
  recurrent neural networks", eqs. 38-41), the optimizer of the NTM paper.
* :class:`Adam` — Kingma & Ba (2015), with bias correction.

Clipping (:func:`clip_elementwise`, the NTM paper's ±10, and
:func:`clip_global_norm`) returns new dicts and never modifies its input.
"""

import math
import numbers

import numpy as np

__all__ = [
    "Optimizer", "RMSProp", "Adam", "OPTIMIZERS", "make_optimizer",
    "global_norm", "clip_elementwise", "clip_global_norm",
]


def _positive(owner, name, value, allow_zero=False, below_one=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {value!r}")
    value = float(value)
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if ok and below_one:
        ok = value < 1
    if not ok:
        bounds = "0 <= {} < 1" if below_one else ("{} >= 0" if allow_zero else "{} > 0")
        raise ValueError(f"{owner}: {name} must be finite with {bounds.format(name)}, got {value!r}")
    return value


def _check_grads(owner, params, grads):
    if not isinstance(params, dict) or not isinstance(grads, dict):
        raise TypeError(f"{owner}: params and grads must be dicts of arrays")
    if sorted(params) != sorted(grads):
        raise ValueError(f"{owner}: grads must have exactly the keys of params {sorted(params)}, "
                         f"got {sorted(grads)}")
    out = {}
    for name, p in params.items():
        if not isinstance(p, np.ndarray) or p.dtype.kind != "f":
            raise TypeError(f"{owner}: params[{name!r}] must be a float numpy array (updated in place)")
        if not p.flags.writeable:
            raise ValueError(f"{owner}: params[{name!r}] is read-only; it is updated in place")
        g = np.asarray(grads[name])
        if g.shape != p.shape:
            raise ValueError(f"{owner}: grads[{name!r}] must have shape {p.shape}, got {g.shape}")
        out[name] = g.astype(p.dtype, copy=False)
    return out


class Optimizer:
    """Common plumbing: a step counter, lazily created per-parameter state, checkpoints.

    Subclasses define ``name``, ``_slots`` (names of the per-parameter state
    arrays) and ``_update(name, param, grad, slots)``.
    """

    name = None
    _slots = ()

    def __init__(self):
        self.steps = 0  # number of updates made
        self._state = {}  # slot -> {param name -> array}

    def hyperparameters(self):
        """The constructor arguments as a dict: ``type(opt)(**opt.hyperparameters())``."""
        raise NotImplementedError

    def step(self, params, grads):
        """Update every array of ``params`` in place from ``grads`` (same keys and shapes)."""
        grads = _check_grads(type(self).__name__, params, grads)
        if not self._state:
            self._state = {s: {k: np.zeros_like(p) for k, p in params.items()} for s in self._slots}
        else:
            self._check_state_matches(params)
        self.steps += 1
        for name, p in params.items():
            self._update(p, grads[name], {s: self._state[s][name] for s in self._slots})

    def _check_state_matches(self, params):
        for s in self._slots:
            have = self._state[s]
            if sorted(have) != sorted(params):
                raise ValueError(f"{type(self).__name__}: the optimizer state is for parameters "
                                 f"{sorted(have)}, not {sorted(params)}")
            for k, p in params.items():
                if have[k].shape != p.shape or have[k].dtype != p.dtype:
                    raise ValueError(
                        f"{type(self).__name__}: state {s}.{k} has shape {have[k].shape} "
                        f"{have[k].dtype}, the parameter {p.shape} {p.dtype}")

    def state_arrays(self):
        """The optimizer state as a flat dict of arrays (copies): ``"steps"`` (int64
        scalar) and ``"<slot>.<param>"`` for every state array (none before the first step)."""
        out = {"steps": np.array(self.steps, dtype=np.int64)}
        for s, arrays in self._state.items():
            for k, v in arrays.items():
                out[f"{s}.{k}"] = v.copy()
        return out

    def load_state_arrays(self, arrays):
        """Restore a state written by :meth:`state_arrays` (exact, arrays copied)."""
        owner = type(self).__name__
        if not isinstance(arrays, dict) or "steps" not in arrays:
            raise ValueError(f"{owner}: optimizer state must be a dict with a 'steps' entry")
        steps = np.asarray(arrays["steps"])
        if steps.shape != () or steps.dtype.kind not in "iu" or int(steps) < 0:
            raise ValueError(f"{owner}: optimizer state 'steps' must be a non-negative integer scalar")
        state = {s: {} for s in self._slots}
        for key, value in arrays.items():
            if key == "steps":
                continue
            slot, _, pname = key.partition(".")
            if slot not in state or not pname:
                raise ValueError(f"{owner}: unexpected optimizer state array {key!r} "
                                 f"(expected 'steps' and {', '.join(s + '.<param>' for s in self._slots)})")
            value = np.array(value)
            if value.dtype.kind != "f":
                raise ValueError(f"{owner}: optimizer state {key!r} must be a float array")
            state[slot][pname] = value
        names = [sorted(v) for v in state.values()]
        if any(n != names[0] for n in names):
            raise ValueError(f"{owner}: optimizer state is incomplete: every slot "
                             f"({', '.join(self._slots)}) needs the same parameters")
        self.steps = int(steps)
        self._state = state if names[0] else {}


class RMSProp(Optimizer):
    """RMSProp in Graves' variant (Graves 2013, eqs. 38-41), with momentum.

    For every parameter θ with gradient g (``ℵ = decay``)::

        n  ← ℵ n + (1 − ℵ) g²                        (38)
        ḡ  ← ℵ ḡ + (1 − ℵ) g                         (39)
        Δ  ← momentum Δ − lr g / √(n − ḡ² + eps)     (40)
        θ  ← θ + Δ                                   (41)

    ``n``, ``ḡ`` and ``Δ`` start at 0.  ``n − ḡ²`` (a running variance, ≥ 0 up
    to round-off) is floored at 0 before ``eps`` is added.  Defaults are
    Graves' (and the NTM paper's): ``lr=1e-4, decay=0.95, momentum=0.9, eps=1e-4``.
    """

    name = "rmsprop"
    _slots = ("n", "gbar", "delta")

    def __init__(self, lr=1e-4, decay=0.95, momentum=0.9, eps=1e-4):
        super().__init__()
        self.lr = _positive("RMSProp", "lr", lr)
        self.decay = _positive("RMSProp", "decay", decay, allow_zero=True, below_one=True)
        self.momentum = _positive("RMSProp", "momentum", momentum, allow_zero=True, below_one=True)
        self.eps = _positive("RMSProp", "eps", eps)

    def hyperparameters(self):
        return dict(lr=self.lr, decay=self.decay, momentum=self.momentum, eps=self.eps)

    def _update(self, p, g, s):
        a = self.decay
        n, gbar, delta = s["n"], s["gbar"], s["delta"]
        n *= a
        n += (1 - a) * (g * g)
        gbar *= a
        gbar += (1 - a) * g
        denom = np.sqrt(np.maximum(n - gbar * gbar, 0) + self.eps)
        delta *= self.momentum
        delta -= self.lr * g / denom
        p += delta


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction.

    At step t (from 1), for every parameter θ with gradient g::

        m ← β1 m + (1 − β1) g
        v ← β2 v + (1 − β2) g²
        θ ← θ − lr · (m / (1 − β1^t)) / (√(v / (1 − β2^t)) + eps)

    Defaults ``lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8``.
    """

    name = "adam"
    _slots = ("m", "v")

    def __init__(self, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__()
        self.lr = _positive("Adam", "lr", lr)
        self.beta1 = _positive("Adam", "beta1", beta1, allow_zero=True, below_one=True)
        self.beta2 = _positive("Adam", "beta2", beta2, allow_zero=True, below_one=True)
        self.eps = _positive("Adam", "eps", eps)

    def hyperparameters(self):
        return dict(lr=self.lr, beta1=self.beta1, beta2=self.beta2, eps=self.eps)

    def _update(self, p, g, s):
        m, v = s["m"], s["v"]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * (g * g)
        t = self.steps
        m_hat = m / (1 - self.beta1 ** t)
        v_hat = v / (1 - self.beta2 ** t)
        p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


OPTIMIZERS = {"rmsprop": RMSProp, "adam": Adam}


def make_optimizer(name, lr=None, **hyperparameters):
    """The optimizer called ``name`` (``"rmsprop"`` or ``"adam"``); ``lr=None`` keeps its default."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    if lr is not None:
        hyperparameters["lr"] = lr
    return OPTIMIZERS[name](**hyperparameters)


# --------------------------------------------------------------------------
# clipping


def global_norm(grads):
    """``√(Σ g²)`` over every array of ``grads`` (a dict), as a Python float."""
    total = 0.0
    for g in grads.values():
        g = np.asarray(g, dtype=np.float64)
        total += float(np.dot(g.ravel(), g.ravel()))
    return math.sqrt(total)


def clip_elementwise(grads, limit=10.0):
    """A new dict with every gradient entry clipped to ``[-limit, limit]`` (NTM paper: 10)."""
    limit = _positive("clip_elementwise", "limit", limit)
    return {k: np.clip(g, -limit, limit) for k, g in grads.items()}


def clip_global_norm(grads, max_norm):
    """``(clipped, norm)``: ``grads`` scaled by ``max_norm / norm`` if their global norm
    exceeds ``max_norm`` (new arrays), and the global norm before clipping."""
    max_norm = _positive("clip_global_norm", "max_norm", max_norm)
    norm = global_norm(grads)
    if norm > max_norm:
        scale = max_norm / norm
        return {k: np.asarray(g) * np.asarray(scale, dtype=np.asarray(g).dtype) for k, g in grads.items()}, norm
    return {k: np.array(g) for k, g in grads.items()}, norm
