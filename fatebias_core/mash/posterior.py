"""Posterior summaries under the fitted mixture (mashr ``compute_posterior_matrices``).

For component p with prior covariance U and marginal covariance A = U + Sigma_j
(Sigma_j = diag(s_j) V diag(s_j)), the posterior of b_j is normal with mean
U A^{-1} bhat_j and covariance U - U A^{-1} U. A condition where the component's
posterior variance is exactly zero (the point mass; a singleton's other conditions)
contributes to the probability of zero (lfdr), not to the negative probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from .data import MashData
from .likelihood import block_cholesky, row_blocks


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
    return np.where(negative_prob > 0.5 * (1.0 - zero_prob), 1.0 - negative_prob, negative_prob + zero_prob)


def compute_posterior_weights(pi: np.ndarray, lik: np.ndarray) -> np.ndarray:
    """Posterior component probabilities: pi_k lik_jk normalised over k."""
    d = lik * pi[None, :]
    return d / d.sum(axis=1, keepdims=True)


def compute_posterior_matrices(
    data: MashData,
    matrices: np.ndarray,
    posterior_weights: np.ndarray,
    chunk_rows: int = 50_000,
) -> PosteriorMatrices:
    """Posterior mean, SD, lfsr, lfdr and negative probability per unit and condition.

    Parameters
    ----------
    data
        The mash data.
    matrices
        (P, R, R) prior covariances of the components kept.
    posterior_weights
        (J, P) posterior component probabilities.
    chunk_rows
        Upper bound on the rows per block.
    """
    J, R = data.Bhat.shape
    P = matrices.shape[0]
    mean = np.empty((J, R))
    mean2 = np.empty((J, R))
    zero = np.empty((J, R))
    neg = np.empty((J, R))
    Ucols = [[matrices[None, :, i, c] for i in range(R)] for c in range(R)]
    for rows in row_blocks(J, P, chunk_rows):
        chol = block_cholesky(data, rows, matrices)
        z = chol.solve([data.Bhat[rows, r][:, None] for r in range(R)])  # A^{-1} bhat
        wts = posterior_weights[rows]
        for c in range(R):
            mu = sum(matrices[None, :, c, i] * z[i] for i in range(R))
            W = chol.forward(Ucols[c])  # L^{-1} U[:, c]
            var = matrices[None, :, c, c] - sum(v * v for v in W)
            var = np.maximum(var, 0.0)
            is_zero = var == 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                pneg = np.where(is_zero, 0.0, ndtr(-mu / np.sqrt(var)))
            mean[rows, c] = (wts * mu).sum(axis=1)
            mean2[rows, c] = (wts * (mu * mu + var)).sum(axis=1)
            zero[rows, c] = (wts * is_zero).sum(axis=1)
            neg[rows, c] = (wts * pneg).sum(axis=1)
    sd = np.sqrt(np.maximum(mean2 - mean**2, 0.0))
    return PosteriorMatrices(mean, sd, compute_lfsr(neg, zero), zero, neg)
