"""What a person reads in the UI for each materialization: counts, plots, top hits, QC.

Every function reads the step's result or its files (so a reused step shows the same
numbers as the run that made it) and returns Dagster metadata.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.io import layout as run_files
from fatebias_core.types import GuideEmbedding, LoadSummary

MD = dg.MetadataValue


def _rows(path: Path) -> int:
    """Data rows of a CSV file (lines minus the header)."""
    with open(path, "rb") as fh:
        return max(sum(1 for _ in fh) - 1, 0)


def row_counts(paths: Iterable[Path]) -> dict[str, int]:
    """Rows of each CSV among ``paths``, by file name."""
    return {p.name: _rows(p) for p in paths if p.suffix == ".csv" and p.exists()}


def image_markdown(path: Path, alt: str) -> MD:
    """A PNG embedded in Markdown (the UI shows it inline)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return MD.md(f"![{alt}](data:image/png;base64,{data})")


def rounded(x: Any, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (NaN stays NaN; None, JSON's null, is NaN), for numbers shown in the UI."""
    v = float("nan") if x is None else float(x)
    if not np.isfinite(v) or v == 0:
        return v
    return float(f"{v:.{digits}g}")


def round_tree(obj: Any, digits: int = 4) -> Any:
    """Every float in a JSON-like structure rounded to ``digits`` significant digits."""
    if isinstance(obj, dict):
        return {k: round_tree(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_tree(v, digits) for v in obj]
    if isinstance(obj, float | np.floating):
        return rounded(obj, digits)
    return obj


def markdown_table(df: pd.DataFrame, max_rows: int = 10, digits: int = 3) -> str:
    """The first rows of ``df`` as a Markdown table, numbers rounded."""
    shown = df.head(max_rows).copy()
    for col in shown.columns:
        if pd.api.types.is_float_dtype(shown[col]):
            shown[col] = shown[col].map(lambda x: "" if pd.isna(x) else f"{x:.{digits}g}")
    return shown.to_markdown(index=False)


def load_metadata(summary: LoadSummary, config: FatebiasConfig) -> dict[str, Any]:
    """Cells in and kept, drops by reason, cells per day, guide counts."""
    return {
        "cells in": MD.int(summary.n_cells_in),
        "cells kept": MD.int(summary.n_cells_kept),
        "dropped": MD.json({k: int(v) for k, v in summary.dropped.items()}),
        "dropped cells listed in": MD.path(run_files.DROPPED_CELLS),
        "cells per day": MD.json(summary.cells_per_day),
        "Kmax": MD.int(config.Kmax),
        "fate names from": MD.text(summary.fate_names_source),
        "loading summary": MD.md(f"```\n{summary.format()}\n```"),
    }


def guides_metadata(guides: GuideEmbedding, summary: LoadSummary) -> dict[str, Any]:
    """Guides, genes, padding width and guides per cell."""
    per_cell = guides.mask.sum(axis=1)
    return {
        "targeting guides": MD.int(guides.n_guides),
        "genes": MD.int(guides.n_genes),
        "NTC guides": MD.int(summary.n_ntc_guides),
        "Kmax (padded width)": MD.int(guides.kmax),
        "guides per cell (mean)": MD.float(round(float(per_cell.mean()), 3)) if per_cell.size else MD.float(0.0),
        "guides per gene": MD.json(round_tree(summary.guides_per_gene, 3)),
    }


def fit_metadata(info: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
    """Steps, convergence, loss, speed, device and the ELBO plot."""
    md: dict[str, Any] = {
        "steps": MD.int(int(info.get("steps", 0))),
        "converged": MD.bool(bool(info.get("converged"))),
        "final loss per cell": MD.float(rounded(info.get("final_loss_per_cell", float("nan")), 5)),
        "ms per step": MD.float(rounded(info.get("ms_per_step", float("nan")), 3)),
        "likelihood weight": MD.float(rounded(info.get("likelihood_weight", float("nan")), 4)),
        "device": MD.text(str(info.get("device", ""))),
        "posterior": MD.text(str(info.get("posterior_method", "meanfield"))),
    }
    plot = out_dir / run_files.ELBO_FIGURE
    if plot.exists():
        md["ELBO"] = image_markdown(plot, "ELBO trace")
    return md


def export_metadata(files: Mapping[str, Mapping[str, Path]], primary: str) -> dict[str, Any]:
    """Rows of the daywise tables and the QC offsets (which should be ~0) per contrast."""
    md: dict[str, Any] = {}
    paths = files[primary]
    md["genes"] = MD.int(_rows(paths["gene_daywise"]))
    md["guides"] = MD.int(_rows(paths["guide_daywise"]))
    qc = {}
    for fate, p in files.items():
        delta = pd.read_csv(p["qc_delta"])["mean_delta"].to_numpy(dtype=float)
        offset = pd.read_csv(p["qc_offset"]).filter(like="offset_").to_numpy(dtype=float)
        qc[fate] = {
            "max_abs_mean_delta": float(np.nanmax(np.abs(delta))) if delta.size else 0.0,
            "max_abs_theta_beta_offset": float(np.nanmax(np.abs(offset))) if offset.size else 0.0,
        }
    md["QC offsets"] = MD.json(round_tree(qc, 3))
    md["files"] = MD.json(sorted(p.name for f in files.values() for p in f.values()))
    return md


def significant_rows(path: Path, thresh: float) -> int:
    """Rows of a mash table whose smallest lfsr is below ``thresh``."""
    df = pd.read_csv(path)
    col = "lfsr_min" if "lfsr_min" in df.columns else None
    if col is None:
        lfsr = df.filter(regex=r"^lfsr").to_numpy(dtype=float)
        return int((np.nanmin(lfsr, axis=1) < thresh).sum()) if lfsr.size else 0
    return int((df[col].to_numpy(dtype=float) < thresh).sum())


def mash_metadata(files: Mapping[tuple[str, str, str], Path], thresh: float, messages: list[str]) -> dict[str, Any]:
    """Per table: rows, and rows with any day's lfsr below the day threshold."""
    table = pd.DataFrame(
        [
            {"level": level, "mode": mode, "fate": fate, "rows": _rows(p), f"lfsr < {thresh:g}": significant_rows(p, thresh)}
            for (level, mode, fate), p in files.items()
        ]
    )
    md = {"tables": MD.md(markdown_table(table, max_rows=len(table)))}
    if messages:
        md["messages"] = MD.md("\n".join(f"* {m}" for m in messages))
    return md


def aggregate_metadata(paths: Mapping[str, Path]) -> dict[str, Any]:
    """Genes and any-day hits of each mode's aggregated table."""
    md: dict[str, Any] = {}
    for mode, p in paths.items():
        df = pd.read_csv(p, usecols=["gene", "hit_anyday"])
        md[f"{mode}: genes"] = MD.int(len(df))
        md[f"{mode}: hits"] = MD.int(int(df["hit_anyday"].astype(bool).sum()))
    return md


TOP_COLUMNS = ("gene", "hit_anyday", "active_days", "best_day", "min_lfsr_among_active", "max_abs_postmean")


def rank_metadata(hits: pd.DataFrame, comparison: pd.DataFrame, mode: str) -> dict[str, Any]:
    """Number of hits, the top hits as a Markdown table and the mode comparison."""
    n_hits = int(hits["hit_anyday"].astype(bool).sum())
    from fatebias_core.discovery.answer import lfsr_text

    top = hits[[c for c in TOP_COLUMNS if c in hits.columns]].copy()
    if "min_lfsr_among_active" in top.columns:
        top["min_lfsr_among_active"] = top["min_lfsr_among_active"].map(lfsr_text)
    return {
        "hits": MD.int(n_hits),
        "genes ranked": MD.int(len(hits)),
        "mode": MD.text(mode),
        "top hits": MD.md(markdown_table(top, max_rows=15)),
        "mode comparison": MD.md(markdown_table(comparison, max_rows=len(comparison))),
    }
