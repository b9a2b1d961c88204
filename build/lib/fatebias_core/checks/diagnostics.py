"""Diagnostics of a fit (docs/method.md, "Diagnostics"): held-out cross-entropy, permutation control, sanity checks.

:func:`run_diagnostics` runs four checks and writes ``diagnostics.json``. Each check is a
module of its own (:mod:`.heldout`, :mod:`.permutation`, :mod:`.sanity`, :mod:`.ntc`);
their public names are importable from here too.

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

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from fatebias_core.checks.heldout import (
    HeldOutResult,
    HeldOutScores,
    clone_holdout,
    heldout_comparison,
    score_heldout,
    soft_cross_entropy,
    split_experiment,
    stratified_holdout,
)
from fatebias_core.checks.ntc import read_ntc_check, run_ntc_check
from fatebias_core.checks.permutation import (
    ChainRunner,
    PermutationResult,
    PermutedExperiment,
    burden_bins,
    permutation_control,
    permutation_units,
    permute_guide_sets,
    real_fit_settings,
)
from fatebias_core.checks.sanity import (
    GenePosterior,
    RegulatorCheck,
    SanityResult,
    check_regulators,
    gene_posterior,
    sanity_checks,
)
from fatebias_core.config import FatebiasConfig
from fatebias_core.errors import ConfigError
from fatebias_core.io import layout as names
from fatebias_core.io import write_json
from fatebias_core.model.inference import load_fit
from fatebias_core.types import DiagnosticsResult, Experiment, FitResult

__all__ = [
    # the checks, each in its module (heldout, permutation, sanity), importable from here
    "HeldOutResult",
    "HeldOutScores",
    "clone_holdout",
    "heldout_comparison",
    "score_heldout",
    "soft_cross_entropy",
    "split_experiment",
    "stratified_holdout",
    "ChainRunner",
    "PermutationResult",
    "PermutedExperiment",
    "burden_bins",
    "permutation_control",
    "permutation_units",
    "permute_guide_sets",
    "real_fit_settings",
    "GenePosterior",
    "RegulatorCheck",
    "SanityResult",
    "check_regulators",
    "gene_posterior",
    "sanity_checks",
    "DiagnosticsResult",
    "PARTS",
    "ntc_check",
    "run_diagnostics",
]

log = logging.getLogger("fatebias.diagnostics")

PARTS = ("heldout", "permutation", "sanity", "ntc")


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
