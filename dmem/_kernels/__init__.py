"""Compiled kernels (Cython). Use them through :mod:`dmem.compiled` or :mod:`dmem.ops`."""
