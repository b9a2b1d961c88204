"""The one way fatebias hashes: SHA-256, written as its first hex digits.

Versions of steps, settings and input files, the fingerprints of permuted data and of a
guide assignment are all made here, so that every persisted or compared hash (run
manifests, Dagster data versions, caches) is computed the same way. The values are
those of the hand-written ``hashlib.sha256(...).hexdigest()[:16]`` they replace.

It sits in the bottom layer (beside ``config``, whose settings hash uses it) and imports
nothing of fatebias.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np

#: Hex digits kept of a SHA-256 digest (64 bits: collisions are no concern at our counts).
HASH_LENGTH = 16


def _bytes(part: bytes | str | np.ndarray) -> bytes:
    if isinstance(part, bytes):
        return part
    if isinstance(part, str):
        return part.encode()
    if isinstance(part, np.ndarray):
        return np.ascontiguousarray(part).tobytes()
    raise TypeError(f"cannot hash a {type(part).__name__}: give bytes, str or a numpy array")


def short_hash(*parts: bytes | str | np.ndarray, length: int = HASH_LENGTH) -> str:
    """The SHA-256 of ``parts`` one after the other, as its first ``length`` hex digits.

    Parameters
    ----------
    *parts
        Bytes, text (UTF-8) or numpy arrays (their C-ordered bytes, not their shape or
        dtype), hashed in order with nothing between them.
    length
        Hex digits kept (16 unless a caller's persisted format says otherwise).

    Returns
    -------
    str
    """
    h = hashlib.sha256()
    for part in parts:
        h.update(_bytes(part))
    return h.hexdigest()[:length]


def json_hash(obj: Any, length: int = HASH_LENGTH) -> str:
    """:func:`short_hash` of ``obj`` as JSON with sorted keys (values JSON cannot hold as their ``str``)."""
    return short_hash(json.dumps(obj, sort_keys=True, default=str), length=length)


def file_hash(path: str | os.PathLike, length: int = HASH_LENGTH, chunk: int = 1 << 20) -> str:
    """:func:`short_hash` of a file's content, read in chunks of ``chunk`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()[:length]


__all__ = ["HASH_LENGTH", "file_hash", "json_hash", "short_hash"]
