"""The Laplace approximation: gradient and Hessian, the mode, dispersion, per-gene blocks."""

from __future__ import annotations

import numpy as np
import pytest

from fatebias_core.model.laplace import (
    LaplaceProblem,
    Layout,
    centre_within_gene,
    design_matrix,
    gene_blocks,
    guide_slots,
    newton_mode,
    nuisance_problem,
    pearson_dispersion,
    random_walk_precision,
    thread_map,
)


@pytest.fixture()
def problem(tiny_sim) -> LaplaceProblem:
    exp = tiny_sim.experiment
    cells, guides = exp.cells, exp.guides
    lay = Layout(cells.n_days, cells.n_reps, guides.n_genes, guides.n_guides)
    gene0 = guides.gene_of_guide[1:] - 1
    K = 2
    prior = np.zeros((K, lay.size))
    prior[:, lay.a], prior[:, lay.b], prior[:, lay.c], prior[:, lay.u] = 0.25, 4.0, 4.0, 1.0
    return LaplaceProblem(
        X=design_matrix(exp), layout=lay, p=cells.fate_probs.astype(np.float64), ref_index=0,
        contrast_index=np.array([1, 2]), gene_of_guide=gene0,
        guides_per_gene=np.bincount(gene0).astype(float), sigma_guide=np.array([0.2, 0.3]),
        prior_diag=prior, rw_precision=np.stack([random_walk_precision(1.0, [0.5] * (cells.n_days - 1))] * K),
        weight=3.0,
    )


def test_random_walk_precision_inverts_the_walk_covariance():
    s = np.array([1.0, 0.5, 0.3, 0.2])
    U = np.tril(np.ones((4, 4)))
    cov = U @ np.diag(s**2) @ U.T
    np.testing.assert_allclose(random_walk_precision(s[0], s[1:]), np.linalg.inv(cov), atol=1e-10)


def test_gradient_and_hessian_match_finite_differences(problem):
    rng = np.random.default_rng(0)
    K, P = 2, problem.layout.size
    psi = 0.1 * rng.standard_normal((K, P))
    grad, hess, _ = problem.gradient_and_hessian(psi)
    for flat in rng.choice(K * P, 6, replace=False):
        e = np.zeros(K * P)
        e[flat] = 1e-5
        up, dn = psi + e.reshape(K, P), psi - e.reshape(K, P)
        num = (problem.objective(up) - problem.objective(dn)) / 2e-5
        assert num == pytest.approx(grad[flat], rel=1e-4, abs=1e-4)
        g_up, _, _ = problem.gradient_and_hessian(up)
        g_dn, _, _ = problem.gradient_and_hessian(dn)
        np.testing.assert_allclose((g_up - g_dn) / 2e-5, hess[:, flat], rtol=1e-3, atol=1e-3)


def test_newton_reaches_a_stationary_point(problem):
    K, P = 2, problem.layout.size
    res = newton_mode(problem, np.zeros((K, P)))
    assert res.converged
    grad, _, _ = problem.gradient_and_hessian(res.psi)
    assert np.abs(grad).max() < 1e-4
    assert np.allclose(res.cov, res.cov.T)
    assert np.all(np.linalg.eigvalsh(res.cov) > 0)


def test_mode_without_covariance_and_the_nuisance_only_problem(problem):
    K, P = 2, problem.layout.size
    full = newton_mode(problem, np.zeros((K, P)))
    mode = newton_mode(problem, np.zeros((K, P)), covariance=False)
    assert mode.cov is None and mode.n_iter == full.n_iter
    np.testing.assert_array_equal(mode.psi, full.psi)
    np.testing.assert_allclose(mode.pi, full.pi, rtol=1e-10)
    # The nuisance-only problem is the full one with the guide terms fixed at 0.
    nuis = nuisance_problem(problem)
    n0 = problem.layout.theta.start
    assert nuis.layout.size == n0 and nuis.X.shape == (problem.X.shape[0], n0)
    rng = np.random.default_rng(1)
    psi = np.zeros((K, P))
    psi[:, :n0] = rng.standard_normal((K, n0))
    assert nuis.objective(psi[:, :n0]) == pytest.approx(problem.objective(psi), rel=1e-12)
    res = newton_mode(nuis, np.zeros((K, n0)), covariance=False)
    grad, _, _ = nuis.gradient_and_hessian(res.psi)
    assert res.converged and np.abs(grad).max() < 1e-4


def test_pearson_dispersion_of_dirichlet_noise():
    rng = np.random.default_rng(1)
    pi = rng.dirichlet(np.ones(3) * 3, size=20000)
    for c in (10.0, 50.0, 200.0):
        p = np.stack([rng.dirichlet(c * row) for row in pi[:5000]])
        assert pearson_dispersion(p, pi[:5000]) == pytest.approx(1 / (c + 1), rel=0.08)


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
    import fatebias_core.model.laplace as lap
    from fatebias_core.errors import FitError
    from fatebias_core.model.inference import fit

    monkeypatch.setattr(lap, "MAX_LAPLACE_DIM", 10)
    with pytest.raises(FitError, match="posterior_method: meanfield"):
        fit(tiny_sim.experiment, tiny_sim.config)


def test_thread_map_keeps_order_and_results():
    items = list(range(37))
    assert thread_map(lambda x: x * x, items) == [x * x for x in items]
    assert thread_map(lambda x: x, []) == []
