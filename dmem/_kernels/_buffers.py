"""The checks of the buffers a fused sequence kernel (``NTMSequence``,
``DNCSequence``) is given, before any of its ``boundscheck(False)`` code runs."""

import numpy as np


def check_buffers(owner, buffers, shapes, first, fixed):
    """Check ``buffers`` against ``shapes`` (``{name: shape}``); return their dtype.

    The model's dtype is that of ``buffers[first]`` (float32 or float64); the
    buffers named in ``fixed`` (``{name: dtype}``) have their own.  Every buffer
    must be a numpy array of its shape and dtype, C-contiguous, aligned and
    writeable.  Errors name ``owner`` and the buffer.
    """
    if sorted(buffers) != sorted(shapes):
        raise ValueError(f"{owner}: buffers must be exactly {sorted(shapes)}, "
                         f"got {sorted(buffers)}")
    a = buffers[first]
    dtype = a.dtype if isinstance(a, np.ndarray) else None
    if dtype != np.float64 and dtype != np.float32:
        raise TypeError(f"{owner}: buffers must be float32 or float64 arrays, got {dtype}")
    for name, shape in shapes.items():
        a = buffers[name]
        want = np.dtype(fixed.get(name, dtype))
        if type(a) is not np.ndarray:
            raise TypeError(f"{owner}: {name} must be a numpy array")
        if a.dtype != want or a.shape != tuple(shape):
            raise ValueError(f"{owner}: {name} must have shape {tuple(shape)} and dtype "
                             f"{want.name}, got {a.shape} {a.dtype}")
        if not (a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
            raise ValueError(f"{owner}: {name} must be C-contiguous, aligned and writeable")
    return dtype


def check_disjoint(owner, named):
    """ValueError if two of the C-contiguous arrays of ``named`` (``[(array, name)]``)
    share memory: their address ranges overlap (one sort, any number of arrays)."""
    spans = []
    for a, name in named:
        if a.size:
            start = a.__array_interface__["data"][0]
            spans.append((start, start + a.nbytes, name))
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        if start < end:
            raise ValueError(f"{owner}: {first} and {second} overlap")
