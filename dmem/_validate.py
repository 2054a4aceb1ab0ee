"""Validation of the arrays handed to dmem's public functions.

Every op declares its inputs as ``(name, dims)`` pairs, where ``dims`` is a
string of axis letters (``"BNW"`` for memory).  :func:`check_arrays` checks
ndim, that every letter means one size across all inputs, that no axis is
empty, and the dtype, and returns C-contiguous arrays of one float dtype, so
that compiled code which runs without bounds checks never sees anything else.

dtype rule: float32 and float64 are accepted (in either byte order; converted
to the native one); when all inputs are float32 the op runs in float32,
otherwise in float64.  Integer and boolean arrays (and
Python lists and scalars) are converted to float64.  Complex, float16, object
and string inputs raise ``TypeError``.
"""

import numpy as np
from autograd.tracer import Box

AXIS_NAMES = {
    "B": "batch",
    "N": "memory slots",
    "W": "word size",
    "H": "heads",
    "R": "read heads",
    "S": "shift width",
    "T": "time",
    "M": "memory slots",
}


def _describe(dims):
    return "(" + ", ".join(dims) + ")"


def _raw(x):
    """The array behind an autograd box (or the value itself)."""
    while isinstance(x, Box):
        x = x._value
    return x


def _dtype_of(name, value, op):
    kind = np.asarray(value).dtype if not hasattr(value, "dtype") else value.dtype
    if kind == np.float32 or kind == np.float64:
        return kind
    if kind.kind == "f" and kind.itemsize in (4, 8):  # the other byte order
        return kind.newbyteorder("=")
    if kind.kind in "iub":
        return np.dtype(np.float64)
    raise TypeError(
        f"{op}: {name} must be a float32 or float64 array, got dtype {kind}"
    )


_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _fast_path(specs, values):
    """The common case in one cheap pass: ndarrays of one float dtype, C-contiguous,
    right ndim, sizes agreeing, no empty axis.  None sends the call to the full
    check (which also writes the error messages)."""
    first = values[0]
    if type(first) is not np.ndarray or first.dtype not in _FLOAT_DTYPES:
        return None
    dtype = first.dtype
    sizes = {}
    for (_, dims), value in zip(specs, values):
        if type(value) is not np.ndarray or value.dtype != dtype or not value.flags.c_contiguous:
            return None
        shape = value.shape
        if len(shape) != len(dims):
            return None
        for letter, size in zip(dims, shape):
            if sizes.setdefault(letter, size) != size or size == 0:
                return None
    sizes["dtype"] = dtype
    return list(values), sizes


def check_arrays(op, specs, values, convert=True):
    """Validate ``values`` against ``specs``; return ``(arrays, sizes)``.

    Parameters
    ----------
    op : str
        Name used in error messages.
    specs : sequence of ``(name, dims)``
        Argument names and the letters of their axes, e.g. ``("keys", "BHW")``.
    values : sequence
        The arguments, in the order of ``specs``.
    convert : bool
        When True, return C-contiguous arrays of the common dtype (a copy only
        when needed).  When False, values are returned as given (autograd boxes
        pass through untouched), after the same checks.

    Returns
    -------
    arrays : list
    sizes : dict mapping each axis letter to its size, plus ``"dtype"``.
    """
    if len(values) != len(specs):
        names = ", ".join(n for n, _ in specs)
        raise TypeError(f"{op} takes {len(specs)} arrays ({names}), got {len(values)}")
    if convert:
        fast = _fast_path(specs, values)
        if fast is not None:
            return fast
    sizes = {}
    seen = {}
    raws = []
    dtypes = []
    for (name, dims), value in zip(specs, values):
        raw = _raw(value)
        if raw is None:
            raise TypeError(f"{op}: {name} must be an array of shape {_describe(dims)}, got None")
        if not hasattr(raw, "shape"):
            try:
                raw = np.asarray(raw)
            except Exception as exc:  # ragged lists and the like
                raise TypeError(f"{op}: {name} could not be read as an array: {exc}") from None
        dtypes.append(_dtype_of(name, raw, op))
        shape = tuple(raw.shape)
        if len(shape) != len(dims):
            raise ValueError(
                f"{op}: {name} must have shape {_describe(dims)} "
                f"({len(dims)} axes), got shape {shape}"
            )
        for axis, (letter, size) in enumerate(zip(dims, shape)):
            if size == 0:
                raise ValueError(
                    f"{op}: {name} has an empty axis {axis} "
                    f"({AXIS_NAMES.get(letter, letter)}), shape {shape}"
                )
            if letter in sizes and sizes[letter] != size:
                other = seen[letter]
                raise ValueError(
                    f"{op}: {name} has {AXIS_NAMES.get(letter, letter)} "
                    f"{letter}={size} (axis {axis} of shape {shape}, expected "
                    f"{_describe(dims)}), but {other[0]} has {letter}={sizes[letter]} "
                    f"(shape {other[1]})"
                )
            if letter not in sizes:
                sizes[letter] = size
                seen[letter] = (name, shape)
        raws.append(raw)
    dtype = np.dtype(np.float32) if all(d == np.float32 for d in dtypes) else np.dtype(np.float64)
    sizes["dtype"] = dtype
    if not convert:
        return list(values), sizes
    arrays = [np.ascontiguousarray(r, dtype=dtype) for r in raws]
    return arrays, sizes


def check_odd_shift(op, sizes, name="shifts"):
    """The shift width S = 2r+1 must be odd."""
    if sizes["S"] % 2 != 1:
        raise ValueError(f"{op}: {name} must have an odd width S = 2r+1 on its last axis, got S={sizes['S']}")


def check_grads(op, grads, outputs):
    """Validate cotangents: one per output, each of that output's shape.

    ``None`` stands for a zero cotangent.  Returns C-contiguous arrays of each
    output's dtype.
    """
    if len(grads) != len(outputs):
        raise TypeError(f"{op}_backward takes {len(outputs)} output gradient(s), got {len(grads)}")
    result = []
    for i, (g, out) in enumerate(zip(grads, outputs)):
        shape, dtype = out
        if g is None:
            result.append(np.zeros(shape, dtype=dtype))
            continue
        g = _raw(g)
        if not hasattr(g, "shape"):
            g = np.asarray(g)
        kind = g.dtype
        if kind.kind not in "fiub":
            raise TypeError(f"{op}_backward: gradient {i} must be a float array, got dtype {kind}")
        if tuple(g.shape) != tuple(shape):
            raise ValueError(
                f"{op}_backward: gradient {i} must have the shape of output {i}, {tuple(shape)}, "
                f"got {tuple(g.shape)}"
            )
        result.append(np.ascontiguousarray(g, dtype=dtype))
    return result
