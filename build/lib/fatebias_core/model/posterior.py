"""Posterior summaries and the exports that feed mash (docs/method.md, "Contrasts and summaries").

From a :class:`~fatebias_core.model.inference.FitResult`, :func:`summarise_posterior` draws S
samples and summarises, per contrast fate,

* gene/day effects theta: mean, SD, quantiles (``theta_posterior_summary.npz``,
  ``gene_daywise_for_mash.csv``);
* guide/day effects beta = theta + delta: mean, SD (``guide_daywise_for_mash.csv``);
* guide deviations delta (``delta_posterior_summary.npz``);
* QC: the within-gene mean of delta and theta minus the guides' mean beta, both ~0 by
  construction (``qc_delta_mean_by_gene.csv``, ``qc_theta_beta_offset_by_gene.csv``);
* the across-day summary Delta_sum = sum_d w_d theta_d (``gene_summary_for_ash.csv``).

:func:`export_posterior` writes them; the primary contrast keeps the seed's file names,
every other contrast fate gets the same files with a ``_<FATE>`` suffix.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError
from fatebias_core.io import save_npz, write_csv
from fatebias_core.io.layout import RunLayout
from fatebias_core.types import FitResult

log = logging.getLogger("fatebias.posterior")

QUANTILES = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975)
DRAW_CHUNK = 200


def day_suffixes(day_labels: list[str]) -> list[str]:
    """Column suffixes of the days: ``d<number>`` from the number in each label.

    Where a label has no number, or the numbers do not increase with the day order
    (labels ordered by ``day_order``), every day is ``d<position>`` instead.
    """
    found = [re.search(r"\d+", str(label)) for label in day_labels]
    numbers = [int(m.group()) for m in found if m]
    if len(numbers) == len(day_labels) and all(a < b for a, b in zip(numbers[:-1], numbers[1:], strict=True)):
        return [f"d{n}" for n in numbers]
    return [f"d{pos}" for pos in range(len(day_labels))]


@dataclass
class ContrastSummary:
    """Posterior summaries of one contrast fate against the reference."""

    fate: str
    theta_mean: np.ndarray  # (L, D)
    theta_sd: np.ndarray  # (L, D)
    theta_quantiles: np.ndarray  # (Q, L, D)
    beta_mean: np.ndarray  # (G, D)
    beta_sd: np.ndarray  # (G, D)
    delta_mean: np.ndarray  # (G,)
    delta_sd: np.ndarray  # (G,)
    sum_mean: np.ndarray  # (L,) across-day weighted summary
    sum_sd: np.ndarray  # (L,)


@dataclass
class PosteriorSummary:
    """Summaries of every contrast, with the labels needed to write tables."""

    contrasts: dict[str, ContrastSummary]
    primary: str
    gene_names: list[str]
    guide_names: list[str]
    guide_genes: list[str]
    day_labels: list[str]
    day_weights: np.ndarray
    n_draws: int
    seed: int

    @property
    def suffixes(self) -> list[str]:
        return day_suffixes(self.day_labels)

    # ----------------------------------------------------------------- tables
    def gene_daywise(self, fate: str | None = None) -> pd.DataFrame:
        """``gene, betahat_d*, se_d*`` from theta (the gene table for mash)."""
        c = self.contrasts[fate or self.primary]
        cols = {"gene": self.gene_names}
        cols |= {f"betahat_{s}": c.theta_mean[:, d] for d, s in enumerate(self.suffixes)}
        cols |= {f"se_{s}": c.theta_sd[:, d] for d, s in enumerate(self.suffixes)}
        return pd.DataFrame(cols)

    def guide_daywise(self, fate: str | None = None) -> pd.DataFrame:
        """``guide, gene, betahat_d*, se_d*`` from beta (the guide table for mash)."""
        c = self.contrasts[fate or self.primary]
        cols = {"guide": self.guide_names, "gene": self.guide_genes}
        cols |= {f"betahat_{s}": c.beta_mean[:, d] for d, s in enumerate(self.suffixes)}
        cols |= {f"se_{s}": c.beta_sd[:, d] for d, s in enumerate(self.suffixes)}
        return pd.DataFrame(cols)

    def ash_summary(self, fate: str | None = None) -> pd.DataFrame:
        """``gene, betahat, sebetahat, w_d*``: the across-day weighted summary for ash."""
        c = self.contrasts[fate or self.primary]
        cols = {"gene": self.gene_names, "betahat": c.sum_mean, "sebetahat": c.sum_sd}
        cols |= {f"w_{s}": np.full(len(self.gene_names), w) for s, w in zip(self.suffixes, self.day_weights, strict=True)}
        return pd.DataFrame(cols)

    def qc_delta(self, fate: str | None = None) -> pd.DataFrame:
        """Per gene: number of guides and the mean of delta over its guides (~0)."""
        c = self.contrasts[fate or self.primary]
        df = pd.DataFrame({"gene": self.guide_genes, "delta": c.delta_mean})
        out = df.groupby("gene", sort=False)["delta"].agg(n_guides="size", mean_delta="mean").reset_index()
        return out.set_index("gene").reindex(self.gene_names).reset_index()

    def qc_offset(self, fate: str | None = None) -> pd.DataFrame:
        """Per gene and day: theta minus the mean of its guides' beta (~0)."""
        c = self.contrasts[fate or self.primary]
        beta = pd.DataFrame(c.beta_mean, columns=self.suffixes)
        beta["gene"] = self.guide_genes
        mean_beta = beta.groupby("gene", sort=False)[self.suffixes].mean().reindex(self.gene_names).to_numpy()
        cols = {"gene": self.gene_names}
        cols |= {f"offset_{s}": c.theta_mean[:, d] - mean_beta[:, d] for d, s in enumerate(self.suffixes)}
        return pd.DataFrame(cols)


def resolve_day_weights(weights: list[float] | None, day_counts: np.ndarray) -> np.ndarray:
    """Across-day weights w_d >= 0 summing to 1: the configured ones, or proportional to cells per day."""
    n_days = len(day_counts)
    if weights is None:
        w = np.asarray(day_counts, dtype=np.float64)
    else:
        if len(weights) != n_days:
            raise ConfigError(f"weights has {len(weights)} entries but the data have {n_days} days")
        w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


class _Moments:
    """Running mean and variance over chunks of draws (float64, numerically stable)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, x: np.ndarray) -> None:
        n_b = x.shape[0]
        mean_b = x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        d = mean_b - self.mean
        self.mean = self.mean + d * n_b / n
        self.m2 = self.m2 + m2_b + d**2 * self.n * n_b / n
        self.n = n

    def sd(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.n - 1, 1))


def summarise_posterior(fit: FitResult, config: FatebiasConfig) -> PosteriorSummary:
    """Draw ``config.num_posterior_draws`` samples and summarise them per contrast.

    Draws come in chunks, so memory stays bounded for many guides; the same seed gives
    the same numbers. A cluster-robust Laplace posterior's intervals are widened to the
    Student-t ones at the tail of the strictest call (:meth:`FatebiasConfig.call_tail`).
    """
    S = config.num_posterior_draws
    weights = resolve_day_weights(config.weights, fit.day_counts)
    tail = config.call_tail(len(fit.day_labels))
    theta_all, mom_beta, mom_delta = [], _Moments(), _Moments()
    for start in range(0, S, DRAW_CHUNK):
        draws = fit.sample_effects(min(DRAW_CHUNK, S - start), seed=config.seed + 7919 * (1 + start // DRAW_CHUNK), tail=tail)
        theta_all.append(draws.theta)  # (s, L, K, D)
        mom_beta.add(draws.beta)
        mom_delta.add(draws.delta)
    theta = np.concatenate(theta_all)
    q = np.quantile(theta, QUANTILES, axis=0)  # (Q, L, K, D)
    sums = np.einsum("slkd,d->slk", theta, weights)
    contrasts = {}
    for k, fate in enumerate(fit.contrast_fates):
        contrasts[fate] = ContrastSummary(
            fate=fate,
            theta_mean=theta[:, :, k].mean(0),
            theta_sd=theta[:, :, k].std(0, ddof=1),
            theta_quantiles=q[:, :, k],
            beta_mean=mom_beta.mean[:, k],
            beta_sd=mom_beta.sd()[:, k],
            delta_mean=mom_delta.mean[:, k],
            delta_sd=mom_delta.sd()[:, k],
            sum_mean=sums[:, :, k].mean(0),
            sum_sd=sums[:, :, k].std(0, ddof=1),
        )
    names = np.asarray(fit.gene_names, dtype=object)
    return PosteriorSummary(
        contrasts=contrasts,
        primary=fit.contrast_fates[0],
        gene_names=list(fit.gene_names),
        guide_names=list(fit.guide_names),
        guide_genes=list(names[fit.gene_of_guide]),
        day_labels=list(fit.day_labels),
        day_weights=weights,
        n_draws=S,
        seed=config.seed,
    )


@dataclass
class ExportResult:
    """Files written by :func:`export_posterior`, by contrast fate and kind."""

    out_dir: Path
    summary: PosteriorSummary
    files: dict[str, dict[str, Path]] = field(default_factory=dict)
    qc_max: dict[str, dict[str, float]] = field(default_factory=dict)

    def path(self, kind: str, fate: str | None = None) -> Path:
        """The file of ``kind`` (e.g. ``gene_daywise``) for ``fate`` (primary when None)."""
        return self.files[fate or self.summary.primary][kind]


def export_posterior(fit: FitResult, config: FatebiasConfig, out_dir: str | Path | None = None, summary: PosteriorSummary | None = None) -> ExportResult:
    """Write the posterior exports of every contrast into ``out_dir``.

    Parameters
    ----------
    fit
        A fitted (or loaded) posterior.
    config
        Settings: draws, seed, day weights, whether to write the ash summary, QC tolerance.
    out_dir
        Output folder (default ``config.out_dir``).
    summary
        Precomputed summaries (drawn when None).

    Returns
    -------
    ExportResult
        Paths of every file, and the largest QC offsets (a warning is issued when one
        exceeds ``config.qc_offset_tol``).
    """
    out = Path(out_dir or config.out_dir)
    summary = summary or summarise_posterior(fit, config)
    result = ExportResult(out_dir=out, summary=summary)
    sfx_days = summary.suffixes
    all_paths = RunLayout(out, config).all_exports(list(summary.contrasts))
    for fate, c in summary.contrasts.items():
        paths = all_paths[fate]
        write_csv(summary.gene_daywise(fate), paths["gene_daywise"])
        write_csv(summary.guide_daywise(fate), paths["guide_daywise"])
        save_npz(
            paths["theta_npz"],
            mean=c.theta_mean, sd=c.theta_sd, quantiles=c.theta_quantiles, quantile_levels=np.asarray(QUANTILES),
            genes=np.asarray(summary.gene_names), days=np.asarray(summary.day_labels), day_suffixes=np.asarray(sfx_days),
            fate=np.asarray(fate), reference=np.asarray(fit.ref_fate), n_draws=np.asarray(summary.n_draws),
        )
        save_npz(
            paths["delta_npz"],
            mean=c.delta_mean, sd=c.delta_sd, guides=np.asarray(summary.guide_names), genes=np.asarray(summary.guide_genes),
            fate=np.asarray(fate), reference=np.asarray(fit.ref_fate), n_draws=np.asarray(summary.n_draws),
        )
        qc_delta, qc_offset = summary.qc_delta(fate), summary.qc_offset(fate)
        write_csv(qc_delta, paths["qc_delta"])
        write_csv(qc_offset, paths["qc_offset"])
        if "ash_summary" in paths:
            write_csv(summary.ash_summary(fate), paths["ash_summary"])
        result.files[fate] = paths
        max_delta = float(np.nanmax(np.abs(qc_delta["mean_delta"].to_numpy()))) if len(qc_delta) else 0.0
        max_offset = float(np.nanmax(np.abs(qc_offset.filter(like="offset_").to_numpy()))) if len(qc_offset) else 0.0
        result.qc_max[fate] = {"max_abs_mean_delta": max_delta, "max_abs_theta_beta_offset": max_offset}
        for what, value in result.qc_max[fate].items():
            if value > config.qc_offset_tol:
                warnings.warn(f"QC {fate}: {what} = {value:.3g} exceeds qc_offset_tol {config.qc_offset_tol:g}", stacklevel=2)
    return result
