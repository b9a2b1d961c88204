"""The one configuration schema of fatebias.

Library, command line and platform all read settings through :class:`FatebiasConfig`.
A YAML file uses the seed pipeline's flat key names (``adata_path``, ``Kmax``,
``s_tau``, ``mash_se_inflate``, ...). Every field has a default and a one-line
description; an unknown key or a wrong type fails before any work starts, naming the
key and suggesting the nearest valid one.
"""

from __future__ import annotations

import difflib
import json
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fatebias_core.errors import ConfigError
from fatebias_core.hashing import json_hash

#: Allowed values of the settings that the command line and the platform also offer.
Device = Literal["auto", "cpu", "cuda"]
MashBackendName = Literal["native", "r"]
MashMode = Literal["conservative", "enriched"]
DEVICES: tuple[str, ...] = get_args(Device)
MASH_BACKENDS: tuple[str, ...] = get_args(MashBackendName)
MASH_MODES: tuple[str, ...] = get_args(MashMode)
GuideSource = Literal["obsm", "obsm_counts", "layer", "cellranger_calls", "cellranger_h5", "mudata"]
AssignMethod = Literal[
    "gauss", "poisson_gauss", "umi", "poisson", "negative_binomial", "binomial", "max", "ratio", "quantiles", "2beta", "3beta"
]
GUIDE_SOURCES: tuple[str, ...] = get_args(GuideSource)
#: Guide sources that need files of their own (``guide_files``).
GUIDE_FILE_SOURCES = ("cellranger_calls", "cellranger_h5", "mudata")
#: Guide sources with UMI counts that a library assigns.
GUIDE_COUNT_SOURCES = ("obsm_counts", "layer", "cellranger_h5", "mudata")

# Group names, in the order the README's configuration reference lists them.
GROUPS = (
    "inputs",
    "model",
    "inference",
    "exports",
    "mash",
    "calls",
    "diagnostics",
    "simulation",
)


def _f(default: Any, doc: str, group: str, **kwargs: Any) -> Any:
    """A schema field with a one-line description and a README group."""
    return Field(default, description=doc, json_schema_extra={"group": group}, **kwargs)


class FatebiasConfig(BaseModel):
    """Every setting of a fatebias run, validated, with defaults (docs/method.md)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # ------------------------------------------------------------------ inputs (1-2)
    adata_path: str | None = _f(None, "AnnData .h5ad file with fate probabilities, guides, day and replicate labels.", "inputs")
    guide_map_csv: str | None = _f(None, "Guide map CSV with columns guide_name, gene_name, is_ntc (0/1).", "inputs")
    out_dir: str = _f("fatebias_out", "Folder that receives every output file of the run.", "inputs")
    fate_prob_key: str = _f("lineages_fwd", "obsm key of the per-cell fate probabilities (CellRank 2: lineages_fwd).", "inputs")
    fates: list[str] = _f(["EC", "MES", "NEU"], "Terminal fates to model, matched by name to the fate columns in the file.", "inputs")
    ref_fate: str = _f("EC", "Reference fate: its logit is fixed at 0, every other fate is a contrast against it.", "inputs")
    contrast_fate: str = _f("MES", "Primary contrast fate: its outputs keep the seed's unsuffixed file names.", "inputs")
    guide_key: str = _f("guide_assignment", "obsm key of the cell-by-guide assignment matrix (non-zero = detected).", "inputs")
    covar_key: str = _f("covariates", "obsm key of a covariate DataFrame holding the replicate column (falls back to obs).", "inputs")
    rep_key: str = _f("replicate", "Replicate column, in obsm[covar_key] or obs.", "inputs")
    day_key: str = _f("day", "obs column of day labels (e.g. d0..d3), ordered by the number in the label.", "inputs")
    day_order: list[str] | None = _f(None, "Day labels in time order, for labels without a number (e.g. [baseline, day two, day four]); null: ordered by the number in each label. Output columns are then named d0, d1, ... by position.", "inputs")
    clone_key: str = _f("clone", "obs column of clone labels (lineage barcodes). Without it, clones are inferred from overlapping detected guide sets within a replicate (clone_chance_links).", "inputs")
    clone_chance_links: float = _f(0.3, "Inferred clones (no clone_key): cells (and clusters found so far) of a replicate are linked when at most this many units are expected to share as many of their detected guides by chance; clones are the linked groups: the units of the clone effect and of the cluster-robust covariance, whose cells share their detected guides (clone_guides). Smaller: fewer unrelated clones merged (fewer foreign guides, a little more power), more clones split (intervals too narrow).", "inputs", gt=0)
    drop_unplaced_cells: bool = _f(True, "Inferred clones with incomplete guide capture (estimated detection below 0.95): cells that show fewer than two guides cannot be placed in their clone, whose effect they share, so they are left out of the fit (listed in dropped_cells.csv). false: keep them as clones of their own.", "inputs")
    clone_guides: Literal["union", "observed"] = _f("union", "Guides of a cell in a clone of several cells: union gives every cell its clone's detected guides (a cell carries its clone's guides whether or not they were captured); observed keeps each cell's own.", "inputs")
    Kmax: int = _f(20, "Maximum guides per cell (NTCs count); cells with more are dropped and counted.", "inputs", ge=1)
    D: int | None = _f(None, "Expected number of days; checked against the data when given.", "inputs", ge=2)
    R: int | None = _f(None, "Expected number of replicates; checked against the data when given.", "inputs", ge=1)
    fate_sum_tol: float = _f(1e-3, "Fate rows whose sum is off 1 by more than this are rejected; smaller drift is renormalised.", "inputs", gt=0)
    drop_invalid_cells: bool = _f(False, "Drop invalid cells (fate probabilities NaN/infinite, negative or off the simplex by more than fate_sum_tol; no day, replicate or clone label) instead of failing; they are counted in the load summary and listed with the reason in dropped_cells.csv.", "inputs")
    guide_source: GuideSource = _f("obsm", "Where the guides come from: obsm (the detection matrix in obsm[guide_key], non-zero = detected); obsm_counts (guide UMI counts in obsm[guide_key]) or layer (UMI counts in layers[guide_layer] of the guide features), assigned by assign_method; cellranger_calls (Cell Ranger's protospacer_calls_per_cell.csv); cellranger_h5 (the guide features of a 10x filtered_feature_bc_matrix.h5) or mudata (the guide modality of an .h5mu), UMI counts assigned by assign_method.", "inputs")
    guide_files: list[str] = _f([], "The guide file(s) of guide_source cellranger_calls, cellranger_h5 or mudata (one per sample or library; each file's barcodes are matched to the AnnData's cells on their own). mudata with none: the .h5mu of adata_path.", "inputs")
    guide_layer: str | None = _f(None, "The layer of guide UMI counts: of the AnnData (guide_source layer, restricted to var[feature_types] == guide_feature_type when that column exists) or of the .h5mu guide modality (mudata); null: X.", "inputs")
    guide_modality: str | None = _f(None, "The .h5mu modality of the guide counts; null: the first of gdo, crispr, guides, grna, sgrna present.", "inputs")
    rna_modality: str = _f("rna", "When adata_path is an .h5mu (or the in-memory object a MuData): the modality holding the fate probabilities, days and replicates.", "inputs")
    guide_feature_type: str = _f("CRISPR Guide Capture", "Feature type of the guide features in a 10x .h5 and in var['feature_types'] of a layer.", "inputs")
    guide_min_matched: float = _f(0.5, "Stop when fewer than this share of the AnnData's cells is found in the guide file(s) (barcodes are matched exactly, then with a sample prefix or suffix added or removed).", "inputs", ge=0, le=1)
    drop_empty_guides: bool = _f(False, "Guide features with no UMI in any cell are an error (a wrong feature reference or modality); true: drop them and list them in the load summary.", "inputs")
    assign_method: AssignMethod = _f("gauss", "crispat method that assigns guides from UMI counts (docs/method.md, Guide assignment): gauss (default: a two-component Gaussian mixture on log counts per guide and replicate, close to Cell Ranger's protospacer calling; per guide, so right at high MOI), poisson_gauss (Replogle et al.'s per-guide mixture; slow), umi (a fixed UMI threshold), poisson, negative_binomial, binomial; max, ratio, quantiles, 2beta, 3beta compare a cell's guides with each other and assume one guide per cell (low MOI).", "inputs")
    assign_params: dict[str, Any] = _f({}, "Keyword arguments of the crispat function of assign_method, over fatebias' defaults (gauss: inference em; umi: thresholds [2]; plots off), e.g. {n_iter: 250} or {thresholds: [3]}.", "inputs")
    assign_batch_key: str | None = _f(None, "obs column whose labels are crispat's batches (methods that fit per batch: gauss, poisson, negative_binomial, binomial, 2beta, 3beta); null: the replicate labels.", "inputs")

    # ------------------------------------------------------------------ model (3-4)
    s_alpha: float = _f(2.0, "Prior SD of the day intercepts a[f, d].", "model", gt=0)
    s_rep: float = _f(0.5, "Prior SD of the replicate effects b[f, r].", "model", gt=0)
    s_gamma: float = _f(0.5, "Prior SD of the burden slope c[f].", "model", gt=0)
    s_tau: float = _f(1.0, "HalfNormal scale of tau[f], the spread of gene effects on the first day.", "model", gt=0)
    s_time: float = _f(0.5, "HalfNormal scale of sigma_time[f, d], the per-interval random-walk step of gene effects.", "model", gt=0)
    s_guide: float = _f(0.5, "HalfNormal scale of sigma_guide[f], the spread of guide deviations within a gene.", "model", gt=0)
    likelihood_weight: float | Literal["auto"] = _f("auto", "Weight w of the soft-label cross-entropy; auto: 1 / (Pearson dispersion of the fate probabilities), estimated during the fit.", "model")

    # ------------------------------------------------------------------ inference (5)
    batch_size: int = _f(8192, "Cells per SVI minibatch (the whole data set when larger).", "inference", ge=1)
    lr: float = _f(0.02, "Initial ClippedAdam learning rate.", "inference", gt=0)
    lr_final: float = _f(5e-4, "Learning rate reached by geometric decay at the last step.", "inference", gt=0)
    clip_norm: float = _f(10.0, "ClippedAdam gradient clipping norm.", "inference", gt=0)
    num_steps: int = _f(4000, "Maximum number of SVI steps.", "inference", ge=1)
    convergence_window: int = _f(500, "Steps per window compared by the convergence check.", "inference", ge=10)
    convergence_tol: float = _f(1e-4, "Converged when the windowed mean ELBO changes by less than this fraction.", "inference", gt=0)
    stop_at_convergence: bool = _f(False, "Stop SVI at the first convergence check that passes (every convergence_window steps) instead of running num_steps; the diagnostics' fits always stop there.", "inference")
    num_posterior_draws: int = _f(1000, "Posterior draws S taken from the fitted guide.", "inference", ge=10)
    seed: int = _f(0, "Random seed: the same seed gives the same numbers on CPU.", "inference")
    device: Device = _f("auto", "Torch device for the fit: auto picks cuda when available.", "inference")
    posterior_method: Literal["meanfield", "laplace", "bootstrap"] = _f("laplace", "Posterior of the effects: the SVI mean-field guide; a Laplace approximation at the conditional mode that keeps their correlations; or a one-step Newton bootstrap over cells around that mode.", "inference")
    uncertainty: Literal["cluster_robust", "model"] = _f("cluster_robust", "Covariance of the laplace/bootstrap posterior: model is the Laplace posterior of the model with its clone random effect; cluster_robust wraps it in the CR2 sandwich over clones, with Student-t intervals from each effect's Bell-McCaffrey degrees of freedom, a safety net where the random effect is wrong; the bootstrap resamples clones.", "inference")
    laplace_algebra: Literal["auto", "dense", "blocks"] = _f("auto", "How the laplace/bootstrap posterior reads the inverse Hessian: dense (a dense factor; memory and time grow as the square and cube of the parameters), blocks (gene blocks after a Schur complement on the day, replicate and burden terms, the other genes eliminated to first order; memory linear in the screen, exact solves and mode) or auto (dense for screens of up to 8,000 parameters that fit this machine, else blocks). With blocks the fit checks three genes' SEs against exact solves and reports the largest error (fit info laplace_block_check); under auto, where that error is above 1% and this machine holds the dense algebra, the fit is finished with dense from the blocks' fixed point.", "inference")
    clone_effects: bool = _f(True, "Model a random intercept per clone on each contrast's logit, b_c ~ N(0, Sigma_b), with Sigma_b estimated by empirical Bayes (needs at least 20 clones of two cells or more; else off, and the load summary says so).", "inference")
    fixed_clone_cov: list[list[float]] | None = _f(None, "Clone covariance Sigma_b (contrasts x contrasts, primary first) to fit at instead of estimating it (the permutation control and the NTC check use the real run's). null: estimated.", "inference")
    bootstrap_replicates: int = _f(200, "Replicates of posterior_method: bootstrap.", "inference", ge=10)
    fixed_sigma_guide: list[float] | None = _f(None, "Spread of guide deviations sigma_guide (one per contrast fate, primary first) to fit at instead of estimating it (the permutation control and the NTC check use the real run's). null: estimated (by empirical Bayes in the Laplace step, by SVI with meanfield).", "inference")
    laplace_effect_scales: Literal["configured", "fitted"] = _f("configured", "Laplace prior scales of theta: the configured s_tau/s_time (weakly informative: mash does the shrinkage; the fit is then the Laplace step with empirical Bayes alone, no SVI) or the SVI-fitted tau/sigma_time (SVI first).", "inference")
    dispersion_warmup_frac: float = _f(0.25, "With likelihood_weight auto: fraction of the steps fitted with w = 1 before the dispersion is estimated.", "inference", gt=0, lt=1)
    checkpoint_every: int = _f(500, "SVI steps between checkpoints of fatebias fit/run (an interrupted fit resumes from the last).", "inference", ge=1)
    progress: bool = _f(True, "Show a progress bar with the ELBO and steps/s.", "inference")

    # ------------------------------------------------------------------ exports (6)
    weights: list[float] | None = _f(None, "Across-day weights w_d for Delta_sum (null: proportional to each day's cell count).", "exports")
    export_ash_summary: bool = _f(True, "Write gene_summary_for_ash.csv, the across-day weighted summary.", "exports")
    ash_lfsr_thresh: float = _f(0.05, "Across-day summary: a hit needs lfsr below this ...", "exports", gt=0, lt=1)
    ash_qvalue_thresh: float = _f(0.10, "... and q-value below this.", "exports", gt=0, lt=1)
    qc_offset_tol: float = _f(1e-3, "Warn when |mean delta| or |theta - mean beta| of a gene exceeds this.", "exports", gt=0)

    # ------------------------------------------------------------------ mash (7)
    mash_backend: MashBackendName = _f("native", "mash implementation: native (numpy/scipy) or r (rpy2 + R mashr).", "mash")
    mash_se_inflate: float = _f(
        1.2,
        "Standard errors are multiplied by this before mash: the smallest factor whose realised false sign rate "
        "stayed at or below nominal (pooled 95% upper bound) at lfsr 0.05 and 0.10 in the calibration study "
        "(1.0: 0.081 at 0.05; 1.5 halves the recall) ...",
        "mash",
        gt=0,
    )
    mash_se_floor: float = _f(0.0, "... and floored at this.", "mash", ge=0)
    mash_estimate_V: bool = _f(True, "Estimate the null correlation V (estimate_null_correlation_simple); identity if false.", "mash")
    mash_v_eig_floor: float = _f(1e-6, "Eigenvalue floor when regularising V to a correlation matrix.", "mash", ge=0)
    mash_v_shrink_rho: float = _f(0.05, "V is shrunk to identity: V = (1 - rho) V + rho I.", "mash", ge=0, le=1)
    mash_conservative_prior: Literal["nullbiased", "uniform"] = _f("nullbiased", "Mixture-weight prior of the conservative mode.", "mash")
    mash_conservative_nullweight: float = _f(10.0, "Null weight of the conservative mode's prior.", "mash", ge=1)
    mash_conservative_usepointmass: bool = _f(True, "Conservative mode includes a point mass at zero.", "mash")
    mash_enriched_prior: Literal["nullbiased", "uniform"] = _f("uniform", "Mixture-weight prior of the enriched mode.", "mash")
    mash_enriched_nullweight: float = _f(3.0, "Null weight of the enriched mode's prior.", "mash", ge=1)
    mash_enriched_usepointmass: bool = _f(True, "Enriched mode includes a point mass at zero.", "mash")
    mash_add_datadriven_cov: bool = _f(True, "Enriched mode adds PCA + extreme-deconvolution covariances from the strong rows.", "mash")
    mash_cov_pca_npc: int = _f(2, "Principal components for the data-driven covariances.", "mash", ge=1)
    mash_strong_lfsr_for_cov: float = _f(0.1, "A row is strong when its mash_1by1 lfsr is below this in any condition.", "mash", gt=0, lt=1)
    mash_min_strong_for_cov: int = _f(50, "Data-driven covariances are added only with at least this many strong rows.", "mash", ge=1)
    mash_guide_level: bool = _f(True, "Run mash on the guide tables too (and aggregate them to genes); discovery_source guide_agg needs it.", "mash")
    mash_chunk_rows: int = _f(50000, "Rows per chunk of the mash likelihood (bounds memory).", "mash", ge=1)
    ash_settings: Literal["default", "seed"] = _f("default", "ash prior of the across-day summary: default = ashr's defaults (normal mixture, point mass at zero, nullbiased prior); seed = the seed pipeline's ash(mixcompdist = 'halfuniform', pointmass = FALSE, prior = 'uniform', grange = range(betahat)), which has no point mass, so lfdr and q-value are 0 for every gene and 'lfsr < 0.05 and q < 0.10' reduces to lfsr alone.", "mash")
    mash_ed_maxiter: int = _f(100000, "Iteration limit of extreme deconvolution (enriched mode); when reached, its covariances are kept and a warning says so.", "mash", ge=1)

    # ------------------------------------------------------------------ calls (8-9)
    mash_default_mode: MashMode = _f("conservative", "mash mode whose output gives the ranked hits.", "calls")
    discovery_source: Literal["gene", "guide_agg", "ash"] = _f("gene", "Hits from the gene mash table, the guide-aggregated table, or the ash summary.", "calls")
    mash_lfsr_thresh_day: float = _f(0.05, "A day is active when its lfsr is below this ...", "calls", gt=0, lt=1)
    effect_size_eps: float = _f(0.20, "... and P(|effect| >= eps) under mash's posterior mixture (the mash tables' plarge columns, which the mash step computes at this eps), eps on the contrast's logit scale (log-odds of the contrast fate vs the reference fate, per knockdown) ...", "calls", ge=0)
    effect_prob_large_min: float = _f(0.90, "... is at least this.", "calls", ge=0, le=1)
    mash_anyday_correction: Literal["bonferroni", "none"] = _f("bonferroni", "Any-day threshold: the day threshold divided by the number of days, or as is.", "calls")
    mash_lfsr_thresh_anyday: float = _f(0.05, "lfsr threshold of the any-day call before correction.", "calls", gt=0, lt=1)
    min_active_days_for_hit_anyday: int = _f(1, "Any-day hit needs at least this many active days.", "calls", ge=1)

    # ------------------------------------------------------------------ diagnostics (10)
    run_diagnostics: bool = _f(True, "Run held-out fit, permutation control and sanity checks with the chain.", "diagnostics")
    heldout_frac: float = _f(0.1, "Fraction of clones held out for the cross-entropy comparison (whole clones, so the held-out cells are new clones; every cell is its own clone when none are known).", "diagnostics", gt=0, lt=1)
    heldout_steps: int | None = _f(None, "SVI steps of each held-out fit with heldout_fit svi (null: num_steps).", "diagnostics", ge=1)
    heldout_seed: int = _f(1, "Seed of the held-out split and fits.", "diagnostics")
    heldout_fit: Literal["mode", "svi"] = _f("mode", "How the held-out check refits both models to the training cells. mode: at their conditional posterior mode by Newton's method, with the run's variance hyperparameters and likelihood weight, from the run's mode (needs a laplace or bootstrap run fit; seconds, no SVI noise); svi: by SVI stopped at convergence (always so for a meanfield run).", "diagnostics")
    heldout_warm_start: bool = _f(True, "With heldout_fit svi, the held-out fits start from the run's fit (when the run folder has one) at its likelihood weight; false: from scratch. Either way they stop at convergence.", "diagnostics")
    perm_guide_mash: bool = _f(False, "The permutation control also runs guide-level mash and the guide-to-gene aggregation (its verdict counts gene-level hits, which do not need them; discovery_source guide_agg always runs them).", "diagnostics")
    perm_seed: int = _f(2, "Seed of the permutation of guide sets.", "diagnostics")
    perm_chance_links: float = _f(3.0, "The permutation control's units: cells linked by shared guides as clones are (clone_chance_links) but at this far looser threshold, so that a true clone the analysis split is still one unit; guide sets are permuted among units (within replicate x burden bin).", "diagnostics", gt=0)
    ntc_pseudogene_size: int | None = _f(None, "NTC calibration check: NTC guides per pseudo-gene (null: the median guides per gene).", "diagnostics", ge=1)
    ntc_check: bool = _f(True, "Run the NTC calibration check right after the fit: half the NTC guides, grouped into pseudo-genes, are fitted like genes (the other half stays the baseline), then the halves swap; the pseudo-genes' intervals must cover 0.", "diagnostics")
    on_failed_calibration: Literal["warn", "stop"] = _f("warn", "When the NTC check finds the intervals too narrow: warn (the console and the report's headline say the intervals are not trusted, and the chain goes on) or stop the run before ranking, with the reason.", "diagnostics")
    known_regulators: dict[str, int] = _f({}, "Sanity checks: gene -> expected sign (+1 or -1) of its contrast effect.", "diagnostics")

    # ------------------------------------------------------------------ simulation (11)
    sim_n_cells: int = _f(20000, "Simulated cells.", "simulation", ge=10)
    sim_n_genes: int = _f(100, "Simulated target genes.", "simulation", ge=1)
    sim_n_guides: int = _f(600, "Simulated targeting guides (spread evenly over genes).", "simulation", ge=1)
    sim_n_days: int = _f(4, "Simulated days (labelled d0, d1, ...).", "simulation", ge=2)
    sim_n_reps: int = _f(2, "Simulated replicates.", "simulation", ge=1)
    sim_kmax: int = _f(9, "Most guides a simulated cell receives: k ~ Poisson((sim_kmax + 1) / 2) clipped to [1, sim_kmax].", "simulation", ge=1)
    sim_n_ntc_guides: int = _f(20, "Simulated non-targeting control guides.", "simulation", ge=0)
    sim_ntc_fraction: float = _f(0.1, "Probability that a guide slot holds an NTC guide.", "simulation", ge=0, le=1)
    sim_concentration: float = _f(50.0, "Dirichlet concentration of the fate-probability noise (lower is noisier).", "simulation", gt=0)
    sim_active_frac: float = _f(0.1, "Fraction of genes with a true effect, per contrast fate (exactly round(frac x genes)); each gets a random sign and a constant, onset or transient day profile.", "simulation", ge=0, le=1)
    sim_effect_min: float = _f(0.4, "Smallest |theta| of an active gene on its active days.", "simulation", ge=0)
    sim_effect_max: float = _f(1.0, "Largest |theta| of an active gene on its active days.", "simulation", gt=0)
    sim_s_time: float = _f(0.05, "SD of day-to-day jitter added to active genes' effects on their active days.", "simulation", ge=0)
    sim_s_guide: float = _f(0.1, "SD of guide deviations within a gene.", "simulation", ge=0)
    sim_s_tau: float = _f(0.0, "SD of small gene-constant background effects of inactive genes (0: exactly null).", "simulation", ge=0)
    sim_clone_size_mean: float = _f(0.0, "Mean clone size (0: every cell independent); otherwise cells come in clones of 1 + Poisson(mean - 1) cells sharing one guide set and one replicate (at least 1 when on).", "simulation", ge=0)
    sim_clone_bias_sd: float = _f(0.0, "SD of each clone's per-contrast logit bias N(0, sd^2), shared by its cells (needs sim_clone_size_mean > 0).", "simulation", ge=0)
    sim_clone_size_cv: float = _f(0.0, "Heavy-tailed clone sizes (0: off, sizes 1 + Poisson(mean - 1)): sizes 1 + negative binomial with mean sim_clone_size_mean and this coefficient of variation (at least that of the Poisson).", "simulation", ge=0)
    sim_write_clone_labels: bool = _f(True, "With clones on, write each cell's clone to obs['clone'].", "simulation")
    sim_guide_detection: float = _f(1.0, "Probability that a guide a cell carries is detected (each cell x guide independently, NTCs included). An undetected guide still acts on the cell's fate but is missing from the guide matrix, as with incomplete guide capture.", "simulation", gt=0, le=1)
    sim_smoothing_k: int = _f(0, "CellRank-like smoothing (0: off): within a day, each cell's probabilities move towards the mean over its k nearest neighbours in fate-probability space (itself included).", "simulation", ge=0)
    sim_smoothing_weight: float = _f(1.0, "Smoothing mix w: p' = (1 - w) p + w mean_kNN(p).", "simulation", ge=0, le=1)
    sim_noise: Literal["dirichlet", "logistic_normal"] = _f("dirichlet", "Fate-probability noise: Dirichlet(sim_concentration x pi), or softmax(eta + N(0, sim_logit_noise_sd^2) on each non-reference logit).", "simulation")
    sim_logit_noise_sd: float = _f(0.5, "SD of the per-cell logit noise of sim_noise: logistic_normal.", "simulation", ge=0)
    sim_knockdown_sd: float = _f(0.0, "Uneven knockdown (0: off): each targeting guide's effect is scaled per replicate by clip(N(1, sd^2), 0, 2).", "simulation", ge=0)
    sim_batch_sd: float = _f(0.0, "Batch offsets (0: off): N(0, sd^2) per contrast x day x replicate added to the logits.", "simulation", ge=0)
    sim_seed: int = _f(0, "Simulation seed.", "simulation")
    sim_truth_thresh: float = _f(0.2, "A gene/day is truly active when |theta| exceeds this.", "simulation", ge=0)

    # ------------------------------------------------------------------ validators
    @field_validator("fates")
    @classmethod
    def _fates_distinct(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError(f"needs at least 2 fates, got {len(v)}")
        if len(set(v)) != len(v):
            raise ValueError(f"fates must be distinct, got {v}")
        return v

    @field_validator("day_order")
    @classmethod
    def _days_distinct(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        v = [str(d) for d in v]
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError(f"needs at least 2 distinct day labels, got {v}")
        return v

    @field_validator("guide_files", mode="before")
    @classmethod
    def _one_or_more_files(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("likelihood_weight")
    @classmethod
    def _positive_weight(cls, v: float | str) -> float | str:
        if v != "auto" and not v > 0:
            raise ValueError(f"must be a positive number or 'auto', got {v}")
        return v

    @field_validator("known_regulators")
    @classmethod
    def _signs(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: s for k, s in v.items() if s not in (-1, 1)}
        if bad:
            raise ValueError(f"expected signs must be +1 or -1, got {bad}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if any(w < 0 for w in v) or sum(v) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return v

    @model_validator(mode="after")
    def _cross(self) -> FatebiasConfig:
        if self.ref_fate not in self.fates:
            raise ValueError(f"ref_fate {self.ref_fate!r} is not one of fates {self.fates}")
        if self.contrast_fate not in self.fates:
            raise ValueError(f"contrast_fate {self.contrast_fate!r} is not one of fates {self.fates}")
        if self.contrast_fate == self.ref_fate:
            raise ValueError(f"contrast_fate equals ref_fate ({self.ref_fate!r}); pick a different contrast")
        if self.sim_effect_min > self.sim_effect_max:
            raise ValueError("sim_effect_min must not exceed sim_effect_max")
        if self.discovery_source == "guide_agg" and not self.mash_guide_level:
            raise ValueError("discovery_source guide_agg needs mash_guide_level: true")
        if self.lr_final > self.lr:
            raise ValueError(f"lr_final ({self.lr_final}) must not exceed lr ({self.lr})")
        if self.fixed_sigma_guide is not None:
            self._check_fixed_sigma_guide(self.fixed_sigma_guide)
        if self.fixed_clone_cov is not None:
            self._check_fixed_clone_cov(self.fixed_clone_cov)
        if self.guide_source in ("cellranger_calls", "cellranger_h5") and not self.guide_files:
            raise ValueError(f"guide_source {self.guide_source} needs guide_files (the file(s) to read the guides from)")
        if self.guide_files and self.guide_source not in GUIDE_FILE_SOURCES:
            raise ValueError(
                f"guide_files is set but guide_source is {self.guide_source!r}; set guide_source to one of "
                f"{', '.join(GUIDE_FILE_SOURCES)} or remove guide_files"
            )
        return self

    def _check_fixed_sigma_guide(self, values: list[float]) -> None:
        if len(values) != len(self.fates) - 1 or not all(v > 0 for v in values):
            raise ValueError(
                f"fixed_sigma_guide needs {len(self.fates) - 1} positive values (one per contrast fate), got {values}"
            )

    def _check_fixed_clone_cov(self, values: list[list[float]]) -> None:
        import numpy as np

        k = len(self.fates) - 1
        cov = np.asarray(values, dtype=float)
        if cov.shape != (k, k) or not np.allclose(cov, cov.T) or np.linalg.eigvalsh(cov).min() <= 0:
            raise ValueError(f"fixed_clone_cov needs a symmetric positive definite {k} x {k} matrix (one row per contrast fate), got {values}")

    # ------------------------------------------------------------------ derived
    def input_paths(self) -> list[str]:
        """The experiment's input files: the AnnData, the guide map and the guide files (those that are set)."""
        return [p for p in (self.adata_path, self.guide_map_csv, *self.guide_files) if p]

    @property
    def contrast_fates(self) -> list[str]:
        """Non-reference fates, primary contrast first, then the rest in configured order."""
        rest = [f for f in self.fates if f not in (self.ref_fate, self.contrast_fate)]
        return [self.contrast_fate, *rest]

    def call_tail(self, n_days: int) -> float:
        """The one-sided tail probability of the strictest call (the any-day threshold): where intervals are widened to Student-t."""
        if self.mash_anyday_correction == "bonferroni":
            return self.mash_lfsr_thresh_anyday / n_days
        return self.mash_lfsr_thresh_anyday

    def file_suffix(self, fate: str) -> str:
        """File-name suffix of a contrast's outputs: none for the primary contrast."""
        return "" if fate == self.contrast_fate else f"_{fate}"

    def hash(self, fields: list[str] | None = None) -> str:
        """A stable short hash of the settings (all, or the named fields)."""
        data = self.model_dump(mode="json")
        if fields is not None:
            data = {k: data[k] for k in fields}
        return json_hash(data)

    def to_yaml(self) -> str:
        """The settings as YAML, in schema order."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


DEPRECATED_KEYS = {"time_scale": "s_time"}
#: Settings that no longer exist, and why: a configuration that still has them loads, with a warning.
REMOVED_KEYS = {
    "perm_burden_bins": "the permutation strata are replicate x 4 burden bins",
    "perm_refit_svi": "the permutation control refits at the real run's hyperparameters, the Laplace step alone",
    "ntc_partitions": "the NTC check fits pseudo-genes from two halves of the NTC guides",
}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(config)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][0]), FatebiasConfig.model_fields, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{source}: unknown key {loc!r}{hint}"
    if loc == "(config)" or not err["loc"]:
        return f"{source}: {msg}"
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) or len(repr(value)) < 80 else "..."
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: key {loc!r}: {msg} (got {shown}){more}"


def make_config(values: dict[str, Any] | None = None, source: str = "config", **overrides: Any) -> FatebiasConfig:
    """Validate a mapping of settings into a :class:`FatebiasConfig`.

    Parameters
    ----------
    values
        Settings by the seed's flat key names.
    source
        Where the values came from, for error messages (a file name).
    **overrides
        Settings that take precedence over ``values``.

    Raises
    ------
    ConfigError
        One line naming the first unknown key (with the nearest valid one) or invalid value.
    """
    data = dict(values or {})
    data.update(overrides)
    for old, new in DEPRECATED_KEYS.items():
        if old in data:
            warnings.warn(f"{source}: {old!r} is deprecated, use {new!r}", DeprecationWarning, stacklevel=2)
            value = data.pop(old)
            data.setdefault(new, value)
    for old, why in REMOVED_KEYS.items():
        if old in data:
            warnings.warn(f"{source}: {old!r} is no longer used ({why})", DeprecationWarning, stacklevel=2)
            data.pop(old)
    try:
        return FatebiasConfig(**data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def read_yaml(path: str | Path, what: str = "YAML file") -> Any:
    """Parse a YAML file; a missing file or invalid YAML is a one-line :class:`ConfigError`."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None


def load_config(path: str | Path | None = None, **overrides: Any) -> FatebiasConfig:
    """Read and validate a YAML configuration file.

    Relative ``adata_path``, ``guide_map_csv``, ``guide_files`` and ``out_dir`` are resolved
    against the file's folder, so a config travels with its data.

    Parameters
    ----------
    path
        YAML file; ``None`` gives the defaults.
    **overrides
        Settings that take precedence over the file's.
    """
    if path is None:
        return make_config(None, **overrides)
    path = Path(path)
    raw = read_yaml(path, what="config file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(raw).__name__}")
    for key in ("adata_path", "guide_map_csv", "out_dir"):
        value = raw.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            raw[key] = str((path.parent / value).resolve())
    files = raw.get("guide_files")
    if isinstance(files, str):
        files = [files]
    if isinstance(files, list):
        raw["guide_files"] = [
            str((path.parent / f).resolve()) if isinstance(f, str) and not Path(f).is_absolute() else f for f in files
        ]
    return make_config(raw, source=str(path), **overrides)


def schema_markdown() -> str:
    """The configuration reference as Markdown tables, one per group (for the README)."""
    out: list[str] = []
    fields = FatebiasConfig.model_fields
    for group in GROUPS:
        out.append(f"#### {group}\n\n| key | default | description |\n| --- | --- | --- |")
        for name, info in fields.items():
            if (info.json_schema_extra or {}).get("group") != group:
                continue
            default = json.dumps(info.default)
            out.append(f"| `{name}` | `{default}` | {info.description} |")
        out.append("")
    return "\n".join(out)
