"""Hit calling and ranking (docs/method.md, "Calls") and the comparison of mash modes.

Calling rules, for a row (gene) and day d with posterior mean m_d, SD s_d and lfsr_d:

* probability gate: ``plarge_d = P(|effect_d| >= eps)`` under the posterior. A mash
  table carries it, computed under mash's posterior mixture (``plarge_<day>`` columns,
  with ``plarge_eps`` saying at which eps); it is used when its eps is the rule's. Any
  other table (the guide-to-gene aggregate, a normal meta-analysis; an ash summary; an
  external table) gets the normal approximation Normal(m_d, s_d):
  ``Phi((-eps - m_d) / s_d) + 1 - Phi((eps - m_d) / s_d)``; with ``s_d = 0`` the effect
  is the point m_d, so ``plarge_d = 1`` when ``|m_d| >= eps`` and 0 otherwise. Which
  of the two was used is :attr:`DayCalls.plarge_source` and a log line of
  :func:`rank_hits`.
* daywise call (``active_days``): ``lfsr_d < mash_lfsr_thresh_day`` and
  ``plarge_d >= effect_prob_large_min``. Thresholds are strict on lfsr, inclusive on the
  probability.
* any-day call (``active_days_any``): the same with the any-day lfsr threshold,
  ``mash_lfsr_thresh_anyday / n_days`` under ``mash_anyday_correction: bonferroni`` or
  ``mash_lfsr_thresh_anyday`` under ``none``; ``hit_anyday`` when at least
  ``min_active_days_for_hit_anyday`` days pass.

The same function, :func:`call_days`, calls the days of mash gene tables, of
guide-aggregated tables (:mod:`fatebias_core.discovery.aggregate`) and of the ash across-day
summary.

Ranking: hits first, then the smallest lfsr among the daywise-active days, then the
largest ``max_abs_postmean`` (largest |posterior mean| over all days), then gene name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError, InputDataError
from fatebias_core.io import PathLike, read_csv, write_csv
from fatebias_core.io import layout as names
from fatebias_core.io.tables import (
    DayAxis,
    DaywisePosterior,
    bool_column,
    day_axis,
    day_list_strings,
    name_column,
    numeric_matrix,
    read_posterior,
    require_columns,
    require_rows,
)

log = logging.getLogger("fatebias.calls")

SOURCES = ("gene", "guide_agg", "ash")

#: Column of a mash table giving the eps of its ``plarge_<day>`` columns.
PLARGE_EPS = "plarge_eps"

#: :attr:`DayCalls.plarge_source` values: P(|effect| >= eps) from the table's
#: ``plarge_<day>`` columns (mash's posterior mixture), or from Normal(postmean, postsd).
PLARGE_MIXTURE = "mixture"
PLARGE_NORMAL = "normal"

PLARGE_DESCRIPTIONS = {
    PLARGE_MIXTURE: "under mash's posterior mixture (the table's plarge_<day> columns)",
    PLARGE_NORMAL: "under the normal approximation Normal(postmean, postsd)",
}

#: Posterior column prefixes (mean, SD, lfsr) of each discovery source's daywise table.
SOURCE_PREFIXES: dict[str, tuple[str, str, str]] = {
    "gene": ("postmean", "postsd", "lfsr"),
    "guide_agg": ("gene_postmean", "gene_postsd", "gene_lfsr"),
}

#: Columns :func:`rank_hits` computes; any of them already in the input is replaced.
CALL_COLUMNS = (
    "active_days",
    "n_active_days",
    "best_day",
    "min_lfsr_among_active",
    "best_day_among_active",
    "max_abs_postmean",
    "active_days_any",
    "n_any_active",
    "hit_anyday",
)

#: Label of the ash table's single across-day pseudo-day.
ASH_DAY = "sum"

#: lfsr floor of the mode-comparison score -log10(lfsr) (mash reports lfsr = 0 exactly).
SCORE_LFSR_FLOOR = 1e-300


@dataclass(frozen=True)
class CallRule:
    """Thresholds of the daywise and any-day calls, resolved for a number of days.

    Attributes
    ----------
    lfsr_thresh_day
        A day is called when its lfsr is strictly below this ...
    lfsr_thresh_anyday
        ... and counts toward the any-day call when strictly below this (already
        divided by the number of days under Bonferroni).
    eps
        Effect size (logit scale) of the probability gate.
    p_large_min
        Smallest accepted ``P(|effect| >= eps)`` (inclusive).
    min_active_days
        Any-day hit when at least this many days pass the any-day threshold and gate.
    """

    lfsr_thresh_day: float
    lfsr_thresh_anyday: float
    eps: float
    p_large_min: float
    min_active_days: int

    @classmethod
    def from_config(cls, config: FatebiasConfig, n_days: int) -> CallRule:
        """The mash calling rule of ``config`` for a table of ``n_days`` days."""
        anyday = config.mash_lfsr_thresh_anyday
        if config.mash_anyday_correction == "bonferroni":
            anyday = anyday / n_days
        return cls(
            lfsr_thresh_day=config.mash_lfsr_thresh_day,
            lfsr_thresh_anyday=anyday,
            eps=config.effect_size_eps,
            p_large_min=config.effect_prob_large_min,
            min_active_days=config.min_active_days_for_hit_anyday,
        )

    @classmethod
    def for_ash(cls, config: FatebiasConfig) -> CallRule:
        """The ash summary's rule (docs/method.md, "Contrasts and summaries"): lfsr < ash_lfsr_thresh, no probability gate.

        The q-value condition is applied by :func:`rank_hits` as an extra gate; the
        single pseudo-day needs no multiplicity correction and one active day makes a hit.
        """
        return cls(
            lfsr_thresh_day=config.ash_lfsr_thresh,
            lfsr_thresh_anyday=config.ash_lfsr_thresh,
            eps=config.effect_size_eps,
            p_large_min=0.0,
            min_active_days=1,
        )


@dataclass(frozen=True)
class DayCalls:
    """Per-row and per-day calls made by :func:`call_days`.

    Attributes
    ----------
    rule
        The thresholds used.
    plarge
        (n, D) ``P(|effect| >= eps)``.
    active
        (n, D) daywise calls.
    active_any
        (n, D) days passing the any-day threshold and the gate.
    best_idx
        (n,) day index of the smallest lfsr over all days (earliest day on ties).
    min_lfsr
        (n,) smallest lfsr over all days.
    best_active_idx
        (n,) day index of the smallest lfsr among the daywise-active days, -1 if none.
    min_lfsr_among_active
        (n,) that lfsr, NaN if no day is active.
    max_abs_postmean
        (n,) largest |posterior mean| over all days.
    plarge_source
        How ``plarge`` was obtained: :data:`PLARGE_MIXTURE` (given, from mash's posterior
        mixture) or :data:`PLARGE_NORMAL` (the normal approximation).
    """

    rule: CallRule
    plarge: np.ndarray
    active: np.ndarray
    active_any: np.ndarray
    best_idx: np.ndarray
    min_lfsr: np.ndarray
    best_active_idx: np.ndarray
    min_lfsr_among_active: np.ndarray
    max_abs_postmean: np.ndarray
    plarge_source: str = PLARGE_NORMAL

    @property
    def n_active(self) -> np.ndarray:
        """(n,) number of daywise-active days."""
        return self.active.sum(axis=1)

    @property
    def n_any_active(self) -> np.ndarray:
        """(n,) number of days passing the any-day call."""
        return self.active_any.sum(axis=1)

    @property
    def hit_anyday(self) -> np.ndarray:
        """(n,) any-day hits."""
        return self.n_any_active >= self.rule.min_active_days

    def to_frame(self, axis: DayAxis, index: pd.Index | None = None) -> pd.DataFrame:
        """The calls as columns: ``plarge_<day>`` per day, then :data:`CALL_COLUMNS`.

        Day lists are comma-separated day numbers (``"0,2"``, ``""`` when none); for an
        unnumbered pseudo-day the label (``"sum"``) is written instead. ``best_day`` is
        the day of the smallest lfsr over all days; ``best_day_among_active`` that of the
        smallest lfsr among the daywise-active days, empty when none.
        """
        n = self.plarge.shape[0]
        index = pd.RangeIndex(n) if index is None else index
        keys = np.array(axis.numbers if axis.is_numbered else axis.labels, dtype=object)
        has_active = self.best_active_idx >= 0
        among = keys[np.where(has_active, self.best_active_idx, 0)]
        best = keys[self.best_idx]
        if axis.is_numbered:
            best = best.astype(np.int64)
            among = pd.array(np.where(has_active, among, 0).astype(np.int64), dtype="Int64")
            among[~has_active] = pd.NA
        else:
            among = np.where(has_active, among, None)
        cols: dict[str, object] = {
            f"plarge_{lab}": self.plarge[:, j] for j, lab in enumerate(axis.labels)
        }
        cols.update(
            active_days=day_list_strings(self.active, axis.keys),
            n_active_days=self.n_active.astype(np.int64),
            best_day=best,
            min_lfsr_among_active=self.min_lfsr_among_active,
            best_day_among_active=among,
            max_abs_postmean=self.max_abs_postmean,
            active_days_any=day_list_strings(self.active_any, axis.keys),
            n_any_active=self.n_any_active.astype(np.int64),
            hit_anyday=self.hit_anyday,
        )
        return pd.DataFrame(cols, index=index)


def prob_large(postmean: np.ndarray, postsd: np.ndarray, eps: float) -> np.ndarray:
    """``P(|X| >= eps)`` for ``X ~ Normal(postmean, postsd)``, elementwise (the normal approximation).

    Computed as ``Phi((-eps - m) / s) + Phi_upper((eps - m) / s)`` with the upper tail
    taken from the survival function (accurate far in the tail). Where ``s == 0`` the
    distribution is the point ``m``: 1 when ``|m| >= eps``, else 0.
    """
    m = np.asarray(postmean, dtype=np.float64)
    s = np.asarray(postsd, dtype=np.float64)
    pos = s > 0
    safe = np.where(pos, s, 1.0)
    p = norm.cdf((-eps - m) / safe) + norm.sf((eps - m) / safe)
    p = np.where(pos, p, (np.abs(m) >= eps).astype(np.float64))
    return np.clip(p, 0.0, 1.0)


def call_days(
    postmean: np.ndarray,
    postsd: np.ndarray,
    lfsr: np.ndarray,
    rule: CallRule,
    gate: np.ndarray | None = None,
    plarge: np.ndarray | None = None,
) -> DayCalls:
    """Call the days of every row: the one calling function of the discovery layer.

    Parameters
    ----------
    postmean, postsd, lfsr
        (n, D) posterior mean, SD (>= 0) and lfsr per row and day.
    rule
        Thresholds (:meth:`CallRule.from_config` for mash tables).
    gate
        Optional (n, D) boolean extra condition every call must also meet (the ash
        q-value condition).
    plarge
        Optional (n, D) ``P(|effect| >= rule.eps)`` under the posterior (a mash table's
        ``plarge_<day>``, computed under its posterior mixture); the normal
        approximation from ``postmean`` and ``postsd`` when ``None``.

    Returns
    -------
    DayCalls
        Daywise and any-day calls with the lfsr and effect summaries used for ranking.
    """
    postmean = np.asarray(postmean, dtype=np.float64)
    lfsr = np.asarray(lfsr, dtype=np.float64)
    if plarge is None:
        plarge, source = prob_large(postmean, postsd, rule.eps), PLARGE_NORMAL
    else:
        plarge, source = np.asarray(plarge, dtype=np.float64), PLARGE_MIXTURE
        if plarge.shape != postmean.shape:
            raise ValueError(f"plarge has shape {plarge.shape}, the posterior {postmean.shape}")
    passes = plarge >= rule.p_large_min
    if gate is not None:
        passes &= np.asarray(gate, dtype=bool)
    active = passes & (lfsr < rule.lfsr_thresh_day)
    active_any = passes & (lfsr < rule.lfsr_thresh_anyday)
    masked = np.where(active, lfsr, np.inf)
    best_active = np.argmin(masked, axis=1)
    has_active = active.any(axis=1)
    rows = np.arange(lfsr.shape[0])
    return DayCalls(
        rule=rule,
        plarge=plarge,
        active=active,
        active_any=active_any,
        best_idx=np.argmin(lfsr, axis=1),
        min_lfsr=lfsr.min(axis=1),
        best_active_idx=np.where(has_active, best_active, -1),
        min_lfsr_among_active=np.where(has_active, masked[rows, best_active], np.nan),
        max_abs_postmean=np.abs(postmean).max(axis=1),
        plarge_source=source,
    )


def table_plarge(table: pd.DataFrame, axis: DayAxis, eps: float, what: str = "table") -> np.ndarray | None:
    """A mash table's ``plarge_<day>`` columns when they were computed at ``eps``, else None.

    A table carries them with a ``plarge_eps`` column (mash tables do; see
    :func:`fatebias_core.mash.mash_table`). Without it, or when its eps is not ``eps``
    (the calls' ``effect_size_eps`` changed since mash ran: a warning says so), None: the
    caller uses the normal approximation.

    Raises
    ------
    InputDataError
        ``plarge_eps`` present but not one number, or a ``plarge_<day>`` column missing
        or outside [0, 1].
    """
    if PLARGE_EPS not in table.columns:
        return None
    values = pd.to_numeric(table[PLARGE_EPS], errors="coerce").to_numpy(dtype=np.float64)
    if not (np.isfinite(values).all() and (values == values[0]).all()):
        raise InputDataError(f"{what}: column {PLARGE_EPS} must hold one number (the eps of the plarge_<day> columns)")
    if values[0] != eps:
        log.warning(
            "%s: its plarge_<day> columns are P(|effect| >= %g), not %g (effect_size_eps): using the normal "
            "approximation; rerun mash with this effect_size_eps for the posterior mixture's", what, values[0], eps,
        )
        return None
    return numeric_matrix(table, axis.columns("plarge"), what, lower=0.0, upper=1.0)


def _source_hint(table: pd.DataFrame, source: str) -> str:
    """Which discovery_source the table looks like, when it is not ``source``."""
    cols = [str(c) for c in table.columns]
    if source != "guide_agg" and any(c.startswith("gene_postmean_") for c in cols):
        return " (it has gene_postmean_<day> columns: use discovery_source: guide_agg)"
    if source != "gene" and any(c.startswith("postmean_") for c in cols):
        return " (it has postmean_<day> columns: use discovery_source: gene)"
    if source != "ash" and {"postmean", "lfsr", "qvalue"} <= set(cols):
        return " (it looks like an ash summary: use discovery_source: ash)"
    return ""


def _read_source(table: pd.DataFrame, source: str, config: FatebiasConfig, what: str
                 ) -> tuple[DaywisePosterior, CallRule, np.ndarray | None]:
    """The posterior, rule and extra gate of a discovery table of kind ``source``."""
    require_rows(table, what)
    if source == "ash":
        missing = [c for c in ("postmean", "postsd", "lfsr", "qvalue") if c not in table.columns]
        if missing:
            raise InputDataError(
                f"{what}: missing column(s) {', '.join(missing)} of an ash summary{_source_hint(table, source)}"
            )
        post = DaywisePosterior(
            axis=DayAxis.pseudo(ASH_DAY),
            postmean=numeric_matrix(table, ["postmean"], what),
            postsd=numeric_matrix(table, ["postsd"], what, lower=0.0),
            lfsr=numeric_matrix(table, ["lfsr"], what, lower=0.0, upper=1.0),
        )
        qvalue = numeric_matrix(table, ["qvalue"], what, lower=0.0, upper=1.0)
        return post, CallRule.for_ash(config), qvalue < config.ash_qvalue_thresh
    prefixes = SOURCE_PREFIXES[source]
    try:
        day_axis(table.columns, prefixes[0], what)
    except InputDataError as exc:
        raise InputDataError(f"{exc}{_source_hint(table, source)}") from None
    post = read_posterior(table, prefixes, what)
    return post, CallRule.from_config(config, len(post.axis)), None


def rank_hits(
    table: pd.DataFrame,
    config: FatebiasConfig,
    source: str | None = None,
    what: str = "table",
) -> pd.DataFrame:
    """Call and rank the rows of a discovery table (docs/method.md, "Calls").

    Parameters
    ----------
    table
        One row per gene: a mash gene table (``source="gene"``: ``postmean_<day>``,
        ``postsd_<day>``, ``lfsr_<day>``), a guide-aggregated table (``"guide_agg"``:
        ``gene_postmean_<day>``, ...), or an ash summary (``"ash"``: ``postmean``,
        ``postsd``, ``lfsr``, ``qvalue``).
    config
        Calling settings (``mash_lfsr_thresh_day``, ``mash_anyday_correction``,
        ``mash_lfsr_thresh_anyday``, ``effect_size_eps``, ``effect_prob_large_min``,
        ``min_active_days_for_hit_anyday``; for ash ``ash_lfsr_thresh`` and
        ``ash_qvalue_thresh``).
    source
        Kind of table; ``None`` uses ``config.discovery_source``.
    what
        The table's name for error messages.

    Returns
    -------
    DataFrame
        The input columns (in their order, without any of :data:`CALL_COLUMNS` or
        ``plarge_*`` they already had), then ``plarge_<day>`` per day, then
        ``plarge_eps`` when ``plarge`` is the mash posterior mixture's, then
        :data:`CALL_COLUMNS`; sorted hits first, then ``min_lfsr_among_active``
        ascending (rows with no active day after those with one), then
        ``max_abs_postmean`` descending, then gene name; index 0..n-1. Ranking a ranked
        table again gives the same table. ``attrs["plarge_source"]`` is
        :data:`PLARGE_MIXTURE` or :data:`PLARGE_NORMAL` (also logged).

    Notes
    -----
    ``P(|effect| >= eps)`` is the table's ``plarge_<day>`` (mash's posterior mixture)
    when the table has them at ``effect_size_eps`` (:func:`table_plarge`), else the
    normal approximation (:func:`prob_large`).

    An ash summary is one pseudo-day labelled ``sum``: it is called when
    ``lfsr < ash_lfsr_thresh`` and ``qvalue < ash_qvalue_thresh`` (docs/method.md, "Contrasts and summaries"), with no
    probability gate (``plarge_sum`` is reported for information); its day lists and
    best days read ``sum``.

    Raises
    ------
    InputDataError
        Missing or invalid columns (naming them, with a hint when the table fits another
        ``discovery_source``), no rows, or duplicated gene names.
    """
    source = config.discovery_source if source is None else source
    if source not in SOURCES:
        raise ConfigError(f"discovery_source must be one of {', '.join(SOURCES)}, got {source!r}")
    genes = name_column(table, "gene", what, unique=True)
    post, rule, gate = _read_source(table, source, config, what)
    plarge = table_plarge(table, post.axis, rule.eps, what)
    calls = call_days(post.postmean, post.postsd, post.lfsr, rule, gate=gate, plarge=plarge)
    log.info("%s: P(|effect| >= %g) %s", what, rule.eps, PLARGE_DESCRIPTIONS[calls.plarge_source])
    stale = [c for c in table.columns if c in CALL_COLUMNS or str(c).startswith("plarge_")]
    kept = table.drop(columns=stale).reset_index(drop=True)
    frame = calls.to_frame(post.axis, kept.index)
    if calls.plarge_source == PLARGE_MIXTURE:  # the ranked table says so, and ranks again the same
        frame.insert(len(post.axis), PLARGE_EPS, rule.eps)
    out = pd.concat([kept, frame], axis=1)
    order = pd.DataFrame(
        {
            "hit": ~calls.hit_anyday,
            "lfsr": np.where(np.isnan(calls.min_lfsr_among_active), np.inf, calls.min_lfsr_among_active),
            "effect": -calls.max_abs_postmean,
            "gene": genes.to_numpy(),
        }
    ).sort_values(["hit", "lfsr", "effect", "gene"], kind="mergesort")
    ranked = out.iloc[order.index.to_numpy()].reset_index(drop=True)
    ranked.attrs["plarge_source"] = calls.plarge_source
    return ranked


def rank_file(
    in_path: PathLike, out_path: PathLike, config: FatebiasConfig, source: str | None = None
) -> pd.DataFrame:
    """Read a discovery table, call and rank it (:func:`rank_hits`), write ``hits_ranked.csv``.

    The table's kind is ``source`` (default ``config.discovery_source``). Nothing is
    written when the input is invalid; the output is written atomically.
    """
    table = read_csv(in_path, what="discovery table", dtype={"gene": str, "guide": str})
    ranked = rank_hits(table, config, source=source, what=str(in_path))
    write_csv(ranked, out_path)
    return ranked


def _ranked_summary(hits: pd.DataFrame, what: str) -> tuple[pd.Series, np.ndarray, np.ndarray, np.ndarray]:
    """Gene names, hit flags, min lfsr among active days and active-day counts of a ranked table."""
    require_columns(hits, ["gene", "hit_anyday", "min_lfsr_among_active", "n_active_days"], what)
    genes = name_column(hits, "gene", what, unique=True)
    hit = bool_column(hits, "hit_anyday", what)
    lfsr = pd.to_numeric(hits["min_lfsr_among_active"], errors="coerce").to_numpy(dtype=np.float64)
    n_active = pd.to_numeric(hits["n_active_days"], errors="coerce").to_numpy(dtype=np.float64)
    return genes, hit, lfsr, n_active


def compare_modes(hits_by_mode: Mapping[str, pd.DataFrame], top_n: int = 50) -> pd.DataFrame:
    """Compare the ranked hits of the mash modes (``mash_mode_comparison.csv``).

    Parameters
    ----------
    hits_by_mode
        Ranked tables from :func:`rank_hits`, in rank order, keyed by mode
        (``{"conservative": ..., "enriched": ...}``); one or two modes.
    top_n
        Size of the top lists compared.

    Returns
    -------
    DataFrame
        One row per mode, in the mapping's order, with columns ``mode``, ``n_rows``,
        ``n_hits``, ``median_score`` (median over hits of
        ``-log10(max(min_lfsr_among_active, 1e-300))``; NaN without hits),
        ``median_n_active_days`` (median over hits; NaN without hits), then the pairwise
        statistics against the other mode, repeated on both rows: ``other_mode``,
        ``n_shared_hits``, ``jaccard_hits`` (shared hits / hits of either mode; NaN when
        neither mode has a hit), ``top_n`` and ``top_overlap`` (genes in both modes'
        first ``top_n`` rows). With a single mode the pairwise columns are empty.

    Raises
    ------
    InputDataError
        No modes or more than two, or a table without the ranked columns.
    """
    if not 1 <= len(hits_by_mode) <= 2:
        raise InputDataError(f"compare_modes compares one or two mash modes, got {len(hits_by_mode)}")
    if top_n < 1:
        raise InputDataError(f"compare_modes: top_n must be at least 1, got {top_n}")
    rows: list[dict[str, object]] = []
    hit_sets: dict[str, set[str]] = {}
    top_sets: dict[str, set[str]] = {}
    for mode, hits in hits_by_mode.items():
        genes, hit, lfsr, n_active = _ranked_summary(hits, f"ranked hits of mode {mode}")
        score = -np.log10(np.maximum(lfsr[hit], SCORE_LFSR_FLOOR))
        rows.append(
            {
                "mode": mode,
                "n_rows": len(hits),
                "n_hits": int(hit.sum()),
                "median_score": float(np.nanmedian(score)) if (~np.isnan(score)).any() else np.nan,
                "median_n_active_days": float(np.median(n_active[hit])) if hit.any() else np.nan,
            }
        )
        hit_sets[mode] = set(genes[hit])
        top_sets[mode] = set(genes.iloc[:top_n])
    modes = list(hits_by_mode)
    for row in rows:
        mode = row["mode"]
        other = next((m for m in modes if m != mode), None)
        if other is None:
            row.update(other_mode=None, n_shared_hits=np.nan, jaccard_hits=np.nan, top_n=top_n, top_overlap=np.nan)
            continue
        shared = hit_sets[mode] & hit_sets[other]
        union = hit_sets[mode] | hit_sets[other]
        row.update(
            other_mode=other,
            n_shared_hits=len(shared),
            jaccard_hits=len(shared) / len(union) if union else np.nan,
            top_n=top_n,
            top_overlap=len(top_sets[mode] & top_sets[other]),
        )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class RankResult:
    """Outputs of :func:`rank_and_compare`.

    Attributes
    ----------
    hits
        Ranked hits of the default mode (``hits_ranked.csv``).
    by_mode
        Ranked tables of every mode given.
    comparison
        :func:`compare_modes` of ``by_mode`` (``mash_mode_comparison.csv``).
    paths
        Files written, by name.
    """

    hits: pd.DataFrame
    by_mode: dict[str, pd.DataFrame]
    comparison: pd.DataFrame
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def plarge_sources(self) -> dict[str, str]:
        """How each mode's P(|effect| >= eps) was obtained (:data:`PLARGE_MIXTURE` or :data:`PLARGE_NORMAL`)."""
        return {mode: t.attrs.get("plarge_source", PLARGE_NORMAL) for mode, t in self.by_mode.items()}

    def describe(self) -> str:
        """One line per mode: hits of rows, and how P(|effect| >= eps) was computed."""
        sources = self.plarge_sources
        return "\n".join(
            f"{row.mode}: {row.n_hits} hits of {row.n_rows} rows (P(|effect| >= eps) "
            f"{PLARGE_DESCRIPTIONS[sources.get(row.mode, PLARGE_NORMAL)]})"
            for row in self.comparison.itertuples()
        )


def rank_and_compare(
    inputs: Mapping[str, PathLike],
    out_dir: PathLike,
    config: FatebiasConfig,
    top_n: int = 50,
) -> RankResult:
    """Rank every mode's discovery table and write ``hits_ranked.csv`` and ``mash_mode_comparison.csv``.

    Parameters
    ----------
    inputs
        Discovery table of each mash mode (``{"conservative": "mash_gene_conservative.csv",
        "enriched": ...}``; the aggregated tables for ``discovery_source: guide_agg``).
        Must include ``config.mash_default_mode``, whose ranking becomes ``hits_ranked.csv``.
    out_dir
        Folder receiving the two files.
    config
        Calling settings and ``discovery_source``.
    top_n
        Size of the top lists compared.

    Every input is read and ranked before anything is written.
    """
    if config.mash_default_mode not in inputs:
        raise InputDataError(
            f"no discovery table for mash_default_mode {config.mash_default_mode!r} (given: {', '.join(inputs) or 'none'})"
        )
    by_mode: dict[str, pd.DataFrame] = {}
    for mode, path in inputs.items():
        table = read_csv(path, what=f"discovery table ({mode})", dtype={"gene": str, "guide": str})
        by_mode[mode] = rank_hits(table, config, what=str(path))
    comparison = compare_modes(by_mode, top_n=top_n)
    out = Path(out_dir)
    paths = {
        names.HITS: write_csv(by_mode[config.mash_default_mode], out / names.HITS),
        names.MODE_COMPARISON: write_csv(comparison, out / names.MODE_COMPARISON),
    }
    return RankResult(by_mode[config.mash_default_mode], by_mode, comparison, paths)
