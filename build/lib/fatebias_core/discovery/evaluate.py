"""Scoring ranked hits against a simulation's truth (:mod:`fatebias_core.data.simulate`).

A gene/day is truly active when ``|true_<day>| > truth_thresh``; a gene is truly
active "any day" when it is truly active on at least one day. Predictions come from a
ranked hit table (:func:`fatebias_core.discovery.calls.rank_hits`): a gene/day is called when the
day is in the gene's ``active_days`` (the daywise calls), and a gene is called any day
when ``hit_anyday`` is true.

Confusion counts are reported per day, ``overall`` (pooled over all gene-days) and
``anyday`` (one entry per gene). Rates are NaN (``null`` in JSON) when undefined:
precision = tp / (tp + fp) with no calls, recall = tp / (tp + fn) with nothing truly
active, fpr = fp / (fp + tn) with nothing truly inactive, f1 = 2 tp / (2 tp + fp + fn)
when all three counts are zero.

Genes: the truth's genes are the ones scored. A truth gene absent from the hit table
counts as not called on any day; a hit-table gene absent from the truth is not scored
(both numbers are reported). No shared gene at all is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.discovery.calls import ASH_DAY, rank_hits
from fatebias_core.errors import InputDataError
from fatebias_core.io import PathLike, json_ready, read_csv, write_csv, write_json
from fatebias_core.io import layout as names
from fatebias_core.io.tables import (
    DayAxis,
    bool_column,
    day_axis,
    name_column,
    numeric_matrix,
    parse_day_lists,
    require_columns,
    require_rows,
)

#: Columns of ``daywise_confusion.csv``.
CONFUSION_COLUMNS = ("level", "tp", "fp", "fn", "tn", "precision", "recall", "f1", "fpr")

#: Settings recorded in the summary when a configuration is given.
CALL_SETTINGS = (
    "discovery_source",
    "mash_default_mode",
    "mash_lfsr_thresh_day",
    "mash_anyday_correction",
    "mash_lfsr_thresh_anyday",
    "effect_size_eps",
    "effect_prob_large_min",
    "min_active_days_for_hit_anyday",
    "ash_lfsr_thresh",
    "ash_qvalue_thresh",
)


@dataclass(frozen=True)
class Evaluation:
    """Scores of a hit table against the truth.

    Attributes
    ----------
    confusion
        One row per day (``level`` = the day label, e.g. ``d0``), then ``overall`` and
        ``anyday``; columns :data:`CONFUSION_COLUMNS`. Without daywise calls (an ash
        summary) only the ``anyday`` row.
    summary
        The content of ``pred_call_summary.json`` (NaN rates as None).
    paths
        Files written, by name (empty unless written by :func:`evaluate_files`).
    """

    confusion: pd.DataFrame
    summary: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)

    def describe(self) -> str:
        """Two lines: any-day and pooled daywise precision and recall with counts."""
        lines = []
        for level in ("anyday", "overall"):
            row = self.confusion[self.confusion["level"] == level]
            if row.empty:
                continue
            r = row.iloc[0]
            name = "any-day" if level == "anyday" else "daywise (pooled)"
            lines.append(
                f"{name}: precision {_fmt(r.precision)} recall {_fmt(r.recall)} f1 {_fmt(r.f1)} "
                f"(tp {r.tp}, fp {r.fp}, fn {r.fn}, tn {r.tn})"
            )
        lines.extend(f"wrote {p}" for p in self.paths.values())
        return "\n".join(lines)


def _fmt(x: float) -> str:
    return "n/a" if pd.isna(x) else f"{x:.3f}"


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


def confusion_counts(pred: np.ndarray, truth: np.ndarray, levels: list[str]) -> pd.DataFrame:
    """Confusion counts and rates of boolean (n, k) predictions against (n, k) truth per column.

    Parameters
    ----------
    pred, truth
        (n, k) booleans; column j is scored as level ``levels[j]``.
    levels
        Level names (k).

    Returns
    -------
    DataFrame
        Columns :data:`CONFUSION_COLUMNS`, one row per level; undefined rates are NaN.
    """
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    tp = (pred & truth).sum(axis=0)
    fp = (pred & ~truth).sum(axis=0)
    fn = (~pred & truth).sum(axis=0)
    tn = (~pred & ~truth).sum(axis=0)
    return pd.DataFrame(
        {
            "level": levels,
            "tp": tp.astype(np.int64),
            "fp": fp.astype(np.int64),
            "fn": fn.astype(np.int64),
            "tn": tn.astype(np.int64),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "fpr": _ratio(fp, fp + tn),
        }
    )


def _truth_matrix(truth: pd.DataFrame, truth_thresh: float, what: str) -> tuple[pd.Series, DayAxis, np.ndarray]:
    require_rows(truth, what)
    genes = name_column(truth, "gene", what, unique=True)
    axis = day_axis(truth.columns, "true", what)
    values = numeric_matrix(truth, axis.columns("true"), what)
    return genes, axis, np.abs(values) > truth_thresh


def _hit_days(hits: pd.DataFrame, what: str) -> DayAxis | None:
    """Days the hit table calls on (from its ``plarge_<day>`` columns); None for an ash summary."""
    if f"plarge_{ASH_DAY}" in hits.columns:
        return None
    try:
        return day_axis(hits.columns, "plarge", what)
    except InputDataError:
        raise InputDataError(
            f"{what}: no plarge_<day> columns; expected a ranked hit table from `fatebias rank`"
        ) from None


def _by_level(confusion: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Confusion rows keyed by level, counts as int and rates as float."""
    return {rec.pop("level"): rec for rec in confusion.to_dict("records")}


def _hit_table(
    hits: pd.DataFrame, t_axis: DayAxis, what_hits: str, what_truth: str
) -> tuple[pd.Series, DayAxis | None, np.ndarray]:
    """The hit table's genes, days (None for an ash summary) and ``hit_anyday``, checked."""
    require_rows(hits, what_hits)
    require_columns(hits, ["gene", "active_days", "hit_anyday"], what_hits)
    h_genes = name_column(hits, "gene", what_hits, unique=True)
    h_axis = _hit_days(hits, what_hits)
    hit_any = bool_column(hits, "hit_anyday", what_hits)
    if h_axis is not None and set(h_axis.numbers) != set(t_axis.numbers):
        raise InputDataError(
            f"{what_hits} has days {list(h_axis.numbers)} but {what_truth} has days {list(t_axis.numbers)}"
        )
    return h_genes, h_axis, hit_any


def _called_days(
    hits: pd.DataFrame, t_axis: DayAxis, row_of: np.ndarray, what_hits: str
) -> np.ndarray:
    """(truth genes, days) bool: the days each truth gene is called on (none when absent)."""
    long = parse_day_lists(hits["active_days"])
    day_index = {str(num): j for j, num in enumerate(t_axis.numbers)}
    unknown = ~long["key"].isin(list(day_index))
    if unknown.any():
        raise InputDataError(
            f"{what_hits}: column active_days names day {long['key'][unknown].iloc[0]!r}, "
            f"not one of {list(day_index)} ({int(unknown.sum())} entries)"
        )
    called = np.zeros((len(hits), len(t_axis)), dtype=bool)
    called[long["row"].to_numpy(), long["key"].map(day_index).to_numpy(dtype=np.int64)] = True
    return np.where((row_of >= 0)[:, None], called[np.maximum(row_of, 0)], False)


def _score_summary(
    truth_thresh: float,
    config: FatebiasConfig | None,
    t_genes: pd.Series,
    t_axis: DayAxis,
    t_active: np.ndarray,
    h_genes: pd.Series,
    hit_any: np.ndarray,
    row_of: np.ndarray,
    pred_days: np.ndarray | None,
    confusion: pd.DataFrame,
) -> dict[str, Any]:
    """The evaluation summary: settings, gene and gene/day counts, hits and scores by level."""
    by_level = _by_level(confusion)
    pooled = by_level.get("overall")
    found = row_of >= 0
    n_shared = int(found.sum())
    hit_genes = h_genes[hit_any].tolist()
    return {
        "truth_thresh": truth_thresh,
        "call_settings": None if config is None else {k: getattr(config, k) for k in CALL_SETTINGS},
        "days": list(t_axis.labels),
        "daywise_scored": pred_days is not None,
        "counts": {
            "n_genes_truth": len(t_genes),
            "n_genes_hits_table": len(h_genes),
            "n_genes_scored": len(t_genes),
            "n_genes_shared": n_shared,
            "n_truth_genes_missing_from_hits": int((~found).sum()),
            "n_hits_table_genes_not_in_truth": len(h_genes) - n_shared,
            "n_true_active_gene_days": int(t_active.sum()),
            "n_called_gene_days": None if pred_days is None else int(pred_days.sum()),
            "n_true_active_genes": int(t_active.any(axis=1).sum()),
        },
        "n_hits": len(hit_genes),
        "hit_genes": hit_genes,
        "scores": by_level,
        "anyday_precision": by_level["anyday"]["precision"],
        "anyday_recall": by_level["anyday"]["recall"],
        "daywise_precision": None if pooled is None else pooled["precision"],
        "daywise_recall": None if pooled is None else pooled["recall"],
    }


def score_calls(
    hits: pd.DataFrame,
    truth: pd.DataFrame,
    truth_thresh: float = 0.2,
    config: FatebiasConfig | None = None,
    what_hits: str = "hits table",
    what_truth: str = "truth table",
) -> Evaluation:
    """Score a ranked hit table against the true effects.

    Parameters
    ----------
    hits
        Ranked hits (``hits_ranked.csv``): ``gene``, ``active_days``, ``hit_anyday``
        and ``plarge_<day>`` columns naming its days.
    truth
        ``truth_daywise.csv``: ``gene``, ``true_<day>`` per day.
    truth_thresh
        A gene/day is truly active when ``|true| > truth_thresh`` (strict).
    config
        The settings the hits were called with; recorded in the summary when given.
    what_hits, what_truth
        Names of the two tables for error messages.

    Returns
    -------
    Evaluation
        Confusion table (per day, ``overall``, ``anyday``) and summary. Day levels are
        the truth's day labels, matched to the hit table's days by day number. A hit
        table from an ash summary (one pseudo-day) has no daywise calls: only
        ``anyday`` is scored.

    Raises
    ------
    InputDataError
        Missing columns, duplicated genes, NaN truth values, the two tables' days
        differing, day lists naming unknown days, or no gene shared by the two tables.
    """
    if not (truth_thresh >= 0 and math.isfinite(truth_thresh)):
        raise InputDataError(f"truth threshold must be a non-negative number, got {truth_thresh}")
    t_genes, t_axis, t_active = _truth_matrix(truth, truth_thresh, what_truth)
    h_genes, h_axis, hit_any = _hit_table(hits, t_axis, what_hits, what_truth)
    row_of = pd.Index(h_genes).get_indexer(t_genes)  # hit row of each truth gene, -1 if absent
    found = row_of >= 0
    if not found.any():
        raise InputDataError(
            f"{what_hits} ({len(h_genes)} genes) and {what_truth} ({len(t_genes)} genes) share no gene"
        )

    pred_any = np.where(found, hit_any[np.maximum(row_of, 0)], False)
    anyday = confusion_counts(pred_any[:, None], t_active.any(axis=1)[:, None], ["anyday"])
    pred_days: np.ndarray | None = None
    if h_axis is None:
        confusion = anyday
    else:
        pred_days = _called_days(hits, t_axis, row_of, what_hits)
        daywise = confusion_counts(pred_days, t_active, list(t_axis.labels))
        overall = confusion_counts(pred_days.reshape(-1, 1), t_active.reshape(-1, 1), ["overall"])
        confusion = pd.concat([daywise, overall, anyday], ignore_index=True)
    summary = _score_summary(
        truth_thresh, config, t_genes, t_axis, t_active, h_genes, hit_any, row_of, pred_days, confusion
    )
    return Evaluation(confusion=confusion, summary=json_ready(summary))


def evaluate_files(
    hits_path: PathLike,
    truth_path: PathLike,
    out_dir: PathLike,
    truth_thresh: float = 0.2,
    config: FatebiasConfig | None = None,
) -> Evaluation:
    """Score ``hits_ranked.csv`` against ``truth_daywise.csv``; write the two score files.

    Writes ``daywise_confusion.csv`` and ``pred_call_summary.json`` into ``out_dir``
    atomically, and only after both inputs were read and scored. See :func:`score_calls`.
    """
    text = {"gene": str, "active_days": str, "active_days_any": str}
    hits = read_csv(hits_path, what="hits table", dtype=text)
    truth = read_csv(truth_path, what="truth table", dtype={"gene": str})
    ev = score_calls(hits, truth, truth_thresh, config, what_hits=str(hits_path), what_truth=str(truth_path))
    summary = {"hits_file": str(hits_path), "truth_file": str(truth_path), **ev.summary}
    out = Path(out_dir)
    paths = {
        names.DAYWISE_CONFUSION: write_csv(ev.confusion, out / names.DAYWISE_CONFUSION),
        names.CALL_SUMMARY: write_json(summary, out / names.CALL_SUMMARY),
    }
    return Evaluation(confusion=ev.confusion, summary=summary, paths=paths)


def score_table(
    table: pd.DataFrame,
    truth: pd.DataFrame,
    config: FatebiasConfig,
    source: str | None = None,
    truth_thresh: float | None = None,
) -> Evaluation:
    """Call and rank a mash, aggregated or ash table, then score it against the truth.

    ``truth_thresh`` defaults to ``config.sim_truth_thresh``; ``source`` to
    ``config.discovery_source``.
    """
    thresh = config.sim_truth_thresh if truth_thresh is None else truth_thresh
    return score_calls(rank_hits(table, config, source), truth, thresh, config)
