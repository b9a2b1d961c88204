"""Row blocks computed on several threads.

The likelihood matrix, the posterior summaries and the mixture-weight sums are computed
in blocks of rows that do not depend on one another. numpy releases the GIL inside its
array operations (and LAPACK calls), so the blocks run in parallel on a thread pool.
Each block is computed exactly as it would be alone and written to its own rows, and
sums over blocks are added in block order, so the results do not depend on the number
of threads. Meanwhile OpenBLAS is held to one thread per caller
(:func:`~fatebias_core.mash.blas_threads.single_threaded_blas`): the blocks' matrix
products are small, and the threads already occupy the cores.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .blas_threads import single_threaded_blas

T = TypeVar("T")

#: Upper bound on the worker threads (beyond a few cores the blocks are memory bound).
MAX_THREADS = 8


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def row_slices(n_rows: int, step: int) -> list[slice]:
    """Consecutive slices of ``step`` rows (the last one shorter) covering ``n_rows``."""
    step = max(1, int(step))
    return [slice(a, min(n_rows, a + step)) for a in range(0, n_rows, step)]


def map_blocks(fn: Callable[[slice], T], blocks: Sequence[slice], threads: int | None = None) -> list[T]:
    """``[fn(b) for b in blocks]``, computed on up to ``threads`` threads (default: the cores).

    Exceptions raised by ``fn`` propagate to the caller.
    """
    n = min(len(blocks), available_cores() if threads is None else max(1, threads), MAX_THREADS)
    with single_threaded_blas():
        if n <= 1:
            return [fn(b) for b in blocks]
        with ThreadPoolExecutor(max_workers=n) as pool:
            return list(pool.map(fn, blocks))

