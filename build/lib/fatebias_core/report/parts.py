"""The pieces of the report's page as plain data, and how numbers read on it.

The context builders (:mod:`~fatebias_core.report.context`,
:mod:`~fatebias_core.report.contrasts`, :mod:`~fatebias_core.report.trust`) turn a run
folder's files into these objects; the templates lay them out. Nothing here writes
markup: every text is escaped by the templates (Jinja2 autoescape).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fatebias_core.discovery.answer import lfsr_text
from fatebias_core.io.tables import DayAxis

#: Figure resolution: modest, to keep the page small.
FIG_DPI = 90


@dataclass(frozen=True)
class Badge:
    """A coloured verdict: green (ok), red (not ok) or grey (unknown)."""

    ok: bool | None
    text: str

    @property
    def cls(self) -> str:
        """The CSS class of the verdict."""
        return "na" if self.ok is None else "ok" if self.ok else "bad"


@dataclass(frozen=True)
class Absent:
    """A part of the page without content, and the line the page says instead."""

    why: str


@dataclass
class KeyValues:
    """A two-column table of names and values; ``tips`` are hover texts of some names."""

    rows: list[tuple[str, Any]]
    tips: dict[str, str] = field(default_factory=dict)


@dataclass
class Table:
    """A table with a header row; numeric cells are right-aligned by the template."""

    header: list[str]
    rows: list[Sequence[Any]]
    cls: str = "grid"


@dataclass
class Figure:
    """An embedded PNG (base64) with its alt text and caption."""

    alt: str
    data: str
    caption: str = ""


@dataclass
class Cell:
    """A cell of a hits table: its text, sort key (``data-v``), class, colour, note, hover."""

    text: Any
    v: str | None = None
    cls: str = ""
    style: str = ""
    small: Any = None
    title: str | None = None


def is_number(value: Any) -> bool:
    """Whether a table cell reads as a number (right-aligned)."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int | float | np.number):
        return True
    if not isinstance(value, str):
        return False
    text = value.strip().lstrip("+-")
    return bool(text) and (text[0].isdigit() or text in ("–", "inf", "nan"))


def num(x: Any, fmt: str = ".3g") -> str:
    """A number in ``fmt``; ``–`` for None and non-finite values; other text as it is."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–" if x is None else str(x)
    return "–" if not math.isfinite(v) else format(v, fmt)


def p_text(x: Any) -> str:
    """An lfsr or other probability: 3 decimals, scientific below 0.001, a bound where it underflows."""
    return lfsr_text(x)


def signed(x: float, digits: int = 3) -> str:
    """``x`` with a sign, and ``0`` where it rounds to zero (no ``-0.000``)."""
    return f"{x:+.{digits}f}" if round(float(x), digits) != 0 else f"{0:.{digits}f}"


def score(x: Any) -> str:
    """A -log10 lfsr score: ``>= 300`` at the cap where lfsr underflows."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return ">= 300" if v >= 300 else num(v, ".3g")


def days_text(day_list: Any, axis: DayAxis) -> str:
    """A day list of a ranked table (``"0,2"``) with day labels (``"d0, d2"``)."""
    label_of = dict(zip(axis.keys, axis.labels, strict=True))
    keys = [k.strip() for k in str(day_list).split(",")]
    return ", ".join(label_of.get(k, k) for k in keys if k and k != "nan")


def effect_style(x: float, vmax: float) -> str:
    """The background of an effect cell: red towards the fate, blue away, by size ("" when none)."""
    if not math.isfinite(x) or vmax <= 0:
        return ""
    a = min(abs(x) / vmax, 1.0) * 0.55
    rgb = "178,24,43" if x > 0 else "33,102,172"
    return f"background:rgba({rgb},{a:.2f})"


def count_and_names(names: Sequence[str], shown: int = 8) -> str:
    """``"3: a, b, c"``; the first ``shown`` names, then ``...``."""
    if not names:
        return "0"
    return f"{len(names)}: {', '.join(names[:shown])}" + (" ..." if len(names) > shown else "")


def setting(value: Any) -> str:
    """A setting's value as text (lists comma-separated)."""
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)
