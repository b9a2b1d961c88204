"""Atomic file output and small readers shared by every step.

Every file fatebias writes goes to a temporary name in the same folder first and is
renamed into place when complete, so an interrupted run never leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.errors import InputDataError

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffix so that writers that infer a format
    from the extension (``np.savez``, ``AnnData.write_h5ad``) behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_csv(df: pd.DataFrame, path: PathLike, **kwargs: Any) -> Path:
    """Write ``df`` to ``path`` atomically (no index unless asked).

    A plain table (no index, flat string column names, float64, integer, bool and
    string columns) is written by :func:`_plain_csv_rows`, which gives the same bytes
    as ``DataFrame.to_csv`` several times faster; anything else goes to pandas.
    """
    kwargs.setdefault("index", False)
    cols = _plain_csv_columns(df) if kwargs == {"index": False} else None
    with atomic_path(path) as tmp:
        if cols is None:
            df.to_csv(tmp, **kwargs)
        else:
            lines = [",".join(map(_csv_field, df.columns)), *map(",".join, zip(*cols, strict=True))]
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                fh.write("\n".join(lines) + "\n")
    return Path(path)


def _csv_field(text: str) -> str:
    """``text`` quoted as the csv module's minimal quoting does (delimiter, quote or line break inside)."""
    if any(ch in text for ch in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _plain_csv_columns(df: pd.DataFrame) -> list[list[str]] | None:
    """The cells of ``df`` as ``to_csv`` formats them (floats by ``repr``, NaN empty), or None when not plain."""
    if df.shape[1] < 2 or not all(isinstance(c, str) and c for c in df.columns) or df.columns.has_duplicates:
        return None
    cols: list[list[str]] = []
    for _, col in df.items():
        kind = col.dtype.kind
        if col.dtype == np.float64:
            values = col.to_numpy()
            text = list(map(repr, values.tolist()))
            for i in np.flatnonzero(np.isnan(values)):
                text[i] = ""
        elif kind in "iub" and isinstance(col.dtype, np.dtype):
            text = list(map(str, col.tolist()))
        elif kind == "O":
            values = col.tolist()
            if not all(isinstance(v, str) for v in values):
                return None
            text = list(map(_csv_field, values))
        else:
            return None
        cols.append(text)
    return cols


def write_text(text: str, path: PathLike) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(data: bytes, path: PathLike) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def json_ready(value: Any) -> Any:
    """``value`` as strict JSON can hold it, recursively: the one JSON rule of fatebias.

    * NaN, inf and -inf become ``None`` (JSON ``null``): "no value", as strict JSON
      (``allow_nan=False``, JavaScript's ``JSON.parse``) needs;
    * numpy scalars become Python numbers and booleans, numpy arrays and tuples lists;
    * paths become text, and dictionary keys that JSON cannot hold (numpy scalars,
      paths, tuples) their text;
    * everything else is kept (JSON itself rejects what it cannot write).

    :func:`write_json`, the lineage and Dagster metadata all go through it.
    """
    if isinstance(value, dict):
        return {_json_key(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _json_key(key: Any) -> str | int | float | bool | None:
    if isinstance(key, np.generic):
        key = key.item()
    return key if key is None or isinstance(key, str | int | float | bool) else str(key)


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented, strict JSON atomically, after :func:`json_ready` (NaN and inf as ``null``)."""
    return write_text(json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n", path)


def save_npz(path: PathLike, **arrays: np.ndarray) -> Path:
    """Save arrays to a compressed ``.npz`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return Path(path)


def read_csv(path: PathLike, what: str = "table", **kwargs: Any) -> pd.DataFrame:
    """Read a CSV, turning a missing, empty or unparsable file into a one-line error.

    Floats are parsed with pandas' ``round_trip`` converter (unless ``float_precision`` is
    given): a value written by :func:`write_csv` reads back bit for bit, so a step fed a
    file computes exactly what it would from the table in memory (the default converter
    can be off by one unit in the last place).
    """
    kwargs.setdefault("float_precision", "round_trip")
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{what} file not found: {path}")
    if path.is_dir():
        raise InputDataError(f"{what} path is a folder, not a CSV file: {path}")
    try:
        df = pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise InputDataError(f"{what} file is empty: {path}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise InputDataError(f"{what} file {path} could not be parsed as CSV: {exc}") from None
    return df
