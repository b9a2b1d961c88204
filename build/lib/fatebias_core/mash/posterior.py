"""Posterior summaries under the fitted mixture (mashr ``compute_posterior_matrices``).

For component (t, U) (prior covariance t U) and marginal covariance A = Sigma_j + t U
(Sigma_j = diag(s_j) V diag(s_j)), the posterior of b_j is normal with mean
t U A^{-1} bhat_j and covariance t U A^{-1} Sigma_j. A condition where the component's
posterior variance is exactly zero (the point mass; a condition on which U is zero,
such as a singleton's other conditions) contributes to the probability of zero
(lfdr), not to the negative probability, as in mashr.

With ``eps`` given, the posterior probability of an effect at least ``eps`` in size,
P(|b_jd| >= eps), is computed under the same mixture: sum_k w_jk [Phi((-eps - mu_jkd) /
s_jkd) + Phi((mu_jkd - eps) / s_jkd)], a component of variance 0 on d counting as its
point mu_jkd (1 when |mu_jkd| >= eps, else 0). This is the size gate of the hit calls
(docs/method.md, "Calls").

In the whitened frame of :mod:`.likelihood` (Sigma_j = C C', M = C^{-1} U C^{-T},
w = C^{-1} bhat_j, I + t M = K K'), the mean is X' K^{-1} w and the variance of
condition r is sum_i X_ir Y_ir, with X = K^{-1} C^{-1} t U and Y = K^{-1} C': a product
of two solves rather than the difference t U - t U A^{-1} t U, which cancels when the
data dominate the prior (here the terms are bounded by the geometric mean of the prior
and noise variances). A rank-one U = u u' gives the closed forms
t u (c'w) / (1 + t |c|^2) and t u^2 / (1 + t |c|^2), c = C^{-1} u.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erfc

from .covariances import CovarianceSet
from .data import MashData
from .likelihood import Frame, MixturePrior, Whitening, row_blocks
from .parallel import map_blocks


@dataclass(frozen=True)
class PosteriorMatrices:
    """J x R posterior summaries.

    Attributes
    ----------
    mean
        Posterior means.
    sd
        Posterior standard deviations.
    lfsr
        Local false sign rates.
    lfdr
        Posterior probabilities that the effect is exactly zero.
    negative_prob
        Posterior probabilities that the effect is negative.
    plarge
        Posterior probabilities that the effect is at least ``eps`` in absolute value,
        under the mixture (``None`` when not computed).
    eps
        The ``eps`` of ``plarge`` (``None`` when not computed).
    """

    mean: np.ndarray
    sd: np.ndarray
    lfsr: np.ndarray
    lfdr: np.ndarray
    negative_prob: np.ndarray
    plarge: np.ndarray | None = None
    eps: float | None = None


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Phi(x) as 0.5 erfc(-x / sqrt 2): accurate in both tails, one special-function call."""
    return 0.5 * erfc(x * -_SQRT1_2)


_SQRT1_2 = math.sqrt(0.5)

#: Target entries of a row block's (components x units x conditions) arrays.
POSTERIOR_ELEMENTS = 1 << 15


def compute_lfsr(negative_prob: np.ndarray, zero_prob: np.ndarray) -> np.ndarray:
    """ashr ``compute_lfsr``: 1 - P(negative) when the negative side dominates, else P(negative) + P(zero)."""
    lfsr = np.where(negative_prob > 0.5 * (1.0 - zero_prob), 1.0 - negative_prob, negative_prob + zero_prob)
    # Rounding can push P(negative) a hair above 1 (lfsr -1e-16); a probability is clipped.
    return np.clip(lfsr, 0.0, 1.0)


def compute_posterior_weights(pi: np.ndarray, lik: np.ndarray) -> np.ndarray:
    """Posterior component probabilities: pi_k lik_jk normalised over k."""
    d = lik * pi[None, :]
    return d / d.sum(axis=1, keepdims=True)


def compute_posterior_matrices(
    data: MashData,
    prior: MixturePrior,
    pi: np.ndarray,
    lik: np.ndarray,
    pi_thresh: float = 1e-10,
    chunk_rows: int = 50_000,
    eps: float | None = None,
) -> PosteriorMatrices:
    """Posterior mean, SD, lfsr, lfdr, negative probability (and P(|b| >= eps)) per unit and condition.

    Parameters
    ----------
    data
        The mash data.
    prior
        The expanded prior.
    pi
        (P,) mixture weights.
    lik
        (J, P) (relative) likelihoods; the posterior component probabilities are
        formed block by block from it.
    pi_thresh
        Components with weight at or below this are left out (mashr's ``pi_thresh``).
    chunk_rows
        Upper bound on the rows per block.
    eps
        Effect size of ``plarge``, P(|b_jd| >= eps) under the posterior mixture; not
        computed when ``None``.
    """
    J, R = data.Bhat.shape
    components = np.flatnonzero(pi > pi_thresh)
    # only the covariances that carry weight enter (often a few of K)
    parts = [prior.component(int(p)) for p in components]
    used = sorted({k for _, k in parts if k >= 0})
    index = {k: i for i, k in enumerate(used)}
    parts = [(g, index[k] if k >= 0 else -1) for g, k in parts]
    cov = prior.covariances
    cov = CovarianceSet(tuple(cov.names[k] for k in used), cov.matrices[used].reshape(len(used), R, R))
    wh = Whitening(data.V, cov)
    out = {name: np.zeros((J, R)) for name in ("mean", "mean2", "zero", "neg")}
    if eps is not None:
        out["plarge"] = np.zeros((J, R))

    def block(rows: slice) -> None:
        wts = compute_posterior_weights(pi[components], lik[rows][:, components])
        _block_posterior(wh, data, prior.grid, parts, wts, rows, eps, out)

    map_blocks(block, list(row_blocks(J, max(1, len(parts)) * R, chunk_rows, elements=POSTERIOR_ELEMENTS)))
    mean = out["mean"]
    sd = np.sqrt(np.maximum(out["mean2"] - mean**2, 0.0))
    zero, neg = out["zero"], out["neg"]
    plarge = np.clip(out["plarge"], 0.0, 1.0) if eps is not None else None
    return PosteriorMatrices(mean, sd, compute_lfsr(neg, zero), zero, neg, plarge, eps)


def _block_posterior(
    wh: Whitening,
    data: MashData,
    grid: np.ndarray,
    parts: list[tuple[int, int]],
    wts: np.ndarray,
    rows: slice,
    eps: float | None,
    out: dict[str, np.ndarray],
) -> None:
    """Write the weighted moments and probabilities of ``rows`` to ``out[...][rows]``.

    ``parts`` are the components (grid index, covariance index; -1 for the point mass)
    and ``wts`` (m, C) their posterior probabilities.
    """
    fr = wh.frame(data, rows)
    m, R = fr.s.shape
    C = len(parts)
    mu = np.zeros((C, m, R))
    var = np.zeros((C, m, R))
    zero = np.zeros((C, 1, R), dtype=bool)  # exact zeros: the point mass, U_k[r, r] = 0
    one_pos = {int(k): i for i, k in enumerate(wh.rank_one)}
    full_pos = {int(k): i for i, k in enumerate(wh.full)}
    full = [c for c, (_, k) in enumerate(parts) if k in full_pos]
    if full:
        t = np.array([grid[parts[c][0]] ** 2 for c in full])
        mu[full], var[full] = _full_moments(wh, fr, t, [full_pos[parts[c][1]] for c in full])
    if wh.rank_one.size:
        c2, cw = wh.rank_one_terms(fr)
    for c, (g, k) in enumerate(parts):
        if k < 0:
            zero[c] = True
            continue
        zero[c, 0] = wh.zero[k]
        if k in one_pos:
            i = one_pos[k]
            t1 = grid[g] ** 2
            den = 1.0 + t1 * c2[i]
            u = wh.u[k]
            np.multiply((t1 * cw[i] / den)[:, None], u[None, :], out=mu[c])
            np.multiply((t1 / den)[:, None], (u * u)[None, :], out=var[c])
    is_zero = zero | (var <= 0.0)
    mu[is_zero] = 0.0
    var[is_zero] = 0.0
    W = wts.T[:, :, None]  # (C, m, 1)
    out["mean"][rows] = (W * mu).sum(axis=0)
    out["mean2"][rows] = (W * (mu * mu + var)).sum(axis=0)
    out["zero"][rows] = (W * is_zero).sum(axis=0)
    with np.errstate(divide="ignore"):
        inv_sd = 1.0 / np.sqrt(var)
    inv_sd[is_zero] = 0.0
    z = mu * inv_sd
    p = normal_cdf(-z)
    p[is_zero] = 0.0
    out["neg"][rows] = (W * p).sum(axis=0)
    if eps is not None:
        e = eps * inv_sd
        p = normal_cdf(-e - z)
        p += normal_cdf(z - e)
        p[is_zero] = np.abs(mu[is_zero]) >= eps  # a point counts as its value
        out["plarge"][rows] = (W * p).sum(axis=0)


def _full_moments(wh: Whitening, fr: Frame, t: np.ndarray, sel: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(n, m, R) posterior means and variances of components (t_i, U_sel[i]) with full U."""
    R = wh.R
    M = wh.full_entries(fr)[:, :, sel]  # (R, R, n, m)
    F = wh.full_factor(fr)[:, :, sel]  # (R, R, n, m): C^{-1} U
    T = t[:, None]
    # K = chol(I + t M), entry by entry over (component, unit)
    L: list[list[np.ndarray]] = [[] for _ in range(R)]
    inv: list[np.ndarray] = []
    for j in range(R):
        d = 1.0 + T * M[j, j]
        for k in range(j):
            d = d - L[j][k] * L[j][k]
        r = 1.0 / np.sqrt(d)
        inv.append(r)
        for i in range(j + 1, R):
            a = T * M[i, j]
            for k in range(j):
                a = a - L[i][k] * L[j][k]
            L[i].append(a * r)

    def forward(b: list[np.ndarray]) -> list[np.ndarray]:
        y: list[np.ndarray] = []
        for i in range(R):
            v = b[i]
            for k in range(i):
                v = v - L[i][k] * y[k]
            y.append(v * inv[i])
        return y

    y = forward([fr.w[i][None, :] for i in range(R)])
    shape = (t.size, fr.zz.size, R)
    mu = np.zeros(shape)
    var = np.zeros(shape)
    zero_col = np.zeros((1, 1))
    for r in range(R):
        X = forward([T * F[i, r] for i in range(R)])  # column r of K^{-1} C^{-1} t U
        # column r of K^{-1} C' (C' = chol(V)' diag(s) is upper triangular)
        Y = forward([wh.LV[r, i] * fr.s[:, r][None, :] if i <= r else zero_col for i in range(R)])
        mu[:, :, r] = sum(X[i] * y[i] for i in range(R))
        var[:, :, r] = sum(X[i] * Y[i] for i in range(R))
    return mu, var
