"""Honest uncertainty when cells are not independent: clones, the cluster-robust posterior, the NTC check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg as sla

from fatebias_core.checks.ntc import ntc_calibration, ntc_pseudogenes
from fatebias_core.checks.simulate import simulate_experiment
from fatebias_core.config import make_config
from fatebias_core.data.load import guide_set_clusters, load_experiment
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.inference import fit, refine_posterior
from fatebias_core.model.laplace import build_problem, leverage_adjusted_residuals, newton_mode
from fatebias_core.model.posterior import summarise_posterior

SMALL = dict(
    sim_n_cells=3000,
    sim_n_genes=12,
    sim_n_guides=48,
    sim_n_ntc_guides=24,
    sim_ntc_fraction=0.25,
    sim_kmax=5,
    num_steps=400,
    batch_size=1024,
    progress=False,
    device="cpu",
    run_diagnostics=False,
)


def _load(**settings):
    cfg = make_config({**SMALL, **settings})
    sim = simulate_experiment(cfg)
    return cfg, sim, load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)


# --------------------------------------------------------------------------- clusters at load
def test_guide_set_clusters_group_identical_sets_within_a_replicate() -> None:
    ids = np.array([[1, 2, 0], [2, 1, 0], [1, 2, 0], [1, 3, 0], [0, 0, 0], [0, 0, 0]], dtype=np.int32)
    ntc = np.array([[0], [0], [1], [0], [0], [0]], dtype=np.int32)
    rep = np.array([0, 0, 0, 1, 0, 0])
    c = guide_set_clusters(ids, ntc, rep)
    assert c[0] == c[1]  # the same set in another order
    assert c[2] != c[0]  # an extra NTC is another set
    assert len(set(c[[3, 4, 5]])) == 3 and c[4] != c[0]  # cells without guides stand alone
    c2 = guide_set_clusters(ids, ntc, np.array([0, 1, 0, 1, 0, 0]))
    assert c2[0] != c2[1]  # the same set in two replicates: two clones


def test_loader_finds_clones_from_labels_or_guide_sets() -> None:
    _, sim, labelled = _load(sim_clone_size_mean=6.0, sim_active_frac=0.0)
    truth = sim.params.clone
    assert labelled.cells.cluster_source == "obs['clone']"
    pairs = set(zip(labelled.cells.clusters().tolist(), truth.tolist(), strict=True))
    assert len(pairs) == len(set(truth.tolist())) == labelled.summary.n_clusters  # one cluster per clone
    _, sim2, inferred = _load(sim_clone_size_mean=6.0, sim_active_frac=0.0, sim_write_clone_labels=False)
    assert "identical guide sets" in inferred.cells.cluster_source
    # At this MOI nearly every clone has a guide set of its own.
    same = inferred.cells.clusters()[:, None] == inferred.cells.clusters()[None, :]
    same_truth = sim2.params.clone[:, None] == sim2.params.clone[None, :]
    assert (same == same_truth).mean() > 0.999
    assert inferred.summary.n_clusters == int(inferred.cells.clusters().max()) + 1


# --------------------------------------------------------------------------- CR2 residuals
def test_leverage_adjusted_residuals_match_a_direct_computation() -> None:
    cfg, _, exp = _load(sim_n_cells=240, sim_n_genes=4, sim_n_guides=10, sim_clone_size_mean=3.0, sim_clone_bias_sd=0.5)
    K = 2
    hyper = {"tau": np.ones(K), "sigma_time": np.full((K, 3), 0.5), "sigma_guide": np.full(K, 0.3)}
    problem = build_problem(exp, ["MES", "NEU"], "EC", Priors.from_config(cfg), hyper, 20.0, "cluster_robust")
    res = newton_mode(problem, np.zeros((K, problem.layout.size)))
    adjusted = leverage_adjusted_residuals(problem, res, max_cells=7)  # several padded chunks
    n, P = exp.n_cells, problem.layout.size
    designs = [problem.centred_design(k).toarray() for k in range(K)]
    full = np.zeros((n * K, K * P))
    for k in range(K):
        full[k::K, k * P : (k + 1) * P] = designs[k]
    weights, resid = problem.cell_weights(res.pi), problem.residuals(res.pi)
    expected = np.zeros_like(resid)
    for c in np.unique(problem.cluster):
        cells = np.flatnonzero(problem.cluster == c)
        rows = (cells[:, None] * K + np.arange(K)).ravel()
        w_half = np.real(sla.sqrtm(sla.block_diag(*weights[cells])))
        lev = w_half @ full[rows] @ res.cov @ full[rows].T @ w_half
        val, vec = np.linalg.eigh(0.5 * (lev + lev.T))
        corr = w_half @ vec @ np.diag(1 / np.sqrt(1 - val)) @ vec.T @ np.linalg.inv(w_half)
        expected[cells] = (corr @ resid[cells].ravel()).reshape(-1, K)
    np.testing.assert_allclose(adjusted, expected, atol=1e-10)
    assert np.abs(adjusted).sum() > np.abs(resid).sum()  # the correction enlarges residuals


# --------------------------------------------------------------------------- coverage under clones
def _null_z(result, config) -> np.ndarray:
    table = summarise_posterior(result, config).gene_daywise(config.contrast_fate)
    est = table[[c for c in table.columns if c.startswith("betahat_")]].to_numpy()
    se = table[[c for c in table.columns if c.startswith("se_")]].to_numpy()
    return (est / se).ravel()


@pytest.fixture(scope="module")
def clone_null():
    """A null experiment with strong clones (no labels: clones found from guide sets)."""
    cfg, sim, exp = _load(
        sim_active_frac=0.0,
        sim_clone_size_mean=12.0,
        sim_clone_bias_sd=1.0,
        sim_write_clone_labels=False,
        posterior_method="meanfield",
    )
    return cfg, exp, fit(exp, cfg)


def test_clones_break_the_dispersion_weight_and_the_robust_posterior_holds(clone_null) -> None:
    cfg, exp, mf = clone_null
    model_cfg = cfg.model_copy(update={"posterior_method": "laplace", "uncertainty": "model"})
    robust_cfg = cfg.model_copy(update={"posterior_method": "laplace", "uncertainty": "cluster_robust"})
    z_model = _null_z(refine_posterior(mf, exp, model_cfg, "laplace"), model_cfg)
    z_robust = _null_z(refine_posterior(mf, exp, robust_cfg, "laplace"), robust_cfg)
    # The dispersion weight alone treats the cells of a clone as independent: too narrow.
    assert np.sqrt(np.mean(z_model**2)) > 1.5
    assert np.mean(np.abs(z_model) < 1.645) < 0.75
    # The cluster-robust posterior covers zero at about the nominal rate.
    assert 0.75 < np.sqrt(np.mean(z_robust**2)) < 1.3
    assert 0.8 <= np.mean(np.abs(z_robust) < 1.645) <= 0.98


def test_ntc_check_sees_clones_and_the_robust_variance_fixes_them(clone_null) -> None:
    cfg, exp, mf = clone_null
    robust_cfg = cfg.model_copy(update={"posterior_method": "laplace"})
    refined = refine_posterior(mf, exp, robust_cfg, "laplace")
    check = ntc_calibration(exp, refined, robust_cfg)
    # The posterior's leverage-adjusted residuals are those the check would recompute from H^-1.
    assert refined.posterior.params["adjusted_residuals"].shape == (exp.n_cells, 2)
    bare = dataclasses.replace(refined, posterior=type(refined.posterior)(
        {k: v for k, v in refined.posterior.params.items() if k != "adjusted_residuals"}))
    recomputed = ntc_calibration(exp, bare, robust_cfg).table
    np.testing.assert_allclose(check.table[["score", "z_model", "z_robust"]], recomputed[["score", "z_model", "z_robust"]], rtol=1e-9, atol=1e-12)
    stats = check.to_dict()
    assert stats["model"]["sd"] > 1.5 and stats["model"]["beyond_1.96"] > 0.15
    assert 0.7 < stats["cluster_robust"]["sd"] < 1.3
    assert check.calibrated and stats["headline"] == stats["cluster_robust"]
    q, z = check.qq()
    assert q.size == z.size == stats["headline"]["n"] and np.all(np.diff(z) >= 0)


def test_ntc_check_on_independent_cells() -> None:
    cfg, _, exp = _load(sim_active_frac=0.25)
    check = ntc_calibration(exp, fit(exp, cfg), cfg)
    stats = check.to_dict()
    for kind in ("model", "cluster_robust"):
        assert 0.75 < stats[kind]["sd"] < 1.3, (kind, stats[kind])
    assert stats["pseudo_gene_size"] == 4 and stats["n_ntc_guides"] == 24
    assert set(check.table["fate"]) == {"MES", "NEU"}


def test_ntc_pseudogenes_partition() -> None:
    parts = ntc_pseudogenes(14, 4, partitions=3, seed=0)
    assert len(parts) == 3 and all(p.shape == (3, 4) for p in parts)
    assert all(len(set(p.ravel())) == 12 for p in parts)
    assert not np.array_equal(parts[0], parts[1])
    assert ntc_pseudogenes(3, 5, 1, 0)[0].shape == (1, 3)
    assert ntc_pseudogenes(0, 5, 1, 0) == []
