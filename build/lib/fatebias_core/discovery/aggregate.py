"""Guide-to-gene aggregation of guide-level mash posteriors (docs/method.md, "Guide-to-gene aggregation").

For each gene and day the posteriors of the gene's guides are combined by a fixed-effect
inverse-variance meta-analysis: with ``w_g = 1 / postsd_g^2``,

    mean = sum_g(w_g postmean_g) / sum_g(w_g),   sd = sqrt(1 / sum_g(w_g)),

and the gene's lfsr on that day is that of Normal(mean, sd): ``Phi(-|mean| / sd)``.
Days are then called with the same rules as hit calling
(:func:`fatebias_core.discovery.calls.call_days`).

A posterior SD of exactly zero (a guide whose posterior is a point, e.g. all mass on
mash's null component after underflow) is handled as the limit of the formula: the
weights are computed relative to the gene's smallest SD on that day,
``w_g = (sd_min / sd_g)^2``, so guides with SD 0 share all the weight equally, the
combined SD is 0, and the lfsr of a point is 0 when its mean is non-zero and 1 when it
is exactly zero (no evidence about the sign: mashr's lfsr counts zero as a false sign).
The relative weights also keep very small SDs from overflowing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import norm

from fatebias_core.config import FatebiasConfig
from fatebias_core.discovery.calls import CallRule, call_days
from fatebias_core.io import PathLike, read_csv, write_csv
from fatebias_core.io.tables import DayAxis, name_column, read_posterior

#: Per-day column prefixes of the aggregated table (mean, SD, lfsr).
AGG_PREFIXES = ("gene_postmean", "gene_postsd", "gene_lfsr")

#: Summary columns of the aggregated table, in file order (per-day columns follow).
AGG_SUMMARY_COLUMNS = (
    "gene",
    "n_guides",
    "best_day",
    "best_day_among_active",
    "active_days",
    "hit_anyday",
    "max_abs_postmean",
    "min_lfsr",
    "min_lfsr_among_active",
    "guide_min_lfsr_min",
    "median_guide_lfsr_min",
)


def normal_lfsr(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """lfsr of Normal(mean, sd): ``min(P(X >= 0), P(X <= 0)) = Phi(-|mean| / sd)``.

    For ``sd == 0`` (a point): 0 when ``mean != 0``, 1 when ``mean == 0``.
    """
    mean = np.asarray(mean, dtype=np.float64)
    sd = np.asarray(sd, dtype=np.float64)
    pos = sd > 0
    p = norm.cdf(-np.abs(mean) / np.where(pos, sd, 1.0))
    return np.where(pos, p, np.where(mean == 0, 1.0, 0.0))


def inverse_variance_meta(
    postmean: np.ndarray, postsd: np.ndarray, codes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-effect inverse-variance combination of rows within groups, per column.

    Parameters
    ----------
    postmean, postsd
        (n, D) estimates and their SDs (>= 0, no NaN).
    codes
        (n,) group index of each row, 0..G-1, every group present (``pd.factorize``).

    Returns
    -------
    mean, sd
        (G, D) combined estimates and SDs; see the module notes for SD 0.
    """
    frame_sd = pd.DataFrame(postsd)
    sd_min = frame_sd.groupby(codes).min().to_numpy()
    row_min = sd_min[codes]
    # Relative weights (sd_min / sd)^2: the usual weights times sd_min^2, which cancels in
    # the mean; equal to 1 for the gene's most precise guide(s), including SD-0 guides.
    w = np.where(postsd == row_min, 1.0, (row_min / np.where(postsd > 0, postsd, 1.0)) ** 2)
    sums = pd.DataFrame(np.hstack([w, w * postmean])).groupby(codes).sum().to_numpy()
    sum_w, sum_wm = np.split(sums, 2, axis=1)
    return sum_wm / sum_w, sd_min / np.sqrt(sum_w)


def aggregate_guides(mash_guide: pd.DataFrame, config: FatebiasConfig, what: str = "guide table") -> pd.DataFrame:
    """Combine a guide-level mash table into gene-level posteriors and calls.

    Parameters
    ----------
    mash_guide
        ``mash_guide_<mode>.csv``: ``guide``, ``gene`` and ``postmean_<day>``,
        ``postsd_<day>``, ``lfsr_<day>`` per day (other columns are ignored; the guides'
        ``lfsr_min`` is recomputed from their lfsr columns).
    config
        Calling settings, as in :func:`fatebias_core.discovery.calls.rank_hits`.
    what
        The table's name for error messages.

    Returns
    -------
    DataFrame
        One row per gene, in order of first appearance, with columns
        :data:`AGG_SUMMARY_COLUMNS` then ``gene_postmean_<day>, gene_postsd_<day>,
        gene_lfsr_<day>`` per day in day order:

        * ``n_guides``: guides (rows) of the gene;
        * ``best_day``: day number of the smallest gene lfsr (earliest on ties),
          ``min_lfsr`` that lfsr;
        * ``active_days`` (comma-separated day numbers), ``best_day_among_active``,
          ``min_lfsr_among_active`` (empty/NaN when no day is active) and
          ``hit_anyday``: the daywise and any-day calls of
          :func:`fatebias_core.discovery.calls.call_days` on the gene posteriors;
        * ``max_abs_postmean``: largest |gene posterior mean| over days;
        * ``guide_min_lfsr_min``, ``median_guide_lfsr_min``: minimum and median over
          the gene's guides of each guide's own ``lfsr_min`` (its smallest lfsr over days).

    Raises
    ------
    InputDataError
        Missing ``guide``/``gene``/posterior columns, no rows, duplicated guide names,
        empty gene names, NaN or negative SDs, lfsr outside [0, 1].
    """
    name_column(mash_guide, "guide", what, unique=True)
    genes = name_column(mash_guide, "gene", what, unique=False)
    post = read_posterior(mash_guide, what=what)
    codes, uniques = pd.factorize(genes, sort=False)
    n_genes = len(uniques)
    mean, sd = inverse_variance_meta(post.postmean, post.postsd, codes)
    lfsr = normal_lfsr(mean, sd)
    calls = call_days(mean, sd, lfsr, CallRule.from_config(config, len(post.axis)))
    called = calls.to_frame(post.axis)
    guide_lfsr_min = pd.Series(post.lfsr.min(axis=1)).groupby(codes).agg(["min", "median"])
    out = pd.DataFrame(
        {
            "gene": np.asarray(uniques, dtype=object),
            "n_guides": np.bincount(codes, minlength=n_genes).astype(np.int64),
            "best_day": called["best_day"].to_numpy(),
            "best_day_among_active": called["best_day_among_active"].array,
            "active_days": called["active_days"].to_numpy(),
            "hit_anyday": calls.hit_anyday,
            "max_abs_postmean": calls.max_abs_postmean,
            "min_lfsr": calls.min_lfsr,
            "min_lfsr_among_active": calls.min_lfsr_among_active,
            "guide_min_lfsr_min": guide_lfsr_min["min"].to_numpy(),
            "median_guide_lfsr_min": guide_lfsr_min["median"].to_numpy(),
        }
    )
    return pd.concat([out, _daywise_block(post.axis, mean, sd, lfsr)], axis=1)


def _daywise_block(axis: DayAxis, mean: np.ndarray, sd: np.ndarray, lfsr: np.ndarray) -> pd.DataFrame:
    """Per-day columns interleaved by day: gene_postmean_d0, gene_postsd_d0, gene_lfsr_d0, ..."""
    cols: dict[str, np.ndarray] = {}
    for j, lab in enumerate(axis.labels):
        for prefix, values in zip(AGG_PREFIXES, (mean, sd, lfsr), strict=True):
            cols[f"{prefix}_{lab}"] = values[:, j]
    return pd.DataFrame(cols)


def aggregate_file(in_path: PathLike, out_path: PathLike, config: FatebiasConfig) -> pd.DataFrame:
    """Read ``mash_guide_<mode>.csv``, aggregate it, write ``gene_from_guide_mash_<mode>.csv``.

    Nothing is written when the input is invalid; the output is written atomically.
    """
    table = read_csv(in_path, what="guide mash table", dtype={"gene": str, "guide": str})
    genes = aggregate_guides(table, config, what=str(in_path))
    write_csv(genes, out_path)
    return genes
