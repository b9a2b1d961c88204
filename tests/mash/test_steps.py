"""Unit tests of each mash/ash step on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import multivariate_normal

from fatebias_core.errors import InputDataError
from fatebias_core.mash import (
    CovarianceSet,
    NotEnoughNullDataError,
    ash,
    autoselect_grid,
    compute_lfsr,
    cov_canonical,
    cov_ed,
    cov_pca,
    estimate_null_correlation_simple,
    expand_covariances,
    fit_mixture_weights,
    get_significant_results,
    loglik_matrix,
    mash,
    mash_1by1,
    mash_set_data,
    mixsqp,
    nearest_correlation,
    normalize_covariances,
    parallel,
    qval_from_lfdr,
    regularize_null_correlation,
    set_prior,
)
from fatebias_core.mash.batched import BatchedCholesky
from fatebias_core.mash.likelihood import likelihood_matrix


def _corr(R: int, rho: float) -> np.ndarray:
    V = np.full((R, R), rho)
    np.fill_diagonal(V, 1.0)
    return V


@pytest.fixture
def sim() -> dict[str, np.ndarray]:
    """300 units x 3 conditions: 20% shared effects, correlated noise, unequal SEs."""
    rng = np.random.default_rng(11)
    J, R = 300, 3
    S = rng.uniform(0.5, 1.5, (J, 1)) * np.array([1.0, 1.2, 1.5])
    b = np.zeros((J, R))
    on = rng.random(J) < 0.2
    b[on] = rng.normal(0, 2.0, (on.sum(), 1)) * np.array([1.0, 0.8, 1.2])
    V = _corr(R, 0.3)
    E = rng.multivariate_normal(np.zeros(R), V, J) * S
    return {"B": b + E, "S": S, "V": V}


# ------------------------------------------------------------------ data
def test_set_data_validates() -> None:
    B = np.ones((3, 2))
    with pytest.raises(InputDataError, match="row"):
        mash_set_data(np.array([[1.0, np.nan], [0.0, 1.0]]), np.ones((2, 2)))
    with pytest.raises(InputDataError, match="non-positive"):
        mash_set_data(B, np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0]]))
    with pytest.raises(InputDataError, match="positive definite"):
        mash_set_data(B, 1.0, V=np.array([[1.0, 2.0], [2.0, 1.0]]))
    d = mash_set_data(B, 0.5)
    assert d.Shat.shape == (3, 2) and d.v_is_identity


# ------------------------------------------------------------------ linear algebra
def test_batched_cholesky_matches_lapack() -> None:
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 4, 4))
    M = A @ A.transpose(0, 2, 1) + 0.1 * np.eye(4)
    chol = BatchedCholesky(lambda i, j: M[:, i, j], 4)
    L = np.linalg.cholesky(M)
    for i in range(4):
        for j in range(i + 1):
            np.testing.assert_allclose(chol.L[i][j], L[:, i, j], rtol=1e-12, atol=1e-12)
    b = rng.normal(size=(50, 4))
    x = np.stack(chol.solve([b[:, r] for r in range(4)]), axis=1)
    np.testing.assert_allclose(x, np.linalg.solve(M, b[..., None])[..., 0], rtol=1e-10)
    np.testing.assert_allclose(chol.logdet(), np.linalg.slogdet(M)[1], rtol=1e-12)


def test_loglik_matrix_is_the_multivariate_normal_density(sim) -> None:
    data = mash_set_data(sim["B"][:20], sim["S"][:20], V=sim["V"])
    U = expand_covariances(cov_canonical(data), np.array([0.5, 2.0]))
    ll = loglik_matrix(data, U, chunk_rows=7)  # several blocks
    for j in (0, 5, 19):
        Sig = np.outer(data.Shat[j], data.Shat[j]) * data.V
        for p in (0, 3, U.n_components - 1):
            ref = multivariate_normal(np.zeros(3), U.matrices[p] + Sig).logpdf(data.Bhat[j])
            assert ll[j, p] == pytest.approx(ref, rel=1e-12)


def test_relative_likelihoods_are_the_scaled_densities(sim) -> None:
    """likelihood_matrix (no logs formed) = exp(loglik - row max), with the point mass's loglik."""
    data = mash_set_data(sim["B"], sim["S"], V=sim["V"])
    U = expand_covariances(cov_canonical(data), autoselect_grid(data.Bhat, data.Shat))
    ll = loglik_matrix(data, U, chunk_rows=64)
    rel = likelihood_matrix(data, U, chunk_rows=64)
    np.testing.assert_allclose(rel.lfactors, ll.max(axis=1), rtol=1e-13)
    np.testing.assert_allclose(rel.lik, np.exp(ll - ll.max(axis=1, keepdims=True)), rtol=1e-11, atol=1e-300)
    np.testing.assert_allclose(rel.null_loglik, ll[:, 0], rtol=1e-13)
    assert (rel.lik.max(axis=1) == 1.0).all()


def test_results_do_not_depend_on_the_number_of_threads(sim, monkeypatch: pytest.MonkeyPatch) -> None:
    data = mash_set_data(sim["B"], sim["S"], V=sim["V"])
    fits = []
    for n in (1, 3):
        monkeypatch.setattr(parallel, "available_cores", lambda n=n: n)
        fits.append(mash(data, cov_canonical(data), chunk_rows=40, eps=0.5))
    one, three = fits
    for name in ("mean", "sd", "lfsr", "lfdr", "plarge"):
        np.testing.assert_array_equal(getattr(one.posterior, name), getattr(three.posterior, name), err_msg=name)
    np.testing.assert_array_equal(one.pi, three.pi)


# ------------------------------------------------------------------ covariances
def test_cov_canonical_set() -> None:
    U = cov_canonical(3, conditions=("d0", "d1", "d2"))
    assert U.names == (
        "identity", "singletons_d0", "singletons_d1", "singletons_d2",
        "equal_effects", "simple_het_1", "simple_het_2", "simple_het_3",
    )
    np.testing.assert_array_equal(U.matrices[0], np.eye(3))
    assert U.matrices[2].sum() == 1.0 and U.matrices[2][1, 1] == 1.0
    np.testing.assert_array_equal(U.matrices[4], np.ones((3, 3)))
    np.testing.assert_array_equal(U.matrices[6], _corr(3, 0.5))


def test_cov_pca_rank_one_factors_and_total(sim) -> None:
    data = mash_set_data(sim["B"], sim["S"])
    sub = np.arange(0, 300, 3)
    U = cov_pca(data, 3, subset=sub)
    X = sim["B"][sub]
    # with all R components tPCA is X'X / n
    np.testing.assert_allclose(U.as_dict()["tPCA"], X.T @ X / X.shape[0], rtol=1e-10, atol=1e-12)
    for k in ("PCA_1", "PCA_2", "PCA_3"):
        M = U.as_dict()[k]
        assert np.linalg.matrix_rank(M) == 1 and np.trace(M) == pytest.approx(1.0)
    with pytest.raises(InputDataError):
        cov_pca(data, 1)


def test_normalize_covariances() -> None:
    U = normalize_covariances(CovarianceSet(("a", "z"), np.stack([4.0 * np.eye(2), np.zeros((2, 2))])))
    np.testing.assert_array_equal(U.matrices[0], np.eye(2))
    np.testing.assert_array_equal(U.matrices[1], np.zeros((2, 2)))


def _ed_reference(B, S, V, U, tol=1e-6, maxiter=10_000):
    """Textbook extreme-deconvolution EM with dense algebra, for comparison."""
    n, R = B.shape
    K = len(U)
    pi = np.full(K, 1.0 / K)
    U = U.copy()
    err = S[:, :, None] * V[None] * S[:, None, :]
    old = -np.inf
    for it in range(1, maxiter + 1):
        T = err[:, None] + U[None]
        Ti = np.linalg.inv(T)
        ld = np.linalg.slogdet(T)[1]
        quad = np.einsum("nr,nkrs,ns->nk", B, Ti, B)
        lq = np.log(pi) - 0.5 * R * math.log(2 * math.pi) - 0.5 * ld - 0.5 * quad
        lse = np.logaddexp.reduce(lq, axis=1)
        q = np.exp(lq - lse[:, None])
        b = np.einsum("krs,nkst,nt->nkr", U, Ti, B)
        Bc = U[None] - np.einsum("krs,nkst,ktu->nkru", U, Ti, U)
        qk = q.sum(0)
        U = (np.einsum("nk,nkr,nks->krs", q, b, b) + np.einsum("nk,nkrs->krs", q, Bc)) / qk[:, None, None]
        pi = qk / n
        if it > 1 and lse.mean() - old <= tol:
            break
        old = lse.mean()
    return U, pi, it


def test_cov_ed_is_textbook_em_plus_mashr_epsilon(sim) -> None:
    """The EM of Bovy et al., then mashr's bovy_wrapper adds diag(1 / sqrt(n)) to each U."""
    data = mash_set_data(sim["B"], sim["S"], V=sim["V"])
    strong = np.flatnonzero(np.abs(sim["B"] / sim["S"]).max(axis=1) > 2)
    init = cov_pca(data, 2, subset=strong)
    ed = cov_ed(data, init, subset=strong)
    U_ref, pi_ref, it_ref = _ed_reference(sim["B"][strong], sim["S"][strong], sim["V"], init.matrices)
    eps = np.eye(3) / math.sqrt(strong.size)
    assert ed.converged and ed.n_iter == it_ref
    np.testing.assert_allclose(ed.covariances.matrices, U_ref + eps, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ed.pi, pi_ref, rtol=1e-8)
    assert ed.covariances.names == ("ED_PCA_1", "ED_PCA_2", "ED_tPCA")
    # the EM keeps a rank-one start rank one; the epsilon makes every covariance full rank
    assert np.linalg.matrix_rank(U_ref[0], tol=1e-8) == 1
    for M in ed.covariances.matrices:
        assert np.linalg.eigvalsh(M).min() >= 1 / math.sqrt(strong.size) - 1e-12


def test_cov_ed_not_converged_keeps_the_result(sim) -> None:
    data = mash_set_data(sim["B"], sim["S"], V=sim["V"])
    strong = np.flatnonzero(np.abs(sim["B"] / sim["S"]).max(axis=1) > 2)
    init = cov_pca(data, 2, subset=strong)
    ed = cov_ed(data, init, subset=strong, maxiter=3)
    U_ref, _, _ = _ed_reference(sim["B"][strong], sim["S"][strong], sim["V"], init.matrices, maxiter=3)
    assert not ed.converged and ed.n_iter == 3
    np.testing.assert_allclose(ed.covariances.matrices, U_ref + np.eye(3) / math.sqrt(strong.size), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------ null correlation
def test_null_correlation_recovers_noise_correlation() -> None:
    rng = np.random.default_rng(3)
    V = _corr(4, 0.4)
    Z = rng.multivariate_normal(np.zeros(4), V, 20_000)
    data = mash_set_data(Z, 1.0)
    Vhat = estimate_null_correlation_simple(data)
    keep = np.abs(Z).max(axis=1) < 2
    np.testing.assert_allclose(Vhat, np.corrcoef(Z[keep].T), rtol=1e-12)
    # the |z| < 2 selection attenuates the correlation, but its sign and size survive
    off = Vhat[~np.eye(4, dtype=bool)]
    assert (off > 0.25).all() and (off < 0.4).all()


def test_null_correlation_needs_null_rows() -> None:
    data = mash_set_data(np.full((10, 3), 5.0), 1.0)
    with pytest.raises(NotEnoughNullDataError, match="not enough null data"):
        estimate_null_correlation_simple(data)


def test_regularize_null_correlation() -> None:
    V = _corr(3, 0.3)
    np.testing.assert_allclose(regularize_null_correlation(V, 1e-6, 0.05), 0.95 * V + 0.05 * np.eye(3), atol=1e-14)
    bad = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])  # not PSD
    assert np.linalg.eigvalsh(bad).min() < 0
    C = nearest_correlation(bad, eig_floor=1e-6)
    assert np.allclose(np.diag(C), 1.0) and np.linalg.eigvalsh(C).min() > 1e-7
    Vr = regularize_null_correlation(bad, 1e-6, 0.05)
    assert np.allclose(np.diag(Vr), 1.0) and np.linalg.eigvalsh(Vr).min() >= 0.05 - 1e-12


# ------------------------------------------------------------------ grid
def test_autoselect_grid_formula() -> None:
    B = np.array([[0.1, 3.0], [0.0, -1.0]])
    S = np.array([[0.5, 1.0], [0.2, 0.4]])
    g = autoselect_grid(B, S)
    gmin, gmax = 0.02, 2 * math.sqrt(9.0 - 1.0)
    n = math.ceil(math.log2(gmax / gmin) / math.log2(math.sqrt(2)))
    np.testing.assert_allclose(g, math.sqrt(2) ** np.arange(-n, 1) * gmax)
    assert g[0] <= gmin < g[1]
    small = autoselect_grid(np.array([0.1, -0.1]), np.array([1.0, 1.0]))
    assert small[-1] == pytest.approx(8 * 0.1)


# ------------------------------------------------------------------ mixture weights
def _em(L, prior, iters=200_000):
    x = np.full(L.shape[1], 1.0 / L.shape[1])
    for _ in range(iters):
        post = L * x
        post /= post.sum(1, keepdims=True)
        x = post.sum(0) + prior - 1
        x /= x.sum()
    return x


def test_mixsqp_optimum_and_kkt() -> None:
    rng = np.random.default_rng(5)
    L = np.exp(rng.normal(size=(400, 6)) * 2)
    res = mixsqp(L)
    assert res.converged and res.kkt_residual < 1e-10
    assert res.x.sum() == pytest.approx(1.0) and (res.x >= 0).all()
    # the EM fixed point of the same problem (slow but sure)
    x_em = _em(L, np.ones(6), iters=20_000)
    obj = lambda x: np.log(L @ x).sum()  # noqa: E731
    assert obj(res.x) >= obj(x_em) - 1e-9


def test_penalised_weights_equal_augmented_problem() -> None:
    rng = np.random.default_rng(6)
    L = np.exp(rng.normal(size=(200, 5)))
    prior = set_prior(5, "nullbiased", 10.0)
    np.testing.assert_array_equal(prior, [10, 1, 1, 1, 1])
    res = fit_mixture_weights(L, prior)
    # KKT of the penalised problem: d/dpi [sum log(L pi) + 9 log pi_0] = lambda on the support
    grad = (L / (L @ res.x)[:, None]).sum(0) + (prior - 1) / np.maximum(res.x, 1e-300)
    on = res.x > 1e-8
    lam = 200 + 9
    np.testing.assert_allclose(grad[on], lam, rtol=1e-7)
    assert (grad[~on] <= lam * (1 + 1e-7)).all()
    assert res.x[0] > 0.3


# ------------------------------------------------------------------ posterior
def test_one_component_posterior_is_conjugate_normal(sim) -> None:
    data = mash_set_data(sim["B"][:30], sim["S"][:30], V=sim["V"])
    U0 = np.array([[2.0, 0.5, 0.3], [0.5, 1.0, 0.2], [0.3, 0.2, 1.5]])
    fit = mash(data, CovarianceSet(("U",), U0[None]), grid=np.array([1.0]), normalize_u=False, usepointmass=False)
    assert fit.pi == pytest.approx([1.0])
    for j in (0, 7, 29):
        Sig = np.outer(data.Shat[j], data.Shat[j]) * data.V
        K = U0 @ np.linalg.inv(U0 + Sig)
        mean = K @ data.Bhat[j]
        cov = U0 - K @ U0
        sd = np.sqrt(np.diag(cov))
        np.testing.assert_allclose(fit.posterior.mean[j], mean, rtol=1e-10)
        np.testing.assert_allclose(fit.posterior.sd[j], sd, rtol=1e-10)
        neg = ndtr(-mean / sd)
        np.testing.assert_allclose(fit.posterior.lfsr[j], np.minimum(neg, 1 - neg), rtol=1e-9)


def test_point_mass_and_singletons_count_as_zero(sim) -> None:
    data = mash_set_data(sim["B"][:50], sim["S"][:50])
    sing = CovarianceSet(("s1",), np.diag([1.0, 0.0, 0.0])[None])
    fit = mash(data, sing, grid=np.array([1.0]), normalize_u=False, usepointmass=True, prior="uniform")
    p_null = fit.posterior.lfdr[:, 0]
    # conditions 2 and 3 are exactly zero under both components
    np.testing.assert_allclose(fit.posterior.lfdr[:, 1:], 1.0)
    np.testing.assert_allclose(fit.posterior.mean[:, 1:], 0.0)
    np.testing.assert_allclose(fit.posterior.lfsr[:, 1:], 1.0)
    assert ((p_null > 0) & (p_null < 1)).all()


def test_compute_lfsr() -> None:
    neg = np.array([0.9, 0.1, 0.3, 0.0])
    zero = np.array([0.05, 0.2, 0.4, 1.0])
    np.testing.assert_allclose(compute_lfsr(neg, zero), [0.1, 0.3, 0.7, 1.0])


# ------------------------------------------------------------------ ash and 1by1
def test_ash_one_component_is_conjugate_normal() -> None:
    b = np.array([1.0, -2.0, 0.3])
    s = np.array([0.5, 1.0, 2.0])
    fit = ash(b, s, pointmass=False, prior="uniform", mixsd=np.array([1.5]))
    w = 1.5**2 / (1.5**2 + s**2)
    np.testing.assert_allclose(fit.postmean, w * b, rtol=1e-12)
    np.testing.assert_allclose(fit.postsd, np.sqrt(w) * s, rtol=1e-12)
    np.testing.assert_allclose(fit.lfdr, 0.0)


def test_ash_all_null_data_puts_all_weight_on_the_point_mass() -> None:
    b = np.linspace(-0.1, 0.1, 21)
    fit = ash(b, np.ones_like(b))
    assert fit.pi[0] == 1.0
    np.testing.assert_allclose(fit.postmean, 0.0)
    np.testing.assert_allclose(fit.lfsr, 1.0)
    np.testing.assert_allclose(fit.qvalue, 1.0)


def test_qvalue_is_running_mean_of_sorted_rates() -> None:
    lfdr = np.array([0.5, 0.1, 0.3, 0.1])
    np.testing.assert_allclose(qval_from_lfdr(lfdr), [(0.1 + 0.1 + 0.3 + 0.5) / 4, 0.1, (0.1 + 0.1 + 0.3) / 3, 0.1])


def test_mash_1by1_shrinks_each_condition_on_its_own(sim) -> None:
    """Each condition is shrunk from its own column alone: the noise correlation and the other columns do not
    enter; effects far above the noise are kept, pure noise is shrunk towards 0."""
    one = mash_1by1(mash_set_data(sim["B"], sim["S"], V=sim["V"]))
    indep = mash_1by1(mash_set_data(sim["B"], sim["S"]))  # V = identity
    np.testing.assert_array_equal(one.mean, indep.mean)
    B2 = sim["B"].copy()
    B2[:, 1:] = np.random.default_rng(3).normal(size=B2[:, 1:].shape)  # other columns replaced
    other = mash_1by1(mash_set_data(B2, sim["S"]))
    np.testing.assert_array_equal(other.mean[:, 0], one.mean[:, 0])
    np.testing.assert_array_equal(other.lfsr[:, 0], one.lfsr[:, 0])
    z = np.abs(sim["B"] / sim["S"])
    big, small = z > 6, z < 0.5
    assert big.any() and small.any()
    # strong effects: kept with their sign, shrunk at most as a N(0, 2^2) effect prior under unit noise would (0.8)
    ratio = one.mean[big] / sim["B"][big]
    assert (ratio > 0.6).all() and (ratio <= 1.0).all()
    assert (np.abs(one.mean[small]) < 0.5 * np.abs(sim["B"][small]) + 1e-12).all()  # noise: shrunk at least by half
    assert (one.lfsr[big] < 1e-3).all() and (one.lfsr[small] > 0.1).all()
    strong = get_significant_results(one.lfsr, 0.1)
    assert (one.lfsr[strong].min(axis=1) < 0.1).all()
    assert (np.diff(one.lfsr[strong].min(axis=1)) >= 0).all()


def test_diagonal_V_singletons_reduce_mash_to_univariate_conjugate(sim) -> None:
    """With V = I and a prior of singletons only, each condition is shrunk on its own."""
    B, S = sim["B"][:, :1].repeat(2, axis=1), sim["S"][:, :1].repeat(2, axis=1)
    data = mash_set_data(B, S)
    U = CovarianceSet(("a",), np.diag([1.0, 1.0])[None])  # independent unit variances
    fit = mash(data, U, grid=np.array([1.3]), normalize_u=False, usepointmass=False)
    a = ash(B[:, 0], S[:, 0], pointmass=False, prior="uniform", mixsd=np.array([1.3]))
    np.testing.assert_allclose(fit.posterior.mean[:, 0], a.postmean, rtol=1e-10)
    np.testing.assert_allclose(fit.posterior.sd[:, 1], a.postsd, rtol=1e-10)
    np.testing.assert_allclose(fit.posterior.lfsr[:, 0], a.lfsr, rtol=1e-8, atol=1e-14)


def test_mixsqp_stops_when_the_tolerance_is_below_rounding() -> None:
    rng = np.random.default_rng(7)
    L = np.exp(rng.normal(size=(3000, 12)))
    res = mixsqp(L, tol=1e-30)  # unattainable: must stop on stalled progress, not spin
    assert res.converged and res.kkt_residual < 1e-9 and res.n_iter < 60
