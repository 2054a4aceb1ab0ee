"""Cheap checks of the common call of a compiled op, in C.

Most calls of a compiled op pass arrays that need nothing done to them:
C-contiguous ``numpy.ndarray`` objects of one float dtype whose sizes agree.
The functions here recognise that case in one pass over the arrays' buffers
(ndim, shape, layout and item format read from the buffer protocol) and answer
``None`` or ``False`` for anything else, so that the wrapper falls back to the
full validation of ``dmem._validate``, which converts what it can and writes
the error messages.  They never raise for a bad argument and never decide that
an argument is wrong: they only recognise arguments that are right.

Axes are named by capital letters, as in ``dmem._opspec`` (``"BNW"``).  A
saved array whose dtype is not the op's own has a lowercase prefix:
``"d"`` float64 whatever the op's dtype (``"dBHN"``), ``"i"`` int64.
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_Release, PyObject_GetBuffer

import numpy as np

cdef object NDARRAY = np.ndarray
cdef object FLOAT64 = np.dtype(np.float64)
cdef object FLOAT32 = np.dtype(np.float32)


cdef int _itemsize_of_format(const char* fmt) noexcept:
    """8 for a native float64 buffer (format ``"d"``), 4 for float32 (``"f"``), else 0."""
    if fmt == NULL or fmt[0] == 0 or fmt[1] != 0:
        return 0
    if fmt[0] == b"d":
        return 8
    if fmt[0] == b"f":
        return 4
    return 0


cdef int _fits(object value, str letters, Py_ssize_t* table, bint fill, int* itemsize) except -1:
    """1 when ``value`` is a C-contiguous ndarray with one axis per letter whose
    sizes agree with ``table`` (entries < 0 are filled in when ``fill``, else
    refused), of float item size ``itemsize[0]`` (set by the first array when 0)
    or of the dtype a lowercase prefix of ``letters`` names.  0 otherwise.
    Empty axes are refused."""
    cdef Py_buffer view
    cdef Py_ssize_t k, index, size
    cdef Py_ssize_t first = 0, ndim = len(letters)
    cdef Py_UCS4 kind = 0
    cdef const char* fmt
    if type(value) is not NDARRAY:
        return 0
    if ndim > 0 and letters[0] in "di":
        kind = letters[0]
        first = 1
    try:
        PyObject_GetBuffer(value, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except (BufferError, ValueError):  # not C-contiguous
        return 0
    try:
        if kind == 0:
            size = _itemsize_of_format(view.format)
            if size == 0 or (itemsize[0] != 0 and itemsize[0] != size):
                return 0
            itemsize[0] = <int> size
        elif kind == "d":
            if _itemsize_of_format(view.format) != 8:
                return 0
        else:  # "i": int64
            fmt = view.format
            if view.itemsize != 8 or fmt == NULL or fmt[0] == 0 or fmt[1] != 0 \
                    or (fmt[0] != b"l" and fmt[0] != b"q"):
                return 0
        if view.ndim != ndim - first:
            return 0
        for k in range(first, ndim):
            index = <Py_ssize_t> letters[k] - 65
            size = view.shape[k - first]
            if index < 0 or index >= 26 or size <= 0:
                return 0
            if table[index] < 0:
                if not fill:
                    return 0
                table[index] = size
            elif table[index] != size:
                return 0
    finally:
        PyBuffer_Release(&view)
    return 1


def input_sizes(tuple dims, tuple values):
    """The axis sizes of ``values`` when the call is the common case, else None.

    ``dims``: one string of axis letters per value.  The common case: every
    value a C-contiguous ``numpy.ndarray`` of native float64, or every one
    float32, with one axis per letter, no empty axis, and each letter one size
    throughout.  Returns a dict mapping each letter to its size, plus
    ``"dtype"``.
    """
    cdef Py_ssize_t table[26]
    cdef Py_ssize_t i, k
    cdef int itemsize = 0
    if len(values) != len(dims):
        return None
    for k in range(26):
        table[k] = -1
    for i in range(len(values)):
        if not _fits(values[i], dims[i], table, True, &itemsize):
            return None
    sizes = {}
    for letters in dims:
        for letter in <str> letters:
            if "A" <= letter <= "Z" and letter not in sizes:
                sizes[letter] = table[<Py_ssize_t> ord(letter) - 65]
    sizes["dtype"] = FLOAT64 if itemsize == 8 else FLOAT32
    return sizes


def arrays_fit(tuple dims, tuple arrays, dict sizes):
    """True when every array is a C-contiguous ``numpy.ndarray`` of the float
    dtype ``sizes["dtype"]`` whose axes have the sizes ``sizes`` gives their
    letters (every letter must be in ``sizes``); False otherwise."""
    cdef Py_ssize_t table[26]
    cdef Py_ssize_t i, k, index
    cdef int itemsize
    if len(arrays) != len(dims):
        return False
    dtype = sizes.get("dtype")
    if dtype is FLOAT64 or dtype == FLOAT64:
        itemsize = 8
    elif dtype is FLOAT32 or dtype == FLOAT32:
        itemsize = 4
    else:
        return False
    for k in range(26):
        table[k] = -1
    for key, size in sizes.items():
        if type(key) is str and len(<str> key) == 1 and type(size) is int:
            index = <Py_ssize_t> ord(key) - 65
            if 0 <= index < 26:
                table[index] = size
    for i in range(len(arrays)):
        if not _fits(arrays[i], dims[i], table, False, &itemsize):
            return False
    return True
