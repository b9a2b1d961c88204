"""The results tables kept in the lineage database, read from a step's files.

Each function returns table name -> rows; :meth:`LineageDB.append` keys the rows by run,
asset, partition and data version.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from fatebias_core.io import read_csv
from fatebias_core.pipeline.steps import MashOutputs

TEXT = {"gene": str, "guide": str, "active_days": str, "active_days_any": str}


def mash_tables(mash: MashOutputs) -> dict[str, pd.DataFrame]:
    """``mash_gene`` and ``mash_guide`` (with ``mode`` and ``fate``) and ``ash_gene_summary`` (with ``fate``)."""
    parts: dict[str, list[pd.DataFrame]] = {}
    for (level, mode, fate), path in mash.files.items():
        parts.setdefault(f"mash_{level}", []).append(read_csv(path, what="mash table", dtype=TEXT).assign(mode=mode, fate=fate))
    for fate, path in mash.ash_files.items():
        parts.setdefault("ash_gene_summary", []).append(read_csv(path, what="ash table", dtype=TEXT).assign(fate=fate))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in parts.items()}


def aggregate_tables(paths: Mapping[str, Path]) -> dict[str, pd.DataFrame]:
    """``gene_from_guide_mash`` of every mode (with ``mode``)."""
    frames = [read_csv(p, what="aggregated table", dtype=TEXT).assign(mode=m) for m, p in paths.items()]
    return {"gene_from_guide_mash": pd.concat(frames, ignore_index=True)}


def rank_tables(hits_path: Path, comparison_path: Path) -> dict[str, pd.DataFrame]:
    """``hits`` (hits_ranked.csv) and ``mash_mode_comparison``."""
    return {
        "hits": read_csv(hits_path, what="hits", dtype=TEXT),
        "mash_mode_comparison": read_csv(comparison_path, what="mode comparison"),
    }
