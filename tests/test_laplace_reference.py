"""The Laplace step gives the numbers it gave before it was made faster.

``tests/data/laplace_reference.npz`` holds the mode, the per-gene covariance blocks and
the degrees of freedom that the previous implementation (explicit sparse products for
``X^T W X``, the clones' leverage from the full centred design times the dense inverse
Hessian, and two dense products for the sandwich) computed on a small experiment with
clones, for the model-based and the cluster-robust covariance. Regenerate only on
purpose: ``FATEBIAS_WRITE_LAPLACE_REFERENCE=1 python -m pytest tests/test_laplace_reference.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fatebias_core.checks.simulate import simulate_experiment
from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.laplace import laplace_posterior

REFERENCE = Path(__file__).parent / "data" / "laplace_reference.npz"
SETTINGS = dict(
    sim_n_cells=900, sim_n_genes=6, sim_n_guides=20, sim_n_ntc_guides=6, sim_ntc_fraction=0.2, sim_kmax=5,
    sim_clone_size_mean=3.0, sim_clone_bias_sd=0.5, sim_active_frac=0.5, progress=False, device="cpu",
)
KEYS = ("a", "b", "c", "theta", "u", "block_cov", "theta_df")


def _posteriors() -> dict[str, np.ndarray]:
    cfg = make_config(SETTINGS)
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    K, D, L, G = 2, exp.cells.n_days, exp.guides.n_genes, exp.guides.n_guides
    start = {"a": np.zeros((K, D)), "b": np.zeros((K, exp.cells.n_reps)), "c": np.zeros(K),
             "theta": np.zeros((L, K, D)), "u": np.zeros((G, K))}
    hyper = {"tau": np.array([0.8, 1.1]), "sigma_time": np.full((K, D - 1), 0.4), "sigma_guide": np.array([0.3, 0.2])}
    out = {}
    for unc in ("model", "cluster_robust"):
        post = laplace_posterior(exp, ["MES", "NEU"], "EC", Priors.from_config(cfg), start, hyper, 12.0, uncertainty=unc)
        out.update({f"{unc}_{k}": np.asarray(post.params[k]) for k in KEYS if k in post.params})
    return out


@pytest.mark.skipif(not REFERENCE.exists() and not os.environ.get("FATEBIAS_WRITE_LAPLACE_REFERENCE"), reason="no reference")
def test_laplace_matches_the_reference_numbers() -> None:
    got = _posteriors()
    if os.environ.get("FATEBIAS_WRITE_LAPLACE_REFERENCE"):
        np.savez_compressed(REFERENCE, **got)
    with np.load(REFERENCE) as ref:
        assert sorted(ref.files) == sorted(got)
        for name in ref.files:
            scale = max(float(np.abs(ref[name]).max()), 1.0)
            np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=1e-8 * scale, err_msg=name)
