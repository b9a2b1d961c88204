"""Independent pieces of work (row blocks, conditions) computed on several threads.

The likelihood matrix, the posterior summaries, the mixture-weight sums and the
condition-by-condition fits are computed in pieces that do not depend on one another.
numpy releases the GIL inside its array operations (and LAPACK calls), so the pieces
run in parallel on a thread pool. Each piece is computed exactly as it would be alone
and written to its own rows, and sums over pieces are added in order, so the results
do not depend on the number of threads. Meanwhile OpenBLAS is held to one thread per
caller (:func:`~fatebias_core.mash.blas_threads.single_threaded_blas`): the pieces'
matrix products are small, and the threads already occupy the cores. Work started
from inside a piece runs on that piece's thread (no nested pools).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .blas_threads import single_threaded_blas

T = TypeVar("T")
S = TypeVar("S")

#: Upper bound on the worker threads (beyond a few cores the blocks are memory bound).
MAX_THREADS = 8

_worker = threading.local()


def available_cores() -> int:
    """Cores free for this process: those it may run on (its CPU affinity), less the
    ones other work keeps busy (the 1-minute load average, rounded down), at least one.

    On a machine already busy, threads (and processes) competing for the same cores
    are slower than one: numpy's small operations keep handing the GIL back and forth.
    The results do not depend on the count.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        busy = int(os.getloadavg()[0])
    except (AttributeError, OSError):  # pragma: no cover - no load average
        busy = 0
    return max(1, cores - busy)


def row_slices(n_rows: int, step: int) -> list[slice]:
    """Consecutive slices of ``step`` rows (the last one shorter) covering ``n_rows``."""
    step = max(1, int(step))
    return [slice(a, min(n_rows, a + step)) for a in range(0, n_rows, step)]


def map_blocks(fn: Callable[[S], T], items: Sequence[S], threads: int | None = None) -> list[T]:
    """``[fn(item) for item in items]``, computed on up to ``threads`` threads (default: the cores).

    Exceptions raised by ``fn`` propagate to the caller. Called from inside a piece of
    another :func:`map_blocks`, it runs on the calling thread.
    """
    n = min(len(items), available_cores() if threads is None else max(1, threads), MAX_THREADS)
    if getattr(_worker, "active", False):
        n = 1

    def run(item: S) -> T:
        _worker.active = True
        return fn(item)

    with single_threaded_blas():
        if n <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(run, items))
