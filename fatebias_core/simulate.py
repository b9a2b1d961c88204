"""Simulate a time-course Perturb-seq experiment from the model, with known truth (MODEL.md 11).

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
* eta and pi as MODEL.md 4 (the reference fate's logit is 0); observed fate
  probabilities ``p_i ~ Dirichlet(sim_concentration * pi_i)``, floored at 1e-8 and
  renormalised in float64.

Randomness comes from three independent streams spawned from ``sim_seed``: effects
(theta, delta, nuisance), cells (design and guides) and noise (Dirichlet, UMI counts).
The true effects therefore depend only on the seed and the gene, guide, day, replicate
and effect settings, not on the number of cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from . import __version__
from .config import FatebiasConfig
from .errors import ConfigError
from .io import atomic_path, write_csv, write_text
from .types import center_by_group

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
        (N, F) noiseless fate probabilities pi in ``config.fates`` order.
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

    @property
    def beta(self) -> np.ndarray:
        """(G, C, D) guide effects theta[l(g)] + delta[g]."""
        return self.theta[self.gene_of_guide] + self.delta[:, :, None]


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
    """

    adata: Any
    guide_map: pd.DataFrame
    truth_daywise: dict[str, pd.DataFrame]
    truth_guides: pd.DataFrame
    params: SimulatedParams
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` wrote.

    Attributes
    ----------
    out_dir
        The output folder.
    paths
        Written files by role (``adata``, ``guide_map``, ``truth_daywise``,
        ``truth_daywise_<FATE>``, ``truth_guides``, ``metadata``, ``config``).
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

    def describe(self) -> str:
        """A short human-readable account of the simulation."""
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
                f"  next: fatebias run --config {self.paths['config']}",
            ]
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
    import anndata as ad

    _check(config)
    effects_rng, cells_rng, noise_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.sim_seed).spawn(3)
    )
    n_cells, n_genes, n_guides = config.sim_n_cells, config.sim_n_genes, config.sim_n_guides
    n_ntc, n_days, n_reps, kmax = (
        config.sim_n_ntc_guides,
        config.sim_n_days,
        config.sim_n_reps,
        config.sim_kmax,
    )
    fates, contrasts = list(config.fates), config.contrast_fates

    # Design: genes, guides, labels.
    gene_names = _names("G", n_genes)
    per_gene = n_guides // n_genes + (np.arange(n_genes) < n_guides % n_genes)
    gene_of_guide = np.repeat(np.arange(n_genes), per_gene)
    within = np.arange(n_guides) - np.repeat(np.cumsum(per_gene) - per_gene, per_gene) + 1
    guide_names = [f"{gene_names[g]}_sg{j}" for g, j in zip(gene_of_guide, within, strict=True)]
    ntc_names = _names("NTC_", n_ntc)
    day_labels = [f"d{d}" for d in range(n_days)]
    rep_labels = [f"rep{r + 1}" for r in range(n_reps)]
    cell_names = np.asarray(_names("cell", n_cells), dtype=object)

    eff = _draw_effects(config, gene_of_guide, effects_rng)

    # Cells: day x replicate, guides.
    group = cells_rng.permutation(np.arange(n_cells) % (n_days * n_reps))
    day, rep = group // n_reps, group % n_reps
    k = np.clip(cells_rng.poisson((kmax + 1) / 2, size=n_cells), 1, kmax)
    k_ntc = np.minimum(cells_rng.binomial(k, config.sim_ntc_fraction), n_ntc)
    k_target = np.minimum(k - k_ntc, n_guides)
    targets = _distinct_draws(cells_rng, k_target, n_guides)
    ntcs = _distinct_draws(cells_rng, k_ntc, n_ntc)
    burden = k_target + k_ntc

    # Model (MODEL.md 4): eta per contrast fate, reference logit 0.
    n_c = len(contrasts)
    beta = np.zeros((n_guides + 1, n_c, n_days))
    beta[1:] = eff["theta"][gene_of_guide] + eff["delta"][:, :, None]
    ids = np.where(targets >= 0, targets + 1, 0)
    guide_sum = beta[ids, :, day[:, None]].sum(axis=1)  # (N, C); id 0 adds nothing
    burden_c = center_by_group(burden, day, n_days).astype(np.float64)
    eta_c = (
        eff["day_intercept"][:, day].T
        + eff["rep_effect"][:, rep].T
        + eff["burden_slope"][None, :] * burden_c[:, None]
        + guide_sum
    )
    eta = np.zeros((n_cells, len(fates)))
    eta[:, [fates.index(f) for f in contrasts]] = eta_c
    eta -= eta.max(axis=1, keepdims=True)
    pi = np.exp(eta)
    pi /= pi.sum(axis=1, keepdims=True)

    # Dirichlet noise via normalised gammas (vectorised over cells).
    gam = noise_rng.standard_gamma(np.maximum(config.sim_concentration * pi, 1e-300))
    total = gam.sum(axis=1, keepdims=True)
    probs = np.where(total > 0, gam / np.where(total > 0, total, 1.0), pi)
    probs = np.maximum(probs, PROB_FLOOR)
    probs /= probs.sum(axis=1, keepdims=True)

    # Guide matrix: targeting columns (gene order) then NTC columns; UMI counts as values.
    rows_t, slot_t = np.nonzero(targets >= 0)
    rows_n, slot_n = np.nonzero(ntcs >= 0)
    rows = np.concatenate([rows_t, rows_n])
    cols = np.concatenate([targets[rows_t, slot_t], n_guides + ntcs[rows_n, slot_n]])
    umi = (1 + noise_rng.poisson(UMI_EXTRA_MEAN, size=rows.size)).astype(np.float32)
    guide_matrix = sp.csr_matrix((umi, (rows, cols)), shape=(n_cells, n_guides + n_ntc))
    guide_matrix.sort_indices()

    adata = _anndata(
        config,
        ad,
        cell_names,
        day_labels,
        rep_labels,
        day,
        rep,
        probs,
        guide_matrix,
        guide_names + ntc_names,
    )
    guide_map = pd.DataFrame(
        {
            "guide_name": guide_names + ntc_names,
            "gene_name": [gene_names[g] for g in gene_of_guide] + ["non-targeting"] * n_ntc,
            "is_ntc": np.r_[np.zeros(n_guides, dtype=int), np.ones(n_ntc, dtype=int)],
        }
    )
    params = SimulatedParams(
        contrast_fates=tuple(contrasts),
        gene_names=tuple(gene_names),
        guide_names=tuple(guide_names),
        ntc_names=tuple(ntc_names),
        gene_of_guide=gene_of_guide,
        theta=eff["theta"],
        delta=eff["delta"],
        active=eff["active"],
        profile=eff["profile"],
        day_intercept=eff["day_intercept"],
        rep_effect=eff["rep_effect"],
        burden_slope=eff["burden_slope"],
        day=day,
        rep=rep,
        burden=burden,
        true_probs=pi,
    )
    truth_daywise = {
        f: pd.DataFrame(
            {"gene": gene_names, **{f"true_d{d}": eff["theta"][:, c, d] for d in range(n_days)}}
        )
        for c, f in enumerate(contrasts)
    }
    truth_guides = pd.DataFrame(
        {
            "guide": guide_names,
            "gene": [gene_names[g] for g in gene_of_guide],
            **{f"delta_{f}": eff["delta"][:, c] for c, f in enumerate(contrasts)},
        }
    )
    metadata = _metadata(config, params, probs, day_labels, rep_labels)
    return SimulatedData(adata, guide_map, truth_daywise, truth_guides, params, metadata)


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


def _metadata(
    config: FatebiasConfig,
    params: SimulatedParams,
    probs: np.ndarray,
    day_labels: list[str],
    rep_labels: list[str],
) -> dict[str, Any]:
    """Exact settings and realised counts, plain Python types only."""
    settings = config.model_dump(mode="json")
    contrasts = list(params.contrast_fates)
    thresh = config.sim_truth_thresh

    def r6(x: Any) -> Any:
        return np.round(np.asarray(x, dtype=np.float64), 6).tolist()

    day_mean = np.stack([probs[params.day == d].mean(axis=0) for d in range(len(day_labels))])
    return {
        "fatebias_version": __version__,
        "settings": {k: v for k, v in settings.items() if k.startswith("sim_")},
        "fates": list(config.fates),
        "ref_fate": config.ref_fate,
        "contrast_fates": contrasts,
        "keys": {
            k: settings[k]
            for k in ("fate_prob_key", "guide_key", "covar_key", "rep_key", "day_key")
        },
        "design": {
            "guides_per_cell": f"Poisson(({config.sim_kmax} + 1) / 2) clipped to [1, {config.sim_kmax}]",
            "ntc_slots": f"Binomial(k, {config.sim_ntc_fraction})",
            "profiles": list(PROFILES),
            "day_intercept_sd": DAY_INTERCEPT_SD,
            "rep_effect_sd": REP_EFFECT_SD,
            "burden_slope_sd": BURDEN_SLOPE_SD,
            "prob_floor": PROB_FLOOR,
        },
        "realised": {
            "n_cells": int(len(params.day)),
            "n_genes": len(params.gene_names),
            "n_guides": len(params.guide_names),
            "n_ntc_guides": len(params.ntc_names),
            "n_days": len(day_labels),
            "n_reps": len(rep_labels),
            "cells_per_day": dict(
                zip(
                    day_labels,
                    np.bincount(params.day, minlength=len(day_labels)).tolist(),
                    strict=True,
                )
            ),
            "cells_per_rep": dict(
                zip(
                    rep_labels,
                    np.bincount(params.rep, minlength=len(rep_labels)).tolist(),
                    strict=True,
                )
            ),
            "guides_per_cell_mean": round(float(params.burden.mean()), 6),
            "guides_per_cell_max": int(params.burden.max()),
            "n_active_genes": {f: int(params.active[:, c].sum()) for c, f in enumerate(contrasts)},
            "profiles": {
                f: {p: int((params.profile[:, c] == p).sum()) for p in ("none", *PROFILES)}
                for c, f in enumerate(contrasts)
            },
            "truly_active_gene_days": {
                f: int((np.abs(params.theta[:, c]) > thresh).sum()) for c, f in enumerate(contrasts)
            },
            "fate_proportions_per_day": {
                lab: dict(zip(config.fates, r6(day_mean[d]), strict=True))
                for d, lab in enumerate(day_labels)
            },
        },
        "nuisance": {
            f: {
                "day_intercept": r6(params.day_intercept[c]),
                "rep_effect": r6(params.rep_effect[c]),
                "burden_slope": round(float(params.burden_slope[c]), 6),
            }
            for c, f in enumerate(contrasts)
        },
    }


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
        "adata_path": "adata.h5ad",
        "guide_map_csv": "guide_map.csv",
        "out_dir": "results",
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
    * ``truth_guides.csv`` (``guide, gene, delta_<fate>`` per contrast).
    * ``sim_metadata.yaml``: exact settings, design constants, realised counts, nuisance.
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
    paths: dict[str, Path] = {"adata": out / "adata.h5ad"}
    with atomic_path(paths["adata"]) as tmp:
        data.adata.write_h5ad(tmp)
    paths["guide_map"] = write_csv(data.guide_map, out / "guide_map.csv")
    for fate, table in data.truth_daywise.items():
        suffix = config.file_suffix(fate)
        paths[f"truth_daywise{suffix}"] = write_csv(table, out / f"truth_daywise{suffix}.csv")
    paths["truth_guides"] = write_csv(data.truth_guides, out / "truth_guides.csv")
    paths["metadata"] = write_text(
        yaml.safe_dump(data.metadata, sort_keys=False), out / "sim_metadata.yaml"
    )
    header = "# fatebias run configuration for the simulated experiment in this folder (fatebias simulate)\n"
    realised = data.metadata["realised"]
    run = run_config(config, realised["n_days"], realised["n_reps"])
    paths["config"] = write_text(header + yaml.safe_dump(run, sort_keys=False), out / "config.yaml")

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
