"""Simulate a time-course Perturb-seq experiment from the model, with known truth.

:func:`simulate_experiment` draws everything in memory; :func:`simulate` writes it to a
folder ready for ``fatebias run --config <folder>/config.yaml``.

Design (every draw uses the ``sim_*`` settings; ``C`` non-reference fates, ``D`` days):

* Genes ``G001..``; ``sim_n_guides`` targeting guides spread evenly over the genes
  (the first ``sim_n_guides % sim_n_genes`` genes get one more), named ``<gene>_sg<j>``;
  ``sim_n_ntc_guides`` NTC guides ``NTC_<j>``. Days ``d0..``, replicates ``rep1..``.
* Cells are spread evenly over day x replicate (counts differ by at most one), in
  random order.
* Guides per cell: ``k ~ Poisson((sim_kmax + 1) / 2)`` clipped to ``[1, sim_kmax]``
  (a high-MOI library: most cells carry several guides, none carries none). Of the k
  slots, ``Binomial(k, sim_ntc_fraction)`` hold NTC guides and the rest targeting
  guides; guides within a cell are distinct, drawn uniformly.
* Gene effects theta[l, f, d], for every non-reference fate f independently: exactly
  ``round(sim_active_frac * sim_n_genes)`` genes are active. An active gene has a
  random sign, a magnitude ``U(sim_effect_min, sim_effect_max)`` and one of three day
  profiles with equal probability: ``constant`` (all days), ``onset`` (0 before a
  random day 1..D-1, on from it) or ``transient`` (on up to a random day 0..D-2, 0
  after). On its active days theta = sign * magnitude + N(0, sim_s_time) jitter; on
  other days exactly 0. Inactive genes are exactly 0, plus a gene-constant
  N(0, sim_s_tau) background when ``sim_s_tau > 0``.
* Guide deviations delta[g, f] ~ N(0, sim_s_guide), centred within each gene.
* Nuisance: day intercepts a random walk over days (start and steps N(0, 0.5)), so
  fate proportions shift over time; replicate effects N(0, 0.1); burden slope
  N(0, 0.05) on the burden centred within day.
* eta and pi as in the model (docs/method.md, "Model"; the reference fate's logit is
  0); observed fate probabilities ``p_i ~ Dirichlet(sim_concentration * pi_i)``,
  floored at 1e-8 and renormalised in float64.

Realism settings, each off by default (the defaults give exactly the design above):

* Clones (``sim_clone_size_mean > 0``, at least 1): clone sizes are
  ``1 + Poisson(sim_clone_size_mean - 1)`` (a Poisson, so sizes are never 0 and the mean
  is the setting), or with ``sim_clone_size_cv > 0`` ``1 + NegativeBinomial`` with that
  mean and coefficient of variation (heavy-tailed: a few large clones, many small ones),
  drawn until ``sim_n_cells`` are covered; the last clone is cut to fit.
  Each clone has one guide set (drawn as a cell's is above), one replicate (balanced
  over clones: replicate labels are a permutation of ``clone % R``) and a per-contrast
  logit bias ``N(0, sim_clone_bias_sd^2)`` added to its cells' eta. Days are drawn per
  cell, balanced over all cells (a permutation of ``cell % D``), so a clone's cells are
  spread over days at random. Cells come in random order; clone ids are in
  ``SimulatedParams.clone`` and, with ``sim_write_clone_labels``, in ``obs["clone"]``
  (``clone<j>``). Cells per day x replicate are then only roughly balanced.
* Incomplete guide capture (``sim_guide_detection < 1``): each guide a cell carries
  (targeting or NTC) is detected independently with this probability. Undetected guides
  still act on the cell's fate (and count in its true burden) but are missing from the
  guide matrix, so sister cells of a clone show different subsets of its guide set.
* Uneven knockdown (``sim_knockdown_sd > 0``): an efficiency
  ``e[g, r] = clip(N(1, sim_knockdown_sd^2), 0, 2)`` per targeting guide x replicate
  (mean exactly 1 by symmetry) multiplies the guide's effect beta[g] in that replicate.
* Batch offsets (``sim_batch_sd > 0``): ``N(0, sim_batch_sd^2)`` per contrast x day x
  replicate added to eta.
* Noise model (``sim_noise``): ``dirichlet`` as above, or ``logistic_normal``:
  ``p_i = softmax(eta_i + N(0, sim_logit_noise_sd^2))`` on each non-reference logit,
  floored and renormalised as above.
* CellRank-like smoothing (``sim_smoothing_k > 1``): after the noise, within each day,
  ``p' = (1 - w) p + w * mean of p over the k nearest neighbours in fate-probability
  space`` (the cell itself included; ``w = sim_smoothing_weight``; a k-d tree).

Estimand. The fitted model (with its clone random effect) targets effects on a cell's
mean fate probabilities given its clone. Dirichlet noise has mean pi, but per-cell logit
noise does not average out on the logit scale: E[softmax(eta + noise)] is flatter than
softmax(eta), so the log-ratio of mean probabilities moves by about kappa * theta with
kappa < 1; smoothing averages cells with different guides and attenuates further. kappa
is estimated per contrast by Monte Carlo: on at most 20,000 cells, 32 replicates of the
logit noise, each cell's clone bias held at its drawn value, give each cell's mean
probabilities m_i, and kappa is the least-squares slope of the day-centred
``log(m_f / m_ref)`` on the day-centred latent eta_f + clone bias (exactly 1 without
logit noise). Smoothing's factor is estimated the same way, an approximation: over 8
replicates of the cell-level noise (clone biases held), each smoothed, the slope on eta
of the smoothed mean probabilities' day-centred log-ratio over the unsmoothed one's; it
multiplies kappa. kappa is a per-cell attenuation, given a cell's covariates and clone
(as the model conditions on them). A model without a clone effect targets the effect on
the mean over clones too, attenuated further by the clone biases: that factor is in
``estimand_parts`` (``clone``) of the metadata, not in the truth tables.
With uneven knockdown a gene's effect in the experiment is theta times the realised mean
efficiency of its guides over the replicates (the small product of efficiencies and guide
deviations is left out, so null genes stay exactly 0). ``truth_estimand_daywise*.csv``
hold kappa * efficiency * theta; ``truth_daywise*.csv`` keep the latent theta.

Randomness comes from independent streams spawned from ``sim_seed``: effects (theta,
delta, nuisance), cells (design and guides) and noise (Dirichlet, UMI counts), then
clones (sizes, days, replicates, guide sets and biases of clones), knockdown, batch,
logit noise, the estimand's Monte Carlo and guide detection. The first three are used exactly as without
the realism settings, so the defaults reproduce the design above draw for draw and no
setting changes the effects; the cell design (days, replicates, guides) changes only
with clones on (the clone stream then replaces the cells stream). The guide UMI counts
follow the Dirichlet draws on the noise stream, so they can change whenever pi or the
noise model does. The true effects depend only on the seed and the gene, guide, day,
replicate and effect settings, not on the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml
from scipy.spatial import cKDTree

from fatebias_core import __version__
from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError
from fatebias_core.io import atomic_path, write_csv, write_text
from fatebias_core.io import layout as names
from fatebias_core.types import center_by_group

__all__ = [
    "simulate",
    "simulate_experiment",
    "SimulatedData",
    "SimulatedParams",
    "SimulationResult",
]

DAY_INTERCEPT_SD = 0.5
"""SD of the first day's intercept and of each day-to-day step of the intercept walk."""
REP_EFFECT_SD = 0.1
"""SD of the replicate effects b[f, r]."""
BURDEN_SLOPE_SD = 0.05
"""SD of the burden slope c[f]."""
PROB_FLOOR = 1e-8
"""Smallest simulated fate probability (before renormalising)."""
TERMINAL_PROB = 0.9
"""A cell is labelled with a terminal state in ``obs["term_states_*"]`` above this probability."""
UMI_EXTRA_MEAN = 2.0
"""Guide UMI counts of a detected guide are 1 + Poisson(this)."""
PROFILES = ("constant", "onset", "transient")
FATE_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
)
RUN_PATH_KEYS = ("adata_path", "guide_map_csv", "out_dir", "D", "R")
N_STREAMS = 9
"""Streams spawned from ``sim_seed``: effects, cells, noise (the original three, used as
before), clones, knockdown, batch, logit noise, estimand Monte Carlo, guide detection."""
ESTIMAND_MC_REPS = 32
"""Monte Carlo replicates of the logit noise and clone bias behind the estimand's kappa."""
ESTIMAND_SMOOTH_REPS = 8
"""Monte Carlo replicates of the whole cell-level noise behind smoothing's share of kappa."""
ESTIMAND_MAX_CELLS = 20000
"""Most cells (a random subsample) in the estimand's noise/clone Monte Carlo."""


# --------------------------------------------------------------------------- typed results
@dataclass(frozen=True)
class SimulatedParams:
    """The true parameters of a simulation (contrast fates in ``config.contrast_fates`` order).

    Attributes
    ----------
    contrast_fates
        C non-reference fates, primary contrast first.
    gene_names, guide_names, ntc_names
        L genes, G targeting guides (grouped by gene), NTC guides.
    gene_of_guide
        (G,) 0-based gene index of each targeting guide.
    theta
        (L, C, D) gene-by-day effects.
    delta
        (G, C) guide deviations, mean zero within each gene.
    active
        (L, C) bool, the genes drawn active.
    profile
        (L, C) day profile of each gene: ``none`` (inactive), ``constant``, ``onset``, ``transient``.
    day_intercept, rep_effect, burden_slope
        (C, D), (C, R), (C,) nuisance terms.
    day, rep, burden
        (N,) per-cell day index, replicate index and guide count (NTCs included).
    true_probs
        (N, F) noiseless fate probabilities pi in ``config.fates`` order: softmax of
        ``eta`` plus the cell's clone bias (everything but the per-cell noise).
    eta
        (N, C) latent contrast logits: nuisance + guide effects (scaled by the knockdown
        efficiencies) + batch offsets; without clone bias and noise.
    clone
        (N,) 0-based clone of each cell, or ``None`` when clones are off.
    clone_bias
        (n_clones, C) per-clone logit biases, or ``None`` when clones are off.
    knockdown
        (G, R) knockdown efficiency of each targeting guide in each replicate, or
        ``None`` when ``sim_knockdown_sd`` is 0.
    batch_offset
        (C, D, R) logit offsets per contrast x day x replicate, or ``None`` when
        ``sim_batch_sd`` is 0.
    """

    contrast_fates: tuple[str, ...]
    gene_names: tuple[str, ...]
    guide_names: tuple[str, ...]
    ntc_names: tuple[str, ...]
    gene_of_guide: np.ndarray
    theta: np.ndarray
    delta: np.ndarray
    active: np.ndarray
    profile: np.ndarray
    day_intercept: np.ndarray
    rep_effect: np.ndarray
    burden_slope: np.ndarray
    day: np.ndarray
    rep: np.ndarray
    burden: np.ndarray
    true_probs: np.ndarray
    eta: np.ndarray | None = None
    clone: np.ndarray | None = None
    clone_bias: np.ndarray | None = None
    knockdown: np.ndarray | None = None
    batch_offset: np.ndarray | None = None

    @property
    def beta(self) -> np.ndarray:
        """(G, C, D) guide effects theta[l(g)] + delta[g]."""
        return self.theta[self.gene_of_guide] + self.delta[:, :, None]

    @property
    def beta_by_rep(self) -> np.ndarray:
        """(G, C, D, R) guide effects in each replicate: beta scaled by the knockdown efficiency."""
        n_reps = self.rep_effect.shape[1]
        eff = (
            np.ones((len(self.gene_of_guide), n_reps)) if self.knockdown is None else self.knockdown
        )
        return self.beta[..., None] * eff[:, None, None, :]


@dataclass(frozen=True)
class SimulatedData:
    """A simulated experiment in memory.

    Attributes
    ----------
    adata
        AnnData in CellRank 2's on-disk layout (see :func:`simulate`).
    guide_map
        Columns ``guide_name``, ``gene_name``, ``is_ntc`` (0/1).
    truth_daywise
        Per contrast fate, a table ``gene, true_d0..true_d{D-1}`` of theta.
    truth_guides
        ``guide, gene, delta_<fate>`` for every contrast fate.
    params
        The true parameters.
    metadata
        Settings and realised counts (what ``sim_metadata.yaml`` holds).
    truth_estimand
        Per contrast fate, ``gene, true_d0..`` of kappa[fate] x theta: the effects on the
        mean fate probabilities' log-ratio that the fitted model targets (see the module
        docstring); equal to ``truth_daywise`` when kappa is 1.
    kappa
        Per contrast fate, the attenuation factor kappa (1.0 without logit noise, clone
        bias or smoothing).
    """

    adata: Any
    guide_map: pd.DataFrame
    truth_daywise: dict[str, pd.DataFrame]
    truth_guides: pd.DataFrame
    params: SimulatedParams
    metadata: dict[str, Any]
    truth_estimand: dict[str, pd.DataFrame] = field(default_factory=dict)
    kappa: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    out_dir
        The output folder.
    paths
        Written files by role (``adata``, ``guide_map``, ``truth_daywise``,
        ``truth_daywise_<FATE>``, ``truth_estimand_daywise``,
        ``truth_estimand_daywise_<FATE>``, ``truth_guides``, ``metadata``, ``config``).
    counts
        Realised counts (cells, genes, guides, days, replicates, active genes per fate).
    truth
        The primary contrast's truth table (``gene, true_d0..``).
    """

    out_dir: Path
    paths: dict[str, Path]
    counts: dict[str, int]
    truth: pd.DataFrame
    active_gene_days: dict[str, int] = field(default_factory=dict)

    def describe(self, next_step: bool = True) -> str:
        """A short human-readable account of the simulation (with ``next_step``: the command that runs it)."""
        c = self.counts
        active = ", ".join(
            f"{k.removeprefix('n_active_')} {v}" for k, v in c.items() if k.startswith("n_active_")
        )
        truly = ", ".join(f"{k} {v}" for k, v in self.active_gene_days.items())
        files = ", ".join(p.name for p in self.paths.values())
        return "\n".join(
            [
                f"simulated {c['n_cells']} cells over {c['n_days']} days x {c['n_reps']} replicates: "
                f"{c['n_genes']} genes, {c['n_guides']} targeting + {c['n_ntc_guides']} NTC guides",
                f"  active genes: {active}; truly active gene/days: {truly}",
                f"  wrote {files} to {self.out_dir}",
            ]
            + ([f"  next: fatebias check --config {self.paths['config']}, then fatebias run --config {self.paths['config']}"] if next_step else [])
        )


# --------------------------------------------------------------------------- drawing
def _check(config: FatebiasConfig) -> None:
    if config.sim_n_guides < config.sim_n_genes:
        raise ConfigError(
            f"sim_n_guides ({config.sim_n_guides}) must be at least sim_n_genes "
            f"({config.sim_n_genes}): every gene needs a guide"
        )
    if config.sim_n_cells < config.sim_n_days * config.sim_n_reps:
        raise ConfigError(
            f"sim_n_cells ({config.sim_n_cells}) must be at least sim_n_days x sim_n_reps "
            f"({config.sim_n_days * config.sim_n_reps}) so that every day and replicate has cells"
        )
    if 0 < config.sim_clone_size_mean < 1:
        raise ConfigError(
            f"sim_clone_size_mean ({config.sim_clone_size_mean}) must be 0 (no clones) or at least 1"
        )
    if config.sim_clone_bias_sd > 0 and config.sim_clone_size_mean == 0:
        raise ConfigError("sim_clone_bias_sd > 0 needs clones: set sim_clone_size_mean >= 1")
    if config.sim_clone_size_cv > 0:
        mean = config.sim_clone_size_mean
        floor = np.sqrt(max(mean - 1.0, 0.0)) / max(mean, 1.0)
        if mean == 0 or config.sim_clone_size_cv <= floor:
            raise ConfigError(
                f"sim_clone_size_cv ({config.sim_clone_size_cv}) needs clones (sim_clone_size_mean >= 1) and must exceed "
                f"the Poisson's coefficient of variation ({floor:.3f} at mean {mean})"
            )


def _names(prefix: str, n: int, start: int = 1) -> list[str]:
    width = len(str(n + start - 1))
    return [f"{prefix}{i:0{width}d}" for i in range(start, n + start)]


def _distinct_draws(rng: np.random.Generator, counts: np.ndarray, n_items: int) -> np.ndarray:
    """Per row, ``counts[i]`` distinct items of ``0..n_items-1``; -1 pads.

    Duplicates within a row are redrawn until none is left. The procedure treats all
    items alike, so every subset of a given size is equally likely.
    """
    width = max(int(counts.max(initial=0)), 1)
    used = np.arange(width) < counts[:, None]
    if n_items == 0 or not used.any():
        return np.full((len(counts), width), -1, dtype=np.int64)
    draws = rng.integers(0, n_items, size=used.shape)
    sentinel = -1 - np.arange(width)  # unused slots never collide
    while True:
        vals = np.where(used, draws, sentinel)
        order = np.argsort(vals, axis=1, kind="stable")
        ranked = np.take_along_axis(vals, order, axis=1)
        repeat = np.zeros(used.shape, dtype=bool)
        repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        if not repeat.any():
            return np.where(used, draws, -1)
        redo = np.zeros(used.shape, dtype=bool)
        np.put_along_axis(redo, order, repeat, axis=1)
        draws[redo] = rng.integers(0, n_items, size=int(redo.sum()))


def _guide_sets(
    rng: np.random.Generator, n: int, config: FatebiasConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` guide sets drawn as the module docstring says: targets, NTCs (-1 padded), burden."""
    kmax, n_guides, n_ntc = config.sim_kmax, config.sim_n_guides, config.sim_n_ntc_guides
    k = np.clip(rng.poisson((kmax + 1) / 2, size=n), 1, kmax)
    k_ntc = np.minimum(rng.binomial(k, config.sim_ntc_fraction), n_ntc)
    k_target = np.minimum(k - k_ntc, n_guides)
    targets = _distinct_draws(rng, k_target, n_guides)
    ntcs = _distinct_draws(rng, k_ntc, n_ntc)
    return targets, ntcs, k_target + k_ntc


def _clone_sizes(rng: np.random.Generator, n_cells: int, mean: float, cv: float = 0.0) -> np.ndarray:
    """Clone sizes drawn until ``n_cells`` are covered; the last is cut to fit.

    ``1 + Poisson(mean - 1)``; with ``cv > 0`` ``1 + NegativeBinomial`` of mean ``mean - 1``
    whose variance makes the sizes' coefficient of variation ``cv`` (a gamma-Poisson mixture).
    """
    mu = mean - 1.0
    var = (cv * mean) ** 2
    shape = mu * mu / (var - mu) if cv > 0 and mu > 0 else 0.0
    sizes = np.zeros(0, dtype=np.int64)
    while sizes.sum() < n_cells:  # a loop over batches of clones, rarely more than one
        batch = int(np.ceil((n_cells - sizes.sum()) / mean * 1.1)) + 10
        rate = rng.gamma(shape, mu / shape, size=batch) if shape > 0 else np.full(batch, mu)
        sizes = np.concatenate([sizes, 1 + rng.poisson(rate)])
    n_clones = int(np.searchsorted(np.cumsum(sizes), n_cells)) + 1
    sizes = sizes[:n_clones].copy()
    sizes[-1] -= int(sizes.sum()) - n_cells
    return sizes


def _softmax(eta_c: np.ndarray, cols: list[int], n_fates: int) -> np.ndarray:
    """Fate probabilities from contrast logits ``(..., C)`` placed in ``cols``; reference logit 0."""
    eta = np.zeros((*eta_c.shape[:-1], n_fates))
    eta[..., cols] = eta_c
    eta -= eta.max(axis=-1, keepdims=True)
    pi = np.exp(eta)
    pi /= pi.sum(axis=-1, keepdims=True)
    return pi


def _floor(probs: np.ndarray) -> np.ndarray:
    probs = np.maximum(probs, PROB_FLOOR)
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def _dirichlet(rng: np.random.Generator, concentration: float, pi: np.ndarray) -> np.ndarray:
    """Dirichlet(concentration * pi) rows via normalised gammas, floored and renormalised."""
    gam = rng.standard_gamma(np.maximum(concentration * pi, 1e-300))
    total = gam.sum(axis=1, keepdims=True)
    probs = np.where(total > 0, gam / np.where(total > 0, total, 1.0), pi)
    return _floor(probs)


def _smooth(probs: np.ndarray, day: np.ndarray, n_days: int, k: int, weight: float) -> np.ndarray:
    """Within each day, p' = (1 - w) p + w mean of p over the k nearest neighbours (self included).

    Neighbours are found with :class:`scipy.spatial.cKDTree` in fate-probability space;
    a cell is always among its own neighbours (if ties push it out, it replaces the
    farthest one). Rows stay on the simplex (convex combinations of simplex rows).
    """
    out = probs.copy()
    for d in range(n_days):  # a loop over days; cells are vectorised
        idx = np.flatnonzero(day == d)
        kk = min(k, idx.size)
        if kk <= 1:
            continue
        p = probs[idx]
        _, nb = cKDTree(p).query(p, k=kk)
        own = np.arange(idx.size)
        missing = ~(nb == own[:, None]).any(axis=1)
        nb[missing, -1] = own[missing]
        out[idx] = (1.0 - weight) * p + weight * p[nb].mean(axis=1)
    out /= out.sum(axis=1, keepdims=True)
    return out


def _day_centred(x: np.ndarray, day: np.ndarray, n_days: int) -> np.ndarray:
    """(N, ...) values minus their mean within each day, float64."""
    counts = np.bincount(day, minlength=n_days).astype(np.float64)
    sums = np.zeros((n_days, *x.shape[1:]))
    np.add.at(sums, day, x)
    means = sums / np.maximum(counts, 1.0).reshape(-1, *([1] * (x.ndim - 1)))
    return x - means[day]


def _slopes(x: np.ndarray, y: np.ndarray, day: np.ndarray, n_days: int) -> np.ndarray:
    """Per column, the least-squares slope through the origin of day-centred y on day-centred x."""
    xc, yc = _day_centred(x, day, n_days), _day_centred(y, day, n_days)
    sxx = (xc * xc).sum(axis=0)
    return np.where(sxx > 0, (xc * yc).sum(axis=0) / np.where(sxx > 0, sxx, 1.0), 1.0)


def _log_ratios(m: np.ndarray, cols: list[int], ref: int) -> np.ndarray:
    return np.log(m[:, cols]) - np.log(m[:, [ref]])


def _draw_effects(
    config: FatebiasConfig, gene_of_guide: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """theta, delta, activity, profiles and nuisance terms; a fixed sequence of draws."""
    n_genes, n_guides = config.sim_n_genes, len(gene_of_guide)
    n_c, n_days, n_reps = len(config.contrast_fates), config.sim_n_days, config.sim_n_reps
    n_active = int(round(config.sim_active_frac * n_genes))

    rank = np.argsort(rng.random((n_c, n_genes)), axis=1)
    active = np.zeros((n_genes, n_c), dtype=bool)
    active[rank[:, :n_active].T, np.arange(n_c)] = True
    sign = rng.choice(np.array([-1.0, 1.0]), size=(n_genes, n_c))
    magnitude = rng.uniform(config.sim_effect_min, config.sim_effect_max, size=(n_genes, n_c))
    kind = rng.integers(0, len(PROFILES), size=(n_genes, n_c))
    onset = rng.integers(1, n_days, size=(n_genes, n_c))
    end = rng.integers(0, n_days - 1, size=(n_genes, n_c))
    jitter = rng.normal(0.0, 1.0, size=(n_genes, n_c, n_days)) * config.sim_s_time
    background = rng.normal(0.0, 1.0, size=(n_genes, n_c)) * config.sim_s_tau
    delta_raw = rng.normal(0.0, 1.0, size=(n_guides, n_c)) * config.sim_s_guide
    day_intercept = np.cumsum(rng.normal(0.0, DAY_INTERCEPT_SD, size=(n_c, n_days)), axis=1)
    rep_effect = rng.normal(0.0, REP_EFFECT_SD, size=(n_c, n_reps))
    burden_slope = rng.normal(0.0, BURDEN_SLOPE_SD, size=n_c)

    days = np.arange(n_days)
    on = np.select(
        [kind[..., None] == 0, kind[..., None] == 1],
        [np.ones((1, 1, n_days), dtype=bool), days >= onset[..., None]],
        default=days <= end[..., None],
    )
    on &= active[..., None]
    theta = np.where(on, (sign * magnitude)[..., None] + jitter, 0.0)
    theta += np.where(active, 0.0, background)[..., None]
    profile = np.where(active, np.asarray(PROFILES, dtype=object)[kind], "none")

    # Centre the guide deviations within each gene, column by column of fates.
    counts = np.bincount(gene_of_guide, minlength=n_genes)
    sums = np.stack(
        [
            np.bincount(gene_of_guide, weights=delta_raw[:, c], minlength=n_genes)
            for c in range(n_c)
        ],
        axis=1,
    )
    delta = delta_raw - (sums / counts[:, None])[gene_of_guide]
    return {
        "theta": theta,
        "delta": delta,
        "active": active,
        "profile": profile,
        "day_intercept": day_intercept,
        "rep_effect": rep_effect,
        "burden_slope": burden_slope,
    }


@dataclass(frozen=True)
class _Streams:
    """The independent random streams spawned from ``sim_seed`` (see the module docstring)."""

    effects: np.random.Generator
    cells: np.random.Generator
    noise: np.random.Generator
    clones: np.random.Generator
    knockdown: np.random.Generator
    batch: np.random.Generator
    logit: np.random.Generator
    estimand: np.random.Generator
    detection: np.random.Generator


@dataclass(frozen=True)
class _Design:
    """Names and labels of the simulated genes, guides, days, replicates and cells."""

    gene_names: list[str]
    gene_of_guide: np.ndarray
    guide_names: list[str]
    ntc_names: list[str]
    day_labels: list[str]
    rep_labels: list[str]
    cell_names: np.ndarray


@dataclass(frozen=True)
class _Cells:
    """Each cell's day, replicate and guides, and the clones behind them (``None`` without clones)."""

    day: np.ndarray
    rep: np.ndarray
    targets: np.ndarray
    ntcs: np.ndarray
    burden: np.ndarray
    clone: np.ndarray | None = None
    clone_bias: np.ndarray | None = None


def _streams(seed: int) -> _Streams:
    """The :data:`N_STREAMS` generators spawned from ``seed``, in their fixed order."""
    return _Streams(*(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(N_STREAMS)))


def _design(config: FatebiasConfig) -> _Design:
    """Gene, guide, day, replicate and cell names; guides spread evenly over the genes."""
    n_genes, n_guides = config.sim_n_genes, config.sim_n_guides
    gene_names = _names("G", n_genes)
    per_gene = n_guides // n_genes + (np.arange(n_genes) < n_guides % n_genes)
    gene_of_guide = np.repeat(np.arange(n_genes), per_gene)
    within = np.arange(n_guides) - np.repeat(np.cumsum(per_gene) - per_gene, per_gene) + 1
    return _Design(
        gene_names=gene_names,
        gene_of_guide=gene_of_guide,
        guide_names=[f"{gene_names[g]}_sg{j}" for g, j in zip(gene_of_guide, within, strict=True)],
        ntc_names=_names("NTC_", config.sim_n_ntc_guides),
        day_labels=[f"d{d}" for d in range(config.sim_n_days)],
        rep_labels=[f"rep{r + 1}" for r in range(config.sim_n_reps)],
        cell_names=np.asarray(_names("cell", config.sim_n_cells), dtype=object),
    )


def _draw_cells(config: FatebiasConfig, streams: _Streams, n_c: int) -> _Cells:
    """Day, replicate and guides of each cell: independent cells (the cells stream) or clones."""
    if config.sim_clone_size_mean > 0:
        return _draw_clones(config, streams.clones, n_c)
    n_days, n_reps = config.sim_n_days, config.sim_n_reps
    group = streams.cells.permutation(np.arange(config.sim_n_cells) % (n_days * n_reps))
    targets, ntcs, burden = _guide_sets(streams.cells, config.sim_n_cells, config)
    return _Cells(group // n_reps, group % n_reps, targets, ntcs, burden)


def _draw_clones(config: FatebiasConfig, rng: np.random.Generator, n_c: int) -> _Cells:
    """Cells in clones sharing a guide set, a replicate and a logit bias (the clones stream)."""
    n_cells, n_days, n_reps = config.sim_n_cells, config.sim_n_days, config.sim_n_reps
    sizes = _clone_sizes(rng, n_cells, config.sim_clone_size_mean, config.sim_clone_size_cv)
    n_clones = len(sizes)
    clone = rng.permutation(np.repeat(np.arange(n_clones), sizes))
    day = rng.permutation(np.arange(n_cells) % n_days)
    rep = rng.permutation(np.arange(n_clones) % n_reps)[clone]
    c_targets, c_ntcs, c_burden = _guide_sets(rng, n_clones, config)
    clone_bias = rng.normal(0.0, 1.0, size=(n_clones, n_c)) * config.sim_clone_bias_sd
    if (np.bincount(day * n_reps + rep, minlength=n_days * n_reps) == 0).any():
        raise ConfigError(
            f"{n_clones} clones leave a day x replicate group without cells: "
            "lower sim_clone_size_mean or raise sim_n_cells"
        )
    return _Cells(
        day, rep, c_targets[clone], c_ntcs[clone], c_burden[clone], clone=clone, clone_bias=clone_bias
    )


def _guide_sums(
    config: FatebiasConfig,
    eff: dict[str, np.ndarray],
    gene_of_guide: np.ndarray,
    cells: _Cells,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C) sum of each cell's guide effects on its day, and the knockdown efficiencies (or None)."""
    n_guides, n_days = len(gene_of_guide), config.sim_n_days
    targets, day = cells.targets, cells.day
    beta = np.zeros((n_guides + 1, eff["theta"].shape[1], n_days))
    beta[1:] = eff["theta"][gene_of_guide] + eff["delta"][:, :, None]
    ids = np.where(targets >= 0, targets + 1, 0)
    if config.sim_knockdown_sd > 0:
        knockdown = np.clip(
            1.0 + rng.normal(0.0, 1.0, size=(n_guides, config.sim_n_reps)) * config.sim_knockdown_sd,
            0.0,
            2.0,
        )
        scale = np.where(targets >= 0, knockdown[np.maximum(targets, 0), cells.rep[:, None]], 0.0)
        return (beta[ids, :, day[:, None]] * scale[..., None]).sum(axis=1), knockdown
    return beta[ids, :, day[:, None]].sum(axis=1), None  # (N, C); id 0 adds nothing


def _latent_logits(
    config: FatebiasConfig,
    eff: dict[str, np.ndarray],
    gene_of_guide: np.ndarray,
    cells: _Cells,
    streams: _Streams,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(N, C) eta per contrast fate (reference logit 0), the knockdown and the batch offsets."""
    n_days, day, rep = config.sim_n_days, cells.day, cells.rep
    guide_sum, knockdown = _guide_sums(config, eff, gene_of_guide, cells, streams.knockdown)
    burden_c = center_by_group(cells.burden, day, n_days).astype(np.float64)
    eta_c = (
        eff["day_intercept"][:, day].T
        + eff["rep_effect"][:, rep].T
        + eff["burden_slope"][None, :] * burden_c[:, None]
        + guide_sum
    )
    batch_offset: np.ndarray | None = None
    if config.sim_batch_sd > 0:
        n_c = eta_c.shape[1]
        batch_offset = (
            streams.batch.normal(0.0, 1.0, size=(n_c, n_days, config.sim_n_reps)) * config.sim_batch_sd
        )
        eta_c = eta_c + batch_offset[:, day, rep].T
    return eta_c, knockdown, batch_offset


def _observed_probs(
    config: FatebiasConfig,
    pi: np.ndarray,
    eta_cell: np.ndarray,
    cols: list[int],
    day: np.ndarray,
    streams: _Streams,
) -> np.ndarray:
    """Observed fate probabilities: Dirichlet or logistic-normal noise, then optional smoothing."""
    if config.sim_noise == "dirichlet":
        probs = _dirichlet(streams.noise, config.sim_concentration, pi)
    else:
        noise = streams.logit.normal(0.0, 1.0, size=eta_cell.shape) * config.sim_logit_noise_sd
        probs = _floor(_softmax(eta_cell + noise, cols, len(config.fates)))
    if config.sim_smoothing_k > 1 and config.sim_smoothing_weight > 0:
        probs = _smooth(
            probs, day, config.sim_n_days, config.sim_smoothing_k, config.sim_smoothing_weight
        )
    return probs


def _detected(config: FatebiasConfig, cells: _Cells, rng: np.random.Generator) -> _Cells:
    """The cells with only their detected guides (each kept with probability ``sim_guide_detection``)."""
    p = config.sim_guide_detection
    if p >= 1.0:
        return cells
    targets = np.where(rng.random(cells.targets.shape) < p, cells.targets, -1)
    ntcs = np.where(rng.random(cells.ntcs.shape) < p, cells.ntcs, -1)
    burden = (targets >= 0).sum(axis=1) + (ntcs >= 0).sum(axis=1)
    return replace(cells, targets=targets, ntcs=ntcs, burden=burden)


def _guide_umi_matrix(
    config: FatebiasConfig, cells: _Cells, rng: np.random.Generator
) -> sp.csr_matrix:
    """(N, G + NTC) guide UMI counts: targeting columns (gene order), then NTC columns."""
    n_guides, targets, ntcs = config.sim_n_guides, cells.targets, cells.ntcs
    rows_t, slot_t = np.nonzero(targets >= 0)
    rows_n, slot_n = np.nonzero(ntcs >= 0)
    rows = np.concatenate([rows_t, rows_n])
    cols_g = np.concatenate([targets[rows_t, slot_t], n_guides + ntcs[rows_n, slot_n]])
    umi = (1 + rng.poisson(UMI_EXTRA_MEAN, size=rows.size)).astype(np.float32)
    shape = (config.sim_n_cells, n_guides + config.sim_n_ntc_guides)
    guide_matrix = sp.csr_matrix((umi, (rows, cols_g)), shape=shape)
    guide_matrix.sort_indices()
    return guide_matrix


def _guide_map(design: _Design) -> pd.DataFrame:
    """The guide map: ``guide_name, gene_name, is_ntc`` (targeting guides, then NTCs)."""
    n_guides, n_ntc = len(design.guide_names), len(design.ntc_names)
    return pd.DataFrame(
        {
            "guide_name": design.guide_names + design.ntc_names,
            "gene_name": [design.gene_names[g] for g in design.gene_of_guide] + ["non-targeting"] * n_ntc,
            "is_ntc": np.r_[np.zeros(n_guides, dtype=int), np.ones(n_ntc, dtype=int)],
        }
    )


def _daywise_tables(
    gene_names: list[str], contrasts: tuple[str, ...] | list[str], effects: np.ndarray
) -> dict[str, pd.DataFrame]:
    """Per contrast fate, a table ``gene, true_d0..`` of the (L, C, D) ``effects``."""
    return {
        f: pd.DataFrame(
            {"gene": gene_names, **{f"true_d{d}": effects[:, c, d] for d in range(effects.shape[2])}}
        )
        for c, f in enumerate(contrasts)
    }


def _gene_efficiency(params: SimulatedParams, n_genes: int) -> np.ndarray:
    """(L,) each gene's realised mean knockdown efficiency over its guides and the replicates."""
    if params.knockdown is None:
        return np.ones(n_genes)
    return np.bincount(
        params.gene_of_guide, weights=params.knockdown.mean(axis=1), minlength=n_genes
    ) / np.bincount(params.gene_of_guide, minlength=n_genes)


def _truth_estimand(
    config: FatebiasConfig, params: SimulatedParams, kappa: np.ndarray
) -> dict[str, pd.DataFrame]:
    """Per contrast fate, ``gene, true_d0..`` of kappa x efficiency x theta (the fit's target)."""
    # A gene's effect in this experiment is that of its guides as they knocked down here:
    # theta scaled by the realised mean efficiency of its guides over the replicates.
    gene_efficiency = _gene_efficiency(params, len(params.gene_names))
    theta = params.theta
    return {
        f: pd.DataFrame(
            {
                "gene": list(params.gene_names),
                **{f"true_d{d}": kappa[c] * gene_efficiency * theta[:, c, d] for d in range(theta.shape[2])},
            }
        )
        for c, f in enumerate(params.contrast_fates)
    }


def _truth_guides(design: _Design, contrasts: tuple[str, ...] | list[str], delta: np.ndarray) -> pd.DataFrame:
    """``guide, gene, delta_<fate>`` for every targeting guide and contrast fate."""
    return pd.DataFrame(
        {
            "guide": design.guide_names,
            "gene": [design.gene_names[g] for g in design.gene_of_guide],
            **{f"delta_{f}": delta[:, c] for c, f in enumerate(contrasts)},
        }
    )


def _params(
    contrasts: tuple[str, ...] | list[str],
    design: _Design,
    eff: dict[str, np.ndarray],
    cells: _Cells,
    pi: np.ndarray,
    eta_c: np.ndarray,
    knockdown: np.ndarray | None,
    batch_offset: np.ndarray | None,
) -> SimulatedParams:
    """The true parameters gathered into a :class:`SimulatedParams`."""
    return SimulatedParams(
        contrast_fates=tuple(contrasts),
        gene_names=tuple(design.gene_names),
        guide_names=tuple(design.guide_names),
        ntc_names=tuple(design.ntc_names),
        gene_of_guide=design.gene_of_guide,
        theta=eff["theta"],
        delta=eff["delta"],
        active=eff["active"],
        profile=eff["profile"],
        day_intercept=eff["day_intercept"],
        rep_effect=eff["rep_effect"],
        burden_slope=eff["burden_slope"],
        day=cells.day,
        rep=cells.rep,
        burden=cells.burden,
        true_probs=pi,
        eta=eta_c,
        clone=cells.clone,
        clone_bias=cells.clone_bias,
        knockdown=knockdown,
        batch_offset=batch_offset,
    )


def simulate_experiment(config: FatebiasConfig) -> SimulatedData:
    """Draw a simulated experiment in memory (see the module docstring for the design).

    Parameters
    ----------
    config
        Uses the ``sim_*`` settings, ``fates``, ``ref_fate``, ``contrast_fate`` and the
        input key names (``fate_prob_key``, ``guide_key``, ``covar_key``, ``rep_key``,
        ``day_key``).

    Returns
    -------
    SimulatedData
        The AnnData, guide map, truth tables, true parameters and metadata.

    Raises
    ------
    ConfigError
        Fewer guides than genes, or fewer cells than day x replicate groups.
    """
    _check(config)
    streams = _streams(config.sim_seed)
    fates, contrasts = list(config.fates), config.contrast_fates
    cols = [fates.index(f) for f in contrasts]
    design = _design(config)
    eff = _draw_effects(config, design.gene_of_guide, streams.effects)
    cells = _draw_cells(config, streams, len(contrasts))
    eta_c, knockdown, batch_offset = _latent_logits(config, eff, design.gene_of_guide, cells, streams)
    eta_cell = eta_c if cells.clone_bias is None else eta_c + cells.clone_bias[cells.clone]
    pi = _softmax(eta_cell, cols, len(fates))
    probs = _observed_probs(config, pi, eta_cell, cols, cells.day, streams)
    guide_matrix = _guide_umi_matrix(config, _detected(config, cells, streams.detection), streams.noise)  # after the Dirichlet draws

    adata = _anndata(
        config,
        ad,
        design.cell_names,
        design.day_labels,
        design.rep_labels,
        cells.day,
        cells.rep,
        probs,
        guide_matrix,
        design.guide_names + design.ntc_names,
    )
    if cells.clone is not None and config.sim_write_clone_labels:
        clone_labels = _names("clone", int(cells.clone.max()) + 1)
        adata.obs["clone"] = pd.Categorical.from_codes(cells.clone, categories=clone_labels)
    params = _params(contrasts, design, eff, cells, pi, eta_c, knockdown, batch_offset)
    kappa, kappa_parts = _estimand_kappa(config, params, streams.estimand)
    kappa_by_fate = {f: float(kappa[c]) for c, f in enumerate(contrasts)}
    metadata = _metadata(config, params, probs, design.day_labels, design.rep_labels)
    metadata["estimand"] = {f: round(k, 6) for f, k in kappa_by_fate.items()}
    metadata["estimand_parts"] = kappa_parts
    return SimulatedData(
        adata,
        _guide_map(design),
        _daywise_tables(design.gene_names, contrasts, eff["theta"]),
        _truth_guides(design, contrasts, eff["delta"]),
        params,
        metadata,
        truth_estimand=_truth_estimand(config, params, kappa),
        kappa=kappa_by_fate,
    )


def _estimand_kappa(
    config: FatebiasConfig, params: SimulatedParams, rng: np.random.Generator
) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    """Per contrast, the attenuation kappa of effects on a cell's mean probabilities given its clone.

    Two factors, multiplied (see the module docstring):

    * ``noise``: with logit noise (``logistic_normal``), on a subsample of at most
      :data:`ESTIMAND_MAX_CELLS` cells, :data:`ESTIMAND_MC_REPS` replicates of the
      N(0, s^2) per-cell logit noise, each cell's clone bias held at its drawn value, give
      each cell's mean probabilities m_i; kappa_noise is the slope of the day-centred
      log(m_f / m_ref) on the day-centred eta_f + clone bias. Exactly 1 (no Monte Carlo)
      without logit noise.
    * ``smoothing``: with smoothing, :data:`ESTIMAND_SMOOTH_REPS` replicates of the
      cell-level noise (logit or Dirichlet; clone biases held) over every cell, each
      smoothed as the data were; the slope on eta of the day-centred log-ratio of the
      smoothed mean probabilities over that of the unsmoothed ones. Exactly 1 when off.

    ``clone`` in the parts is the further attenuation of a model without a clone effect
    (the clone biases averaged over as well, the same Monte Carlo): not in kappa.

    Returns
    -------
    kappa
        (C,) the product of ``noise`` and ``smoothing``.
    parts
        ``{fate: {"noise": ..., "smoothing": ..., "clone": ...}}``, rounded to 6 digits.
    """
    fates = list(config.fates)
    cols = [fates.index(f) for f in params.contrast_fates]
    ref = fates.index(config.ref_fate)
    eta, day, n_days = params.eta, params.day, config.sim_n_days
    assert eta is not None
    n_c = eta.shape[1]
    clones_biased = params.clone is not None and params.clone_bias is not None and config.sim_clone_bias_sd > 0
    bias = params.clone_bias[params.clone] if clones_biased else np.zeros_like(eta)
    logit_sd = config.sim_logit_noise_sd if config.sim_noise == "logistic_normal" else 0.0

    def slope(noise_sd: float, fresh_bias: bool, sub: np.ndarray) -> np.ndarray:
        z = rng.normal(0.0, 1.0, size=(len(sub), ESTIMAND_MC_REPS, n_c)) * noise_sd
        if fresh_bias:
            z += rng.normal(0.0, config.sim_clone_bias_sd, size=z.shape)
            x = eta[sub]
        else:
            z += bias[sub][:, None, :]
            x = eta[sub] + bias[sub]
        m = _softmax(eta[sub][:, None, :] + z, cols, len(fates)).mean(axis=1)
        return _slopes(x, _log_ratios(m, cols, ref), day[sub], n_days)

    n = len(day)
    sub = np.arange(n) if n <= ESTIMAND_MAX_CELLS else np.sort(rng.choice(n, size=ESTIMAND_MAX_CELLS, replace=False))
    k_noise = slope(logit_sd, False, sub) if logit_sd > 0 else np.ones(n_c)
    k_clone = slope(logit_sd, True, sub) / k_noise if clones_biased else np.ones(n_c)

    k_smooth = np.ones(n_c)
    if config.sim_smoothing_k > 1 and config.sim_smoothing_weight > 0:
        raw = np.zeros((len(day), len(fates)))
        smoothed = np.zeros_like(raw)
        for _ in range(ESTIMAND_SMOOTH_REPS):  # a loop over replicates; cells are vectorised
            eta_r = eta + bias
            if logit_sd > 0:
                eta_r = eta_r + rng.normal(0.0, logit_sd, size=eta.shape)
            pi = _softmax(eta_r, cols, len(fates))
            if config.sim_noise == "dirichlet":
                p = _dirichlet(rng, config.sim_concentration, pi)
            else:
                p = _floor(pi)
            raw += p
            smoothed += _smooth(p, day, n_days, config.sim_smoothing_k, config.sim_smoothing_weight)
        s_raw = _slopes(eta, _log_ratios(raw / ESTIMAND_SMOOTH_REPS, cols, ref), day, n_days)
        s_sm = _slopes(eta, _log_ratios(smoothed / ESTIMAND_SMOOTH_REPS, cols, ref), day, n_days)
        k_smooth = np.where(s_raw != 0, s_sm / np.where(s_raw != 0, s_raw, 1.0), 1.0)

    parts = {
        f: {"noise": round(float(k_noise[c]), 6), "smoothing": round(float(k_smooth[c]), 6), "clone": round(float(k_clone[c]), 6)}
        for c, f in enumerate(params.contrast_fates)
    }
    return k_noise * k_smooth, parts


def _anndata(
    config: FatebiasConfig,
    ad: Any,
    cell_names: np.ndarray,
    day_labels: list[str],
    rep_labels: list[str],
    day: np.ndarray,
    rep: np.ndarray,
    probs: np.ndarray,
    guide_matrix: sp.csr_matrix,
    matrix_guides: list[str],
) -> Any:
    """An AnnData laid out as CellRank 2 writes it (names of a ``lineages_*`` key in obs)."""
    fates = list(config.fates)
    index = pd.Index(cell_names, name=None)
    obs = pd.DataFrame(
        {config.day_key: pd.Categorical.from_codes(day, categories=day_labels)}, index=index
    )
    uns: dict[str, Any] = {f"{config.guide_key}_names": np.asarray(matrix_guides, dtype=object)}
    key = config.fate_prob_key
    if key.startswith("lineages_"):
        states_key = "term_states_" + key.removeprefix("lineages_")
        terminal = np.where(probs.max(axis=1) > TERMINAL_PROB, probs.argmax(axis=1), -1)
        obs[states_key] = pd.Categorical.from_codes(terminal, categories=fates)
        uns[f"{states_key}_colors"] = np.asarray(
            [FATE_COLORS[i % len(FATE_COLORS)] for i in range(len(fates))], dtype=object
        )
    else:  # not a CellRank 2 key: name the columns the CellRank 1 way
        uns[f"{key}_names"] = np.asarray(fates, dtype=object)
    covariates = pd.DataFrame(
        {config.rep_key: pd.Categorical.from_codes(rep, categories=rep_labels)}, index=index
    )
    return ad.AnnData(
        obs=obs,
        obsm={key: probs, config.guide_key: guide_matrix, config.covar_key: covariates},
        uns=uns,
    )


def _r6(x: Any) -> Any:
    """``x`` as float64 rounded to 6 digits, as plain Python lists."""
    return np.round(np.asarray(x, dtype=np.float64), 6).tolist()


def _metadata(
    config: FatebiasConfig,
    params: SimulatedParams,
    probs: np.ndarray,
    day_labels: list[str],
    rep_labels: list[str],
) -> dict[str, Any]:
    """Exact settings and realised counts, plain Python types only."""
    settings = config.model_dump(mode="json")
    return {
        "fatebias_version": __version__,
        "settings": {k: v for k, v in settings.items() if k.startswith("sim_")},
        "fates": list(config.fates),
        "ref_fate": config.ref_fate,
        "contrast_fates": list(params.contrast_fates),
        "keys": {
            k: settings[k]
            for k in ("fate_prob_key", "guide_key", "covar_key", "rep_key", "day_key")
        },
        "design": _design_metadata(config),
        "realised": _realised_metadata(config, params, probs, day_labels, rep_labels),
        "nuisance": {
            f: {
                "day_intercept": _r6(params.day_intercept[c]),
                "rep_effect": _r6(params.rep_effect[c]),
                "burden_slope": round(float(params.burden_slope[c]), 6),
            }
            for c, f in enumerate(params.contrast_fates)
        },
    }


def _design_metadata(config: FatebiasConfig) -> dict[str, Any]:
    """The design's distributions and constants in words (``design`` of the metadata)."""
    return {
        "guides_per_cell": f"Poisson(({config.sim_kmax} + 1) / 2) clipped to [1, {config.sim_kmax}]",
        "ntc_slots": f"Binomial(k, {config.sim_ntc_fraction})",
        "profiles": list(PROFILES),
        "day_intercept_sd": DAY_INTERCEPT_SD,
        "rep_effect_sd": REP_EFFECT_SD,
        "burden_slope_sd": BURDEN_SLOPE_SD,
        "prob_floor": PROB_FLOOR,
        **_realism_metadata(config),
        "estimand_mc": {
            "reps": ESTIMAND_MC_REPS,
            "smoothing_reps": ESTIMAND_SMOOTH_REPS,
            "max_cells": ESTIMAND_MAX_CELLS,
        },
    }


def _realism_metadata(config: FatebiasConfig) -> dict[str, str]:
    """The realism settings in words, ``off`` where a setting is off."""
    return {
        "clones": (
            f"sizes 1 + Poisson({config.sim_clone_size_mean} - 1), last cut to fit; one guide set "
            f"and replicate per clone; logit bias N(0, {config.sim_clone_bias_sd}^2) per clone x contrast"
            if config.sim_clone_size_mean > 0
            else "off"
        ),
        "smoothing": (
            f"within day, p' = (1 - {config.sim_smoothing_weight}) p + "
            f"{config.sim_smoothing_weight} mean over {config.sim_smoothing_k} nearest neighbours"
            if config.sim_smoothing_k > 1 and config.sim_smoothing_weight > 0
            else "off"
        ),
        "noise": (
            f"Dirichlet({config.sim_concentration} x pi)"
            if config.sim_noise == "dirichlet"
            else f"softmax(eta + N(0, {config.sim_logit_noise_sd}^2))"
        ),
        "knockdown": (
            f"efficiency clip(N(1, {config.sim_knockdown_sd}^2), 0, 2) per guide x replicate"
            if config.sim_knockdown_sd > 0
            else "off"
        ),
        "batch": (
            f"N(0, {config.sim_batch_sd}^2) per contrast x day x replicate"
            if config.sim_batch_sd > 0
            else "off"
        ),
    }


def _realised_metadata(
    config: FatebiasConfig,
    params: SimulatedParams,
    probs: np.ndarray,
    day_labels: list[str],
    rep_labels: list[str],
) -> dict[str, Any]:
    """Realised counts: cells, genes, guides, clones, active genes and fate proportions."""
    contrasts = params.contrast_fates
    day_mean = np.stack([probs[params.day == d].mean(axis=0) for d in range(len(day_labels))])
    return {
        "n_cells": int(len(params.day)),
        "n_genes": len(params.gene_names),
        "n_guides": len(params.guide_names),
        "n_ntc_guides": len(params.ntc_names),
        "n_days": len(day_labels),
        "n_reps": len(rep_labels),
        "cells_per_day": _counts_by_label(params.day, day_labels),
        "cells_per_rep": _counts_by_label(params.rep, rep_labels),
        "guides_per_cell_mean": round(float(params.burden.mean()), 6),
        "guides_per_cell_max": int(params.burden.max()),
        **_clone_metadata(params.clone),
        "n_active_genes": {f: int(params.active[:, c].sum()) for c, f in enumerate(contrasts)},
        "profiles": {
            f: {p: int((params.profile[:, c] == p).sum()) for p in ("none", *PROFILES)}
            for c, f in enumerate(contrasts)
        },
        "truly_active_gene_days": {
            f: int((np.abs(params.theta[:, c]) > config.sim_truth_thresh).sum())
            for c, f in enumerate(contrasts)
        },
        "fate_proportions_per_day": {
            lab: dict(zip(config.fates, _r6(day_mean[d]), strict=True))
            for d, lab in enumerate(day_labels)
        },
    }


def _counts_by_label(codes: np.ndarray, labels: list[str]) -> dict[str, int]:
    """``{label: number of cells}`` for 0-based codes into ``labels``."""
    return dict(zip(labels, np.bincount(codes, minlength=len(labels)).tolist(), strict=True))


def _clone_metadata(clone: np.ndarray | None) -> dict[str, Any]:
    """``n_clones`` and ``clone_size_mean`` with clones; nothing without."""
    if clone is None:
        return {}
    n_clones = int(clone.max()) + 1
    return {"n_clones": n_clones, "clone_size_mean": round(len(clone) / n_clones, 6)}


def run_config(config: FatebiasConfig, n_days: int, n_reps: int) -> dict[str, Any]:
    """The settings of ``config.yaml`` for a simulated folder.

    Paths are relative to the folder (``load_config`` resolves them); ``D`` and ``R``
    are the simulated counts; every other non-default setting of ``config`` is carried
    over except the ``sim_*`` generator settings (``sim_truth_thresh`` is kept when set,
    since scoring the run against the truth uses it).
    """
    data = config.model_dump(mode="json")
    default = FatebiasConfig().model_dump(mode="json")
    out: dict[str, Any] = {
        "adata_path": names.SIM_ADATA,
        "guide_map_csv": names.SIM_GUIDE_MAP,
        "out_dir": names.SIM_RESULTS,
        "D": n_days,
        "R": n_reps,
    }
    for key, value in data.items():
        if key in RUN_PATH_KEYS or value == default[key]:
            continue
        if key.startswith("sim_") and key != "sim_truth_thresh":
            continue
        out[key] = value
    return out


# --------------------------------------------------------------------------- writing
def simulate(config: FatebiasConfig, out_dir: str | Path) -> SimulationResult:
    """Simulate an experiment and write it to ``out_dir``.

    Files (each written atomically):

    * ``adata.h5ad``: CellRank 2's on-disk layout: ``obsm[fate_prob_key]`` a plain
      float array with the names in order as the categories of
      ``obs["term_states_<dir>"]`` (cells above 0.9 labelled with their terminal state)
      and colours in ``uns["term_states_<dir>_colors"]``; the guide UMI matrix as CSR in
      ``obsm[guide_key]`` with names in ``uns[f"{guide_key}_names"]``; replicates in
      ``obsm[covar_key][rep_key]``; day labels in ``obs[day_key]``.
    * ``guide_map.csv`` (``guide_name, gene_name, is_ntc``).
    * ``truth_daywise.csv`` (``gene, true_d0..``: theta of the primary contrast) and
      ``truth_daywise_<FATE>.csv`` for the other contrasts.
    * ``truth_estimand_daywise.csv`` (and ``_<FATE>``): the same layout, kappa x theta,
      the effects on mean fate probabilities that a fit targets (module docstring).
    * ``truth_guides.csv`` (``guide, gene, delta_<fate>`` per contrast).
    * ``sim_metadata.yaml``: exact settings, design constants, realised counts, nuisance,
      ``estimand: {fate: kappa}`` and its factors in ``estimand_parts``.
    * ``config.yaml``: a run configuration for this folder (see :func:`run_config`).

    Parameters
    ----------
    config
        Settings (``sim_*`` and the run settings carried into ``config.yaml``).
    out_dir
        Output folder (created).

    Returns
    -------
    SimulationResult
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output folder {out} exists and is not a folder")
    data = simulate_experiment(config)  # validates settings before anything is written
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"adata": out / names.SIM_ADATA}
    with atomic_path(paths["adata"]) as tmp:
        data.adata.write_h5ad(tmp)
    paths["guide_map"] = write_csv(data.guide_map, out / names.SIM_GUIDE_MAP)
    for fate, table in data.truth_daywise.items():
        suffix = config.file_suffix(fate)
        paths[f"truth_daywise{suffix}"] = write_csv(table, out / names.truth_daywise_file(suffix))
    for fate, table in data.truth_estimand.items():
        suffix = config.file_suffix(fate)
        paths[f"truth_estimand_daywise{suffix}"] = write_csv(
            table, out / names.truth_estimand_file(suffix)
        )
    paths["truth_guides"] = write_csv(data.truth_guides, out / names.SIM_TRUTH_GUIDES)
    paths["metadata"] = write_text(
        yaml.safe_dump(data.metadata, sort_keys=False), out / names.SIM_METADATA
    )
    header = "# fatebias run configuration for the simulated experiment in this folder (fatebias simulate)\n"
    realised = data.metadata["realised"]
    run = run_config(config, realised["n_days"], realised["n_reps"])
    paths["config"] = write_text(header + yaml.safe_dump(run, sort_keys=False), out / names.SIM_CONFIG)

    counts = {
        k: int(realised[k])
        for k in ("n_cells", "n_genes", "n_guides", "n_ntc_guides", "n_days", "n_reps")
    }
    counts.update({f"n_active_{f}": n for f, n in realised["n_active_genes"].items()})
    return SimulationResult(
        out_dir=out,
        paths=paths,
        counts=counts,
        truth=data.truth_daywise[config.contrast_fate],
        active_gene_days=dict(realised["truly_active_gene_days"]),
    )
