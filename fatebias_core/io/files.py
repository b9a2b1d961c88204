"""Atomic file output and small readers shared by every step.

Every file fatebias writes goes to a temporary name in the same folder first and is
renamed into place when complete, so an interrupted run never leaves a truncated file.
"""

from __future__ import annotations

import contextlib
import json
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
    """Write ``df`` to ``path`` atomically (no index unless asked)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(obj: Any, path: PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically (numpy scalars and arrays allowed)."""
    return write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", path)


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
