"""Build of dmem's compiled kernels.

Every ``dmem/_kernels/*.pyx`` becomes the extension ``dmem._kernels.<name>``.
Cython directives are set here and only here: bounds checks, wraparound and
initialisation checks are off, and come back on when the build runs with
``DMEM_CYTHON_DEBUG=1``.  OpenMP is used when a test program compiles and
links with ``-fopenmp``; otherwise the kernels run on one thread and the build
says so.
"""

import os
import sys
import tempfile
import textwrap
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("DMEM_CYTHON_DEBUG", "") not in ("", "0")

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": DEBUG,
    "embedsignature": True,
    "cpow": True,
}

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) {
        int n = 0;
        #pragma omp parallel reduction(+:n)
        n += 1;
        return n > 0 ? 0 : 1;
    }
    """
)


def _openmp_flags(compiler):
    """Return (compile_args, link_args) for OpenMP, or None if it does not build."""
    if sys.platform == "win32":
        candidates = [(["/openmp"], [])]
    elif sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"]), (["-fopenmp"], ["-fopenmp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(OPENMP_TEST)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "omp_test", output_dir=tmp, extra_postargs=lflags)
            except Exception:
                continue
            return cflags, lflags
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        flags = None
        if os.environ.get("DMEM_NO_OPENMP", "") in ("", "0"):
            flags = _openmp_flags(self.compiler)
        if flags is None:
            self.warn(
                "dmem: OpenMP was not found (or DMEM_NO_OPENMP is set); the compiled "
                "kernels will run on a single thread."
            )
        opt = [] if sys.platform == "win32" else ["-O3"]
        if DEBUG and sys.platform != "win32":
            opt = ["-O0", "-g"]
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + opt
            if flags is not None:
                ext.extra_compile_args += flags[0]
                ext.extra_link_args = list(ext.extra_link_args or []) + flags[1]
        super().build_extensions()


def _extensions():
    from Cython.Build import cythonize

    sources = sorted(glob(os.path.join("dmem", "_kernels", "*.pyx")))
    # Developers may build a subset: DMEM_BUILD_ONLY=addressing,_info
    only = [s.strip() for s in os.environ.get("DMEM_BUILD_ONLY", "").split(",") if s.strip()]
    if only:
        sources = [s for s in sources if os.path.splitext(os.path.basename(s))[0] in only]
    # C headers next to the .pyx files (e.g. linkage_simd.h): rebuild when they
    # change, and ship them in the sdist.
    headers = sorted(glob(os.path.join("dmem", "_kernels", "*.h")))
    exts = [
        Extension(
            "dmem._kernels." + os.path.splitext(os.path.basename(src))[0],
            [src],
            depends=headers,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        )
        for src in sources
    ]
    return cythonize(exts, compiler_directives=DIRECTIVES, annotate=False)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
