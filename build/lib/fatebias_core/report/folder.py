"""The run folder as the report reads it, and the record of what the page shows.

:class:`RunFolder` reads a run folder's files on demand: absent files are None, and
unreadable ones are noted with the reason, which the page says instead of failing.
:class:`PageLog` records, in page order, which parts have content and which are
absent (and why), and embeds the figures the parts draw.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FatebiasError
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv
from fatebias_core.io.tables import require_columns
from fatebias_core.report.parts import Absent, Figure

#: Text columns of the ranked tables (read as text, not numbers).
RANKED_DTYPES = {"gene": str, "active_days": str, "active_days_any": str}


class RunFolder:
    """The files of a run folder, read on demand.

    Parameters
    ----------
    out
        The run folder.
    config
        The run's settings.

    Attributes
    ----------
    problems
        File name -> why it could not be used (it exists but is unreadable or incomplete).
    """

    def __init__(self, out: Path, config: FatebiasConfig):
        self.out = out
        self.config = config
        self.problems: dict[str, str] = {}
        self._json: dict[str, dict | None] = {}

    def path(self, name: str) -> Path:
        """The path of a file of the folder."""
        return self.out / name

    def json(self, name: str) -> dict | None:
        """A JSON object file (cached); None when absent or unreadable."""
        if name not in self._json:
            self._json[name] = self._read_json(name)
        return self._json[name]

    def _read_json(self, name: str) -> dict | None:
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError) as exc:
            self.problems[name] = f"{name} could not be read ({exc.__class__.__name__}: {exc})"
            return None
        if not isinstance(data, dict):
            self.problems[name] = f"{name} holds a {type(data).__name__}, not a JSON object"
            return None
        return data

    def csv(self, name: str, columns: Sequence[str] = (), **kwargs: Any) -> pd.DataFrame | None:
        """A CSV file with at least ``columns``; None when absent or unusable."""
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            df = read_csv(p, what=name, **kwargs)
            require_columns(df, list(columns), name)
        except FatebiasError as exc:
            self.problems[name] = str(exc)
            return None
        return df

    def text(self, name: str) -> str | None:
        """A text file's content; None when absent."""
        p = self.path(name)
        return p.read_text() if p.is_file() else None

    def why_absent(self, name: str, otherwise: str) -> str:
        """Why ``name`` gives no content: its problem if it had one, else ``otherwise``."""
        return self.problems.get(name, otherwise)


class PageLog:
    """Which parts of the page have content (in page order), which are absent, and the figures.

    Parameters
    ----------
    tmp
        A scratch folder the figures are drawn into before they are embedded.
    """

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.sections: list[str] = []
        self.absent: dict[str, str] = {}
        self.n_figures = 0

    def shown(self, part: str) -> None:
        """Record that ``part`` has content."""
        self.sections.append(part)

    def missing(self, part: str, why: str) -> Absent:
        """Record that ``part`` is absent; return the line the page says instead."""
        self.absent[part] = why
        return Absent(why)

    def figure(self, draw: Callable[[Path], Path], alt: str, caption: str = "") -> Figure:
        """Draw a figure (``draw(path) -> path`` writes a PNG) and embed it as base64."""
        path = draw(self.tmp / f"figure_{self.n_figures}.png")
        self.n_figures += 1
        return Figure(alt=alt, data=base64.b64encode(path.read_bytes()).decode("ascii"), caption=caption)


def diagnostics_part(run: RunFolder, page: PageLog, part: str, label: str) -> dict | Absent:
    """The ``part`` of ``diagnostics.json`` (recorded as shown under ``label``), or why it is absent."""
    diag = run.json(names.DIAGNOSTICS)
    if diag is None:
        if names.DIAGNOSTICS in run.problems:
            why = run.problems[names.DIAGNOSTICS]
        elif not run.config.run_diagnostics:
            why = "diagnostics were not run (run_diagnostics: false)"
        else:
            why = f"{names.DIAGNOSTICS} not found (fatebias diagnose --config C writes it)"
        return page.missing(label, why)
    if not diag.get(part):
        return page.missing(label, f"{names.DIAGNOSTICS} has no {part} part (not run)")
    page.shown(label)
    return diag[part]
