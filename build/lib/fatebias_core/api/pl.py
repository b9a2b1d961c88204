"""Plots of a trained :class:`~fatebias_core.api.FateBias` on a matplotlib ``Axes``.

Like scanpy's and pertpy's ``pl`` functions: each takes the model (or a results table)
and ``ax=None``, draws on ``ax`` (a new figure when None) and returns the ``Axes``, so
panels compose with ``plt.subplots`` and nothing is written to disk. The drawing itself
is that of the run folder's figures and the HTML report
(:mod:`fatebias_core.report.plots`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from fatebias_core.errors import ConfigError
from fatebias_core.report import plots

if TYPE_CHECKING:
    from fatebias_core.api.model import FateBias

__all__ = ["effects", "elbo", "guides", "heatmap", "mode_comparison", "recovery", "volcano"]


def __dir__() -> list[str]:
    """Only the plotting functions (not the helpers this module imports)."""
    return sorted(__all__)


def elbo(model: FateBias, *, start: int = 0, ax: Axes | None = None) -> Axes:
    """The SVI loss per cell from step ``start + 1``, with the likelihood-weight changes marked."""
    info = model.fit_info
    return plots.elbo(model.get_elbo()["loss"].to_numpy(), n_cells=model.n_cells, start=start,
                      weight_steps=info.get("weight_update_steps") if start == 0 else None, ax=ax)


def effects(model: FateBias, *, fate: str | None = None, top: int = 12, ax: Axes | None = None) -> Axes:
    """Gene effects theta by day (posterior mean +/- 2 SD, before mash) of the ``top`` clearest genes."""
    post = model.posterior
    fate = model.resolve_fate(fate)
    c = post.contrasts[fate]
    return plots.effects_by_day(c.theta_mean, c.theta_sd, post.gene_names, post.day_labels, top=top,
                                title=f"{fate} vs {model.config.ref_fate}: gene effects by day", ax=ax)


def heatmap(model: FateBias, *, fate: str | None = None, top: int = 20, ax: Axes | None = None) -> Axes:
    """Posterior (mash) effects of the ``top`` ranked genes by day: hits bold, called days boxed, lfsr stars."""
    ans = model.get_answer(fate)
    rows = np.arange(min(top, len(ans.genes)))
    return plots.effect_heatmap(ans.mean[rows], ans.lfsr[rows], list(ans.genes[rows]), ans.day_labels,
                                called=ans.called[rows], emphasise=ans.hit[rows],
                                title=f"{ans.fate} vs {ans.ref}: top {len(rows)} genes by rank", ax=ax)


def _day_index(model: FateBias, labels: list[str], day: str | int) -> int:
    """Column of ``day``: a position, a column suffix (``d1``) or a day label of the data."""
    if isinstance(day, int | np.integer):
        return int(day)
    if day in labels:
        return labels.index(day)
    data_labels = list(model.posterior.day_labels)
    if day in data_labels:
        return data_labels.index(day)
    raise ConfigError(f"no day {day!r} (days: {', '.join(data_labels)})")


def volcano(model: FateBias, day: str | int, *, fate: str | None = None, label_top: int = 8, ax: Axes | None = None) -> Axes:
    """One day's volcano of the ranked (mash) effects: called genes coloured by sign and named."""
    ans = model.get_answer(fate)
    j = _day_index(model, ans.day_labels, day)
    cfg = model.config
    return plots.volcano(ans.mean[:, j], ans.lfsr[:, j], day=ans.day_labels[j], called=ans.called[:, j],
                         genes=list(ans.genes), sd=ans.sd[:, j], lfsr_thresh=cfg.mash_lfsr_thresh_day,
                         eps=cfg.effect_size_eps, label_top=label_top, fate=ans.fate, ref=ans.ref, ax=ax)


def guides(model: FateBias, gene: str, *, fate: str | None = None, legend: bool = True, ax: Axes | None = None) -> Axes:
    """One gene's effect by day (mean +/- 2 SD, before mash) beside its guides' effects: do the guides agree?"""
    post = model.posterior
    c = post.contrasts[model.resolve_fate(fate)]
    if gene not in post.gene_names:
        raise ConfigError(f"no gene {gene!r} in the fitted model")
    i = post.gene_names.index(gene)
    rows = np.asarray(post.guide_genes) == gene
    ax = plots.guide_concordance(c.theta_mean[i], c.theta_sd[i], c.beta_mean[rows], post.day_labels,
                                 title=f"{gene} ({int(rows.sum())} guides)", ax=ax)
    if legend:
        ax.legend(handles=plots.concordance_legend(), frameon=False, fontsize=7)
    return ax


def mode_comparison(model: FateBias, *, ax: Axes | None = None) -> Axes:
    """Hits of the conservative and enriched mash modes, and how many they share."""
    return plots.mode_comparison(model.get_mode_comparison(), ax=ax)


def recovery(confusion: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Precision, recall and F1 per day of a simulation's scores (``Evaluation.confusion``)."""
    return plots.recovery_rates(confusion, ax=ax)
