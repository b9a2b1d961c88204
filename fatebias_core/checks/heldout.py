"""The held-out check of a fit: whole clones held out, both models refitted, cross-entropy compared.

A fraction ``heldout_frac`` of the clones (whole clones, drawn within every day x
replicate stratum with ``heldout_seed``; every cell is its own clone when none are
known) is held out; the full model and the nuisance-only model (day, replicate and
burden terms, no guide terms) are refitted to the rest (``heldout_fit``: at their
conditional mode by Newton's method with the run's hyperparameters, or by SVI stopped
at convergence), and both predict the held-out cells. The score is the soft-label
cross-entropy ``-mean_i sum_f p_if log pi_if`` (lower is better); where guides carry
signal the full model must beat the nuisance model. The held-out cells' burden is
centred with the training cells' day means, the centring the fitted burden slope was
learned on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError
from fatebias_core.model.algebra import choose_algebra
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.inference import fit, predict_fates
from fatebias_core.model.laplace import (
    LaplacePosterior,
    build_problem,
    newton_mode,
    nuisance_problem,
    pack_psi,
)
from fatebias_core.types import Experiment, FitResult

log = logging.getLogger("fatebias.diagnostics")

PROB_FLOOR = 1e-300
"""Predicted probabilities are floored here before the log (a softmax can underflow to 0)."""


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
        structured = choose_algebra(config.laplace_algebra, prob.n_contrasts * prob.layout.size) == "blocks"
        res = newton_mode(prob, psi, hessian_at_mode=False, structured=structured)
        pis.append(test_prob.probabilities(res.psi))
        info[name] = {
            "method": "mode", "newton_iterations": res.n_iter, "converged": res.converged,
            "runtime_s": round(time.perf_counter() - t0, 3), "objective_per_cell": res.objective / train.n_cells,
        }
    return pis[0], pis[1], info
