"""The Laplace step: the GLMM with clone effects, its Newton mode, the algebra, empirical Bayes, CR2."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fatebias_core.config import make_config
from fatebias_core.data.load import load_experiment
from fatebias_core.data.simulate import simulate_experiment
from fatebias_core.model.algebra import DenseAlgebra
from fatebias_core.model.design import (
    Layout,
    centre_within_gene,
    gene_blocks,
    guide_slots,
    pearson_dispersion,
    random_walk_precision,
    thread_map,
)
from fatebias_core.model.empirical_bayes import clone_cov_moments, sigma_guide_update
from fatebias_core.model.fate_model import Priors
from fatebias_core.model.glmm import newton_mode, optimise_clone_effects
from fatebias_core.model.laplace import (
    LaplaceSettings,
    build_problem,
    laplace_posterior,
    nuisance_start,
)
from fatebias_core.model.robust import bm_degrees_of_freedom, clone_pass, t_scale

SMALL = dict(
    sim_n_cells=1500, sim_n_genes=8, sim_n_guides=24, sim_n_ntc_guides=6, sim_kmax=4, sim_active_frac=0.25,
    sim_clone_size_mean=5.0, sim_clone_bias_sd=0.5, progress=False,
)


@pytest.fixture(scope="module")
def clone_problem():
    cfg = make_config(SMALL)
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    K, D = 2, exp.cells.n_days
    hyper = {"tau": np.ones(K), "sigma_time": np.full((K, D - 1), 0.5), "sigma_guide": np.array([0.2, 0.3])}
    problem = build_problem(exp, cfg.contrast_fates, cfg.ref_fate, Priors.from_config(cfg), hyper, 20.0, np.array([[0.3, 0.05], [0.05, 0.2]]))
    return problem, exp, cfg


def _profile(problem, psi, beta0):
    """The clone effects at their optimum given psi, and the objective there (psi's profile)."""
    beta = optimise_clone_effects(problem, psi, beta0, max_iter=60, tol=1e-14)
    return beta, problem.objective(psi, beta)


def test_random_walk_precision_inverts_the_walk_covariance():
    s = np.array([1.0, 0.5, 0.3, 0.2])
    U = np.tril(np.ones((4, 4)))
    cov = U @ np.diag(s**2) @ U.T
    np.testing.assert_allclose(random_walk_precision(s[0], s[1:]), np.linalg.inv(cov), atol=1e-10)


def test_eliminated_gradient_and_hessian_are_those_of_the_profile(clone_problem):
    """With the clone effects at their optimum given psi, the Schur gradient and Hessian are the profile's derivatives."""
    problem, _, _ = clone_problem
    rng = np.random.default_rng(0)
    K, P = problem.n_contrasts, problem.layout.size
    psi = 0.05 * rng.standard_normal((K, P))
    beta, _ = _profile(problem, psi, np.zeros((problem.n_clusters, K)))
    g, g_beta, pi = problem.gradients(psi, beta)
    assert np.abs(g_beta).max() < 1e-6  # the clone effects are at their optimum
    curv = problem.curvature(pi)
    hess = problem.schur_hessian(curv)
    g_elim = problem.eliminated_gradient(g, g_beta, curv)
    h = 1e-5
    for flat in rng.choice(K * P, 5, replace=False):
        e = np.zeros(K * P)
        e[flat] = h
        up = psi + e.reshape(K, P)
        dn = psi - e.reshape(K, P)
        b_up, f_up = _profile(problem, up, beta)
        b_dn, f_dn = _profile(problem, dn, beta)
        assert (f_up - f_dn) / (2 * h) == pytest.approx(g_elim.ravel()[flat], rel=1e-4, abs=1e-4)
        gu = problem.eliminated_gradient(*problem.gradients(up, b_up)[:2], curv)
        gd = problem.eliminated_gradient(*problem.gradients(dn, b_dn)[:2], curv)
        np.testing.assert_allclose((gu - gd).ravel() / (2 * h), hess[:, flat], rtol=2e-3, atol=2e-3)


def test_newton_reaches_the_joint_mode(clone_problem):
    problem, _, _ = clone_problem
    res = newton_mode(problem, nuisance_start(problem))
    assert res.converged
    g, g_beta, _ = problem.gradients(res.psi, res.beta)
    assert np.abs(g).max() < 1e-4 and np.abs(g_beta).max() < 1e-5


@pytest.mark.parametrize("clones", [True, False])
def test_matrix_free_product_is_the_eliminated_hessian(clone_problem, clones):
    """``schur_matvec`` (sparse, never forming S) multiplies by the dense eliminated Hessian, prior included."""
    problem, _, _ = clone_problem
    problem = problem if clones else problem.with_hyper(clone_cov=None)
    rng = np.random.default_rng(4)
    K, P = problem.n_contrasts, problem.layout.size
    psi = 0.1 * rng.standard_normal((K, P))
    beta = 0.2 * rng.standard_normal((problem.n_clusters, K)) if clones else None
    curv = problem.curvature(problem.probabilities(psi, beta))
    dense = problem.schur_hessian(curv)
    for _ in range(3):
        v = rng.standard_normal((K, P))
        np.testing.assert_allclose(problem.schur_matvec(curv, v).ravel(), dense @ v.ravel(), rtol=1e-10, atol=1e-9 * np.abs(dense).max())


def test_newton_preconditioned_by_another_hessian_reaches_the_same_mode(clone_problem):
    """Conjugate-gradient Newton steps preconditioned by a Hessian made elsewhere (other hyperparameters, another
    point), by the first step's, or by a useless one (the Hessian is then factored afresh) reach one mode, to 1e-8."""
    problem, _, _ = clone_problem
    psi0 = nuisance_start(problem)
    elsewhere = problem.with_hyper(sigma_guide=problem.sigma_guide * 1.5, clone_cov=problem.clone_cov * 2.0)
    far = newton_mode(elsewhere, psi0)
    algebra = DenseAlgebra(elsewhere, far.hessian.copy())
    ref = newton_mode(problem, psi0)
    for precondition in (algebra.solve, None):
        got = newton_mode(problem, psi0, precondition=precondition)
        assert got.converged
        np.testing.assert_allclose(got.psi, ref.psi, atol=1e-8)
        np.testing.assert_allclose(got.beta, ref.beta, atol=1e-8)
        np.testing.assert_allclose(got.hessian, ref.hessian, rtol=1e-8, atol=1e-10 * np.abs(ref.hessian).max())
    # a useless preconditioner: the conjugate gradients stall and the Hessian is factored afresh
    got = newton_mode(problem, psi0, precondition=lambda r: 1e-6 * r)
    np.testing.assert_allclose(got.psi, ref.psi, atol=1e-8)
    g, g_beta, _ = problem.gradients(ref.psi, ref.beta)
    assert np.abs(g).max() < 1e-4 and np.abs(g_beta).max() < 1e-5


def test_a_second_clone_pass_reuses_the_leverage_blocks(clone_problem):
    """A robust pass given the blocks of an earlier pass at the same mode is the robust pass made from scratch."""
    problem, _, _ = clone_problem
    res = newton_mode(problem, nuisance_start(problem))
    algebra = DenseAlgebra(problem, res.hessian.copy())
    first = clone_pass(problem, res, algebra, robust=False, keep_blocks=True, max_cells=64)
    assert first.blocks and all(b.ndim == 3 for b in first.blocks)
    reused = clone_pass(problem, res, algebra, robust=True, blocks=first.blocks, max_cells=64)
    fresh = clone_pass(problem, res, algebra, robust=True, max_cells=64)
    assert reused.blocks is None
    for name in ("beta_cov", "cell_leverage", "adjusted"):
        np.testing.assert_array_equal(getattr(reused, name), getattr(fresh, name))
    np.testing.assert_array_equal(first.cell_leverage, fresh.cell_leverage)
    with pytest.raises(ValueError, match="not those of this problem"):
        clone_pass(problem, res, algebra, robust=True, blocks=first.blocks[:-1], max_cells=64)


def test_no_clone_effect_is_the_limit_of_a_tiny_clone_covariance(clone_problem):
    problem, _, _ = clone_problem
    tiny = problem.with_hyper(clone_cov=np.eye(2) * 1e-10)
    none = problem.with_hyper(clone_cov=None)
    psi0 = nuisance_start(none)
    a, b = newton_mode(tiny, psi0), newton_mode(none, psi0)
    np.testing.assert_allclose(a.psi, b.psi, atol=1e-6)
    # Entries are up to ~1e3: a clone covariance of 1e-10 is the limit to ~1e-9 relative.
    np.testing.assert_allclose(a.hessian, b.hessian, rtol=1e-6, atol=1e-9 * np.abs(b.hessian).max())


def test_dense_algebra_inverts_and_reads_blocks(clone_problem):
    problem, _, _ = clone_problem
    res = newton_mode(problem, nuisance_start(problem))
    algebra = DenseAlgebra(problem, res.hessian.copy())
    inv = np.linalg.inv(res.hessian)
    np.testing.assert_allclose(algebra.inv, inv, rtol=1e-8, atol=1e-10)
    rhs = np.random.default_rng(2).standard_normal(inv.shape[0])
    np.testing.assert_allclose(algebra.solve(rhs), inv @ rhs, rtol=1e-8, atol=1e-10)
    index, _ = gene_blocks(problem.layout, problem.gene_of_guide, problem.n_contrasts)
    np.testing.assert_allclose(algebra.blocks(index)[3], inv[np.ix_(index[3], index[3])], rtol=1e-8, atol=1e-12)
    Q = problem.prior_hessian()
    assert algebra.prior_trace() == pytest.approx(float(np.trace(inv @ Q)), rel=1e-8)


def test_clone_effect_covariance_includes_psi_uncertainty(clone_problem):
    """The clone pass's posterior covariance of a clone's effect is that block of the joint inverse Hessian."""
    problem, _, _ = clone_problem
    res = newton_mode(problem, nuisance_start(problem))
    algebra = DenseAlgebra(problem, res.hessian.copy())
    cp = clone_pass(problem, res, algebra, robust=False)
    K, P, C = problem.n_contrasts, problem.layout.size, problem.n_clusters
    W, B = res.curvature.W, res.curvature.B
    # H_psi,b: for contrast k and clone effect j, sum over a clone's cells of (x_i T_k) W_i[k, j]
    H_pb = np.zeros((K * P, C * K))
    for k in range(K):
        for j in range(K):
            rows = (problem.cluster_of.multiply(W[:, k, j][None, :]) @ problem.X).toarray()  # (C, P) raw
            H_pb[k * P : (k + 1) * P, j::K] = problem.centre_rows(rows.T, k)
    B_full = np.zeros((C * K, C * K))
    for c in range(C):
        B_full[c * K : (c + 1) * K, c * K : (c + 1) * K] = B[c]
    H_pp = res.hessian + H_pb @ np.linalg.solve(B_full, H_pb.T)  # undo the elimination
    inv = np.linalg.inv(np.block([[H_pp, H_pb], [H_pb.T, B_full]]))
    for c in (0, C // 2, C - 1):
        at = K * P + c * K
        np.testing.assert_allclose(cp.beta_cov[c], inv[at : at + K, at : at + K], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(inv[: K * P, : K * P], algebra.inv, rtol=1e-6, atol=1e-9)


def test_moment_estimate_finds_the_clone_variance_and_none_without_clones():
    out = {}
    for bias in (0.0, 0.8):
        cfg = make_config({**SMALL, "sim_n_cells": 4000, "sim_clone_bias_sd": bias, "sim_seed": 5})
        sim = simulate_experiment(cfg)
        exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
        K, D = 2, exp.cells.n_days
        hyper = {"tau": np.ones(K), "sigma_time": np.full((K, D - 1), 0.5), "sigma_guide": np.full(K, 0.1)}
        problem = build_problem(exp, cfg.contrast_fates, cfg.ref_fate, Priors.from_config(cfg), hyper, 51.0)
        res = newton_mode(problem, nuisance_start(problem), hessian_at_mode=False)
        out[bias] = np.sqrt(np.diag(clone_cov_moments(problem, res)))
    assert (out[0.0] < 0.05).all()
    assert (out[0.8] > 0.3).all()


def test_empirical_bayes_recovers_the_simulated_hyperparameters():
    """Known clones (labels), Dirichlet noise of concentration 50: w near 51, sigma_guide near 0.1, clone SD near 0.6."""
    cfg = make_config({**SMALL, "sim_n_cells": 6000, "sim_n_genes": 20, "sim_n_guides": 120, "sim_clone_size_mean": 6.0,
                       "sim_clone_bias_sd": 0.6, "sim_s_guide": 0.1, "sim_seed": 11})
    sim = simulate_experiment(cfg)
    exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
    K, D = 2, exp.cells.n_days
    hyper = {"tau": np.ones(K), "sigma_time": np.full((K, D - 1), 0.5), "sigma_guide": np.full(K, 0.25)}
    post = laplace_posterior(exp, cfg.contrast_fates, cfg.ref_fate, Priors.from_config(cfg), None, hyper, 10.0,
                             LaplaceSettings(uncertainty="model"))
    p = post.params
    assert float(p["weight"]) == pytest.approx(51.0, rel=0.15)
    np.testing.assert_allclose(np.sqrt(np.diag(post.clone_cov)), 0.6, rtol=0.25)
    assert (np.asarray(p["sigma_guide"]) < 0.25).all() and (np.asarray(p["sigma_guide"]) > 0.02).all()


def test_sigma_guide_update_is_a_fixed_point_of_its_own_estimate(clone_problem):
    problem, _, _ = clone_problem
    res = newton_mode(problem, nuisance_start(problem))
    algebra = DenseAlgebra(problem, res.hessian.copy())
    new = sigma_guide_update(problem, res.psi, algebra)
    assert new.shape == (2,) and (new > 0).all()


def test_robust_degrees_of_freedom_grow_with_the_number_of_clones():
    """Few clones behind the effects give few degrees of freedom; many give many."""
    dfs = {}
    for size in (2.0, 20.0):
        cfg = make_config({**SMALL, "sim_n_cells": 2000, "sim_clone_size_mean": size, "sim_seed": 4})
        sim = simulate_experiment(cfg)
        exp = load_experiment(cfg, verbose=False, adata=sim.adata, guide_map=sim.guide_map)
        K, D = 2, exp.cells.n_days
        hyper = {"tau": np.ones(K), "sigma_time": np.full((K, D - 1), 0.5), "sigma_guide": np.full(K, 0.1)}
        problem = build_problem(exp, cfg.contrast_fates, cfg.ref_fate, Priors.from_config(cfg), hyper, 20.0, np.eye(2) * 0.25)
        res = newton_mode(problem, nuisance_start(problem))
        algebra = DenseAlgebra(problem, res.hessian.copy())
        cp = clone_pass(problem, res, algebra, robust=True)
        index, _ = gene_blocks(problem.layout, problem.gene_of_guide, 2)
        dfs[size] = np.median(bm_degrees_of_freedom(problem, algebra, cp, index[:, :8].ravel()))
    assert dfs[20.0] < dfs[2.0] / 3


def test_t_scale_widens_more_at_a_smaller_tail_and_not_at_all_with_many_degrees_of_freedom():
    assert t_scale(np.array([1e6]), 0.0125)[0] == pytest.approx(1.0, abs=1e-4)
    assert t_scale(np.array([10.0]), 0.0125)[0] > t_scale(np.array([10.0]), 0.05)[0] > 1.0


def test_pearson_dispersion_of_dirichlet_noise_and_its_leverage():
    rng = np.random.default_rng(1)
    pi = rng.dirichlet(np.ones(3) * 3, size=5000)
    for c in (10.0, 50.0, 200.0):
        p = np.stack([rng.dirichlet(c * row) for row in pi])
        assert pearson_dispersion(p, pi) == pytest.approx(1 / (c + 1), rel=0.08)
        # Residuals half absorbed by a fit are half the noise: the leverage says so.
        assert pearson_dispersion(p, pi, 0.5) == pytest.approx(2 * pearson_dispersion(p, pi), rel=1e-12)


def test_centre_within_gene_and_slots():
    genes = np.array([1, 0, 1, 2, 1, 0])
    x = np.arange(12, dtype=float).reshape(6, 2)
    out = centre_within_gene(x, genes, 3)
    for g in range(3):
        np.testing.assert_allclose(out[genes == g].mean(0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(guide_slots(genes, 3), [0, 0, 1, 0, 2, 1])
    stacked = centre_within_gene(np.stack([x, 2 * x]), genes, 3)
    np.testing.assert_allclose(stacked[1], 2 * out)


def test_gene_blocks_index_theta_then_guides():
    lay = Layout(n_days=2, n_reps=1, n_genes=2, n_guides=3)
    genes = np.array([0, 1, 0])
    index, mask = gene_blocks(lay, genes, n_contrasts=1)
    t0 = lay.theta.start
    assert index[0, :2].tolist() == [t0, t0 + 1]
    assert index[1, :2].tolist() == [t0 + 2, t0 + 3]
    assert index[0, 2:].tolist() == [lay.u.start + 0, lay.u.start + 2]
    assert mask[1].tolist() == [True, True, True, False]


def test_too_large_a_screen_is_refused_before_fitting(tiny_sim, monkeypatch):
    import fatebias_core.model.algebra as alg
    from fatebias_core.errors import FitError
    from fatebias_core.model.inference import fit

    monkeypatch.setattr(alg, "machine_memory", lambda: 1000)
    for algebra, what in (("dense", "dense"), ("blocks", "gene blocks")):
        config = tiny_sim.config.model_copy(update={"laplace_algebra": algebra})
        with pytest.raises(FitError, match=rf"{what}.*GB, and this machine has 0\.0 GB; run it on a machine with more memory"):
            fit(tiny_sim.experiment, config)


def test_the_dense_estimate_follows_the_measured_step() -> None:
    """Measured on 2 cores: 7.2 GB at 14,414 parameters; 85.3 s at 8,114 parameters and 50,000 cells, of which
    about 10 s grows with the cells (benchmarks/laplace_growth.py). The estimate is within 15% of both."""
    from fatebias_core.model.algebra import dense_estimate

    assert dense_estimate(14_414).bytes_needed / 1e9 == pytest.approx(7.5, rel=0.15)
    assert dense_estimate(8_114).seconds == pytest.approx(85.3 - 10.0, rel=0.15)
    assert dense_estimate(36_014).bytes_needed > 40e9  # 2,000 genes x 10,000 guides


def test_thread_map_keeps_order_and_results():
    items = list(range(37))
    assert thread_map(lambda x: x * x, items) == [x * x for x in items]
    assert thread_map(lambda x: x, []) == []


def test_model_based_posterior_is_the_same_fit_with_the_model_covariance(clone_problem):
    _, exp, cfg = clone_problem
    K, D = 2, exp.cells.n_days
    hyper = {"tau": np.ones(K), "sigma_time": np.full((K, D - 1), 0.5), "sigma_guide": np.full(K, 0.2)}
    post = laplace_posterior(exp, cfg.contrast_fates, cfg.ref_fate, Priors.from_config(cfg), None, hyper, 20.0,
                             dataclasses.replace(LaplaceSettings(), estimate_sigma_guide=False, estimate_weight=False))
    model = post.model_based()
    np.testing.assert_array_equal(model.params["theta"], post.params["theta"])
    assert "theta_df" in post.params and "theta_df" not in model.params
    assert not np.allclose(model.params["block_cov"], post.params["block_cov"])


def test_a_posterior_for_some_genes_is_the_full_one_there_and_model_based_elsewhere(clone_problem):
    """``LaplaceSettings.genes`` (the NTC check's pseudo-genes): the selected genes' robust blocks and degrees
    of freedom are those of the full computation; the other genes keep the model-based blocks, with NaN
    degrees of freedom; the mode is the same."""
    _, exp, cfg = clone_problem
    K, D = 2, exp.cells.n_days
    hyper = {"tau": np.ones(K), "sigma_time": np.full((K, D - 1), 0.5), "sigma_guide": np.full(K, 0.2)}
    settings = dataclasses.replace(LaplaceSettings(), estimate_sigma_guide=False, estimate_weight=False)
    args = (exp, cfg.contrast_fates, cfg.ref_fate, Priors.from_config(cfg), None, hyper, 20.0)
    full = laplace_posterior(*args, settings).params
    some = laplace_posterior(*args, dataclasses.replace(settings, genes=(2, 5))).params
    sel, other = [2, 5], [0, 1, 3, 4, 6, 7]
    np.testing.assert_array_equal(some["theta"], full["theta"])
    np.testing.assert_allclose(some["block_cov"][sel], full["block_cov"][sel], rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(some["theta_df"][sel], full["theta_df"][sel], rtol=1e-9)
    assert np.isnan(some["theta_df"][other]).all() and np.isfinite(full["theta_df"]).all()
    np.testing.assert_array_equal(some["block_cov_model"], full["block_cov_model"])
    mask = full["block_mask"][other]
    both = mask[:, :, None] & mask[:, None, :]
    np.testing.assert_allclose(some["block_cov"][other][both], full["block_cov_model"][other][both], rtol=1e-12)
    assert not np.allclose(full["block_cov"][other][both], full["block_cov_model"][other][both])
