"""Recycled output arrays of the compiled ops.

A fresh array of a few hundred KiB or more costs the process page faults on
its first write (the allocator returns large blocks to the system when they
are freed and maps them again on the next allocation): at B=16, N=256 the
faults of a fresh ``(B, N, N)`` link matrix cost more than the link kernel
itself.  :class:`OutputPool` keeps a few such arrays and hands one out again
only when nothing but the pool refers to it.

Why a reused array can never be one a caller still sees: the pool keeps one
strong reference to each of its arrays, and reuses an array only when its
reference count is exactly 1, i.e. that reference is the only one.  Every way
Python code can reach an array's memory holds a reference to the array: a
variable or container, a numpy view (its ``base``), a buffer export
(``memoryview``, a Cython typed memoryview, ``numpy.frombuffer``), the
arguments of a running call, the saved state of a forward.  The check and the
hand-out run under the GIL with no Python code in between, so no other thread
can take a reference meanwhile (this needs CPython's GIL: a free-threaded
build would need a lock here).  (Raw addresses taken out of Python's
reach, e.g. ``a.ctypes.data`` kept as an integer, are not references; they
are no safer with a freed array.)  A reused array must also still have the
shape, dtype, C-contiguous layout and writeability asked for, whatever was
done to the object in the meantime.
"""

from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject

import numpy as np


cdef extern from *:
    """
    static Py_ssize_t dmem_pool_refcount(PyObject *o) { return Py_REFCNT(o); }
    """
    Py_ssize_t dmem_pool_refcount(PyObject* o)

cdef object NDARRAY = np.ndarray


cdef class OutputPool:
    """A few large output arrays for reuse, at most ``max_bytes`` in all.

    ``take(shape, dtype)`` returns an uninitialised C-contiguous array, as
    ``numpy.empty`` would: one of the pool's when an idle one fits, else a new
    one, which the pool keeps (dropping its least recently used arrays beyond
    ``max_arrays`` or ``max_bytes``; an array it drops lives on with whoever
    holds it).  Arrays below ``min_bytes`` are never pooled.
    """

    cdef list _arrays  # least recently handed out first
    cdef public Py_ssize_t min_bytes
    cdef public Py_ssize_t max_bytes
    cdef public Py_ssize_t max_arrays

    def __init__(self, Py_ssize_t min_bytes, Py_ssize_t max_bytes, Py_ssize_t max_arrays):
        self._arrays = []
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self.max_arrays = max_arrays

    def take(self, tuple shape, dtype):
        """An array of ``shape`` and ``dtype`` (``numpy.dtype``) that nothing
        else refers to."""
        cdef Py_ssize_t i, n = PyList_GET_SIZE(self._arrays)
        cdef Py_ssize_t nbytes = dtype.itemsize
        cdef PyObject* entry
        for size in shape:
            nbytes *= <Py_ssize_t> size
        if nbytes < self.min_bytes or nbytes > self.max_bytes:
            return np.empty(shape, dtype=dtype)
        for i in range(n - 1, -1, -1):
            entry = PyList_GET_ITEM(self._arrays, i)
            # The pool's own reference is the only one: nobody can see the array.
            if dmem_pool_refcount(entry) != 1:
                continue
            array = <object> entry
            if (type(array) is NDARRAY and array.shape == shape and array.dtype == dtype
                    and array.flags.c_contiguous and array.flags.writeable):
                if i != n - 1:
                    del self._arrays[i]
                    self._arrays.append(array)
                return array
            array = None
        array = np.empty(shape, dtype=dtype)
        self._arrays.append(array)
        self._trim()
        return array

    cdef _trim(self):
        """Drop the least recently used arrays beyond the limits."""
        cdef Py_ssize_t total = 0
        for array in self._arrays:
            total += array.nbytes
        while self._arrays and (len(self._arrays) > self.max_arrays or total > self.max_bytes):
            total -= self._arrays.pop(0).nbytes

    def clear(self):
        """Let go of every pooled array (their memory is freed once nobody else holds them)."""
        self._arrays.clear()

    def __len__(self):
        return len(self._arrays)

    @property
    def nbytes(self):
        """Bytes of the arrays the pool holds (idle or handed out and still alive)."""
        return sum(array.nbytes for array in self._arrays)
