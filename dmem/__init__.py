"""dmem: differentiable external memory (NTM, DNC) for neural networks.

Two implementations of every memory operation: a readable autograd.numpy
reference (:mod:`dmem.reference`) and Cython kernels with hand-written
backward passes (:mod:`dmem.compiled`).  :mod:`dmem.ops` follows the backend
switch: :func:`set_backend`, :func:`use_backend`, ``DMEM_BACKEND``.
"""

__version__ = "0.1.0"

from ._backend import (
    compiled_available,
    get_backend,
    get_num_threads,
    set_backend,
    set_num_threads,
    use_backend,
)
from . import ops, reference

__all__ = [
    "__version__",
    "compiled_available",
    "get_backend",
    "set_backend",
    "use_backend",
    "get_num_threads",
    "set_num_threads",
    "ops",
    "reference",
    "NTM",
    "DNC",
    "load",
    "info",
]


def __getattr__(name):
    # The models (and what they import) load on first use.
    if name in ("NTM", "DNC", "load"):
        from . import models

        return getattr(models, name)
    raise AttributeError(f"module 'dmem' has no attribute {name!r}")


def info():
    """A dict of facts about this installation: version, backend, kernels, threads."""
    import numpy

    from . import compiled
    from ._opspec import OPS

    facts = {
        "version": __version__,
        "backend": get_backend(),
        "compiled_available": compiled_available(),
        "compiled_ops": sorted(compiled.KERNELS),
        "reference_only_ops": sorted(set(OPS) - set(compiled.KERNELS)),
        "openmp": False,
        "num_threads": get_num_threads(),
        "numpy": numpy.__version__,
    }
    if compiled_available():
        from ._kernels import _info

        facts["openmp"] = _info.openmp_enabled()
    return facts
