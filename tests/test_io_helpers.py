"""The one JSON rule (``io.json_ready``: NaN and inf are null) and the one hashing helper."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fatebias_core.hashing import file_hash, json_hash, short_hash
from fatebias_core.io import json_ready, write_json


def test_json_ready_makes_strict_json() -> None:
    value = {
        "nan": float("nan"), "inf": math.inf, "ninf": np.float32(-np.inf), "x": np.float64(0.25),
        "n": np.int64(7), "b": np.bool_(True), "arr": np.array([[1.0, np.nan], [np.inf, 2.0]]),
        "t": (1, "a"), "p": Path("/a/b"), np.int64(3): "numpy key", ("a", 1): "tuple key",
    }
    got = json_ready(value)
    assert got == {
        "nan": None, "inf": None, "ninf": None, "x": 0.25, "n": 7, "b": True,
        "arr": [[1.0, None], [None, 2.0]], "t": [1, "a"], "p": "/a/b", 3: "numpy key", "('a', 1)": "tuple key",
    }
    assert type(got["n"]) is int and type(got["b"]) is bool
    json.dumps(got, allow_nan=False)  # strict JSON: no NaN or Infinity literals


def test_write_json_applies_the_rule(tmp_path: Path) -> None:
    path = write_json({"a": [1.5, float("nan")], "b": np.float64(np.inf)}, tmp_path / "x.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": [1.5, None], "b": None}


def test_hashes_are_sha256_prefixes(tmp_path: Path) -> None:
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    assert short_hash("a|b") == sha(b"a|b")[:16]
    assert short_hash(b"x", "y", np.array([1, 2], dtype=np.int64), length=24) == sha(b"xy" + np.array([1, 2], dtype=np.int64).tobytes())[:24]
    # Sorted keys, JSON's default separators: the settings hash of a config is this.
    assert json_hash({"b": 1, "a": [1.5, "x"]}) == sha(b'{"a": [1.5, "x"], "b": 1}')[:16]
    f = tmp_path / "f.bin"
    f.write_bytes(b"\0" * 3_000_000)
    assert file_hash(f, chunk=1 << 20) == sha(b"\0" * 3_000_000)[:16]
    with pytest.raises(TypeError, match="cannot hash"):
        short_hash(1.5)  # type: ignore[arg-type]
