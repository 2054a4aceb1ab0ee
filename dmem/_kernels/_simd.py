"""The instruction sets of the kernels' C loops, by name (levels of simd.h).

Each family of loops (addressing, memory, allocation, linkage) keeps its own
level in force, the widest the CPU has from import on.  Its module builds its
``simd_level``, ``simd_levels_supported`` and ``_set_simd`` with
:func:`functions` from one function of its own, ``query(level=None)``, which
sets the level when given one and returns ``(level in force, widest level the
CPU supports)``.
"""

SIMD_LEVELS = ("baseline", "avx2+fma", "avx512")


def functions(query, loops):
    """``(simd_level, simd_levels_supported, _set_simd)`` of the loops ``query`` controls."""

    def simd_level():
        return SIMD_LEVELS[query()[0]]

    def simd_levels_supported():
        return SIMD_LEVELS[:query()[1] + 1]

    def _set_simd(level):
        if level is True or level is False:
            query(2 if level else 0)
        else:
            query(SIMD_LEVELS.index(level))
        return simd_level()

    simd_level.__doc__ = (
        f"The instruction set of the {loops} loops: ``\"avx512\"`` (AVX-512 F/VL/DQ with "
        "AVX2 and FMA), ``\"avx2+fma\"`` or ``\"baseline\"`` (the build's own, e.g. SSE2 "
        "on x86-64, NEON on aarch64).")
    simd_levels_supported.__doc__ = (
        "The levels ``_set_simd`` can select on this CPU, baseline first.")
    _set_simd.__doc__ = (
        f"Select the {loops} loops (for tests and benchmarks): ``True`` for the widest "
        "this CPU has, ``False`` for the baseline ones, or a name from ``SIMD_LEVELS`` "
        "(a level the CPU lacks gives the widest below it).  Returns ``simd_level()``.")
    return simd_level, simd_levels_supported, _set_simd
