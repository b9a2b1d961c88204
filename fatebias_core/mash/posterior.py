"""Posterior summaries under the fitted mixture (mashr ``compute_posterior_matrices``).

For component p with prior covariance U and marginal covariance A = U + Sigma_j
(Sigma_j = diag(s_j) V diag(s_j)), the posterior of b_j is normal with mean
U A^{-1} bhat_j and covariance U - U A^{-1} U. A condition where the component's
posterior variance is exactly zero (the point mass; a condition on which U is zero,
such as a singleton's other conditions) contributes to the probability of zero
(lfdr), not to the negative probability, as in mashr.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from .covariances import CovarianceSet
from .data import MashData
from .likelihood import MixturePrior, row_blocks, whiten


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
    """

    mean: np.ndarray
    sd: np.ndarray
    lfsr: np.ndarray
    lfdr: np.ndarray
    negative_prob: np.ndarray


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
) -> PosteriorMatrices:
    """Posterior mean, SD, lfsr, lfdr and negative probability per unit and condition.

    In the whitened frame of :mod:`.likelihood`, component (omega, U_k) gives the
    posterior mean G s.z and variances G^2 s with s = omega^2 lambda / (1 + omega^2
    lambda), G = C Q; there is no difference of large numbers, so no cancellation.

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
    """
    J, R = data.Bhat.shape
    mean = np.zeros((J, R))
    mean2 = np.zeros((J, R))
    zero = np.zeros((J, R))
    neg = np.zeros((J, R))
    components = np.flatnonzero(pi > pi_thresh)
    parts = [prior.component(int(p)) for p in components]
    # only the covariances that carry weight are decomposed (often a few of K)
    used = sorted({k for _, k in parts if k >= 0})
    index = {k: i for i, k in enumerate(used)}
    parts = [(g, index[k] if k >= 0 else -1) for g, k in parts]
    cov = prior.covariances
    cov = CovarianceSet(tuple(cov.names[k] for k in used), cov.matrices[used].reshape(len(used), R, R))
    for rows in row_blocks(J, max(1, len(used)) * R * R, chunk_rows):
        wb = whiten(data, rows, cov, with_G=True)
        wts = compute_posterior_weights(pi[components], lik[rows][:, components])
        for c, (g, k) in enumerate(parts):
            w = wts[:, c][:, None]
            if k < 0:  # the point mass: exactly zero in every condition
                zero[rows] += w
                continue
            o2 = prior.grid[g] ** 2
            shrink = o2 * wb.lam[k] / (1.0 + o2 * wb.lam[k])  # (m, R)
            mu = np.einsum("mrs,ms->mr", wb.G[k], shrink * wb.z[k])
            var = np.einsum("mrs,ms->mr", wb.G[k] ** 2, shrink)
            is_zero = np.broadcast_to(wb.zero[k][None, :], mu.shape) | (var <= 0.0)
            mu = np.where(is_zero, 0.0, mu)
            var = np.where(is_zero, 0.0, var)
            with np.errstate(divide="ignore", invalid="ignore"):
                pneg = np.where(is_zero, 0.0, ndtr(-mu / np.sqrt(var)))
            mean[rows] += w * mu
            mean2[rows] += w * (mu * mu + var)
            zero[rows] += w * is_zero
            neg[rows] += w * pneg
    sd = np.sqrt(np.maximum(mean2 - mean**2, 0.0))
    return PosteriorMatrices(mean, sd, compute_lfsr(neg, zero), zero, neg)
