"""Calibration study: do the credible intervals cover and do the calls keep their false sign rate?

For every scenario (a set of simulation settings) and seed, :func:`calibration_run`
simulates an experiment with known truth, fits it once by SVI with the seed pipeline's
settings (mean-field, likelihood weight 1) and once with the dispersion weight, derives
the Laplace and bootstrap posteriors from the latter, runs mash on each method's gene
table (with and without the seed's SE inflation) and measures, for the primary contrast:

* coverage of the 50/80/90/95% credible intervals of theta (model) and of the mash
  posteriors, separately over all gene/days, true effects (|theta| > truth threshold)
  and true nulls (theta = 0);
* the realised false sign rate among mash calls at lfsr < 0.01/0.05/0.1 (a call is a
  false sign when the true effect is zero or of the other sign), the fraction of null
  gene/days called, and power (true effects called with the right sign);
* runtime.

:func:`run_calibration` runs the grid, writes the tidy table ``calibration_results.csv``,
the per-scenario summary ``calibration_summary.csv`` and the figures
``calibration_coverage.png`` and ``calibration_fsr.png``. Each (scenario, seed) run is
independent, so the platform runs the grid as a backfill of partitions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import beta as beta_dist
from scipy.stats import norm

from fatebias_core.checks.ntc import ntc_calibration
from fatebias_core.config import FatebiasConfig
from fatebias_core.data.clones import adjusted_rand_index
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.discovery.calls import CallRule, call_days
from fatebias_core.errors import ConfigError
from fatebias_core.io import layout as names
from fatebias_core.io import write_csv, write_text
from fatebias_core.mash import mash_table
from fatebias_core.model.inference import fit
from fatebias_core.model.posterior import QUANTILES, summarise_posterior
from fatebias_core.report.plots import plot_calibration_coverage, plot_calibration_fsr

log = logging.getLogger("fatebias.calibration")

LEVELS = (0.5, 0.8, 0.9, 0.95)
LFSR_THRESHOLDS = (0.01, 0.05, 0.1)

_CLONES = {"sim_clone_size_mean": 8.0, "sim_clone_bias_sd": 0.6, "sim_write_clone_labels": False}
_STRONG_CLONES = {"sim_clone_size_mean": 15.0, "sim_clone_bias_sd": 1.0, "sim_write_clone_labels": False}
_SMOOTHING = {"sim_smoothing_k": 10, "sim_smoothing_weight": 0.7}
_LOGISTIC_NORMAL = {"sim_noise": "logistic_normal", "sim_logit_noise_sd": 0.5}
_KNOCKDOWN = {"sim_knockdown_sd": 0.3}
_BATCH = {"sim_batch_sd": 0.2}
_ALL = {**_CLONES, **_SMOOTHING, **_LOGISTIC_NORMAL, **_KNOCKDOWN, **_BATCH}
_NULL = {"sim_active_frac": 0.0}
_DROPOUT = {"sim_guide_detection": 0.7}
_DROPOUT_85 = {"sim_guide_detection": 0.85}
_HIGH_MOI = {"sim_kmax": 29, "Kmax": 40}  # about 15 guides per cell
_HEAVY_TAILED = {"sim_clone_size_cv": 1.2}

SCENARIOS: dict[str, dict] = {
    "baseline": {},
    "noisy": {"sim_concentration": 10.0},
    "clean": {"sim_concentration": 200.0},
    "low_moi": {"sim_kmax": 4},
    "high_moi": {"sim_kmax": 20},
    "no_guide_sd": {"sim_s_guide": 0.0},
    "guide_sd_0.5": {"sim_s_guide": 0.5},
    "small_effects": {"sim_effect_min": 0.05, "sim_effect_max": 0.3},
    "dense": {"sim_active_frac": 0.3},
    "few_cells": {"sim_n_cells": 5000},
    "no_effects": dict(_NULL),
    # Structure the model does not assume, one at a time and all together.
    "clones": dict(_CLONES),
    "smoothing": dict(_SMOOTHING),
    "logistic_normal": dict(_LOGISTIC_NORMAL),
    "knockdown": dict(_KNOCKDOWN),
    "batch": dict(_BATCH),
    "realistic": dict(_ALL),
    "realistic_small_effects": {**_ALL, "sim_effect_min": 0.05, "sim_effect_max": 0.3},
    "clones_null": {**_CLONES, **_NULL},
    "realistic_null": {**_ALL, **_NULL},
    "strong_clones_null": {**_ALL, **_STRONG_CLONES, **_NULL},
    "strong_clones": {**_ALL, **_STRONG_CLONES},
    # Incomplete guide capture, ~15 guides per cell and heavy-tailed clone sizes (study v3).
    "dropout": {**_ALL, **_DROPOUT},
    "dropout_null": {**_ALL, **_DROPOUT, **_NULL},
    "dropout_0.85": {**_ALL, **_DROPOUT_85},
    "dropout_0.85_null": {**_ALL, **_DROPOUT_85, **_NULL},
    "high_moi_15": {**_ALL, **_HIGH_MOI},
    "high_moi_15_dropout": {**_ALL, **_HIGH_MOI, **_DROPOUT},
    "high_moi_15_dropout_null": {**_ALL, **_HIGH_MOI, **_DROPOUT, **_NULL},
    "heavy_tailed": {**_ALL, **_HEAVY_TAILED},
    "heavy_tailed_null": {**_ALL, **_HEAVY_TAILED, **_NULL},
    "heavy_tailed_dropout": {**_ALL, **_HEAVY_TAILED, **_DROPOUT},
    "strong_clones_dropout": {**_ALL, **_STRONG_CLONES, **_DROPOUT},
    "strong_clones_dropout_null": {**_ALL, **_STRONG_CLONES, **_DROPOUT, **_NULL},
}
"""Scenario name -> simulation settings that differ from the defaults.

The realism scenarios draw clones (labels not written, so clones are inferred from the
guide sets as they would be in a screen without lineage barcodes), CellRank-like kNN
smoothing, logistic-normal noise, uneven knockdown and day x replicate batch offsets;
``dropout*`` detect each guide in 70% (85%) of the cells that carry it,
``high_moi_15*`` give cells about 15 guides, ``heavy_tailed*`` draw clone sizes with a
coefficient of variation of 1.2; ``*_null`` scenarios have no true effect at all.
"""

METHODS = ("laplace", "laplace_model", "laplace_no_clone_effect", "naive", "identical_sets", "bootstrap", "meanfield")
"""Inference methods compared: the default (Laplace with the clone random effect and the
cluster-robust covariance); the same fit's model-based covariance (``uncertainty:
model``); the cluster-robust Laplace without a clone effect (``clone_effects: false``,
the previous default's model); two that are known to be too narrow under clones, for
the NTC check to catch: ``naive`` (no clone effect, model-based covariance) and
``identical_sets`` (the default, with clones found only as identical guide sets, as the
previous version did); the one-step bootstrap over clones; the SVI mean-field
posterior."""

MASH_VARIANTS = {
    "se_inflated": {"mash_se_inflate": 1.5, "mash_se_floor": 0.02},
    "se_1.2": {"mash_se_inflate": 1.2, "mash_se_floor": 0.0},
    "plain_se": {"mash_se_inflate": 1.0, "mash_se_floor": 0.0},
}
"""mash settings compared: the previous default SE inflation and floor (1.5, 0.02), the default now (1.2, 0), or the SEs as exported."""


def _interval_coverage(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return (truth >= lo) & (truth <= hi)


def _groups(truth: np.ndarray, thresh: float) -> dict[str, np.ndarray]:
    """Truth groups: every gene/day, every non-zero effect, the large ones (> thresh), the nulls."""
    return {
        "all": np.ones(truth.shape, dtype=bool),
        "effects": truth != 0,
        "large": np.abs(truth) > thresh,
        "nulls": truth == 0,
    }


def coverage_rows(lower: dict[float, np.ndarray], upper: dict[float, np.ndarray], truth: np.ndarray, thresh: float) -> list[dict]:
    """Coverage of intervals per level and truth group (rows of metric, group, level, value, n)."""
    rows = []
    for group, mask in _groups(truth, thresh).items():
        for level in lower:
            n = int(mask.sum())
            cov = float(_interval_coverage(lower[level], upper[level], truth)[mask].mean()) if n else np.nan
            rows.append({"metric": "coverage", "group": group, "level": level, "value": cov, "n": n})
    return rows


def call_rows(postmean: np.ndarray, lfsr: np.ndarray, truth: np.ndarray, thresh: float) -> list[dict]:
    """False sign rate, null calls and power of lfsr calls at each threshold."""
    rows = []
    effects, nulls = np.abs(truth) > thresh, truth == 0
    for t in LFSR_THRESHOLDS:
        called = lfsr < t
        false_sign = called & (np.sign(postmean) != np.sign(truth))
        n_called = int(called.sum())
        rows += [
            {"metric": "fsr", "group": "calls", "level": t, "value": false_sign.sum() / n_called if n_called else np.nan, "n": n_called},
            {"metric": "null_called", "group": "nulls", "level": t, "value": called[nulls].mean() if nulls.any() else np.nan, "n": int(nulls.sum())},
            {
                "metric": "power", "group": "effects", "level": t,
                "value": (called & ~false_sign)[effects].mean() if effects.any() else np.nan, "n": int(effects.sum()),
            },
        ]
    return rows


def hit_rows(
    postmean: np.ndarray, postsd: np.ndarray, lfsr: np.ndarray, truth: np.ndarray, config: FatebiasConfig,
    plarge: np.ndarray | None = None,
) -> list[dict]:
    """The chain's own calls (lfsr and effect-size gate, any-day Bonferroni) scored against the truth.

    ``plarge`` is a mash table's ``P(|effect| >= eps)`` under its posterior mixture, as
    the ranking step uses it; the normal approximation when None.

    Daywise: precision and recall of called gene/days against the truly active ones
    (|truth| > ``sim_truth_thresh``; a call with the wrong sign is a false one).
    Any day: hits, and false hits (genes with no true effect on any day).
    """
    calls = call_days(postmean, postsd, lfsr, CallRule.from_config(config, postmean.shape[1]), plarge=plarge)
    active = np.abs(truth) > config.sim_truth_thresh
    right = calls.active & active & (np.sign(postmean) == np.sign(truth))
    n_called, n_true = int(calls.active.sum()), int(active.sum())
    hits = calls.hit_anyday
    null_gene = (truth == 0).all(axis=1)
    return [
        {"metric": "daywise_precision", "group": "calls", "level": 0.05, "value": right.sum() / n_called if n_called else np.nan, "n": n_called},
        {"metric": "daywise_recall", "group": "effects", "level": 0.05, "value": right.sum() / n_true if n_true else np.nan, "n": n_true},
        {"metric": "hits", "group": "all", "level": 0.05, "value": float(hits.sum()), "n": 1},
        {"metric": "false_hits", "group": "nulls", "level": 0.05, "value": float((hits & null_gene).sum()), "n": 1},
    ]


def _quantile_bounds(quantiles: np.ndarray, levels_q: tuple[float, ...]) -> tuple[dict, dict]:
    q = dict(zip(levels_q, quantiles, strict=True))
    lower = {lv: q[round((1 - lv) / 2, 4)] for lv in LEVELS}
    upper = {lv: q[round(1 - (1 - lv) / 2, 4)] for lv in LEVELS}
    return lower, upper


def _normal_bounds(mean: np.ndarray, sd: np.ndarray) -> tuple[dict, dict]:
    z = {lv: norm.ppf(0.5 + lv / 2) for lv in LEVELS}
    return {lv: mean - z[lv] * sd for lv in LEVELS}, {lv: mean + z[lv] * sd for lv in LEVELS}


def scenario_seed(scenario: str, seed: int) -> int:
    """The simulation seed of a (scenario, seed) cell: the truth is drawn anew for every scenario."""
    digest = int(hashlib.sha256(scenario.encode()).hexdigest()[:8], 16)
    return (digest + 7919 * seed) % (2**31)


def scenario_config(base: FatebiasConfig, scenario: str, seed: int) -> FatebiasConfig:
    """The base settings with the scenario's simulation settings and seeds applied."""
    if scenario not in SCENARIOS:
        raise ConfigError(f"unknown calibration scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    update = {**SCENARIOS[scenario], "sim_seed": scenario_seed(scenario, seed), "seed": seed, "progress": False}
    return FatebiasConfig.model_validate({**base.model_dump(), **update})


def calibration_run(scenario: str, seed: int, base: FatebiasConfig, methods: Iterable[str] = METHODS[:3]) -> pd.DataFrame:
    """One (scenario, seed) cell of the study: every method's coverage, FSR, power and runtime.

    Returns
    -------
    pandas.DataFrame
        Tidy rows: scenario, seed, method, source (``model``, ``clones`` or
        ``mash:<variant>:<mode>``), metric, group, level, value, n, runtime_s.
    """
    methods = list(methods)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ConfigError(f"unknown calibration method(s) {unknown}; known: {', '.join(METHODS)}")
    cfg = scenario_config(base, scenario, seed)
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    fate = cfg.contrast_fate
    fits = _method_fits(exp, cfg, methods, sim)
    rows: list[dict] = _clone_rows(sim, exp)
    clone_factor = sim.metadata.get("estimand_parts", {}).get(fate, {}).get("clone", 1.0)
    for method in methods:
        res, c, runtime, *own = fits[method]
        summary = summarise_posterior(res, c)
        # Scored against the estimand the method targets: effects on a cell's mean fate
        # probabilities given its clone (with a clone effect), or averaged over clones too.
        truth = sim.truth_estimand[fate].set_index("gene").loc[summary.gene_names].to_numpy()
        if not res.info.get("clone_effects", False):
            truth = truth * clone_factor
        cs = summary.contrasts[fate]
        lower, upper = _quantile_bounds(cs.theta_quantiles, QUANTILES)
        for r in coverage_rows(lower, upper, truth, cfg.sim_truth_thresh):
            rows.append({**r, "method": method, "source": "model", "runtime_s": runtime})
        rows += _ntc_rows(own[0] if own else exp, res, c, method, runtime)
        table = summary.gene_daywise(fate)
        for variant, settings in MASH_VARIANTS.items():
            mcfg = c.model_copy(update=settings)
            for mode in ("conservative", "enriched"):
                t2 = time.perf_counter()
                out = mash_table(table, mode, mcfg).table
                days = summary.suffixes
                pm = out[[f"postmean_{d}" for d in days]].to_numpy()
                ps = out[[f"postsd_{d}" for d in days]].to_numpy()
                lf = out[[f"lfsr_{d}" for d in days]].to_numpy()
                plarge = out[[f"plarge_{d}" for d in days]].to_numpy() if "plarge_eps" in out else None
                lo, hi = _normal_bounds(pm, ps)
                src = f"mash:{variant}:{mode}"
                extra = {"method": method, "source": src, "runtime_s": runtime + time.perf_counter() - t2}
                rows += [{**r, **extra} for r in coverage_rows(lo, hi, truth, cfg.sim_truth_thresh)]
                rows += [{**r, **extra} for r in call_rows(pm, lf, truth, cfg.sim_truth_thresh)]
                rows += [{**r, **extra} for r in hit_rows(pm, ps, lf, truth, mcfg, plarge)]
    df = pd.DataFrame(rows)
    df.insert(0, "seed", seed)
    df.insert(0, "scenario", scenario)
    return df[["scenario", "seed", "method", "source", "metric", "group", "level", "value", "n", "runtime_s"]]


def _ntc_rows(exp, res, config: FatebiasConfig, method: str, runtime: float) -> list[dict]:
    """The NTC check of a Laplace fit: whether it fired, and its pseudo-genes' 90% coverage."""
    if res.posterior.family != "laplace":
        return []
    check = ntc_calibration(exp, res, config)
    if check is None:
        return []
    base = {"method": method, "source": "ntc", "group": "nulls", "level": 0.9, "runtime_s": runtime}
    return [
        {**base, "metric": "ntc_fired", "value": float(not check.calibrated), "n": 1},
        {**base, "metric": "ntc_coverage", "value": check.coverage_90, "n": len(check.table)},
    ]


def _method_fits(exp, cfg: FatebiasConfig, methods: list[str], sim) -> dict[str, tuple]:
    """Each method's fit, its settings and runtime (the model-based Laplace shares the default's fit)."""
    fits: dict[str, tuple] = {}
    if {"laplace", "laplace_model"} & set(methods):
        t0 = time.perf_counter()
        res = fit(exp, cfg)
        t = time.perf_counter() - t0
        fits["laplace"] = (res, cfg, t)
        model = dataclasses.replace(res, posterior=res.posterior.model_based(), info=res.info | {"uncertainty": "model"})
        fits["laplace_model"] = (model, cfg.model_copy(update={"uncertainty": "model"}), t)
    if "laplace_no_clone_effect" in methods:
        t0 = time.perf_counter()
        c = cfg.model_copy(update={"clone_effects": False})
        fits["laplace_no_clone_effect"] = (fit(exp, c), c, time.perf_counter() - t0)
    if "naive" in methods:
        t0 = time.perf_counter()
        c = cfg.model_copy(update={"clone_effects": False, "uncertainty": "model"})
        fits["naive"] = (fit(exp, c), c, time.perf_counter() - t0)
    if "identical_sets" in methods:
        t0 = time.perf_counter()
        c = cfg.model_copy(update={"clone_chance_links": 1e-12})  # only identical sets link
        exp_id = load_experiment(c, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
        fits["identical_sets"] = (fit(exp_id, c), c, time.perf_counter() - t0, exp_id)
    if "bootstrap" in methods:
        t0 = time.perf_counter()
        c = cfg.model_copy(update={"posterior_method": "bootstrap"})
        fits["bootstrap"] = (fit(exp, c), c, time.perf_counter() - t0)
    if "meanfield" in methods:
        t0 = time.perf_counter()
        c = cfg.model_copy(update={"posterior_method": "meanfield"})
        fits["meanfield"] = (fit(exp, c), c, time.perf_counter() - t0)
    return fits


def _clone_rows(sim, exp) -> list[dict]:
    """How well the clones found recover the true clones (ARI; pair precision and recall) and the cells left out."""
    true = sim.params.clone
    if true is None:
        return []
    kept = pd.Index(sim.adata.obs_names).get_indexer(exp.cells.cell_names)
    true = true[kept]
    labels = exp.cells.clusters()
    precision, recall = pair_agreement(true, labels)
    base = {"method": "clustering", "source": "clones", "group": "all", "level": 0.0, "runtime_s": 0.0}
    return [
        {**base, "metric": "ari", "value": adjusted_rand_index(true, labels), "n": 1},
        {**base, "metric": "pair_precision", "value": precision, "n": 1},
        {**base, "metric": "pair_recall", "value": recall, "n": 1},
        {**base, "metric": "clusters_per_true_clone", "value": (labels.max() + 1) / (np.unique(true).size), "n": 1},
        {**base, "metric": "cells_kept", "value": exp.n_cells / sim.adata.n_obs, "n": 1},
    ]


def pair_agreement(true: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """Of the cell pairs in one found cluster, the share in one true clone (precision); of the true pairs, the share found (recall)."""
    import scipy.sparse as sp

    table = sp.coo_matrix((np.ones(true.size), (true, found))).tocsr()
    pairs = lambda x: float((x * (x - 1) / 2.0).sum())  # noqa: E731
    both = pairs(table.data)
    in_true = pairs(np.asarray(table.sum(axis=1)).ravel())
    in_found = pairs(np.asarray(table.sum(axis=0)).ravel())
    return (both / in_found if in_found else 1.0), (both / in_true if in_true else 1.0)


@dataclass
class CalibrationResult:
    """The study's tidy results, its summary and the files written."""

    results: pd.DataFrame
    summary: pd.DataFrame
    paths: dict[str, Path]

    def describe(self) -> str:
        s = self.summary
        lines = [f"calibration: {self.results['scenario'].nunique()} scenarios x {self.results['seed'].nunique()} seeds"]
        key = s[(s["source"] == "model") & (s["metric"] == "coverage") & (s["level"] == 0.9)]
        if len(key):
            piv = key.pivot_table(index="method", columns="group", values="value", aggfunc="mean")
            lines.append("model 90% interval coverage (mean over scenarios):\n" + piv.round(3).to_string())
        fsr = s[(s["metric"] == "fsr") & (s["level"] == 0.05) & s["source"].str.endswith(":conservative")]
        if len(fsr):
            piv = fsr.pivot_table(index="method", columns="source", values="value", aggfunc="max")
            lines.append("worst scenario's FSR at lfsr < 0.05 (pooled over seeds; conservative mash):\n" + piv.round(3).to_string())
        lines.append("files: " + ", ".join(str(p) for p in self.paths.values()))
        return "\n".join(lines)


def summarise_calibration(results: pd.DataFrame) -> pd.DataFrame:
    """Every metric pooled over seeds, per scenario, method and source.

    ``value`` is the pooled rate (each seed weighted by its count ``n``: gene/days for
    coverage, calls for the false sign rate), so a seed with one call does not weigh as
    much as one with fifty; ``sd`` is the spread of the per-seed values.
    """
    keys = ["scenario", "method", "source", "metric", "group", "level"]
    df = results.assign(weighted=results["value"] * results["n"]).dropna(subset=["value"])
    agg = df.groupby(keys, sort=False).agg(
        weighted=("weighted", "sum"), n=("n", "sum"), sd=("value", "std"), seeds=("seed", "nunique"),
        runtime_s=("runtime_s", "mean"),
    )
    agg["value"] = agg["weighted"] / agg["n"].where(agg["n"] > 0)
    agg = agg.reset_index()
    # One-sided 95% Clopper-Pearson upper bound of the pooled false sign rate.
    fsr = agg["metric"] == "fsr"
    false = np.rint(agg["weighted"]).clip(lower=0)
    upper = beta_dist.ppf(0.95, false + 1, (agg["n"] - false).clip(lower=1))
    agg["upper95"] = np.where(fsr & (agg["n"] > 0), np.where(false >= agg["n"], 1.0, upper), np.nan)
    return agg.drop(columns="weighted")[[*keys, "value", "upper95", "sd", "n", "seeds", "runtime_s"]]


def run_calibration(
    out_dir: str | Path,
    base: FatebiasConfig,
    scenarios: Iterable[str] | None = None,
    seeds: Iterable[int] = (0, 1, 2),
    methods: Iterable[str] = METHODS[:3],
) -> CalibrationResult:
    """Run the calibration grid and write its table, summary and figures into ``out_dir``."""
    scenarios = list(scenarios or SCENARIOS)
    for s in scenarios:
        if s not in SCENARIOS:
            raise ConfigError(f"unknown calibration scenario {s!r}; known: {', '.join(SCENARIOS)}")
    out = Path(out_dir)
    frames = []
    for scenario in scenarios:
        for seed in seeds:
            t0 = time.perf_counter()
            frames.append(calibration_run(scenario, int(seed), base, methods))
            log.info("calibration %s seed %d: %.0f s", scenario, seed, time.perf_counter() - t0)
            # Kept as it grows, so an interrupted study keeps the cells it finished.
            write_csv(pd.concat(frames, ignore_index=True), out / names.CALIBRATION_PARTIAL)
    results = pd.concat(frames, ignore_index=True)
    result = write_calibration(results, out)
    (out / names.CALIBRATION_PARTIAL).unlink(missing_ok=True)
    return result


def calibration_markdown(summary: pd.DataFrame) -> str:
    """The study's key tables as Markdown: model interval coverage, mash FSR, null calls and power."""

    def table(df: pd.DataFrame) -> str:
        cols = list(df.columns)
        lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + " --- |" * len(cols)]
        for row in df.itertuples(index=False):
            lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
        return "\n".join(lines)

    out = []
    cov = summary[(summary["metric"] == "coverage") & (summary["source"] == "model")]
    for level in LEVELS:
        piv = cov[cov["level"] == level].pivot_table(index="scenario", columns=["method", "group"], values="value", sort=False)
        piv.columns = [f"{m} {g}" for m, g in piv.columns]
        out.append(f"#### Coverage of the model's {level:.0%} credible intervals of theta\n\n" + table(piv.reset_index()))
    for source in sorted(s for s in summary["source"].unique() if s.startswith("mash:")):
        sub = summary[(summary["source"] == source) & (summary["level"] == 0.05)
                      & summary["metric"].isin(["fsr", "null_called", "power", "daywise_precision", "daywise_recall", "false_hits"])]
        piv = sub.pivot_table(index="scenario", columns=["method", "metric"], values="value", sort=False)
        piv.columns = [f"{m} {g}" for m, g in piv.columns]
        out.append(
            f"#### {source}: false sign rate, null gene/days called and power at lfsr < 0.05; the chain's calls "
            "(daywise precision and recall, false any-day hits per experiment)\n\n" + table(piv.reset_index())
        )
        sub = summary[(summary["source"] == source) & (summary["metric"] == "coverage") & (summary["level"] == 0.9)]
        piv = sub.pivot_table(index="scenario", columns=["method", "group"], values="value", sort=False)
        piv.columns = [f"{m} {g}" for m, g in piv.columns]
        out.append(f"#### {source}: coverage of 90% posterior intervals\n\n" + table(piv.reset_index()))
    rt = summary.groupby("method", sort=False)["runtime_s"].mean().round(1).reset_index()
    out.append("#### Mean runtime per simulated experiment (s; fit + posterior + mash)\n\n" + table(rt))
    return "\n\n".join(out) + "\n"


def write_calibration(results: pd.DataFrame, out_dir: str | Path) -> CalibrationResult:
    """Write the tidy results, the summary and the figures (also used by the platform)."""
    out = Path(out_dir)
    summary = summarise_calibration(results)
    paths = {
        "results": write_csv(results, out / names.CALIBRATION_RESULTS),
        "summary": write_csv(summary, out / names.CALIBRATION_SUMMARY),
        "coverage": plot_calibration_coverage(summary, out / names.CALIBRATION_COVERAGE_FIGURE),
        "fsr": plot_calibration_fsr(summary, out / names.CALIBRATION_FSR_FIGURE),
        "tables": write_text(calibration_markdown(summary), out / names.CALIBRATION_TABLES),
    }
    return CalibrationResult(results, summary, paths)
