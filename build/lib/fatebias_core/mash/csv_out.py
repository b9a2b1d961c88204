"""Writing a mash output table to CSV quickly (``fatebias mash``, :func:`~fatebias_core.mash.mash_file`).

Formatting floats is most of the time of writing a large table (Python's shortest
round-trip ``repr``, which :func:`fatebias_core.io.write_csv` uses so that values read
back bit for bit). Three things cut it down without changing a byte of what
``write_csv`` writes for the pipeline's tables:

* where the input file is plain (no quote characters or carriage returns, one line per
  row, the header exactly the parsed columns), each output line is the input line as it
  was in the file followed by the new columns: the input's numbers are not formatted
  again. When the input was itself written by ``write_csv`` (the pipeline's exports),
  that is exactly what ``write_csv`` would write; other inputs keep their own spelling
  of the carried values (``0.50`` stays ``0.50``, a code ``001`` stays ``001``);
* rows are formatted and written a chunk at a time, so the millions of cell strings
  never exist at once (fresh memory is slow to obtain on some machines), and a column
  that repeats another row by row (``lfsr_min``) reuses its text;
* the rows of a large table are split between this process and workers forked from it
  (Linux), which inherit the table instead of receiving a copy and write their rows to
  part files that are then appended in order.

Anything else (quoted input, other column types, a platform without ``fork``, a worker
that fails) is written as ``write_csv`` writes it, in this process.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from fatebias_core.io import PathLike, atomic_path, write_csv

from .parallel import available_cores

#: Fewest new cells (rows x columns) for which forking workers pays off.
PARALLEL_MIN_CELLS = 500_000

#: Rows formatted and written at a time.
CHUNK_ROWS = 8192

#: The rows and columns a forked worker formats (set in the worker by the initializer).
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
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            fh.write(",".join([lines[0], *map(str, new.columns)]) + "\n")
        gc_was_on = gc.isenabled()
        gc.disable()  # millions of short-lived tuples and strings, no cycles among them
        try:
            _write_rows(lines[1:], cols, tmp)
        finally:
            if gc_was_on:
                gc.enable()
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


def _chunk_cells(cols: list[np.ndarray]) -> list[list[str]]:
    """Cells of each column of a chunk. A float column whose every value is, row by row,
    the value of an earlier column (``lfsr_min`` is one of the ``lfsr_<day>``) reuses
    that column's text instead of formatting the numbers again."""
    out: list[list[str]] = []
    for c, values in enumerate(cols):
        earlier = [j for j in range(c) if values.dtype == np.float64 == cols[j].dtype]
        src = _same_values(values, [cols[j] for j in earlier]) if earlier else None
        if src is None:
            out.append(_cells(values))
        else:
            texts = [out[earlier[j]] for j in range(len(earlier))]
            out.append([texts[j][i] for i, j in enumerate(src.tolist())])
    return out


def _same_values(values: np.ndarray, others: list[np.ndarray]) -> np.ndarray | None:
    """For each row, the index of an array in ``others`` with the same value there (the
    same bits: 0.0 and -0.0 differ), or None unless every row has one."""
    bits = values.view(np.int64)
    eq = np.stack([bits == o.view(np.int64) for o in others])
    found = eq.any(axis=0)
    return eq.argmax(axis=0) if found.all() else None


def _write_block(fh: TextIO, prefix: list[str], cols: list[np.ndarray], rows: slice) -> None:
    """Append the output lines of ``rows`` to ``fh``, a chunk of rows at a time."""
    for a in range(rows.start, rows.stop, CHUNK_ROWS):
        r = slice(a, min(rows.stop, a + CHUNK_ROWS))
        cells = _chunk_cells([c[r] for c in cols])
        fh.write("\n".join(map(",".join, zip(prefix[r], *cells, strict=True))) + "\n")


def _init_worker(prefix: list[str], cols: list[np.ndarray]) -> None:
    global _shared
    _shared = (prefix, cols)


def _worker_block(rows: slice, part: str) -> None:
    assert _shared is not None
    with open(part, "w", newline="", encoding="utf-8") as fh:
        _write_block(fh, *_shared, rows)


def _write_rows(prefix: list[str], cols: list[np.ndarray], path: Path) -> None:
    """Append the output lines of every row to ``path``, in parallel when that pays off."""
    n = len(prefix)
    workers = min(available_cores(), 8)
    if workers < 2 or n * len(cols) < PARALLEL_MIN_CELLS or not sys.platform.startswith("linux"):
        with open(path, "a", newline="", encoding="utf-8") as fh:
            _write_block(fh, prefix, cols, slice(0, n))
        return
    import multiprocessing  # only here: the table is large and cores are free
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    step = -(-n // workers)
    blocks = [slice(a, min(n, a + step)) for a in range(0, n, step)]
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.parts.") as parts_dir:
        parts = [os.path.join(parts_dir, f"{i}.csv") for i in range(len(blocks))]
        done = 0  # blocks already in ``path``
        try:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(len(blocks) - 1, mp_context=ctx, initializer=_init_worker, initargs=(prefix, cols)) as pool:
                futures = [pool.submit(_worker_block, b, p) for b, p in zip(blocks[1:], parts[1:], strict=True)]
                with open(path, "a", newline="", encoding="utf-8") as fh:  # this process: the first block
                    _write_block(fh, prefix, cols, blocks[0])
                done = 1
                for f in futures:
                    f.result()
        except (OSError, BrokenProcessPool, ValueError):  # no fork, or a worker died: the rest here
            with open(path, "a", newline="", encoding="utf-8") as fh:
                for b in blocks[done:]:
                    _write_block(fh, prefix, cols, b)
            return
        with open(path, "ab") as out:
            for part in parts[1:]:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
