"""Sanity checks: the configured known regulators against the run's gene posterior.

Each configured known regulator (``known_regulators``: gene -> expected sign of its
primary-contrast effect) is looked up in the run's gene-level mash table of
``mash_default_mode`` (else the posterior exports, lfsr from the posterior z; else the
held-out full fit) and passes when it has at least one day with lfsr below
``mash_lfsr_thresh_day`` and every such day has the expected sign.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.discovery.aggregate import normal_lfsr
from fatebias_core.io import read_csv
from fatebias_core.io.layout import RunLayout
from fatebias_core.io.tables import DayAxis, DaywisePosterior, day_axis, name_column, read_posterior
from fatebias_core.model.posterior import summarise_posterior
from fatebias_core.types import FitResult


@dataclass(frozen=True)
class GenePosterior:
    """Per-gene, per-day effects of the primary contrast used by the sanity checks.

    Attributes
    ----------
    genes
        Gene names (rows).
    daywise
        Posterior mean, SD and lfsr per gene and day.
    summary_mean, summary_lfsr
        Across-day summary per gene (None when unavailable).
    source
        Where the numbers come from (a file name or the held-out fit).
    lfsr_from
        ``mash`` (lfsr of the mash fit) or ``posterior z`` (``Phi(-|mean| / sd)``).
    """

    genes: pd.Series
    daywise: DaywisePosterior
    summary_mean: np.ndarray | None
    summary_lfsr: np.ndarray | None
    source: str
    lfsr_from: str


def _summary_from_files(out: Path, config: FatebiasConfig, genes: pd.Series) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """Across-day summary (mean, lfsr) aligned to ``genes``: ash output, else the unshrunk export."""
    layout = RunLayout(out, config)
    ash = layout.ash()
    exported = layout.exports().get("ash_summary")
    if ash is not None and ash.exists():
        t = read_csv(ash, what="ash summary", dtype={"gene": str}).set_index("gene").reindex(genes)
        return t["postmean"].to_numpy(float), t["lfsr"].to_numpy(float), ash.name
    if exported is not None and exported.exists():
        t = read_csv(exported, what="across-day summary", dtype={"gene": str}).set_index("gene").reindex(genes)
        mean, sd = t["betahat"].to_numpy(float), t["sebetahat"].to_numpy(float)
        return mean, normal_lfsr(mean, sd), exported.name
    return None, None, None


def gene_posterior(config: FatebiasConfig, out_dir: str | Path, fallback: FitResult | None = None) -> GenePosterior | None:
    """The primary contrast's gene effects from the run folder, else from ``fallback``.

    Order: ``mash_gene_<mash_default_mode>.csv``; the posterior export
    ``gene_daywise_for_mash.csv`` (lfsr from the posterior z); posterior draws of
    ``fallback`` (the held-out full fit). None when none is available.
    """
    out = Path(out_dir)
    layout = RunLayout(out, config)
    mash_path = layout.mash("gene", config.mash_default_mode)
    export = layout.exports()["gene_daywise"]
    if mash_path.exists():
        table = read_csv(mash_path, what="mash gene table", dtype={"gene": str})
        genes = name_column(table, "gene", str(mash_path))
        post = read_posterior(table, what=str(mash_path))
        mean, lfsr, src = _summary_from_files(out, config, genes)
        source = mash_path.name + (f" (+ {src})" if src else "")
        return GenePosterior(genes, post, mean, lfsr, source, "mash")
    if export.exists():
        table = read_csv(export, what="gene export", dtype={"gene": str})
        genes = name_column(table, "gene", str(export))
        axis = day_axis(table.columns, "betahat", str(export))
        mean = table[axis.columns("betahat")].to_numpy(float)
        sd = table[axis.columns("se")].to_numpy(float)
        s_mean, s_lfsr, src = _summary_from_files(out, config, genes)
        source = export.name + (f" (+ {src})" if src else "")
        return GenePosterior(genes, DaywisePosterior(axis, mean, sd, normal_lfsr(mean, sd)), s_mean, s_lfsr, source, "posterior z")
    if fallback is not None and fallback.guide_effects:
        summary = summarise_posterior(fallback, config)
        c = summary.contrasts[summary.primary]
        axis = DayAxis(tuple(summary.suffixes), tuple(range(len(summary.suffixes))))
        daywise = DaywisePosterior(axis, c.theta_mean, c.theta_sd, normal_lfsr(c.theta_mean, c.theta_sd))
        return GenePosterior(
            pd.Series(summary.gene_names), daywise, c.sum_mean, normal_lfsr(c.sum_mean, c.sum_sd),
            "held-out full fit (training cells)", "posterior z",
        )
    return None


@dataclass(frozen=True)
class RegulatorCheck:
    """The sanity check of one known regulator.

    ``status`` is ``pass`` (at least one day with lfsr below the threshold, all of them
    with the expected sign), ``wrong_sign`` (a significant day with the opposite sign),
    ``not_detected`` (no significant day) or ``missing`` (gene not in the table).
    """

    gene: str
    expected_sign: int
    status: str
    postmean: dict[str, float] = field(default_factory=dict)
    lfsr: dict[str, float] = field(default_factory=dict)
    significant_days: list[str] = field(default_factory=list)
    best_day: str | None = None
    min_lfsr: float | None = None
    summary_mean: float | None = None
    summary_lfsr: float | None = None
    summary_sign_ok: bool | None = None

    @property
    def passed(self) -> bool:
        return self.status == "pass"


@dataclass
class SanityResult:
    """Sanity checks of the configured known regulators."""

    checks: list[RegulatorCheck]
    source: str | None
    lfsr_from: str | None
    lfsr_thresh: float
    note: str = ""

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.checks)

    @property
    def missing(self) -> list[str]:
        return [c.gene for c in self.checks if c.status == "missing"]

    @property
    def all_passed(self) -> bool | None:
        """True when every configured regulator passed; None when none is configured or no posterior exists."""
        if not self.checks or self.source is None:
            return None
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "lfsr_from": self.lfsr_from,
            "lfsr_thresh": self.lfsr_thresh,
            "note": self.note,
            "n_configured": len(self.checks),
            "n_passed": self.count("pass"),
            "n_wrong_sign": self.count("wrong_sign"),
            "n_not_detected": self.count("not_detected"),
            "n_missing": self.count("missing"),
            "missing": self.missing,
            "all_passed": self.all_passed,
            "checks": [asdict(c) | {"passed": c.passed} for c in self.checks],
        }


def _nan_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def check_regulators(known: Mapping[str, int], posterior: GenePosterior, lfsr_thresh: float) -> SanityResult:
    """Check each known regulator's effect sign against the gene posterior.

    Parameters
    ----------
    known
        Gene -> expected sign (+1 or -1) of its primary-contrast effect.
    posterior
        Gene effects per day with lfsr (and an optional across-day summary).
    lfsr_thresh
        A day is significant when its lfsr is below this (``mash_lfsr_thresh_day``).
    """
    post, axis = posterior.daywise, posterior.daywise.axis
    row_of = pd.Index(posterior.genes.astype(str)).get_indexer(list(known))
    checks = []
    for (gene, expected), row in zip(known.items(), row_of, strict=True):
        if row < 0:
            checks.append(RegulatorCheck(str(gene), int(expected), "missing"))
            continue
        mean, lfsr = post.postmean[row], post.lfsr[row]
        sig = lfsr < lfsr_thresh
        wrong = sig & (np.sign(mean) != expected)
        status = "not_detected" if not sig.any() else "wrong_sign" if wrong.any() else "pass"
        best = int(np.argmin(lfsr))
        s_mean = None if posterior.summary_mean is None else _nan_none(posterior.summary_mean[row])
        s_lfsr = None if posterior.summary_lfsr is None else _nan_none(posterior.summary_lfsr[row])
        checks.append(
            RegulatorCheck(
                gene=str(gene),
                expected_sign=int(expected),
                status=status,
                postmean=dict(zip(axis.labels, mean.astype(float).tolist(), strict=True)),
                lfsr=dict(zip(axis.labels, lfsr.astype(float).tolist(), strict=True)),
                significant_days=[lab for lab, s in zip(axis.labels, sig, strict=True) if s],
                best_day=axis.labels[best],
                min_lfsr=float(lfsr[best]),
                summary_mean=s_mean,
                summary_lfsr=s_lfsr,
                summary_sign_ok=None if s_mean is None else bool(np.sign(s_mean) == expected),
            )
        )
    return SanityResult(checks, posterior.source, posterior.lfsr_from, lfsr_thresh)


def sanity_checks(config: FatebiasConfig, out_dir: str | Path, fallback: FitResult | None = None) -> SanityResult:
    """:func:`check_regulators` of ``known_regulators`` against :func:`gene_posterior`."""
    thresh = config.mash_lfsr_thresh_day
    if not config.known_regulators:
        return SanityResult([], None, None, thresh, note="no known_regulators configured")
    posterior = gene_posterior(config, out_dir, fallback)
    if posterior is None:
        checks = [RegulatorCheck(g, s, "not_detected") for g, s in config.known_regulators.items()]
        return SanityResult(checks, None, None, thresh, note="no gene posterior: run the chain or the held-out check first")
    result = check_regulators(config.known_regulators, posterior, thresh)
    if result.missing:
        result.note = f"{len(result.missing)} configured regulator(s) not among the {len(posterior.genes)} genes: {', '.join(result.missing)}"
    return result
