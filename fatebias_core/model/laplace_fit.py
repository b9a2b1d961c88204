"""The fit as the Laplace step with empirical Bayes, from scratch or refining a mean-field SVI fit (docs/method.md, "Inference").

:func:`laplace_fit` is the default fit (``posterior_method: laplace``); :func:`refine_posterior`
replaces a mean-field fit's effect posterior by its Laplace or bootstrap refinement.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import numpy as np

from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import FitError
from fatebias_core.model.algebra import choose_algebra
from fatebias_core.model.design import Layout, pearson_dispersion
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.fit_io import make_fit_result
from fatebias_core.model.laplace import (
    LaplaceSettings,
    build_problem,
    laplace_posterior,
    nuisance_start,
)
from fatebias_core.types import Experiment, FitResult

log = logging.getLogger("fatebias.inference")


def refine_posterior(fit_result: FitResult, experiment: Experiment, config: FatebiasConfig, method: str) -> FitResult:
    """Replace a mean-field fit's effect posterior by its Laplace or bootstrap refinement.

    The Laplace step starts from the SVI fit's point; tau and sigma_time are its fitted
    values with ``laplace_effect_scales: fitted`` (else the configured s_tau, s_time), and
    sigma_guide, the clone covariance and the likelihood weight are estimated by
    empirical Bayes from the SVI values as a start (unless fixed).

    Parameters
    ----------
    fit_result
        A mean-field fit of ``experiment`` (with guide effects).
    experiment
        The fitted experiment.
    config
        Settings (priors, weight, scales, bootstrap replicates, seed).
    method
        ``laplace`` or ``bootstrap``.
    """
    if fit_result.posterior.family != "meanfield":
        raise FitError(f"refine_posterior needs a mean-field fit, got {fit_result.posterior.family}")
    mf = fit_result.posterior
    median = mf.median_sites()
    point = mf.point(fit_result.gene_of_guide, len(fit_result.gene_names))
    tau, sigma_time = None, None
    if config.laplace_effect_scales == "fitted":
        tau, sigma_time = median["tau"], median["sigma_time"]
    return laplace_fit(
        experiment, config.model_copy(update={"posterior_method": method}), start={**point, "u": median["u"]},
        tau=tau, sigma_time=sigma_time, sigma_guide=median["sigma_guide"], weight=1.0 / fit_result.info["dispersion_final"],
        base=fit_result,
    )


def laplace_fit(
    experiment: Experiment,
    config: FatebiasConfig,
    *,
    start: dict[str, np.ndarray] | None = None,
    tau: np.ndarray | None = None,
    sigma_time: np.ndarray | None = None,
    sigma_guide: np.ndarray | None = None,
    weight: float | None = None,
    base: FitResult | None = None,
    posterior_genes: Sequence[int] | None = None,
) -> FitResult:
    """The fit as the Laplace step with empirical Bayes (docs/method.md, "Inference").

    Given tau and sigma_time (the configured s_tau, s_time unless given), the effects'
    posterior is the Laplace approximation at the joint mode of the effects and the
    clone effects, found by Newton's method; sigma_guide, the clone covariance and the
    likelihood weight are estimated by empirical Bayes alongside (each unless fixed by
    ``fixed_sigma_guide``, ``fixed_clone_cov`` or a numeric ``likelihood_weight``). No SVI
    runs; the trace holds the negative log posterior per cell at each update.

    Parameters
    ----------
    experiment
        The data.
    config
        Settings.
    start
        Starting values of the linear latents (None: zero effects, nuisance at its mode).
    tau, sigma_time, sigma_guide, weight
        Values to use or to start from (sigma_guide, weight) instead of the defaults.
    base
        A mean-field fit this refines: its trace and facts are kept.
    posterior_genes
        The genes whose posterior the caller reads (None: every gene); the others keep
        model-based covariance blocks (:class:`~fatebias_core.model.laplace.LaplaceSettings`,
        ``genes``).
    """
    t0 = time.perf_counter()
    K, D = len(config.contrast_fates), experiment.cells.n_days
    fixed_sg = config.fixed_sigma_guide is not None
    hyper = {
        "tau": np.full(K, config.s_tau) if tau is None else np.asarray(tau, dtype=np.float64),
        "sigma_time": np.full((K, D - 1), config.s_time) if sigma_time is None else np.asarray(sigma_time, dtype=np.float64),
        "sigma_guide": np.asarray(
            config.fixed_sigma_guide if fixed_sg else (np.full(K, 0.5 * config.s_guide) if sigma_guide is None else sigma_guide),
            dtype=np.float64,
        ),
    }
    auto = config.likelihood_weight == "auto"
    w0 = float(config.likelihood_weight) if not auto else (weight if weight is not None else _nuisance_weight(experiment, config, hyper))
    settings = LaplaceSettings(
        estimate_weight=auto,
        estimate_sigma_guide=not fixed_sg,
        estimate_clone_cov=config.fixed_clone_cov is None,
        clone_effects=config.clone_effects,
        uncertainty=config.uncertainty,
        bootstrap=config.bootstrap_replicates if config.posterior_method == "bootstrap" else 0,
        seed=config.seed,
        progress=config.progress,
        genes=None if posterior_genes is None else tuple(int(g) for g in posterior_genes),
        algebra=config.laplace_algebra,
    )
    clone_cov = None if config.fixed_clone_cov is None else np.asarray(config.fixed_clone_cov, dtype=np.float64)
    posterior = laplace_posterior(
        experiment, config.contrast_fates, config.ref_fate, Priors.from_config(config), start, hyper, w0, settings, clone_cov
    )
    p = posterior.params
    runtime = time.perf_counter() - t0
    trace = np.asarray(p["eb_trace"], dtype=np.float64) if "eb_trace" in p else np.zeros(0)
    facts = {
        "posterior_method": config.posterior_method,
        "uncertainty": config.uncertainty,
        "n_clusters": int(experiment.cells.clusters().max(initial=-1)) + 1,
        "cluster_source": experiment.cells.cluster_source,
        "likelihood_weight": float(p["weight"]),
        "dispersion_final": 1.0 / float(p["weight"]),
        "sigma_guide": np.asarray(p["sigma_guide"]).tolist(),
        "clone_cov": None if posterior.clone_cov is None else posterior.clone_cov.tolist(),
        "clone_effects": posterior.clone_cov is not None,
        "estimated": [k for k, on in (("likelihood_weight", auto), ("sigma_guide", not fixed_sg),
                                      ("clone_cov", config.fixed_clone_cov is None and posterior.clone_cov is not None)) if on],
        "laplace_runtime_s": round(runtime, 3),
        "laplace_newton_iterations": int(p["newton_iterations"]),
        "laplace_eb_updates": int(p["eb_iterations"]),
        "laplace_converged": bool(p["converged"]),
        "laplace_algebra": "dense" if "dense_fallback" in p else choose_algebra(config.laplace_algebra, K * Layout.of(experiment).size),
    }
    if "block_check" in p:
        facts["laplace_block_check"] = {"model_se_max_rel_err": float(p["block_check"][0]), "robust_se_max_rel_err": float(p["block_check"][1])}
    if base is not None:
        info = dict(base.info) | facts
        return dataclasses.replace(base, posterior=posterior, info=info)
    info = {
        "steps": 0, "max_steps": 0, "stopped_at_convergence": False, "resumed_from": 0, "runtime_s": round(runtime, 3),
        "device": "cpu", "n_cells": experiment.n_cells, "converged": facts["laplace_converged"], "steps_to_convergence": None,
        "final_loss_per_cell": float(p["objective"]) / max(experiment.n_cells, 1),
        "weight_switch_step": None, "weight_update_steps": [],
        "settings": {k: v for k, v in config.model_dump(mode="json").items() if k in _LAPLACE_SETTINGS},
        **facts,
    }
    log.info(
        "Laplace fit: %d empirical Bayes updates, %d Newton iterations, %.1f s; weight %.4g, sigma_guide %s%s",
        facts["laplace_eb_updates"], facts["laplace_newton_iterations"], runtime, facts["likelihood_weight"],
        np.round(p["sigma_guide"], 4).tolist(),
        "" if posterior.clone_cov is None else f", clone SD {np.round(np.sqrt(np.diag(posterior.clone_cov)), 3).tolist()}",
    )
    return make_fit_result(experiment, config, posterior, trace, info, guide_effects=True)


_LAPLACE_SETTINGS = (
    "fates", "ref_fate", "contrast_fate", "s_alpha", "s_rep", "s_gamma", "s_tau", "s_time", "s_guide",
    "likelihood_weight", "posterior_method", "uncertainty", "clone_effects", "fixed_sigma_guide", "fixed_clone_cov",
    "bootstrap_replicates", "seed", "laplace_algebra",
)


def _nuisance_weight(experiment: Experiment, config: FatebiasConfig, hyper: dict[str, np.ndarray]) -> float:
    """A starting likelihood weight: 1 / the Pearson dispersion around the nuisance-only mode."""
    problem = build_problem(experiment, config.contrast_fates, config.ref_fate, Priors.from_config(config), hyper, 1.0)
    psi = nuisance_start(problem)
    phi = pearson_dispersion(problem.p, problem.probabilities(psi))
    return 1.0 / phi if phi > 0 else 1.0
