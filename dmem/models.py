"""The public models, ``dmem.NTM`` and ``dmem.DNC``.

A model holds its configuration, its parameters (``model.params``, a dict of
arrays) and its constant buffers.  ``forward`` and ``loss_and_grad`` follow
the backend switch: under ``"reference"`` they run the autograd.numpy model of
:mod:`dmem.reference` (gradients by autograd); under ``"compiled"`` they run
the compiled kernels with backpropagation through time written by hand.  The
two agree to round-off (``tests/models``).
"""

import dataclasses

import numpy as np
from autograd import value_and_grad

from . import _backend, _dnc_bptt, _ntm_bptt
from .checkpoints import load_checkpoint, save_checkpoint
from .reference import dnc as reference_dnc
from .reference import ntm as reference_ntm

__all__ = ["NTM", "DNC", "load"]


def _as_array(name, value, dtype, ndim, shape_hint):
    try:
        array = np.asarray(value)
    except Exception as exc:
        raise TypeError(f"{name} could not be read as an array: {exc}") from None
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a real numeric array, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_hint}, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=dtype)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


class _Model:
    kind = None
    _reference = None
    _compiled = None  # module with forward(params, buffers, config, x) and loss_and_grad(...)

    def __init__(self, input_size, output_size, *, seed=0, dtype=np.float64, **options):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.config = self._config_class(input_size, output_size, **options)
        self.seed = int(seed)
        self.dtype = dtype
        self.params, self.buffers = self._reference.init_params(self.config, self.seed, dtype)

    # -- inputs -------------------------------------------------------------------------
    def _check(self, x, target=None, mask=None):
        cfg = self.config
        x = _as_array("x", x, self.dtype, 3, f"(T, B, {cfg.input_size})")
        T, B, I = x.shape
        if I != cfg.input_size or T == 0 or B == 0:
            raise ValueError(f"x must have shape (T, B, {cfg.input_size}) with T, B >= 1, got {x.shape}")
        if target is None:
            return x, None, None
        target = _as_array("target", target, self.dtype, 3, f"({T}, {B}, {cfg.output_size})")
        if target.shape != (T, B, cfg.output_size):
            raise ValueError(f"target must have shape ({T}, {B}, {cfg.output_size}), got {target.shape}")
        if mask is None:
            mask = np.ones((T, B), dtype=self.dtype)
        mask = _as_array("mask", mask, self.dtype, 2, f"({T}, {B})")
        if mask.shape != (T, B):
            raise ValueError(f"mask must have shape ({T}, {B}), got {mask.shape}")
        return x, target, mask

    def _use_compiled(self):
        return _backend.get_backend() == "compiled" and self._compiled is not None

    # -- computation --------------------------------------------------------------------
    def forward(self, x, return_trace=False):
        """Logits ``(T, B, O)`` for inputs ``x (T, B, I)``.

        With ``return_trace=True``, returns ``(logits, trace)``: a dict of every
        weighting, gate and memory snapshot per step (for plots).
        """
        x, _, _ = self._check(x)
        if return_trace:
            from . import ops

            return self._reference.forward(self.params, self.buffers, self.config, x,
                                           ops=ops, return_trace=True)
        if self._use_compiled():
            with _backend.blas_single_thread():
                return self._compiled.forward(self.params, self.buffers, self.config, x)
        return self._reference.forward(self.params, self.buffers, self.config, x)

    def loss_and_grad(self, x, target, mask=None):
        """``(loss, grads)``: masked sigmoid cross-entropy in bits, summed over time
        and bits and averaged over the batch, and its gradient for every parameter
        (a dict with the keys of ``params``)."""
        x, target, mask = self._check(x, target, mask)
        if self._use_compiled():
            with _backend.blas_single_thread():
                return self._compiled.loss_and_grad(self.params, self.buffers, self.config, x, target,
                                                    mask)
        ref = self._reference

        def loss(params):
            return ref.loss(params, self.buffers, self.config, x, target, mask)

        value, grads = value_and_grad(loss)(self.params)
        return float(value), grads

    def loss(self, x, target, mask=None):
        """The loss alone (no gradient)."""
        from .tasks import cost_bits

        x, target, mask = self._check(x, target, mask)
        return float(cost_bits(self.forward(x), target, mask))

    @property
    def num_params(self):
        return int(sum(p.size for p in self.params.values()))

    # -- persistence --------------------------------------------------------------------
    def config_dict(self):
        d = dataclasses.asdict(self.config)
        d.update(seed=self.seed, dtype=self.dtype.name)
        return d

    def save(self, path, arrays=None, metadata=None):
        """Write the model (and optional extra arrays / metadata) to ``path`` atomically."""
        return save_checkpoint(path, self.kind, self.config_dict(), self.params, self.buffers,
                               arrays, metadata)

    def set_params(self, params):
        """Replace the parameters, checking names, shapes and finiteness."""
        if sorted(params) != sorted(self.params):
            raise ValueError(
                f"parameters must be exactly {sorted(self.params)}, got {sorted(params)}")
        new = {}
        for name, value in params.items():
            value = np.asarray(value)
            if value.shape != self.params[name].shape:
                raise ValueError(f"parameter {name} must have shape {self.params[name].shape}, "
                                 f"got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"parameter {name} contains NaN or infinite values")
            new[name] = np.array(value, dtype=self.dtype)
        self.params = new

    def __repr__(self):
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.config).items())
        return f"dmem.{type(self).__name__}({fields}, seed={self.seed}, dtype={self.dtype.name})"


class NTM(_Model):
    """Neural Turing Machine (Graves et al. 2014); see ``docs/models.md``.

    ``NTM(input_size, output_size, memory_slots=128, word_size=20,
    controller="lstm", controller_size=100, read_heads=1, write_heads=1,
    shift_range=1, memory_init="constant", seed=0, dtype=float64)``
    """

    kind = "ntm"
    _reference = reference_ntm
    _config_class = reference_ntm.NTMConfig
    _compiled = _ntm_bptt


class DNC(_Model):
    """Differentiable Neural Computer (Graves et al. 2016); see ``docs/models.md``.

    ``DNC(input_size, output_size, memory_slots=16, word_size=16, read_heads=4,
    controller="lstm", controller_size=64, seed=0, dtype=float64)``
    """

    kind = "dnc"
    _reference = reference_dnc
    _config_class = reference_dnc.DNCConfig
    _compiled = _dnc_bptt


MODELS = {"ntm": NTM, "dnc": DNC}


def load(path):
    """Load a model saved with ``model.save(path)``."""
    ck = load_checkpoint(path)
    if ck.kind not in MODELS:
        raise ValueError(f"{path!r} holds a {ck.kind!r} model; dmem knows {sorted(MODELS)}")
    config = dict(ck.config)
    seed = config.pop("seed", 0)
    dtype = config.pop("dtype", "float64")
    cls = MODELS[ck.kind]
    try:
        model = cls(config.pop("input_size"), config.pop("output_size"), seed=seed, dtype=dtype, **config)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{path!r} has a configuration this dmem cannot build: {exc}") from None
    model.set_params(ck.params)
    for name, value in ck.buffers.items():
        if name not in model.buffers or model.buffers[name].shape != value.shape:
            raise ValueError(f"{path!r}: unexpected buffer {name!r} of shape {value.shape}")
        model.buffers[name] = np.array(value, dtype=model.dtype)
    return model
