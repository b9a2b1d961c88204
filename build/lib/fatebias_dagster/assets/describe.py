"""What each step's materialization shows and keeps: metrics, UI metadata, results tables.

:data:`DESCRIBE` maps a step of :data:`fatebias_core.pipeline.graph.STEPS` to a
function of the step's value; the chain's asset factory calls it after the step ran.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pandas as pd

from fatebias_core.io import layout as run_files
from fatebias_core.io.layout import RunLayout

from .. import metadata as meta
from .. import results
from ..runner import StepRun
from ..versions import input_files, watched_input_version


@dataclass
class Described:
    """What one step's materialization records.

    Attributes
    ----------
    metrics
        Headline numbers (kept in the lineage database).
    metadata
        UI metadata of each of the step's assets (asset name -> metadata; ``""``: all of them).
    tables
        Results tables for the lineage database.
    lineage
        Extra lineage metadata (the input files, for loading).
    """

    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)


def _load(run: StepRun, experiment: Any) -> Described:
    cfg, summary = run.config, experiment.summary
    return Described(
        metrics={"n_cells": experiment.n_cells},
        metadata={
            "filtered_cells": meta.load_metadata(summary, cfg),
            "guide_embeddings": meta.guides_metadata(experiment.guides, summary),
        },
        lineage={"input_files": input_files(cfg), "input_version": watched_input_version(cfg)},
    )


def _fit(run: StepRun, fit: Any) -> Described:
    keys = ("steps", "converged", "final_loss_per_cell", "ms_per_step", "device", "runtime_s")
    return Described(metrics={k: fit.info.get(k) for k in keys}, metadata={"": meta.fit_metadata(fit.info, run.out_dir)})


def _export(run: StepRun, value: Any) -> Described:
    md = meta.export_metadata(RunLayout(run.out_dir, run.config).all_exports(), run.config.contrast_fate)
    return Described(metrics={"qc": md["QC offsets"].value}, metadata={"": md})


def _mash(run: StepRun, mash: Any) -> Described:
    thresh = run.config.mash_lfsr_thresh_day
    sig = {f"{level}_{mode}_{fate}": meta.significant_rows(p, thresh) for (level, mode, fate), p in mash.files.items()}
    return Described(
        metrics={"significant_rows": sig},
        metadata={"": meta.mash_metadata(mash.files, thresh, mash.messages)},
        tables=results.mash_tables(mash),
    )


def _aggregate(run: StepRun, paths: Any) -> Described:
    md = meta.aggregate_metadata(paths)
    return Described(metrics={k: v.value for k, v in md.items()}, metadata={"": md}, tables=results.aggregate_tables(paths))


def _rank(run: StepRun, value: Any) -> Described:
    tables = results.rank_tables(run.out_dir / run_files.HITS, run.out_dir / run_files.MODE_COMPARISON)
    hits, comparison = tables["hits"], tables["mash_mode_comparison"]
    return Described(
        metrics={"n_hits": int(hits["hit_anyday"].astype(bool).sum()), "n_genes": len(hits)},
        metadata={"": meta.rank_metadata(hits, comparison, run.config.mash_default_mode)},
        tables=tables,
    )


def _diagnostics(run: StepRun, value: Any) -> Described:
    summary = json.loads((run.out_dir / run_files.DIAGNOSTICS).read_text())
    summary = summary if isinstance(summary, dict) else {}
    ntc = (summary.get("ntc_calibration") or {}).get("headline")
    md: dict[str, Any] = {"summary": dg.MetadataValue.json(meta.round_tree(summary, 4))}
    if ntc:
        md["ntc_z_sd"] = dg.MetadataValue.float(round(float(ntc["sd"]), 3))
        md["ntc_beyond_1.96"] = dg.MetadataValue.float(round(float(ntc["beyond_1.96"]), 3))
    return Described(metrics=summary, metadata={"": md})


def _report(run: StepRun, value: Any) -> Described:
    path = run.out_dir / run_files.REPORT
    md = {
        "report": dg.MetadataValue.url(path.resolve().as_uri()),
        "report path": dg.MetadataValue.path(str(path.resolve())),
        "size (KiB)": dg.MetadataValue.int(path.stat().st_size // 1024),
    }
    return Described(metrics={"size_bytes": path.stat().st_size}, metadata={"": md})


DESCRIBE: dict[str, Callable[[StepRun, Any], Described]] = {
    "load": _load,
    "fit": _fit,
    "export": _export,
    "mash": _mash,
    "aggregate": _aggregate,
    "rank": _rank,
    "diagnostics": _diagnostics,
    "report": _report,
}
