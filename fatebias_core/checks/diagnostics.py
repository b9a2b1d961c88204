"""Diagnostics of a fit (docs/method.md, "Diagnostics"): held-out cross-entropy, permutation control, sanity checks.

:func:`run_diagnostics` runs four checks and writes ``diagnostics.json``:

* **Held-out cross-entropy.** A fraction ``heldout_frac`` of the clones (whole clones,
  drawn within every day x replicate stratum with ``heldout_seed``; every cell is its
  own clone when none are known) is held out; the full model and
  the nuisance-only model (day, replicate and burden terms, no guide terms) are refitted
  to the rest (``heldout_fit``: at their conditional mode by Newton's method with the
  run's hyperparameters, or by SVI stopped at convergence), and both predict the held-out cells. The
  score is the soft-label cross-entropy ``-mean_i sum_f p_if log pi_if`` (lower is
  better); where guides carry signal the full model must beat the nuisance model. The
  held-out cells' burden is centred with the training cells' day means, the centring
  the fitted burden slope was learned on.
* **Permutation negative control.** Whole guide sets are permuted among units of cells
  (:func:`permutation_units`: clusters of the detected guide sets at the loose
  ``perm_chance_links`` threshold, each containing whole clones) within replicate x
  burden-quartile strata (:func:`permute_guide_sets`, ``perm_seed``); every cell of a
  unit receives the same set. The chain is rerun on the permuted experiment in
  ``<out>/permutation/`` at the real run's hyperparameters (likelihood weight,
  sigma_guide, clone covariance; the Laplace step alone with a Laplace run), without
  guide-level mash unless ``perm_guide_mash``, and its hits counted: guides are
  independent of fate given the strata, so hits must collapse to about zero.
* **NTC calibration.** The export step's NTC check (:mod:`fatebias_core.checks.ntc`):
  NTC guides grouped into pseudo-genes are fitted as genes at the run's
  hyperparameters; ``diagnostics.json`` carries its result.
* **Sanity checks.** Each configured known regulator (``known_regulators``: gene ->
  expected sign of its primary-contrast effect) is looked up in the run's gene-level
  mash table of ``mash_default_mode`` (else the posterior exports, lfsr from the
  posterior z; else the held-out full fit) and passes when it has at least one day with
  lfsr below ``mash_lfsr_thresh_day`` and every such day has the expected sign.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from fatebias_core.checks.ntc import read_ntc_check, run_ntc_check
from fatebias_core.config import FatebiasConfig, make_config
from fatebias_core.data.clones import clones_from_guides
from fatebias_core.data.load import guide_sets
from fatebias_core.discovery.aggregate import normal_lfsr
from fatebias_core.errors import ConfigError
from fatebias_core.hashing import short_hash
from fatebias_core.io import layout as names
from fatebias_core.io import read_csv, write_json
from fatebias_core.io.layout import RunLayout
from fatebias_core.io.tables import DayAxis, DaywisePosterior, day_axis, name_column, read_posterior
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.inference import fit, load_fit, predict_fates
from fatebias_core.model.laplace import (
    LaplacePosterior,
    build_problem,
    newton_mode,
    nuisance_problem,
    pack_psi,
)
from fatebias_core.model.posterior import summarise_posterior
from fatebias_core.types import DiagnosticsResult, Experiment, FitResult, center_by_group


class ChainRunner(Protocol):
    """The engine the permutation control reruns the chain with (``run_chain``'s signature)."""

    def __call__(self, config: FatebiasConfig, until: str | None = ..., experiment: Experiment | None = ...) -> Any: ...


log = logging.getLogger("fatebias.diagnostics")

PARTS = ("heldout", "permutation", "sanity", "ntc")
PROB_FLOOR = 1e-300
"""Predicted probabilities are floored here before the log (a softmax can underflow to 0)."""
PERM_HIT_FRACTION = 0.05
"""The permutation control passes with at most this fraction of the real run's hits (at least 1)."""


# --------------------------------------------------------------------------- held-out
def stratified_holdout(strata: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Choose ``round(frac * n)`` cells at random within every stratum.

    Strata with at least two cells keep at least one cell on each side, so every day and
    replicate stays in the training data.

    Parameters
    ----------
    strata
        (N,) non-negative integer stratum of each cell.
    frac
        Fraction held out, in (0, 1).
    seed
        Seed of the draw.

    Returns
    -------
    ndarray
        (N,) bool, True for a held-out cell.
    """
    strata = np.asarray(strata, dtype=np.int64)
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(strata.size), strata))  # by stratum, random within
    sizes = np.bincount(strata)
    starts = np.cumsum(sizes) - sizes
    rank = np.empty(strata.size, dtype=np.int64)
    rank[order] = np.arange(strata.size) - starts[strata[order]]
    n_out = np.rint(frac * sizes).astype(np.int64)
    n_out = np.where(sizes >= 2, np.clip(n_out, 1, sizes - 1), 0)
    return rank < n_out[strata]


def clone_holdout(strata: np.ndarray, cluster: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """Hold out whole clones: ``round(frac * n)`` clones at random within every stratum.

    A clone's stratum is its first cell's. Cells of one clone share their clone's
    effect, so a split that put some of them on each side would let the full model
    score its training cells' clone effects, learnt through their guides, on the
    held-out cells: the held-out cells must be new clones. When a stratum would keep
    no training cell, its held-out clones go back to training, so every day and
    replicate stays in the training data. With every cell its own clone this is
    :func:`stratified_holdout` of the cells.

    Parameters
    ----------
    strata
        (N,) non-negative integer stratum of each cell (day x replicate).
    cluster
        (N,) clone id of each cell, 0..C-1.
    frac
        Fraction of the clones held out, in (0, 1).
    seed
        Seed of the draw.

    Returns
    -------
    ndarray
        (N,) bool, True for a cell of a held-out clone.
    """
    strata = np.asarray(strata, dtype=np.int64)
    cluster = np.asarray(cluster, dtype=np.int64)
    first = np.unique(cluster, return_index=True)[1]  # each clone's first cell, as permute_guide_sets takes it
    held = stratified_holdout(strata[first], frac, seed)[cluster]
    trained = np.bincount(strata, weights=~held, minlength=int(strata.max(initial=-1)) + 1)
    starved = held & (trained[strata] == 0)
    if starved.any():
        held &= ~np.isin(cluster, cluster[starved])
    return held


def soft_cross_entropy(p: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """Per-cell soft-label cross-entropy ``-sum_f p_f log pi_f`` (nats).

    Parameters
    ----------
    p
        (N, F) observed fate probabilities (rows sum to 1).
    pi
        (N, F) predicted probabilities; floored at 1e-300 before the log.
    """
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.maximum(np.asarray(pi, dtype=np.float64), PROB_FLOOR))).sum(axis=1)


@dataclass(frozen=True)
class HeldOutScores:
    """Cross-entropy of two models' predictions of the same held-out cells.

    Attributes
    ----------
    n_cells
        Held-out cells scored.
    ce_full, ce_nuisance
        Mean cross-entropy per cell of the full and nuisance-only models (nats).
    difference
        ``ce_nuisance - ce_full``: positive when the full model predicts better.
    difference_se
        Standard error of ``difference`` from the paired per-cell differences, with the
        held-out clones (not cells) independent.
    entropy
        Mean entropy of the observed fate probabilities, the floor of any model's
        cross-entropy (reached only by predicting every cell exactly).
    explained_fraction
        ``difference / (ce_nuisance - entropy)``: the share of the nuisance model's
        excess over the floor that the guide terms remove (NaN when there is no excess).
    per_day
        One row per day: ``day, n_cells, ce_full, ce_nuisance, difference``.
    n_clones
        Held-out clones (``n_cells`` when every cell is its own).
    """

    n_cells: int
    ce_full: float
    ce_nuisance: float
    difference: float
    difference_se: float
    entropy: float
    explained_fraction: float
    per_day: pd.DataFrame
    n_clones: int

    @property
    def full_better(self) -> bool:
        """True when the full model has the lower held-out cross-entropy."""
        return self.difference > 0

    @property
    def z(self) -> float:
        """``difference / difference_se`` (inf when the SE is 0 and the difference is not)."""
        if self.difference_se > 0:
            return self.difference / self.difference_se
        return 0.0 if self.difference == 0 else math.copysign(math.inf, self.difference)


def score_heldout(
    p: np.ndarray,
    pi_full: np.ndarray,
    pi_nuisance: np.ndarray,
    day: np.ndarray,
    day_labels: Sequence[str],
    cluster: np.ndarray | None = None,
) -> HeldOutScores:
    """Compare two models' held-out predictions by soft-label cross-entropy, overall and per day.

    Parameters
    ----------
    p
        (N, F) observed fate probabilities of the held-out cells.
    pi_full, pi_nuisance
        (N, F) predictions of the full and nuisance-only models.
    day
        (N,) day index of each cell.
    day_labels
        Label of each day index.
    cluster
        (N,) clone id of each cell (any integers): the standard error treats clones,
        not cells, as independent (None: every cell its own clone).
    """
    ce_f = soft_cross_entropy(p, pi_full)
    ce_n = soft_cross_entropy(p, pi_nuisance)
    diff = ce_n - ce_f
    n = ce_f.size
    ids = np.arange(n) if cluster is None else np.unique(np.asarray(cluster), return_inverse=True)[1].ravel()
    se = _cluster_mean_se(diff, ids)
    p64 = np.asarray(p, dtype=np.float64)
    entropy = float(-(p64 * np.log(np.maximum(p64, PROB_FLOOR))).sum(axis=1).mean())
    n_days = len(day_labels)
    counts = np.bincount(day, minlength=n_days)

    def by_day(x: np.ndarray) -> np.ndarray:
        sums = np.bincount(day, weights=x, minlength=n_days)
        return np.divide(sums, counts, out=np.full(n_days, np.nan), where=counts > 0)

    per_day = pd.DataFrame(
        {
            "day": list(day_labels),
            "n_cells": counts.astype(np.int64),
            "ce_full": by_day(ce_f),
            "ce_nuisance": by_day(ce_n),
        }
    )
    per_day["difference"] = per_day["ce_nuisance"] - per_day["ce_full"]
    ce_full, ce_nuis = float(ce_f.mean()), float(ce_n.mean())
    excess = ce_nuis - entropy
    return HeldOutScores(
        n_cells=int(n),
        ce_full=ce_full,
        ce_nuisance=ce_nuis,
        difference=float(diff.mean()),
        difference_se=se,
        entropy=entropy,
        explained_fraction=float(diff.mean() / excess) if excess > 0 else float("nan"),
        per_day=per_day,
        n_clones=int(ids.max(initial=-1)) + 1,
    )


def _cluster_mean_se(x: np.ndarray, ids: np.ndarray) -> float:
    """Standard error of ``x.mean()`` with clusters (``ids`` 0..C-1), not cells, independent (the sandwich estimate).

    Every cell its own cluster gives ``x.std(ddof=1) / sqrt(n)``; NaN with fewer than
    two clusters.
    """
    n_c = int(ids.max(initial=-1)) + 1
    if n_c < 2:
        return float("nan")
    resid = np.bincount(ids, weights=x - x.mean(), minlength=n_c)
    return float(math.sqrt(n_c / (n_c - 1) * float(resid @ resid)) / x.size)


@dataclass
class HeldOutResult:
    """The held-out comparison: split, fits and scores."""

    frac: float
    seed: int
    steps: int | None  # SVI steps per fit (None: refitted at the mode)
    n_train: int
    scores: HeldOutScores
    fit_info: dict[str, dict[str, Any]]
    full_fit: FitResult | None = field(default=None, repr=False)
    method: str = "svi"

    def to_dict(self) -> dict[str, Any]:
        s = self.scores
        return {
            "heldout_frac": self.frac,
            "heldout_seed": self.seed,
            "method": self.method,
            "steps": self.steps,
            "n_train": self.n_train,
            "n_heldout": s.n_cells,
            "n_heldout_clones": s.n_clones,
            "ce_full": s.ce_full,
            "ce_nuisance": s.ce_nuisance,
            "difference": s.difference,
            "difference_se": s.difference_se,
            "difference_z": s.z,
            "full_better": s.full_better,
            "entropy_floor": s.entropy,
            "explained_fraction": s.explained_fraction,
            "per_day": s.per_day.to_dict("records"),
            "fits": self.fit_info,
        }


def split_experiment(experiment: Experiment, heldout: np.ndarray) -> tuple[Experiment, Experiment]:
    """Training and held-out experiments; the held-out burden is centred with the training day means."""
    train = experiment.subset(np.flatnonzero(~heldout))
    test = experiment.subset(np.flatnonzero(heldout))
    tc, xc = train.cells, test.cells
    day_mean = np.bincount(tc.day, weights=tc.burden, minlength=tc.n_days) / np.maximum(tc.day_counts(), 1)
    centred = (xc.burden - day_mean[xc.day]).astype(np.float32)
    return train, replace(test, cells=replace(xc, burden_centered=centred))


def heldout_comparison(experiment: Experiment, config: FatebiasConfig, start: FitResult | None = None) -> HeldOutResult:
    """Fit the full and nuisance-only models on the training cells and score the held-out cells.

    Uses ``heldout_frac``, ``heldout_seed`` (split, and the SVI fits) and ``heldout_fit``.
    See :func:`score_heldout`.

    * ``heldout_fit: mode`` with ``start`` a Laplace or bootstrap fit (the run's): both
      models are refitted to the training cells at their conditional posterior mode by
      Newton's method, with the variance hyperparameters and likelihood weight of
      ``start``, starting from its mode (the nuisance-only model from its day,
      replicate and burden terms). Newton's method converges to the training cells'
      own mode whatever the start, so the held-out cells are forgotten exactly, in a few
      iterations and without SVI noise.
    * Otherwise (``heldout_fit: svi``, a mean-field run, or no run fit) both are refitted
      by SVI (``heldout_steps``, ``num_steps`` when null), stopped at convergence; with
      ``start`` (and ``heldout_warm_start``) from its values at its likelihood weight.
      A warm-started refit forgets the held-out cells as far as it converges, which is
      why these fits run until the training ELBO no longer changes.
    """
    cells = experiment.cells
    clones = cells.clusters()
    held = clone_holdout(cells.day * cells.n_reps + cells.rep, clones, config.heldout_frac, config.heldout_seed)
    if not held.any():
        raise ConfigError(
            f"heldout_frac {config.heldout_frac} holds out no clone of {int(clones.max(initial=-1)) + 1} "
            f"({cells.n_cells} cells); raise heldout_frac"
        )
    held_clones = clones[held]
    n_held_clones = np.unique(held_clones).size
    train, test = split_experiment(experiment, held)
    if config.heldout_fit == "mode" and start is not None and isinstance(start.posterior, LaplacePosterior):
        log.info(
            "held-out check: %d training, %d held-out cells (%d whole clones); both models refitted at their mode",
            train.n_cells, test.n_cells, n_held_clones,
        )
        pi_full, pi_nuisance, info = _heldout_modes(train, test, start, config)
        scores = score_heldout(test.cells.fate_probs, pi_full, pi_nuisance, test.cells.day, cells.day_labels, held_clones)
        return HeldOutResult(config.heldout_frac, config.heldout_seed, None, train.n_cells, scores, info, start, "mode")
    steps = config.heldout_steps or config.num_steps
    log.info(
        "held-out check: %d training, %d held-out cells (%d whole clones), %d steps per fit",
        train.n_cells, test.n_cells, n_held_clones, steps,
    )
    stopping = config.model_copy(update={"stop_at_convergence": True, "posterior_method": "meanfield"})
    init, weight = None, None
    if start is not None and config.heldout_warm_start:
        init, weight = start.warm_start(), start.info.get("likelihood_weight")
        log.info("held-out fits start from the run's fit (likelihood weight %.4g)", weight)
    full = fit(train, stopping, num_steps=steps, seed=config.heldout_seed, init=init, weight=weight)
    nuisance_init = None if init is None else {k: init[k] for k in ("a", "b", "c")}
    nuisance = fit(train, stopping, guide_effects=False, num_steps=steps, seed=config.heldout_seed, init=nuisance_init, weight=weight)
    scores = score_heldout(
        test.cells.fate_probs, predict_fates(full, test), predict_fates(nuisance, test), test.cells.day, cells.day_labels, held_clones
    )
    keys = ("steps", "runtime_s", "converged", "final_loss_per_cell")
    info = {name: {k: r.info[k] for k in keys} for name, r in (("full", full), ("nuisance", nuisance))}
    return HeldOutResult(config.heldout_frac, config.heldout_seed, steps, train.n_cells, scores, info, full, "svi")


def _heldout_modes(
    train: Experiment, test: Experiment, start: FitResult, config: FatebiasConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[str, Any]]]:
    """Held-out fate probabilities (N_test, F) of the full and nuisance-only modes on ``train``, and the fits' facts.

    Both refits keep the run's hyperparameters (clone covariance included); a held-out
    cell is predicted at a clone effect of 0, its clone being new to the fit.
    """
    post = start.posterior
    params = post.params
    args = (start.contrast_fates, start.ref_fate, Priors.from_config(config), post.hyper(), float(params["weight"]))
    problem = build_problem(train, *args, clone_cov=post.clone_cov)
    test_problem = build_problem(test, *args)
    psi0 = pack_psi(problem, params)
    n0 = problem.layout.theta.start
    pis, info = [], {}
    for name, prob, test_prob, psi in (
        ("full", problem, test_problem, psi0),
        ("nuisance", nuisance_problem(problem), nuisance_problem(test_problem), psi0[:, :n0]),
    ):
        t0 = time.perf_counter()
        res = newton_mode(prob, psi, hessian_at_mode=False)
        pis.append(test_prob.probabilities(res.psi))
        info[name] = {
            "method": "mode", "newton_iterations": res.n_iter, "converged": res.converged,
            "runtime_s": round(time.perf_counter() - t0, 3), "objective_per_cell": res.objective / train.n_cells,
        }
    return pis[0], pis[1], info


# --------------------------------------------------------------------------- permutation
def burden_bins(burden: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Quantile bins of the burden.

    Parameters
    ----------
    burden
        (N,) guides per cell.
    n_bins
        Requested number of bins; tied quantiles merge, so a discrete burden may give fewer.

    Returns
    -------
    bins, edges
        (N,) bin index 0..B-1 of each cell and the B - 1 inner edges (a cell is in bin j
        when ``edges[j - 1] < burden <= edges[j]``).
    """
    burden = np.asarray(burden, dtype=np.float64)
    inner = np.quantile(burden, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.empty(0)
    edges = np.unique(inner[inner < burden.max()]) if burden.size else np.empty(0)
    return np.searchsorted(edges, burden, side="left").astype(np.int64), edges


PERM_BURDEN_BINS = 4
"""Burden bins of the permutation strata (units permuted within replicate x burden bin)."""


def permutation_units(experiment: Experiment, chance_links: float) -> np.ndarray:
    """(N,) the permutation's units: clusters of the detected guide sets much coarser than the clones.

    Cells are linked as the clones are (:func:`~fatebias_core.data.clones.clones_from_guides`)
    but at ``chance_links``, a far looser threshold, and every clone lies within one unit.
    A true clone that the analysis split into several clones is then still one unit here.
    """
    cells, guides = experiment.cells, experiment.guides
    sets = guide_sets(guide_ids=guides.guide_ids, mask=guides.mask, ntc_ids=guides.ntc_ids)
    coarse = clones_from_guides(sets, cells.rep, chance_links, max_union=int(guides.kmax) + 5).cluster
    clones = cells.clusters()
    n_c, n_u = int(clones.max(initial=-1)) + 1, int(coarse.max(initial=-1)) + 1
    graph = sp.coo_matrix((np.ones(clones.size), (clones, n_c + coarse)), shape=(n_c + n_u, n_c + n_u))
    return np.unique(connected_components(graph, directed=False)[1][clones], return_inverse=True)[1].astype(np.int64)


@dataclass(frozen=True)
class PermutedExperiment:
    """An experiment whose guide sets were permuted among units within strata.

    Attributes
    ----------
    experiment
        The permuted experiment (fate probabilities, days, replicates and clones unchanged).
    source
        (N,) index of the cell whose guide set each cell received.
    strata
        (N,) stratum of each cell (its unit's replicate x burden bin).
    units
        (N,) the permutation unit of each cell.
    """

    experiment: Experiment
    source: np.ndarray
    strata: np.ndarray
    units: np.ndarray

    @property
    def n_strata(self) -> int:
        return int(np.unique(self.strata).size)

    @property
    def n_units(self) -> int:
        return int(self.units.max(initial=-1)) + 1

    @property
    def n_moved(self) -> int:
        """Cells that received another cell's guide set."""
        return int((self.source != np.arange(self.source.size)).sum())

    def fingerprint(self) -> str:
        """Hash of the permuted data (guide sets, burden, fates, days, replicates, clones)."""
        c, g = self.experiment.cells, self.experiment.guides
        return short_hash(*(np.asarray(a) for a in (g.guide_ids, g.mask, c.burden, c.fate_probs, c.day, c.rep, c.clusters())))


def permute_guide_sets(experiment: Experiment, units: np.ndarray, seed: int, n_bins: int = PERM_BURDEN_BINS) -> PermutedExperiment:
    """Give every unit the guide set of another unit of its replicate and burden bin.

    Every cell of a unit receives the same set, that of the donor unit's first cell: the
    cells of a unit keep sharing a guide set, as sister cells do, and its fate biases
    stay with its cells, so only the link between guides and fate is broken (real
    effects do not follow the guides, so the permuted data are a clean null). The units
    are much coarser than the clones (:func:`permutation_units`): where the analysis
    split a true clone, its pieces still share one permuted guide set and one fate bias
    here, and the rerun analysis, with its clones, shows the dependence it misses as
    false hits; permuting among the analysis's own clones would scatter such a clone
    over several sets and pass regardless. Every permutation within a stratum is equally
    likely; burden follows the guide set, re-centred within day.
    """
    cells, guides = experiment.cells, experiment.guides
    first = np.unique(units, return_index=True)[1]  # a representative cell per unit
    bins, _ = burden_bins(cells.burden[first], n_bins)
    strata = cells.rep[first].astype(np.int64) * (int(bins.max(initial=0)) + 1) + bins
    rng = np.random.default_rng(seed)
    # Units sorted by stratum, once in index order and once in random order within each
    # stratum: position j of both lists is the same stratum, so receiver j gets donor j.
    receivers = np.argsort(strata, kind="stable")
    donors = np.lexsort((rng.random(strata.size), strata))
    donor_of = np.empty_like(receivers)
    donor_of[receivers] = donors
    source = first[donor_of[units]]
    burden = cells.burden[source]
    new_cells = replace(cells, burden=burden, burden_centered=center_by_group(burden, cells.day, cells.n_days))
    new_guides = replace(
        guides,
        guide_ids=guides.guide_ids[source],
        mask=guides.mask[source],
        ntc_ids=None if guides.ntc_ids is None else guides.ntc_ids[source],
    )
    summary = replace(experiment.summary, source=f"{experiment.summary.source} (guide sets permuted among units, seed {seed})")
    return PermutedExperiment(Experiment(new_cells, new_guides, summary, experiment.dropped_cells), source, strata[units], units)


@dataclass
class PermutationResult:
    """The permutation negative control: the permutation and the hits of the rerun chain."""

    seed: int
    n_units: int
    n_clones: int
    n_strata: int
    n_cells_moved: int
    out_dir: Path
    n_genes: int
    n_hits: int
    hit_genes: list[str]
    n_gene_days_called: int
    hits_by_mode: dict[str, int]
    n_hits_real: int | None
    runtime_s: float
    fixed: dict[str, Any] = field(default_factory=dict)  # the real fit's hyperparameters the permuted fit reused

    @property
    def allowed_hits(self) -> int:
        """Most hits that still count as collapsed: 5% of the real run's hits, at least 1."""
        real = self.n_hits_real or 0
        return max(1, int(math.floor(PERM_HIT_FRACTION * real)))

    @property
    def passed(self) -> bool:
        return self.n_hits <= self.allowed_hits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scheme"] = "guide sets permuted among units much coarser than the clones, within replicate x burden bin"
        d["out_dir"] = str(self.out_dir)
        d["allowed_hits"] = self.allowed_hits
        d["passed"] = self.passed
        return d


def _reset_if_changed(folder: Path, fingerprint: str) -> None:
    """Forget a previous permutation run in ``folder`` made from different permuted data.

    The inner chain's manifest versions steps by settings and input files, which a new
    ``perm_seed`` does not change; its records (and a fit checkpoint) are only valid for
    the permuted data they were made from.
    """
    marker = folder / names.PERMUTATION_FINGERPRINT
    try:
        previous = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != fingerprint:
        (folder / names.MANIFEST).unlink(missing_ok=True)
        fit_dir = folder / names.FIT_DIR
        if fit_dir.is_dir():
            shutil.rmtree(fit_dir)


def real_fit_settings(out_dir: Path, config: FatebiasConfig) -> dict[str, Any]:
    """The real run's fitted hyperparameters as settings of a refit (likelihood weight, sigma_guide, clone covariance).

    With them a Laplace refit (the permutation control's) has nothing to estimate and is
    one Newton solve; the permuted data's guides explain nothing, so their own weight
    would be at most the real one and their intervals no narrower. Empty when the run's
    fit is not saved or not a Laplace one (the refit then estimates them itself).
    """
    try:
        meta = json.loads((Path(out_dir) / names.FIT_DIR / names.FIT_META).read_text())
    except (OSError, ValueError):
        return {}
    info = meta.get("info") or {}
    if meta.get("family") not in ("laplace", "bootstrap") or config.posterior_method == "meanfield":
        return {}
    out: dict[str, Any] = {}
    if config.likelihood_weight == "auto" and isinstance(info.get("likelihood_weight"), int | float):
        out["likelihood_weight"] = float(info["likelihood_weight"])
    sg = info.get("sigma_guide")
    if config.fixed_sigma_guide is None and isinstance(sg, list) and len(sg) == len(config.contrast_fates):
        out["fixed_sigma_guide"] = [float(v) for v in sg]
    cov = info.get("clone_cov")
    if config.fixed_clone_cov is None and isinstance(cov, list):
        out["fixed_clone_cov"] = cov
    if info.get("clone_effects") is False:
        out["clone_effects"] = False
    return out


def permutation_control(
    experiment: Experiment, config: FatebiasConfig, out_dir: str | Path, run_chain: ChainRunner
) -> PermutationResult:
    """Permute guide sets among units coarser than the clones and rerun the chain into ``<out_dir>/permutation``.

    Uses ``perm_seed`` and ``perm_chance_links`` (:func:`permutation_units`,
    :func:`permute_guide_sets`); the inner run keeps the real run's clones, stops after
    ranking (no NTC check, no diagnostics, no report) and fits at the real run's
    hyperparameters (:func:`real_fit_settings`).
    Steps of an earlier permutation run on the same permuted data are reused.
    ``run_chain`` is the engine that reruns the chain
    (:func:`fatebias_core.pipeline.chain.run_chain`); the checks do not depend on it.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    perm = permute_guide_sets(experiment, permutation_units(experiment, config.perm_chance_links), config.perm_seed)
    folder = out / names.PERMUTATION_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fingerprint = perm.fingerprint()
    _reset_if_changed(folder, fingerprint)
    write_json({"fingerprint": fingerprint, "perm_seed": config.perm_seed, "perm_chance_links": config.perm_chance_links},
               folder / names.PERMUTATION_FINGERPRINT)
    guide_level = config.perm_guide_mash or config.discovery_source == "guide_agg"
    fixed = real_fit_settings(out, config)
    inner = make_config(
        {**config.model_dump(), "out_dir": str(folder), "run_diagnostics": False, "stop_at_convergence": True,
         "ntc_check": False, "mash_guide_level": guide_level, **fixed},
        source="permutation run",
    )
    log.info(
        "permutation control: guide sets permuted among %d units (%d clones) within %d strata, %d cells moved; "
        "rerunning the chain in %s (%s)",
        perm.n_units, experiment.cells.clusters().max() + 1, perm.n_strata, perm.n_moved, folder,
        "at the real fit's hyperparameters" if fixed else "estimating its own hyperparameters",
    )
    chain = run_chain(inner, until="rank", experiment=perm.experiment)
    hits = chain.hits
    hit = hits["hit_anyday"].to_numpy(dtype=bool)
    comparison = read_csv(folder / names.MODE_COMPARISON, what="mode comparison")
    real_path = out / names.HITS
    n_real = None
    if real_path.exists():
        n_real = int(read_csv(real_path, what="hits table", usecols=["hit_anyday"])["hit_anyday"].astype(bool).sum())
    return PermutationResult(
        seed=config.perm_seed,
        n_units=perm.n_units,
        n_clones=int(experiment.cells.clusters().max(initial=-1)) + 1,
        n_strata=perm.n_strata,
        n_cells_moved=perm.n_moved,
        out_dir=folder,
        n_genes=len(hits),
        n_hits=int(hit.sum()),
        hit_genes=hits.loc[hit, "gene"].astype(str).tolist(),
        n_gene_days_called=int(pd.to_numeric(hits["n_active_days"]).sum()),
        hits_by_mode={str(m): int(n) for m, n in zip(comparison["mode"], comparison["n_hits"], strict=True)},
        n_hits_real=n_real,
        runtime_s=round(time.perf_counter() - t0, 3),
        fixed=fixed,
    )


# --------------------------------------------------------------------------- sanity checks
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


# --------------------------------------------------------------------------- all
def run_diagnostics(
    experiment: Experiment,
    config: FatebiasConfig,
    out_dir: Path,
    *,
    parts: Sequence[str] = PARTS,
    run_chain: ChainRunner | None = None,
) -> DiagnosticsResult:
    """Run the diagnostics (docs/method.md, "Diagnostics") and write ``<out_dir>/diagnostics.json``.

    Parameters
    ----------
    experiment
        The loaded experiment.
    config
        Settings: the diagnostics group, plus everything the fits and the chain use.
    out_dir
        The run folder: ``diagnostics.json`` and ``permutation/`` go here, and the
        sanity checks read the run's mash or export tables from it when present.
    parts
        Which checks to run (``ntc``, ``heldout``, ``permutation``, ``sanity``); the
        others are ``null`` in the file.
    run_chain
        The engine the permutation control reruns the chain with (needed for the
        ``permutation`` part).

    Returns
    -------
    DiagnosticsResult
    """
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ConfigError(f"unknown diagnostics part(s) {unknown}; choose from {list(PARTS)}")
    t0 = time.perf_counter()
    out = Path(out_dir)
    ntc = ntc_check(experiment, config, out) if "ntc" in parts else None
    heldout = heldout_comparison(experiment, config, _run_fit(out, config, experiment)) if "heldout" in parts else None
    if heldout is not None:  # shown now: the permutation control that follows takes as long again
        s = heldout.scores
        log.info(
            "held-out cross-entropy: full %.5f, nuisance-only %.5f, difference %.5f +/- %.5f",
            s.ce_full, s.ce_nuisance, s.difference, s.difference_se,
        )
    if "permutation" in parts and run_chain is None:
        raise ConfigError("the permutation control needs run_chain, the engine that reruns the chain")
    permutation = permutation_control(experiment, config, out, run_chain) if "permutation" in parts else None
    fallback = heldout.full_fit if heldout is not None else None
    sanity = sanity_checks(config, out, fallback) if "sanity" in parts else None
    path = out / names.DIAGNOSTICS
    result = DiagnosticsResult(heldout, permutation, sanity, path, ntc=ntc)
    result.runtime_s = time.perf_counter() - t0
    write_json(result.to_dict(), path)
    return result


def _run_fit(out_dir: Path, config: FatebiasConfig, experiment: Experiment) -> FitResult | None:
    """The run's saved fit of ``experiment`` to refit the held-out models from (``heldout_fit``).

    None when neither the mode refit nor SVI warm starts use it, the folder has no fit, or its fit is of other
    guides, genes or fates (then the fits start from scratch).
    """
    fit_dir = Path(out_dir) / names.FIT_DIR
    if not (config.heldout_warm_start or config.heldout_fit == "mode") or not (fit_dir / names.FIT_META).exists():
        return None
    result = load_fit(fit_dir)
    same = (
        result.guide_effects
        and list(result.guide_names) == list(experiment.guides.guide_names)
        and list(result.gene_names) == list(experiment.guides.gene_names)
        and list(result.fates) == list(experiment.cells.fates)
        and list(result.contrast_fates) == list(config.contrast_fates)
        and list(result.rep_labels) == list(experiment.cells.rep_labels)
        and list(result.day_labels) == list(experiment.cells.day_labels)
    )
    if not same:
        log.info("held-out fits start from scratch: the fit in %s is of other data", fit_dir)
    return result if same else None


def ntc_check(experiment: Experiment, config: FatebiasConfig, out_dir: Path) -> dict | None:
    """The NTC check of the run (``ntc_check.json``, made by the export step), or made now from the run's fit.

    Returns None (and logs why) when the run has no Laplace fit or the experiment has too
    few NTC guides.
    """
    found = read_ntc_check(out_dir)
    if found is not None:
        return found
    fit_dir = Path(out_dir) / names.FIT_DIR
    if not (fit_dir / names.FIT_META).exists():
        log.info("NTC check skipped: no fit in %s", fit_dir)
        return None
    result = run_ntc_check(experiment, load_fit(fit_dir), config, out_dir)
    if result is None:
        log.info("NTC check skipped: no Laplace fit, or fewer than four NTC guides")
        return None
    log.info(result.describe())
    return read_ntc_check(out_dir)
