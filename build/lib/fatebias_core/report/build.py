"""The HTML report of a finished run: one self-contained page a biologist can read.

:func:`build_report` reads a run folder's files (and nothing else) and writes
``report.html``: the run (inputs, cells kept and dropped, guides per cell, settings,
software, runtime), the fit (ELBO trace, held-out cross-entropy), the answer (a
sortable table of hits, a heatmap of effects by gene and day, per-day volcano plots,
guide concordance of the top hits, other contrasts) and why to trust it (QC offsets,
the permutation negative control, sanity checks, mash mode comparison and, for
simulations and calibration studies, recovery of the truth and calibration curves).

The page is built in two steps: :func:`~fatebias_core.report.context.build_context`
reads the run folder's files into plain data (the hits come from ``hits_ranked.csv``
and ``hits_ranked_<FATE>.csv``, never ranked again), and
:func:`~fatebias_core.report.render.render_page` lays it out with the Jinja2 templates
shipped in ``fatebias_core/report/templates``. Figures are matplotlib PNGs embedded as
base64; the style sheet and the few lines of script that sort the table
(``fatebias_core/report/static``) are written into the page, so it opens offline and
links nothing outside itself. A section whose input file is absent says so in a line
instead of failing.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from fatebias_core.config import FatebiasConfig, load_config, make_config
from fatebias_core.errors import InputDataError
from fatebias_core.io import layout as names
from fatebias_core.io import write_text
from fatebias_core.report import REPORT_FILE
from fatebias_core.report.context import build_context, software_versions
from fatebias_core.report.folder import PageLog, RunFolder
from fatebias_core.report.render import render_page

log = logging.getLogger("fatebias")


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    Attributes
    ----------
    path
        The page (``<out_dir>/report.html``).
    size_bytes
        Its size.
    sections
        Parts of the page that have content, in page order.
    absent
        Parts without content -> the line the page says instead (input file absent,
        diagnostics not run, not a simulation, ...).
    n_figures
        Embedded figures.
    runtime_s
        Seconds to build the page.
    """

    path: Path
    size_bytes: int
    sections: list[str]
    absent: dict[str, str] = field(default_factory=dict)
    n_figures: int = 0
    runtime_s: float = 0.0

    def describe(self) -> str:
        """Where the page is, its size, and what it shows and leaves out."""
        lines = [
            f"wrote {self.path} ({self.size_bytes / 1024:.0f} KiB, {self.n_figures} figures, {self.runtime_s:.1f} s)",
            f"  shows: {', '.join(self.sections)}",
        ]
        lines.extend(f"  no {part}: {why}" for part, why in self.absent.items())
        return "\n".join(lines)


def _resolve_config(out: Path, config: FatebiasConfig | None) -> FatebiasConfig:
    """The given settings, else the folder's ``config_used.yaml``, else the defaults."""
    if config is not None:
        return config
    used = out / names.CONFIG_USED
    return load_config(used) if used.is_file() else make_config()


def _check_folder(out: Path) -> None:
    """Raise :class:`InputDataError` unless ``out`` is a fatebias run folder."""
    if not out.is_dir():
        raise InputDataError(f"{out} is not a folder")
    if not (out / names.MANIFEST).is_file() and not (out / names.CONFIG_USED).is_file():
        raise InputDataError(
            f"{out} is not a fatebias run folder (no {names.MANIFEST} or {names.CONFIG_USED}); "
            "run `fatebias run --config C` first"
        )


def build_report(out_dir: str | Path, config: FatebiasConfig | None = None) -> ReportResult:
    """Write ``<out_dir>/report.html``, the self-contained HTML report of a finished run.

    Parameters
    ----------
    out_dir
        A run folder (``fatebias run`` output: it holds ``fatebias_manifest.json`` or
        ``config_used.yaml``). Only its files are read.
    config
        The run's settings; default: the folder's ``config_used.yaml``.

    Returns
    -------
    ReportResult
        The page's path, size, and which parts have content.

    Raises
    ------
    InputDataError
        ``out_dir`` is not a folder, or not a fatebias run folder.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    _check_folder(out)
    run = RunFolder(out, _resolve_config(out, config))
    with tempfile.TemporaryDirectory(prefix="fatebias_report_") as tmp:
        page = PageLog(Path(tmp))
        context = build_context(run, page)
    path = write_text(render_page(context), out / REPORT_FILE)
    result = ReportResult(
        path=path, size_bytes=path.stat().st_size, sections=page.sections, absent=page.absent,
        n_figures=page.n_figures, runtime_s=time.perf_counter() - t0,
    )
    log.debug(result.describe())
    return result


__all__ = ["REPORT_FILE", "ReportResult", "build_report", "software_versions"]
