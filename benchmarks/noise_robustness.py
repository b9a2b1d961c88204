"""Benchmark: calibration of the defaults when the fate probabilities come from other noise models.

``fatebias calibrate`` scores the default inference (Laplace posterior, mash conservative)
on this package's own simulator, whose fate probabilities are Dirichlet(c * pi) around
the model's probabilities pi (docs/method.md, "Simulation"). This script keeps the simulated truth but
redraws the probabilities from another noise model, to see what the calibration depends on:

* ``dirichlet50``: Dirichlet(50 pi), drawn here (a check of the harness);
* ``sharp_mix``: 30% of cells nearly committed (0.9 on a fate drawn from pi), the rest
  Dirichlet(30 pi): unbiased (E[p] = pi) but strongly heteroskedastic;
* ``logistic_normal``: N(0, 0.8^2) noise on every logit; E[p] is pulled towards uniform;
* ``dirichlet50_plus1``: Dirichlet(50 pi + 1); E[p] is pulled towards uniform.

Prints one JSON line per (model, seed) and a table: the fitted likelihood weight, 90%
interval coverage of gene/day effects (all, true effects |theta| > 0.2, true nulls), and
for mash conservative calls at lfsr < 0.05 the false sign rate, the fraction of nulls
called and the power. Not a test: ``python benchmarks/noise_robustness.py --models
sharp_mix,logistic_normal --seeds 0,1,2`` (about 20 s per run on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fatebias_core.config import load_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.mash import mash_table
from fatebias_core.model.inference import fit
from fatebias_core.model.posterior import QUANTILES, summarise_posterior
from fatebias_core.studies.calibration import _quantile_bounds, call_rows, coverage_rows

BASE = Path(__file__).resolve().parents[1] / "docs" / "calibration" / "config.yaml"
MODELS = ("dirichlet50", "sharp_mix", "logistic_normal", "dirichlet50_plus1")


def redraw(pi: np.ndarray, model: str, rng: np.random.Generator) -> np.ndarray:
    """Fate probabilities drawn around the model probabilities ``pi`` (cells x fates)."""
    if model == "dirichlet50":
        g = rng.standard_gamma(50 * pi)
    elif model == "dirichlet50_plus1":
        g = rng.standard_gamma(50 * pi + 1)
    elif model == "sharp_mix":
        g = rng.standard_gamma(30 * pi)
        commit = rng.random(pi.shape[0]) < 0.3
        # one fate per committed cell, drawn from its pi (inverse CDF, vectorised)
        u = rng.random(int(commit.sum()))[:, None]
        fate = (np.cumsum(pi[commit], axis=1) < u).sum(axis=1).clip(max=pi.shape[1] - 1)
        p = g / g.sum(axis=1, keepdims=True)
        p[commit] = 0.9 * np.eye(pi.shape[1])[fate] + 0.1 * pi[commit]
        return p
    elif model == "logistic_normal":
        z = np.log(pi) + rng.normal(0.0, 0.8, size=pi.shape)
        g = np.exp(z - z.max(axis=1, keepdims=True))
    else:
        raise ValueError(f"unknown noise model {model!r}; known: {', '.join(MODELS)}")
    return g / g.sum(axis=1, keepdims=True)


def run_one(model: str, seed: int, base_config: Path) -> dict:
    """Simulate (truth from the package's simulator), redraw the probabilities, fit and score."""
    base = load_config(base_config)
    # A huge concentration makes the simulator return the model probabilities themselves.
    cfg = base.model_copy(update={"sim_seed": seed, "seed": seed, "sim_concentration": 1e7, "progress": False})
    sim = simulate_experiment(cfg)
    key = cfg.fate_prob_key
    pi = np.asarray(sim.adata.obsm[key], dtype=float)
    pi /= pi.sum(axis=1, keepdims=True)
    probs = np.maximum(redraw(pi, model, np.random.default_rng(1000 + seed)), 1e-6)
    sim.adata.obsm[key] = probs / probs.sum(axis=1, keepdims=True)
    t0 = time.perf_counter()
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    res = fit(exp, cfg)
    summary = summarise_posterior(res, cfg)
    fate = cfg.contrast_fate
    truth = sim.truth_daywise[fate].set_index("gene").loc[summary.gene_names].to_numpy()
    lower, upper = _quantile_bounds(summary.contrasts[fate].theta_quantiles, QUANTILES)
    row = {"model": model, "seed": seed, "weight": round(float(res.info["likelihood_weight"]), 2)}
    for r in coverage_rows(lower, upper, truth, cfg.sim_truth_thresh):
        if r["level"] == 0.9:
            row[f"cov90_{r['group']}"] = round(float(r["value"]), 3)
    table = mash_table(summary.gene_daywise(fate), "conservative", cfg).table
    days = summary.suffixes
    pm = table[[f"postmean_{d}" for d in days]].to_numpy()
    lf = table[[f"lfsr_{d}" for d in days]].to_numpy()
    for r in call_rows(pm, lf, truth, cfg.sim_truth_thresh):
        if r["level"] == 0.05:
            row[f"{r['metric']}@0.05"] = None if np.isnan(r["value"]) else round(float(r["value"]), 3)
    row["runtime_s"] = round(time.perf_counter() - t0, 1)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--config", default=str(BASE), help="base settings (default: the calibration study's)")
    args = ap.parse_args()
    rows = []
    for model in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run_one(model, seed, Path(args.config)))
            print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    print(table.drop(columns=["seed"]).groupby("model", sort=False).mean().round(3).to_string())


if __name__ == "__main__":
    main()
