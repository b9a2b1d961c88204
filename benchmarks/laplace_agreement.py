"""The Laplace fit with the dense algebra against the gene blocks, side by side (not a test).

Simulates one screen, fits it with ``laplace_algebra: dense`` and with ``blocks`` in the
same process, one after the other, and prints each fit's time, the hyperparameters
empirical Bayes found, the largest difference of the modes (in units of each gene/day's
SD), and how the gene/day SEs compare: model-based, cluster-robust and t-widened, as
quantiles of the relative error and the share within 1%. It also prints what the
blocks' own check (three genes solved exactly) reported.

Usage::

    python benchmarks/laplace_agreement.py                                # 300 genes x 1,500 guides, 50,000 cells
    python benchmarks/laplace_agreement.py --genes 250 --guides 1250 --cells 25000
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.model.laplace_fit import laplace_fit


def _sd(params: dict, key: str, KD: int) -> np.ndarray:
    return np.sqrt(np.einsum("lii->li", params[key])[:, :KD])


def _errors(a: np.ndarray, b: np.ndarray) -> str:
    r = np.abs(a / b - 1).ravel()
    q = np.quantile(r, [0.5, 0.99, 1.0])
    return f"median {q[0]:.2e}, 99% {q[1]:.2e}, largest {q[2]:.2e}, within 1%: {(r < 0.01).mean():.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--genes", type=int, default=300)
    ap.add_argument("--guides", type=int, default=1500)
    ap.add_argument("--cells", type=int, default=50_000)
    ap.add_argument("--kmax", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cfg = make_config(sim_n_cells=args.cells, sim_n_genes=args.genes, sim_n_guides=args.guides, sim_kmax=args.kmax,
                      sim_n_ntc_guides=max(args.guides // 40, 1), seed=args.seed, progress=False)
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    fits = {}
    for kind in ("dense", "blocks"):
        t0 = time.perf_counter()
        fit = laplace_fit(exp, cfg.model_copy(update={"laplace_algebra": kind}))
        fits[kind] = fit
        p = fit.posterior.params
        print(f"{kind:>6}: {time.perf_counter() - t0:7.1f} s  weight {float(p['weight']):.4g}  sigma_guide "
              f"{np.round(p['sigma_guide'], 5).tolist()}  clone SD {np.round(np.sqrt(np.diag(fit.posterior.clone_cov)), 4).tolist() if fit.posterior.clone_cov is not None else None}",
              flush=True)
    d, b = fits["dense"].posterior, fits["blocks"].posterior
    L, K, D = d.params["theta"].shape
    KD = K * D
    sd = _sd(d.params, "block_cov", KD)
    print(f"modes: largest difference {np.abs(b.params['theta'] - d.params['theta']).reshape(L, KD).__truediv__(sd).max():.2e} SD")
    tail = cfg.mash_lfsr_thresh_anyday / D
    if "block_cov_model" in d.params:
        print("model-based SEs:  " + _errors(_sd(b.params, "block_cov_model", KD), _sd(d.params, "block_cov_model", KD)))
    print("robust SEs:       " + _errors(_sd(b.params, "block_cov", KD), sd))
    fd, fb = d.t_factor(tail), b.t_factor(tail)
    if fd is not None:
        print("t-widened SEs:    " + _errors(_sd(b.params, "block_cov", KD) * fb.reshape(L, KD), sd * fd.reshape(L, KD)))
    print(f"the blocks' own check: {fits['blocks'].info.get('laplace_block_check')}")


if __name__ == "__main__":
    main()
