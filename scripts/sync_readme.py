"""Regenerate the configuration reference in README.md from the schema.

Run after changing a field of ``fatebias_core.config.FatebiasConfig``:
``python scripts/sync_readme.py``. A test fails while the README is out of date.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from fatebias_core.config import schema_markdown

START, END = "<!-- config-reference:start -->", "<!-- config-reference:end -->"


def synced(text: str) -> str:
    """``text`` with the block between the markers replaced by the current reference."""
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{schema_markdown()}\n{END}", text)


def main() -> int:
    path = Path(__file__).resolve().parents[1] / "README.md"
    path.write_text(synced(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
