"""Run small dense linear algebra with single-threaded BLAS.

The mixture-weight solver factorises many matrices of a few hundred rows. OpenBLAS
spreads even these over all cores, and on a shared or busy machine the thread
hand-offs cost far more than the arithmetic (measured here: a 217 x 217 Cholesky
takes 4 ms threaded against 0.35 ms on one thread). :func:`single_threaded_blas`
sets every loaded OpenBLAS (numpy's and scipy's own copy) to one thread for the
duration of a block and restores the previous settings afterwards. Where the
libraries cannot be found (not Linux, not OpenBLAS) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Callable, Iterator

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")
_GETTERS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads")


@functools.lru_cache(maxsize=1)
def _openblas_controls() -> tuple[tuple[Callable[[], int], Callable[[int], None]], ...]:
    """(getter, setter) pairs of the OpenBLAS libraries loaded in this process."""
    import numpy  # noqa: F401 - make sure numpy's BLAS is loaded
    import scipy.linalg  # noqa: F401 - and scipy's

    try:
        with open("/proc/self/maps") as fh:
            paths = sorted({line.split()[-1] for line in fh if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return ()
    controls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
        put = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
        if get is None or put is None:
            continue
        get.restype = ctypes.c_int
        put.argtypes = [ctypes.c_int]
        controls.append((get, put))
    return tuple(controls)


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Limit every loaded OpenBLAS to one thread inside the block."""
    controls = _openblas_controls()
    _default_threads()
    previous = [get() for get, _ in controls]
    try:
        for _, put in controls:
            put(1)
        yield
    finally:
        for (_, put), n in zip(controls, previous, strict=True):
            put(n)


#: Dense problems at least this large are factorised with every BLAS thread; smaller ones
#: on one (the thread hand-offs cost more than they save, badly so on a busy machine).
THREADED_DIM = 3000


@functools.lru_cache(maxsize=1)
def _default_threads() -> tuple[int, ...]:
    """Each loaded OpenBLAS's thread count when first asked (its default)."""
    return tuple(get() for get, _ in _openblas_controls())


@contextlib.contextmanager
def blas_threads_for(dim: int) -> Iterator[None]:
    """Inside the block, every BLAS thread for a dense problem of ``dim`` rows at least :data:`THREADED_DIM`, else one."""
    controls = _openblas_controls()
    defaults = _default_threads()
    previous = [get() for get, _ in controls]
    try:
        for (_, put), n in zip(controls, defaults, strict=True):
            put(n if dim >= THREADED_DIM else 1)
        yield
    finally:
        for (_, put), n in zip(controls, previous, strict=True):
            put(n)


#: Largest dense Cholesky factorisation (and inverse from it) given every BLAS thread.
#: OpenBLAS 0.3.30 / 0.3.31's threaded ``potrf`` crashes the process (a segmentation
#: fault) at 16,000 rows and more on some Intel Xeons (SkylakeX kernels; seen here with
#: two threads, fine at 12,000 and on one thread at 18,014); above this size the
#: factorisation runs on one thread, about twice as slow on two cores, rather than risk it.
FACTOR_THREADED_MAX = 12000


def factor_threads_for(dim: int) -> contextlib.AbstractContextManager[None]:
    """Like :func:`blas_threads_for`, for a Cholesky factorisation of ``dim`` rows: one thread above :data:`FACTOR_THREADED_MAX`."""
    return blas_threads_for(dim) if dim <= FACTOR_THREADED_MAX else single_threaded_blas()
