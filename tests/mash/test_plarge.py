"""P(|effect| >= eps) under mash's posterior mixture (the plarge_<day> columns).

The expectations come from outside the library's posterior code: the exact posterior
mixture of a row built by dense linear algebra (weights from the multivariate normal
density, each component's conjugate mean and covariance) and sampled by Monte Carlo,
the normal tail formula for a single component, and exact zeros for the point mass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import multivariate_normal, norm

from fatebias_core.config import FatebiasConfig, make_config
from fatebias_core.mash import (
    CovarianceSet,
    compute_posterior_matrices,
    cov_canonical,
    expand_covariances,
    mash,
    mash_set_data,
    mash_table,
)
from fatebias_core.mash.likelihood import likelihood_matrix
from fatebias_core.pipeline.graph import step_versions

DATA = Path(__file__).resolve().parents[1] / "data" / "mash"


@pytest.fixture(scope="module")
def sim() -> dict[str, np.ndarray]:
    """200 units x 3 conditions: 30% effects shared across conditions, correlated noise."""
    rng = np.random.default_rng(5)
    J, R = 200, 3
    S = rng.uniform(0.3, 0.8, (J, 1)) * np.array([1.0, 1.2, 1.4])
    b = np.zeros((J, R))
    on = rng.random(J) < 0.3
    b[on] = rng.normal(0, 1.5, (on.sum(), 1)) * np.array([1.0, 0.7, 1.2]) + rng.normal(0, 0.3, (on.sum(), R))
    V = np.full((R, R), 0.25)
    np.fill_diagonal(V, 1.0)
    return {"B": b + rng.multivariate_normal(np.zeros(R), V, J) * S, "S": S, "V": V}


def _dense_mixture(data, prior, pi, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row j's posterior mixture: weights, means and covariances, by dense linear algebra."""
    Sig = np.outer(data.Shat[j], data.Shat[j]) * data.V
    logw, means, covs = [], [], []
    for p in np.flatnonzero(pi > 1e-10):
        U = prior.matrices[p]
        A = U + Sig
        logw.append(np.log(pi[p]) + multivariate_normal(np.zeros(len(Sig)), A).logpdf(data.Bhat[j]))
        K = U @ np.linalg.inv(A)
        means.append(K @ data.Bhat[j])
        covs.append(U - K @ U)
    w = np.exp(np.array(logw) - max(logw))
    return w / w.sum(), np.array(means), np.array(covs)


def test_plarge_agrees_with_monte_carlo_draws_from_the_posterior_mixture(sim) -> None:
    eps = 0.8
    data = mash_set_data(sim["B"], sim["S"], V=sim["V"])
    fit = mash(data, cov_canonical(data), eps=eps)
    post = fit.posterior
    normal = norm.cdf((-eps - post.mean) / post.sd) + norm.sf((eps - post.mean) / post.sd)
    # rows where the probability is uncertain, and where the normal approximation is furthest off
    rows = list(np.argsort(np.abs(post.plarge - 0.5).min(axis=1))[:3]) + [int(np.abs(post.plarge - normal).max(axis=1).argmax())]
    rng = np.random.default_rng(2)
    n = 100_000
    gap = 0.0
    for j in rows:
        w, means, covs = _dense_mixture(data, fit.prior, fit.pi, j)
        counts = rng.multinomial(n, w)
        draws = np.concatenate(
            [rng.multivariate_normal(m, c, size=k, method="eigh") for m, c, k in zip(means, covs, counts, strict=True)]
        )
        mc = (np.abs(draws) >= eps).mean(axis=0)
        se = np.sqrt(np.maximum(mc * (1 - mc), 1e-4) / n)
        np.testing.assert_array_less(np.abs(mc - post.plarge[j]), 5 * se)
        gap = max(gap, float((np.abs(mc - normal[j]) / se).max()))
    assert gap > 10  # the normal approximation is measurably different on at least one row


def test_one_normal_component_gives_the_normal_tail_formula(sim) -> None:
    data = mash_set_data(sim["B"][:40], sim["S"][:40], V=sim["V"])
    U0 = np.array([[1.5, 0.4, 0.2], [0.4, 1.0, 0.3], [0.2, 0.3, 2.0]])
    eps = 0.5
    fit = mash(data, CovarianceSet(("U",), U0[None]), grid=np.array([1.0]), normalize_u=False, usepointmass=False, eps=eps)
    for j in range(40):
        Sig = np.outer(data.Shat[j], data.Shat[j]) * data.V
        K = U0 @ np.linalg.inv(U0 + Sig)
        m = K @ data.Bhat[j]
        s = np.sqrt(np.diag(U0 - K @ U0))
        want = norm.cdf((-eps - m) / s) + norm.sf((eps - m) / s)
        np.testing.assert_allclose(fit.posterior.plarge[j], want, rtol=1e-9, atol=1e-15)


def test_the_point_mass_and_zero_conditions_count_as_their_value_zero(sim) -> None:
    data = mash_set_data(sim["B"][:50], sim["S"][:50])
    sing = CovarianceSet(("s1",), np.diag([1.0, 0.0, 0.0])[None])
    prior = expand_covariances(sing, np.array([1.0]), usepointmass=True)
    lik = likelihood_matrix(data, prior).lik
    pi = np.array([0.6, 0.4])
    eps = 0.4
    post = compute_posterior_matrices(data, prior, pi, lik, eps=eps)
    # conditions 2 and 3 are exactly 0 under both components: never at least eps in size ...
    np.testing.assert_array_equal(post.plarge[:, 1:], 0.0)
    # ... condition 1 is 0 under the point mass and normal under the singleton
    for j in range(50):
        w, means, covs = _dense_mixture(data, prior, pi, j)
        m, s = means[1][0], np.sqrt(covs[1][0, 0])
        want = w[1] * (norm.cdf((-eps - m) / s) + norm.sf((eps - m) / s))
        assert post.plarge[j, 0] == pytest.approx(want, rel=1e-9, abs=1e-15)
    # all the weight on the point mass: probability 0
    alone = compute_posterior_matrices(data, prior, np.array([1.0, 0.0]), lik, eps=eps)
    np.testing.assert_array_equal(alone.plarge, 0.0)
    # eps = 0: every effect, zero included, is at least 0 in size
    np.testing.assert_allclose(compute_posterior_matrices(data, prior, pi, lik, eps=0.0).plarge, 1.0)


def test_mash_tables_carry_plarge_at_effect_size_eps() -> None:
    df = pd.read_csv(DATA / "gene_300x4" / "input.csv")
    res = {eps: mash_table(df, "conservative", FatebiasConfig(effect_size_eps=eps)) for eps in (0.1, 0.3)}
    out = {eps: r.table for eps, r in res.items()}
    cols = [f"plarge_d{d}" for d in range(4)]
    lo, hi = out[0.1][cols].to_numpy(), out[0.3][cols].to_numpy()
    assert (out[0.1]["plarge_eps"] == 0.1).all() and (out[0.3]["plarge_eps"] == 0.3).all()
    assert ((hi <= lo + 1e-12) & (lo >= 0) & (hi <= 1)).all()  # P(|b| >= eps) falls as eps grows
    # the point mass carries no probability of a large effect: P(|b| >= eps) <= P(b != 0)
    assert (lo <= 1.0 - res[0.1].fit.result.posterior.lfdr + 1e-12).all()
    # everything else in the table does not depend on eps
    rest = [c for c in out[0.1].columns if not c.startswith("plarge_")]
    pd.testing.assert_frame_equal(out[0.1][rest], out[0.3][rest])


def test_changing_effect_size_eps_reruns_mash_and_what_follows() -> None:
    a = step_versions(make_config(), "i")
    b = step_versions(make_config(effect_size_eps=0.3), "i")
    assert {s for s in a if a[s] != b[s]} == {"mash", "aggregate", "rank", "diagnostics", "report"}
