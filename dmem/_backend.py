"""Which implementation dmem runs: the compiled kernels or the autograd reference.

The choice is process-wide. It starts from the environment variable
``DMEM_BACKEND`` (``compiled`` by default) and changes with :func:`set_backend`
or, for a block of code, :func:`use_backend`.  When the compiled extension is
missing, asking for ``"compiled"`` gives ``"reference"`` with a one-time
warning; :func:`compiled_available` tells which is the case.

The kernels' thread count starts from ``DMEM_NUM_THREADS`` (default: the cores
this process may use) and changes with :func:`set_num_threads`.
"""

import contextlib
import importlib
import os
import warnings

BACKENDS = ("compiled", "reference")

# Every compiled module dmem needs; the extension counts as available only if all import.
KERNEL_MODULES = ("_info", "_checks", "_pool", "addressing", "memory", "allocation", "linkage",
                  "ntm_step", "dnc_step")

_state = {"backend": None, "num_threads": None, "warned": False}
_compiled_error = None


def _passive_openmp():
    """Let idle OpenMP threads sleep instead of spinning.

    The kernels are short and run between numpy's BLAS calls; spinning OpenMP
    threads then compete with BLAS threads for the cores, and a training step
    took 25x longer on 2 cores.  libgomp reads this when the kernels load; a
    wait policy chosen by the user is left alone.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "passive"


def _import_kernels():
    global _compiled_error
    _passive_openmp()
    try:
        for name in KERNEL_MODULES:
            importlib.import_module("dmem._kernels." + name)
    except ImportError as exc:  # the extension was not built
        _compiled_error = exc
        return False
    return True


_COMPILED = _import_kernels()


def compiled_available():
    """True when the compiled extension is built and importable."""
    return _COMPILED


def _check_name(name):
    if not isinstance(name, str) or name.strip().lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name.strip().lower()


def _resolve(name):
    if name == "compiled" and not _COMPILED:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(
                "dmem: the compiled extension is not available "
                f"({_compiled_error}); using the reference backend. "
                "Reinstall with `pip install .` to build it.",
                RuntimeWarning,
                stacklevel=3,
            )
        return "reference"
    return name


def set_backend(name):
    """Select ``"compiled"`` (Cython kernels) or ``"reference"`` (autograd.numpy).

    Returns the backend actually in force, which is ``"reference"`` when
    ``"compiled"`` is asked for but the extension is not built.
    """
    _state["backend"] = _resolve(_check_name(name))
    return _state["backend"]


def get_backend():
    """The backend in force: ``"compiled"`` or ``"reference"``."""
    return _state["backend"]


@contextlib.contextmanager
def use_backend(name):
    """Run a block under another backend, restoring the previous one after."""
    previous = _state["backend"]
    set_backend(name)
    try:
        yield _state["backend"]
    finally:
        _state["backend"] = previous


def _default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _check_threads(n, source):
    try:
        value = int(n)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a positive integer, got {n!r}") from None
    if value != n and not isinstance(n, str) or value < 1:
        raise ValueError(f"{source} must be a positive integer, got {n!r}")
    return value


_blas_controller = []


def blas_single_thread():
    """A context in which numpy's BLAS runs on one thread.

    The compiled models call small matrix products between their kernels; BLAS
    threads that spin after each product take the cores from the kernels'
    OpenMP threads (a compiled NTM step took 10x longer on 2 cores).  Uses
    threadpoolctl; without it, the context does nothing.
    """
    if not _blas_controller:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_controller.append(ThreadpoolController())
        except Exception:  # threadpoolctl missing or failing: leave BLAS alone
            _blas_controller.append(None)
    controller = _blas_controller[0]
    if controller is None:
        return contextlib.nullcontext()
    return controller.limit(limits=1, user_api="blas")


def set_num_threads(n):
    """Set the number of OpenMP threads the compiled kernels use (n >= 1)."""
    _state["num_threads"] = _check_threads(n, "num_threads")
    return _state["num_threads"]


def get_num_threads():
    """The number of threads the compiled kernels use."""
    return _state["num_threads"]


def _init_from_environment():
    env = os.environ.get("DMEM_BACKEND", "").strip()
    if env:
        try:
            name = _check_name(env)
        except ValueError:
            raise ValueError(
                f"DMEM_BACKEND must be one of {BACKENDS}, got {env!r}"
            ) from None
    else:
        name = "compiled"
    _state["backend"] = _resolve(name)
    env_threads = os.environ.get("DMEM_NUM_THREADS", "").strip()
    if env_threads:
        _state["num_threads"] = _check_threads(env_threads, "DMEM_NUM_THREADS")
    else:
        _state["num_threads"] = _default_threads()


_init_from_environment()
