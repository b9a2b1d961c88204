"""The HTML report of a finished run: one self-contained page a biologist can read.

:func:`build_report` reads a run folder's files (and nothing else) and writes
``report.html``: the run (inputs, cells kept and dropped, guides per cell, settings,
software, runtime), the fit (ELBO trace, held-out cross-entropy), the answer (a
sortable table of hits, a heatmap of effects by gene and day, per-day volcano plots,
guide concordance of the top hits, other contrasts) and why to trust it (QC offsets,
the permutation negative control, sanity checks, mash mode comparison and, for
simulations and calibration studies, recovery of the truth and calibration curves).

Figures are matplotlib PNGs embedded as base64; styles and the few lines of script
that sort the table are inline, so the page opens offline and links nothing outside
itself. A section whose input file is absent says so in a line instead of failing.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.discovery.answer import ContrastAnswer, contrast_answer, lfsr_text
from fatebias_core.errors import FatebiasError, InputDataError
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv, write_text
from fatebias_core.io.tables import DayAxis, read_posterior, require_columns

log = logging.getLogger("fatebias")

REPORT_FILE = names.REPORT

#: Rows of the hits table written into the page (the CSV has them all).
MAX_TABLE_ROWS = 1000
#: Rows of the effect heatmap: the hits, at most this many ...
HEATMAP_MAX_ROWS = 25
#: ... and at least this many top-ranked rows when there are fewer hits.
HEATMAP_MIN_ROWS = 10
#: Top hits whose guides are drawn beside the gene effect.
CONCORDANCE_GENES = 8
#: Figure resolution: modest, to keep the page small.
FIG_DPI = 90


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


# --------------------------------------------------------------------------- small HTML helpers
class _Html(str):
    """Markup already escaped or built from escaped pieces: :func:`_e` passes it through."""


def _e(value: Any) -> str:
    return value if isinstance(value, _Html) else html.escape(str(value))


def _num(x: Any, fmt: str = ".3g") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–" if x is None else str(x)
    return "–" if not math.isfinite(v) else format(v, fmt)


def _p(x: Any) -> str:
    """An lfsr or other probability: 3 decimals, scientific below 0.001, a bound where it underflows."""
    return lfsr_text(x)


def _badge(ok: bool | None, text: str) -> _Html:
    cls = "na" if ok is None else "ok" if ok else "bad"
    return _Html(f'<span class="badge {cls}">{_e(text)}</span>')


def _kv(rows: Sequence[tuple[str, Any]], tips: dict[str, str] | None = None) -> _Html:
    tips = tips or {}
    body = "".join(
        f"<tr><th{_title(tips.get(k))}>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows
    )
    return _Html(f'<table class="kv">{body}</table>')


def _title(tip: str | None) -> str:
    return f' title="{_e(tip)}"' if tip else ""


def _is_number(value: Any) -> bool:
    if isinstance(value, int | float | np.number):
        return True
    text = str(value).strip().lstrip("+-")
    return bool(text) and (text[0].isdigit() or text in ("–", "inf", "nan"))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "grid") -> _Html:
    """A table; numeric cells are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    cell = lambda c: f'<td class="n">{_e(c)}</td>' if _is_number(c) else f"<td>{_e(c)}</td>"  # noqa: E731
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return _Html(f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>')


def _para(text: str, cls: str = "") -> _Html:
    attr = f' class="{cls}"' if cls else ""
    return _Html(f"<p{attr}>{_e(text)}</p>")


# --------------------------------------------------------------------------- the run folder
class _Run:
    """The files of a run folder, read on demand; absent files are None, unreadable ones noted."""

    def __init__(self, out: Path, config: FatebiasConfig):
        self.out = out
        self.config = config
        self.problems: dict[str, str] = {}
        self._json: dict[str, dict | None] = {}

    def path(self, name: str) -> Path:
        return self.out / name

    def json(self, name: str) -> dict | None:
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

    def why_absent(self, name: str, otherwise: str) -> str:
        return self.problems.get(name, otherwise)


_Answer = ContrastAnswer


def _days_text(day_list: Any, axis: DayAxis) -> str:
    """A day list of a ranked table (``"0,2"``) with day labels (``"d0, d2"``)."""
    label_of = dict(zip(axis.keys, axis.labels, strict=True))
    keys = [k.strip() for k in str(day_list).split(",")]
    return ", ".join(label_of.get(k, k) for k in keys if k and k != "nan")


def _signed(x: float, digits: int = 3) -> str:
    """``x`` with a sign, and ``0`` where it rounds to zero (no ``-0.000``)."""
    return f"{x:+.{digits}f}" if round(float(x), digits) != 0 else f"{0:.{digits}f}"


def _answer(run: _Run, fate: str | None = None) -> _Answer | None:
    """The ranked genes of a contrast and their daywise effects (primary: hits_ranked.csv)."""
    cfg = run.config
    fate = fate or cfg.contrast_fate
    name = "hits_ranked.csv" if fate == cfg.contrast_fate else f"mash_gene_{cfg.mash_default_mode}{cfg.file_suffix(fate)}.csv"

    def read(file: str) -> pd.DataFrame | None:
        cols = ["gene", "hit_anyday", "active_days"] if file == "hits_ranked.csv" else ["gene"]
        return run.csv(file, cols, dtype={"gene": str, "active_days": str, "active_days_any": str})

    try:
        return contrast_answer(run.out, cfg, fate, read=read)
    except FatebiasError as exc:
        run.problems[name] = str(exc)
        return None


# --------------------------------------------------------------------------- figures
class _Page:
    """Collects the page's figures (drawn into a temporary folder, embedded) and absent parts."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.sections: list[str] = []
        self.absent: dict[str, str] = {}
        self.n_figures = 0

    def figure(self, draw: Callable[[Path], Path], alt: str, caption: str = "") -> _Html:
        path = draw(self.tmp / f"figure_{self.n_figures}.png")
        self.n_figures += 1
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        cap = f"<figcaption>{_e(caption)}</figcaption>" if caption else ""
        return _Html(f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">{cap}</figure>')

    def shown(self, part: str) -> None:
        self.sections.append(part)

    def missing(self, part: str, why: str) -> _Html:
        self.absent[part] = why
        return _Html(f'<p class="absent">{_e(why)}</p>')


# --------------------------------------------------------------------------- sections
def software_versions() -> dict[str, str]:
    """Versions of fatebias, Python and the numerical stack in the running environment."""
    from importlib.metadata import PackageNotFoundError, version

    from fatebias_core import __version__

    out = {"fatebias": __version__, "python": platform.python_version()}
    for label, dist in (("torch", "torch"), ("pyro", "pyro-ppl"), ("numpy", "numpy"), ("pandas", "pandas"), ("matplotlib", "matplotlib")):
        try:
            out[label] = version(dist)
        except PackageNotFoundError:
            out[label] = "not installed"
    return out


_KEY_SETTINGS = (
    "fates", "ref_fate", "contrast_fate", "Kmax", "num_steps", "batch_size", "seed", "posterior_method",
    "likelihood_weight", "num_posterior_draws", "mash_backend", "mash_default_mode", "discovery_source",
    "mash_lfsr_thresh_day", "effect_size_eps", "effect_prob_large_min", "mash_anyday_correction",
    "mash_lfsr_thresh_anyday", "min_active_days_for_hit_anyday", "run_diagnostics", "drop_invalid_cells",
)


def _section_run(run: _Run, page: _Page, manifest: dict | None, fit_info: dict) -> str:
    cfg = run.config
    load = run.json("load_summary.json")
    parts = ["<h2 id='run'>1. The run</h2>"]
    parts.append(_kv([
        ("run folder", str(run.out.resolve())),
        ("AnnData", cfg.adata_path or "–"),
        ("guide map", cfg.guide_map_csv or "–"),
        ("contrast", f"{cfg.contrast_fate} vs {cfg.ref_fate} (fates {', '.join(cfg.fates)})"),
    ]))
    if load is None:
        parts.append(page.missing("load summary", run.why_absent("load_summary.json", "load_summary.json not found")))
    else:
        page.shown("load summary")
        dropped = {k: v for k, v in (load.get("dropped") or {}).items() if v}
        per_cell = load.get("guides_per_cell") or {}
        per_gene = load.get("guides_per_gene") or {}
        unmapped, absent_map = load.get("unmapped_guides") or [], load.get("map_guides_absent") or []
        parts.append("<h3>Cells and guides</h3>")
        parts.append(_kv([
            ("cells", f"{load.get('n_cells_in')} in, {load.get('n_cells_kept')} kept"),
            ("dropped", "; ".join(f"{v} {k}" for k, v in dropped.items()) or "none"),
            *_dropped_cells(run),
            ("cells per day", ", ".join(f"{k}: {v}" for k, v in (load.get("cells_per_day") or {}).items())),
            ("guides per cell (NTCs count)", ", ".join(f"{k} {_num(v)}" for k, v in per_cell.items())),
            ("guides", f"{load.get('n_guides_matrix')} in the matrix; {load.get('n_guides_mapped')} targeting and "
                       f"{load.get('n_ntc_guides')} non-targeting mapped"),
            ("guides per gene", ", ".join(f"{k} {_num(v)}" for k, v in per_gene.items())),
            ("guides not in the map (ignored)", _count_and_names(unmapped)),
            ("map guides absent from the matrix", _count_and_names(absent_map)),
            ("fate names from", load.get("fate_names_source", "–")
             + (f"; {load['n_renormalised']} rows renormalised" if load.get("n_renormalised") else "")),
        ]))
    tips = {k: FatebiasConfig.model_fields[k].description or "" for k in _KEY_SETTINGS}
    half = (len(_KEY_SETTINGS) + 1) // 2
    versions = software_versions()
    parts.append(
        "<div class='row'><div><h3>Settings</h3><div class='row'>"
        + _kv([(k, _setting(getattr(cfg, k))) for k in _KEY_SETTINGS[:half]], tips)
        + _kv([(k, _setting(getattr(cfg, k))) for k in _KEY_SETTINGS[half:]], tips)
        + "</div></div><div><h3>Software</h3>"
        + _kv([(k, v) for k, v in versions.items()] + [("device of the fit", fit_info.get("device", "–"))])
        + _para("Versions of the environment that wrote this page.", "note")
        + "</div></div>"
    )
    text = run.path("config_used.yaml").read_text() if run.path("config_used.yaml").is_file() else cfg.to_yaml()
    parts.append(f"<details><summary>every setting (config_used.yaml)</summary><pre>{_e(text)}</pre></details>")
    parts.append("<h3>Steps and runtime</h3>")
    if manifest:
        page.shown("steps")
        rows = []
        for step, rec in manifest.items():
            metrics = ", ".join(f"{k} {_num(v) if isinstance(v, float) else v}" for k, v in (rec.get("metrics") or {}).items())
            rows.append((step, rec.get("finished", "–"), len(rec.get("outputs", [])), metrics or "–"))
        parts.append(_table(["step", "finished", "outputs", "metrics"], rows))
    else:
        parts.append(page.missing("steps", run.why_absent("fatebias_manifest.json", "fatebias_manifest.json not found: the steps that made this folder are unknown")))
    seconds = {
        "fit (SVI)": fit_info.get("runtime_s"),
        "posterior refinement": fit_info.get("laplace_runtime_s"),
        "diagnostics": (run.json("diagnostics.json") or {}).get("runtime_s"),
    }
    if any(v is not None for v in seconds.values()):
        parts.append(_para("Seconds: " + "; ".join(f"{k} {_num(v, '.1f')}" for k, v in seconds.items() if v is not None) + ".", "note"))
    page.shown("run")
    return "\n".join(parts)


def _dropped_cells(run: _Run, shown: int = 8) -> list[tuple[str, str]]:
    """The row naming dropped cells (``dropped_cells.csv``), when any were dropped."""
    table = run.csv("dropped_cells.csv", ["cell", "reason"], dtype={"cell": str, "reason": str})
    if table is None or table.empty:
        return []
    first = ", ".join(f"{c} ({r})" for c, r in zip(table["cell"][:shown], table["reason"][:shown], strict=True))
    more = f" ... (+{len(table) - shown} more)" if len(table) > shown else ""
    return [("dropped cells (dropped_cells.csv)", f"{len(table)}: {first}{more}")]


def _count_and_names(names: Sequence[str], shown: int = 8) -> str:
    if not names:
        return "0"
    return f"{len(names)}: {', '.join(names[:shown])}" + (" ..." if len(names) > shown else "")


def _setting(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def _section_fit(run: _Run, page: _Page, fit_info: dict) -> str:
    from fatebias_core.report.plots import plot_elbo

    parts = ["<h2 id='fit'>2. The fit</h2>"]
    if fit_info:
        page.shown("fit")
        conv = fit_info.get("steps_to_convergence")
        parts.append(_kv([
            ("steps", f"{fit_info.get('steps')} ({_num(fit_info.get('ms_per_step'), '.1f')} ms per step, batch {fit_info.get('batch_size')} of {fit_info.get('n_cells')} cells)"),
            ("converged", _badge(bool(fit_info.get("converged")), f"yes, at step {conv}" if fit_info.get("converged") else "no: consider more num_steps")),
            ("loss per cell (last window)", _num(fit_info.get("final_loss_per_cell"), ".5g")),
            ("likelihood weight", f"{_num(fit_info.get('likelihood_weight'), '.4g')} (dispersion {_num(fit_info.get('dispersion_final'), '.4g')})"),
            ("posterior", str(fit_info.get("posterior_method", "–"))
             + (f" (Newton converged: {fit_info.get('laplace_converged')}, {fit_info.get('laplace_newton_iterations')} iterations)" if "laplace_converged" in fit_info else "")),
        ]))
    else:
        parts.append(page.missing("fit", run.why_absent("fit/fit.json", "fit/fit.json not found")))
    elbo = run.csv("fit/elbo_trace.csv", ["loss"])
    if elbo is not None and len(elbo):
        page.shown("ELBO trace")
        loss = elbo["loss"].to_numpy(dtype=float)
        switch = fit_info.get("weight_switch_step")
        changes = _weight_steps(fit_info, run.config)
        marks = " and ".join(str(s + 1) for s in changes)
        caption = (
            "The loss SVI minimised (negative ELBO per cell) by step. With likelihood_weight: auto the first "
            f"{run.config.dispersion_warmup_frac:.0%} of the steps fit with weight 1; the weight is then set from the "
            f"dispersion of the fate probabilities, and re-estimated once more, at steps {marks} (dashed lines). Each "
            "change rescales the loss, so it jumps there; that is expected. The right panel shows the steps after the "
            "last change: the loss should fall and flatten."
            if changes else
            "The loss SVI minimised (negative ELBO per cell) by step; the right panel zooms into the second half. "
            "It should fall and flatten."
        )
        parts.append(page.figure(
            lambda p: plot_elbo(loss, p, n_cells=fit_info.get("n_cells"), switch_step=switch, weight_steps=changes),
            "ELBO trace", caption,
        ))
    else:
        parts.append(page.missing("ELBO trace", run.why_absent("fit/elbo_trace.csv", "fit/elbo_trace.csv not found")))
    parts.append("<h3>Held-out cross-entropy: full model vs nuisance only</h3>")
    parts.append(_para(
        "A fraction of cells is held out; the full model and a model without guide terms are fitted to the rest and "
        "predict the held-out cells' fate probabilities. Lower cross-entropy is better: where the guides carry "
        "signal, the full model must win.", "note"))
    parts.append(_heldout(run, page))
    return "\n".join(parts)


def _weight_steps(fit_info: dict, config: FatebiasConfig) -> list[int]:
    """Steps at which the likelihood weight changed (recorded by the fit, else derived from its settings)."""
    if fit_info.get("weight_update_steps") is not None:
        return [int(s) for s in fit_info["weight_update_steps"]]
    if fit_info.get("weight_switch_step") is None:
        return []
    steps = int(fit_info.get("steps") or config.num_steps)
    frac = float((fit_info.get("settings") or {}).get("dispersion_warmup_frac", config.dispersion_warmup_frac))
    warmup = max(1, int(steps * frac))
    return sorted({warmup, min(2 * warmup, steps - 1)})


def _diagnostics_part(run: _Run, page: _Page, part: str, label: str) -> tuple[dict | None, _Html | None]:
    diag = run.json("diagnostics.json")
    if diag is None:
        if "diagnostics.json" in run.problems:
            why = run.problems["diagnostics.json"]
        elif not run.config.run_diagnostics:
            why = "diagnostics were not run (run_diagnostics: false)"
        else:
            why = "diagnostics.json not found (fatebias diagnose --config C writes it)"
        return None, page.missing(label, why)
    if not diag.get(part):
        return None, page.missing(label, f"diagnostics.json has no {part} part (not run)")
    page.shown(label)
    return diag[part], None


def _heldout(run: _Run, page: _Page) -> str:
    h, missing = _diagnostics_part(run, page, "heldout", "held-out cross-entropy")
    if h is None:
        return missing
    better = bool(h.get("full_better"))
    rows = [
        ("held-out cells", f"{h.get('n_heldout')} (fraction {h.get('heldout_frac')}, {h.get('n_train')} cells trained on, {h.get('steps')} steps)"),
        ("cross-entropy, full model", _num(h.get("ce_full"), ".5f")),
        ("cross-entropy, nuisance only", _num(h.get("ce_nuisance"), ".5f")),
        ("difference (nuisance - full)", f"{_num(h.get('difference'), '.5f')} +/- {_num(h.get('difference_se'), '.5f')} (z = {_num(h.get('difference_z'), '.1f')})"),
        ("floor (entropy of the data)", _num(h.get("entropy_floor"), ".5f")),
        ("share of the excess over the floor removed", _num(h.get("explained_fraction"), ".1%")),
        ("verdict", _badge(better, "full model better" if better else "full model NOT better")),
    ]
    per_day = h.get("per_day") or []
    table = _table(["day", "cells", "full", "nuisance only", "difference"], [
        (d.get("day"), d.get("n_cells"), _num(d.get("ce_full"), ".5f"), _num(d.get("ce_nuisance"), ".5f"), _num(d.get("difference"), "+.5f"))
        for d in per_day
    ])
    return _kv(rows) + "<h4>per day</h4>" + table


def _effect_style(x: float, vmax: float) -> str:
    if not math.isfinite(x) or vmax <= 0:
        return ""
    a = min(abs(x) / vmax, 1.0) * 0.55
    rgb = "178,24,43" if x > 0 else "33,102,172"
    return f' style="background:rgba({rgb},{a:.2f})"'


def _hits_table(ans: _Answer, table_id: str) -> str:
    days = ans.day_labels
    n = min(len(ans.genes), MAX_TABLE_ROWS)
    best = ans.best_day()
    summary = ans.best()
    vmax = float(np.abs(ans.mean).max()) if ans.mean.size else 1.0
    prob = "dp" in summary.columns
    head = ["rank", "gene", "hit", "called days", "best day", "direction", "effect (logit, best day)", "90% CI (logit)"]
    head += [f"change in P({ans.fate}) at the day's baseline"] if prob else []
    head += ["lfsr (best day)", "max |effect|"]
    head += [f"{d}: effect, lfsr" for d in days]
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    hide = ans.n_hits > 0
    body = []
    for i in range(n):
        b = int(best[i])
        r = summary.iloc[i]
        m, s = ans.mean[i, b], ans.lfsr[i, b]
        called = _days_text(ans.hits["active_days"].iloc[i], ans.axis)
        biggest = float(np.abs(ans.mean[i]).max())
        cells = [
            f'<td class="n" data-v="{i + 1}">{i + 1}</td>',
            f"<td>{_e(ans.genes[i])}</td>",
            f'<td data-v="{int(ans.hit[i])}">{"yes" if ans.hit[i] else "no"}</td>',
            f"<td>{_e(called or '–')}</td>",
            f'<td data-v="{b}">{_e(days[b])}</td>',
            f"<td>{_e(r['direction'])}</td>",
            f'<td class="n" data-v="{m:.6g}"{_effect_style(m, vmax)}>{_signed(m)}</td>',
            f'<td class="n" data-v="{r["lo90"]:.6g}">[{_signed(r["lo90"], 2)}, {_signed(r["hi90"], 2)}]</td>',
        ]
        if prob:
            cells.append(
                f'<td class="n" data-v="{r["dp"]:.6g}" title="P({_e(ans.fate)}) {r["p_baseline"]:.3f} to {r["p_shifted"]:.3f}; '
                f'90% CI [{r["dp_lo90"]:+.3f}, {r["dp_hi90"]:+.3f}]">{_signed(r["dp"])}'
                f'<small>{r["p_baseline"]:.2f} &rarr; {r["p_shifted"]:.2f}, 90% CI [{_signed(r["dp_lo90"], 2)}, {_signed(r["dp_hi90"], 2)}]</small></td>'
            )
        cells += [
            f'<td class="n" data-v="{max(s, 1e-300):.6g}">{_e(_p(s))}</td>',
            f'<td class="n" data-v="{biggest:.6g}">{biggest:.3f}</td>',
        ]
        sig = np.where(ans.called[i], " sig", "")
        cells += [
            f'<td class="n day{c}" data-v="{x:.6g}"{_effect_style(x, vmax)}>{_signed(x)}<small>{_e(_p(q))}</small></td>'
            for x, q, c in zip(ans.mean[i], ans.lfsr[i], sig, strict=True)
        ]
        cls = "hit" if ans.hit[i] else "nohit"
        body.append(f'<tr class="{cls}"{" hidden" if hide and not ans.hit[i] else ""}>{"".join(cells)}</tr>')
    more = f" (first {MAX_TABLE_ROWS} of {len(ans.genes)} rows; all are in the CSV)" if len(ans.genes) > MAX_TABLE_ROWS else ""
    toggle = (
        f'<label class="toggle"><input type="checkbox" class="hits-only" data-table="{table_id}"{" checked" if hide else ""}> '
        f"show hits only ({ans.n_hits} of {len(ans.genes)} genes){_e(more)}</label>"
    )
    return (
        f"{toggle}<div class='scroll'><table class='grid sortable hits' id='{table_id}'><thead><tr>{th}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _section_hits(run: _Run, page: _Page, answers: dict[str, _Answer | None]) -> str:
    cfg = run.config
    ans = answers.get(cfg.contrast_fate)
    parts = ["<h2 id='hits'>3. The answer: which knockdowns shift fate, on which day</h2>"]
    n_days = len(ans.axis) if ans is not None else 0
    anyday = cfg.mash_lfsr_thresh_anyday / (n_days if cfg.mash_anyday_correction == "bonferroni" and n_days else 1)
    parts.append(_para(
        f"Each contrast compares a fate with the reference fate {cfg.ref_fate}. An effect is the posterior mean shift, on "
        f"the logit scale, that a gene's knockdown gives the contrast fate against {cfg.ref_fate}: positive means cells "
        f"carrying the gene's guides lean towards the contrast fate on that day, negative towards {cfg.ref_fate}. The "
        "change in probability translates the effect to the day's baseline (the mean probability of the fate among the "
        "day's cells): P1 = P0 e^effect / (1 - P0 + P0 e^effect). 90% CI: posterior mean +/- 1.645 SD. lfsr (local false "
        f"sign rate) is the probability that the sign is wrong: small is sure. A day is called when lfsr < "
        f"{cfg.mash_lfsr_thresh_day:g} and P(|effect| >= {cfg.effect_size_eps:g}) >= {cfg.effect_prob_large_min:g}; a gene "
        f"is a hit when at least {cfg.min_active_days_for_hit_anyday} day passes with lfsr < {anyday:.3g} "
        f"({cfg.mash_anyday_correction} correction). Click a column header to sort.", "note"))
    links = [f"<a href='#contrast-{_e(fate)}'>{_e(fate)} vs {_e(cfg.ref_fate)}</a>" for fate in cfg.contrast_fates]
    if len(links) > 1:
        parts.append(_Html("<p class='note'>Contrasts: " + " &middot; ".join(links) + "</p>"))
    for k, fate in enumerate(cfg.contrast_fates):
        parts.append(_contrast(run, page, fate, answers.get(fate), primary=k == 0))
    return "\n".join(parts)


def _contrast(run: _Run, page: _Page, fate: str, ans: _Answer | None, primary: bool) -> str:
    """One contrast's hits table, heatmap, volcano plots and guide concordance."""
    from fatebias_core.report.plots import plot_effect_heatmap, plot_volcano

    cfg = run.config
    label = f"{fate} vs {cfg.ref_fate}"
    sfx = "" if primary else f" ({fate})"
    parts = [f"<h3 id='contrast-{_e(fate)}'>{_e(label)}{' (primary contrast)' if primary else ''}</h3>"]
    name = "hits_ranked.csv" if primary else f"mash_gene_{cfg.mash_default_mode}{cfg.file_suffix(fate)}.csv"
    if ans is None:
        why = "hits_ranked.csv not found: the chain did not reach hit calling" if primary else f"{name} not found"
        parts.append(page.missing(f"hits{sfx}", run.why_absent(name, why)))
        return "\n".join(parts)
    page.shown(f"hits table{sfx}")
    parts.append(_para(f"{ans.n_hits} hits of {len(ans.genes)} genes. Effects from {ans.effects_from}"
                       + ("" if ans.baseline is not None else "; no per-day baseline in load_summary.json, so no probability scale") + ".", "note"))
    parts.append(_hits_table(ans, f"hits-table-{fate}"))
    top = ans.top_rows(HEATMAP_MIN_ROWS, HEATMAP_MAX_ROWS)
    genes = [str(g) for g in ans.genes[top]]
    if len(top):
        page.shown(f"effect heatmap{sfx}")
        parts.append(f"<h4>Effects by gene and day: {_e(label)}</h4>")
        parts.append(page.figure(
            lambda p: plot_effect_heatmap(
                ans.mean[top], ans.lfsr[top], genes, ans.day_labels, p, called=ans.called[top], emphasise=ans.hit[top],
                title=f"{label}: top {len(top)} genes by rank", dpi=FIG_DPI),
            f"heatmap of effects, {label}",
            f"Posterior mean effect (logit scale; red: towards {fate}, blue: towards {cfg.ref_fate}) of the {len(top)} "
            "top-ranked genes (hits in bold, other top-ranked genes grey). Stars: lfsr < 0.05 (*), < 0.01 (**), "
            "< 0.001 (***); boxed cells are called days.",
        ))
        page.shown(f"volcano plots{sfx}")
        parts.append(f"<h4>Per-day volcano plots: {_e(label)}</h4>")
        parts.append(page.figure(
            lambda p: plot_volcano(
                ans.mean, ans.lfsr, ans.day_labels, p, called=ans.called, genes=[str(g) for g in ans.genes],
                sd=ans.sd, lfsr_thresh=cfg.mash_lfsr_thresh_day, eps=cfg.effect_size_eps,
                fate=fate, ref=cfg.ref_fate, dpi=FIG_DPI),
            f"volcano plots, {label}",
            "Every gene on every day: effect against -log10 lfsr (a log scale, so that strong hits stay apart). "
            f"Called gene-days are coloured (red: towards {fate}, blue: towards {cfg.ref_fate}) and named; dashed line: "
            f"the lfsr threshold; dotted lines: +/- {cfg.effect_size_eps:g}. Triangles: lfsr below 1e-300 (it "
            "underflows), drawn at 300 or, where higher, at the normal approximation -log10 P(Z > |mean| / SD).",
        ))
    parts.append(f"<h4>Guide concordance of the top hits: {_e(label)}</h4>")
    parts.append(_concordance(run, page, ans, fate, sfx))
    return "\n".join(parts)


def _concordance(run: _Run, page: _Page, ans: _Answer, fate: str, sfx: str = "") -> str:
    from fatebias_core.report.plots import plot_guide_concordance

    cfg = run.config
    part = f"guide concordance{sfx}"
    name = f"mash_guide_{cfg.mash_default_mode}{cfg.file_suffix(fate)}.csv"
    guides = run.csv(name, ["guide", "gene"], dtype={"gene": str, "guide": str})
    if guides is None:
        return page.missing(part, run.why_absent(name, f"{name} not found: no guide-level posterior to compare"))
    try:
        gpost = read_posterior(guides, what=name)
    except FatebiasError as exc:
        return page.missing(part, str(exc))
    if gpost.axis.labels != ans.axis.labels:
        return page.missing(part, f"{name} has days {list(gpost.axis.labels)}, the hits {ans.day_labels}")
    n = min(ans.n_hits, CONCORDANCE_GENES) or min(4, len(ans.genes))
    top = np.arange(n)
    guide_gene = guides["gene"].astype(str).to_numpy()
    best = ans.best_day()[top]
    rows, titles = [], []
    for i, b in zip(top, best, strict=True):
        sel = guide_gene == ans.genes[i]
        g_eff = gpost.postmean[sel, b]
        sign = np.sign(ans.mean[i, b])
        agree = int((np.sign(g_eff) == sign).sum()) if sign != 0 else 0
        titles.append(f"{ans.genes[i]}: {agree}/{sel.sum()} guides agree on {ans.day_labels[b]}")
        rows.append((
            ans.genes[i], ans.day_labels[b], _signed(ans.mean[i, b]), f"{agree} of {int(sel.sum())}",
            ", ".join(_signed(x, 2) for x in g_eff) or "–",
            f"{g_eff.std():.3f}" if len(g_eff) > 1 else "–",
        ))
    page.shown(part)
    head = "" if ans.n_hits else _para(f"No hits: showing the {n} top-ranked genes.", "note")
    fig = page.figure(
        lambda p: plot_guide_concordance(
            [str(g) for g in ans.genes[top]], ans.day_labels, ans.mean[top], ans.sd[top], guide_gene, gpost.postmean, p,
            titles=titles, dpi=FIG_DPI),
        f"guide concordance, {fate} vs {cfg.ref_fate}",
        f"Each panel: the gene's posterior mean +/- 2 SD (black, grey band) and the mash posterior means of its guides "
        f"({name}, orange). Concordant guides move together with the gene; one guide far from the others suggests an "
        "off-target or inefficient guide.",
    )
    table = _table(["gene", "best day", "gene effect", "guides with the gene's sign", "guide effects that day", "guide SD"], rows)
    return head + fig + table


def _section_trust(run: _Run, page: _Page) -> str:
    parts = ["<h2 id='trust'>4. Can we trust it?</h2>"]
    parts.append("<h3>QC: guide deviations and theta-beta offsets</h3>")
    parts.append(_qc(run, page))
    parts.append("<h3>Calibration on this data: non-targeting pseudo-genes</h3>")
    parts.append(_ntc(run, page))
    parts.append("<h3>Permutation negative control</h3>")
    parts.append(_permutation(run, page))
    parts.append("<h3>Sanity checks: known regulators</h3>")
    parts.append(_sanity(run, page))
    parts.append("<h3>mash modes: conservative vs enriched</h3>")
    parts.append(_modes(run, page))
    parts.append("<h3 id='recovery'>Simulation: recovery of the truth</h3>")
    parts.append(_recovery(run, page))
    parts.append("<h3>Calibration</h3>")
    parts.append(_calibration(run, page))
    return "\n".join(parts)


def _qc(run: _Run, page: _Page) -> str:
    from fatebias_core.report.plots import plot_qc_offsets

    cfg = run.config
    tol = cfg.qc_offset_tol
    values: dict[str, list[np.ndarray]] = {"mean guide deviation per gene": [], "theta - mean beta per gene and day": []}
    rows, missing = [], []
    for fate in cfg.contrast_fates:
        sfx = cfg.file_suffix(fate)
        for key, name, cols in (
            ("mean guide deviation per gene", f"qc_delta_mean_by_gene{sfx}.csv", ["mean_delta"]),
            ("theta - mean beta per gene and day", f"qc_theta_beta_offset_by_gene{sfx}.csv", None),
        ):
            df = run.csv(name, cols or [])
            if df is None:
                missing.append(run.why_absent(name, f"{name} not found"))
                continue
            v = df[cols or [c for c in df.columns if str(c).startswith("offset_")]].to_numpy(dtype=float)
            values[key].append(v.ravel())
            worst = float(np.nanmax(np.abs(v))) if v.size else float("nan")
            rows.append((name, v.size, _num(worst, ".2g"), int((np.abs(v) > tol).sum()),
                         _badge(bool(worst <= tol), "within tolerance" if worst <= tol else "above tolerance")))
    if not rows:
        return page.missing("QC offsets", "; ".join(missing) or "no QC files")
    page.shown("QC offsets")
    data = {k: np.concatenate(v) for k, v in values.items() if v}
    text = _para(
        "Two identities that hold by construction: each gene's guide deviations average to zero, so a gene's effect "
        f"equals the mean of its guides' effects. Values should be at rounding level (tolerance {tol:g}); a value above "
        "it points to a numerical problem in the fit or the export.", "note")
    fig = page.figure(lambda p: plot_qc_offsets(data, tol, p, dpi=FIG_DPI), "QC offsets")
    return text + fig + _table(["file", "values", "max |value|", "above tolerance", ""], rows)


def _ntc(run: _Run, page: _Page) -> str:
    from fatebias_core.report.plots import plot_ntc_qq

    n, missing = _diagnostics_part(run, page, "ntc_calibration", "NTC calibration check")
    if n is None:
        return missing
    table = run.csv("ntc_calibration.csv", ["z_model", "z_robust"])
    head, mod, rob = n.get("headline") or {}, n.get("model") or {}, n.get("cluster_robust") or {}
    ok = n.get("calibrated")
    rows = [
        ("verdict", _badge(None if ok is None else bool(ok),
                           "calibrated: NTC z-scores look like N(0, 1)" if ok else f"NOT calibrated: SD above {n.get('sd_warn')}")),
        (f"SD of z ({n.get('uncertainty')}, the run's intervals)", f"{_num(head.get('sd'), '.2f')} (expected 1)"),
        ("share beyond +/-1.96", f"{_num(head.get('beyond_1.96'), '.3f')} (expected 0.05)"),
        ("SD of z, model-based SE", _num(mod.get("sd"), ".2f")),
        ("SD of z, cluster-robust SE", _num(rob.get("sd"), ".2f")),
        ("pseudo-genes", f"{n.get('n_pseudo_genes')} of {n.get('pseudo_gene_size')} NTC guides each "
                         f"(from {n.get('n_ntc_guides')} NTC guides), {head.get('n')} pseudo-gene/days x contrasts"),
        ("independent units (clones)", n.get("n_clusters")),
    ]
    text = _para(
        "Non-targeting guides have no effect. Grouped at random into pseudo-genes the size of a gene's guide set and "
        "tested like genes, their z-scores should follow N(0, 1): SD 1, 5% beyond +/-1.96. An SD above 1 means the "
        "standard errors are too small for this data (cells that are not independent: clones, smoothed fate "
        "probabilities), and calls would be too many. The model-based SE trusts the likelihood; the cluster-robust SE "
        "treats clones as the independent units.", "note")
    fig = "" if table is None else page.figure(lambda p: plot_ntc_qq(table, p, dpi=FIG_DPI), "NTC QQ plot",
                                                "NTC pseudo-gene z-scores against N(0, 1) quantiles (dashed: calibrated).")
    return text + fig + _kv(rows)


def _permutation(run: _Run, page: _Page) -> str:
    p, missing = _diagnostics_part(run, page, "permutation", "permutation control")
    if p is None:
        return missing
    passed = p.get("passed")
    real = p.get("n_hits_real")
    by_mode = ", ".join(f"{m}: {n}" for m, n in (p.get("hits_by_mode") or {}).items())
    hit_genes = p.get("hit_genes") or []
    rows = [
        ("hits, real data", "–" if real is None else real),
        ("hits, guide sets permuted", f"{p.get('n_hits')} of {p.get('n_genes')} genes ({p.get('n_gene_days_called')} gene-days called)"),
        ("hits by mash mode (permuted)", by_mode or "–"),
        ("allowed (5% of real hits, at least 1)", p.get("allowed_hits", "–")),
        ("verdict", _badge(None if passed is None else bool(passed), "passed: hits collapse" if passed else "FAILED: hits survive permutation")),
        ("permuted hits", ", ".join(hit_genes[:30]) + (" ..." if len(hit_genes) > 30 else "") or "none"),
        ("permutation", f"clones' guide sets within {p.get('n_strata')} strata of replicate x burden bin ({p.get('n_burden_bins')} bins), "
                        f"{p.get('n_cells_moved')} cells moved ({p.get('n_cells_burden_changed', '–')} with a new burden), seed {p.get('seed')}"),
    ]
    text = _para(
        "Guide sets are shuffled among clones of the same replicate and guide burden (every cell of a clone gets the same set, so clones stay intact), which keeps everything but "
        "the link between guides and fate; the whole chain is rerun on the shuffled data. Any hit there is a false "
        "positive.", "note")
    return text + _kv(rows)


def _sanity(run: _Run, page: _Page) -> str:
    s, missing = _diagnostics_part(run, page, "sanity", "sanity checks")
    if s is None:
        return missing
    checks = s.get("checks") or []
    if not checks:
        page.sections.remove("sanity checks")
        return page.missing("sanity checks", s.get("note") or "no known_regulators configured")
    rows = []
    for c in checks:
        best = c.get("best_day")
        mean = (c.get("postmean") or {}).get(best) if best else None
        rows.append((c.get("gene"), f"{c.get('expected_sign'):+d}", _badge(bool(c.get("passed")), c.get("status", "–")),
                     best or "–", _p(c.get("min_lfsr")), "–" if mean is None else _signed(mean), ", ".join(c.get("significant_days") or []) or "–"))
    text = _para(f"Known regulators (known_regulators) against the gene posterior ({s.get('source')}; lfsr from "
                 f"{s.get('lfsr_from')}): a check passes when a day has lfsr < {s.get('lfsr_thresh')} and every such "
                 "day has the expected sign.", "note")
    note = _para(s["note"], "note") if s.get("note") else ""
    return text + _table(["gene", "expected sign", "status", "best day", "lfsr", "effect", "significant days"], rows) + note


def _modes(run: _Run, page: _Page) -> str:
    from fatebias_core.report.plots import plot_mode_comparison

    cmp_ = run.csv("mash_mode_comparison.csv", ["mode", "n_rows", "n_hits", "n_shared_hits", "jaccard_hits"])
    if cmp_ is None or cmp_.empty:
        return page.missing("mode comparison", run.why_absent("mash_mode_comparison.csv", "mash_mode_comparison.csv not found"))
    page.shown("mode comparison")
    rows = [
        (r["mode"], r["n_rows"], r["n_hits"], _score(r.get("median_score")), _num(r.get("median_n_active_days"), ".2g"),
         _num(r.get("n_shared_hits"), ".0f"), _num(r.get("jaccard_hits"), ".2f"),
         f"{_num(r.get('top_overlap'), '.0f')} of {_num(r.get('top_n'), '.0f')}")
        for r in cmp_.to_dict("records")
    ]
    text = _para(
        f"The hits come from the {run.config.mash_default_mode} mode. The enriched mode uses a flatter prior and "
        "data-driven covariances, so it usually calls more; hits that both modes call are the most robust.", "note")
    fig = page.figure(lambda p: plot_mode_comparison(cmp_, p, dpi=FIG_DPI), "mode comparison")
    table = _table(["mode", "genes", "hits", "median -log10 lfsr", "median called days", "shared hits", "Jaccard", "top-N overlap"], rows)
    return text + fig + table


def _score(x: Any) -> str:
    """A -log10 lfsr score: ``>= 300`` at the cap where lfsr underflows."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return ">= 300" if v >= 300 else _num(v, ".3g")


def _recovery(run: _Run, page: _Page) -> str:
    from fatebias_core.report.plots import plot_recovery

    conf = run.csv("daywise_confusion.csv", ["level", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "fpr"])
    if conf is None or conf.empty:
        return page.missing("recovery", run.why_absent(
            "daywise_confusion.csv", "no daywise_confusion.csv: not a simulation scored against its truth (fatebias demo, or fatebias evaluate, writes it)"))
    page.shown("recovery")
    summary = run.json("pred_call_summary.json") or {}
    counts = summary.get("counts") or {}
    text = _para(
        "The data were simulated with known effects; a gene-day is truly active when |true effect| > "
        f"{summary.get('truth_thresh', '–')} ({counts.get('n_true_active_gene_days', '–')} gene-days, "
        f"{counts.get('n_true_active_genes', '–')} genes). Rows: each day, all gene-days pooled (overall), and genes "
        "called on any day (anyday).", "note")
    fig = page.figure(lambda p: plot_recovery(conf, p, dpi=FIG_DPI), "recovery of the truth")
    rows = [(r["level"], r["tp"], r["fp"], r["fn"], r["tn"], _num(r["precision"], ".3f"), _num(r["recall"], ".3f"),
             _num(r["f1"], ".3f"), _num(r["fpr"], ".3f")) for r in conf.to_dict("records")]
    return text + fig + _table(["level", "TP", "FP", "FN", "TN", "precision", "recall", "F1", "FPR"], rows)


def _calibration(run: _Run, page: _Page) -> str:
    from fatebias_core.report.plots import plot_calibration_coverage, plot_calibration_fsr

    summ = run.csv("calibration_summary.csv", ["metric", "source", "group", "method", "scenario", "level", "value"])
    if summ is None or summ.empty:
        return page.missing("calibration", run.why_absent(
            "calibration_summary.csv", "no calibration study in this folder (fatebias calibrate --out DIR runs one)"))
    page.shown("calibration")
    out = []
    if (summ["metric"] == "coverage").any():
        out.append(page.figure(lambda p: plot_calibration_coverage(summ, p), "interval coverage",
                               "Coverage of the credible intervals against their nominal level (dashed: perfect)."))
    if (summ["metric"] == "fsr").any():
        out.append(page.figure(lambda p: plot_calibration_fsr(summ, p), "false sign rate",
                               "Realised false sign rate of lfsr calls against the threshold (dashed: the threshold)."))
    return "".join(out)


def _glance(run: _Run, answers: dict[str, _Answer | None], fit_info: dict) -> str:
    load = run.json("load_summary.json") or {}
    diag = run.json("diagnostics.json") or {}
    cards = []

    def card(title: str, value: str, sub: str = "", ok: bool | None = None) -> None:
        cls = "" if ok is None else " ok" if ok else " bad"
        cards.append(f'<div class="card{cls}"><div class="ct">{_e(title)}</div><div class="cv">{_e(value)}</div>'
                     f'<div class="cs">{_e(sub)}</div></div>')

    for fate, ans in answers.items():
        title = f"hits: {fate} vs {run.config.ref_fate}"
        if ans is not None:
            top = ", ".join(str(g) for g in ans.genes[ans.hit][:6]) + (" ..." if ans.n_hits > 6 else "")
            card(title, f"{ans.n_hits} of {len(ans.genes)} genes", top or "no gene passes the calls")
        else:
            card(title, "–", "no hits table")
    if load:
        card("cells", f"{load.get('n_cells_kept')} kept", f"of {load.get('n_cells_in')}; {len(load.get('cells_per_day') or {})} days")
    if fit_info:
        card("fit", "converged" if fit_info.get("converged") else "not converged",
             f"{fit_info.get('steps')} steps, {fit_info.get('posterior_method', '')} posterior", bool(fit_info.get("converged")))
    h = diag.get("heldout")
    if h:
        card("held-out fit", "full model better" if h.get("full_better") else "full model not better",
             f"z = {_num(h.get('difference_z'), '.1f')}", bool(h.get("full_better")))
    n = diag.get("ntc_calibration")
    if n:
        head = n.get("headline") or {}
        card("NTC calibration", f"z SD {_num(head.get('sd'), '.2f')}",
             f"{_num(head.get('beyond_1.96'), '.3f')} beyond +/-1.96 (expected 1 and 0.05)", bool(n.get("calibrated")))
    p = diag.get("permutation")
    if p:
        card("negative control", "passed" if p.get("passed") else "FAILED", f"{p.get('n_hits')} hits after permutation", bool(p.get("passed")))
    summary = run.json("pred_call_summary.json")
    if summary:
        scores = (summary.get("scores") or {}).get("anyday") or {}
        card("recovery (simulation)", f"F1 {_num(scores.get('f1'), '.2f')}",
             f"precision {_num(scores.get('precision'), '.2f')}, recall {_num(scores.get('recall'), '.2f')} (any day)")
    return f'<div class="cards">{"".join(cards)}</div>'


# --------------------------------------------------------------------------- page
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:0 24px 48px;background:#fff}
header{padding:20px 0 8px;border-bottom:1px solid #ddd}
h1{font-size:22px;margin:0 0 4px}h2{font-size:19px;margin:36px 0 8px;padding-top:8px;border-top:2px solid #333}
h3{font-size:16px;margin:24px 0 6px}h4{font-size:14px;margin:12px 0 4px}
nav{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #eee;z-index:2}
nav a{margin-right:18px;color:#1f5fa8;text-decoration:none;font-weight:600}
.sub{color:#666;font-size:13px}.note{color:#555;font-size:13px;max-width:900px}
.absent{color:#777;font-style:italic;font-size:13px;border-left:3px solid #ccc;padding-left:8px}
.row{display:flex;flex-wrap:wrap;gap:8px 48px;align-items:flex-start}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:10px 14px;min-width:150px;background:#fcfcfc}
.card.ok{border-left:5px solid #2e7d32}.card.bad{border-left:5px solid #c62828}
.ct{font-size:12px;color:#666;text-transform:uppercase;letter-spacing:.04em}.cv{font-size:18px;font-weight:600}
.cs{font-size:12px;color:#555;max-width:260px}
table{border-collapse:collapse;font-size:13px;margin:6px 0 10px}
table.kv th{text-align:left;font-weight:600;padding:3px 14px 3px 0;vertical-align:top;color:#333;white-space:nowrap}
table.kv td{padding:3px 0}
table.grid th,table.grid td{border:1px solid #e2e2e2;padding:3px 7px;text-align:left;max-width:640px}
table.grid td.n{text-align:right;font-variant-numeric:tabular-nums}table.grid td.n,table.hits td{white-space:nowrap}
td small{display:block;font-size:11px;color:#444}td.day.sig{font-weight:700}td.day.sig small{color:#000}
table.grid thead th{background:#f0f0f0;position:sticky;top:0}
table.sortable th{cursor:pointer;user-select:none;white-space:normal;vertical-align:bottom;min-width:44px}table.sortable th:hover{background:#e4e4e4}
table.sortable th.asc::after{content:" \\25B2"}table.sortable th.desc::after{content:" \\25BC"}
tr.hit td:nth-child(2){font-weight:600}
.scroll{max-height:640px;overflow:auto;border:1px solid #eee}
.badge{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;font-weight:600}
.badge.ok{background:#e3f1e4;color:#1b5e20}.badge.bad{background:#fde4e4;color:#b71c1c}.badge.na{background:#eee;color:#555}
figure{margin:10px 0 16px}figure img{max-width:100%;height:auto;border:1px solid #f0f0f0}
figcaption{color:#555;font-size:13px;max-width:900px}
pre{background:#f6f6f6;padding:10px;font-size:12px;max-height:360px;overflow:auto}
.toggle{font-size:13px;display:block;margin:6px 0}
footer{color:#777;font-size:12px;margin-top:36px;border-top:1px solid #eee;padding-top:8px}
"""

# Sort by clicking a header (numbers by their data-v value, text otherwise); toggle non-hits.
_JS = """
document.querySelectorAll('table.sortable').forEach(function(t){
  t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
    var asc=!th.classList.contains('asc');
    t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});
    th.classList.add(asc?'asc':'desc');
    var key=function(r){var c=r.cells[i],v=c.dataset.v!==undefined?c.dataset.v:c.textContent,n=parseFloat(v);
      return isNaN(n)?v.toLowerCase():n;};
    var rows=Array.prototype.slice.call(t.tBodies[0].rows);
    rows.sort(function(a,b){var x=key(a),y=key(b);
      if(typeof x!==typeof y){x=String(x);y=String(y);}
      return (x<y?-1:x>y?1:0)*(asc?1:-1);});
    rows.forEach(function(r){t.tBodies[0].appendChild(r);});
  });});
});
document.querySelectorAll('input.hits-only').forEach(function(only){only.addEventListener('change',function(){
  document.querySelectorAll('#'+only.dataset.table+' tbody tr.nohit').forEach(function(r){r.hidden=only.checked;});});});
"""


def _resolve_config(out: Path, config: FatebiasConfig | None) -> FatebiasConfig:
    from fatebias_core.config import load_config, make_config

    if config is not None:
        return config
    used = out / "config_used.yaml"
    return load_config(used) if used.is_file() else make_config()


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
    if not out.is_dir():
        raise InputDataError(f"{out} is not a folder")
    if not (out / "fatebias_manifest.json").is_file() and not (out / "config_used.yaml").is_file():
        raise InputDataError(
            f"{out} is not a fatebias run folder (no fatebias_manifest.json or config_used.yaml); "
            "run `fatebias run --config C` first"
        )
    cfg = _resolve_config(out, config)
    run = _Run(out, cfg)
    manifest = (run.json("fatebias_manifest.json") or {}).get("steps")
    fit_meta = run.json("fit/fit.json") or {}
    fit_info = fit_meta.get("info") or {}
    answers = {fate: _answer(run, fate) for fate in cfg.contrast_fates}
    with tempfile.TemporaryDirectory(prefix="fatebias_report_") as tmp:
        page = _Page(Path(tmp))
        body = [
            _glance(run, answers, fit_info),
            _section_run(run, page, manifest, fit_info),
            _section_fit(run, page, fit_info),
            _section_hits(run, page, answers),
            _section_trust(run, page),
        ]
    title = f"fatebias report: {cfg.contrast_fate} vs {cfg.ref_fate}"
    stamp = time.strftime("%Y-%m-%d %H:%M")
    from fatebias_core import __version__

    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title><style>{_CSS}</style></head>
<body><main>
<header><h1>{_e(title)}</h1><div class="sub">{_e(str(out.resolve()))} &middot; written {_e(stamp)} by fatebias {_e(__version__)}</div></header>
<nav><a href="#run">Run</a><a href="#fit">Fit</a><a href="#hits">Hits</a><a href="#trust">Trust</a></nav>
{"".join(body)}
<footer>Every number on this page comes from the files of the run folder (hits_ranked.csv, mash_*.csv, diagnostics.json, ...);
see the README's Outputs table for their columns.</footer>
</main><script>{_JS}</script></body></html>
"""
    path = write_text(doc, out / REPORT_FILE)
    result = ReportResult(
        path=path, size_bytes=path.stat().st_size, sections=page.sections, absent=page.absent,
        n_figures=page.n_figures, runtime_s=time.perf_counter() - t0,
    )
    log.debug(result.describe())
    return result
