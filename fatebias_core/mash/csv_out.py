"""Writing a mash output table to CSV quickly (``fatebias mash``, :func:`~fatebias_core.mash.mash_file`).

Formatting floats is most of the time of writing a large table (Python's shortest
round-trip ``repr``, which :func:`fatebias_core.io.write_csv` uses so that values read
back bit for bit). Two things cut it down without changing a byte of what ``write_csv``
writes for the pipeline's tables:

* where the input file is plain (no quote characters or carriage returns, one line per
  row, the header exactly the parsed columns), each output line is the input line as it
  was in the file followed by the new columns: the input's numbers are not formatted
  again. When the input was itself written by ``write_csv`` (the pipeline's exports),
  that is exactly what ``write_csv`` would write; other inputs keep their own spelling
  of the carried values (``0.50`` stays ``0.50``, a code ``001`` stays ``001``);
* the new columns of a large table are formatted by blocks of rows in parallel, in
  processes forked from this one (Linux), which inherit the table instead of receiving
  a copy; each returns its block's text.

Anything else (quoted input, other column types, a platform without ``fork``, a worker
that fails) is written as ``write_csv`` writes it, in this process.
"""

from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd

from fatebias_core.io import PathLike, atomic_path, write_csv

from .parallel import available_cores

#: Fewest new cells (rows x columns) for which forking workers pays off.
PARALLEL_MIN_CELLS = 500_000

#: The rows and columns a forked worker formats from (set in the worker by the initializer).
_shared: tuple[list[str], list[np.ndarray]] | None = None


def write_output(out: pd.DataFrame, df: pd.DataFrame, source: PathLike, path: PathLike) -> Path:
    """Write ``out`` (the columns of input ``df``, read from ``source``, then new ones) to ``path`` atomically.

    See the module notes; the file read back gives ``out`` (the new columns bit for bit).
    """
    lines = _plain_lines(source, df)
    new = out.iloc[:, df.shape[1]:]
    cols = [col.to_numpy() for _, col in new.items()]
    if lines is None or not all(_formattable(c) for c in cols):
        return write_csv(out, path)
    header = ",".join([lines[0], *map(str, new.columns)])
    body = _format_rows(lines[1:], cols)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write(header + "\n")
        for text in body:
            if text:
                fh.write(text + "\n")
    return Path(path)


def _plain_lines(source: PathLike, df: pd.DataFrame) -> list[str] | None:
    """The lines of ``source`` (header first) if they map one to one onto ``df``'s rows, else None."""
    try:
        text = Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if '"' in text or "\r" in text or not text:
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if len(lines) != df.shape[0] + 1 or lines[0].split(",") != [str(c) for c in df.columns]:
        return None
    commas = lines[0].count(",")
    if any(line.count(",") != commas for line in lines):
        return None
    return lines


def _formattable(values: np.ndarray) -> bool:
    """float64 or plain integer values (what :func:`_cells` formats as ``write_csv`` does)."""
    return values.dtype == np.float64 or values.dtype.kind in "iu"


def _cells(values: np.ndarray) -> list[str]:
    """Cells as ``write_csv`` writes them: floats by ``repr`` (NaN empty), integers by ``str``."""
    if values.dtype.kind in "iu":
        return list(map(str, values.tolist()))
    if values.size and (values == values[0]).all():  # a constant column (plarge_eps): format once
        return [repr(float(values[0]))] * values.size
    text = list(map(repr, values.tolist()))
    for i in np.flatnonzero(np.isnan(values)):
        text[i] = ""
    return text


def _block_text(prefix: list[str], cols: list[np.ndarray], rows: slice) -> str:
    """The output lines of ``rows``, joined by newlines."""
    cells = [_cells(c[rows]) for c in cols]
    return "\n".join(map(",".join, zip(prefix[rows], *cells, strict=True)))


def _init_worker(prefix: list[str], cols: list[np.ndarray]) -> None:
    global _shared
    _shared = (prefix, cols)


def _worker_block(rows: slice) -> str:
    assert _shared is not None
    return _block_text(*_shared, rows)


def _format_rows(prefix: list[str], cols: list[np.ndarray]) -> list[str]:
    """The output lines' text in blocks (in order), formatted in parallel when that pays off."""
    n = len(prefix)
    workers = min(available_cores(), 8)
    everything = [slice(0, n)]
    if workers < 2 or n * len(cols) < PARALLEL_MIN_CELLS or not sys.platform.startswith("linux"):
        return [_block_text(prefix, cols, everything[0])]
    step = -(-n // workers)
    blocks = [slice(a, min(n, a + step)) for a in range(0, n, step)]
    try:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(blocks) - 1, mp_context=ctx, initializer=_init_worker, initargs=(prefix, cols)) as pool:
            futures = [pool.submit(_worker_block, b) for b in blocks[1:]]
            first = _block_text(prefix, cols, blocks[0])  # this process formats the first block meanwhile
            return [first, *(f.result() for f in futures)]
    except (OSError, BrokenProcessPool, ValueError):
        return [_block_text(prefix, cols, everything[0])]
